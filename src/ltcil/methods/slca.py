"""SLCA, Slow Learner with Classifier Alignment (Zhang et al., "SLCA: Slow Learner with Classifier Alignment for
Continual Learning on a Pre-trained Model", ICCV 2023): the whole pre-trained ViT is fine-tuned on every task, but
at a hundredth of the classifier's learning rate (Sec. 4.1, the slow learner), with cross-entropy over the task's
own classes; after each task every new class is summarised by the mean and covariance of its embeddings, and from
the second task on the classifier is aligned on features sampled from all those Gaussians, equally many per class,
with its logits normalised per task (Sec. 4.2, classifier alignment with logit normalisation).

As LAMDA-PILOT runs it (models/slca.py, exps/slca.json; its SLCANet and SimpleContinualLinear), which the config
slca_vit_b16_cifar100_b0inc10 names key by key:
- SGD (momentum 0.9, weight decay 5e-4), lr 0.01 for the head and 0.0001 for the ViT, 20 epochs, lr / 10 after
  epoch 18, batch 64; the old classes' rows take no part (PILOT freezes the old task heads: here they get neither
  gradient nor weight decay);
- statistics from the un-augmented training images at the end of each task, covariance + 1e-4 I, never updated
  later although the ViT keeps moving;
- alignment: 3 epochs, 256 draws per class each, their means scaled by 0.9 + 0.1 (task of the class + 1) / (tasks
  so far), batches of 256, logits divided by the mean of their per-task norms and by 0.1, SGD lr 0.01 with cosine
  decay over the 3 epochs, weight decay 5e-4, every row of the classifier;
- the aligned classifier serves the task's evaluation only: the next task trains from the classifier as it was
  before the alignment (PILOT's fc.backup() / fc.recall()).
The ViT changes, so checkpoints keep it (unlike the frozen-backbone methods).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..heads.linear import IncrementalLinear
from ..registry import register_method
from .base import IncrementalNet, Method


@dataclass
class SLCAOptions:
    backbone_lr_scale: float = 0.01  # the slow learner (PILOT bcb_lrscale 1/100)
    ca_epochs: int = 3  # PILOT "ca_epochs"; 0: no alignment
    ca_samples: int = 256  # draws per class and epoch
    ca_lr: float = 0.01  # PILOT: its lrate
    logit_norm: float = 0.1  # PILOT "ca_with_logit_norm" (0: plain CE in the alignment)
    covariance_ridge: float = 1e-4  # added to each class covariance's diagonal


def task_normalised(logits: torch.Tensor, sizes: list) -> torch.Tensor:
    """Logits divided by the mean over tasks of each task's logit-vector norm (Sec. 4.2, logit normalisation)."""
    norms, start = [], 0
    for size in sizes:
        norms.append(logits[:, start : start + size].norm(dim=1, keepdim=True) + 1e-7)
        start += size
    return logits / torch.cat(norms, dim=1).mean(dim=1, keepdim=True)


@register_method("slca")
class SLCA(Method):
    Options = SLCAOptions

    @classmethod
    def check(cls, options, cfg) -> None:
        if options.backbone_lr_scale < 0 or options.ca_epochs < 0 or options.ca_samples < 1 or options.ca_lr <= 0:
            raise ConfigError("method.backbone_lr_scale and method.ca_epochs must be >= 0, method.ca_samples >= 1 "
                              "and method.ca_lr > 0.")
        if options.logit_norm < 0 or options.covariance_ridge < 0:
            raise ConfigError("method.logit_norm and method.covariance_ridge must be >= 0.")

    @classmethod
    def build_network(cls, networks, options, cfg):
        backbone = networks.backbone()
        return IncrementalNet(backbone, IncrementalLinear(backbone.num_features, init=cfg.head.init))

    def __init__(self, model, options, cfg, device, **kwargs):
        super().__init__(model, options, cfg, device, **kwargs)
        self.old_classes = 0
        self.task_sizes: list = []
        d = self.model.backbone.num_features
        self.means = torch.zeros(0, d)  # per class, float64 on the CPU
        self.covs = torch.zeros(0, d, d)  # per class, float32 on the CPU (as PILOT keeps them)
        self.pre_alignment = None  # the head before the last alignment, which the next task trains from

    def begin_task(self, task, ctx):
        if self.pre_alignment is not None:  # the alignment served the last evaluation only
            self.model.head.load_state_dict(self.pre_alignment)
            self.pre_alignment = None
        self.old_classes = self.model.num_classes
        super().begin_task(task, ctx)
        self.task_sizes.append(task.num_classes)

    def trainable_parameters(self):
        # the slow learner; the head's weight decay is in the loss, on the task's own rows only (old rows fixed)
        return [{"params": list(self.model.backbone.parameters()), "lr_scale": self.options.backbone_lr_scale},
                {"params": list(self.model.head.parameters()), "lr_scale": 1.0, "weight_decay": 0.0}]

    def training_step(self, x, y):
        logits = self.model(x)
        old = self.old_classes
        ce = F.cross_entropy(logits[:, old:], y - old)  # the task's own classes (PILOT: targets - known)
        head = self.model.head
        decay = head.weight[old:].pow(2).sum() + (head.bias[old:].pow(2).sum() if head.bias is not None else 0.0)
        return {"loss": ce + 0.5 * self.cfg.train.weight_decay * decay, "ce": ce}

    def end_task(self, task, ctx):
        feats, labels = ctx.features(self.model, task.train_indices, progress="statistics")
        d = feats.shape[1]
        means, covs = [], []
        eye = torch.eye(d, dtype=torch.float64)
        for c in task.classes.tolist():
            f = feats[labels == c].double().cpu()
            means.append(f.mean(0))
            covs.append((torch.cov(f.T) + self.options.covariance_ridge * eye).float())
        self.means = torch.cat([self.means.double(), torch.stack(means)])
        self.covs = torch.cat([self.covs, torch.stack(covs)])
        if task.index > 0 and self.options.ca_epochs:
            self.pre_alignment = {k: v.detach().clone() for k, v in self.model.head.state_dict().items()}
            self.align(task, ctx)

    def align(self, task, ctx) -> None:
        """Sec. 4.2: the classifier re-trained on Gaussian draws of every seen class, logits normalised per task."""
        o, head = self.options, self.model.head
        classes = self.model.num_classes
        tasks_so_far = task.index + 1
        task_of_class = torch.cat([torch.full((n,), t) for t, n in enumerate(self.task_sizes)])
        scale = 0.9 + 0.1 * (task_of_class + 1).double() / tasks_so_far  # PILOT's (t_c + 1) / (t + 1) * 0.1
        chol = torch.linalg.cholesky(self.covs.double())  # (C, D, D)
        gen = ctx.gens[0]
        head.train()
        optimizer = torch.optim.SGD(head.parameters(), lr=o.ca_lr, momentum=0.9,
                                    weight_decay=self.cfg.train.weight_decay)
        for epoch in range(o.ca_epochs):
            for group in optimizer.param_groups:  # cosine over the alignment's epochs, stepped per epoch
                group["lr"] = o.ca_lr * 0.5 * (1 + math.cos(math.pi * epoch / o.ca_epochs))
            noise = torch.randn(classes, o.ca_samples, chol.shape[1], generator=gen, dtype=torch.float64)
            draws = (self.means * scale[:, None])[:, None, :] + torch.einsum("cij,csj->csi", chol, noise)
            draws = draws.reshape(-1, chol.shape[1]).float()
            targets = torch.arange(classes).repeat_interleave(o.ca_samples)
            order = torch.randperm(len(targets), generator=gen)
            draws, targets = draws[order].to(self.device), targets[order].to(self.device)
            for start in range(0, len(targets), o.ca_samples):
                logits = head(draws[start : start + o.ca_samples])
                if o.logit_norm > 0:
                    logits = task_normalised(logits, self.task_sizes) / o.logit_norm
                loss = F.cross_entropy(logits, targets[start : start + o.ca_samples])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        head.eval()
        ctx.events.write({"event": "classifier_alignment", "task": task.index, "classes": classes,
                          "last_loss": float(loss.detach())})

    # --- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "task_sizes": list(self.task_sizes), "means": self.means.clone(),
                "covs": self.covs.clone(), "pre_alignment": self.pre_alignment}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.task_sizes = list(state["task_sizes"])
        self.means, self.covs = state["means"], state["covs"]
        self.pre_alignment = state["pre_alignment"]

"""Classifier alignment with a global covariance, after Kalla & Biswas ("Robust feature learning and global
variance-driven classifier alignment for long-tail class incremental learning", 2024), as a plugin for any method
with a linear or cosine head and a memory (`gvalign.enabled: true`).

After each task (the method's end of task done, the backbone frozen from here on):
1. class prototypes: the mean feature of every seen class, from what the task can see of it (the task's data for
   new classes, the exemplars for old ones) under the current backbone (the paper's Sec. 3.3, prototypes);
2. one covariance shared by all classes, pooled from the within-class deviations of those features (Sec. 3.3:
   a single global variance, so tail classes with a handful of exemplars borrow the head classes' spread),
   shrunk towards its mean variance for stability;
3. pseudo-features drawn from N(prototype_c, global covariance), the same number for every class (Sec. 3.4);
4. a copy of the method's classifier re-trained on them with cross-entropy, every class equally represented.
The re-trained classifier is reported as "gvalign" (the headline unless eval.headline says otherwise); the method's
own head is left as it was, so its next task trains as without the plugin. The paper's stage-1 robustness term
(mixup between classes while the backbone trains) belongs to a method's training step (LUCIR's
method.mixup_alpha) and is not part of this plugin.

`gvalign.variant: released` does what the authors' code does instead (JAYATEJAK/GVAlign at 545c945,
src/approach/lucir_gvalign_2stage.py, train_loop after the exemplars are chosen):
- the features are L2-normalised before the prototypes and the covariance are taken;
- the covariance is one class's, fixed at the first task: that of the class with the most training images then,
  reused unchanged for every later task (the paper's "global variance" read as the head class's spread);
- the method's own classifier is re-trained in place (every row of every task and the learned scale), so the
  next task starts from the aligned head and the method's own classifier reports it;
- `gvalign.steps` steps (100), each on one pseudo-feature per seen class, SGD at gvalign.lr (0.1) with momentum
  0.9 and train.weight_decay, the lr divided by 10 after the steps the task schedule's train.milestones name
  (the code reads the network's schedule_step there too).
Known difference: the released code takes the prototypes from one pass over augmented training images, ltcil from
the un-augmented ones.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from .base import Plugin
from .two_stage import check_method

CLASSIFIER = "gvalign"


def class_statistics(feats: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     shrinkage: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(means (C, D), the pooled within-class covariance (D, D), which classes have features)."""
    d = feats.shape[1]
    counts = torch.bincount(labels, minlength=num_classes).to(feats.dtype)
    means = torch.zeros(num_classes, d, device=feats.device, dtype=feats.dtype).index_add_(0, labels, feats)
    present = counts > 0
    means[present] /= counts[present, None]
    centred = feats - means[labels]
    dof = max(1, len(labels) - int(present.sum()))
    cov = centred.T @ centred / dof
    target = torch.eye(d, device=feats.device, dtype=feats.dtype) * cov.diagonal().mean()
    return means, (1 - shrinkage) * cov + shrinkage * target, present


def sample_features(means: torch.Tensor, cov: torch.Tensor, per_class: int, gen: torch.Generator):
    """`per_class` draws from N(mean_c, cov) for every class: (features (C * per_class, D), labels)."""
    c, d = means.shape
    chol = torch.linalg.cholesky(cov + 1e-6 * torch.eye(d, device=cov.device, dtype=cov.dtype))
    noise = torch.randn(c * per_class, d, generator=gen, device=gen.device).to(means)
    labels = torch.arange(c, device=means.device).repeat_interleave(per_class)
    return means[labels] + noise @ chol.T, labels


def cholesky_with_jitter(cov: torch.Tensor) -> torch.Tensor:
    """Cholesky factor of `cov`; where it is singular (a class with fewer images than feature dimensions, which the
    released code's MultivariateNormal refuses) the least jitter of 1e-6 .. 1e-1 times its mean variance on the
    diagonal that makes it positive definite."""
    eye = torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype)
    scale = float(cov.diagonal().mean().clamp_min(1e-12))
    for jitter in (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1):
        chol, info = torch.linalg.cholesky_ex(cov + jitter * scale * eye)
        if int(info) == 0:
            return chol
    raise ValueError("gvalign: the class covariance is not positive definite even with a jitter of 0.1 x its mean "
                     "variance on the diagonal")


class GVAlign(Plugin):
    name = CLASSIFIER
    headline = CLASSIFIER

    def __init__(self, cfg, method):
        check_method(method, cfg.method["name"], "gvalign.enabled")
        self.cfg = cfg
        self.method = method  # its head is the template of the re-trained copy when a checkpoint is loaded
        self.head = None  # the re-trained copy of the method's classifier
        self.covariance = None  # released: the first task's largest class's covariance, kept for every task

    def after_task(self, method, ctx) -> None:
        if self.cfg.gvalign.variant == "released":
            self.align_in_place(method, ctx)
            return
        o = self.cfg.gvalign
        model = method.model
        feats, labels = ctx.features(model, ctx.train_indices)
        means, cov, present = class_statistics(feats, labels, model.num_classes, o.shrinkage)
        gen = torch.Generator(device=feats.device).manual_seed(int(torch.randint(0, 2**31 - 1, (1,),
                                                                                 generator=ctx.gens[0])))
        pseudo, pseudo_labels = sample_features(means[present], cov, o.samples_per_class, gen)
        pseudo_labels = torch.nonzero(present).flatten()[pseudo_labels]
        head = copy.deepcopy(model.head)
        if hasattr(head, "frozen"):
            head.frozen = 0  # every row re-learns
        head.requires_grad_(True)

        def step(f, y):
            return {"loss": F.cross_entropy(head(f), y)}

        stage = ctx.stage(optimizer="sgd", momentum=0.9, weight_decay=0.0, schedule="cosine", warmup_epochs=0,
                          batch_size=o.batch_size, sampler="instance")
        ctx.fit(step, head.parameters(), np.arange(len(pseudo_labels)), stage, epochs=o.epochs, lr=o.lr,
                name=CLASSIFIER, augment=False, modules=[head], features=(pseudo, pseudo_labels))
        self.head = head.eval()
        ctx.events.write({"event": CLASSIFIER, "task": ctx.task_index, "classes": int(present.sum()),
                          "pseudo_features": len(pseudo_labels),
                          "covariance_trace": float(cov.diagonal().sum())})

    def align_in_place(self, method, ctx) -> None:
        """The released variant (module docstring): the method's head re-trained on one pseudo-feature per seen
        class a step, drawn around the classes' normalised prototypes with the first task's largest class's
        covariance."""
        o, train = self.cfg.gvalign, self.cfg.train
        model, head = method.model, method.model.head
        feats, labels = ctx.features(model, ctx.train_indices)
        feats = F.normalize(feats.float(), dim=1)
        counts = torch.bincount(labels, minlength=model.num_classes)
        present = counts > 0
        means = torch.zeros(model.num_classes, feats.shape[1], device=feats.device).index_add_(0, labels, feats)
        means = means[present] / counts[present, None]
        if self.covariance is None:  # first task: the class with the most images (the lowest id on a tie)
            largest = int(torch.argmax(counts))
            self.covariance = torch.cov(feats[labels == largest].T)
        chol = cholesky_with_jitter(self.covariance.to(feats.device))
        classes = torch.nonzero(present).flatten()
        gen = torch.Generator(device=feats.device).manual_seed(int(torch.randint(0, 2**31 - 1, (1,),
                                                                                 generator=ctx.gens[0])))
        frozen = getattr(head, "frozen", 0)
        if hasattr(head, "frozen"):
            head.frozen = 0  # every row re-learns
        head.requires_grad_(True)
        head.train()
        optimizer = torch.optim.SGD(head.parameters(), lr=o.lr, momentum=0.9, weight_decay=train.weight_decay)
        lr = o.lr
        losses = []
        for step in range(o.steps):
            noise = torch.randn(len(classes), feats.shape[1], generator=gen, device=gen.device).to(feats.device)
            loss = F.cross_entropy(head(means + noise @ chol.T), classes)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if step + 1 in train.milestones:  # the released code steps its lr at the task schedule's epochs
                lr *= train.gamma
                for group in optimizer.param_groups:
                    group["lr"] = lr
        if hasattr(head, "frozen"):
            head.frozen = frozen
        head.eval()
        self.head = None  # the method's head is the aligned one
        ctx.events.write({"event": CLASSIFIER, "task": ctx.task_index, "classes": int(present.sum()),
                          "steps": o.steps, "first_loss": losses[0] if losses else None,
                          "last_loss": losses[-1] if losses else None,
                          "covariance_trace": float(self.covariance.diagonal().sum())})

    @torch.no_grad()
    def classifiers(self, method, x: torch.Tensor) -> dict:
        feats = method.model.forward_features(x)
        return {CLASSIFIER: (self.head or method.model.head)(feats)}

    def state_dict(self) -> dict:
        covariance = None if self.covariance is None else self.covariance.cpu()
        if self.head is None:
            return {"head": None, "covariance": covariance}
        return {"head": {k: v.cpu() for k, v in self.head.state_dict().items()}, "classes": self.head.num_classes,
                "covariance": covariance}

    def load_state_dict(self, state: dict, device) -> None:
        self.covariance = state.get("covariance")
        if self.covariance is not None:
            self.covariance = self.covariance.to(device)
        if state.get("head") is None:
            self.head = None
            return
        head = copy.deepcopy(self.method.model.head)  # the method's head, loaded first, has the right shape
        head.load_state_dict(state["head"])
        self.head = head.to(device).eval()

"""SBCL, Subclass-balancing Contrastive Learning for long-tailed recognition (Hou et al., ICCV 2023).

Stage 1 (Alg. 2): the encoder and an MLP projection head learn with supervised contrastive loss on two
augmented views; after `warmup_epochs` of plain SupCon, head classes are split into subclasses of about
the tail-class size (Sec. 3.1, Eq. 3), re-clustered every `recluster_every` epochs, and the bi-granularity
loss (Eq. 4-6) pulls same-subclass samples together at tau1 and same-class samples at a class temperature.
Stage 2 (Sec. 4.1): a linear classifier on the frozen encoder, with LDAM-DRW (CIFAR) or CE with
class-balanced sampling ("cb", ImageNet-LT); the epoch kept is the best on the validation split, never on test
([BUG/QUIRK] the released linear stage reports the best test epoch).

Stage 2 trains on features of the un-augmented images cached once (the released code re-augments with crop and
flip each epoch), so it costs seconds. Inside a class-incremental run both stages run on each task's data plus
the memory, and the classifier is re-fitted over all seen classes.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..clustering import split_into_subclasses
from ..data.augment import AugmentSpec
from ..errors import ConfigError
from ..heads.cosine import CosineLinear
from ..heads.linear import IncrementalLinear
from ..losses.contrastive import class_temperatures, sbcl_loss, supcon_loss
from ..losses.longtail import class_balanced_weights, ldam_loss, ldam_margins
from ..registry import register_method
from .base import IncrementalNet, train_class_counts
from ..evaluation.metrics import mean_class_accuracy
from .exemplar_base import ReplayMethod


@dataclass
class SBCLOptions:
    temperature: float = 0.1  # tau1 (released CIFAR code: 0.1)
    base_temperature: float = 0.07  # the subclass term is scaled by tau1 / base_temperature (released code)
    beta: float = 0.25  # Eq. 4: weight of the class-level term (released CIFAR code: 0.25)
    alpha: float = 10.0  # Eq. 6: phi(c) = spread / (n_c log(n_c + alpha))
    delta: int = 10  # Eq. 3: subclass size lower bound M = max(n_tail, delta); 10 on CIFAR, 20 on ImageNet-LT
    warmup_epochs: int = 10  # Alg. 2: T0 epochs of plain SupCon with class labels before clustering
    recluster_every: int = 10  # Alg. 2: K; 10 on CIFAR-100, 5 on ImageNet-LT
    balanced_clustering: bool = True  # Alg. 1 (paper): balanced assignment; false = the released code's k-means
    projection_dim: int = 128  # MLP head: features -> features -> ReLU -> projection_dim, L2-normalised
    classifier: str = "ldam_drw"  # stage 2: ldam_drw (CIFAR protocol) | cb (CE + class-balanced sampling)
    linear_epochs: int = 200  # stage 2, LDAM-DRW (released linear_classify.py): 200 epochs, lr 0.1, batch 128,
    linear_lr: float = 0.1  # 5 warm-up epochs, x0.1 at 140 and 180, weight decay 0, re-weighting from 160
    linear_batch_size: int = 128
    linear_warmup_epochs: int = 5
    linear_milestones: list = dataclasses.field(default_factory=lambda: [140, 180])
    drw_epoch: int = 160
    max_margin: float = 0.5
    scale: float = 30.0
    cb_beta: float = 0.9999


class ProjectionHead(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, in_features), nn.ReLU(inplace=True),
                                 nn.Linear(in_features, out_features))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(feats), dim=1)


@register_method("sbcl")
class SBCL(ReplayMethod):
    Options = SBCLOptions
    views = 2
    batch_indices = True

    @classmethod
    def check(cls, options, cfg):
        if options.classifier not in ("ldam_drw", "cb"):
            raise ConfigError(f"method.classifier: {options.classifier!r} is not one of ldam_drw, cb.")
        for key in ("warmup_epochs", "recluster_every", "delta", "linear_epochs"):
            if getattr(options, key) < (0 if key == "warmup_epochs" else 1):
                raise ConfigError(f"method.{key}: {getattr(options, key)} is out of range.")

    @classmethod
    def build_network(cls, networks, options, cfg):
        backbone = networks.backbone()
        return IncrementalNet(backbone, cls._classifier(options, backbone.num_features, 0))

    def __init__(self, model, options, cfg, device, **kwargs):
        super().__init__(model, options, cfg, device, **kwargs)
        self.projector = ProjectionHead(model.backbone.num_features, options.projection_dim).to(device)
        self.subclass_of = None  # subclass id per train-split index (-1: not in this task's data)
        self.tau_class = None  # tau2 per class
        self.selection: dict = {}

    @staticmethod
    def _classifier(options, feats: int, num_classes: int) -> nn.Module:
        if options.classifier == "ldam_drw":
            return CosineLinear(feats, sigma=False, num_classes=num_classes, row_norm=1.0)
        return IncrementalLinear(feats, num_classes)

    def _new_classifier(self, num_classes: int) -> nn.Module:
        return self._classifier(self.options, self.model.backbone.num_features, num_classes).to(self.device)

    def augmentation(self):
        return AugmentSpec.contrastive()  # Sec. 4.1 / code: SimCLR-style views on both crops

    def trainable_parameters(self):
        return list(self.model.backbone.parameters()) + list(self.projector.parameters())

    # --- stage 1 -----------------------------------------------------------------------------------------
    def begin_task(self, task, ctx):
        super().begin_task(task, ctx)
        self.subclass_of = None

    def begin_epoch(self, epoch, epochs, ctx=None):
        start = self.options.warmup_epochs
        if epoch >= start and (epoch - start) % self.options.recluster_every == 0:
            self.recluster(epoch, ctx)

    def epoch_state(self):
        return {"subclass_of": self.subclass_of, "tau_class": self.tau_class}

    def load_epoch_state(self, state):
        self.subclass_of, self.tau_class = (None if state[k] is None else state[k].to(self.device)
                                            for k in ("subclass_of", "tau_class"))

    @torch.no_grad()
    def projections(self, ctx, indices) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        zs, ys = [], []
        for idx in ctx.data.index_batches(indices, ctx.cfg.eval.batch_size, shuffle=False, split="train"):
            x, y = ctx.data.batch("train", idx)
            zs.append(self.projector(self.model.forward_features(x)).float())
            ys.append(y)
        return torch.cat(zs), torch.cat(ys)

    def recluster(self, epoch: int, ctx) -> None:
        """Alg. 1 on the normalised projections of the un-augmented images of this task's data."""
        indices = ctx.train_indices
        z, y = self.projections(ctx, indices)
        sub, per_class = split_into_subclasses(z, y, self.model.num_classes, self.options.delta, ctx.gens[1],
                                               balanced=self.options.balanced_clustering)
        lookup = torch.full((len(ctx.data.labels["train"]),), -1, dtype=torch.long, device=self.device)
        lookup[torch.as_tensor(indices, dtype=torch.long, device=self.device)] = sub
        self.subclass_of = lookup
        self.tau_class = class_temperatures(z, y, self.model.num_classes, self.options.temperature,
                                            self.options.alpha)
        present = torch.bincount(y, minlength=self.model.num_classes) > 0
        ctx.events.write({"event": "subclasses", "task": ctx.task_index, "epoch": epoch + 1,
                          "subclasses": int(per_class[present].sum()), "split_classes": int((per_class > 1).sum()),
                          "tau2_min": float(self.tau_class[present].min()),
                          "tau2_max": float(self.tau_class[present].max())})

    def training_step(self, x, y, idx):
        z = self.projector(self.model.forward_features(x))
        labels = y.repeat(2)
        if self.subclass_of is None:  # warm-up: plain SupCon on class labels (Alg. 2, T0 epochs)
            t = self.options.temperature
            loss = supcon_loss(z, labels, t, t)
            return {"loss": loss}
        sub = self.subclass_of[idx.to(self.device)].repeat(2)
        loss = sbcl_loss(z, labels, sub, self.tau_class[labels], self.options.temperature,
                         self.options.base_temperature, self.options.beta)
        return {"loss": loss}

    # --- stage 2 -----------------------------------------------------------------------------------------
    def end_task(self, task, ctx):
        self.fit_classifier(task, ctx)
        super().end_task(task, ctx)

    def fit_classifier(self, task, ctx):
        """A linear classifier over all seen classes on the frozen encoder; the best validation epoch is kept."""
        o = self.options
        num_classes = self.model.num_classes
        feats, labels = ctx.features(self.model, ctx.train_indices)
        counts = train_class_counts(ctx, ctx.train_indices, num_classes)
        val = np.concatenate([t.val_indices for t in ctx.scenario.tasks[: task.index + 1]])
        val_feats = ctx.features(self.model, val, split=ctx.scenario.val_pool) if len(val) else None
        head = self._new_classifier(num_classes)
        margins = ldam_margins(counts, o.max_margin)
        cb_weights = class_balanced_weights(counts, o.cb_beta)
        state = {"weights": None, "best": None, "best_acc": -1.0, "best_epoch": 0}

        @torch.no_grad()
        def keep_if_best(finished_epochs: int):
            if val_feats is None:
                return
            acc = mean_class_accuracy(head(val_feats[0]).argmax(1), val_feats[1])
            if acc > state["best_acc"]:
                state.update(best_acc=acc, best=copy.deepcopy(head.state_dict()), best_epoch=finished_epochs)

        def on_epoch(epoch, epochs):
            if epoch > 0:
                keep_if_best(epoch)
            state["weights"] = cb_weights if epoch >= o.drw_epoch else None  # DRW (ldam_drw only)

        if o.classifier == "ldam_drw":
            stage = ctx.stage(optimizer="sgd", momentum=0.9, weight_decay=0.0, schedule="step",
                              milestones=o.linear_milestones, gamma=0.1, warmup_epochs=o.linear_warmup_epochs,
                              batch_size=o.linear_batch_size, sampler="instance")

            def step(f, y):
                return {"loss": ldam_loss(head(f), y, margins, o.scale, state["weights"])}
        else:
            stage = ctx.stage(optimizer="sgd", momentum=0.9, weight_decay=0.0, schedule="cosine",
                              warmup_epochs=o.linear_warmup_epochs, batch_size=o.linear_batch_size,
                              sampler="class_balanced")

            def step(f, y):
                return {"loss": F.cross_entropy(head(f), y)}

        ctx.fit(step, head.parameters(), np.arange(len(labels)), stage, epochs=o.linear_epochs, lr=o.linear_lr,
                name="linear classifier", augment=False, modules=[head], on_epoch=on_epoch, features=(feats, labels))
        keep_if_best(o.linear_epochs)
        if state["best"] is not None:
            head.load_state_dict(state["best"])
        self.model.head = head.eval()
        if val_feats is not None:
            self.selection = {"task": task.index, "epoch": state["best_epoch"], "of": o.linear_epochs,
                              "by": "validation", "val_mean_class_accuracy": state["best_acc"]}
        else:
            self.selection = {"task": task.index, "epoch": o.linear_epochs, "of": o.linear_epochs,
                              "by": "last epoch (no validation split)", "val_mean_class_accuracy": None}
        ctx.events.write({"event": "classifier_selection", **self.selection})

    def results_extra(self):
        return {"classifier_selection": self.selection}

    # --- state ---------------------------------------------------------------------------------------------
    def state_dict(self):
        state = super().state_dict()
        state["projector"] = self.projector.state_dict()
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.projector.load_state_dict(state["projector"])

"""Prototype-based long-tailed class-incremental learning (COAOX/Class_incremental_learning_in_long_tail: thesis and
released src/train.py).

Classification by the nearest class prototype on squared Euclidean distance, trained with the NCM loss
(Sec. 2.3, CE over negative corrected distances), plus:
- the re-measure layer: per-class alpha, beta on distances (heads/prototype.py), fitted after each stage on
  the frozen encoder, only the stage's own columns learning (Sec. 2.3.2);
- the intra-stage prototype regulariser c_dist on the batch prototypes of the stage's classes;
- Sample Mix (Sec. 2.3.1): pixel averages of memory and new images carrying both labels, weight 0.1;
- prototype distance distillation (Sec. 2.3.3): push new prototypes from stored old ones, pull old classes'
  current prototypes toward the stored ones, keep the new centre off the old radius, weighted
  pull * T^t + push / (t + 1) + centre at stage t;
- memory: a few exemplars per class (thesis: 5) closest to the class mean; prototypes of every seen class are
  the mean embeddings of its exemplars, recomputed with the current encoder after each stage.

Differences from the released code, following the thesis's intent:
exemplars are the closest to the mean of all the class's images (not of one augmented batch of 1,024); the
validation split is never trained on; the lr schedule restarts with each stage; batch prototypes average all
of the class's samples in the batch and absent classes are masked, not set to 10,000; each step uses one
memory batch (the release loops over every memory batch per step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.augment import AugmentSpec
from ..errors import ConfigError
from ..heads.prototype import PrototypeHead
from ..losses.prototype import batch_prototypes, centre_loss, prototype_spread_loss, pull_loss, push_loss, sample_mix
from ..registry import register_method
from .base import IncrementalNet
from .exemplar_base import ReplayMethod


@dataclass
class ProtoLTOptions:
    spread: bool = True  # the c_dist regulariser on the stage's batch prototypes
    mix: bool = True  # Sample Mix (README command: --mix)
    mix_weight: float = 0.1  # Alg. 1: 0.1 * L_mix
    mix_fraction: float = 0.1  # share of the memory batch mixed
    mix_new_share: float = 0.0625  # Alg. 1: the first batch_size / 16 new images
    distill: bool = True  # prototype distance distillation
    push: float = 1e-4  # README command: pushR 1e-4 (code default 0.1)
    pull: float = 1e-3  # README command: pullR 1e-3 (code default 0.1)
    centre: float = 0.1  # code default centerR
    T: float = 2.0  # distance temperature of push / pull, and the pull weight's growth T^t
    R: float = 2.0  # centre term's radius factor
    bias_epochs: int = 3  # thesis: 3 epochs of the re-measure layer per stage (README command: 0)
    bias_lr: float = 1e-4  # Adam; the lr doubles every bias_step epochs (thesis and code: StepLR gamma 2)
    bias_step: int = 10


@register_method("proto_lt")
class ProtoLT(ReplayMethod):
    Options = ProtoLTOptions
    requires_memory = True  # the prototypes come from exemplars (the thesis keeps 5 per class)

    @classmethod
    def check(cls, options, cfg):
        if not 0 < options.mix_fraction <= 0.9 or not 0 < options.mix_new_share <= 1:
            raise ConfigError("method.mix_fraction must be in (0, 0.9] and method.mix_new_share in (0, 1].")

    @classmethod
    def build_network(cls, networks, options, cfg):
        backbone = networks.backbone()
        return IncrementalNet(backbone, PrototypeHead(backbone.num_features))

    def __init__(self, model, options, cfg, device, **kwargs):
        super().__init__(model, options, cfg, device, **kwargs)
        self.task_index = 0

    def train_indices(self, task, ctx):
        return task.train_indices  # the memory enters through its own batches (Sample Mix, distillation)

    def trainable_parameters(self):
        return list(self.model.backbone.parameters())  # alpha, beta learn in their own stage

    needs_context = True  # Sample Mix and distillation draw memory batches with the task's generators

    def begin_task(self, task, ctx):
        super().begin_task(task, ctx)
        self.task_index = task.index
        self._spec = AugmentSpec.from_train_config(self.cfg.train)

    def _memory_batch(self, size: int, ctx):
        mem = self.memory.indices()
        if len(mem) == 0:
            return None
        cpu_gen, dev_gen = ctx.gens
        pick = torch.randperm(len(mem), generator=cpu_gen)[: min(size, len(mem))]
        return ctx.data.batch("train", torch.as_tensor(mem)[pick], self._spec, dev_gen)

    def training_step(self, x, y, ctx):
        head = self.model.head
        o = self.options
        start, end = int(head.current[0]), int(head.current[1])
        feats = self.model.forward_features(x)
        new_protos, present = batch_prototypes(feats, y, start, end)
        protos = torch.cat([head.prototypes[:start], new_protos])
        absent = torch.cat([torch.zeros(start, dtype=torch.bool, device=x.device), ~present])
        logits = head.logits(feats, protos).masked_fill(absent, float("-inf"))
        ncm = self.classification_loss(logits, y)
        losses = {"ncm": ncm}
        loss = ncm
        if o.spread:
            losses["spread"] = prototype_spread_loss(new_protos[present])
            loss = loss + losses["spread"]
        if start > 0 and (o.mix or o.distill):
            batch = self._memory_batch(len(x), ctx)
            if batch is not None:
                xm, ym = batch
                if o.mix:
                    r = 0.1 + 0.9 * float(torch.rand((), generator=ctx.gens[0]))
                    n_new = max(1, int(len(x) * o.mix_new_share))
                    xmix, y_new, y_mem = sample_mix(xm, ym, x[:n_new], y[:n_new], r, o.mix_fraction)
                    if len(xmix) < 2:  # BatchNorm cannot train on one image; pair two new images instead
                        xmix, y_new, y_mem = sample_mix(xm, ym, x[:2], y[:2], r, o.mix_fraction)
                    mix_logits = head.logits(self.model.forward_features(xmix), protos).masked_fill(
                        absent, float("-inf"))
                    losses["mix"] = 0.5 * (F.cross_entropy(mix_logits, y_new) + F.cross_entropy(mix_logits, y_mem))
                    loss = loss + o.mix_weight * losses["mix"]
                if o.distill and present.any():
                    fm = self.model.forward_features(xm)
                    old_now, old_present = batch_prototypes(fm, ym, 0, start)
                    stored = head.prototypes[:start][old_present]
                    t = self.task_index
                    losses["pull"] = pull_loss(old_now[old_present], stored, o.T)
                    losses["push"] = push_loss(new_protos[present], stored, o.T)
                    losses["centre"] = centre_loss(stored, new_protos[present], o.R)
                    loss = loss + (o.pull * o.T ** t * losses["pull"] + o.push / (t + 1) * losses["push"]
                                   + o.centre * losses["centre"])
        losses["loss"] = loss
        return losses

    def end_task(self, task, ctx):
        super().end_task(task, ctx)  # exemplars of the new classes (closest to the class mean)
        self.refresh_prototypes(task, ctx)
        if self.options.bias_epochs > 0:
            self.fit_bias(task, ctx)

    @torch.no_grad()
    def refresh_prototypes(self, task, ctx):
        """Every seen class's prototype = mean embedding of its exemplars under the current encoder."""
        head = self.model.head
        labels = ctx.data.labels["train"].cpu().numpy()
        current = set(task.classes.tolist())
        per_class = {}
        for c, idx in self.memory.exemplars.items():
            if len(idx) == 0 and c in current:  # a budget of zero: fall back on all of the class's training images
                idx = task.train_indices[labels[task.train_indices] == c]
            per_class[c] = idx
        for c, mean in ctx.class_means(self.model, per_class).items():
            head.prototypes[c] = mean

    def fit_bias(self, task, ctx):
        """Re-measure stage: alpha, beta of this stage's classes on the frozen encoder, CE over all seen
        classes, on the stage's data plus the memory (the stream the stage saw)."""
        head = self.model.head
        indices = np.concatenate([task.train_indices, self.memory.indices()])
        feats, labels = ctx.features(self.model, indices)
        o = self.options
        milestones = list(range(o.bias_step, o.bias_epochs, o.bias_step))
        stage = ctx.stage(optimizer="adam", weight_decay=0.0, schedule="step", milestones=milestones, gamma=2.0,
                          warmup_epochs=0, sampler="instance")

        def step(f, y):
            return {"loss": F.cross_entropy(head(f), y)}

        ctx.fit(step, [head.alpha, head.beta], np.arange(len(labels)), stage, epochs=o.bias_epochs, lr=o.bias_lr,
                name="re-measure", augment=False, features=(feats, labels))
        start, end = int(head.current[0]), int(head.current[1])
        ctx.events.write({"event": "re_measure", "task": task.index,
                          "alpha": head.alpha[start:end].tolist(), "beta": head.beta[start:end].tolist()})

    def results_extra(self):
        head = self.model.head
        return {"re_measure": {"alpha": head.alpha.detach().cpu().tolist(), "beta": head.beta.detach().cpu().tolist()}}

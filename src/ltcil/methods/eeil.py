"""EEIL, End-to-End Incremental Learning (Castro et al., ECCV 2018): cross-entropy over all classes plus
distillation on the old classes' logits, on the new data and the exemplars (Sec. 3.2, Eq. 1-3); then balanced
fine-tuning (Sec. 3.4): the whole network trains a few more epochs at a lower lr on a class-balanced subset, as
many images of each new class as the memory keeps per old class, with a temporary distillation term that keeps
the new classes' outputs close to the model before fine-tuning."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..errors import ConfigError
from ..losses.distillation import kd_loss
from ..registry import register_method
from .distillation_base import TeacherMethod


@dataclass
class EEILOptions:
    T: float = 2.0  # Sec. 3.2: distillation temperature
    finetune_epochs: int = 30  # Sec. 3.4 / 4.1: balanced fine-tuning epochs (0: off)
    finetune_lr: float = 0.01  # Sec. 4.1: a tenth of the main training's lr
    finetune_milestones: Optional[list] = None  # lr / 10 at these fine-tuning epochs (None: every 10, Sec. 4.1)


@register_method("eeil")
class EEIL(TeacherMethod):
    Options = EEILOptions
    requires_memory = True  # Sec. 3.1: a memory of the most representative exemplars per class

    @classmethod
    def check(cls, options, cfg):
        if options.finetune_epochs < 0 or options.finetune_lr <= 0:
            raise ConfigError("method.finetune_epochs must be >= 0 and method.finetune_lr > 0.")

    def training_step(self, x, y):
        logits = self.model(x)
        ce = self.classification_loss(logits, y)
        if self.teacher is None:
            return {"loss": ce, "ce": ce}
        kd = kd_loss(logits[:, : self.old_classes], self.teacher_logits(x), self.options.T)  # Eq. 2-3
        return {"loss": ce + kd, "ce": ce, "kd": kd}

    def end_task(self, task, ctx):
        if task.index > 0 and self.options.finetune_epochs:
            self.balanced_finetuning(task, ctx)
        self.update_memory(task, ctx)

    def balanced_finetuning(self, task, ctx) -> None:
        """Sec. 3.4: the old classes' exemplars and as many randomly chosen images of each new class."""
        o = self.options
        per_old = min(len(v) for v in self.memory.exemplars.values())
        labels = ctx.data.labels["train"].cpu().numpy()
        rng = np.random.default_rng([self.cfg.seed, task.index, 29])
        new = [rng.permutation(task.train_indices[labels[task.train_indices] == c])[:per_old]
               for c in task.classes.tolist()]
        indices = np.concatenate([self.memory.indices(), *new])
        before = copy.deepcopy(self.model).eval()  # the temporary teacher of the new classes
        for p in before.parameters():
            p.requires_grad_(False)
        old = self.old_classes

        def step(x, y):
            logits = self.model(x)
            ce = self.classification_loss(logits, y)
            with torch.no_grad():
                previous, current = self.teacher(x), before(x)[:, old:]
            kd = kd_loss(logits[:, :old], previous, o.T) + kd_loss(logits[:, old:], current, o.T)
            return {"loss": ce + kd, "ce": ce, "kd": kd}

        milestones = o.finetune_milestones if o.finetune_milestones is not None else list(
            range(10, o.finetune_epochs, 10))
        stage = ctx.stage(schedule="step", milestones=milestones, gamma=0.1, warmup_epochs=0, sampler="instance")
        ctx.fit(step, self.trainable_parameters(), indices, stage, epochs=o.finetune_epochs, lr=o.finetune_lr,
                name="balanced fine-tuning", modules=[self.model])

"""EEIL, End-to-End Incremental Learning (Castro et al., ECCV 2018): cross-entropy over all classes plus
distillation on the old classes' logits, on the new data and the exemplars (Sec. 3.2, Eq. 1-3); then balanced
fine-tuning (Sec. 3.4): the whole network trains a few more epochs at a lower lr on a class-balanced subset, as
many images of each new class as the memory keeps per old class, with a temporary distillation term that keeps
the new classes' outputs close to the model before fine-tuning.

`variant: facil` runs it as FACIL's eeil.py does (Masana et al., TPAMI 2022, github.com/mmasana/FACIL; the code
Liu et al.'s Long-Tailed-CIL compares on): distillation per old task, binary cross-entropy between the task's
softmaxes at T; the most recent old task left out of it during the main training (that code's criterion stops
at head t - 1, so the first incremental task trains with no distillation at all); balanced fine-tuning on the
exemplars plus as many random images of the new task, pooled over its classes, as the whole memory holds,
distilling every old task from the previous model and nothing on the new classes."""

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
    variant: str = "paper"  # paper | facil: as FACIL's eeil.py runs it (see the module's docstring)


@register_method("eeil")
class EEIL(TeacherMethod):
    Options = EEILOptions
    requires_memory = True  # Sec. 3.1: a memory of the most representative exemplars per class

    @classmethod
    def check(cls, options, cfg):
        if options.finetune_epochs < 0 or options.finetune_lr <= 0:
            raise ConfigError("method.finetune_epochs must be >= 0 and method.finetune_lr > 0.")
        if options.variant not in ("paper", "facil"):
            raise ConfigError(f"method.variant: {options.variant!r} is not one of 'paper', 'facil'.")

    def begin_task(self, task, ctx):
        super().begin_task(task, ctx)
        sizes = [t.num_classes for t in ctx.scenario.tasks[: task.index]]
        self.old_task_ends = np.cumsum([0, *sizes]).tolist()  # class ranges of the old tasks: [ends[i], ends[i+1])

    def facil_kd(self, logits: torch.Tensor, old_logits: torch.Tensor, tasks: int) -> torch.Tensor:
        """FACIL's EEIL distillation: for each of the first `tasks` old tasks, BCE between the student's and the
        teacher's softmax over that task's classes at T (mean over images and classes; weight 1, no T^2)."""
        T, ends, total = self.options.T, self.old_task_ends, logits.new_zeros(())
        for i in range(tasks):
            p = torch.softmax(logits[:, ends[i] : ends[i + 1]].float() / T, dim=1)
            q = torch.softmax(old_logits[:, ends[i] : ends[i + 1]].float() / T, dim=1)
            # the log clamped at -100 as torch's binary_cross_entropy does (which autocast refuses to run)
            total = total - (q * p.log().clamp_min(-100) + (1 - q) * (1 - p).log().clamp_min(-100)).mean()
        return total

    def training_step(self, x, y):
        logits = self.model(x)
        ce = self.classification_loss(logits, y)
        if self.teacher is None:
            return {"loss": ce, "ce": ce}
        if self.options.variant == "facil":  # FACIL's eeil.py: the most recent old task is not distilled here
            kd = self.facil_kd(logits, self.teacher_logits(x), len(self.old_task_ends) - 2)
        else:
            kd = kd_loss(logits[:, : self.old_classes], self.teacher_logits(x), self.options.T)  # Eq. 2-3
        return {"loss": ce + kd, "ce": ce, "kd": kd}

    def end_task(self, task, ctx):
        if task.index > 0 and self.options.finetune_epochs:
            self.balanced_finetuning(task, ctx)
        self.update_memory(task, ctx)

    def balanced_finetuning(self, task, ctx) -> None:
        """Sec. 3.4: the old classes' exemplars and as many randomly chosen images of each new class."""
        o = self.options
        labels = ctx.data.labels["train"].cpu().numpy()
        rng = np.random.default_rng([self.cfg.seed, task.index, 29])
        if o.variant == "facil":  # as many new images, pooled over the task's classes, as the whole memory
            return self.facil_finetuning(task, ctx, rng)
        per_old = min(len(v) for v in self.memory.exemplars.values())
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

        stage = ctx.stage(schedule="step", milestones=self.milestones(), gamma=0.1, warmup_epochs=0, sampler="instance")
        ctx.fit(step, self.trainable_parameters(), indices, stage, epochs=o.finetune_epochs, lr=o.finetune_lr,
                name="balanced fine-tuning", modules=[self.model])

    def milestones(self) -> list:
        o = self.options
        return o.finetune_milestones if o.finetune_milestones is not None else list(range(10, o.finetune_epochs, 10))

    def facil_finetuning(self, task, ctx, rng) -> None:
        """FACIL's balanced fine-tuning: the memory plus len(memory) random images of the new task; every old
        task distilled from the previous model (the same teacher as the main training)."""
        o = self.options
        memory = self.memory.indices()
        indices = np.concatenate([memory, rng.permutation(task.train_indices)[: len(memory)]])
        tasks = len(self.old_task_ends) - 1

        def step(x, y):
            logits = self.model(x)
            ce = self.classification_loss(logits, y)
            kd = self.facil_kd(logits, self.teacher_logits(x), tasks)
            return {"loss": ce + kd, "ce": ce, "kd": kd}

        stage = ctx.stage(schedule="step", milestones=self.milestones(), gamma=0.1, warmup_epochs=0,
                          sampler="instance")
        ctx.fit(step, self.trainable_parameters(), indices, stage, epochs=o.finetune_epochs, lr=o.finetune_lr,
                name="balanced fine-tuning", modules=[self.model])

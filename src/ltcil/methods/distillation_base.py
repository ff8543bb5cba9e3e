"""Shared machinery of methods that distil from a frozen copy of the previous model (LwF, iCaRL, BiC)."""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..memory import ExemplarMemory
from .base import Method


class TeacherMethod(Method):
    """Keeps `self.teacher` (the model after the previous task, frozen) and an exemplar memory."""

    uses_memory = True

    def __init__(self, model, options, cfg, device):
        super().__init__(model, options, cfg, device)
        self.teacher = None
        self.old_classes = 0
        self.num_outputs = 0  # classes of the whole scenario (the iCaRL BCE normaliser), set at the first task
        mem = cfg.memory
        self.memory = ExemplarMemory(mem.size, mem.per_class, mem.selection) if self.uses_memory else None

    def begin_task(self, task, ctx):
        self.num_outputs = ctx.scenario.num_classes
        if self.memory is not None:
            self.memory.check_budget(ctx.scenario.num_classes)
        self.old_classes = self.model.num_classes
        if task.index > 0:
            self.teacher = self.frozen_copy()
        super().begin_task(task, ctx)

    def frozen_copy(self):
        teacher = copy.deepcopy(self.model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x)

    def train_indices(self, task, ctx):
        if self.memory is None or not self.memory.enabled:
            return task.train_indices
        return np.concatenate([task.train_indices, self.memory.indices()])

    def update_memory(self, task, ctx) -> None:
        """Select exemplars of the task's classes with the current model (iCaRL Alg. 3-5)."""
        if self.memory is None or not self.memory.enabled:
            return
        labels = ctx.data.labels["train"].cpu().numpy()
        per_class = {int(c): task.train_indices[labels[task.train_indices] == c] for c in task.classes}
        rng = np.random.default_rng([self.cfg.seed, task.index, 17])
        self.memory.update(per_class, lambda idx: ctx.features(self.model, idx)[0], rng)

    # Checkpoints are taken between tasks, where the teacher is re-created from the model by begin_task,
    # so it is not stored.
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["old_classes"] = self.old_classes
        if self.memory is not None:
            state["memory"] = self.memory.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.old_classes = state["old_classes"]
        if self.memory is not None and "memory" in state:
            self.memory.load_state_dict(state["memory"])

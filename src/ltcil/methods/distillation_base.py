"""Shared machinery of methods that distil from a frozen copy of the previous model (LwF, iCaRL, BiC)."""

from __future__ import annotations

import copy

import torch

from .exemplar_base import ReplayMethod


class TeacherMethod(ReplayMethod):
    """Keeps `self.teacher` (the model after the previous task, frozen) and an exemplar memory."""

    def __init__(self, model, options, cfg, device, **kwargs):
        super().__init__(model, options, cfg, device, **kwargs)
        self.teacher = None
        self.old_classes = 0
        self.num_outputs = 0  # classes of the whole scenario (the iCaRL BCE normaliser), set at the first task

    def begin_task(self, task, ctx):
        self.num_outputs = ctx.scenario.num_classes
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

    # Checkpoints are taken between tasks, where the teacher is re-created from the model by begin_task,
    # so it is not stored.
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["old_classes"] = self.old_classes
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.old_classes = state["old_classes"]

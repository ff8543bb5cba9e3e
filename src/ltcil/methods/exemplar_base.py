"""Exemplar replay shared by every method that keeps a memory: train on the task's data plus the stored
exemplars, and select the new classes' exemplars at the end of the task. With `memory.size = 0` and
`memory.per_class = 0` (the default) nothing is stored and the method trains on the task's data only."""

from __future__ import annotations

import numpy as np

from ..memory import ExemplarMemory
from .base import Method


class ReplayMethod(Method):
    uses_memory = True  # False: the method never stores exemplars whatever memory.* says (LwF)

    def __init__(self, model, options, cfg, device, **kwargs):
        super().__init__(model, options, cfg, device, **kwargs)
        mem = cfg.memory
        self.memory = ExemplarMemory(mem.size, mem.per_class, mem.selection) if self.uses_memory else None

    def begin_task(self, task, ctx):
        if self.memory is not None:
            self.memory.check_budget(ctx.scenario.num_classes)
        super().begin_task(task, ctx)

    def train_indices(self, task, ctx):
        if self.memory is None or not self.memory.enabled:
            return task.train_indices
        return np.concatenate([task.train_indices, self.memory.indices()])

    def end_task(self, task, ctx):
        self.update_memory(task, ctx)

    def update_memory(self, task, ctx, memory=None, stream: int = 17) -> None:
        """Select exemplars of the task's classes with the current model (iCaRL Alg. 3-5), into the method's
        memory or into `memory` (another selection, e.g. a fine-tuning set; `stream` seeds its random choices)."""
        memory = self.memory if memory is None else memory
        if memory is None or not memory.enabled:
            return
        labels = ctx.data.labels["train"].cpu().numpy()
        per_class = {int(c): task.train_indices[labels[task.train_indices] == c] for c in task.classes}
        rng = np.random.default_rng([self.cfg.seed, task.index, stream])
        memory.update(per_class, lambda idx: ctx.features(self.model, idx)[0], rng)

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.memory is not None:
            state["memory"] = self.memory.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.memory is not None and "memory" in state:
            self.memory.load_state_dict(state["memory"])

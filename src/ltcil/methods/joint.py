"""Joint training: every task trains on all data of all classes seen so far; the upper bound of CIL."""

from dataclasses import dataclass

import numpy as np

from ..registry import register_method
from .base import Method


@dataclass
class JointOptions:
    reset: bool = False  # re-initialise the network before each task (true joint training from scratch)


@register_method("joint")
class Joint(Method):
    Options = JointOptions

    def begin_task(self, task, ctx):
        if self.options.reset and task.index > 0:
            ctx.reset_model(self)
        super().begin_task(task, ctx)

    def train_indices(self, task, ctx):
        return np.concatenate([t.train_indices for t in ctx.scenario.tasks[: task.index + 1]])

"""What a plugin provides to the experiment."""

from __future__ import annotations

from typing import Optional

import torch


class Plugin:
    name = "plugin"  # the key of its state in checkpoints
    headline: Optional[str] = None  # a classifier of its own that the run reports as "accuracy" (eval.headline wins)

    def after_task(self, method, ctx) -> None:
        """After the method's end_task (memory updated), with the task's context (ctx.train_indices: what the
        task trained on)."""

    def classifiers(self, method, x: torch.Tensor) -> dict:
        """Extra classifiers' logits over the seen classes for a batch of inputs."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict, device) -> None:
        pass

"""Affine logit correction per task: q = alpha_t * o + beta_t on task t's classes (BiC, Wu et al. 2019, Eq. 4).

Task 0 is never corrected; each later task gets two scalars shared by its classes. Only the newest task's
pair is trained in BiC's stage 2; earlier pairs stay frozen at their fitted values.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class TaskBiasCorrection(nn.Module):
    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(0))  # scale per task
        self.beta = nn.Parameter(torch.zeros(0))  # shift per task
        self.register_buffer("boundaries", torch.zeros(1, dtype=torch.long))  # class offset where task t starts

    @property
    def num_tasks(self) -> int:
        return self.alpha.shape[0]

    def add_task(self, num_classes: int) -> None:
        with torch.no_grad():
            self.alpha = nn.Parameter(torch.cat([self.alpha.detach(), self.alpha.new_ones(1)]))
            self.beta = nn.Parameter(torch.cat([self.beta.detach(), self.beta.new_zeros(1)]))
            self.boundaries = torch.cat([self.boundaries, self.boundaries[-1:] + num_classes])

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if self.num_tasks <= 1:
            return logits
        # Per-column scale/shift built from the per-task scalars (task 0 columns: 1 and 0).
        n = logits.shape[1]
        sizes = (self.boundaries[1:] - self.boundaries[:-1]).clamp(min=0)
        task_of_column = torch.repeat_interleave(torch.arange(self.num_tasks, device=logits.device), sizes)[:n]
        alpha = self.alpha[task_of_column].clone()
        beta = self.beta[task_of_column].clone()
        first = int(self.boundaries[1])
        alpha[:first] = 1.0
        beta[:first] = 0.0
        return logits * alpha.to(logits.dtype) + beta.to(logits.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Grow to the stored number of tasks before loading (a fresh module loads a later checkpoint).
        stored = state_dict.get(prefix + "alpha")
        if isinstance(stored, torch.Tensor) and stored.shape != self.alpha.shape:
            self.alpha = nn.Parameter(torch.ones_like(stored))
            self.beta = nn.Parameter(torch.zeros_like(stored))
            self.boundaries = torch.zeros(stored.shape[0] + 1, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def pairs(self) -> list:
        return [{"scale": float(a), "shift": float(b)} for a, b in zip(self.alpha.detach(), self.beta.detach())]

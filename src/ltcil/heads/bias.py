"""BiC's bias correction (Wu et al. 2019, Sec. 5, Eq. 4): q_k = o_k for old classes and q_k = alpha * o_k + beta
for the newest task's classes, two scalars shared by that task's classes.

Only the newest task's pair is applied: at the next task the corrected model is the distillation teacher,
so the earlier correction is absorbed into the network, and the old classes are left as they are (Eq. 4).
The pairs of earlier tasks are kept for reporting (the seed README's scale/shift table).
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
        start, end = int(self.boundaries[-2]), int(self.boundaries[-1])
        corrected = logits[:, start:end] * self.alpha[-1].to(logits.dtype) + self.beta[-1].to(logits.dtype)
        return torch.cat([logits[:, :start], corrected, logits[:, end:]], dim=1)

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

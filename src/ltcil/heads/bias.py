"""BiC's bias correction (Wu et al. 2019, Sec. 5, Eq. 4): q_k = o_k for old classes and q_k = alpha * o_k + beta
for the newest task's classes, two scalars shared by that task's classes.

Only the newest task's pair is applied: at the next task the corrected model is the distillation teacher,
so the earlier correction is absorbed into the network, and the old classes are left as they are (Eq. 4).
The pairs of earlier tasks are kept for reporting (the seed README's scale/shift table). `keep_all=True`
applies every task's pair to its own classes instead, in every later forward pass (PyCIL's bic.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class TaskBiasCorrection(nn.Module):
    def __init__(self, keep_all: bool = False):
        super().__init__()
        self.keep_all = keep_all
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

    def forward(self, logits: torch.Tensor, newest: tuple | None = None) -> torch.Tensor:
        """`newest`: (scale, shift) tensors that stand in for the newest task's pair (what a fit optimises)."""
        if self.num_tasks <= 1:
            return logits
        alpha, beta = self.alpha, self.beta
        if newest is not None:
            alpha = torch.cat([alpha[:-1].detach(), newest[0].reshape(1)])
            beta = torch.cat([beta[:-1].detach(), newest[1].reshape(1)])
        if not self.keep_all:
            start, end = int(self.boundaries[-2]), int(self.boundaries[-1])
            corrected = logits[:, start:end] * alpha[-1].to(logits.dtype) + beta[-1].to(logits.dtype)
            return torch.cat([logits[:, :start], corrected, logits[:, end:]], dim=1)
        # every task's pair on its classes: one scale and shift per column
        sizes = self.boundaries[1:] - self.boundaries[:-1]
        scale = torch.repeat_interleave(alpha, sizes).to(logits.dtype)
        shift = torch.repeat_interleave(beta, sizes).to(logits.dtype)
        width = scale.shape[0]
        return torch.cat([logits[:, :width] * scale + shift, logits[:, width:]], dim=1)

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

"""Nearest-prototype classifier on squared Euclidean distance with a per-class "re-measure" correction
(COAOX/Class_incremental_learning_in_long_tail, thesis Sec. 2.3.2): logits_j = -(alpha_j * ||f(x) - c_j||^2 + beta_j).

alpha, beta start at 1 and 0 for every class; during a stage only the columns of that stage's classes learn,
the earlier ones are frozen (their gradient is cut), the per-class form of BiC's correction on distances.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def squared_distances(feats: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """||f_i - c_j||^2 for every pair, (N, C)."""
    return (feats.pow(2).sum(1, keepdim=True) - 2 * feats @ prototypes.T + prototypes.pow(2).sum(1)).clamp_min(0)


class PrototypeHead(nn.Module):
    def __init__(self, in_features: int):
        super().__init__()
        self.in_features = in_features
        self.register_buffer("prototypes", torch.zeros(0, in_features))
        self.alpha = nn.Parameter(torch.ones(0))
        self.beta = nn.Parameter(torch.zeros(0))
        self.register_buffer("current", torch.zeros(2, dtype=torch.long))  # [start, end) of the trainable columns

    @property
    def num_classes(self) -> int:
        return self.prototypes.shape[0]

    def add_classes(self, n: int) -> None:
        """Grow by n classes, which become the trainable columns; their prototypes are set later."""
        with torch.no_grad():
            start = self.num_classes
            self.prototypes = torch.cat([self.prototypes, self.prototypes.new_zeros(n, self.in_features)])
            self.alpha = nn.Parameter(torch.cat([self.alpha.detach(), self.alpha.new_ones(n)]))
            self.beta = nn.Parameter(torch.cat([self.beta.detach(), self.beta.new_zeros(n)]))
            self.current = torch.tensor([start, start + n], device=self.current.device)

    def corrected(self, distances: torch.Tensor) -> torch.Tensor:
        """alpha * d + beta; only the current columns pass gradient to alpha and beta."""
        start, end = int(self.current[0]), int(self.current[1])
        mask = torch.zeros(self.num_classes, dtype=torch.bool, device=distances.device)
        mask[start:end] = True
        alpha = torch.where(mask, self.alpha, self.alpha.detach())
        beta = torch.where(mask, self.beta, self.beta.detach())
        return alpha[: distances.shape[1]] * distances + beta[: distances.shape[1]]

    def logits(self, feats: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """Corrected negative distances to the given prototypes (rows aligned with this head's classes)."""
        return -self.corrected(squared_distances(feats, prototypes))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.logits(feats, self.prototypes)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        stored = state_dict.get(prefix + "prototypes")
        if isinstance(stored, torch.Tensor) and stored.shape != self.prototypes.shape:
            self.prototypes = torch.zeros_like(stored)
            self.alpha = nn.Parameter(torch.ones(stored.shape[0]))
            self.beta = nn.Parameter(torch.zeros(stored.shape[0]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

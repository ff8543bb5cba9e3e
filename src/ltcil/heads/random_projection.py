"""A random-projection ridge-regression classifier (McDonnell et al., "RanPAC: Random Projections and
Pre-trained Models for Continual Learning", NeurIPS 2023, Sec. 4.2-4.3): features f go through a fixed random
projection and a ReLU, h = relu(f P) with P ~ N(0, 1) of size L x M (Eq. 6), and the class weights are the
ridge-regression solution over every image seen so far, W = (G + lambda I)^-1 Q with G = sum h h^T and
Q = sum h y^T (Eq. 7-8). G and Q are sums, so a task adds its images' terms and forgets nothing.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class RandomProjectionHead(nn.Module):
    def __init__(self, in_features: int, projection: int, cosine: bool = False):
        super().__init__()
        self.in_features, self.projection_size, self.cosine = in_features, projection, cosine
        self.register_buffer("projection", torch.zeros(in_features, projection))  # drawn by the method (seeded)
        self.register_buffer("gram", torch.zeros(projection, projection, dtype=torch.float64))
        self.register_buffer("targets", torch.zeros(projection, 0, dtype=torch.float64))
        self.register_buffer("weight", torch.zeros(0, projection))
        self.register_buffer("ridge", torch.zeros((), dtype=torch.float64))

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def add_classes(self, n: int) -> None:
        self.targets = torch.cat([self.targets, self.targets.new_zeros(self.projection_size, n)], dim=1)
        self.weight = torch.cat([self.weight, self.weight.new_zeros(n, self.projection_size)])

    def expand(self, feats: torch.Tensor) -> torch.Tensor:
        """h = relu(f P) (Eq. 6)."""
        return torch.relu(feats.to(self.projection.dtype) @ self.projection)

    @torch.no_grad()
    def accumulate(self, h: torch.Tensor, labels: torch.Tensor) -> None:
        """G += h^T h, Q += h^T Y (Eq. 8), in float64: G sums every image of every task."""
        h64 = h.double()
        self.gram += h64.T @ h64
        self.targets.index_add_(1, labels, h64.T)

    @torch.no_grad()
    def solve(self, ridge: float) -> None:
        """W = ((G + lambda I)^-1 Q)^T (Eq. 7)."""
        eye = torch.eye(self.projection_size, dtype=torch.float64, device=self.gram.device)
        self.weight = torch.linalg.solve(self.gram + ridge * eye, self.targets).T.to(self.weight.dtype)
        self.ridge.fill_(ridge)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """h W^T as the paper scores (Sec. 4.3); `cosine`: cos(h, W_c) instead, as LAMDA-PILOT's RanPAC does (its
        CosineLinear normalises both), which changes the ranking where class rows differ in norm."""
        h = self.expand(feats)
        if self.cosine:
            return torch.nn.functional.normalize(h, dim=1) @ torch.nn.functional.normalize(self.weight, dim=1).T
        return h @ self.weight.T

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("targets", "weight"):  # grown over tasks: take the stored shape before copying
            stored = state_dict.get(prefix + name)
            if isinstance(stored, torch.Tensor) and stored.shape != getattr(self, name).shape:
                setattr(self, name, torch.zeros_like(stored, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def choose_ridge(h: torch.Tensor, labels: torch.Tensor, num_classes: int, candidates, held_out: torch.Tensor
                 ) -> tuple[float, list]:
    """The ridge value with the least squared error on `held_out` (a boolean mask over the rows) when fitted on
    the other rows (RanPAC Sec. 4.3: lambda chosen on part of the training data, never the test split). One
    eigendecomposition of the fit part's G serves every candidate: (G + lambda I)^-1 = V diag(1/(e + lambda)) V^T.
    Returns the value and the validation error of each candidate."""
    h = h.double()
    y = torch.nn.functional.one_hot(labels, num_classes).double()
    fit, val = h[~held_out], h[held_out]
    evals, evecs = torch.linalg.eigh(fit.T @ fit)
    vq = evecs.T @ (fit.T @ y[~held_out])
    hv = val @ evecs
    errors = []
    for ridge in candidates:
        pred = hv @ (vq / (evals.clamp_min(0) + ridge)[:, None])
        errors.append(float(((pred - y[held_out]) ** 2).mean()))
    best = min(range(len(errors)), key=errors.__getitem__)
    return float(candidates[best]), errors

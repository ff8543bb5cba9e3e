"""Exemplar selection within one class: herding, closest-to-mean, random. Returns indices in priority order,
so reducing a class's budget keeps the first m (iCaRL Alg. 5)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def herding(features: torch.Tensor, m: int) -> np.ndarray:
    """iCaRL Alg. 4 (Rebuffi et al. 2017): greedily add the sample that brings the running mean of the
    selected (per-sample L2-normalised) features closest to the class mean. Always returns min(m, n)
    distinct positions: rojinakashefi/LwF-iCaRL-Incremental-Learning's length-check bug, which could return far
    fewer, is not reproduced."""
    n = features.shape[0]
    m = min(m, n)
    phi = F.normalize(features.float(), dim=1)
    mu = phi.mean(0)
    chosen = torch.empty(m, dtype=torch.long, device=phi.device)
    running = torch.zeros_like(mu)
    taken = torch.zeros(n, dtype=torch.bool, device=phi.device)
    for k in range(1, m + 1):
        # distance of the candidate running mean (running + phi_x) / k to mu, for every x at once
        dist = (mu[None, :] - (running[None, :] + phi) / k).norm(dim=1)
        dist[taken] = float("inf")
        best = int(torch.argmin(dist))
        chosen[k - 1] = best
        taken[best] = True
        running += phi[best]
    return chosen.cpu().numpy()


def closest_to_mean(features: torch.Tensor, m: int) -> np.ndarray:
    """The m samples nearest the class mean of normalised features (COAOX/Class_incremental_learning_in_long_tail
    keeps 5 such per class)."""
    phi = F.normalize(features.float(), dim=1)
    dist = (phi - phi.mean(0, keepdim=True)).norm(dim=1)
    return torch.argsort(dist)[: min(m, len(dist))].cpu().numpy()


def random_selection(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(n)[: min(m, n)]


def select(strategy: str, features: torch.Tensor, m: int, rng: np.random.Generator) -> np.ndarray:
    if strategy == "herding":
        return herding(features, m)
    if strategy == "closest":
        return closest_to_mean(features, m)
    if strategy == "random":
        return random_selection(features.shape[0], m, rng)
    raise ValueError(f"unknown exemplar selection {strategy!r}")

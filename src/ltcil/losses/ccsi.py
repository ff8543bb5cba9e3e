"""Losses of CCSI (Ayromlou et al.): class-frequency weights over real images and impressions, the intra-domain
contrastive (IdC) loss between class centroids (LUCIR's margin ranking, which CCSI uses too, is in margin.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_weights(real: torch.Tensor, fake: torch.Tensor, ratio: float, kind: str) -> torch.Tensor:
    """max_c f_c / f_c per class from real-image and impression counts: f = counts ("dataset"), or each class's
    expected batch share when a share `ratio` of every batch is impressions ("batch")."""
    if kind == "batch" and fake.sum() > 0:
        freq = (1 - ratio) * real / real.sum().clamp_min(1) + ratio * fake / fake.sum()
    else:
        freq = real + fake
    return freq.max() / freq.clamp_min(freq[freq > 0].min())


def class_centroids(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean score vector of each class's rows; zero rows for absent classes."""
    sums = scores.new_zeros(num_classes, scores.shape[1]).index_add_(0, labels, scores)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).unsqueeze(1)
    return sums / counts.to(scores.dtype)


def idc_loss(source: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """-log( sum_i exp(t_i . s_i / tau) / sum_{i,j} exp(t_i . s_j / tau) ) on L2-normalised rows: each
    target centroid close to its own class's source centroid, relative to all pairs."""
    sim = F.normalize(target, dim=1) @ F.normalize(source, dim=1).T / temperature
    return -(torch.logsumexp(sim.diagonal(), 0) - torch.logsumexp(sim.flatten(), 0))


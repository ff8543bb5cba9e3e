"""Losses of the prototype method of COAOX/Class_incremental_learning_in_long_tail (thesis Sec. 2.3; released
train.py / prototypical_loss.py), on class prototypes P (k x D) and squared Euclidean distances."""

from __future__ import annotations

import torch

from ..heads.prototype import squared_distances

EPS = 1e-4


def batch_prototypes(feats: torch.Tensor, labels: torch.Tensor, start: int, end: int):
    """Mean feature of each class in [start, end) present in the batch: (prototypes (end-start, D), present mask).
    [BUG/QUIRK in the release: the mean of the first 5 samples of a class, and absent classes get a constant
    10000 prototype; here all of the class's samples are used and absent classes are masked out.]"""
    k = end - start
    local = labels - start
    inside = (local >= 0) & (local < k)
    sums = feats.new_zeros(k, feats.shape[1]).index_add_(0, local[inside], feats[inside])
    counts = torch.bincount(local[inside], minlength=k)
    return sums / counts.clamp_min(1).unsqueeze(1).to(feats.dtype), counts > 0


def prototype_spread_loss(protos: torch.Tensor) -> torch.Tensor:
    """Intra-stage regulariser c_dist: [sg(mean_c r_c)]^2 / mean_{c != c'} ||p_c - p_c'||^2 + sum_c softmax(r)_c^2,
    r_c = ||p_c - p_mean||^2: prototypes spread apart and equidistant from their centre."""
    k = len(protos)
    if k < 2:
        return protos.sum() * 0
    r = (protos - protos.mean(0)).pow(2).sum(1)
    pair = squared_distances(protos, protos)
    pair = torch.where(pair == 0, torch.full_like(pair, EPS), pair)  # the released code's zero guard
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=protos.device)
    return r.mean().detach().pow(2) / pair[off_diagonal].mean() + torch.softmax(r, 0).pow(2).sum()


def push_loss(new_protos: torch.Tensor, old_protos: torch.Tensor, T: float = 2.0) -> torch.Tensor:
    """Alg. 2 push: mean_j sum_i (||N_j - O_i||^2 / T)^(-1/2), new-class prototypes away from stored old ones."""
    d = squared_distances(new_protos, old_protos) / T
    return d.clamp_min(EPS).rsqrt().sum(1).mean()


def pull_loss(current_old: torch.Tensor, stored_old: torch.Tensor, T: float = 2.0) -> torch.Tensor:
    """Alg. 2 pull: mean_i softmax_k(||N_i - O_k||^2 / T)[i], the own-class share of the distances, so each old
    class's current prototype N_i moves toward its stored prototype O_i relative to the others."""
    d = squared_distances(current_old, stored_old) / T
    return torch.softmax(d, dim=1).diagonal().mean()


def centre_loss(stored_old: torch.Tensor, new_protos: torch.Tensor, R: float = 2.0) -> torch.Tensor:
    """Alg. 2 centre term: 1 / |R * max_i ||O_i - O_mean||^2 - ||O_mean - N_mean||^2|."""
    o_mean = stored_old.mean(0)
    radius = (stored_old - o_mean).pow(2).sum(1).max()
    gap = (o_mean - new_protos.mean(0)).pow(2).sum()
    return 1.0 / (R * radius - gap).abs().clamp_min(EPS)


def sample_mix(x_mem: torch.Tensor, y_mem: torch.Tensor, x_new: torch.Tensor, y_new: torch.Tensor,
               r: float, fraction: float = 0.1):
    """Sample Mix (thesis Sec. 2.3.1, Alg. 1): a contiguous slice [floor(n(r - fraction)), floor(n r)) of the
    memory batch, every pairing of it with the new images, pixel averages (x_m + x_n) / 2; each mixed image
    carries both labels. Returns (mixed images, new-image labels, memory labels)."""
    n = len(x_mem)
    start, end = int(n * (r - fraction)), int(n * r)
    start, end = max(0, start), max(end, start + 1)
    xm, ym = x_mem[start:end], y_mem[start:end]
    mixed = (xm[:, None] + x_new[None, :]) / 2
    pairs = len(xm) * len(x_new)
    return (mixed.reshape(pairs, *x_new.shape[1:]), y_new.repeat(len(xm)),
            ym.repeat_interleave(len(x_new)))

"""Losses for long-tailed training, each a function of logits, targets and per-class training counts.

All take `counts` (images per class of the training set in use, a float tensor on the logits' device), so
inside a class-incremental run they follow the current task's data plus memory, not a fixed prior.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def class_balanced_weights(counts: torch.Tensor, beta: float = 0.9999) -> torch.Tensor:
    """Cui et al., CVPR 2019, Eq. 3: w_c proportional to (1 - beta) / (1 - beta^n_c), normalised to sum to C.
    beta = 0 gives uniform weights. Classes without images get weight 0."""
    counts = counts.double()
    effective = (1.0 - torch.pow(beta, counts)) / (1.0 - beta) if beta > 0 else (counts > 0).double()
    weights = torch.where(counts > 0, 1.0 / effective.clamp_min(1e-12), torch.zeros_like(counts))
    return (weights * (counts > 0).sum() / weights.sum()).float()


def ldam_margins(counts: torch.Tensor, max_margin: float = 0.5) -> torch.Tensor:
    """Cao et al., NeurIPS 2019, Eq. 13: Delta_j = C / n_j^(1/4), with C such that the largest margin is max_margin."""
    raw = counts.double().clamp_min(1).pow(-0.25)
    return (raw * (max_margin / raw.max())).float()


def ldam_loss(cosine: torch.Tensor, target: torch.Tensor, margins: torch.Tensor, scale: float = 30.0,
              weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """LDAM (Cao et al., Eq. 10-11): softmax CE on s * (z - Delta_y at the true class only), z a cosine logit."""
    shifted = cosine - F.one_hot(target, cosine.shape[1]).to(cosine.dtype) * margins[target].unsqueeze(1)
    return F.cross_entropy(scale * shifted, target, weight=weight)


def balanced_softmax_loss(logits: torch.Tensor, target: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Balanced Softmax (Ren et al., NeurIPS 2020, Eq. 4): CE on logits + log n_c during training only.
    Classes without training images get log 0 = -inf, i.e. they are out of this batch's softmax."""
    return F.cross_entropy(logits + torch.log(counts.to(logits.dtype)), target)

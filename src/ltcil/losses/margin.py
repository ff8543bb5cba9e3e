"""LUCIR's regularisers (Hou et al., CVPR 2019, Sec. 3.2-3.3, Eqs. 6-8), used by LUCIR and CCSI."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def margin_ranking(cos: torch.Tensor, y: torch.Tensor, old_classes: int, margin: float, top_k: int) -> torch.Tensor:
    """LUCIR's margin ranking (Hou et al. 2019, Eq. 8) on old-class samples: mean over the top-K new-class
    cosines of max(0, m - cos_y + cos_k)."""
    own = cos.gather(1, y.unsqueeze(1))
    new = cos[:, old_classes:]
    hardest = new.topk(min(top_k, new.shape[1]), dim=1).values
    return F.relu(margin - own + hardest).mean()


def lucir_regularisers(
    feats: torch.Tensor,
    old_feats: torch.Tensor,
    cos: torch.Tensor,
    y: torch.Tensor,
    old_classes: int,
    *,
    lambda_base: float,
    margin: float,
    top_k: int,
    margin_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The less-forget constraint (Eq. 6) weighted by lambda_base * sqrt(old / new) (Eq. 7), plus the margin
    ranking (Eq. 8) on the old-class samples of the batch. Returns (weighted sum, less-forget, margin or None)."""
    new_classes = cos.shape[1] - old_classes
    lam = lambda_base * math.sqrt(old_classes / max(1, new_classes))
    less_forget = (1 - F.cosine_similarity(feats, old_feats, dim=1)).mean()
    total = lam * less_forget
    old_rows = y < old_classes
    ranking = None
    if old_rows.any():
        ranking = margin_ranking(cos[old_rows], y[old_rows], old_classes, margin, top_k)
        total = total + margin_weight * ranking
    return total, less_forget, ranking

"""LUCIR's inter-class separation (Hou et al., CVPR 2019, Sec. 3.3, Eq. 8), used by LUCIR and CCSI."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def margin_ranking(cos: torch.Tensor, y: torch.Tensor, old_classes: int, margin: float, top_k: int) -> torch.Tensor:
    """LUCIR's margin ranking (Hou et al. 2019, Eq. 8) on old-class samples: mean over the top-K new-class
    cosines of max(0, m - cos_y + cos_k)."""
    own = cos.gather(1, y.unsqueeze(1))
    new = cos[:, old_classes:]
    hardest = new.topk(min(top_k, new.shape[1]), dim=1).values
    return F.relu(margin - own + hardest).mean()

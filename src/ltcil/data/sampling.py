"""Which training images an epoch visits, and in what order.

- instance: every image once, shuffled (the default).
- class_balanced: class-aware sampling (Shen et al., ECCV 2016; cRT in Kang et al., ICLR 2020, Sec. 4): each
  draw picks a class uniformly, then `per_draw` images of it uniformly with replacement, so every class is
  equally likely whatever its size.
- sqrt: square-root sampling (Mahajan et al., 2018; Kang et al. Sec. 3): class c is drawn with probability
  proportional to sqrt(n_c).

Re-sampled epochs have as many images as the instance-balanced epoch, so schedules keep their meaning.
"""

from __future__ import annotations

import numpy as np
import torch

SAMPLERS = ("instance", "class_balanced", "sqrt")


def epoch_order(sampler: str, indices: np.ndarray, labels: np.ndarray, gen: torch.Generator,
                per_draw: int = 4) -> torch.Tensor:
    """Indices (into the split) for one epoch, in visiting order; `labels` are those of `indices`."""
    idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
    n = len(idx)
    if sampler == "instance":
        return idx[torch.randperm(n, generator=gen)]
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    classes, inverse, counts = torch.unique(lab, return_inverse=True, return_counts=True)
    if sampler == "class_balanced":
        draws = -(-n // per_draw)
        picked = torch.randint(len(classes), (draws,), generator=gen).repeat_interleave(per_draw)[:n]
        by_class = idx[torch.argsort(inverse, stable=True)]  # indices grouped by class, classes in order
        starts = torch.cumsum(counts, 0) - counts
        offset = (torch.rand(n, generator=gen) * counts[picked]).long().clamp_max(counts[picked] - 1)
        return by_class[starts[picked] + offset]
    if sampler == "sqrt":
        weights = counts.double().rsqrt()[inverse]  # per image n_c^-1/2, so class mass is sqrt(n_c)
        return idx[torch.multinomial(weights, n, replacement=True, generator=gen)]
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")

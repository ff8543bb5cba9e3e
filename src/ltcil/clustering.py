"""k-means with cosine distance on the training device, and the subclass split of SBCL (Hou et al., ICCV
2023, Sec. 3.1, Alg. 1, Eq. 3). Deterministic for a given torch.Generator."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _kmeanspp_init(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding with cosine distance: each next centre is drawn with probability ~ distance^2."""
    first = torch.randint(len(x), (1,), generator=gen, device=gen.device).to(x.device)
    centres = [x[first[0]]]
    dist = (1 - x @ centres[0]).clamp_min(0)
    for _ in range(1, k):
        weights = dist.pow(2)
        if float(weights.sum()) <= 0:  # every point coincides with a centre: any remaining point will do
            weights = torch.ones_like(weights)
        nxt = torch.multinomial(weights.to(gen.device), 1, generator=gen).to(x.device)
        centres.append(x[nxt[0]])
        dist = torch.minimum(dist, (1 - x @ centres[-1]).clamp_min(0))
    return torch.stack(centres)


def balanced_assign(sim: torch.Tensor, capacity: int) -> torch.Tensor:
    """Greedy balanced assignment (SBCL Alg. 1): the most similar (sample, centre) pairs are taken first and a
    centre closes once it holds `capacity` samples. Done in rounds: each round every unassigned sample bids
    for its best open centre and the centres accept their best bidders up to their remaining room."""
    n, k = sim.shape
    if capacity * k < n:
        raise ValueError(f"{k} centres of capacity {capacity} cannot hold {n} samples")
    label = torch.full((n,), -1, dtype=torch.long, device=sim.device)
    room = torch.full((k,), capacity, dtype=torch.long, device=sim.device)
    while True:
        todo = torch.nonzero(label < 0).flatten()
        if len(todo) == 0:
            return label
        s = sim[todo].masked_fill(room[None, :] <= 0, float("-inf"))
        best, centre = s.max(1)
        order = torch.argsort(best, descending=True, stable=True)
        todo, centre = todo[order], centre[order]
        # position of each bid among the bids for the same centre, best first
        by_centre = torch.argsort(centre, stable=True)
        sorted_c = centre[by_centre]
        first = torch.searchsorted(sorted_c, sorted_c, side="left")
        rank = torch.empty_like(centre)
        rank[by_centre] = torch.arange(len(centre), device=sim.device) - first
        accept = rank < room[centre]
        label[todo[accept]] = centre[accept]
        room -= torch.bincount(centre[accept], minlength=k)


def kmeans_cosine(x: torch.Tensor, k: int, gen: torch.Generator, iters: int = 35, tol: float = 1e-3,
                  balanced: bool = False) -> torch.Tensor:
    """Cluster ids (0..k-1) of the rows of x under cosine similarity. `balanced`: cluster sizes differ by at
    most one (capacity ceil(n/k) per cluster, greedy balanced assignment)."""
    n = len(x)
    if k <= 1 or n == 0:
        return torch.zeros(n, dtype=torch.long, device=x.device)
    if k >= n:
        return torch.arange(n, device=x.device)
    x = F.normalize(x.float(), dim=1)
    centres = _kmeanspp_init(x, k, gen)
    capacity = math.ceil(n / k)
    label = None
    for _ in range(iters):
        sim = x @ centres.T
        label = balanced_assign(sim, capacity) if balanced else sim.argmax(1)
        sums = torch.zeros_like(centres).index_add_(0, label, x)
        counts = torch.bincount(label, minlength=k)
        new = torch.where(counts[:, None] > 0, F.normalize(sums, dim=1), centres)  # an empty cluster keeps its centre
        shift = (1 - (new * centres).sum(1)).max()
        centres = new
        if float(shift) < tol:
            break
    sim = x @ centres.T
    return balanced_assign(sim, capacity) if balanced else sim.argmax(1)


def subclasses_per_class(counts: torch.Tensor, delta: int) -> torch.Tensor:
    """SBCL Eq. 3: M = max(n_tail, delta); class c splits into max(1, floor(n_c / M)) subclasses."""
    present = counts[counts > 0]
    m = max(int(present.min()), delta) if len(present) else delta
    return torch.clamp(counts.long() // m, min=1)


def split_into_subclasses(features: torch.Tensor, labels: torch.Tensor, num_classes: int, delta: int,
                          gen: torch.Generator, balanced: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Global subclass id of every row (ids of class c follow those of classes < c) and subclasses per class."""
    counts = torch.bincount(labels, minlength=num_classes)
    per_class = subclasses_per_class(counts, delta)
    offsets = torch.cumsum(per_class, 0) - per_class
    sub = torch.empty_like(labels)
    for c in torch.nonzero(counts).flatten().tolist():
        rows = torch.nonzero(labels == c).flatten()
        local = kmeans_cosine(features[rows], int(per_class[c]), gen, balanced=balanced)
        sub[rows] = offsets[c] + local
    return sub, per_class

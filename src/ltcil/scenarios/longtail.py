"""Long-tail profiles and per-class subsampling (Cao et al. 2019 / Cui et al. 2019 CIFAR-LT protocol)."""

from __future__ import annotations

import numpy as np


def exponential_profile(n_max: int, num_classes: int, imbalance_factor: float) -> np.ndarray:
    """n_i = floor(n_max * IF^(-i/(C-1))), i = 0..C-1 (LDAM-DRW's CIFAR-LT; IF=100 on CIFAR-100 -> 10,847 images)."""
    if num_classes == 1:
        return np.array([n_max], dtype=np.int64)
    i = np.arange(num_classes)
    # Same float arithmetic as the reference (n_max * (1/IF)^(i/(C-1)), truncated) so the counts match exactly.
    return np.array([int(n_max * (1.0 / imbalance_factor) ** (k / (num_classes - 1.0))) for k in i], dtype=np.int64)


def step_profile(n_max: int, num_classes: int, imbalance_factor: float, head_fraction: float = 0.5) -> np.ndarray:
    """Step imbalance (Buda et al. 2018): the first half of the classes keep n_max, the rest n_max / IF."""
    n_head = int(round(num_classes * head_fraction))
    counts = np.full(num_classes, int(n_max / imbalance_factor), dtype=np.int64)
    counts[:n_head] = n_max
    return counts


def random_exponential_profile(n_max: int, num_classes: int, imbalance_factor: float,
                               rng: np.random.Generator) -> np.ndarray:
    """The COAOX/Class_incremental_learning_in_long_tail thesis profile (Sec. 2.2): each class keeps a fraction
    R^-r of its images, r ~ U(0, 1) drawn per class, R = imbalance_factor. Expected images per class
    n_max (1 - 1/R) / ln R: with n_max 500 and 20
    classes per stage, 3,171 / 2,842 / 2,643 per stage for R = 20 / 30 / 40 (thesis Table 1: about 3,170 /
    2,860 / 2,640)."""
    r = rng.random(num_classes)
    return np.floor(n_max * imbalance_factor ** (-r)).astype(np.int64)


def profile_counts(profile: str, n_max: int, num_classes: int, imbalance_factor: float,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    if profile == "exp":
        return exponential_profile(n_max, num_classes, imbalance_factor)
    if profile == "step":
        return step_profile(n_max, num_classes, imbalance_factor)
    if profile == "random":
        return random_exponential_profile(n_max, num_classes, imbalance_factor, rng or np.random.default_rng(0))
    raise ValueError(f"unknown long-tail profile {profile!r}")


def subsample_per_class(
    labels: np.ndarray, classes: np.ndarray, counts: np.ndarray, rng: np.random.Generator
) -> dict[int, np.ndarray]:
    """Keep a seeded random subset of counts[k] images of classes[k]; returns class -> sorted indices."""
    kept = {}
    for cls, n in zip(classes.tolist(), counts.tolist()):
        idx = np.flatnonzero(labels == cls)
        if n < len(idx):
            idx = np.sort(rng.choice(idx, size=n, replace=False))
        kept[cls] = idx
    return kept


def subsample_ldam_drw(labels: np.ndarray, wanted: dict, seed: int) -> dict[int, np.ndarray]:
    """The images LDAM-DRW's IMBALANCECIFAR keeps (kaidic/LDAM-DRW, imbalance_cifar.py; Long-Tailed-CIL and
    imbalanced_cil copy it): numpy's global generator seeded once, then for every class of the dataset in id order
    its indices (ascending) shuffled and the first n kept. Every class draws its shuffle, kept or not, so a class's
    images do not depend on which other classes the scenario uses. `wanted`: class -> n; returns class -> its kept
    indices in the shuffled order (FACIL's validation split depends on it)."""
    rs = np.random.RandomState(seed)  # the legacy generator numpy.random.seed sets
    kept = {}
    for cls in np.unique(labels).tolist():
        idx = np.flatnonzero(labels == cls)
        rs.shuffle(idx)
        if cls in wanted:
            kept[cls] = idx[: wanted[cls]]
    return kept

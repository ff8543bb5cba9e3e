"""The embedded default: scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes).

Real data that ships with scikit-learn, so the quick start needs no download. Fixed stratified split:
a quarter of each class is the test set, chosen with a private generator (seed 0).
"""

from __future__ import annotations

import numpy as np

from ..config import DataConfig
from ..registry import register_dataset
from .base import Dataset, Split

TEST_FRACTION = 0.25
SPLIT_SEED = 0


@register_dataset("digits")
def load(cfg: DataConfig) -> Dataset:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no network

    raw = load_digits()
    images = np.round(raw.images * 255.0 / 16.0).astype(np.uint8)[..., None]  # 0..16 -> 0..255, (N, 8, 8, 1)
    labels = raw.target.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        is_test[rng.choice(idx, size=round(len(idx) * TEST_FRACTION), replace=False)] = True
    dataset = Dataset(
        name="digits",
        train=Split(images[~is_test], labels[~is_test]),
        test=Split(images[is_test], labels[is_test]),
        class_names=[str(d) for d in range(10)],
    )
    return dataset.validate("sklearn.datasets.load_digits")

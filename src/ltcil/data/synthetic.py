"""Generated data: one random smooth pattern per class plus noise. Learnable, any number of classes, no files;
for unit tests, smoke tests and scaling benchmarks (e.g. 1,000 classes)."""

from __future__ import annotations

import numpy as np

from ..config import DataConfig
from ..registry import register_dataset
from .base import Dataset, Split, check_fits_in_memory


def make_synthetic(num_classes: int, per_class: int, size: int = 8, channels: int = 3, seed: int = 0,
                   noise: float = 40.0) -> Dataset:
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(num_classes, 4, 4, channels))
    # Nearest-neighbour upsampling keeps the class patterns blocky and easy to tell apart.
    reps = -(-size // 4)
    patterns = coarse.repeat(reps, axis=1).repeat(reps, axis=2)[:, :size, :size]

    def split(n_per_class: int) -> Split:
        labels = np.repeat(np.arange(num_classes), n_per_class)
        images = patterns[labels] + rng.normal(0, noise, size=(len(labels), size, size, channels))
        return Split(np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64))

    train = split(per_class)
    test = split(max(1, per_class // 4))
    return Dataset("synthetic", train, test, [f"class_{c}" for c in range(num_classes)])


@register_dataset("synthetic")
def load(cfg: DataConfig) -> Dataset:
    size = cfg.image_size or 8
    n = cfg.num_classes * (cfg.images_per_class + max(1, cfg.images_per_class // 4))
    check_fits_in_memory(n * size * size * 3 * 8, f"{n:,} generated images at data.image_size={size}")  # float64
    return make_synthetic(cfg.num_classes, cfg.images_per_class, cfg.image_size or 8).validate("synthetic data")

"""Class order: natural, a seeded permutation, or an explicit list. Pure functions, no global RNG."""

from __future__ import annotations

from typing import Union

import numpy as np

from ..errors import ConfigError

# iCaRL's CIFAR-100 order (Rebuffi et al. 2017, official script; reused by BiC, PyCIL, FACIL):
# numpy.random.seed(1993); numpy.random.permutation(100). Shipped so tests can pin it.
ICARL_CIFAR100_ORDER = (
    68, 56, 78, 8, 23, 84, 90, 65, 74, 76, 40, 89, 3, 92, 55, 9, 26, 80, 43, 38,
    58, 70, 77, 1, 85, 19, 17, 50, 28, 53, 13, 81, 45, 82, 6, 59, 83, 16, 15, 44,
    91, 41, 72, 60, 79, 52, 20, 10, 31, 54, 37, 95, 14, 71, 96, 98, 97, 2, 64, 66,
    42, 22, 35, 86, 24, 34, 87, 21, 99, 0, 88, 27, 18, 94, 11, 12, 47, 25, 30, 46,
    62, 69, 36, 61, 7, 63, 75, 5, 32, 4, 51, 48, 73, 93, 39, 67, 29, 49, 57, 33,
)


def seeded_permutation(num_classes: int, seed: int) -> np.ndarray:
    """The legacy-NumPy permutation the iCaRL/BiC code uses, from a private RandomState (no global seeding)."""
    return np.random.RandomState(seed).permutation(num_classes)


def class_order(spec: Union[str, list], num_classes: int) -> np.ndarray:
    """Original class ids in arrival order. `spec`: 'natural', 'seed:N', or a list of ids (a subset is allowed)."""
    if isinstance(spec, list):
        order = np.asarray(spec, dtype=np.int64)
        bad = order[(order < 0) | (order >= num_classes)]
        if len(bad):
            raise ConfigError(
                f"scenario.order: class id {int(bad[0])} is out of range; the dataset has {num_classes} classes "
                f"(valid ids 0..{num_classes - 1})."
            )
        uniq, counts = np.unique(order, return_counts=True)
        if (counts > 1).any():
            raise ConfigError(f"scenario.order: class id {int(uniq[counts > 1][0])} appears more than once.")
        if len(order) == 0:
            raise ConfigError("scenario.order: the explicit order is empty.")
        return order
    if spec == "natural":
        return np.arange(num_classes, dtype=np.int64)
    return seeded_permutation(num_classes, int(spec.split(":", 1)[1])).astype(np.int64)

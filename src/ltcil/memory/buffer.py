"""Exemplar memory: *indices* into the training split, per class, in selection order. No image is copied."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError
from .selection import select


def class_budgets(available: dict[int, int], total: int, per_class: int) -> dict[int, int]:
    """Exemplars per class. per_class > 0: that many each. Otherwise floor(total / classes) each (iCaRL);
    a class with fewer images than its share keeps them all and the unused share is spread over the others,
    so long tails do not waste memory and tail classes are never starved."""
    if per_class > 0:
        return {c: min(per_class, n) for c, n in available.items()}
    budgets: dict[int, int] = {}
    remaining = dict(available)
    left = total
    while remaining:
        share = left // len(remaining)
        small = {c: n for c, n in remaining.items() if n <= share}
        if not small:
            budgets.update({c: share for c in remaining})
            break
        for c, n in small.items():
            budgets[c] = n
            left -= n
            del remaining[c]
    return budgets


class ExemplarMemory:
    def __init__(self, total: int = 0, per_class: int = 0, selection: str = "herding"):
        self.total = total
        self.per_class = per_class
        self.selection = selection
        self.exemplars: dict[int, np.ndarray] = {}  # arrival label -> train indices, priority order

    @property
    def enabled(self) -> bool:
        return self.total > 0 or self.per_class > 0

    def check_budget(self, num_classes: int, key: str = "memory.size") -> None:
        if self.per_class == 0 and 0 < self.total < num_classes:
            raise ConfigError(
                f"{key}: {self.total} exemplars cannot hold at least one per class for {num_classes} classes; "
                f"use memory.size >= {num_classes} or memory.per_class."
            )

    def indices(self) -> np.ndarray:
        if not self.exemplars:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([self.exemplars[c] for c in sorted(self.exemplars)])

    def __len__(self) -> int:
        return sum(len(v) for v in self.exemplars.values())

    def update(
        self,
        new_class_indices: dict[int, np.ndarray],
        features_fn: Callable[[np.ndarray], torch.Tensor],
        rng: np.random.Generator,
    ) -> None:
        """Shrink old classes to their new budget (keeping the first m) and select for the new classes."""
        available = {c: len(v) for c, v in self.exemplars.items()}
        # Old classes can only keep what they hold; new classes may choose from all their images.
        available.update({c: len(v) for c, v in new_class_indices.items()})
        budgets = class_budgets(available, self.total, self.per_class)
        for c in list(self.exemplars):
            self.exemplars[c] = self.exemplars[c][: budgets[c]]
        for c in new_class_indices:
            if budgets[c] == 0:
                self.exemplars[c] = np.zeros(0, dtype=np.int64)
        chosen = [c for c in new_class_indices if budgets[c] > 0]
        for group in _groups(chosen, new_class_indices, FEATURE_CHUNK):
            # features of a group of classes in one batched pass, not one small pass per class
            idx_all = np.concatenate([np.asarray(new_class_indices[c]) for c in group])
            feats_all = features_fn(idx_all) if self.selection != "random" else torch.zeros(len(idx_all), 1)
            start = 0
            for c in group:
                idx = np.asarray(new_class_indices[c])
                feats = feats_all[start : start + len(idx)]
                start += len(idx)
                order = select(self.selection, feats, budgets[c], rng)
                self.exemplars[c] = idx[order].astype(np.int64)

    def state_dict(self) -> dict:
        return {"classes": sorted(self.exemplars),
                "indices": [torch.from_numpy(self.exemplars[c]) for c in sorted(self.exemplars)]}

    def load_state_dict(self, state: dict) -> None:
        self.exemplars = {int(c): t.numpy().astype(np.int64) for c, t in zip(state["classes"], state["indices"])}


FEATURE_CHUNK = 16384  # images whose features are held at once while selecting (ImageNet: ~13 classes' worth)


def _groups(classes: list, indices: dict, limit: int):
    """Consecutive groups of classes holding at most `limit` images (a bigger class forms its own group)."""
    group, size = [], 0
    for c in classes:
        n = len(indices[c])
        if group and size + n > limit:
            yield group
            group, size = [], 0
        group.append(c)
        size += n
    if group:
        yield group

"""Scenario builder: class order + long-tail subsampling + validation split -> a list of Tasks.

Labels are remapped to arrival order (0..N-1); original ids stay in `Task.original_classes` and
`Scenario.order`. Everything here is index arithmetic over label arrays: no pixels are touched or copied.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..config import ScenarioConfig
from ..errors import ConfigError, DataError, LtcilWarning
from .facil import facil_validation
from .longtail import profile_counts, subsample_ldam_drw, subsample_per_class
from .order import class_order


@dataclass
class Task:
    index: int
    classes: np.ndarray  # arrival labels of this task's classes
    original_classes: list  # original dataset ids, same order
    train_indices: np.ndarray  # into the train split
    val_indices: np.ndarray  # into the validation pool (Scenario.val_pool)
    test_indices: np.ndarray  # into the test split

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class Scenario:
    order: np.ndarray  # original class ids in arrival order
    tasks: list
    train_counts: np.ndarray  # training images per arrival label (after long-tail subsampling and val carving)
    val_pool: str  # "train" (carved from training data) or "val" (the dataset's own validation split)
    label_maps: dict = field(default_factory=dict)  # split name -> arrival label per image (-1: unused class)

    @property
    def num_classes(self) -> int:
        return len(self.order)

    @property
    def is_imbalanced(self) -> bool:
        """More than 10% between the largest and smallest class (digits' natural 176-184 spread is balanced)."""
        return bool(self.train_counts.max() > 1.1 * self.train_counts.min())

    def seen_classes(self, task_index: int) -> int:
        return int(sum(t.num_classes for t in self.tasks[: task_index + 1]))

    def to_dict(self) -> dict:
        return {
            "class_order": self.order.tolist(),
            "tasks": [t.original_classes for t in self.tasks],
            "train_counts": self.train_counts.tolist(),
            "val_pool": self.val_pool,
        }


def task_sizes(num_classes: int, initial: int, increment) -> list[int]:
    """B0-Inc10: (100, 0, 10) -> [10]*10; B50-Inc10: (100, 50, 10) -> [50]+[10]*5; lists allowed."""
    if isinstance(increment, list):
        sizes = ([initial] if initial else []) + list(increment)
    elif increment == 0:
        if initial not in (0, num_classes):
            raise ConfigError(
                f"scenario.initial: {initial} classes in the first task but scenario.increment is 0 (a single "
                f"task); set scenario.increment to the classes per later task, or initial to {num_classes}."
            )
        sizes = [num_classes]
    else:
        first = initial or increment
        if first > num_classes:
            raise ConfigError(
                f"scenario.initial: {first} classes in the first task, but the scenario has only {num_classes}."
            )
        rest = num_classes - first
        if rest % increment:
            raise ConfigError(
                f"scenario.increment: {rest} classes after the first task do not split into tasks of {increment}; "
                f"choose an increment that divides {rest}, or give a list of task sizes."
            )
        sizes = [first] + [increment] * (rest // increment)
    if sum(sizes) != num_classes:
        raise ConfigError(
            f"scenario.increment: task sizes {sizes} sum to {sum(sizes)}, but the scenario has {num_classes} classes."
        )
    return sizes


def _label_map(labels: np.ndarray, order: np.ndarray, num_dataset_classes: int) -> np.ndarray:
    lookup = np.full(num_dataset_classes, -1, dtype=np.int64)
    lookup[order] = np.arange(len(order))
    return lookup[labels]


def _balanced_validation(all_idx: np.ndarray, kept: np.ndarray, k: int, rng: np.random.Generator):
    """k validation images of one class: first from images the long-tail profile left out, then (only when
    those run short, e.g. CIFAR-LT's head class, which keeps all 500) from the kept ones, leaving >= 1."""
    left_out = rng.permutation(np.setdiff1d(all_idx, kept))
    val = left_out[:k]
    train = kept
    short = min(k - len(val), len(kept) - 1)
    if short > 0:
        perm = rng.permutation(kept)
        val, train = np.concatenate([val, perm[:short]]), perm[short:]
    return np.sort(val), np.sort(train)


def _warn_thin_splits(cfg: ScenarioConfig, order: np.ndarray, kept: dict, train_idx: dict, test_labels) -> None:
    """Say so when the validation split takes most of a class's training images, and when a class has no test
    image (its accuracy is then reported as null); refuse a test split with no image of any class."""
    taken = {c: len(kept[c]) - len(train_idx[c]) for c in order.tolist()}
    thin = [c for c in order.tolist() if taken[c] > len(train_idx[c])]
    if thin:
        c = min(thin, key=lambda k: len(train_idx[k]))
        key = "scenario.val_per_class" if cfg.val_per_class > 0 else "scenario.val_fraction"
        warnings.warn(LtcilWarning(
            f"{key}={getattr(cfg, key.split('.')[1])} takes more than half of the training images of {len(thin)} "
            f"class(es): class {c} trains on {len(train_idx[c])} image(s) beside {taken[c]} validation images."))
    test_counts = np.bincount(test_labels, minlength=int(order.max()) + 1)[order]
    if not test_counts.any():
        raise DataError("the test split holds no image of the scenario's classes; nothing could be evaluated.")
    if (test_counts == 0).any():
        missing = order[test_counts == 0]
        warnings.warn(LtcilWarning(
            f"{len(missing)} class(es) have no test image (class {int(missing[0])}"
            f"{' and others' if len(missing) > 1 else ''}): their accuracy is reported as null and they do not "
            "count in the averages."))


def build_scenario(
    cfg: ScenarioConfig,
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    num_dataset_classes: int,
    val_labels: Optional[np.ndarray] = None,
) -> Scenario:
    order = class_order(cfg.order, num_dataset_classes)
    sizes = task_sizes(len(order), cfg.initial, cfg.increment)
    rng = np.random.default_rng(cfg.seed)

    available = np.bincount(train_labels, minlength=num_dataset_classes)[order]
    if (available == 0).any():
        missing = int(order[np.flatnonzero(available == 0)[0]])
        raise ConfigError(f"scenario.order: class {missing} has no training images in this dataset.")
    if cfg.imbalance_factor > 1:
        position = np.arange(len(order))
        if cfg.longtail_by == "class_id":
            # Profile by original id (ordered LT-CIL when the order is natural): rank of each arriving class.
            position = np.argsort(np.argsort(order))
        profile = profile_counts(cfg.longtail_profile, int(available.max()), len(order), cfg.imbalance_factor, rng)
        # Every class keeps at least one image: a tiny n_max with a large IF would otherwise empty the tail.
        wanted = np.minimum(np.maximum(profile[position], 1), available)
    else:
        wanted = available
    if cfg.longtail_images == "ldam_drw" and cfg.imbalance_factor > 1:  # balanced: every image, in dataset order
        in_order = subsample_ldam_drw(train_labels, dict(zip(order.tolist(), wanted.tolist())), 0)
        kept = {c: np.sort(idx) for c, idx in in_order.items()}
    else:
        kept = in_order = subsample_per_class(train_labels, order, wanted, rng)

    # Validation: the dataset's own split when it has one, else a per-class share carved from training data.
    train_idx_per_class, val_idx_per_class = {}, {}
    if cfg.val_per_class > 0 and cfg.val_fraction > 0:
        raise ConfigError("scenario.val_per_class and scenario.val_fraction are both set; choose one.")
    if cfg.val_per_class > 0:
        val_pool = "train"
        for cls in order.tolist():
            val, train = _balanced_validation(np.flatnonzero(train_labels == cls), kept[cls], cfg.val_per_class, rng)
            val_idx_per_class[cls], train_idx_per_class[cls] = val, train
    elif cfg.val_rule == "facil" and cfg.val_fraction > 0:
        val_pool = "train"
        bounds = np.cumsum([0] + sizes)
        train_idx_per_class, val_idx_per_class = facil_validation(
            train_labels, [order[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])], in_order, cfg.val_fraction,
            cfg.seed)
    elif val_labels is not None and cfg.val_fraction == 0:
        val_pool = "val"
        for cls in order.tolist():
            train_idx_per_class[cls] = kept[cls]
            val_idx_per_class[cls] = np.flatnonzero(val_labels == cls)
    else:
        val_pool = "train"
        for cls in order.tolist():
            idx = kept[cls]
            n_val = int(round(len(idx) * cfg.val_fraction))
            if cfg.val_fraction > 0 and len(idx) > 1:
                n_val = min(max(n_val, 1), len(idx) - 1)  # every class keeps >= 1 training image
            perm = rng.permutation(idx)
            val_idx_per_class[cls] = np.sort(perm[:n_val])
            train_idx_per_class[cls] = np.sort(perm[n_val:])

    _warn_thin_splits(cfg, order, kept, train_idx_per_class, test_labels)
    tasks, start = [], 0
    for t, size in enumerate(sizes):
        original = order[start : start + size]
        tasks.append(
            Task(
                index=t,
                classes=np.arange(start, start + size),
                original_classes=original.tolist(),
                train_indices=np.concatenate([train_idx_per_class[c] for c in original.tolist()]),
                val_indices=np.concatenate([val_idx_per_class[c] for c in original.tolist()]).astype(np.int64),
                test_indices=np.flatnonzero(np.isin(test_labels, original)),
            )
        )
        start += size
    train_counts = np.array([len(train_idx_per_class[c]) for c in order.tolist()], dtype=np.int64)
    label_maps = {
        "train": _label_map(train_labels, order, num_dataset_classes),
        "test": _label_map(test_labels, order, num_dataset_classes),
    }
    if val_labels is not None:
        label_maps["val"] = _label_map(val_labels, order, num_dataset_classes)
    return Scenario(order=order, tasks=tasks, train_counts=train_counts, val_pool=val_pool, label_maps=label_maps)

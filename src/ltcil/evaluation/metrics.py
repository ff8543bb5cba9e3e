"""CIL metrics from per-sample predictions: accuracy matrix, average incremental accuracy, forgetting,
old/new and many/medium/few-shot accuracy. Pure NumPy over label arrays; all values in percent."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def accuracy(pred: np.ndarray, target: np.ndarray) -> Optional[float]:
    if len(target) == 0:
        return None
    return float((pred == target).mean() * 100)


def per_class_accuracy(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy of each class 0..num_classes-1 (NaN where a class has no test sample)."""
    correct = np.bincount(target, weights=(pred == target).astype(float), minlength=num_classes)
    total = np.bincount(target, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1) * 100, np.nan)


def task_accuracies(pred: np.ndarray, target: np.ndarray, task_of_class: np.ndarray, num_tasks: int) -> list:
    """One row of the accuracy matrix: accuracy on each task's classes (None for tasks not yet seen)."""
    task = task_of_class[target]
    return [accuracy(pred[task == j], target[task == j]) for j in range(num_tasks)]


def average_incremental_accuracy(acc_per_step: Sequence[float]) -> float:
    """Mean over steps of the accuracy on all seen classes (Rebuffi et al. 2017, iCaRL Sec. 4)."""
    return float(np.mean(acc_per_step))


def forgetting(matrix: Sequence[Sequence[Optional[float]]]) -> Optional[float]:
    """Average forgetting after the last step (Chaudhry et al. 2018, Eq. 4):
    mean over tasks j < T-1 of max_{t < T-1} A[t][j] - A[T-1][j]. None with a single task."""
    last = len(matrix) - 1
    if last < 1:
        return None
    drops = []
    for j in range(last):
        best = max(matrix[t][j] for t in range(j, last) if matrix[t][j] is not None)
        drops.append(best - matrix[last][j])
    return float(np.mean(drops))


def forgetting_per_step(matrix) -> list:
    """Forgetting after each step t (None at step 0), the same definition truncated at t."""
    return [forgetting([row[: t + 1] for row in matrix[: t + 1]]) for t in range(len(matrix))]


def shot_thresholds(train_counts: np.ndarray, many: float = 100, few: float = 20, rule: str = "absolute"):
    """(many, few) thresholds: the given ones (Liu et al. 2019's >100 / <20 for CIFAR/ImageNet-LT), or with
    rule "quantile" the 2/3 and 1/3 quantiles of the training counts, for data with hundreds of images per class
    where every class would be "many"."""
    if rule == "quantile" and len(train_counts):
        low, high = np.quantile(np.asarray(train_counts, dtype=float), [1 / 3, 2 / 3])
        return float(high), float(low)
    return float(many), float(few)


def shot_groups(train_counts: np.ndarray, many: float = 100, few: float = 20, rule: str = "absolute") -> dict:
    """many: more than the many threshold of training images; few: fewer than the few one; medium: the rest."""
    many, few = shot_thresholds(train_counts, many, few, rule)
    return {
        "many": train_counts > many,
        "medium": (train_counts <= many) & (train_counts >= few),
        "few": train_counts < few,
    }


def group_accuracy(pred: np.ndarray, target: np.ndarray, class_mask: np.ndarray) -> Optional[float]:
    """Accuracy over the test samples whose class is in `class_mask` (None when the group is empty)."""
    keep = class_mask[target]
    return accuracy(pred[keep], target[keep])


def topk_correct(logits: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, kth=k - 1, axis=1)[:, :k]
    return (top == target[:, None]).any(axis=1)


def mean_class_accuracy(pred, target) -> float:
    """Accuracy averaged over classes (torch tensors), the quantity a balanced test set measures."""
    import torch

    classes = torch.unique(target)
    hits = torch.stack([(pred[target == c] == c).float().mean() for c in classes])
    return float(hits.mean() * 100)

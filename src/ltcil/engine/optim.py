"""Optimiser and learning-rate schedule from a TrainConfig-like stage description."""

from __future__ import annotations

import math

import torch


def build_optimizer(params, stage, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """`params`: tensors, or param-group dicts whose "lr_scale" multiplies the lr of that group."""
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
    else:
        params = [p for p in params if p.requires_grad]
    fused = {"fused": True} if device.type == "cuda" else {}
    if stage.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=stage.momentum, weight_decay=stage.weight_decay, **fused)
    if stage.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=stage.weight_decay, **fused)
    if stage.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=stage.weight_decay, **fused)
    raise ValueError(f"unknown optimizer {stage.optimizer!r}")


def lr_factor(stage, epoch: float, epochs: int) -> float:
    """Multiplier of the base lr at `epoch` (0-based; fractional inside an epoch when the schedule moves every
    step): linear warm-up, then constant / step (milestones in whole epochs) / cosine / quarter_cosine (CODA-Prompt's
    released schedule: cos(0.495 pi e / (E - 1)), from the base lr down to 1.6% of it at the last epoch) /
    cosine_to_zero (the cosine reaching 0 at the last epoch: Balanced Softmax's CosineAnnealingLRWarmup, stepped
    at each epoch's start) / cosine_skip_first (PyTorch's CosineAnnealingLR over E epochs stepped before each
    epoch, as Kang et al.'s classifier-balancing code does: epoch e at the cosine's value for e + 1, so the first
    epoch is already below the base lr and the last is at 0). The warm-up goes (e+1)/(W+1), or linearly from
    `warmup_from` at epoch 0 towards 1 at epoch W when that is set (Balanced Softmax's code: from its base lr 0.05
    up to its warm-up lr 0.1)."""
    warm = stage.warmup_epochs
    if epoch < warm:
        start = getattr(stage, "warmup_from", None)
        return (epoch + 1) / (warm + 1) if start is None else start + (1 - start) * epoch / warm
    if stage.schedule == "step":
        return stage.gamma ** sum(int(epoch) >= m for m in stage.milestones)
    if stage.schedule in ("cosine", "cosine_to_zero"):
        span = max(epochs - warm - (stage.schedule == "cosine_to_zero"), 1)
        return 0.5 * (1 + math.cos(math.pi * min(epoch - warm, span) / span))
    if stage.schedule == "cosine_skip_first":
        span = max(epochs - warm, 1)
        return 0.5 * (1 + math.cos(math.pi * min(epoch + 1 - warm, span) / span))
    if stage.schedule == "quarter_cosine":
        span = max(epochs - warm - 1, 1)
        return math.cos(99 * math.pi * (epoch - warm) / (200 * span))
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)

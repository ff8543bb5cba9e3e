"""Class impressions: images of old classes synthesised from a frozen model's weights alone (CCSI,
sanaAyrml/Class-Impresion-for-Data-free-Incremental-Learning; the objective follows DeepInversion, Yin et al.,
CVPR 2020, Eq. 2-5).

Pixels start from a class's mean image plus noise and are optimised with Adam to minimise
    main * CE(f(x'), y) + bn * sum_l w_l (||mu_l(x') - mu_l^run||_2 + ||var_l(x') - var_l^run||_2)
    + tv_l2 * TV2(x') + tv_l1 * TV1(x') + l2 * mean_b ||x_b||_2,
where x' is x randomly rolled (jitter) and flipped, mu_l / var_l are the per-channel batch statistics of the
input of every BatchNorm layer l (inside Continual Normalization too) and w_l is `first_bn_weight` for the
first layer and 1 for the rest. The lr warms up linearly, then follows a cosine; the best iterate is kept.

Fast path: the BN statistics belong to a batch (the seed's 40 images), but nothing else couples images, so
many batches ("groups") go through the network in one forward pass and every loss term is computed per
group with segment sums. Each group's optimisation is exactly what it would be alone (Adam is per pixel),
and the device sees one large batch instead of many small ones. No host synchronisation inside the loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ImpressionConfig:
    iterations: int = 5000  # seed (setting_id 1): one full-resolution pass of 5,000 Adam steps
    lr: float = 0.05
    beta1: float = 0.5
    beta2: float = 0.9
    warmup: int = 100  # linear warm-up iterations
    main: float = 1.0  # CE on the target class
    bn: float = 1.0  # statistics matching (r_feature)
    first_bn_weight: float = 10.0
    tv_l2: float = 0.01
    tv_l1: float = 0.0
    l2: float = 0.1
    jitter: int = 30  # roll by up to this many pixels in H and W
    flip: bool = True
    noise: float = 0.1  # std of the Gaussian noise added to the mean image (pixel scale [0, 1])


def learning_rate(it: int, cfg: ImpressionConfig) -> float:
    """Linear warm-up, then 0.5 * (1 + cos(pi * e / E)) * lr. [BUG/QUIRK in the release: a factor 0.2, so the
    lr drops from lr to 0.4 lr right after the warm-up; DeepInversion's 0.5 keeps the curve continuous.]"""
    if it < cfg.warmup:
        return cfg.lr * (it + 1) / cfg.warmup
    span = max(1, cfg.iterations - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * (it - cfg.warmup) / span)) * cfg.lr


class _StatisticsHooks:
    """Per-group BN statistics loss, summed over every BatchNorm layer the forward pass crosses."""

    def __init__(self, model: nn.Module, first_weight: float):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.first_weight = first_weight
        self.groups = None  # (group ids (N,), counts (G, 1)) of the current pass
        self.loss = None
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.layers)]

    def _hook(self, index: int):
        def hook(module, inputs, output):
            x = inputs[0].float()
            ids, counts = self.groups
            n_groups = len(counts)
            per_sample = x.mean(dim=(2, 3)), x.pow(2).mean(dim=(2, 3))  # (N, C) each
            mean = x.new_zeros(n_groups, x.shape[1]).index_add_(0, ids, per_sample[0]) / counts
            square = x.new_zeros(n_groups, x.shape[1]).index_add_(0, ids, per_sample[1]) / counts
            var = (square - mean.pow(2)).clamp_min(0)  # biased, as BN's batch statistics
            term = (mean - module.running_mean).norm(dim=1) + (var - module.running_var).norm(dim=1)
            weight = self.first_weight if index == 0 else 1.0
            self.loss = term * weight if self.loss is None else self.loss + term * weight
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _group_sum(values: torch.Tensor, ids: torch.Tensor, n_groups: int) -> torch.Tensor:
    return values.new_zeros(n_groups).index_add_(0, ids, values)


def image_priors(x: torch.Tensor, ids: torch.Tensor, n_groups: int):
    """Per group: TV2 = sum of the L2 norms of the four neighbour differences, TV1 = their mean absolute
    values, and the mean L2 norm of the images."""
    diffs = (x[:, :, :, :-1] - x[:, :, :, 1:], x[:, :, :-1, :] - x[:, :, 1:, :],
             x[:, :, 1:, :-1] - x[:, :, :-1, 1:], x[:, :, :-1, :-1] - x[:, :, 1:, 1:])
    counts = _group_sum(torch.ones(len(x), device=x.device), ids, n_groups)
    tv2 = sum(_group_sum(d.pow(2).flatten(1).sum(1), ids, n_groups).clamp_min(1e-12).sqrt() for d in diffs)
    tv1 = sum(_group_sum(d.abs().flatten(1).mean(1), ids, n_groups) / counts for d in diffs)
    l2 = _group_sum(x.flatten(1).norm(dim=1), ids, n_groups) / counts
    return tv2, tv1, l2


def _roll_groups(x: torch.Tensor, bounds: list, shifts: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Each group rolled by its own (dy, dx) and flipped or not (shifts and flips drawn on the host)."""
    parts = []
    for (start, end), (dy, dx), flip in zip(bounds, shifts.tolist(), flips.tolist()):
        part = torch.roll(x[start:end], shifts=(dy, dx), dims=(2, 3))
        parts.append(part.flip(3) if flip else part)
    return torch.cat(parts)


def synthesize(model: nn.Module, init: torch.Tensor, labels: torch.Tensor, group_size: int,
               cfg: ImpressionConfig, low: torch.Tensor, high: torch.Tensor, gen: torch.Generator,
               parallel: int = 0) -> tuple[torch.Tensor, dict]:
    """Optimise `init` (N, C, H, W, in the model's input space) into impressions of `labels`, in groups of
    `group_size` images sharing BN statistics; `parallel` groups per forward pass (0: all). Pixels are
    clamped per channel to [low, high] (the normalised image of 0 and 255) after every step.
    Returns (images, stats) with the objective of the first and the kept iterate per group."""
    was_training = model.training
    model.eval()
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    n = len(init)
    group_of = torch.arange(n, device=init.device) // group_size
    n_groups = int(group_of[-1]) + 1 if n else 0
    parallel = parallel or n_groups
    out = torch.empty_like(init)
    first_loss, best_loss = [], []
    start_time = time.perf_counter()
    hooks = _StatisticsHooks(model, cfg.first_bn_weight)
    try:
        for g0 in range(0, n_groups, parallel):
            g1 = min(n_groups, g0 + parallel)
            rows = (group_of >= g0) & (group_of < g1)
            x0, y = init[rows], labels[rows]
            ids = group_of[rows] - g0
            counts = torch.bincount(ids, minlength=g1 - g0)
            bounds = [(int(a), int(b)) for a, b in zip(counts.cumsum(0) - counts, counts.cumsum(0))]
            hooks.groups = (ids, counts.to(init.dtype).unsqueeze(1))
            x = x0.clone().requires_grad_(True)
            opt = torch.optim.Adam([x], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)
            kept, kept_loss = x0.clone(), torch.full((g1 - g0,), float("inf"), device=x.device)
            for it in range(cfg.iterations):
                for group in opt.param_groups:
                    group["lr"] = learning_rate(it, cfg)
                shifts = torch.randint(-cfg.jitter, cfg.jitter + 1, (g1 - g0, 2), generator=gen)
                flips = torch.rand(g1 - g0, generator=gen) < 0.5 if cfg.flip else torch.zeros(g1 - g0, dtype=bool)
                xj = _roll_groups(x, bounds, shifts, flips) if cfg.jitter or cfg.flip else x
                hooks.loss = None
                logits = model(xj)
                ce = _group_sum(F.cross_entropy(logits, y, reduction="none"), ids, g1 - g0) / counts
                tv2, tv1, l2 = image_priors(xj, ids, g1 - g0)
                stats = hooks.loss if hooks.loss is not None else torch.zeros_like(ce)
                loss = cfg.main * ce + cfg.bn * stats + cfg.tv_l2 * tv2 + cfg.tv_l1 * tv1 + cfg.l2 * l2
                # Keep the iterate the loss was measured on (before this step), group by group.
                better = loss.detach() < kept_loss
                kept = torch.where(better[ids].view(-1, 1, 1, 1), x.detach(), kept)
                kept_loss = torch.where(better, loss.detach(), kept_loss)
                if it == 0:
                    first_loss.append(loss.detach())
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()
                opt.step()
                with torch.no_grad():
                    x.copy_(torch.maximum(torch.minimum(x, high), low))
            out[rows] = kept
            best_loss.append(kept_loss)
    finally:
        hooks.close()
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
        model.train(was_training)
    seconds = time.perf_counter() - start_time
    first = torch.cat(first_loss) if first_loss else torch.zeros(0)
    best = torch.cat(best_loss) if best_loss else torch.zeros(0)
    return out, {"images": n, "groups": n_groups, "iterations": cfg.iterations, "seconds": seconds,
                 "seconds_per_image": seconds / max(1, n), "first_loss": first.mean().item() if n else 0.0,
                 "best_loss": best.mean().item() if n else 0.0}

"""RanPAC (McDonnell et al., "RanPAC: Random Projections and Pre-trained Models for Continual Learning",
NeurIPS 2023): a frozen pre-trained backbone, a fixed random ReLU projection of its features to M dimensions
(Sec. 4.2) and a ridge-regression classifier over the projected features of every image seen so far, updated
in closed form after each task (Sec. 4.3; heads/random_projection.py). No exemplars, no gradient steps.

The projection size and the ridge search are LAMDA-PILOT's (`exps/ranpac.json`, `models/ranpac.py`): M = 10000,
lambda from 10^-8 .. 10^8 chosen by the squared error on 20% of the task's training images after fitting on
the other 80%, then the classifier solved with G and Q of everything seen. Phase 1 of the paper (adapting the
backbone with a parameter-efficient method on the first task, Sec. 4.1; PILOT's adapter, 20 epochs) is not part
of this method yet: this is the paper's ablation without Phase 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from ..heads.random_projection import RandomProjectionHead, choose_ridge
from ..registry import register_method
from .frozen_base import FrozenBackboneMethod


@dataclass
class RanPACOptions:
    projection: int = 10000  # M, the random projection's size (Sec. 4.2; the authors' code: 10000)
    ridge: float = 0.0  # lambda; 0 = chosen after each task from ridge_grid on a held-out 20% (Sec. 4.3)
    ridge_grid: list = field(default_factory=lambda: [10.0 ** k for k in range(-8, 9)])  # PILOT's grid
    held_out: float = 0.2  # the share of a task's training images lambda is chosen on
    scoring: str = "linear"  # linear: h W^T (the paper, the authors' code) | cosine: cos(h, W_c) (LAMDA-PILOT)


@register_method("ranpac")
class RanPAC(FrozenBackboneMethod):
    Options = RanPACOptions

    @classmethod
    def check(cls, options, cfg) -> None:
        super().check(options, cfg)
        if options.projection < 1:
            raise ConfigError(f"method.projection: {options.projection} must be at least 1.")
        if options.ridge < 0 or not options.ridge_grid or any(r <= 0 for r in options.ridge_grid):
            raise ConfigError("method.ridge must be >= 0 and method.ridge_grid a list of positive values, got "
                              f"{options.ridge} and {options.ridge_grid}.")
        if options.scoring not in ("linear", "cosine"):
            raise ConfigError(f"method.scoring: {options.scoring!r} is not linear or cosine.")
        if not 0 < options.held_out < 1:
            raise ConfigError(f"method.held_out: {options.held_out} must lie strictly between 0 and 1.")

    @classmethod
    def make_head(cls, in_features, options):
        return RandomProjectionHead(in_features, options.projection, cosine=options.scoring == "cosine")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ridges: list = []  # lambda of each task, as chosen (results.json: ridge_per_task)

    def end_task(self, task, ctx) -> None:
        head: RandomProjectionHead = self.model.head
        gen = ctx.gens[0]
        if task.index == 0:  # P ~ N(0, 1), drawn once from the run's seed (Sec. 4.2)
            head.projection.copy_(torch.randn(head.projection.shape, generator=gen).to(head.projection.device))
        feats, labels = self.task_features(task, ctx)
        h = head.expand(feats)
        ridge = self.options.ridge
        if not ridge:
            n = len(labels)
            held = torch.zeros(n, dtype=torch.bool)
            held[torch.randperm(n, generator=gen)[: max(1, int(round(n * self.options.held_out)))]] = True
            ridge, _ = choose_ridge(h, labels, head.num_classes, self.options.ridge_grid, held.to(h.device))
        head.accumulate(h, labels)
        head.solve(ridge)
        self.ridges.append(float(ridge))

    def results_extra(self) -> dict:
        return {"ridge": float(self.model.head.ridge), "ridge_per_task": list(self.ridges)}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "ridges": list(self.ridges)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.ridges = list(state.get("ridges", []))



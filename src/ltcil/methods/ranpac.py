"""RanPAC (McDonnell et al., "RanPAC: Random Projections and Pre-trained Models for Continual Learning",
NeurIPS 2023): a frozen pre-trained backbone, a fixed random ReLU projection of its features to M dimensions
(Sec. 4.2) and a ridge-regression classifier over the projected features of every image seen so far, updated
in closed form after each task (Sec. 4.3; heads/random_projection.py). No exemplars, no gradient steps.

The projection size and the ridge search are LAMDA-PILOT's (`exps/ranpac.json`, `models/ranpac.py`): M = 10000,
lambda from 10^-8 .. 10^8 chosen by the squared error on 20% of the task's training images after fitting on
the other 80%, then the classifier solved with G and Q of everything seen.

Phase 1 (Sec. 4.1), `method.tuning`: adapter | ssf | vpt_deep | vpt_shallow adapts the ViT on the first task with
that parameter-efficient method and a cosine classifier (first_task_tuning.py, shared with APER; PILOT's
exps/ranpac.json: AdaptFormer adapters, 20 epochs, SGD lr 0.01, batch 48), then freezes it; the projection and
the ridge classifier are built on the adapted embedding. `none` (the default) skips it: the paper's ablation
without Phase 1 on the frozen pre-trained ViT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from ..heads.cosine import CosineLinear
from ..heads.random_projection import RandomProjectionHead, choose_ridge
from ..registry import register_method
from .first_task_tuning import FirstTaskTuning, TunedNet, TuningOptions, check_tuning, tuned_backbone
from .frozen_base import AroundFrozenViT, FrozenBackboneMethod


@dataclass
class RanPACOptions(TuningOptions):
    tuning: str = "none"  # Phase 1 (Sec. 4.1): none | adapter | ssf | vpt_deep | vpt_shallow
    projection: int = 10000  # M, the random projection's size (Sec. 4.2; the authors' code: 10000)
    ridge: float = 0.0  # lambda; 0 = chosen after each task from ridge_grid on a held-out 20% (Sec. 4.3)
    ridge_grid: list = field(default_factory=lambda: [10.0 ** k for k in range(-8, 9)])  # PILOT's grid
    held_out: float = 0.2  # the share of a task's training images lambda is chosen on
    scoring: str = "linear"  # linear: h W^T (the paper, the authors' code) | cosine: cos(h, W_c) (LAMDA-PILOT)


@register_method("ranpac")
class RanPAC(FirstTaskTuning, FrozenBackboneMethod):
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
        if options.tuning != "none":
            check_tuning(options)

    @classmethod
    def build_network(cls, networks, options, cfg):
        if options.tuning == "none":
            return super().build_network(networks, options, cfg)
        backbone = tuned_backbone(networks.backbone(), options, cfg, merge=False)
        return TunedNet(backbone, cls.make_head(backbone.num_features, options),
                        CosineLinear(backbone.num_features, sigma=True))

    def tunes(self) -> bool:
        return self.options.tuning != "none"

    @classmethod
    def make_head(cls, in_features, options):
        return RandomProjectionHead(in_features, options.projection, cosine=options.scoring == "cosine")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ridges: list = []  # lambda of each task, as chosen (results.json: ridge_per_task)

    def end_task(self, task, ctx) -> None:
        head: RandomProjectionHead = self.model.head
        gen = ctx.gens[0]
        if task.index == 0:  # Phase 1's modules frozen (when it ran); P ~ N(0, 1) drawn once from the seed (Sec. 4.2)
            self.end_first_task()
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

    def state_dict(self) -> dict:  # with Phase 1: every weight but the ViT's (its tuning modules included)
        base = AroundFrozenViT.state_dict(self) if self.tunes() else FrozenBackboneMethod.state_dict(self)
        return {**base, "ridges": list(self.ridges)}

    def load_state_dict(self, state: dict) -> None:
        (AroundFrozenViT if self.tunes() else FrozenBackboneMethod).load_state_dict(self, state)
        self.ridges = list(state.get("ridges", []))



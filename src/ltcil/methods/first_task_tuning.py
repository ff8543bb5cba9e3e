"""First-task adaptation of a frozen pre-trained ViT, shared by APER (Zhou et al., IJCV 2024, Sec. 4.2) and
RanPAC's Phase 1 (McDonnell et al., NeurIPS 2023, Sec. 4.1): parameter-efficient modules (layers/vit_tuning.py)
and a cosine classifier with a learned scale (PILOT's CosineLinear) are trained by CE on the first task only, then
the modules are frozen and the method's own head is built on the tuned embedding (RanPAC) or on [pre-trained;
tuned] (APER's merge, Eq. 9). The ViT itself never changes, so its checkpoints keep only what was tuned
(frozen_base.AroundFrozenViT) and evaluation embeds each test image once per run after the first task."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..heads.cosine import CosineLinear
from ..layers.vit_tuning import TUNINGS, VPT_INITS, build_tuning
from .base import IncrementalNet
from .frozen_base import freeze


@dataclass
class TuningOptions:
    tuning: str = "adapter"  # adapter | ssf | vpt_deep | vpt_shallow (layers/vit_tuning.py; PILOT's aper_* models)
    bottleneck: int = 64  # adapter: PILOT "ffn_num"
    adapter_scale: float = 0.1  # adapter: PILOT "ffn_adapter_scalar"
    adapter_dropout: float = 0.1  # adapter: on the bottleneck, in training (PILOT's Adapter(dropout=0.1))
    prompt_tokens: int = 5  # vpt_*: tokens per set (PILOT "prompt_token_num")
    vpt_init: str = "xavier"  # vpt_*: xavier (VPT's released init) | zeros (PILOT's backbone/vpt.py)


class TunedViT(nn.Module):
    """A frozen ViT with the first task's tuning modules. adapted(x) is the tuned embedding (what the first task
    trains on); forward_features(x) is [pre-trained; tuned] when `merge` (APER), else the tuned one alone."""

    def __init__(self, vit: nn.Module, tuning: nn.Module, merge: bool):
        super().__init__()
        self.vit = freeze(vit)
        self.tuning = tuning
        self.merge = merge
        self.num_features = (2 if merge else 1) * vit.num_features

    def train(self, mode: bool = True):
        super().train(mode)
        self.vit.eval()
        return self

    def adapted(self, x: torch.Tensor) -> torch.Tensor:
        return self.tuning.embed(self.vit, x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not self.merge:
            return self.adapted(x)
        with torch.no_grad():
            pre = self.vit.forward_features(x)
        return torch.cat([pre, self.adapted(x)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


class TunedNet(IncrementalNet):
    """The method's head over the backbone's embedding, and the first task's cosine classifier over the tuned one."""

    def __init__(self, backbone: TunedViT, head: nn.Module, tune_head: CosineLinear):
        super().__init__(backbone, head)
        self.tune_head = tune_head


def check_tuning(options) -> None:
    if options.tuning not in TUNINGS:
        raise ConfigError(f"method.tuning: {options.tuning!r} is not one of {', '.join(TUNINGS)}.")
    if options.vpt_init not in VPT_INITS:
        raise ConfigError(f"method.vpt_init: {options.vpt_init!r} is not one of {', '.join(VPT_INITS)}.")
    if options.bottleneck < 1 or options.adapter_scale <= 0 or not 0 <= options.adapter_dropout < 1:
        raise ConfigError(f"method.bottleneck ({options.bottleneck}) must be >= 1, method.adapter_scale "
                          f"({options.adapter_scale}) > 0 and method.adapter_dropout in [0, 1).")
    if options.prompt_tokens < 1:
        raise ConfigError(f"method.prompt_tokens: {options.prompt_tokens} must be >= 1.")


def tuned_backbone(vit: nn.Module, options, cfg, merge: bool) -> TunedViT:
    if not hasattr(vit, "blocks") or not hasattr(vit.blocks[0], "adapter"):
        raise ConfigError(f"method {cfg.method['name']} tunes the blocks of ltcil's ViTs; backbone "
                          f"{cfg.backbone.name!r} is not one (use vit_tiny/small/base_patch16_224, vit_micro).")
    tuning = build_tuning(options.tuning, vit, options.bottleneck, options.adapter_scale, options.adapter_dropout,
                          options.prompt_tokens, options.vpt_init)
    return TunedViT(vit, tuning, merge)


class FirstTaskTuning:
    """The first task's training of a TunedNet (mixed in before the Method base): the tuning modules and the
    cosine classifier learn by CE on the first task; end_first_task() freezes the modules."""

    def tunes(self) -> bool:
        return True

    def trains(self, task) -> bool:
        return self.tunes() and task.index == 0

    def begin_task(self, task, ctx):
        super().begin_task(task, ctx)
        if self.trains(task):
            self.model.tune_head.add_classes(task.num_classes)
            self.model.tune_head.to(self.device)

    def trainable_parameters(self):
        return [*self.model.backbone.tuning.parameters(), *self.model.tune_head.parameters()]

    def training_step(self, x, y):
        logits = self.model.tune_head(self.model.backbone.adapted(x))
        return {"loss": F.cross_entropy(logits, y)}

    def end_first_task(self) -> None:
        if self.tunes():
            for p in self.model.backbone.tuning.parameters():  # adapted once: frozen from here on
                p.requires_grad_(False)

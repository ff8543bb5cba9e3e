"""APER, AdaPt and mERge (Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models:
Generalizability and Adaptivity are All You Need", IJCV 2024, Sec. 4.2; first published as ADAM): the pre-trained
ViT is adapted on the first task only, with parameter-efficient modules (here AdaptFormer's parallel adapters:
Chen et al., NeurIPS 2022), then frozen; every class's classifier row is the mean of its training images' merged
embedding, [pre-trained ViT's; adapted ViT's] (Eq. 9), compared by cosine. Later tasks train nothing.

As LAMDA-PILOT runs its adapter variant (models/aper_adapter.py, exps/aper_aperpter.json, backbone/vit_adapter.py),
which the config aper_adapter_vit_b16_cifar100_b0inc10 names key by key:
- an adapter beside every block's MLP, fed the block's residual stream after attention: up(ReLU(down(x))) x 0.1,
  bottleneck 64, dropout 0.1 on the bottleneck in training, down Kaiming-uniform (a = sqrt 5) and up zero with zero
  biases (its "lora" init), no layer norm;
- first task: the adapters and a cosine classifier with a learned scale (PILOT's CosineLinear) trained by SGD
  (momentum 0.9, lr 0.01, weight decay 5e-4) for 20 epochs at batch 48, cosine lr to 0;
- prototypes from the un-augmented training images, the merged embedding 2 x 768 wide, scored by cosine.
One ViT is kept: the pre-trained embedding is the same network run with its adapters detached (PILOT holds two
copies). After the first task nothing changes, so evaluation embeds each test image once per run (frozen_base).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..heads.cosine import CosineLinear
from ..registry import register_method
from .base import IncrementalNet
from .frozen_base import AroundFrozenViT, FrozenBackboneMethod, freeze
from .simplecil import set_prototypes


@dataclass
class APEROptions:
    bottleneck: int = 64  # PILOT "ffn_num"
    adapter_scale: float = 0.1  # PILOT "ffn_adapter_scalar"
    adapter_dropout: float = 0.1  # on the bottleneck, in training (PILOT's Adapter(dropout=0.1))


class ParallelAdapter(nn.Module):
    """AdaptFormer's adapter (Chen et al. 2022, Eq. 3): s * up(dropout(ReLU(down(x)))), run beside a block's MLP."""

    def __init__(self, dim: int, bottleneck: int, scale: float, dropout: float = 0.0):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.scale, self.dropout = scale, dropout
        with torch.no_grad():  # PILOT's "lora" init: the adapter starts as a zero map
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.dropout(F.relu(self.down(x)), self.dropout, self.training)) * self.scale


class AdaptedViT(nn.Module):
    """A frozen ViT with one adapter per block. forward_features(x) = [pre-trained embedding; adapted embedding]
    (APER's merged embedding); adapted(x) alone is what the first task trains on."""

    def __init__(self, vit: nn.Module, bottleneck: int, scale: float, dropout: float = 0.0):
        super().__init__()
        self.vit = freeze(vit)
        self.adapters = nn.ModuleList(ParallelAdapter(vit.num_features, bottleneck, scale, dropout)
                                      for _ in vit.blocks)
        self.num_features = 2 * vit.num_features

    def train(self, mode: bool = True):
        super().train(mode)
        self.vit.eval()
        return self

    def _embed(self, x: torch.Tensor, adapters: bool) -> torch.Tensor:
        blocks = self.vit.blocks
        try:
            for block, adapter in zip(blocks, self.adapters):
                block.adapter = adapter if adapters else None
            return self.vit.forward_features(x)
        finally:  # detached again: the ViT's own weights (and checkpoint keys) never include them
            for block in blocks:
                block.adapter = None

    def adapted(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed(x, adapters=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pre = self._embed(x, adapters=False)
        return torch.cat([pre, self.adapted(x)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


class APERNet(IncrementalNet):
    """The prototype head over the merged embedding, and the first task's cosine classifier over the adapted one."""

    def __init__(self, backbone: AdaptedViT, tune_head: CosineLinear):
        super().__init__(backbone, CosineLinear(backbone.num_features, sigma=False).requires_grad_(False))
        self.tune_head = tune_head


@register_method("aper")
class APER(AroundFrozenViT, FrozenBackboneMethod):
    Options = APEROptions

    @classmethod
    def check(cls, options, cfg) -> None:
        super().check(options, cfg)
        if options.bottleneck < 1 or options.adapter_scale <= 0 or not 0 <= options.adapter_dropout < 1:
            raise ConfigError(f"method.bottleneck ({options.bottleneck}) must be >= 1, method.adapter_scale "
                              f"({options.adapter_scale}) > 0 and method.adapter_dropout in [0, 1).")

    @classmethod
    def build_network(cls, networks, options, cfg):
        vit = networks.backbone()
        if not hasattr(vit, "blocks") or not hasattr(vit.blocks[0], "adapter"):
            raise ConfigError(f"method aper puts adapters into a ViT's blocks; backbone {cfg.backbone.name!r} has "
                              "none (use ltcil's ViTs: vit_tiny/small/base_patch16_224, vit_micro).")
        backbone = AdaptedViT(vit, options.bottleneck, options.adapter_scale, options.adapter_dropout)
        return APERNet(backbone, CosineLinear(vit.num_features, sigma=True))

    def trains(self, task) -> bool:
        return task.index == 0  # Sec. 4.2: adapted on the first task only

    def begin_task(self, task, ctx):
        super().begin_task(task, ctx)  # the prototype head grows
        if task.index == 0:
            self.model.tune_head.add_classes(task.num_classes)
            self.model.tune_head.to(self.device)

    def trainable_parameters(self):
        return [*self.model.backbone.adapters.parameters(), *self.model.tune_head.parameters()]

    def training_step(self, x, y):
        logits = self.model.tune_head(self.model.backbone.adapted(x))
        return {"loss": F.cross_entropy(logits, y)}

    def end_task(self, task, ctx) -> None:
        for p in self.model.backbone.adapters.parameters():  # adapted once: frozen from here on
            p.requires_grad_(False)
        set_prototypes(self.model.head, *self.task_features(task, ctx), task.classes)

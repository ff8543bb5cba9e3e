"""APER, AdaPt and mERge (Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models:
Generalizability and Adaptivity are All You Need", IJCV 2024, Sec. 4.2; first published as ADAM): the pre-trained
ViT is adapted on the first task only, with parameter-efficient modules (here AdaptFormer's parallel adapters:
Chen et al., NeurIPS 2022), then frozen; every class's classifier row is the mean of its training images' merged
embedding, [pre-trained ViT's; adapted ViT's] (Eq. 9), compared by cosine. Later tasks train nothing.
`method.tuning` picks the parameter-efficient modules (layers/vit_tuning.py; the paper's Sec. 4.2 variants, PILOT's
aper_adapter / aper_ssf / aper_vpt): adapter (default), ssf, vpt_deep, vpt_shallow.

As LAMDA-PILOT runs its adapter variant (models/aper_adapter.py, exps/aper_aperpter.json, backbone/vit_adapter.py),
which the config aper_adapter_vit_b16_cifar100_b0inc10 names key by key:
- an adapter beside every block's MLP, fed the block's residual stream after attention: up(ReLU(down(x))) x 0.1,
  bottleneck 64, dropout 0.1 on the bottleneck in training, down Kaiming-uniform (a = sqrt 5) and up zero with zero
  biases (its "lora" init), no layer norm;
- first task: the adapters and a cosine classifier with a learned scale (PILOT's CosineLinear) trained by SGD
  (momentum 0.9, lr 0.01, weight decay 5e-4) for 20 epochs at batch 48, cosine lr to 0;
- prototypes from the un-augmented training images, the merged embedding 2 x 768 wide, scored by cosine.
SSF and VPT as PILOT's exps/aper_ssf.json / aper_vpt_{deep,shallow}.json: the same first-task recipe, 5 prompt
tokens for VPT (PILOT starts them at zero: `method.vpt_init: zeros` in its configs; the paper's Xavier init is the
default). One ViT is kept: the pre-trained embedding is the same network run without its tuning modules (PILOT
holds two copies). After the first task nothing changes, so evaluation embeds each test image once per run (frozen_base).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..heads.cosine import CosineLinear
from ..layers.vit_tuning import TUNINGS, VPT_INITS, build_tuning
from ..registry import register_method
from .base import IncrementalNet
from .frozen_base import AroundFrozenViT, FrozenBackboneMethod, freeze
from .simplecil import set_prototypes


@dataclass
class APEROptions:
    tuning: str = "adapter"  # adapter | ssf | vpt_deep | vpt_shallow (layers/vit_tuning.py; PILOT's aper_* models)
    bottleneck: int = 64  # adapter: PILOT "ffn_num"
    adapter_scale: float = 0.1  # adapter: PILOT "ffn_adapter_scalar"
    adapter_dropout: float = 0.1  # adapter: on the bottleneck, in training (PILOT's Adapter(dropout=0.1))
    prompt_tokens: int = 5  # vpt_*: tokens per set (PILOT "prompt_token_num")
    vpt_init: str = "xavier"  # vpt_*: xavier (VPT's released init) | zeros (PILOT's backbone/vpt.py)


class TunedViT(nn.Module):
    """A frozen ViT with the first task's tuning modules (layers/vit_tuning.py). forward_features(x) = [pre-trained
    embedding; tuned embedding] (APER's merged embedding); adapted(x) alone is what the first task trains on."""

    def __init__(self, vit: nn.Module, tuning: nn.Module):
        super().__init__()
        self.vit = freeze(vit)
        self.tuning = tuning
        self.num_features = 2 * vit.num_features

    def train(self, mode: bool = True):
        super().train(mode)
        self.vit.eval()
        return self

    def adapted(self, x: torch.Tensor) -> torch.Tensor:
        return self.tuning.embed(self.vit, x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pre = self.vit.forward_features(x)
        return torch.cat([pre, self.adapted(x)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


class APERNet(IncrementalNet):
    """The prototype head over the merged embedding, and the first task's cosine classifier over the adapted one."""

    def __init__(self, backbone: TunedViT, tune_head: CosineLinear):
        super().__init__(backbone, CosineLinear(backbone.num_features, sigma=False).requires_grad_(False))
        self.tune_head = tune_head


@register_method("aper")
class APER(AroundFrozenViT, FrozenBackboneMethod):
    Options = APEROptions

    @classmethod
    def check(cls, options, cfg) -> None:
        super().check(options, cfg)
        if options.tuning not in TUNINGS:
            raise ConfigError(f"method.tuning: {options.tuning!r} is not one of {', '.join(TUNINGS)}.")
        if options.vpt_init not in VPT_INITS:
            raise ConfigError(f"method.vpt_init: {options.vpt_init!r} is not one of {', '.join(VPT_INITS)}.")
        if options.bottleneck < 1 or options.adapter_scale <= 0 or not 0 <= options.adapter_dropout < 1:
            raise ConfigError(f"method.bottleneck ({options.bottleneck}) must be >= 1, method.adapter_scale "
                              f"({options.adapter_scale}) > 0 and method.adapter_dropout in [0, 1).")
        if options.prompt_tokens < 1:
            raise ConfigError(f"method.prompt_tokens: {options.prompt_tokens} must be >= 1.")

    @classmethod
    def build_network(cls, networks, options, cfg):
        vit = networks.backbone()
        if not hasattr(vit, "blocks") or not hasattr(vit.blocks[0], "adapter"):
            raise ConfigError(f"method aper tunes the blocks of ltcil's ViTs; backbone {cfg.backbone.name!r} is "
                              "not one (use vit_tiny/small/base_patch16_224, vit_micro).")
        tuning = build_tuning(options.tuning, vit, options.bottleneck, options.adapter_scale, options.adapter_dropout,
                              options.prompt_tokens, options.vpt_init)
        backbone = TunedViT(vit, tuning)
        return APERNet(backbone, CosineLinear(vit.num_features, sigma=True))

    def trains(self, task) -> bool:
        return task.index == 0  # Sec. 4.2: adapted on the first task only

    def begin_task(self, task, ctx):
        super().begin_task(task, ctx)  # the prototype head grows
        if task.index == 0:
            self.model.tune_head.add_classes(task.num_classes)
            self.model.tune_head.to(self.device)

    def trainable_parameters(self):
        return [*self.model.backbone.tuning.parameters(), *self.model.tune_head.parameters()]

    def training_step(self, x, y):
        logits = self.model.tune_head(self.model.backbone.adapted(x))
        return {"loss": F.cross_entropy(logits, y)}

    def end_task(self, task, ctx) -> None:
        for p in self.model.backbone.tuning.parameters():  # adapted once: frozen from here on
            p.requires_grad_(False)
        set_prototypes(self.model.head, *self.task_features(task, ctx), task.classes)

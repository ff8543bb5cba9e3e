"""CIFAR ResNets of depth 6n+2 (He et al. 2016, "Deep Residual Learning for Image Recognition", sec. 4.2).

A 16-channel 3x3 stem, three stages of n blocks with widths 16/32/64 at strides 1/2/2, global average
pooling. Shortcuts that change shape use a 1x1 conv + BN by default (the paper's option B), which adds ~2.8k
parameters to the paper's counts (0.27M / 0.46M / 0.85M); `backbone.shortcut: pad` gives the paper's
parameter-free option A (subsample + zero channels), as PyCIL's resnet32.
"""

from __future__ import annotations

from ..config import BackboneConfig
from ..errors import ConfigError
from ..registry import register_backbone
from .resnet import BasicBlock, Bottleneck, ResNet, cifar_stem

_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def cifar_resnet(n: int, cfg: BackboneConfig, in_channels: int) -> ResNet:
    """n blocks per stage. "basic" gives 64-d features; "bottleneck" (expansion 4) gives 256-d features.

    rojinakashefi/LwF-iCaRL-Incremental-Learning's resnet56 used bottleneck blocks, so its features are 256-d,
    not 64-d: set backbone.block to "bottleneck" to reproduce it.
    """
    if cfg.block not in _BLOCKS:
        raise ConfigError(f"backbone.block: expected one of {', '.join(_BLOCKS)}, got {cfg.block!r}.")
    return ResNet(_BLOCKS[cfg.block], (n, n, n), (16, 32, 64), cifar_stem(in_channels, 16), stem_width=16,
                  shortcut=cfg.shortcut, last_relu=cfg.last_relu, block_relu=cfg.block_relu,
                  conv_init=cfg.conv_init)


@register_backbone("resnet20")
def build_resnet20(cfg: BackboneConfig, in_channels: int, image_size: int) -> ResNet:
    return cifar_resnet(3, cfg, in_channels)


@register_backbone("resnet32")
def build_resnet32(cfg: BackboneConfig, in_channels: int, image_size: int) -> ResNet:
    return cifar_resnet(5, cfg, in_channels)


@register_backbone("resnet56")
def build_resnet56(cfg: BackboneConfig, in_channels: int, image_size: int) -> ResNet:
    return cifar_resnet(9, cfg, in_channels)

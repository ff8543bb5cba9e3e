"""Feature extractors: every backbone exposes forward_features(x) and num_features; heads live elsewhere."""

from __future__ import annotations

import torch.nn as nn

from ..config import BackboneConfig
from ..layers.continual_norm import convert_norm
from ..registry import get

# Imported for their @register_backbone side effect.
from . import preresnet, protonet, resnet, resnet_cifar, small, small_medmnist  # noqa: F401


def build_backbone(cfg: BackboneConfig, in_channels: int, image_size: int) -> nn.Module:
    """Build the backbone named by cfg.name; an unknown name fails naming backbone.name and the valid names.
    backbone.norm=cn swaps its BatchNorm layers for Continual Normalization."""
    build = get("backbone", cfg.name, key="backbone.name")
    return convert_norm(build(cfg, in_channels, image_size), cfg.norm, cfg.norm_groups)


__all__ = ["build_backbone"]

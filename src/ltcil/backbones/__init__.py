"""Feature extractors: every backbone exposes forward_features(x) and num_features; heads live elsewhere."""

from __future__ import annotations

import torch.nn as nn

from ..config import BackboneConfig
from ..registry import get

# Imported for their @register_backbone side effect.
from . import preresnet, protonet, resnet, resnet_cifar, small  # noqa: F401


def build_backbone(cfg: BackboneConfig, in_channels: int, image_size: int) -> nn.Module:
    """Build the backbone named by cfg.name; an unknown name fails naming backbone.name and the valid names."""
    build = get("backbone", cfg.name, key="backbone.name")
    return build(cfg, in_channels, image_size)


__all__ = ["build_backbone"]

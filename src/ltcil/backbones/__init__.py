"""Feature extractors: every backbone exposes forward_features(x) and num_features; heads live elsewhere."""

from __future__ import annotations

import torch.nn as nn

from ..config import BackboneConfig
from ..layers.continual_norm import convert_norm
from ..errors import ConfigError
from ..registry import available, get

# Imported for their @register_backbone side effect.
from . import preresnet, protonet, resnet, resnet_cifar, small, small_medmnist, vit  # noqa: F401


def check_backbone(cfg: BackboneConfig):
    """The builder of cfg.name (None: a timm model), checked before any data loads: an ltcil backbone, an ltcil
    ViT with timm's pretrained tag (vit_base_patch16_224.augreg_in21k: ltcil's network, timm's weights), else a
    timm model when timm is installed. An unknown name fails naming backbone.name and the valid names."""
    arch = cfg.name.split(".")[0]
    names = available("backbone")
    if cfg.name in names or arch in names:
        if (cfg.pretrained or cfg.checkpoint) and arch not in vit.ARCHITECTURES:
            raise ConfigError(f"backbone.pretrained / backbone.checkpoint: {cfg.name!r} has no pre-trained weights "
                              f"in ltcil; pre-trained backbones are {', '.join(vit.ARCHITECTURES)} (with timm's "
                              "tags) and timm models.")
        return get("backbone", cfg.name if cfg.name in names else arch)
    if _timm_importable():
        return None
    try:
        get("backbone", cfg.name, key="backbone.name")
    except ConfigError as exc:
        raise ConfigError(f"{exc} timm's models need timm too (`pip install timm`), which is not installed."
                          ) from None


def check_weights(cfg: BackboneConfig) -> None:
    """Pre-trained weights ltcil's ViT will load are on disk (the offline paragraph before any data loads)."""
    if (cfg.pretrained or cfg.checkpoint) and cfg.name.split(".")[0] in vit.ARCHITECTURES:
        from .pretrained import weights_path

        weights_path(cfg)


def build_backbone(cfg: BackboneConfig, in_channels: int, image_size: int) -> nn.Module:
    """Build the backbone named by cfg.name (see check_backbone); backbone.norm=cn swaps its BatchNorm layers
    for Continual Normalization."""
    build = check_backbone(cfg)
    if build is None:
        from .timm_backbone import build_timm

        build = build_timm
    return convert_norm(build(cfg, in_channels, image_size), cfg.norm, cfg.norm_groups)


def _timm_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("timm") is not None


__all__ = ["build_backbone", "check_backbone", "check_weights"]

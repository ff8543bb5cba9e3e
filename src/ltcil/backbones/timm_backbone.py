"""Any timm model as a backbone (`backbone.name: <a timm name>`, e.g. `convnext_tiny.fb_in22k`): timm builds it
with its classifier removed (num_classes=0), so `forward_features` here is timm's pooled pre-logits feature.
timm is optional (`pip install timm`, which brings torchvision) and imported only here. Hub weights
(`backbone.pretrained: true`) come through timm's own download into the Hugging Face cache; offline and not
cached, the run stops with the paragraph of pretrained.py. ViTs ltcil builds itself (vit.py) never need timm.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import BackboneConfig
from ..errors import ConfigError
from .pretrained import offline_message


def import_timm():
    try:
        import timm
    except Exception as exc:  # noqa: BLE001 - ImportError, or torchvision failing to load beside this torch
        raise ConfigError(f"backbone.name: timm is needed for timm models and could not be imported "
                          f"({type(exc).__name__}: {str(exc)[:160]}). Install it with `pip install timm` (it "
                          "needs a torchvision that matches your torch), or use a backbone ltcil builds itself "
                          "(`ltcil list backbones`: the vit_* names load timm's ViT weights without timm)."
                          ) from None
    return timm


class TimmBackbone(nn.Module):
    """A timm model without its classifier; inputs resized on the device to the model's input size."""

    def __init__(self, model: nn.Module, input_size: Optional[int], stats: Optional[tuple]):
        super().__init__()
        self.model = model
        self.num_features = model.num_features
        self.input_size = input_size
        self.input_stats = stats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


def build_timm(cfg: BackboneConfig, in_channels: int, image_size: int) -> TimmBackbone:
    timm = import_timm()
    name = cfg.name
    if not timm.is_model(name.split(".")[0]):
        raise ConfigError(f"backbone.name: {name!r} is neither an ltcil backbone nor a timm model "
                          f"(`ltcil list backbones`; timm's: `python -c \"import timm; print(timm.list_models())\"`).")
    extra = {"checkpoint_path": cfg.checkpoint} if cfg.checkpoint else {}
    try:
        model = timm.create_model(name, pretrained=cfg.pretrained, num_classes=0, in_chans=in_channels, **extra)
    except (OSError, RuntimeError) as exc:
        if cfg.pretrained and not cfg.checkpoint:  # no network and nothing cached: the hub's error says so
            raise ConfigError(offline_message(name)) from None
        raise ConfigError(f"backbone: timm could not build {name!r}: {str(exc)[:300]}") from None
    pre = getattr(model, "pretrained_cfg", {}) or {}
    size = cfg.input_size or (pre.get("input_size", (0, 0, 0))[-1] if cfg.pretrained or cfg.checkpoint else 0)
    stats = (list(pre["mean"]), list(pre["std"])) if (cfg.pretrained or cfg.checkpoint) and "mean" in pre else None
    return TimmBackbone(model, size or None, stats)

"""The one place networks are built and placed: a method's `build_network` gets backbones from here, and every
network or module built for a run, at its start or in task 5, goes through `place` (device, memory layout)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..backbones import build_backbone
from ..config import Config


class NetworkFactory:
    def __init__(self, cfg: Config, in_channels: int, image_size: int, device: torch.device):
        self.cfg, self.in_channels, self.image_size, self.device = cfg, in_channels, image_size, device
        self.input_stats = None  # (mean, std) pre-trained weights were trained with, once a backbone is built

    def backbone(self) -> nn.Module:
        """A freshly initialised (or pre-trained) backbone of the config (not yet placed)."""
        model = build_backbone(self.cfg.backbone, self.in_channels, self.image_size)
        self.input_stats = getattr(model, "input_stats", None) or self.input_stats
        return model

    def place(self, module: nn.Module) -> nn.Module:
        """On the training device, channels-last when train.channels_last (NHWC activations: faster convs)."""
        module = module.to(self.device)
        if self.cfg.train.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

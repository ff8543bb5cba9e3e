"""A tiny 3-layer conv net for unit tests and quick experiments (not a published architecture).

conv3x3(32)-BN-ReLU-pool, conv3x3(64)-BN-ReLU-pool, conv3x3(128)-BN-ReLU, global average pool: 128-d.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import BackboneConfig
from ..registry import register_backbone


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class ConvNet(nn.Module):
    def __init__(self, in_channels: int, widths=(32, 64, 128)):
        super().__init__()
        c1, c2, c3 = widths
        # ceil_mode keeps a 1-px map at 1 px, so even tiny inputs pass both pools.
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, c1),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn_relu(c1, c2),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn_relu(c2, c3),
            nn.AdaptiveAvgPool2d(1),
        )
        self.num_features = c3
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


@register_backbone("convnet")
def build_convnet(cfg: BackboneConfig, in_channels: int, image_size: int) -> ConvNet:
    return ConvNet(in_channels)

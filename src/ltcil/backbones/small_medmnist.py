"""The small residual network CCSI trains on MedMNIST ("small_model" of the released code,
sanaAyrml/Class-Impresion-for-Data-free-Incremental-Learning).

conv3x3 stride 2 -> 16 channels, BN, ReLU; three stages of one basic residual block (widths 16/32/64, all
stride 1); 7x7 average pooling with stride 7 (a 16x16 map from 32 px, or 14x14 from 28 px, becomes 2x2),
flattened: 2x2x64 = 256 features. Inputs too small for a 7x7 pool (digits) are pooled adaptively to 2x2.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import BackboneConfig
from ..registry import register_backbone


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallMedMNISTNet(nn.Module):
    def __init__(self, in_channels: int, image_size: int, widths=(16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, channels = [], widths[0]
        for width in widths:
            stages.append(BasicBlock(channels, width))
            channels = width
        self.stages = nn.Sequential(*stages)
        size = (image_size + 1) // 2  # after the stride-2 stem
        if size >= 14:
            self.pool, pooled = nn.AvgPool2d(7), (size - 7) // 7 + 1
        else:
            pooled = min(2, size)
            self.pool = nn.AdaptiveAvgPool2d(pooled)
        self.num_features = channels * pooled * pooled
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


@register_backbone("medmnist_small")
def build_small_medmnist(cfg: BackboneConfig, in_channels: int, image_size: int) -> SmallMedMNISTNet:
    return SmallMedMNISTNet(in_channels, image_size)

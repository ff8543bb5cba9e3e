"""Pre-activation ResNet-32 (He et al. 2016, "Identity Mappings in Deep Residual Networks").

BN and ReLU come before each conv, so the residual path is a clean identity; the trunk therefore ends with
its own BN + ReLU before global average pooling. Widths 16/32/64, 5 blocks per stage, 64-d features.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..config import BackboneConfig
from ..registry import register_backbone
from .resnet import conv1x1, conv3x3


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus a shortcut (1x1 conv without BN where the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        needs_projection = stride != 1 or in_planes != planes
        self.shortcut = conv1x1(in_planes, planes, stride) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        # The projection sees the pre-activated input (as in the paper's code); an identity shortcut sees x.
        identity = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + identity


class PreActResNet(nn.Module):
    def __init__(self, n: int, in_channels: int, widths=(16, 32, 64)):
        super().__init__()
        self.stem = conv3x3(in_channels, widths[0])  # no BN/ReLU here: the first block pre-activates
        stages = []
        in_planes = widths[0]
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(PreActBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_planes
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / k))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        x = self.relu(self.bn(x))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


@register_backbone("preresnet32")
def build_preresnet32(cfg: BackboneConfig, in_channels: int, image_size: int) -> PreActResNet:
    return PreActResNet(5, in_channels)

"""The 4-block conv encoder of prototypical networks (Snell et al. 2017, "Prototypical Networks for Few-shot
Learning"), as used by COAOX/Class_incremental_learning_in_long_tail.

4 x [conv3x3 (64 channels, padding 1), BN, ReLU, 2x2 max-pool], then the feature map is flattened (not
pooled), so num_features depends on the image size: 32 px -> 2x2x64 = 256, 28 px -> 1x1x64 = 64.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import BackboneConfig
from ..registry import register_backbone


def _block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ProtoNetEncoder(nn.Module):
    """Built for one input size; num_features is computed from it arithmetically.

    Pooling uses floor mode (the original's), so 28 px gives 1x1 maps as in the paper. A pool that would
    shrink a 1-px map to nothing (8-px digits: 8 -> 4 -> 2 -> 1) is left out, so small inputs still work.
    """

    def __init__(self, in_channels: int, image_size: int, width: int = 64, depth: int = 4):
        super().__init__()
        if image_size <= 0:
            raise ValueError("protonet needs the image size to size its flattened features; got 0")
        blocks = []
        size = image_size
        for i in range(depth):
            pool = size >= 2
            blocks.append(_block(in_channels if i == 0 else width, width, pool))
            size = size // 2 if pool else size
        self.blocks = nn.Sequential(*blocks)
        self.image_size = image_size
        self.num_features = width * size * size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.blocks(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


@register_backbone("protonet")
def build_protonet(cfg: BackboneConfig, in_channels: int, image_size: int) -> ProtoNetEncoder:
    return ProtoNetEncoder(in_channels, image_size)

"""Residual networks (He et al. 2016, "Deep Residual Learning for Image Recognition"): the shared blocks and
trunk, plus the ImageNet-sized resnet18 / resnet50.

The trunk is parameterised by stem, stage widths and blocks per stage, so the CIFAR variants in
resnet_cifar.py reuse it with a 16-channel 3x3 stem and widths 16/32/64.
"""

from __future__ import annotations

from typing import Optional, Sequence, Type, Union

import torch
import torch.nn as nn

from ..config import BackboneConfig
from ..registry import register_backbone


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every conv is followed by BN, whose shift makes a bias redundant.
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """He et al. 2016, Sec. 4.2, option A: a parameter-free shortcut that subsamples by `stride` and pads the
    extra channels with zeros (the CIFAR ResNets of the original paper and of PyCIL's resnet32)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra = out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return torch.nn.functional.pad(x, (0, 0, 0, 0, 0, self.extra))


def projection(in_planes: int, out_planes: int, stride: int, kind: str = "conv") -> Optional[nn.Module]:
    """The shortcut where the shape changes, the identity elsewhere (None). kind "conv": option B, a 1x1 conv
    + BN; "pad": option A (PadShortcut), which needs out_planes >= in_planes."""
    if stride == 1 and in_planes == out_planes:
        return None
    if kind == "pad":
        return PadShortcut(in_planes, out_planes, stride)
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convs; output width = planes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "conv"):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = projection(in_planes, planes, stride, shortcut)
        self.final_relu = True

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return self.relu(out) if self.final_relu else out


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4); output width = 4 * planes.

    The stride sits on the 3x3 conv (the "v1.5" placement used by most reference implementations).
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "conv"):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = projection(in_planes, out_planes, stride, shortcut)
        self.final_relu = True

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + identity
        return self.relu(out) if self.final_relu else out


Block = Type[Union[BasicBlock, Bottleneck]]


def imagenet_stem(in_channels: int, width: int) -> nn.Sequential:
    """7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool: 224 px -> 56 px."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )


def cifar_stem(in_channels: int, width: int) -> nn.Sequential:
    """3x3 stride-1 conv, BN, ReLU, no pooling: keeps the full resolution of small images."""
    return nn.Sequential(conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True))


class ResNet(nn.Module):
    """Stem, stages of residual blocks (the first at stride 1, the rest at stride 2), global average pool.

    Pooling is adaptive, so any input size that survives the strides works. `num_features` is the width of
    the last stage times the block expansion. There is no classifier: heads live in ltcil.heads.
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        widths: Sequence[int],
        stem: nn.Module,
        stem_width: int,
        zero_init_residual: bool = False,
        shortcut: str = "conv",
        last_relu: bool = True,
        conv_init: str = "fan_out",
        block_relu: bool = True,
    ):
        super().__init__()
        self.stem = stem
        stages = []
        in_planes = stem_width
        for i, (n_blocks, planes) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n_blocks):
                blocks.append(block(in_planes, planes, stride if j == 0 else 1, shortcut))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        # LUCIR (Hou et al. 2019, Sec. 3.2) and iCaRL's code end the network without the last ReLU, so the
        # features (and their cosine to class vectors) may be negative
        for stage_blocks in stages:
            for b in stage_blocks:
                b.final_relu = block_relu
        stages[-1][-1].final_relu = last_relu and block_relu
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_planes
        self._init_weights(zero_init_residual, conv_init)

    def _init_weights(self, zero_init_residual: bool, conv_init: str = "fan_out") -> None:
        # He et al. 2015 ("Delving Deep into Rectifiers", Sec. 2.2) normal init, std sqrt(2 / fan). torchvision
        # and PyCIL's cifar_resnet use fan_out; Avalanche's initialize_icarl_net uses fan_in, which differs where
        # a conv changes the width (the CIFAR stem's weights 2.3x larger: under BN, a smaller effective step there).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode=conv_init, nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Off by default: it changes early training dynamics relative to the reference setups.
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return torch.flatten(self.pool(x), 1)

    def forward_maps(self, x: torch.Tensor) -> tuple[list, torch.Tensor]:
        """Every stage's output map and the pooled features (PODNet distils the maps)."""
        maps = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps, torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


# Images at most this large get the CIFAR stem: the ImageNet stem would shrink a 32-px image to 8 px
# before the first block.
SMALL_IMAGE_MAX = 64


def imagenet_resnet(block: Block, layers: Sequence[int], in_channels: int, image_size: int,
                    cfg: BackboneConfig) -> ResNet:
    """ImageNet layout (widths 64/128/256/512). With `image_size` given and <= 64 the stem is swapped for a
    3x3 stride-1 conv without max-pool, as PyCIL-style setups do to run resnet18 on 32-px CIFAR images;
    with image_size 0 (unknown) or > 64 the standard 7x7 stride-2 + max-pool stem is used."""
    small = bool(image_size) and image_size <= SMALL_IMAGE_MAX
    stem = cifar_stem(in_channels, 64) if small else imagenet_stem(in_channels, 64)
    return ResNet(block, layers, (64, 128, 256, 512), stem, stem_width=64, shortcut=cfg.shortcut,
                  conv_init=cfg.conv_init,
                  last_relu=cfg.last_relu, block_relu=cfg.block_relu)


@register_backbone("resnet18")
def build_resnet18(cfg: BackboneConfig, in_channels: int, image_size: int) -> ResNet:
    """ResNet-18: [2, 2, 2, 2] basic blocks, 512-d features (cfg.block is ignored)."""
    return imagenet_resnet(BasicBlock, (2, 2, 2, 2), in_channels, image_size, cfg)


@register_backbone("resnet50")
def build_resnet50(cfg: BackboneConfig, in_channels: int, image_size: int) -> ResNet:
    """ResNet-50: [3, 4, 6, 3] bottleneck blocks, 2048-d features (cfg.block is ignored)."""
    return imagenet_resnet(Bottleneck, (3, 4, 6, 3), in_channels, image_size, cfg)

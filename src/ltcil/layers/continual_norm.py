"""Continual Normalization (Pham et al., ICLR 2022, "Continual Normalization: Rethinking Batch Normalization
for Online Continual Learning", Sec. 4): CN(x) = BN(GN(x; G groups, no affine)).

The group norm removes each sample's own statistics first, so the running BN statistics drift less when the
class mix of the batches changes between tasks. `convert_norm` swaps every BatchNorm2d of any backbone.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError


class ContinualNorm(nn.Module):
    """GroupNorm without affine parameters, then a standard BatchNorm2d (running statistics, affine)."""

    def __init__(self, num_features: int, groups: int = 4, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        if groups < 1 or num_features % groups:
            raise ValueError(f"continual norm: {num_features} channels do not split into {groups} groups")
        self.groups = groups
        self.eps = eps
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.group_norm(x, self.groups, eps=self.eps))

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def convert_norm(module: nn.Module, kind: str, groups: int = 4, where: str = "backbone.norm") -> nn.Module:
    """Replace every BatchNorm2d below `module` by ContinualNorm (kind "cn") or by GroupNorm (kind "gn": no
    batch statistics at all, so a result does not depend on how a batch is split across processes); "bn"
    leaves it unchanged. A layer whose channels do not split into `groups` fails naming the layer and the
    valid group counts."""
    if kind == "bn":
        return module
    if kind not in ("cn", "gn"):
        raise ConfigError(f"{where}: {kind!r} is not one of bn, cn, gn.")
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            channels = child.num_features
            if channels % groups:
                valid = [g for g in range(1, channels + 1) if channels % g == 0]
                raise ConfigError(f"backbone.norm_groups={groups}: layer {name!r} has {channels} channels, which "
                                  f"do not split into {groups} groups (valid: {valid}).")
            norm = (ContinualNorm(channels, groups, child.eps, child.momentum) if kind == "cn"
                    else nn.GroupNorm(groups, channels, child.eps))
            setattr(module, name, norm)
        else:
            convert_norm(child, kind, groups, where)
    return module

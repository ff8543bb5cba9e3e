"""A test-only method that grows its network by one backbone per task (a tiny DER-like expansion: Yan et al.,
CVPR 2021, without the auxiliary loss or pruning), registered from this file, which the engine never names.
It shows what writing such a method takes: one file, its own network, modules added through the factory, and
state that restores the grown network."""

import torch
import torch.nn as nn

from ltcil.heads.linear import IncrementalLinear
from ltcil.methods.base import Method
from ltcil.registry import register_method


class ExpandingNet(nn.Module):
    """Backbones side by side; the head reads their concatenated features. Earlier backbones are frozen and keep
    their BatchNorm statistics (eval mode whatever mode the network is put in)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbones = nn.ModuleList([backbone])
        self.head = IncrementalLinear(backbone.num_features)

    @property
    def num_features(self) -> int:
        return sum(b.num_features for b in self.backbones)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def add_backbone(self, backbone: nn.Module) -> None:
        for old in self.backbones:
            old.requires_grad_(False)
        self.backbones.append(backbone)
        head = IncrementalLinear(self.num_features, self.head.num_classes).to(self.head.weight.device)
        with torch.no_grad():  # the old features keep their weights; the new ones start at zero
            head.weight.zero_()
            head.weight[:, : self.head.in_features] = self.head.weight
            head.bias.copy_(self.head.bias)
        self.head = head

    def train(self, mode: bool = True):
        super().train(mode)
        for old in self.backbones[:-1]:
            old.eval()
        return self

    def forward_features(self, x):
        return torch.cat([b.forward_features(x) for b in self.backbones], dim=1)

    def forward(self, x):
        return self.head(self.forward_features(x))


@register_method("test_expanding")
class Expanding(Method):
    @classmethod
    def build_network(cls, networks, options, cfg):
        return ExpandingNet(networks.backbone())

    def begin_task(self, task, ctx):
        if task.index > 0:
            self.model.add_backbone(self.networks.place(self.networks.backbone()))
        super().begin_task(task, ctx)

    def trainable_parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def state_dict(self):
        return {**super().state_dict(), "backbones": len(self.model.backbones)}

    def load_state_dict(self, state):
        while len(self.model.backbones) < state["backbones"]:  # rebuild the grown network, then load it
            self.model.add_backbone(self.networks.place(self.networks.backbone()))
        super().load_state_dict(state)

"""DER, Dynamically Expandable Representation (Yan et al., CVPR 2021): a new feature extractor for every task, the
earlier ones frozen (BatchNorm included); the classifier reads all extractors' features concatenated (Sec. 3.1,
Eq. 1-2) and an auxiliary classifier on the new extractor's features separates the new classes from one "old"
class (Sec. 3.2, Eq. 3, weight lambda_a = 1). The channel-level masks and pruning (Sec. 3.3) are not implemented.
After each task the new classes' weights are aligned to the old ones' mean norm (weight aligning, as PyCIL's
der.py does in place of the paper's classifier fine-tuning stage)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..heads.linear import IncrementalLinear, align_new_rows
from ..registry import register_method
from .exemplar_base import ReplayMethod


class DERNet(nn.Module):
    """Extractors side by side; `head` over their concatenated features, `aux` over the newest one's."""

    def __init__(self, backbone: nn.Module, head_init: str = "uniform"):
        super().__init__()
        self.head_init = head_init
        self.backbones = nn.ModuleList([backbone])
        self.head = IncrementalLinear(backbone.num_features, init=head_init)
        self.aux = None  # IncrementalLinear(d, new classes + 1) from the second task on

    @property
    def num_features(self) -> int:
        return sum(b.num_features for b in self.backbones)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def add_backbone(self, backbone: nn.Module, copy_previous: bool) -> None:
        """Freeze the extractors so far, append `backbone` (started from the previous one's weights when
        `copy_previous`), widen the classifier: old classes keep their weights on the old features."""
        previous = self.backbones[-1]
        for old in self.backbones:
            old.requires_grad_(False)
        if copy_previous:
            backbone.load_state_dict(previous.state_dict())
        self.backbones.append(backbone)
        head = IncrementalLinear(self.num_features, self.head.num_classes, init=self.head_init)
        head = head.to(self.head.weight.device)
        with torch.no_grad():
            head.weight[:, : self.head.in_features] = self.head.weight
            head.bias.copy_(self.head.bias)
        self.head = head

    def train(self, mode: bool = True):
        super().train(mode)
        for old in self.backbones[:-1]:
            old.eval()  # frozen extractors keep their BatchNorm statistics
        return self

    def split_features(self, x: torch.Tensor) -> list:
        return [b.forward_features(x) for b in self.backbones]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.split_features(x), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


@dataclass
class DEROptions:
    aux_weight: float = 1.0  # Sec. 3.2, Eq. 4: lambda_a
    copy_previous: bool = True  # the new extractor starts from the previous one's weights (released code, PyCIL)
    align: bool = True  # weight aligning of the new classes' rows after each task (PyCIL's der.py)


@register_method("der")
class DER(ReplayMethod):
    Options = DEROptions
    requires_memory = True  # Sec. 4.1: 2,000 exemplars on CIFAR-100

    @classmethod
    def build_network(cls, networks, options, cfg):
        return DERNet(networks.backbone(), cfg.head.init)

    def __init__(self, model, options, cfg, device, **kwargs):
        super().__init__(model, options, cfg, device, **kwargs)
        self.old_classes = 0
        self.parameters_per_task: list = []
        self.gammas: list = []

    def begin_task(self, task, ctx):
        self.old_classes = self.model.num_classes
        if task.index > 0:
            self.model.add_backbone(self.networks.place(self.networks.backbone()), self.options.copy_previous)
            self.model.aux = self.networks.place(
                IncrementalLinear(self.model.backbones[-1].num_features, task.num_classes + 1,
                                  init=self.cfg.head.init))
        super().begin_task(task, ctx)

    def trainable_parameters(self):
        params = list(self.model.backbones[-1].parameters()) + list(self.model.head.parameters())
        return params + (list(self.model.aux.parameters()) if self.model.aux is not None else [])

    def training_step(self, x, y):
        features = self.model.split_features(x)
        logits = self.model.head(torch.cat(features, dim=1))
        ce = self.classification_loss(logits, y)
        if self.model.aux is None:
            return {"loss": ce, "ce": ce}
        # Eq. 3: the new task's classes 1..n and every old class as 0
        aux_y = torch.where(y >= self.old_classes, y - self.old_classes + 1, torch.zeros_like(y))
        aux = F.cross_entropy(self.model.aux(features[-1]), aux_y)
        return {"loss": ce + self.options.aux_weight * aux, "ce": ce, "aux": aux}

    def align_weights(self) -> float:
        """Eq. 6-7 of WA: the new rows rescaled to the old rows' mean norm."""
        return align_new_rows(self.model.head, self.old_classes)

    def end_task(self, task, ctx):
        gamma = self.align_weights() if self.options.align and task.index > 0 else 1.0
        self.gammas.append(gamma)
        self.parameters_per_task.append(sum(p.numel() for p in self.model.parameters()))
        ctx.events.write({"event": "der", "task": task.index, "gamma": gamma, "extractors": len(self.model.backbones),
                          "parameters": self.parameters_per_task[-1]})
        self.update_memory(task, ctx)

    def results_extra(self):
        return {"parameters": self.parameters_per_task, "weight_aligning": self.gammas}

    def state_dict(self):
        return {**super().state_dict(), "extractors": len(self.model.backbones), "old_classes": self.old_classes,
                "parameters_per_task": list(self.parameters_per_task), "gammas": list(self.gammas)}

    def load_state_dict(self, state):
        while len(self.model.backbones) < state["extractors"]:  # rebuild the grown network before loading it
            self.model.add_backbone(self.networks.place(self.networks.backbone()), copy_previous=False)
        state = dict(state)
        if self.model.aux is None:  # the auxiliary classifier lives for one task: rebuilt by begin_task
            state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("aux.")}
        super().load_state_dict(state)
        self.old_classes = state["old_classes"]
        self.parameters_per_task = list(state["parameters_per_task"])
        self.gammas = list(state["gammas"])

"""EASE, ExpAndable Subspace Ensemble (Zhou et al., "Expandable Subspace Ensemble for Pre-Trained Model-Based
Class-Incremental Learning", CVPR 2024): each task trains its own set of lightweight adapters on the frozen
pre-trained ViT (Sec. 4.1: a new subspace per task, the earlier ones frozen), with a cosine classifier over the
task's own classes. An image's embedding is the concatenation of its embeddings in every subspace; each class's
classifier row is its prototype (mean embedding) in every subspace (Sec. 4.2). An old class has no images in a
later subspace: its prototype there is synthesised from the new classes' prototypes, weighted by the softmax over
the new classes of its cosine with them in its own subspace (Sec. 4.3, semantic-guided prototype complement,
Eq. 7-8). At inference each class's logit sums the cosines of every subspace, its own at full weight and the others
at alpha / (tasks - 1) (Eq. 9, subspace reweighting).

As LAMDA-PILOT runs it (models/ease.py, exps/ease.json, backbone/vit_ease.py, EaseCosineLinear in
backbone/linears.py), which the config ease_vit_b16_cifar100_b0inc10 names key by key: adapters as APER's
(methods/aper.py: parallel, bottleneck 64, scale 0.1, dropout 0.1, zero-initialised), one set per task; SGD
(momentum 0.9, weight decay 5e-4), lr 0.025 with cosine decay to 0, 20 epochs, batch 48; alpha 0.1; the complement
recomputed for every old class and newer subspace after each task (`recalc_sim: true`); without the pre-trained
model's own subspace (`use_init_ptm: false`) and without exemplars. Evaluation embeds the test images again
after each task (the embedding gains a subspace), once per task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..heads.cosine import CosineLinear
from ..layers.vit_tuning import ParallelAdapter
from ..registry import register_method
from .base import IncrementalNet
from .frozen_base import AroundFrozenViT, FrozenBackboneMethod, freeze


@dataclass
class EASEOptions:
    bottleneck: int = 64  # PILOT "ffn_num"
    adapter_scale: float = 0.1
    adapter_dropout: float = 0.1
    alpha: float = 0.1  # Eq. 9's weight of the other subspaces (PILOT "alpha"); divided by tasks - 1
    reweight: bool = True  # Eq. 9 (PILOT "use_reweight"); false: one cosine over the whole concatenation


class SubspaceViT(nn.Module):
    """A frozen ViT with one set of adapters per task; forward_features(x) = [embedding in subspace 0; ...]."""

    def __init__(self, vit: nn.Module, bottleneck: int, scale: float, dropout: float):
        super().__init__()
        self.vit = freeze(vit)
        self.sets = nn.ModuleList()
        self.width = vit.num_features
        self._adapter_args = (bottleneck, scale, dropout)

    @property
    def num_features(self) -> int:
        return self.width * len(self.sets)

    def add_set(self) -> nn.ModuleList:
        for p in self.sets.parameters():  # earlier subspaces are frozen
            p.requires_grad_(False)
        new = nn.ModuleList(ParallelAdapter(self.width, *self._adapter_args) for _ in self.vit.blocks)
        self.sets.append(new.to(self.vit.pos_embed.device))
        return new

    def train(self, mode: bool = True):
        super().train(mode)
        self.vit.eval()
        return self

    def embed(self, x: torch.Tensor, index: int) -> torch.Tensor:
        blocks = self.vit.blocks
        try:
            for block, adapter in zip(blocks, self.sets[index]):
                block.adapter = adapter
            return self.vit.forward_features(x)
        finally:
            for block in blocks:
                block.adapter = None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.embed(x, i) for i in range(len(self.sets))], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


class SubspaceHead(nn.Module):
    """Prototype rows over the concatenated subspaces (not trained: set by the method), each class tagged with the
    task that brought it, scored per Eq. 9."""

    def __init__(self, width: int, alpha: float, reweight: bool):
        super().__init__()
        self.width, self.alpha, self.reweight = width, alpha, reweight
        self.register_buffer("weight", torch.zeros(0, 0))
        self.register_buffer("task_of_class", torch.zeros(0, dtype=torch.long))

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def grow(self, classes: int, task_index: int) -> None:
        """A new subspace (a column block of zeros) and the task's classes (rows of zeros)."""
        rows, cols = self.weight.shape
        weight = self.weight.new_zeros(rows + classes, cols + self.width)
        weight[:rows, :cols] = self.weight
        self.weight = weight
        self.task_of_class = torch.cat([self.task_of_class,
                                        self.task_of_class.new_full((classes,), task_index)])

    def resize(self, rows: int, cols: int) -> None:  # before loading a checkpoint of that shape
        self.weight = self.weight.new_zeros(rows, cols)
        self.task_of_class = self.task_of_class.new_zeros(rows)

    def block(self, j: int) -> slice:
        return slice(j * self.width, (j + 1) * self.width)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        spaces = self.weight.shape[1] // self.width
        if not self.reweight:
            return F.linear(F.normalize(feats, dim=1), F.normalize(self.weight, dim=1))
        logits = feats.new_zeros(len(feats), self.num_classes)
        for j in range(spaces):  # Eq. 9: own subspace at 1, the others at alpha / (tasks - 1)
            cos = F.linear(F.normalize(feats[:, self.block(j)], dim=1),
                           F.normalize(self.weight[:, self.block(j)], dim=1))
            own = (self.task_of_class == j).to(cos.dtype)
            other = self.alpha / max(spaces - 1, 1)
            logits = logits + cos * (own + (1 - own) * other)
        return logits


@register_method("ease")
class EASE(AroundFrozenViT, FrozenBackboneMethod):
    Options = EASEOptions

    @classmethod
    def check(cls, options, cfg) -> None:
        super().check(options, cfg)
        if options.bottleneck < 1 or options.adapter_scale <= 0 or not 0 <= options.adapter_dropout < 1:
            raise ConfigError(f"method.bottleneck ({options.bottleneck}) must be >= 1, method.adapter_scale "
                              f"({options.adapter_scale}) > 0 and method.adapter_dropout in [0, 1).")
        if options.alpha < 0:
            raise ConfigError(f"method.alpha: {options.alpha!r} must be >= 0.")

    @classmethod
    def build_network(cls, networks, options, cfg):
        vit = networks.backbone()
        if not hasattr(vit, "blocks") or not hasattr(vit.blocks[0], "adapter"):
            raise ConfigError(f"method ease puts adapters into a ViT's blocks; backbone {cfg.backbone.name!r} has "
                              "none (use ltcil's ViTs: vit_tiny/small/base_patch16_224, vit_micro).")
        backbone = SubspaceViT(vit, options.bottleneck, options.adapter_scale, options.adapter_dropout)
        net = IncrementalNet(backbone, SubspaceHead(vit.num_features, options.alpha, options.reweight))
        net.proxy = None  # the task's cosine classifier over its own classes, in its own subspace
        return net

    def trains(self, task) -> bool:
        return True

    def begin_task(self, task, ctx):
        net = self.model
        self.feature_cache.clear()  # a new subspace widens every embedding (the old blocks could be kept: not yet)
        self.old_classes = net.num_classes
        net.backbone.add_set()
        net.head.grow(task.num_classes, task.index)
        net.proxy = CosineLinear(net.backbone.width, sigma=True, num_classes=task.num_classes).to(self.device)

    def trainable_parameters(self):
        return [*self.model.backbone.sets[-1].parameters(), *self.model.proxy.parameters()]

    def training_step(self, x, y):
        net = self.model
        logits = net.proxy(net.backbone.embed(x, len(net.backbone.sets) - 1))
        return {"loss": F.cross_entropy(logits, y - self.old_classes)}

    @torch.no_grad()
    def end_task(self, task, ctx) -> None:
        for p in self.model.backbone.sets[-1].parameters():
            p.requires_grad_(False)
        head = self.model.head
        feats, labels = self.task_features(task, ctx)  # every subspace, one pass
        for c in task.classes.tolist():  # Sec. 4.2: prototypes of the task's classes in every subspace
            head.weight[c] = feats[labels == c].mean(0).to(head.weight.dtype)
        self.complement(task)

    @torch.no_grad()
    def complement(self, task) -> None:
        """Sec. 4.3 (Eq. 7-8), as PILOT's solve_sim_reset: for every old task i and every later subspace j, task
        i's classes' prototypes in j are the softmax(cosine in subspace i)-weighted sums of the prototypes in j of
        the classes that have real ones there (those of task j onwards)."""
        head = self.model.head
        owner = head.task_of_class
        for i in range(task.index):
            mine = owner == i
            for j in range(i + 1, task.index + 1):
                known = owner >= j
                a = F.normalize(head.weight[known][:, head.block(i)], dim=1)
                a_hat = F.normalize(head.weight[mine][:, head.block(i)], dim=1)
                weights = torch.softmax(a_hat @ a.T, dim=1)
                rows = torch.nonzero(mine).flatten()
                head.weight[rows, head.block(j)] = weights @ head.weight[known][:, head.block(j)]

    # --- state: the subspaces and the head grow; build them to the stored sizes before loading -----------------
    def load_state_dict(self, state: dict) -> None:
        model = state["model"]
        sets = 1 + max((int(k.split(".")[2]) for k in model if k.startswith("backbone.sets.")), default=-1)
        while len(self.model.backbone.sets) < sets:
            self.model.backbone.add_set()
        self.model.head.resize(*model["head.weight"].shape)
        if "proxy.weight" in model:
            self.model.proxy = CosineLinear(self.model.backbone.width, sigma=True,
                                            num_classes=model["proxy.weight"].shape[0]).to(self.device)
        frozen = len(self.model.backbone.sets) - (1 if self.model.proxy is not None else 0)
        super().load_state_dict(state)
        for index, adapters in enumerate(self.model.backbone.sets):  # earlier subspaces stay frozen
            adapters.requires_grad_(index >= frozen)

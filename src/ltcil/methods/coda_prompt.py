"""CODA-Prompt (Smith et al., "CODA-Prompt: COntinual Decomposed Attention-based Prompting for Rehearsal-Free
Continual Learning", CVPR 2023, Sec. 4): a frozen pre-trained ViT whose first blocks take a prompt assembled for
each image from a pool of learnable components: the image's query (the frozen model's class token) is weighted
element-wise by each component's attention vector A_m and compared by cosine with its key K_m; the prompt is the
sum of the components P_m weighted by those cosines (Eq. 4-6, no softmax, no top-k), its first half prefixed to
the attention's keys and its second half to the values. Each task owns a slice of M / T components, drawn
orthonormal to all earlier ones (Gram-Schmidt) when it starts; earlier slices are used but not trained, later ones
not used yet. Loss: CE over the task's classes (the old ones masked) plus mu times the orthogonality penalty
||B B^T - I||^2 on K, A and P (Eq. 7; mu 0 in the CIFAR recipe).

As LAMDA-PILOT runs it (models/coda_prompt.py, exps/coda_prompt.json, CodaPrompt in backbone/prompt.py), which
the config coda_prompt_vit_b16_cifar100_b0inc10 names key by key: 100 components of length 8 in blocks 0-4,
mu 0, components initialised by Gram-Schmidt of Gaussian vectors; an nn.Linear head (its default init) trained
with the components by Adam at 0.001, batch 128, 20 epochs a task, PILOT's cosine schedule (lr x cos(0.495 pi e /
(E - 1)): train.schedule quarter_cosine), no weight decay.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..heads.linear import IncrementalLinear
from ..registry import register_method
from .base import IncrementalNet, Method
from .frozen_base import AroundFrozenViT, FrozenBackboneMethod, freeze
from .l2p import L2P


@dataclass
class CODAOptions:
    components: int = 100  # M, the pool (PILOT prompt_param[0])
    length: int = 8  # L_p: its first half prefixes the keys, its second half the values (prompt_param[1])
    layers: list = field(default_factory=lambda: [0, 1, 2, 3, 4])  # the blocks that take a prompt
    ortho: float = 0.0  # mu of the orthogonality penalty (prompt_param[2])


@torch.no_grad()
def orthonormal_rows(matrix: torch.Tensor, start: int, stop: int, gen: torch.Generator) -> None:
    """Rows start..stop-1 of `matrix` (rows: flattened vectors) become Gaussian draws made orthonormal to every
    row before them by Gram-Schmidt (as the released code initialises a task's components)."""
    flat = matrix.view(matrix.shape[0], -1)
    for k in range(start, stop):
        v = torch.randn(flat.shape[1], generator=gen).to(flat)
        for j in range(k):
            u = flat[j]
            v -= (v @ u) / (u @ u).clamp_min(1e-12) * u
        flat[k] = v / v.norm().clamp_min(1e-12)


def ortho_penalty(t: torch.Tensor) -> torch.Tensor:
    """||B B^T - I||^2 over the rows of t (flattened), averaged (Eq. 7 as released)."""
    b = t.reshape(t.shape[0], -1)
    return ((b @ b.T - torch.eye(b.shape[0], device=b.device, dtype=b.dtype)) ** 2).mean()


class CODAPromptViT(nn.Module):
    """A frozen ViT whose blocks in `layers` take attention prefixes assembled from the component pool."""

    def __init__(self, vit: nn.Module, options: CODAOptions):
        super().__init__()
        self.vit = freeze(vit)
        d, m, n = vit.num_features, options.components, len(options.layers)
        self.layers, self.length = list(options.layers), options.length
        # zeros until a task's slice is drawn (begin_task); 3-D so a channels-last placement leaves them alone
        self.keys = nn.Parameter(torch.zeros(n, m, d))
        self.attention = nn.Parameter(torch.zeros(n, m, d))
        self.prompts = nn.Parameter(torch.zeros(n * m, options.length, d))
        self.components = m
        self.active = (0, 0)  # (first component trained in this task, first component not used yet)
        self.num_features = d
        self.ortho = 0.0

    def train(self, mode: bool = True):
        super().train(mode)
        self.vit.eval()
        return self

    def layer_params(self, i: int, train: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(K, A, P) of the i-th prompted block over the components in use; in training the earlier tasks'
        components pass no gradient."""
        start, stop = self.active
        m = self.components
        k, a = self.keys[i, :stop], self.attention[i, :stop]
        p = self.prompts[i * m : i * m + stop]
        if train and start > 0:
            k, a, p = (torch.cat([t[:start].detach(), t[start:]]) for t in (k, a, p))
        return k, a, p

    def forward_prompted(self, x: torch.Tensor, query=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(class token after the final norm (B, D), the orthogonality penalty (0 unless trained with mu > 0));
        `query`: the frozen model's class token of x when known."""
        if query is None:
            with torch.no_grad():
                query = self.vit.forward_features(x)
        prefixes, penalty = {}, query.new_zeros(())
        half = self.length // 2
        for i, layer in enumerate(self.layers):
            k, a, p = self.layer_params(i, self.training)
            weighted = F.normalize(query.unsqueeze(1) * a.unsqueeze(0), dim=2)  # (B, M', D): Eq. 5's A (.) q
            alpha = torch.einsum("bkd,kd->bk", weighted, F.normalize(k, dim=1))  # cosines, Eq. 5
            prompt = torch.einsum("bk,kld->bld", alpha, p)  # Eq. 6: (B, L_p, D)
            prefixes[layer] = (prompt[:, :half], prompt[:, half:])
            if self.training and self.ortho > 0:
                penalty = penalty + ortho_penalty(k) + ortho_penalty(a) + ortho_penalty(p)
        return self.vit.forward_tokens(x, prefixes=prefixes)[:, 0], self.ortho * penalty

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_prompted(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


@register_method("coda_prompt")
class CODAPrompt(L2P):
    Options = CODAOptions

    @classmethod
    def check(cls, options, cfg) -> None:
        FrozenBackboneMethod.check(options, cfg)  # the random-weights warning
        if options.components < 1 or options.length < 2 or options.ortho < 0:
            raise ConfigError(f"method.components ({options.components}) must be >= 1, method.length "
                              f"({options.length}) >= 2 (key and value halves), method.ortho >= 0.")
        if len(set(options.layers)) != len(options.layers) or any(not isinstance(i, int) or i < 0
                                                                    for i in options.layers):
            raise ConfigError(f"method.layers {options.layers} must be distinct block indices >= 0.")

    @classmethod
    def build_network(cls, networks, options, cfg):
        vit = networks.backbone()
        if not hasattr(vit, "forward_tokens"):
            raise ConfigError(f"method coda_prompt prefixes a ViT's attention; backbone {cfg.backbone.name!r} has "
                              "none (use ltcil's ViTs: vit_tiny/small/base_patch16_224, vit_micro).")
        if max(options.layers) >= len(vit.blocks):
            raise ConfigError(f"method coda_prompt: block {max(options.layers)} of method.layers does not exist in "
                              f"{cfg.backbone.name} ({len(vit.blocks)} blocks).")
        net = CODAPromptViT(vit, options)
        net.ortho = options.ortho
        return IncrementalNet(net, IncrementalLinear(vit.num_features, init=cfg.head.init))

    def begin_task(self, task, ctx):
        Method.begin_task(self, task, ctx)
        self.old_classes = self.model.num_classes - task.num_classes
        net = self.model.backbone
        per_task = net.components // len(ctx.scenario.tasks)  # the released code: int(M / tasks)
        if per_task < 1:
            raise ConfigError(f"method.components ({net.components}) is fewer than the scenario's "
                              f"{len(ctx.scenario.tasks)} tasks: each task needs at least one component.")
        start, stop = task.index * per_task, (task.index + 1) * per_task
        if net.active[1] < stop:  # a new task's slice (a resumed task's was drawn already and is loaded after)
            m = net.components
            for i in range(len(net.layers)):
                orthonormal_rows(net.keys.data[i], start, stop, ctx.gens[0])
                orthonormal_rows(net.attention.data[i], start, stop, ctx.gens[0])
                orthonormal_rows(net.prompts.data[i * m : (i + 1) * m], start, stop, ctx.gens[0])
        net.active = (start, stop)

    def training_step(self, x, y):
        feats, penalty = self.model.backbone.forward_prompted(x)
        logits = self.model.head(feats)
        if self.old_classes:
            logits = logits.clone()
            logits[:, : self.old_classes] = float("-inf")
        ce = F.cross_entropy(logits, y)
        return {"loss": ce + penalty, "ce": ce}

    def state_dict(self) -> dict:
        return {**AroundFrozenViT.state_dict(self), "active": list(self.model.backbone.active)}

    def load_state_dict(self, state: dict) -> None:
        AroundFrozenViT.load_state_dict(self, state)
        self.model.backbone.active = tuple(state["active"])

"""Parameter-efficient tuning of a frozen ViT (backbones/vit.py): the modules APER adapts on its first task
(Zhou et al., IJCV 2024, Sec. 4.2 and its Table 6: adapter, SSF and VPT variants) and EASE builds per task.
Each holds only its own parameters; `embed(vit, x)` is the tuned ViT's class-token embedding, the ViT itself
unchanged (run it plainly for the pre-trained embedding).

- AdapterTuning: AdaptFormer's parallel adapter beside every block's MLP (Chen et al., NeurIPS 2022, Eq. 3);
- SSFTuning: scale and shift of the features after every operation (Lian et al., NeurIPS 2022, Eq. 2-3): the
  patch projection, each block's norm1 / qkv / attention projection / norm2 / fc1 / fc2, the final norm;
  scale ~ N(1, 0.02^2), shift ~ N(0, 0.02^2), the released SSF's (and LAMDA-PILOT's vit_ssf.py) init;
- VPTTuning: learned prompt tokens joined to the sequence (Jia et al., ECCV 2022, Sec. 3.2): `deep` gives every
  block its own tokens, the previous block's outputs at those positions dropped (VPT-Deep, Eq. 5-7); shallow
  joins one set before the first block and keeps it to the end (VPT-Shallow, Eq. 2-4). Init: the paper's
  Xavier-uniform over (patch area x 3 + width), or zeros as LAMDA-PILOT's backbone/vpt.py starts them.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

TUNINGS = ("adapter", "ssf", "vpt_deep", "vpt_shallow")
VPT_INITS = ("xavier", "zeros")


class ParallelAdapter(nn.Module):
    """AdaptFormer's adapter (Chen et al. 2022, Eq. 3): s * up(dropout(ReLU(down(x)))), run beside a block's MLP."""

    def __init__(self, dim: int, bottleneck: int, scale: float, dropout: float = 0.0):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.scale, self.dropout = scale, dropout
        with torch.no_grad():  # PILOT's "lora" init: the adapter starts as a zero map
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.dropout(F.relu(self.down(x)), self.dropout, self.training)) * self.scale


class AdapterTuning(nn.Module):
    def __init__(self, vit: nn.Module, bottleneck: int, scale: float, dropout: float = 0.0):
        super().__init__()
        self.adapters = nn.ModuleList(ParallelAdapter(vit.num_features, bottleneck, scale, dropout)
                                      for _ in vit.blocks)

    def embed(self, vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
        try:
            for block, adapter in zip(vit.blocks, self.adapters):
                block.adapter = adapter
            return vit.forward_features(x)
        finally:  # detached again: the ViT's own weights (and checkpoint keys) never include them
            for block in vit.blocks:
                block.adapter = None


class ScaleShift(nn.Module):
    """y = x * scale + shift over the channel dimension (last, or dim 1 of a conv's NCHW output)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.empty(dim).normal_(1.0, 0.02))
        self.shift = nn.Parameter(torch.empty(dim).normal_(0.0, 0.02))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # the patch projection's (B, D, H, W)
            return x * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)
        return x * self.scale + self.shift


class SSFTuning(nn.Module):
    """SSF's scale-shift after each operation, applied through forward hooks on the ViT's own modules for one
    embedding and removed after it (the ViT's forward and weights stay as they are)."""

    SITES = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.patch = ScaleShift(vit.num_features)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({site.replace(".", "_"): ScaleShift(_module(block, site).weight.shape[0])
                           for site in self.SITES})
            for block in vit.blocks)
        self.norm = ScaleShift(vit.num_features)

    def _pairs(self, vit: nn.Module):
        yield vit.patch_embed.proj, self.patch
        for block, own in zip(vit.blocks, self.blocks):
            for site in self.SITES:
                yield _module(block, site), own[site.replace(".", "_")]
        yield vit.norm, self.norm

    def embed(self, vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
        handles = [module.register_forward_hook(lambda _m, _i, out, ss=ss: ss(out))
                   for module, ss in self._pairs(vit)]
        try:
            return vit.forward_features(x)
        finally:
            for handle in handles:
                handle.remove()


class VPTTuning(nn.Module):
    def __init__(self, vit: nn.Module, tokens: int, deep: bool, init: str = "xavier"):
        super().__init__()
        self.deep = deep
        sets = len(vit.blocks) if deep else 1
        self.prompts = nn.Parameter(torch.zeros(sets, tokens, vit.num_features))
        if init == "xavier":  # VPT's released init: U(-v, v), v = sqrt(6 / (3 * patch^2 + width))
            bound = math.sqrt(6.0 / (3 * vit.patch ** 2 + vit.num_features))
            nn.init.uniform_(self.prompts, -bound, bound)

    def embed(self, vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
        z = vit.embed(x)
        n = z.shape[1]  # class token + patches; prompts follow them (their place does not matter to attention)
        for i, block in enumerate(vit.blocks):
            if self.deep or i == 0:
                z = torch.cat([z[:, :n], self.prompts[i if self.deep else 0].expand(z.shape[0], -1, -1)], dim=1)
            z = block(z)
        return vit.norm(z)[:, 0]


def _module(root: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def build_tuning(kind: str, vit: nn.Module, bottleneck: int = 64, adapter_scale: float = 0.1,
                 adapter_dropout: float = 0.0, prompt_tokens: int = 5, vpt_init: str = "xavier") -> nn.Module:
    if kind == "adapter":
        return AdapterTuning(vit, bottleneck, adapter_scale, adapter_dropout)
    if kind == "ssf":
        return SSFTuning(vit)
    if kind in ("vpt_deep", "vpt_shallow"):
        return VPTTuning(vit, prompt_tokens, deep=kind == "vpt_deep", init=vpt_init)
    raise ValueError(f"tuning {kind!r} is not one of {', '.join(TUNINGS)}")

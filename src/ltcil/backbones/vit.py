"""Vision Transformer (Dosovitskiy et al., ICLR 2021, Sec. 3.1, Eq. 1-4), written for ltcil with timm's parameter
names, so a timm ViT checkpoint (`model.safetensors` or a `.pth` state dict) loads into it key for key.

Pre-norm blocks (LayerNorm, multi-head self-attention, LayerNorm, GELU MLP, both residual), a class token and
learned position embeddings; `forward_features` returns the class token after the final norm (num_features = the
width). Inputs of another size than `input_size` are resized bilinearly on the device first, so CIFAR's 32-px
arrays feed a 224-px model without a resize per image on the CPU.

Prompt methods reach inside through `forward_tokens(x, prompts=...)` (tokens prepended at given blocks);
the width/depth/heads of the named architectures are the ViT and DeiT papers' (tiny 192/12/3, small 384/12/6,
base 768/12/12). `vit_micro` (64 wide, 2 blocks) is for tests and CPU experiments, not a published network.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import BackboneConfig
from ..registry import register_backbone


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, prefix: Optional[tuple] = None) -> torch.Tensor:
        """`prefix`: (keys, values) prepended to this layer's own (prefix-tuning, DualPrompt Sec. 4.2)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if prefix is not None:
            pk, pv = (p.reshape(b, -1, self.heads, d // self.heads).transpose(1, 2) for p in prefix)
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Eq. 2-3: z' = MSA(LN(z)) + z; z = MLP(LN(z')) + z'. `adapter`, when set, runs beside the MLP
    (AdaptFormer's parallel adapter, the APER/EASE form): z = MLP(LN(z')) + adapter(z') + z'."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adapter: Optional[nn.Module] = None

    def forward(self, x: torch.Tensor, prefix: Optional[tuple] = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), prefix)
        out = x + self.mlp(self.norm2(x))
        if self.adapter is not None:
            out = out + self.adapter(x)
        return out


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    def __init__(self, in_channels: int, input_size: int, patch: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        if input_size % patch:
            raise ValueError(f"input size {input_size} is not a multiple of the patch size {patch}")
        self.input_size, self.patch, self.num_features = input_size, patch, dim
        self.patch_embed = PatchEmbed(in_channels, dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (input_size // patch) ** 2 + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 1: patch tokens with the class token prepended, plus position embeddings."""
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        tokens = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed

    def forward_tokens(self, x: torch.Tensor, prompts: Optional[dict] = None, prefixes: Optional[dict] = None,
                       upto: Optional[int] = None) -> torch.Tensor:
        """All tokens after the final norm. `prompts`: {block index: (B, P, D) tokens prepended to the sequence
        before that block} (VPT / L2P prompt tuning); `prefixes`: {block index: (keys, values)} prepended inside
        that block's attention (prefix tuning); `upto`: stop after that many blocks (no final norm)."""
        z = self.embed(x)
        for i, block in enumerate(self.blocks[:upto]):
            if prompts and i in prompts:
                z = torch.cat([z[:, :1], prompts[i], z[:, 1:]], dim=1)
            z = block(z, prefixes.get(i) if prefixes else None)
        return z if upto is not None else self.norm(z)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


def resample_pos_embed(pos: torch.Tensor, tokens: int) -> torch.Tensor:
    """Position embeddings of a checkpoint trained at another grid, bicubically resampled to `tokens` patch
    tokens (the class token's kept): fine-tuning at a new resolution as the ViT paper does (Sec. 3.2)."""
    if pos.shape[1] == tokens + 1:
        return pos
    old = int(math.isqrt(pos.shape[1] - 1))
    new = int(math.isqrt(tokens))
    grid = pos[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, new * new, -1).to(pos.dtype)], dim=1)


# name: (width, depth, heads, patch, native input size)
ARCHITECTURES = {
    "vit_micro": (64, 2, 2, 4, 32),
    "vit_tiny_patch16_224": (192, 12, 3, 16, 224),
    "vit_small_patch16_224": (384, 12, 6, 16, 224),
    "vit_base_patch16_224": (768, 12, 12, 16, 224),
}


def build_vit(name: str, cfg: BackboneConfig, in_channels: int, image_size: int) -> VisionTransformer:
    dim, depth, heads, patch, native = ARCHITECTURES[name]
    patch = cfg.patch_size or patch
    pretrained = cfg.pretrained or bool(cfg.checkpoint)
    # a pretrained model sees images at its native size; a random one at the data's, rounded up to a patch
    size = cfg.input_size or (native if pretrained else -(-image_size // patch) * patch)
    model = VisionTransformer(in_channels, size, patch, dim, depth, heads)
    model.input_stats = None
    if pretrained:
        from .pretrained import input_stats, load_into

        load_into(model, name, cfg)
        model.input_stats = input_stats(cfg)
    return model


for _name in ARCHITECTURES:
    register_backbone(_name)(lambda cfg, c, s, _n=_name: build_vit(_n, cfg, c, s))

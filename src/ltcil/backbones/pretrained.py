"""Pre-trained weights for ltcil's ViT from files on disk: `backbone.checkpoint: PATH` (a timm state dict as
`.safetensors`, `.pth`, `.pt` or `.bin`), or `backbone.pretrained: true` with the name's weights in the Hugging Face
hub cache (`timm/<name>`, where timm itself keeps them). A run never downloads: without the file it stops with one
paragraph saying where to put it. The image statistics the weights were trained with come from the `config.json`
timm stores beside them (`pretrained_cfg.mean` / `std`) and replace the data's own (runner).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ..config import BackboneConfig
from ..errors import ConfigError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# keys of a timm ViT checkpoint that ltcil's backbone does not hold: the classifier and its pre-logits norm
DROPPED = ("head.", "fc_norm.", "head_drop.", "pre_logits.")
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}


def hub_cache() -> Path:
    """Where huggingface_hub keeps downloads: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def cached_weights(model_name: str) -> Optional[Path]:
    """The weights file of `timm/<model_name>` in the hub cache (the newest snapshot holding one), or None."""
    snapshots = hub_cache() / f"models--timm--{model_name}" / "snapshots"
    if not snapshots.is_dir():
        return None
    for snap in sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
        for name in WEIGHT_FILES:
            if (snap / name).is_file():
                return snap / name
    return None


def offline_message(model_name: str) -> str:
    folder = hub_cache() / f"models--timm--{model_name}"
    return (f"backbone.pretrained: no weights of timm/{model_name} on this machine (looked in {folder}), and ltcil "
            f"downloads nothing during a run. On a machine with network, fetch them once with `python -c \"import "
            f"timm; timm.create_model('{model_name}', pretrained=True)\"` or `huggingface-cli download timm/"
            f"{model_name}` (both fill that cache; set HF_HOME to share it), or download model.safetensors from "
            f"https://huggingface.co/timm/{model_name} and give its path as backbone.checkpoint=PATH.")


def read_safetensors(path: Path) -> dict:
    """A .safetensors file (8-byte little-endian header size, a JSON header of dtype / shape / byte offsets,
    then the raw tensors), read without the safetensors package."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ConfigError(f"backbone.checkpoint: {path} is not a safetensors file (shorter than its header).")
        size = struct.unpack("<Q", head)[0]
        try:
            header = json.loads(fh.read(size))
        except (ValueError, UnicodeDecodeError):
            raise ConfigError(f"backbone.checkpoint: {path} is not a safetensors file (its header is not JSON)."
                              ) from None
        data = fh.read()
    out = {}
    for key, spec in header.items():
        if key == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        if spec["dtype"] not in _DTYPES or end > len(data):
            raise ConfigError(f"backbone.checkpoint: {path} is truncated or holds an unknown dtype at {key!r}.")
        raw = bytearray(data[start:end])
        out[key] = torch.frombuffer(raw, dtype=_DTYPES[spec["dtype"]]).reshape(spec["shape"]) if raw else \
            torch.zeros(spec["shape"], dtype=_DTYPES[spec["dtype"]])
    return out


def read_state(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"backbone.checkpoint: {path} does not exist.")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"backbone.checkpoint: {path} could not be read as a PyTorch state dict "
                          f"({type(exc).__name__}: {str(exc)[:200]}).") from None
    for key in ("state_dict", "model"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"backbone.checkpoint: {path} holds a {type(state).__name__}, not a state dict.")
    return state


def weights_path(cfg: BackboneConfig) -> Path:
    """backbone.checkpoint, else the hub cache's file for `name` (with its pretrained tag, e.g.
    vit_base_patch16_224.augreg_in21k); ConfigError with the offline paragraph when there is none."""
    if cfg.checkpoint:
        return Path(cfg.checkpoint).expanduser()
    found = cached_weights(cfg.name)
    if found is None:
        raise ConfigError(offline_message(cfg.name))
    return found


def input_stats(cfg: BackboneConfig) -> Optional[tuple[list, list]]:
    """(mean, std) the weights were trained with, from the config.json beside them; None when unknown."""
    if not (cfg.pretrained or cfg.checkpoint):
        return None
    path = Path(cfg.checkpoint).expanduser() if cfg.checkpoint else cached_weights(cfg.name)
    meta = path.parent / "config.json" if path is not None else None
    if meta is None or not meta.is_file():
        return None
    try:
        pre = json.loads(meta.read_text()).get("pretrained_cfg", {})
    except ValueError:
        return None
    if "mean" in pre and "std" in pre:
        return list(map(float, pre["mean"])), list(map(float, pre["std"]))
    return None


def load_into(model: nn.Module, arch: str, cfg: BackboneConfig) -> None:
    """Load timm-named weights into ltcil's ViT: classifier keys dropped, position embeddings resampled to the
    model's grid, every other key required to match (a missing or misshapen one is named)."""
    from .vit import resample_pos_embed

    path = weights_path(cfg)
    state = {k.removeprefix("module."): v for k, v in read_state(path).items()}
    state = {k: v for k, v in state.items() if not k.startswith(DROPPED)}
    key = "patch_embed.proj.weight"
    if key in state and state[key].shape[1] == 3 and model.patch_embed.proj.in_channels == 1:
        state[key] = state[key].sum(1, keepdim=True)  # grey images: the RGB filters summed (as timm adapts them)
    if "pos_embed" in state:
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], model.pos_embed.shape[1] - 1)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})"
                 if missing else "",
                 f"{len(unexpected)} unexpected ({', '.join(unexpected[:4])}{', ...' if len(unexpected) > 4 else ''})"
                 if unexpected else "",
                 "shapes differ at " + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                 for k in wrong[:3]) if wrong else ""]
        raise ConfigError(f"backbone: the weights in {path} do not fit {arch} (backbone.patch_size "
                          f"{model.patch}): " + "; ".join(p for p in parts if p) + ".")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})

"""Checkpoints: plain state dicts (tensors, numbers, strings, lists, dicts), written atomically, loadable
with torch.load(weights_only=True). One per finished task."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

CHECKPOINT_DIR = "checkpoints"


def checkpoint_path(run_dir: Path, task_index: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"task_{task_index:03d}.pt"


def save_checkpoint(run_dir: Path, task_index: int, state: dict) -> Path:
    path = checkpoint_path(run_dir, task_index)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic on POSIX: a crash leaves either the old file or the new one
    return path


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    folder = Path(run_dir) / CHECKPOINT_DIR
    found = sorted(folder.glob("task_*.pt")) if folder.is_dir() else []
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)

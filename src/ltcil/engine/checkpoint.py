"""Checkpoints: plain state dicts (tensors, numbers, strings, lists, dicts), written atomically, loadable
with torch.load(weights_only=True). One per finished task, and one inside the running task (below)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from ..errors import LtcilError
from ..files import write_atomic

CHECKPOINT_DIR = "checkpoints"


def checkpoint_path(run_dir: Path, task_index: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"task_{task_index:03d}.pt"


def state_bytes(state) -> int:
    """About what `state` takes on disk: its tensors' bytes (the rest, numbers and names, is small)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 64


# torch's zip writer reports a failed write (a full disk) as a RuntimeError: "[enforce fail at
# inline_container.cc:672] . unexpected pos ..." or "PytorchStreamWriter failed writing file ...: file write failed"
_WRITER_FAILURES = ("inline_container", "PytorchStreamWriter", "file write failed", "unexpected pos")


def _torch_save(state: dict, tmp: Path, needed: int) -> None:
    try:
        torch.save(state, tmp)
    except RuntimeError as exc:
        if not any(s in str(exc) for s in _WRITER_FAILURES):
            raise
        try:
            full = shutil.disk_usage(Path(tmp).parent).free < needed + (1 << 20)
        except OSError:
            full = False
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp)) from None
        first = (str(exc).splitlines() or [""])[0][:160]
        raise OSError(errno.EIO, f"the write failed ({first})", str(tmp)) from None


def _save_atomic(path: Path, state: dict) -> Path:
    # atomic on POSIX: a crash, a full disk or a read-only folder leaves either the old file or the new one
    needed = state_bytes(state)
    return write_atomic(path, lambda tmp: _torch_save(state, tmp, needed), needed=needed,
                        kept="The checkpoints written before it are intact; free space and `ltcil resume` the run.")


def save_checkpoint(run_dir: Path, task_index: int, state: dict) -> Path:
    return _save_atomic(checkpoint_path(run_dir, task_index), state)


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    folder = Path(run_dir) / CHECKPOINT_DIR
    found = sorted(folder.glob("task_*.pt")) if folder.is_dir() else []
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or holding objects other than plain data
        hint = ("delete it to resume from the last finished task instead" if Path(path).name == PARTIAL
                else "delete it to resume from the task before it")
        detail = (str(exc).splitlines() or [""])[0]
        detail = detail if len(detail) <= 100 else detail[:100] + "..."
        raise LtcilError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {detail}); {hint}.") from exc
    if not isinstance(state, dict) or "task" not in state:
        raise LtcilError(f"checkpoint {path} is not an ltcil checkpoint (no 'task' entry).")
    return state


# --- inside a task -------------------------------------------------------------------------------------------
# A long single task (200 epochs of long-tailed recognition, 1,000 of SBCL) must not restart from scratch after
# a kill, so the main training of a task also leaves `partial.pt` every `train.checkpoint_minutes`: the method's
# state after the last finished epoch, the optimiser, the task's generators and the global RNG. It is replaced
# by the task's own checkpoint when the task ends.
PARTIAL = "partial.pt"


def partial_path(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / PARTIAL


def save_partial(run_dir: Path, state: dict) -> Path:
    return _save_atomic(partial_path(run_dir), state)


def load_partial(run_dir: Path) -> Optional[dict]:
    path = partial_path(run_dir)
    return load_checkpoint(path) if path.exists() else None


def remove_partial(run_dir: Path) -> None:
    partial_path(run_dir).unlink(missing_ok=True)

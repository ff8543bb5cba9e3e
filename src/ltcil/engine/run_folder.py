"""Run folders: what marks one, who may write it, and when --force may empty it.

- A run folder holds MARKER (written when a run or sweep starts); folders of earlier versions are recognised by
  their config.yaml beside events.jsonl or checkpoints/.
- `--force` empties only a recognisable run folder, never the current folder or one above it, never through a
  symbolic link, and only once the new run's config and data have been checked (`clear`).
- One process at a time: `lock` takes an exclusive lock on the folder's LOCK file for as long as the process
  runs; a second `run`, `resume` or `sweep` on the same folder is refused with the holder's pid.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import LtcilError
from ..files import check_writable_folder

MARKER = ".ltcil-run"
LOCK = ".lock"


def is_run_folder(folder: Path) -> bool:
    folder = Path(folder)
    if (folder / MARKER).exists() or (folder / "sweep.json").exists():
        return True
    ran = (folder / "events.jsonl").exists() or (folder / "checkpoints").is_dir()
    return (folder / "config.yaml").exists() and ran


def _contents(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name != LOCK)


def check(run_dir: Path, force: bool) -> bool:
    """Before anything is loaded: may a new run write `run_dir`? True when it holds a run that --force will
    replace (later, by `clear`); raises a clear error otherwise."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise LtcilError(f"output folder {run_dir} is a file, not a folder; choose another --out.")
    check_writable_folder(run_dir)
    if not run_dir.exists() or not _contents(run_dir):
        return False
    if not force:
        raise LtcilError(
            f"output folder {run_dir} already holds a run. Use `ltcil resume {run_dir}` to continue it, "
            "--force to overwrite it, or choose another --out."
            if is_run_folder(run_dir) else
            f"output folder {run_dir} is not empty and holds no ltcil run; choose another --out.")
    if run_dir.is_symlink():
        raise LtcilError(f"--force will not empty {run_dir}: it is a symbolic link (to {os.readlink(run_dir)}); "
                         "give the folder itself as --out.")
    here, target = Path.cwd().resolve(), run_dir.resolve()
    if target == here or target in here.parents:
        raise LtcilError(f"--force will not empty {run_dir}: it is the current folder or a folder above it.")
    if not is_run_folder(run_dir):
        names = ", ".join(p.name for p in _contents(run_dir)[:5])
        raise LtcilError(f"--force empties only an ltcil run folder, and {run_dir} holds other files ({names}, ...): "
                         "nothing was removed. Choose another --out, or remove them yourself.")
    return True


def clear(run_dir: Path) -> None:
    """Empty a run folder that `check` accepted for --force (its lock file stays: this process holds it)."""
    for path in _contents(Path(run_dir)):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def mark(run_dir: Path) -> None:
    (Path(run_dir) / MARKER).write_text("an ltcil run folder: `ltcil run --force` may replace it\n")


class Lock:
    """An exclusive lock on RUN_DIR/.lock for the life of the process (or until `release`)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.created_folder = not Path(run_dir).exists()
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no advisory locks on this platform
            return
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "unknown"
            self.fh.close()
            raise LtcilError(f"{run_dir} is in use by another ltcil process (pid {holder}); wait for it to end, "
                             "or choose another --out.") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(str(os.getpid()))
        self.fh.flush()

    def release(self, remove_empty: bool = False) -> None:
        """Unlock; with `remove_empty`, remove the folder again if this lock created it and nothing was written."""
        folder = self.path.parent
        self.fh.close()
        if remove_empty and self.created_folder and folder.exists() and not _contents(folder):
            shutil.rmtree(folder, ignore_errors=True)

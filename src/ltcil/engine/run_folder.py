"""Run folders: what marks one, who may write it, and when --force may empty it.

- A run folder holds MARKER (written when a run or sweep starts), and only a folder holding it is one: another
  tool's folder with a config.yaml and checkpoints/ (a Lightning run) is not.
- `--force` replaces only a run folder, never the current folder or one above it, never through a symbolic link,
  and only once the new run's config and data have been checked (`clear`); it removes what ltcil writes there
  (OWN_FILES, OWN_FOLDERS, a sweep's task<N>/) and names what it left.
- One process at a time: `lock` takes an exclusive lock on the folder's LOCK file for as long as the process
  runs; a second `run`, `resume` or `sweep` on the same folder is refused with the holder's pid.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

from ..errors import LtcilError
from ..files import check_writable_folder

MARKER = ".ltcil-run"
LOCK = ".lock"
SWEEP = "sweep"  # the marker's first word in a sweep folder

# What ltcil writes into a run or sweep folder, and so what --force may remove: files (and their ".tmp" while
# being written atomically), folders whose whole content is ltcil's (trackers' logs, a sweep's candidate runs),
# and inside checkpoints/ the checkpoint files alone.
OWN_FILES = {MARKER, "config.yaml", "events.jsonl", "results.json", "report.html", "report.md",
             "unreadable_images.txt", "sweep.json"}
OWN_FOLDERS = {"tensorboard", "wandb"}
_SWEEP_TASK = re.compile(r"task\d+")
CHECKPOINTS = "checkpoints"
_CHECKPOINT = re.compile(r"(task_\d+|partial)\.pt(\.tmp)?")


def is_run_folder(folder: Path) -> bool:
    """Only ltcil's own marker makes a run folder."""
    return (Path(folder) / MARKER).is_file()


def is_sweep_folder(folder: Path) -> bool:
    try:
        return is_run_folder(folder) and (Path(folder) / MARKER).read_text().startswith(SWEEP)
    except OSError:
        return False


def _contents(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name != LOCK)


def describe(paths: list[Path], limit: int = 20) -> str:
    """'config.yaml, checkpoints/ (3 files), NOTES.txt': every entry up to `limit`, then how many more."""
    names = []
    for p in paths[:limit]:
        if p.is_dir() and not p.is_symlink():
            try:
                n = sum(1 for _ in p.rglob("*"))
            except OSError:
                n = 0
            names.append(f"{p.name}/ ({n} {'entry' if n == 1 else 'entries'})")
        else:
            names.append(p.name)
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(names) + more


def _written(path: Path) -> bool:
    """Did ltcil write this entry of a run folder (besides its marker)?"""
    if path.name == CHECKPOINTS and path.is_dir() and not path.is_symlink():
        return any(_CHECKPOINT.fullmatch(p.name) for p in path.iterdir())
    return path.name != MARKER and _own(path)


def nothing_written(folder: Path) -> bool:
    """A run folder whose run or sweep stopped before writing anything (its marker, and perhaps files of the
    user's that an earlier --force left): there is nothing of ltcil's to keep or resume."""
    return is_run_folder(folder) and not any(_written(p) for p in _contents(Path(folder)))


def check(run_dir: Path, force: bool) -> bool:
    """Before anything is loaded: may a new run write `run_dir`? True when it holds a run that --force will
    replace (later, by `clear`); raises a clear error otherwise."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise LtcilError(f"output folder {run_dir} is a file, not a folder; choose another --out.")
    check_writable_folder(run_dir)
    if not run_dir.exists() or not _contents(run_dir):
        return False
    if nothing_written(run_dir):  # a run or sweep that stopped before writing anything: nothing to keep
        return True
    if not force:
        if is_sweep_folder(run_dir):
            raise LtcilError(f"output folder {run_dir} already holds an ltcil sweep "
                             f"({'finished' if (run_dir / 'sweep.json').exists() else 'unfinished: a sweep cannot be resumed'}); "
                             "--force replaces it, or choose another --out.")
        raise LtcilError(
            f"output folder {run_dir} already holds a run. Use `ltcil resume {run_dir}` to continue it, "
            "--force to overwrite it, or choose another --out."
            if is_run_folder(run_dir) else
            f"output folder {run_dir} is not empty and holds no ltcil run ({describe(_contents(run_dir))}); "
            "choose another --out.")
    if run_dir.is_symlink():
        raise LtcilError(f"--force will not empty {run_dir}: it is a symbolic link (to {os.readlink(run_dir)}); "
                         "give the folder itself as --out.")
    here, target = Path.cwd().resolve(), run_dir.resolve()
    if target == here or target in here.parents:
        raise LtcilError(f"--force will not empty {run_dir}: it is the current folder or a folder above it.")
    if not is_run_folder(run_dir):
        raise LtcilError(f"--force empties only an ltcil run folder (one holding its {MARKER} marker), and {run_dir} "
                         f"is not one: it holds {describe(_contents(run_dir))}. Nothing was removed. Choose another "
                         "--out, or remove them yourself.")
    return True


def _own(path: Path) -> bool:
    name = path.name[:-4] if path.name.endswith(".tmp") else path.name
    if path.is_symlink():
        return False
    if path.is_dir():
        return name in OWN_FOLDERS or bool(_SWEEP_TASK.fullmatch(name))
    return name in OWN_FILES


def clear(run_dir: Path) -> list[Path]:
    """Remove what ltcil wrote in a run folder that `check` accepted for --force (its lock file stays: this process
    holds it); anything else stays, and is returned (and named in a warning by the caller)."""
    left = []
    for path in _contents(Path(run_dir)):
        if path.name == MARKER:  # stays until the new run marks the folder: a Ctrl-C now leaves a run folder
            continue
        if path.name == CHECKPOINTS and path.is_dir() and not path.is_symlink():
            for item in sorted(path.iterdir()):
                if _CHECKPOINT.fullmatch(item.name) and item.is_file() and not item.is_symlink():
                    item.unlink()
                else:
                    left.append(item)
            if not any(path.iterdir()):
                path.rmdir()
        elif _own(path):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        else:
            left.append(path)
    return left


def left_behind(run_dir: Path, left: list[Path], forced: bool = True) -> str:
    """The warning when `clear` kept files ltcil did not write (--force, or a run folder whose run never wrote)."""
    names = [str(p.relative_to(run_dir)) + ("/" if p.is_dir() and not p.is_symlink() else "") for p in left]
    more = f" and {len(names) - 20} more" if len(names) > 20 else ""
    what = (f"--force replaced the ltcil run in {run_dir} but left" if forced else
            f"the new run in {run_dir} starts beside")
    return (f"{what} what ltcil did not write there: {', '.join(names[:20])}{more}. Remove them yourself if they "
            "are not wanted.")


def mark(run_dir: Path, sweep: bool = False) -> None:
    text = (f"{SWEEP}: an ltcil sweep folder: `ltcil sweep --force` may replace it\n" if sweep
            else "an ltcil run folder: `ltcil run --force` may replace it\n")
    (Path(run_dir) / MARKER).write_text(text)


def unwritable(run_dir: Path, exc: OSError) -> LtcilError:
    """The error for a run folder ltcil cannot write (read-only mount, permissions, full disk), with what to do."""
    if exc.errno == errno.EROFS:
        return LtcilError(f"{run_dir} is on a read-only file system, and ltcil writes its lock, checkpoints and results "
                          "there. Copy the run folder to a writable disk and work on the copy (`cp -r "
                          f"{run_dir} /writable/place/` then `ltcil resume /writable/place/{Path(run_dir).name}`), "
                          "or mount it read-write; `ltcil report` reads a run without writing to it (give --out).")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return LtcilError(f"{run_dir} cannot be written by this user (permission denied on {exc.filename or run_dir}); "
                          "ltcil writes its lock, checkpoints and results there. Copy the run folder somewhere "
                          "writable and work on the copy, or fix its permissions.")
    return LtcilError(f"{run_dir} cannot be written ({(exc.strerror or str(exc)).lower()}: {exc.filename or run_dir}); "
                      "ltcil writes its lock, checkpoints and results there.")


class Lock:
    """An exclusive lock on RUN_DIR/.lock for the life of the process (or until `release`)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.created_folder = not Path(run_dir).exists()
        try:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            self.fh = open(self.path, "a+")
        except OSError as exc:
            raise unwritable(run_dir, exc) from None
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

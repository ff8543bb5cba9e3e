"""Every file the CLI opens or writes goes through here, so an OS or decoding problem becomes one clear error
naming the file (LtcilError), never a traceback, and a failed write leaves the last good file in place."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

from .errors import LtcilError


def _reason(exc: BaseException) -> str:
    if isinstance(exc, IsADirectoryError):
        return "it is a folder, not a file"
    if isinstance(exc, FileNotFoundError):
        return "it does not exist"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, UnicodeDecodeError):
        return f"it is not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return f"{type(exc).__name__}: {exc}"


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n:,} bytes"


def read_text(path, what: str = "file", error: type = LtcilError, max_bytes: int | None = None) -> str:
    """The UTF-8 text of `path`; `what` names it in the error ("config file", "list file"). With `max_bytes`, a
    larger file (or an endless one: a pipe, /dev/zero) is refused after reading at most max_bytes + 1 bytes, before
    anything parses it."""
    try:
        if max_bytes is None:
            return Path(path).read_text(encoding="utf-8")
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
        if len(data) > max_bytes:
            size = os.stat(path).st_size
            raise error(f"{what} {path} is {_size(size) if size > max_bytes else 'endless'}, above the "
                        f"{_size(max_bytes)} a {what} may have (ltcil's own are a few KB); it was not parsed. Is it the "
                        "right file? Long lists of images or classes belong in list files (data.train_list).")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{what} {path} cannot be read: {_reason(exc)}.") from None


def read_bytes(path, what: str = "file") -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise LtcilError(f"{what} {path} cannot be read: {_reason(exc)}.") from None


def read_json(path, what: str = "file"):
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LtcilError(f"{what} {path} is not valid JSON (line {exc.lineno}: {exc.msg}).") from None


def write_failed(path, exc: OSError, kept: str = "", needed: int | None = None) -> LtcilError:
    """The error for a failed write: the file, the reason (read-only, disk full, ...), on a full disk the space
    there and the space the file needs, and what survived."""
    tail = f" {kept}" if kept else ""
    space = ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = shutil.disk_usage(Path(path).parent).free
            space = f" ({Path(path).parent} has {_size(free)} free"
            space += f"; this file needs about {_size(needed)})" if needed else ")"
        except OSError:
            space = f" (this file needs about {_size(needed)})" if needed else ""
    return LtcilError(f"cannot write {path}: {_reason(exc)}{space}.{tail}")


def write_atomic(path, write, kept: str = "", needed: int | None = None) -> Path:
    """`write(tmp_path)` writes the new content to a temporary file beside `path`, which then replaces `path` in
    one rename. A failed write (read-only folder, full disk: an OSError) removes the temporary file, leaves `path`
    as it was and raises a clear error; `kept` says what the user still has, `needed` (bytes) what the file
    needs, named when the disk is full."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise write_failed(path, exc, kept, needed) from None
        raise  # Ctrl-C, or a bug in `write`: the temporary file is gone, the error is not ours to word
    return path


def check_writable_folder(folder, what: str = "output folder") -> None:
    """Fail now, before hours of loading and training, when `folder` cannot hold a run: it is a file, or it (or
    the first existing folder above it) is not writable."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LtcilError(f"{what} {folder} is a file, not a folder; choose another --out.")
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise LtcilError(f"{what} {folder} cannot be written: {probe} is read-only for this user; choose another "
                         "--out.")

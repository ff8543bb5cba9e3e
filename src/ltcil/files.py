"""Every file the CLI opens or writes goes through here, so an OS or decoding problem becomes one clear error
naming the file (LtcilError), never a traceback, and a failed write leaves the last good file in place."""

from __future__ import annotations

import json
import os
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


def read_text(path, what: str = "file", error: type = LtcilError) -> str:
    """The UTF-8 text of `path`; `what` names it in the error ("config file", "list file")."""
    try:
        return Path(path).read_text(encoding="utf-8")
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


def write_failed(path, exc: OSError, kept: str = "") -> LtcilError:
    """The error for a failed write: the file, the reason (read-only, disk full, ...) and what survived."""
    tail = f" {kept}" if kept else ""
    return LtcilError(f"cannot write {path}: {_reason(exc)}.{tail}")


def write_atomic(path, write, kept: str = "") -> Path:
    """`write(tmp_path)` writes the new content to a temporary file beside `path`, which then replaces `path` in
    one rename. A failed write (read-only folder, full disk) removes the temporary file, leaves `path` as it was
    and raises a clear error; `kept` says what the user still has."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise write_failed(path, exc, kept) from None
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

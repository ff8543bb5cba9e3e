"""Decoding images with Pillow: one image to a square uint8 array, a packed-cache entry re-encoded, and a batch
job for a worker process. NumPy and Pillow only: the streamed storage's worker processes import this module
and never torch."""

from __future__ import annotations

import io
import os

import numpy as np

from ..errors import DataError

_SHARDS: dict[str, int] = {}  # open packed-cache shards of this process (path -> file descriptor)


def _open(source):
    """A Pillow image from a path, or from (shard path, offset, length) of a packed cache."""
    from PIL import Image

    if isinstance(source, str):
        return Image.open(source)
    shard, offset, length = source
    fd = _SHARDS.get(shard)
    if fd is None:
        fd = _SHARDS[shard] = os.open(shard, os.O_RDONLY)
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise OSError(f"the cache shard ends {length - len(data)} bytes early (truncated)")
    return Image.open(io.BytesIO(data))


def decode(source, size: int, name: str | None = None) -> np.ndarray:
    """One image as uint8 (size, size, 3): RGB, short side resized to `size` (bilinear), centre crop. `name` is
    the path an error reports (a packed entry's source image)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with _open(source) as img:
            w, h = img.size
            scale = size / min(w, h)
            target = (max(size, round(w * scale)), max(size, round(h * scale)))
            img.draft("RGB", target)  # JPEG: decode at a reduced scale still >= target (several times faster)
            img = img.convert("RGB").resize(target, Image.BILINEAR)
            left, top = (target[0] - size) // 2, (target[1] - size) // 2
            return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image {name or source} does not exist.") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"image {name or source} cannot be read ({type(exc).__name__}: {exc}).") from None


def shrink(path: str, side: int, quality: int) -> bytes:
    """A packed-cache entry: the image with its short side reduced to `side` (never enlarged; aspect kept),
    re-encoded as JPEG."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            w, h = img.size
            scale = min(1.0, side / min(w, h))
            target = (max(1, round(w * scale)), max(1, round(h * scale)))
            img.draft("RGB", target)
            img = img.convert("RGB")
            if img.size != target:
                img = img.resize(target, Image.BILINEAR)
            out = io.BytesIO()
            img.save(out, "JPEG", quality=quality)
            return out.getvalue()
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist.") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"image {path} cannot be read ({type(exc).__name__}: {exc}).") from None


def decode_job(job: tuple) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """A worker's share of a batch: `job` = (size, sources, names). Returns the images (n, size, size, 3) and the
    unreadable ones as (position, message); their slots stay black for the caller to replace."""
    size, sources, names = job
    out = np.zeros((len(sources), size, size, 3), dtype=np.uint8)
    bad = []
    for i, (source, name) in enumerate(zip(sources, names)):
        try:
            out[i] = decode(source, size, name)
        except DataError as exc:
            bad.append((i, str(exc)))
    return out, bad


def shrink_job(job: tuple) -> tuple[str, list[int], list[tuple[int, str]]]:
    """Write a packed-cache shard: `job` = (shard path, side, quality, paths). Returns the shard path, the length
    of each entry (0 for an unreadable image) and the unreadable images as (position, message)."""
    shard, side, quality, paths = job
    lengths, bad = [], []
    with open(shard, "wb") as fh:
        for i, path in enumerate(paths):
            try:
                data = shrink(path, side, quality)
            except DataError as exc:
                bad.append((i, str(exc)))
                data = b""
            fh.write(data)
            lengths.append(len(data))
    return shard, lengths, bad

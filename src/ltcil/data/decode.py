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


def crop_box(w: int, h: int, rng: np.random.Generator, scale: tuple, ratio=(3 / 4, 4 / 3)) -> tuple:
    """A random resized crop's box (left, top, right, bottom) as torchvision draws it (Szegedy et al. 2015): area
    in `scale` of the image, log-uniform aspect in `ratio`, ten tries, else the largest centred crop within
    `ratio`."""
    area = w * h
    log_lo, log_hi = np.log(ratio[0]), np.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = np.exp(rng.uniform(log_lo, log_hi))
        cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return left, top, left + cw, top + ch
    aspect = w / h
    cw, ch = (int(round(h * ratio[1])), h) if aspect > ratio[1] else \
        ((w, int(round(w / ratio[0]))) if aspect < ratio[0] else (w, h))
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


def decode_crop(source, size: int, scale: tuple, seed: tuple, name: str | None = None) -> np.ndarray:
    """One image as a random resized crop (size, size, 3), flipped half the time: box, flip and nothing else
    drawn from NumPy's generator for `seed`, so a batch's crops do not depend on which process decodes them or
    when. JPEGs decode at the reduced DCT scale that still covers the box at `size` (draft mode), and the box is
    resampled once (Pillow's resize with a box)."""
    from PIL import Image, UnidentifiedImageError

    rng = np.random.default_rng(seed)
    try:
        with _open(source) as img:
            w, h = img.size
            left, top, right, bottom = crop_box(w, h, rng, scale)
            flip = rng.random() < 0.5
            need = (-(-w * size // (right - left)), -(-h * size // (bottom - top)))
            img.draft("RGB", need)
            fx, fy = img.size[0] / w, img.size[1] / h
            img = img.convert("RGB").resize((size, size), Image.BILINEAR,
                                             box=(left * fx, top * fy, right * fx, bottom * fy))
            if flip:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            return np.asarray(img, dtype=np.uint8)
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
    """A worker's share of a batch: `job` = (size, sources, names, crop). `crop` None: short side to `size`,
    centre square; else (scale, seed, first position): random resized crops, the image at batch position p drawn
    with seed (*seed, p). Returns the images (n, size, size, 3) and the unreadable ones as (position, message);
    their slots stay black for the caller to replace."""
    size, sources, names, crop = job
    out = np.zeros((len(sources), size, size, 3), dtype=np.uint8)
    bad = []
    for i, (source, name) in enumerate(zip(sources, names)):
        try:
            if crop is None:
                out[i] = decode(source, size, name)
            else:
                scale, seed, first = crop
                out[i] = decode_crop(source, size, scale, (*seed, first + i), name)
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

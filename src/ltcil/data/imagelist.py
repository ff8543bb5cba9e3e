"""ImageNet-style data decoded with Pillow and resized once to data.image_size (short side, then centre crop).

Two layouts under data.root:
- class folders: `train/<class>/*.{jpg,png,...}` and `val/<class>/...` (and `test/<class>/...` if present;
  without it, val is the test split);
- list files (data.train_list / val_list / test_list, paths relative to data.root): one `<relpath> <label>` per
  line, the ImageNet-100/1000 and ImageNet-LT convention. Without test_list, the val list is the test split.

Decoding runs in a thread pool (Pillow releases the GIL) into one preallocated uint8 array per split.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from ..registry import register_dataset
from .base import Dataset, Split

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


def read_list(path: Path) -> tuple[list[str], np.ndarray]:
    if not path.is_file():
        raise DataError(f"list file {path} does not exist (check data.root and the data.*_list keys).")
    paths, labels = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{path}, line {number}: expected '<relative path> <integer label>', got {line!r}.")
        if int(parts[1]) < 0:
            raise DataError(f"{path}, line {number}: label {parts[1]} is negative.")
        paths.append(parts[0])
        labels.append(int(parts[1]))
    if not paths:
        raise DataError(f"list file {path} holds no images.")
    return paths, np.asarray(labels, dtype=np.int64)


def scan_folders(split_dir: Path, classes: Optional[list[str]]) -> tuple[list[str], np.ndarray, list[str]]:
    if not split_dir.is_dir():
        raise DataError(f"{split_dir} does not exist: expected one sub-folder per class.")
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    classes = classes or found
    if not classes:
        raise DataError(f"{split_dir} has no class sub-folders.")
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in found if c not in index]
    if unknown:
        raise DataError(f"{split_dir / unknown[0]}: class folder {unknown[0]!r} does not exist in the train split.")
    paths, labels = [], []
    for c in found:
        for f in sorted((split_dir / c).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(str(f))
                labels.append(index[c])
    if not paths:
        raise DataError(f"{split_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    return paths, np.asarray(labels, dtype=np.int64), classes


def decode(path: str, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            scale = size / min(w, h)
            img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
            w, h = img.size
            left, top = (w - size) // 2, (h - size) // 2
            return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"image {path} cannot be read ({type(exc).__name__}: {exc}).") from None


def decode_all(paths: list[str], size: int, threads: int = 0) -> np.ndarray:
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = decode(paths[i], size)

    workers = threads or min(32, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(work, range(len(paths))):
            pass
    return out


@register_dataset("imagelist")
def load(cfg: DataConfig) -> Dataset:
    root = Path(cfg.root).expanduser()
    if cfg.image_size <= 0:
        raise DataError("data.image_size must be set (> 0) for imagelist data: images are resized once to it.")
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder.")
    splits: dict[str, tuple[list[str], np.ndarray]] = {}
    if cfg.train_list:
        for key in ("train", "val", "test"):
            rel = getattr(cfg, f"{key}_list")
            if rel:
                paths, labels = read_list(root / rel)
                splits[key] = ([str(root / p) for p in paths], labels)
        if "test" not in splits:
            if "val" not in splits:
                raise DataError("data.test_list (or data.val_list) must be set beside data.train_list.")
            splits["test"] = splits.pop("val")
        top = max(int(lab.max()) for _, lab in splits.values())
        class_names = [str(c) for c in range(top + 1)]
    else:
        tr_paths, tr_labels, class_names = scan_folders(root / "train", None)
        splits["train"] = (tr_paths, tr_labels)
        if (root / "test").is_dir():
            splits["test"] = scan_folders(root / "test", class_names)[:2]
            if (root / "val").is_dir():
                splits["val"] = scan_folders(root / "val", class_names)[:2]
        else:
            splits["test"] = scan_folders(root / "val", class_names)[:2]
    decoded = {k: Split(decode_all(p, cfg.image_size), lab) for k, (p, lab) in splits.items()}
    return Dataset("imagelist", decoded["train"], decoded["test"], class_names, val=decoded.get("val"),
                   meta={"root": str(root)}).validate(str(root))

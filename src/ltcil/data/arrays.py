"""Custom arrays: one .npz with `{train,val,test}_{images,labels}` (the MedMNIST layout), so users bring their
own data in one step. Images uint8 (N, H, W) or (N, H, W, C); labels (N,) or (N, 1); `val_*` and a
`class_names` array are optional. Also the reader behind the MedMNIST source."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from ..registry import register_dataset
from .base import Dataset, Split, as_nhwc


def _split(npz, prefix: str, path: Path, required: bool) -> Optional[Split]:
    ikey, lkey = f"{prefix}_images", f"{prefix}_labels"
    if ikey not in npz.files or lkey not in npz.files:
        if not required:
            return None
        missing = ikey if ikey not in npz.files else lkey
        raise DataError(f"{path}: key {missing!r} is missing (keys found: {', '.join(sorted(npz.files))}).")
    images = npz[ikey]
    labels = npz[lkey]
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(
            f"{path}: {ikey!r} must be uint8 of shape (N, H, W) or (N, H, W, C), got {images.dtype} {images.shape}."
        )
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{path}: {lkey!r} must have shape (N,) or (N, 1), got {labels.shape}.")
    if len(labels) != len(images):
        raise DataError(f"{path}: {ikey!r} has {len(images)} images but {lkey!r} has {len(labels)} labels.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {lkey!r} must hold integers, got {labels.dtype}.")
    return Split(as_nhwc(images), labels.astype(np.int64))


def read_npz(path: Path, name: str, class_names: Optional[list] = None) -> Dataset:
    """Read and validate an npz in the MedMNIST layout; every error names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; data.root must point to the .npz file (or its folder).")
    try:
        with np.load(path, allow_pickle=False) as npz:
            train = _split(npz, "train", path, True)
            test = _split(npz, "test", path, True)
            val = _split(npz, "val", path, False)
            if class_names is None and "class_names" in npz.files:
                class_names = [str(n) for n in npz["class_names"].tolist()]
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise DataError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc}); replace the file.") from None
    if class_names is None:
        top = max(int(s.labels.max()) for s in (train, test, val) if s is not None and len(s))
        class_names = [str(c) for c in range(top + 1)]
    return Dataset(name, train, test, class_names, val=val, meta={"path": str(path)}).validate(str(path))


@register_dataset("npz")
def load(cfg: DataConfig) -> Dataset:
    return read_npz(Path(cfg.root).expanduser(), "npz")

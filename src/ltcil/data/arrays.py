"""Custom arrays: one .npz with `{train,val,test}_{images,labels}` (the MedMNIST layout), so users bring their
own data in one step. Images uint8 (N, H, W) or (N, H, W, C); labels (N,) or (N, 1); `val_*` and a
`class_names` array are optional. Also the reader behind the MedMNIST source."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from ..registry import register_dataset
from .base import Dataset, Split, as_nhwc

_READ_ERRORS = (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError)


def _array(npz, key: str, path: Path) -> np.ndarray:
    """Read one array; a damaged member or a pickled object array fails naming the key."""
    try:
        return npz[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc):  # object arrays are never unpickled: that could run code
            raise DataError(f"{path}: key {key!r} holds Python objects; save it as a plain numeric or string "
                            "array (e.g. np.array(names, dtype=str)).") from None
        raise DataError(f"{path}: key {key!r} is corrupt or truncated ({exc}); replace the file.") from None
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: key {key!r} is corrupt or truncated ({type(exc).__name__}: {exc}); "
                        "replace the file.") from None


def _split(npz, prefix: str, path: Path, required: bool) -> Split | None:
    ikey, lkey = f"{prefix}_images", f"{prefix}_labels"
    if ikey not in npz.files or lkey not in npz.files:
        if not required:
            return None
        missing = ikey if ikey not in npz.files else lkey
        raise DataError(f"{path}: key {missing!r} is missing (keys found: {', '.join(sorted(npz.files))}).")
    images = _array(npz, ikey, path)
    labels = _array(npz, lkey, path)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(
            f"{path}: {ikey!r} must be uint8 of shape (N, H, W) or (N, H, W, C), got {images.dtype} {images.shape}."
        )
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]  # MedMNIST stores (N, 1)
    if labels.ndim != 1:
        raise DataError(f"{path}: {lkey!r} must have shape (N,) or (N, 1), got {labels.shape}.")
    if len(labels) != len(images):
        raise DataError(f"{path}: {ikey!r} has {len(images)} images but {lkey!r} has {len(labels)} labels.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {lkey!r} must hold integers, got {labels.dtype}.")
    return Split(as_nhwc(images), labels.astype(np.int64))


def _class_names(npz, path: Path) -> list[str] | None:
    if "class_names" not in npz.files:
        return None
    names = _array(npz, "class_names", path)
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise DataError(f"{path}: 'class_names' must be a 1-D array of strings, got {names.dtype} {names.shape}.")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]


def read_npz(path: Path, name: str, class_names: list[str] | None = None) -> Dataset:
    """Read and validate an npz in the MedMNIST layout; every error names the file and the key.

    `class_names` (e.g. MedMNIST's table) wins over a `class_names` array; without either, the classes are
    "0".."K-1" with K = largest label + 1.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; data.root must point to the .npz file (or its folder).")
    try:
        with np.load(path, allow_pickle=False) as npz:
            train = _split(npz, "train", path, True)
            test = _split(npz, "test", path, True)
            val = _split(npz, "val", path, False)
            if class_names is None:
                class_names = _class_names(npz, path)
    except DataError:
        raise
    except _READ_ERRORS as exc:  # not a zip at all, or a damaged directory
        raise DataError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc}); replace the file.") from None
    if class_names is None:
        top = max((int(s.labels.max()) for s in (train, test, val) if s is not None and len(s)), default=-1)
        class_names = [str(c) for c in range(top + 1)]
    for prefix, split in (("train", train), ("val", val), ("test", test)):
        bad = split.labels[(split.labels < 0) | (split.labels >= len(class_names))] if split else []
        if len(bad):
            raise DataError(f"{path}: '{prefix}_labels' holds label {int(bad[0])}, outside 0..{len(class_names) - 1} "
                            f"({len(class_names)} classes).")
    return Dataset(name, train, test, class_names, val=val, meta={"path": str(path)}).validate(str(path))


@register_dataset("npz")
def load(cfg: DataConfig) -> Dataset:
    return read_npz(Path(cfg.root).expanduser(), "npz")

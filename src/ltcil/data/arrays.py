"""Custom arrays: one .npz with `{train,val,test}_{images,labels}` (the MedMNIST layout) or Keras-style
`x_{train,val,test}` / `y_{train,val,test}`, so users bring their own data in one step. Images uint8 (N, H, W),
(N, H, W, C) or channels-first (N, C, H, W) with C = 1 or 3; labels (N,) or (N, 1); the validation split and a
`class_names` array are optional. Labels that are not 0..K-1 (e.g. 3, 7, 42) are renumbered in increasing order
and the original ids become the class names. Also the reader behind the MedMNIST source."""

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


def _keys(npz, prefix: str) -> tuple[str, str] | None:
    """The (images, labels) keys of a split in either naming, or None when the file has neither."""
    for ikey, lkey in ((f"{prefix}_images", f"{prefix}_labels"), (f"x_{prefix}", f"y_{prefix}")):
        if ikey in npz.files and lkey in npz.files:
            return ikey, lkey
    return None


def _split(npz, prefix: str, path: Path, required: bool) -> Split | None:
    keys = _keys(npz, prefix)
    if keys is None:
        if not required:
            return None
        raise DataError(f"{path}: no {prefix} split: expected the keys '{prefix}_images' and '{prefix}_labels' "
                        f"(or Keras-style 'x_{prefix}' and 'y_{prefix}'); keys found: {', '.join(sorted(npz.files))}.")
    ikey, lkey = keys
    images = _array(npz, ikey, path)
    labels = _array(npz, lkey, path)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(
            f"{path}: {ikey!r} must be uint8 of shape (N, H, W), (N, H, W, C) or (N, C, H, W), got {images.dtype} "
            f"{images.shape}."
        )
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[3] not in (1, 3):
        images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))  # channels-first (PyTorch's layout)
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
        ids = np.unique(np.concatenate([s.labels for s in (train, test, val) if s is not None]))
        for prefix, split in (("train", train), ("val", val), ("test", test)):
            negative = split.labels[split.labels < 0] if split is not None else []
            if len(negative):  # -1 is often "unlabelled": not a class, and not counted as one
                valid = ids[ids >= 0]
                span = f"; the others run {int(valid[0])}..{int(valid[-1])} ({len(valid)} classes)" if len(valid) else ""
                raise DataError(f"{path}: '{prefix}_labels' holds label {int(negative[0])}, a negative one "
                                f"({len(negative):,} images){span}. Labels must be class ids >= 0; drop unlabelled "
                                "images (often marked -1) before saving the file.")
        class_names = [str(c) for c in ids.tolist()]
        if len(ids) and ids[0] >= 0 and ids[-1] != len(ids) - 1:  # e.g. {3, 7, 42}: renumber 0..K-1
            for split in (train, test, val):
                if split is not None:
                    split.labels = np.searchsorted(ids, split.labels).astype(np.int64)
    for prefix, split in (("train", train), ("val", val), ("test", test)):
        bad = split.labels[(split.labels < 0) | (split.labels >= len(class_names))] if split else []
        if len(bad):
            raise DataError(f"{path}: '{prefix}_labels' holds label {int(bad[0])}, outside 0..{len(class_names) - 1} "
                            f"({len(class_names)} classes).")
    return Dataset(name, train, test, class_names, val=val, meta={"path": str(path)}).validate(str(path))


def npz_path(root: Path) -> Path:
    """data.root is the .npz file, or a folder holding exactly one."""
    if root.is_dir():
        found = sorted(root.glob("*.npz"))
        if len(found) == 1:
            return found[0]
        raise DataError(f"data.root {root} is a folder holding {len(found)} .npz files"
                        + (f" ({', '.join(p.name for p in found[:5])})" if found else "")
                        + "; set data.root to the .npz file itself.")
    return root


@register_dataset("npz")
def load(cfg: DataConfig) -> Dataset:
    return read_npz(npz_path(Path(cfg.root).expanduser()), "npz")

"""The contract every data source fulfils: uint8 images, int64 labels, class names; nothing about tasks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import DataError
from .stream import StreamedImages


@dataclass
class Split:
    """One split of a dataset. images: uint8 (N, H, W, C), or a StreamedImages (decoded as batches need them);
    labels: int64 (N,), original class ids."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    class_names: list[str]
    val: Optional[Split] = None  # only where the format ships one (MedMNIST, ImageNet-LT lists)
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def splits(self):
        yield "train", self.train
        yield "test", self.test
        if self.val is not None:
            yield "val", self.val

    def validate(self, source: str) -> "Dataset":
        """Check shapes, dtypes and label ranges; `source` (a path) is named in every error."""
        shape = None
        for split_name, split in self.splits():
            images, labels = split.images, split.labels
            if not isinstance(images, (np.ndarray, StreamedImages)) or images.dtype != np.uint8 or images.ndim != 4:
                raise DataError(
                    f"{source}: {split_name} images must be a uint8 array of shape (N, H, W, C); got "
                    f"{getattr(images, 'dtype', type(images))} with shape {getattr(images, 'shape', '?')}."
                )
            if images.shape[3] not in (1, 3):
                raise DataError(f"{source}: {split_name} images have {images.shape[3]} channels; expected 1 or 3.")
            if shape is None:
                shape = images.shape[1:]
            elif images.shape[1:] != shape:
                raise DataError(
                    f"{source}: {split_name} images have shape {images.shape[1:]} but train images have {shape}."
                )
            if labels.ndim != 1 or len(labels) != len(images):
                raise DataError(
                    f"{source}: {split_name} has {len(images)} images but labels of shape {labels.shape}; "
                    "expected one integer label per image."
                )
            if not np.issubdtype(labels.dtype, np.integer):
                raise DataError(f"{source}: {split_name} labels must be integers, got {labels.dtype}.")
            if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
                bad = labels[(labels < 0) | (labels >= self.num_classes)][0]
                raise DataError(
                    f"{source}: {split_name} label {int(bad)} is out of range; the dataset has "
                    f"{self.num_classes} classes (valid ids 0..{self.num_classes - 1})."
                )
            split.labels = labels.astype(np.int64, copy=False)
        if len(self.train) == 0:
            raise DataError(f"{source}: the training split is empty.")
        return self


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux: MemAvailable), None when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(nbytes: int, what: str) -> None:
    """Refuse before allocating when `what` (nbytes) cannot fit in the memory available (numpy would ask the
    system for it and die, or swap for hours)."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise DataError(f"{what} need {nbytes / 2**30:,.1f} GiB in memory, but {free / 2**30:,.1f} GiB are available; "
                        "use a smaller data.image_size or fewer images.")


def as_nhwc(images: np.ndarray) -> np.ndarray:
    """(N, H, W) grayscale -> (N, H, W, 1); (N, H, W, C) unchanged."""
    if images.ndim == 3:
        return images[..., None]
    return images

"""Device-resident data: every split lives once on the training device as uint8 NCHW; batches are index
lookups into it, augmented in batch there. Nothing is copied per epoch and no worker processes run beside
the training threads (on a 2-core CPU a busy worker process cut training throughput by ~7x)."""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch

from .augment import AugmentSpec, augment_float, augment_uint8
from .base import Dataset


def channel_stats(chunks, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (pixel scale [0, 1]) of uint8 NCHW images; `chunks()` yields them in chunks and
    is called twice (mean, then squared deviations)."""
    stats, sizes, n, hw = [], [], 0, 1
    for chunk in chunks():
        stats.append(chunk.float().div_(255).mean(dim=(0, 2, 3)))
        sizes.append(len(chunk))
        n, hw = n + len(chunk), chunk.shape[2] * chunk.shape[3]
    sizes = torch.tensor(sizes, device=device)
    mean = (torch.stack(stats) * sizes[:, None]).sum(0) / sizes.sum()
    sq = sum(((chunk.float().div_(255) - mean[None, :, None, None]) ** 2).sum(dim=(0, 2, 3)) for chunk in chunks())
    std = torch.sqrt(sq / (n * hw)).clamp_min(1e-3)
    return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)


class BatchSource:
    """What the engine reads batches through: labels per split on the device, `batch()` (normalised, optionally
    augmented), `index_batches()`, and `pixels()` (raw uint8). DeviceData holds the images on the device;
    StreamData (stream_loader.py) decodes them as they are needed. A method never knows which it reads."""

    device: torch.device
    channels_last: bool
    labels: dict
    mean: torch.Tensor
    std: torch.Tensor

    def pixels(self, split: str, idx: torch.Tensor, size: Optional[int] = None) -> torch.Tensor:
        """uint8 NCHW images of `split` at `idx`, on the device (`size`: the square size to decode at)."""
        raise NotImplementedError

    def train_size(self, augment: Optional[AugmentSpec]) -> Optional[int]:
        """The size training images are read at before `augment` (None: the stored size)."""
        return None

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise by these per-channel statistics ((1, C, 1, 1), pixel scale [0, 1]) instead: zeros and ones
        feed the pixels as they are (data.normalize: false)."""
        self.mean, self.std = mean.to(self.device).view(1, -1, 1, 1), std.to(self.device).view(1, -1, 1, 1)

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = x_uint8.float().div_(255)
        return self.finish(x)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] (NCHW) -> the normalised input of the network (memory layout included)."""
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def batch(
        self,
        split: str,
        idx: torch.Tensor,
        augment: Optional[AugmentSpec] = None,
        gen: Optional[torch.Generator] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float images and arrival-order labels for the given indices (optionally augmented)."""
        idx = idx.to(self.device)
        y = self.labels[split].index_select(0, idx)
        if augment is None:
            return self.normalize(self.pixels(split, idx)), y
        x = self.pixels(split, idx, self.train_size(augment))
        x = augment_uint8(x, augment, gen).float().div_(255)
        x = augment_float(x, augment, gen, size=self.image_size)
        return self.finish(x), y

    def index_batches(
        self, indices, batch_size: int, gen: Optional[torch.Generator] = None, shuffle: bool = True,
        training: Optional[bool] = None, split: Optional[str] = None, augment: Optional[AugmentSpec] = None,
        views: int = 1,
    ) -> Iterator[torch.Tensor]:
        """Batches of indices (shuffled with `gen` when `shuffle`). When training (default: when shuffling) a
        trailing batch of one is dropped: BatchNorm cannot train on it. `split`, `augment` and `views` announce
        what `batch()` will be asked for (streamed data decodes the next batches ahead; its resized crops draw
        from `gen`)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if shuffle:
            idx = idx[torch.randperm(len(idx), generator=gen)]
        training = shuffle if training is None else training
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            if training and len(chunk) < 2:
                break
            yield chunk

    def close(self) -> None:
        """Release what the source holds beside the device (worker processes)."""


class DeviceData(BatchSource):
    def __init__(self, dataset: Dataset, label_maps: dict, device: torch.device, channels_last: bool = False):
        self.device = device
        self.channels_last = channels_last
        self.images: dict[str, torch.Tensor] = {}
        self.labels: dict[str, torch.Tensor] = {}
        for name, split in dataset.splits():
            self.images[name] = torch.from_numpy(np.ascontiguousarray(split.images)).permute(0, 3, 1, 2).to(device)
            self.labels[name] = torch.from_numpy(label_maps[name]).to(device)
        # Normalisation statistics from the training split (per channel), computed once on the device.
        train = self.images["train"]
        self.mean, self.std = channel_stats(lambda: (train[i : i + 4096] for i in range(0, len(train), 4096)),
                                            device)

    @property
    def in_channels(self) -> int:
        return self.images["train"].shape[1]

    @property
    def image_size(self) -> int:
        return self.images["train"].shape[2]

    def pixels(self, split: str, idx: torch.Tensor, size: Optional[int] = None) -> torch.Tensor:
        return self.images[split].index_select(0, idx.to(self.device))


class FeatureData:
    """Cached features standing in for images, with DeviceData's batch interface: a stage on a frozen backbone
    (cRT, LWS, a linear probe) then runs through the engine's loop without a backbone pass per epoch."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.device = features.device
        self.features = {"train": features}
        self.labels = {"train": labels}

    index_batches = BatchSource.index_batches

    def batch(self, split: str, idx: torch.Tensor, augment=None, gen=None) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.to(self.device)
        return self.features[split].index_select(0, idx), self.labels[split].index_select(0, idx)

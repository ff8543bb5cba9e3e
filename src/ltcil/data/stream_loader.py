"""Streamed data: the images stay on disk (or in a packed cache) and worker processes decode each batch, a few
batches ahead of the training loop; everything after decoding (crop, flip, colour, normalisation) runs batched
on the device exactly as for device-resident data, with the same generator draws.

Workers do what must happen per image, where it is cheapest: decode (Pillow's JPEG draft mode picks a reduced DCT
scale) and resize once. Evaluation, and training with padded crops, decode the short side to data.image_size and
cut the centre square, so evaluation batches equal the in-memory path's and a padded-crop streamed run is the
in-memory run, bit for bit (tests/test_streaming.py). Training with a random resized crop (ImageNet) cuts the crop
from the whole decoded image in the worker, as torchvision draws it, flipped half the time, resampled once to
the image size; the box and flip come from NumPy generators seeded with (one draw per epoch from the training
generator, batch, view, position), so they do not depend on the workers or on how far ahead they run, and resume
gives them again. Colour jitter, grayscale and normalisation stay batched on the device.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .augment import AugmentSpec, augment_float
from .autoaugment import auto_augment
from .base import Dataset
from .loader import BatchSource, channel_stats
from .stream import DecodePool, StreamedImages

STATS_IMAGES = 8192  # normalisation statistics from all training images up to this many, else an even sample
PREFETCH = 2  # batches decoded ahead of the one being trained on


class StreamData(BatchSource):
    def __init__(self, dataset: Dataset, label_maps: dict, device: torch.device, channels_last: bool = False,
                 workers: int = -1, max_bad_images: int = 0):
        self.device = device
        self.channels_last = channels_last
        self.sources: dict[str, StreamedImages] = {}
        self.labels: dict[str, torch.Tensor] = {}
        for name, split in dataset.splits():
            if not isinstance(split.images, StreamedImages):
                raise DataError(f"{dataset.name}: the {name} split is not streamed; mixed storage is not supported.")
            self.sources[name] = split.images
            self.labels[name] = torch.from_numpy(label_maps[name]).to(device)
        self.pool = DecodePool(workers)
        self.max_bad_images = max_bad_images
        self.bad: dict[str, str] = {}  # source path -> why it could not be read (replaced in its batch)
        self.bad_log: Optional[Path] = None  # where the runner wants the list of unreadable images
        self._ahead: deque = deque()  # (split, size, indices, futures) decoded ahead, in the order of batch() calls
        self._last: Optional[tuple] = None  # the last batch handed out (a second view of it decodes nothing)
        self._crop_last: Optional[tuple] = None  # (split, indices, view) of the last resized-crop batch
        n, size = len(self.sources["train"]), self.image_size
        if n <= STATS_IMAGES:
            # the in-memory path's computation (two passes, chunks of 4096: equal statistics, so equal batches)
            # while a chunk stays small; larger images in chunks of 128
            chunk = 4096 if size <= 128 else 128
            self.mean, self.std = channel_stats(
                lambda: (self._decode("train", torch.arange(i, min(i + chunk, n)), size) for i in range(0, n, chunk)),
                device)
        else:  # an even sample, one pass: float64 sums of chunks of 128 images
            sample = torch.as_tensor(np.linspace(0, n - 1, STATS_IMAGES).round().astype(np.int64))
            total = torch.zeros(2, 3, dtype=torch.float64, device=device)
            for i in range(0, len(sample), 128):
                x = torch.cat(self._gather_tensors("train", sample[i : i + 128], size)).float().div_(255)
                total += torch.stack([x.sum(dim=(0, 1, 2)), (x * x).sum(dim=(0, 1, 2))]).double()
            count = len(sample) * size * size
            mean = total[0] / count
            std = (total[1] / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-3)
            self.mean, self.std = mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)
        self.set_stats(self.mean, self.std)

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().set_stats(mean, std)
        self._scale = (1 / (255 * self.std)).flatten()  # per channel, for NHWC memory (_normalized)
        self._shift = (-self.mean / self.std).flatten()

    @property
    def in_channels(self) -> int:
        return 3

    @property
    def image_size(self) -> int:
        return self.sources["train"].size

    def batch(self, split: str, idx: torch.Tensor, augment: Optional[AugmentSpec] = None,
              gen: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        if augment is None or not augment.resized_crop:
            return super().batch(split, idx, augment, gen)
        if augment.resized_crop_padding:
            raise ConfigError("train.resized_crop_padding: streamed images are cropped while they are decoded, "
                              "without padding; set it to 0, or load the images in memory (data.storage=memory).")
        # the random resized crop and its flip were done per image by the workers; the rest batched here
        idx = idx.cpu()
        same = self._crop_last is not None and self._crop_last[0] == split and torch.equal(self._crop_last[1], idx)
        view = self._crop_last[2] + 1 if same else 0  # a second call for the same batch: its next view
        self._crop_last = (split, idx, view)
        futures = self._take_ahead((split, "crop", view), idx)
        if futures is None:  # not announced: crops drawn now from the caller's generator
            seed = (int(torch.randint(2**62, (1,), generator=gen, device=gen.device)) if gen is not None else 0, view)
            futures = self.pool.decode(self.sources[split], idx.numpy(), self.image_size, (augment.crop_scale, seed))
        y = self.labels[split].index_select(0, idx.to(self.device))
        parts = self._gather(split, idx, self.image_size, futures)
        rest = dataclasses.replace(augment, resized_crop=False, crop_padding=0, flip=False)
        if (rest.color_jitter in (0, 0.0) and not rest.hue and not rest.grayscale and rest.autoaugment == "none"
                and not rest.cutout):  # nothing left but normalising
            return self._normalized(parts), y
        images = np.concatenate(parts) if len(parts) > 1 else parts[0]
        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2)
        if rest.autoaugment != "none":
            x = auto_augment(x.contiguous(), gen, rest.autoaugment)
        return self.finish(augment_float(x.float().div_(255), rest, gen)), y

    def index_batches(self, indices, batch_size, gen=None, shuffle=True, training=None, split=None, augment=None,
                      views: int = 1):
        chunks = list(super().index_batches(indices, batch_size, gen if shuffle else None, shuffle, training))
        if split is None:  # nothing announced: batch() decodes on demand
            yield from chunks
            return
        crop = augment is not None and augment.resized_crop
        if crop:  # one draw per epoch from the caller's generator; each image's crop from (it, batch, view, position)
            epoch = int(torch.randint(2**62, (1,), generator=gen, device=gen.device)) if gen is not None else 0
        jobs = [(k, v) for k in range(len(chunks)) for v in range(views if crop else 1)]
        self._ahead.clear()
        self._crop_last = None  # a new epoch's first batch is view 0 even if it repeats the last one's images

        def submit(j: int) -> None:
            k, v = jobs[j]
            source, idx = self.sources[split], chunks[k].numpy()
            if crop:
                futures = self.pool.decode(source, idx, self.image_size, (augment.crop_scale, (epoch, k, v)))
                self._ahead.append(((split, "crop", v), chunks[k], futures))
            else:
                self._ahead.append(((split, self.image_size), chunks[k], self.pool.decode(source, idx,
                                                                                          self.image_size)))

        per_chunk = views if crop else 1
        try:
            for j in range(min(PREFETCH * per_chunk, len(jobs))):
                submit(j)
            for k, chunk in enumerate(chunks):
                for j in range((k + PREFETCH) * per_chunk, min((k + PREFETCH + 1) * per_chunk, len(jobs))):
                    submit(j)
                yield chunk
        finally:
            for *_, futures in self._ahead:
                for f in futures:
                    f.cancel()
            self._ahead.clear()

    def _take_ahead(self, key: tuple, idx: torch.Tensor):
        """The futures of the batch announced as (key, idx), dropping the announced batches before it (skipped by
        the caller: torchrun's trailing batch); None, and the queue left as it is, for a batch never announced."""
        match = next((k for k, (a_key, a_idx, _) in enumerate(self._ahead)
                      if a_key == key and torch.equal(a_idx, idx)), None)
        futures = None
        if match is not None:
            for _ in range(match + 1):
                futures = self._ahead.popleft()[2]
        return futures

    def pixels(self, split: str, idx: torch.Tensor, size: Optional[int] = None) -> torch.Tensor:
        size = size or self.image_size
        idx = idx.cpu()
        last = self._last
        if last is not None and last[:2] == (split, size) and torch.equal(last[2], idx):
            return last[3]
        x = self._decode(split, idx, size, self._take_ahead((split, size), idx))
        self._last = (split, size, idx, x)
        return x

    def _decode(self, split: str, idx: torch.Tensor, size: int, futures=None) -> torch.Tensor:
        """uint8 NCHW (NHWC in memory) on the device."""
        parts = self._gather(split, idx, size, futures)
        images = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2)

    def _gather(self, split: str, idx: torch.Tensor, size: int, futures=None) -> list[np.ndarray]:
        """The workers' uint8 NHWC parts of a batch, unreadable images replaced."""
        if futures is None:
            futures = self.pool.decode(self.sources[split], idx.numpy(), size)
        try:
            results = [f.result() for f in futures]
        except BrokenProcessPool:
            raise DataError(f"a decoding worker process died (out of memory? killed?) while reading the {split} "
                            f"split; fewer data.workers or a smaller data.image_size need less memory.") from None
        bad, start = [], 0
        for part_images, part_bad in results:
            bad.extend((start + i, message) for i, message in part_bad)
            start += len(part_images)
        parts = [r[0] for r in results]
        if bad:
            parts = [np.concatenate(parts)]
            self._replace_bad(split, idx, parts[0], bad)
        return parts

    def _gather_tensors(self, split: str, idx: torch.Tensor, size: int) -> list[torch.Tensor]:
        """uint8 NHWC parts on the device."""
        return [torch.from_numpy(p).to(self.device) for p in self._gather(split, idx, size)]

    def _normalized(self, parts: list[np.ndarray]) -> torch.Tensor:
        """The network's input from uint8 NHWC parts in one pass each over contiguous memory (x * a + b with
        a = 1 / (255 std), b = -mean / std): on a CPU three times faster than converting the NCHW view."""
        n, h, w, c = sum(len(p) for p in parts), *parts[0].shape[1:]
        out = torch.empty((n, h, w, c), device=self.device)
        start = 0
        for part in parts:
            out[start : start + len(part)].copy_(torch.from_numpy(part).to(self.device))
            start += len(part)
        out.mul_(self._scale).add_(self._shift)
        x = out.permute(0, 3, 1, 2)  # NCHW with channels_last strides
        return x if self.channels_last else x.contiguous()

    def _replace_bad(self, split: str, idx: torch.Tensor, images: np.ndarray, bad: list) -> None:
        """An unreadable image is replaced by a readable one of its batch (same class first) and listed; past
        data.max_bad_images distinct images the run stops, naming the image."""
        source = self.sources[split]
        for position, message in bad:
            path = source.path(int(idx[position]))
            if path not in self.bad:
                self.bad[path] = message
                if len(self.bad) > self.max_bad_images:
                    raise DataError(f"{message} {len(self.bad)} unreadable image(s) so far, more than "
                                    f"data.max_bad_images={self.max_bad_images} allows (raise it to skip them).")
                self._log_bad(path, message)
        broken = {p for p, _ in bad}
        good = [i for i in range(len(idx)) if i not in broken]
        if not good:
            raise DataError(f"every image of a batch of {split} is unreadable, e.g. {bad[0][1]}")
        labels = self.labels[split].cpu()[idx]
        for position, _ in bad:
            same = [i for i in good if labels[i] == labels[position]]
            images[position] = images[(same or good)[0]]

    def _log_bad(self, path: str, message: str) -> None:
        if self.bad_log is not None and self.bad_log.parent.is_dir():  # before the run folder: the runner lists it
            with open(self.bad_log, "a", encoding="utf-8") as fh:
                fh.write(f"{path}\t{message}\n")

    def close(self) -> None:
        self._ahead.clear()
        self._last = None
        self.pool.close()

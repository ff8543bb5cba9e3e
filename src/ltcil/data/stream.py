"""Streamed storage for image datasets too large to hold decoded: where each image is, and the worker processes
that decode batches of them.

A split of a streamed dataset holds a StreamedImages in place of its uint8 array. It keeps flat arrays only (no
Python object per image, so a million images cost tens of megabytes): the root-relative paths as one byte
blob with offsets, and, when read from a packed cache (packed.py), the shard, byte offset and length of every
entry. Decoding runs in a pool of worker processes (forkserver: they start from a clean interpreter, never
from the training process's threads, and import NumPy and Pillow only).
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Optional

import numpy as np

from .decode import decode_job
from .worker_guard import die_with_parent


class StreamedImages:
    """The images of one split, decoded on demand to (size, size, 3) uint8. Quacks like the split's array where
    the data contract looks (shape, dtype, ndim, len)."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, root: str, paths: list[str], size: int):
        self.root = root.rstrip("/") or "/"
        self.size = size
        prefix = self.root + "/"
        encoded = [(p[len(prefix):] if p.startswith(prefix) else p).encode() for p in paths]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.packed: Optional[dict] = None  # {"shards": [paths], "shard": int32, "offset": int64, "length": int64}
        self.side = 0  # short side of the packed entries (0: the source files)

    @property
    def shape(self) -> tuple:
        return (len(self), self.size, self.size, 3)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def path(self, i: int) -> str:
        rel = self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes().decode()
        return rel if rel.startswith("/") else f"{self.root}/{rel}"

    def select(self, keep: np.ndarray) -> "StreamedImages":
        """The images where the boolean mask `keep` is true (a run that decodes some classes only)."""
        kept = np.flatnonzero(keep)
        out = StreamedImages(self.root, [self.path(int(i)) for i in kept], self.size)
        if self.packed is not None:
            out.use_packed(self.packed["shards"], self.packed["shard"][kept], self.packed["offset"][kept],
                           self.packed["length"][kept], self.side)
        return out

    def use_packed(self, shards: list[str], shard: np.ndarray, offset: np.ndarray, length: np.ndarray,
                   side: int) -> None:
        self.packed = {"shards": list(shards), "shard": shard.astype(np.int32), "offset": offset.astype(np.int64),
                       "length": length.astype(np.int64)}
        self.side = side

    def sources(self, indices: np.ndarray) -> tuple[list, list[str]]:
        """What a worker opens for each index (a path, or a packed entry), and the source path an error names."""
        names = [self.path(int(i)) for i in indices]
        if self.packed is None:
            return names, names
        p = self.packed
        return [(p["shards"][p["shard"][i]], int(p["offset"][i]), int(p["length"][i])) for i in indices], names


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class DecodePool:
    """`workers` processes decoding batches (0: decode in the calling process, in order)."""

    def __init__(self, workers: int):
        self.workers = default_workers() if workers < 0 else workers
        self._pool: Optional[ProcessPoolExecutor] = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing

            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["ltcil.data.forkserver_preload", "ltcil.data.decode"])
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=die_with_parent)
        return self._pool

    def submit(self, fn, jobs: list) -> list[Future]:
        """One future per job; without workers the jobs run now."""
        if self.workers == 0:
            futures = []
            for job in jobs:
                f: Future = Future()
                f.set_result(fn(job))
                futures.append(f)
            return futures
        pool = self._executor()
        return [pool.submit(fn, job) for job in jobs]

    def decode(self, images: StreamedImages, indices: np.ndarray, size: int, crop: Optional[tuple] = None
               ) -> list[Future]:
        """Futures of (uint8 images, unreadable) for `indices`, split over the workers. `crop`: (scale, seed) for
        random resized crops (decode.decode_job), else short side and centre square."""
        parts = np.array_split(np.asarray(indices), max(1, min(self.workers, len(indices))))
        jobs, first = [], 0
        for part in parts:
            sources, names = images.sources(part)
            jobs.append((size, sources, names, None if crop is None else (*crop, first)))
            first += len(part)
        return self.submit(decode_job, jobs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

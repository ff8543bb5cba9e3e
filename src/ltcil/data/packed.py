"""The packed cache: a one-time conversion of an image folder or list-file dataset into a few large shard files
of re-encoded JPEGs (short side data.cache_side), so a streamed epoch reads a few big files instead of opening
every image, and decodes small JPEGs (FFCV's and WebDataset's idea, as plain files + NumPy offsets).

Layout of a cache folder: `<split>_<k>.bin` shards (entries back to back), `index.npz` (per split: shard
number, byte offset and length of every image) and `manifest.json`, written last, holding the source root, the
number of images and a checksum of every source image's path, size and modification time per split, and the
size of every shard. A changed source, a missing manifest (a build that was killed) or a shard of the wrong size
(a truncated copy) is reported and the cache rebuilt; nothing is read from a cache that does not match.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError, LtcilWarning
from .decode import shrink_job
from .stream import DecodePool, StreamedImages

VERSION = 1
SHARD_IMAGES = 2000  # images per shard (a job of one worker)


def default_root() -> Path:
    """$LTCIL_CACHE, else $XDG_CACHE_HOME/ltcil, else ~/.cache/ltcil."""
    if os.environ.get("LTCIL_CACHE"):
        return Path(os.environ["LTCIL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ltcil"


def source_digest(images: StreamedImages) -> str:
    """A checksum of every source image's path, size and modification time, in order."""
    h = hashlib.sha256()
    for i in range(len(images)):
        path = images.path(i)
        try:
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}\0missing\n".encode())
    return h.hexdigest()


def cache_folder(base: Path, root: str, splits: dict[str, StreamedImages], side: int, quality: int) -> Path:
    """One folder per source (root and the images of every split, in order), side and quality."""
    h = hashlib.sha256(f"{Path(root).resolve()}\0{side}\0{quality}".encode())
    for name in sorted(splits):
        h.update(name.encode())
        h.update(splits[name].blob.tobytes())
        h.update(splits[name].offsets.tobytes())
    return base / f"{Path(root).name or 'data'}-{side}px-{h.hexdigest()[:16]}"


def attach(splits: dict[str, StreamedImages], root: str, base: Path, side: int, quality: int, workers: int,
           max_bad_images: int = 0, progress: bool = True) -> Path:
    """Point every split at the packed cache, building (or rebuilding) it first when it is absent or does not
    match the source; returns the cache folder."""
    folder = cache_folder(base, root, splits, side, quality)
    digests = {name: source_digest(images) for name, images in splits.items()}
    try:
        base.mkdir(parents=True, exist_ok=True)
        lock = open(base / f"{folder.name}.lock", "w")
    except OSError as exc:  # a read-only cache folder serves a cache built before, and nothing else
        if check(folder, splits, digests, side, quality) is None:
            return _use(folder, splits, side)
        raise DataError(f"packed cache {folder} cannot be built there ({exc.strerror}); set data.cache to a writable "
                        "folder, or data.cache=off to read the image files.") from None
    with lock:  # one builder at a time: torchrun's ranks (or two runs) wait for the first, then find it valid
        fcntl.flock(lock, fcntl.LOCK_EX)
        problem = check(folder, splits, digests, side, quality)
        if problem is not None:
            if problem != "absent":
                warnings.warn(LtcilWarning(f"packed cache {folder}: {problem}; rebuilding it."))
            try:
                build(folder, root, splits, digests, side, quality, workers, max_bad_images, progress)
            except OSError as exc:
                raise DataError(f"packed cache {folder}: {exc.strerror or exc} while writing it; free space there, "
                                "set data.cache to another folder, or data.cache=off.") from None
    return _use(folder, splits, side)


def _use(folder: Path, splits: dict[str, StreamedImages], side: int) -> Path:
    index = np.load(folder / "index.npz")
    manifest = json.loads((folder / "manifest.json").read_text())
    shards = [str(folder / s["file"]) for s in manifest["shards"]]
    for name, images in splits.items():
        images.use_packed(shards, index[f"{name}_shard"], index[f"{name}_offset"], index[f"{name}_length"], side)
    return folder


def check(folder: Path, splits: dict, digests: dict, side: int, quality: int) -> str | None:
    """None when the cache at `folder` matches the source; else what is wrong with it."""
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        return "absent" if not folder.exists() else "its build did not finish (no manifest)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        return f"its manifest cannot be read ({exc})"
    if manifest.get("version") != VERSION or manifest.get("side") != side or manifest.get("quality") != quality:
        return "it was built by another version or with other settings"
    for name in splits:
        entry = manifest.get("splits", {}).get(name)
        if entry is None or entry.get("count") != len(splits[name]):
            return f"its {name} split does not hold the same images"
        if entry.get("source_digest") != digests[name]:
            return f"the source images of the {name} split changed since it was built (size or modification time)"
    for shard in manifest.get("shards", []):
        path = folder / shard["file"]
        size = path.stat().st_size if path.is_file() else None
        if size != shard["bytes"]:
            return (f"{shard['file']} is truncated or damaged ({size if size is not None else 'no'} bytes, the "
                    f"manifest says {shard['bytes']})")
    if not (folder / "index.npz").is_file():
        return "its index is missing"
    return None


def build(folder: Path, root: str, splits: dict[str, StreamedImages], digests: dict, side: int, quality: int,
          workers: int, max_bad_images: int = 0, progress: bool = True) -> None:
    """Encode every image into shards, in parallel; the manifest is written last (a killed build leaves
    none and is rebuilt)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").unlink(missing_ok=True)
    jobs, owners = [], []
    for name, images in splits.items():
        for k, start in enumerate(range(0, len(images), SHARD_IMAGES)):
            part = np.arange(start, min(start + SHARD_IMAGES, len(images)))
            jobs.append((str(folder / f"{name}_{k:04d}.bin"), side, quality, [images.path(int(i)) for i in part]))
            owners.append((name, part))
    total = sum(len(images) for images in splits.values())
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="img", desc=f"packing {root} at {side} px", dynamic_ncols=True)
    pool = DecodePool(workers)
    results = {}
    try:
        futures = pool.submit(shrink_job, jobs)
        for k, future in enumerate(futures):
            results[k] = future.result()
            if bar is not None:
                bar.update(len(jobs[k][3]))
    finally:
        pool.close()
        if bar is not None:
            bar.close()
    arrays, shards, bad = {}, [], []
    for name in splits:
        arrays[f"{name}_shard"], arrays[f"{name}_offset"], arrays[f"{name}_length"] = [], [], []
    for k, (job, (name, part)) in enumerate(zip(jobs, owners)):
        shard, lengths, shard_bad = results[k]
        bad.extend(message for _, message in shard_bad)
        lengths = np.asarray(lengths, dtype=np.int64)
        arrays[f"{name}_shard"].append(np.full(len(part), len(shards), dtype=np.int32))
        arrays[f"{name}_offset"].append(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
        arrays[f"{name}_length"].append(lengths)
        shards.append({"file": Path(shard).name, "bytes": int(lengths.sum())})
    if len(bad) > max_bad_images:
        raise DataError(f"{bad[0]} ({len(bad)} unreadable image(s) while packing, more than "
                        f"data.max_bad_images={max_bad_images} allows; raise it to skip them).")
    np.savez(folder / "index.npz", **{k: np.concatenate(v) for k, v in arrays.items()})
    manifest = {
        "version": VERSION, "root": str(root), "side": side, "quality": quality, "shards": shards,
        "splits": {name: {"count": len(images), "source_digest": digests[name]} for name, images in splits.items()},
        "unreadable": bad,
    }
    tmp = folder / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, folder / "manifest.json")

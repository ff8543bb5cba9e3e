"""CIFAR-10 / CIFAR-100 from the official python archives (Krizhevsky 2009).

Reads `cifar-100-python.tar.gz` (or the extracted `cifar-100-python/` folder) from data.root; the pickles are
read straight out of the tar stream, so a read-only copy works and nothing is extracted. When the files are
absent, downloads the official archive (md5-checked) if data.download is true and the network allows.
User-supplied files are validated by structure (keys, shapes, label ranges, counts), not by checksum.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from ..registry import register_dataset
from .base import Dataset, Split


@dataclass(frozen=True)
class CifarSpec:
    name: str
    archive: str
    folder: str
    url: str
    md5: str
    train_files: tuple
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    train_count: int = 50000
    test_count: int = 10000


CIFAR100 = CifarSpec(
    "cifar100", "cifar-100-python.tar.gz", "cifar-100-python",
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
    ("train",), "test", "meta", "fine_labels", "fine_label_names", 100,
)
CIFAR10 = CifarSpec(
    "cifar10", "cifar-10-python.tar.gz", "cifar-10-batches-py",
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
    tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta", "labels", "label_names", 10,
)

_CORRUPT = (EOFError, OSError, tarfile.TarError, zlib.error, pickle.UnpicklingError, ValueError, KeyError,
            AttributeError, IndexError, TypeError)


MAX_MEMBER_BYTES = 256 << 20  # CIFAR's largest pickle (CIFAR-100 train) is about 155 MB


def check_size(size: int, source: str) -> None:
    """A CIFAR pickle is read whole: refuse one far larger than any real one before reading it."""
    if size > MAX_MEMBER_BYTES:
        raise DataError(f"{source} is {size / 2**20:,.0f} MiB, far larger than any CIFAR file "
                        f"({MAX_MEMBER_BYTES >> 20} MiB at most); this is not the CIFAR archive, or it is damaged.")


def check_member(name: str, archive: Path) -> None:
    """Reject tar members that would escape an extraction folder (absolute paths, drive letters, '..')."""
    path = PurePosixPath(name.replace("\\", "/"))  # a Windows-made archive may use backslashes
    if path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{archive}: archive member {name!r} would escape the extraction folder; refusing to read it.")


def safe_members(tar: tarfile.TarFile, archive: Path) -> Iterator[tarfile.TarInfo]:
    """Iterate over a tar's members, checking each; use it for reading and for any extraction."""
    for member in tar:
        check_member(member.name, archive)
        yield member


# The only globals a CIFAR pickle needs (numpy arrays, and bytes in protocol-2 pickles): anything else in a
# user-supplied or downloaded file would run code on load, so it is refused.
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    *((f"numpy.{core}.{module}", name) for core in ("core", "_core")
      for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))),
}


class _CifarUnpickler(pickle.Unpickler):
    def __init__(self, raw: bytes, source: str):
        super().__init__(io.BytesIO(raw), encoding="bytes")  # bytes keys, as the official Python-2 pickles
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise DataError(f"{self.source}: refusing to unpickle {module}.{name}; a CIFAR file holds only numpy "
                            "arrays and lists, and loading this could run code. Use the official archive.")
        return super().find_class(module, name)


def _key(d: dict, key: str, source: str):
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise DataError(f"{source}: key {key!r} is missing (found: {sorted(str(k) for k in d)[:8]}).")


def _unpickle(raw: bytes, source: str) -> dict:
    obj = _CifarUnpickler(raw, source).load()
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected a pickled dict, got {type(obj).__name__}.")
    return obj


def _read_members_from_archive(archive: Path, wanted: list[str]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in safe_members(tar, archive):
                base = PurePosixPath(member.name).name
                if member.isfile() and base in wanted and base not in found:
                    check_size(member.size, f"{archive}:{member.name}")
                    found[base] = _unpickle(tar.extractfile(member).read(), f"{archive}:{member.name}")
    except DataError:
        raise
    except _CORRUPT as exc:
        raise DataError(
            f"{archive} is corrupt or truncated ({type(exc).__name__}: {exc}). Delete it and download it again."
        ) from None
    missing = [w for w in wanted if w not in found]
    if missing:
        raise DataError(f"{archive}: the archive has no member named {missing[0]!r}; is it the right archive?")
    return found


def _read_members_from_folder(folder: Path, wanted: list[str]) -> dict[str, dict]:
    found = {}
    for name in wanted:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{folder}: file {name!r} is missing from the extracted CIFAR folder.")
        try:
            check_size(path.stat().st_size, str(path))
            found[name] = _unpickle(path.read_bytes(), str(path))
        except DataError:
            raise
        except _CORRUPT as exc:
            raise DataError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc}).") from None
    return found


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(spec: CifarSpec, root: Path) -> Path:
    target = root / spec.archive
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, suffix=".part")
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec.url, timeout=30) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        if _md5(Path(tmp)) != spec.md5:
            raise DataError(
                f"downloaded {spec.url} but its md5 does not match {spec.md5}, so it was not saved as {target}; "
                "try again, or put the official archive there yourself."
            )
        os.replace(tmp, target)
        tmp = None
    except DataError:
        raise
    except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, refused writes, cut connections
        raise DataError(
            f"{spec.name} not found and could not be downloaded ({exc}). Put the official {spec.archive} "
            f"(from {spec.url}) at {target.resolve()}, or set data.root to the folder that holds it."
        ) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)  # never leave a partial download behind
    return target


def locate(spec: CifarSpec, cfg: DataConfig) -> Path:
    root = Path(cfg.root).expanduser()
    if root.is_file():
        return root
    for candidate in (root / spec.archive, root / spec.folder):
        if candidate.exists():
            return candidate
    if root.name == spec.folder and root.is_dir():
        return root
    if not cfg.download:
        raise DataError(
            f"{spec.name} not found: expected {(root / spec.archive).resolve()} (the official archive, from "
            f"{spec.url}) or the extracted folder {(root / spec.folder).resolve()}. data.download is false."
        )
    return download(spec, root)


def _labels(batch: dict, spec: CifarSpec, source: str) -> np.ndarray:
    raw = np.asarray(_key(batch, spec.label_key, source))
    if raw.ndim != 1 or not np.issubdtype(raw.dtype, np.integer):
        raise DataError(f"{source}: key {spec.label_key!r} must be a list of integers, got {raw.dtype} {raw.shape}.")
    bad = (raw < 0) | (raw >= spec.num_classes)
    if bad.any():
        raise DataError(f"{source}: key {spec.label_key!r} holds label {int(raw[bad][0])}, outside "
                        f"0..{spec.num_classes - 1}; is this the right CIFAR file?")
    return raw.astype(np.int64)


def _split(batches: list[dict], spec: CifarSpec, source: str, expected: int) -> Split:
    images, labels = [], []
    for batch in batches:
        data = _key(batch, "data", source)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{source}: key 'data' must be a uint8 array of shape (N, 3072), got "
                            f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}.")
        lab = _labels(batch, spec, source)
        if len(lab) != len(data):
            raise DataError(f"{source}: {len(data)} images but {len(lab)} entries in {spec.label_key!r}.")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # R/G/B planes -> HWC
        labels.append(lab)
    split = Split(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))
    if len(split) != expected:
        raise DataError(f"{source}: expected {expected} images, found {len(split)}; the file is incomplete.")
    return split


def load_cifar(spec: CifarSpec, cfg: DataConfig) -> Dataset:
    path = locate(spec, cfg)
    wanted = [*spec.train_files, spec.test_file, spec.meta_file]
    members = _read_members_from_archive(path, wanted) if path.is_file() else _read_members_from_folder(path, wanted)
    train = _split([members[f] for f in spec.train_files], spec, f"{path} ({'/'.join(spec.train_files)})",
                   spec.train_count)
    test = _split([members[spec.test_file]], spec, f"{path} ({spec.test_file})", spec.test_count)
    raw_names = _key(members[spec.meta_file], spec.names_key, f"{path} ({spec.meta_file})")
    if not isinstance(raw_names, (list, tuple)) or len(raw_names) != spec.num_classes:
        raise DataError(f"{path} ({spec.meta_file}): key {spec.names_key!r} must be a list of {spec.num_classes} "
                        f"class names, got {raw_names!r:.80}.")
    names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in raw_names]
    return Dataset(spec.name, train, test, names, meta={"path": str(path)}).validate(str(path))


@register_dataset("cifar100")
def load_cifar100(cfg: DataConfig) -> Dataset:
    return load_cifar(CIFAR100, cfg)


@register_dataset("cifar10")
def load_cifar10(cfg: DataConfig) -> Dataset:
    return load_cifar(CIFAR10, cfg)

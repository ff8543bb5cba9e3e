"""A smaller CIFAR-100 archive for CPU parity runs: the first N training images of every class (in the official
archive's order, so the choice is deterministic and the same for every toolkit), the whole test set, the official
layout (cifar-100-python/{meta,train,test}, Python-3 pickles with the official keys) for the peers, and the same
images as one .npz (MedMNIST keys) for ltcil's `data.name: npz`, since ltcil's CIFAR reader refuses an archive
without the official 50,000 training images.

    python benchmarks/peers/per_class_subset.py --data ../shared/data --per-class 100 --out runs/cifar100_train100

run.py --train-per-class N writes it into --out and points both sides at it: the peer's --data at the folder,
ltcil's data.root at the .npz.
Standard library and numpy only, so it runs in any peer's venv as well as in ltcil's.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

ARCHIVE = "cifar-100-python.tar.gz"
NPZ = "cifar100.npz"


def _read(tar: tarfile.TarFile, name: str) -> dict:
    member = tar.extractfile(f"cifar-100-python/{name}")
    if member is None:
        raise SystemExit(f"{tar.name}: no member cifar-100-python/{name}; is it the official CIFAR-100 archive?")
    return pickle.load(member, encoding="latin1")


def keep_first(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices (ascending) of the first `per_class` occurrences of every label; all of a class that has fewer."""
    if per_class < 1:
        raise ValueError(f"per_class: {per_class} must be >= 1")
    rank = np.zeros(len(labels), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, y in enumerate(labels.tolist()):
        rank[i] = seen.get(y, 0)
        seen[y] = rank[i] + 1
    return np.flatnonzero(rank < per_class)


def write_subset(data: Path, per_class: int, out: Path) -> Path:
    """Write out/cifar-100-python.tar.gz holding the first `per_class` training images of each class of
    data/cifar-100-python.tar.gz and its whole test set; kept when already written for the same source and N.
    Returns `out`."""
    source = Path(data) / ARCHIVE
    if not source.is_file():
        raise SystemExit(f"{source}: not found (the official CIFAR-100 archive is needed)")
    out = Path(out)
    stamp = out / "SOURCE"
    tag = f"{source.resolve()} {source.stat().st_size} first {per_class} training images per class\n"
    if (out / ARCHIVE).is_file() and (out / NPZ).is_file() and stamp.is_file() and stamp.read_text() == tag:
        return out
    with tarfile.open(source, "r:gz") as tar:
        parts = {name: _read(tar, name) for name in ("meta", "train", "test")}
    train = parts["train"]
    keep = keep_first(np.asarray(train["fine_labels"]), per_class)
    parts["train"] = {key: ([value[i] for i in keep] if isinstance(value, list)
                            else np.ascontiguousarray(value[keep]) if isinstance(value, np.ndarray) else value)
                      for key, value in train.items()}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (ARCHIVE + ".part")
    with tarfile.open(tmp, "w:gz") as tar:
        for name, obj in parts.items():
            raw = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    tmp.replace(out / ARCHIVE)
    hwc = {name: np.asarray(parts[name]["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
           for name in ("train", "test")}
    with open(out / (NPZ + ".part"), "wb") as fh:
        np.savez(fh, **{f"{name}_images": np.ascontiguousarray(hwc[name]) for name in hwc},
                 **{f"{name}_labels": np.asarray(parts[name]["fine_labels"], dtype=np.int64) for name in hwc},
                 class_names=np.array(parts["meta"]["fine_label_names"], dtype=str))
    (out / (NPZ + ".part")).replace(out / NPZ)
    stamp.write_text(tag)
    return out


def digest(folder: Path) -> str:
    """SHA-256 of the training images and labels in folder's archive (what a pair's two sides both read)."""
    with tarfile.open(Path(folder) / ARCHIVE, "r:gz") as tar:
        train = _read(tar, "train")
    h = hashlib.sha256(np.asarray(train["data"], dtype=np.uint8).tobytes())
    h.update(np.asarray(train["fine_labels"], dtype=np.int64).tobytes())
    return h.hexdigest()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder with the official " + ARCHIVE)
    p.add_argument("--per-class", type=int, required=True, help="training images kept per class")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    folder = write_subset(args.data, args.per_class, args.out)
    print(f"{folder / ARCHIVE}: training images sha256 {digest(folder)}")


if __name__ == "__main__":
    main()

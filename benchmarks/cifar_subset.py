"""The first classes of a CIFAR-100 class order as one small .npz, for a machine the full archive cannot reach
(the GPU slot takes 64 MiB of files: the archive is 173 MiB, 20 classes are about 35 MiB).

    python benchmarks/cifar_subset.py --data-root ../shared/data --classes 20 --out gpu_data/cifar100_first20.npz

Writes the npz source's layout (`train_images`, `train_labels`, `test_images`, `test_labels`, `class_names`),
labels renumbered in arrival order (label i = the i-th class of `--order`), images in the archive's order within
each class, and beside it a .json with the overrides that make a run on it the first tasks of the same run on
the full archive: `data.name=npz`, `scenario.order=natural`, and the full training split's per-channel mean and
std (a run normalises by its training split's statistics, which the subset alone would change).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ltcil.config import DataConfig  # noqa: E402
from ltcil.data.cifar import CIFAR100, load_cifar  # noqa: E402
from ltcil.data.loader import channel_stats  # noqa: E402
from ltcil.scenarios.order import class_order  # noqa: E402


def take(split, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images of the classes in `order`, relabelled by their position in it; archive order within a class."""
    rank = np.full(CIFAR100.num_classes, -1, dtype=np.int64)
    rank[order] = np.arange(len(order))
    keep = np.flatnonzero(rank[split.labels] >= 0)
    return split.images[keep], rank[split.labels[keep]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--order", default="seed:1993", help="class order as scenario.order takes it (PyCIL's iCaRL)")
    p.add_argument("--classes", type=int, default=20, help="how many classes of the order to keep")
    p.add_argument("--out", type=Path, required=True, help="the .npz to write (a .json is written beside it)")
    args = p.parse_args()

    ds = load_cifar(CIFAR100, DataConfig(name="cifar100", root=args.data_root, download=False))
    order = class_order(args.order, CIFAR100.num_classes)[: args.classes]
    train = torch.from_numpy(ds.train.images).permute(0, 3, 1, 2)
    mean, std = channel_stats(lambda: (train[i : i + 4096] for i in range(0, len(train), 4096)),
                              torch.device("cpu"))
    train_images, train_labels = take(ds.train, order)
    test_images, test_labels = take(ds.test, order)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, train_images=train_images, train_labels=train_labels, test_images=test_images,
                        test_labels=test_labels, class_names=np.array([ds.class_names[c] for c in order], dtype=str))
    side = {"source": str(Path(ds.meta["path"]).name), "order": args.order, "classes": order.tolist(),
            "full_classes": CIFAR100.num_classes,
            "overrides": ["data.name=npz", f"data.root={args.out}", "scenario.order=natural",
                          f"data.mean={[round(float(v), 8) for v in mean.flatten()]}".replace(" ", ""),
                          f"data.std={[round(float(v), 8) for v in std.flatten()]}".replace(" ", "")]}
    args.out.with_suffix(".json").write_text(json.dumps(side, indent=1) + "\n")
    print(json.dumps({"out": str(args.out), "megabytes": round(args.out.stat().st_size / 2**20, 1),
                      "train": len(train_labels), "test": len(test_labels), **side}))


if __name__ == "__main__":
    main()

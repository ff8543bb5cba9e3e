"""benchmarks/train_throughput.py's compute floor: its resident batch spans classes even on a class-ordered
archive (CIFAR-100's first 128 images are one class), and it flushes denormals only while it measures."""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import train_throughput as tt  # noqa: E402

from ltcil.data.synthetic import make_synthetic  # noqa: E402


def test_floor_batch_is_drawn_across_classes_of_a_class_ordered_set():
    labels = np.repeat(np.arange(100), 500)  # CIFAR-100's archive order: class by class
    idx = tt.floor_batch_indices(labels, 128)
    assert len(idx) == 128 and len(np.unique(idx)) == 128 and idx.min() >= 0 and idx.max() < len(labels)
    assert len(np.unique(labels[idx])) >= 50  # the first 128 images would be 1 class
    assert np.array_equal(idx, tt.floor_batch_indices(labels, 128))  # seeded


def test_compute_floor_labels_its_rows_and_restores_denormals():
    ds = make_synthetic(num_classes=10, per_class=4, size=32)
    args = argparse.Namespace(batch_size=16, steps=1, warmup=1, shortcut="pad")
    rows = tt.compute_floor(args, ds, ds.train.labels, torch.device("cpu"), {})
    assert [r["pipeline"].split(" (")[0] for r in rows] == ["bare step", "teacher forward"]
    assert all(r["batch_classes"] > 1 and r["images_per_second"] > 0 for r in rows)
    if rows[0]["flush_denormal"]:
        assert all("flush-denormal" in r["pipeline"] for r in rows)
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a denormal: survives once flushing is off again
    assert (tiny * 0.5).item() != 0.0


def test_timed_batches_run_on_past_the_epoch_and_are_all_full():
    """A small training set ends its epoch inside the timed steps: the batches go on into the next epoch, and a
    short trailing batch is never timed (under torch.compile it would time a recompilation)."""
    from ltcil.data.augment import AugmentSpec
    from ltcil.data.loader import DeviceData

    ds = make_synthetic(num_classes=2, per_class=5, size=8)  # 10 images: 2 batches of 4 and one of 2 per epoch
    data = DeviceData(ds, {"train": ds.train.labels, "test": ds.test.labels}, torch.device("cpu"), False)
    gen = torch.Generator().manual_seed(0)
    batches = tt.full_batches(data, len(ds.train.labels), 4, AugmentSpec(), gen, gen)
    shapes = [next(batches)[0].shape[0] for _ in range(7)]  # three and a half epochs
    assert shapes == [4] * 7

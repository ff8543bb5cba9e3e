"""Images per second of a full training step (augment + forward + backward + optimiser) for ResNet-32 on
CIFAR-100 at batch 128: ltcil's device-resident pipeline against a conventional per-sample pipeline (Pillow
images, per-sample random crop + flip + normalise in a torch DataLoader with workers), same model, same step.

    python benchmarks/train_throughput.py --data-root ../shared/data --steps 30 --workers 0 2
    python benchmarks/train_throughput.py --device cuda --compile off default reduce-overhead --workers 0 8

`--compile` measures ltcil's pipeline with the step under each torch.compile mode (reduce-overhead: CUDA graphs);
`--synthetic N` uses N generated 32 px images instead of the CIFAR-100 archive (a quick check of the script).
`--floor` adds two rows with no data pipeline at all: the same step on one batch kept on the device (the compute
floor of any pipeline, ltcil's or a peer's) and the forward pass of a frozen copy in eval mode (what a
distillation teacher costs per image); `--shortcut pad` measures the parameter-free shortcuts PyCIL's ResNet-32 has.
The resident batch is a seeded random draw over the whole training set (the CIFAR-100 archive is ordered by class:
its first 128 images are one class, on which the loss goes to zero and the backward runs on denormal floats, ~13x
slower on CPUs), and the floor rows run with denormals flushed to zero (torch.set_flush_denormal), so that a batch
trained on repeatedly measures the convolutions, not denormal arithmetic.
Prints one JSON line per pipeline and a table with the ratio. Not run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from ltcil.backbones import build_backbone
from ltcil.config import BackboneConfig, DataConfig
from ltcil.data.augment import AugmentSpec
from ltcil.data.loader import DeviceData
from ltcil.engine.trainer import COMPILE_MODES, compile_step
from ltcil.methods.base import IncrementalNet
from ltcil.registry import get

MEAN = np.array([0.5071, 0.4865, 0.4409], dtype=np.float32)
STD = np.array([0.2673, 0.2564, 0.2762], dtype=np.float32)


class PerSampleCifar(torch.utils.data.Dataset):
    """The conventional design: one PIL image at a time, augmented in Python, collated by the DataLoader."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, padding: int = 4):
        self.images, self.labels, self.padding = images, labels, padding

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image, ImageOps

        img = Image.fromarray(self.images[i])
        img = ImageOps.expand(img, border=self.padding, fill=0)
        x, y = np.random.randint(0, 2 * self.padding + 1, size=2)
        img = img.crop((x, y, x + 32, y + 32))
        if np.random.rand() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        arr = (np.asarray(img, dtype=np.float32) / 255.0 - MEAN) / STD
        return torch.from_numpy(arr.transpose(2, 0, 1).copy()), int(self.labels[i])


def make_model(device, shortcut: str = "conv"):
    model = IncrementalNet(build_backbone(BackboneConfig(name="resnet32", shortcut=shortcut), 3, 32)).to(device)
    model.head.add_classes(100)
    model.head.to(device)
    return model


def train_step(model, opt, x, y, forward=None):
    loss = (forward or (lambda a, b: F.cross_entropy(model(a), b)))(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def timed(batches, model, opt, steps: int, warmup: int, device, forward=None) -> float:
    done, start = 0, None
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        train_step(model, opt, x.to(device, non_blocking=True), y.to(device, non_blocking=True), forward)
        if i >= warmup:
            done += len(y)
        if i + 1 >= warmup + steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def full_batches(data, n: int, batch_size: int, spec, gen_cpu, gen_dev):
    """Augmented training batches, epoch after epoch, full ones only: a small training set (a class subset) ends
    its epoch within the timed steps, and its short trailing batch would time a recompilation under
    torch.compile (the DataLoader rows drop it too)."""
    while True:
        for idx in data.index_batches(np.arange(n), batch_size, gen_cpu):
            if len(idx) == batch_size:
                yield data.batch("train", idx, spec, gen_dev)


def floor_batch_indices(labels, batch_size: int, seed: int = 0) -> np.ndarray:
    """The resident batch: a seeded draw without replacement over the whole training set, as an instance-sampled
    training batch looks (many classes). Never the first images: class-ordered archives (CIFAR-100) would give a
    single-class batch, whose loss goes to zero within a few steps."""
    n = len(labels)
    return np.sort(np.random.default_rng(seed).choice(n, size=batch_size, replace=batch_size > n))


def compute_floor(args, ds, labels, device, common) -> list[dict]:
    """The step with no data pipeline (one normalised batch resident on the device, channels_last), and the
    eval-mode forward of a frozen copy under inference_mode (a distillation teacher's cost). The batch is drawn
    across classes, and both rows run with denormals flushed to zero (restored afterwards): stepping on one
    batch 30+ times fits it, and a near-zero loss drives the backward into denormal floats, whose arithmetic
    on a CPU is an order of magnitude slower and would measure that instead of the convolutions."""
    flushed = torch.set_flush_denormal(True)  # False where the CPU cannot (then the label says so)
    try:
        return _compute_floor(args, ds, labels, device, common, flushed)
    finally:
        torch.set_flush_denormal(False)


def _compute_floor(args, ds, labels, device, common, flushed: bool) -> list[dict]:
    torch.manual_seed(0)
    idx = floor_batch_indices(labels, args.batch_size)
    x = torch.from_numpy(ds.train.images[idx]).to(device).permute(0, 3, 1, 2).float().div(255)
    x = ((x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True))
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(np.asarray(labels)[idx]).long().to(device)
    model = make_model(device, args.shortcut).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    steps = args.warmup + args.steps
    classes = int(np.unique(np.asarray(labels)[idx]).size)
    ftz = "flush-denormal" if flushed else "denormals NOT flushed"
    extra = {"batch_classes": classes, "flush_denormal": flushed}
    rows = [{"pipeline": f"bare step (resident, {ftz})", "workers": 0, "channels_last": True, "compile": "off",
             "images_per_second": timed(((x, y) for _ in range(steps)), model, opt, args.steps, args.warmup,
                                        device), **extra, **common}]
    model.eval()
    with torch.inference_mode():
        for i in range(steps):
            if i == args.warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    rows.append({"pipeline": f"teacher forward (eval, {ftz})", "workers": 0, "channels_last": True,
                 "compile": "off", "images_per_second": args.steps * args.batch_size / (time.perf_counter() - start),
                 **extra, **common})
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="../shared/data", help="the CIFAR-100 folder, or a subset .npz")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers to try")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", nargs="+", default=["off"], choices=COMPILE_MODES,
                        help="torch.compile modes of ltcil's step to measure (channels_last pipeline)")
    parser.add_argument("--synthetic", type=int, default=0, help="N generated images instead of CIFAR-100")
    parser.add_argument("--shortcut", choices=("conv", "pad"), default="conv", help="ResNet-32 shortcut type")
    parser.add_argument("--amp", action="store_true", help="on CUDA, also the step under bf16 autocast")
    parser.add_argument("--floor", action="store_true",
                        help="also measure the bare step on one resident batch (drawn across classes, denormals "
                             "flushed) and a teacher's eval forward")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    if args.synthetic:
        ds = get("dataset", "synthetic")(DataConfig(name="synthetic", num_classes=100,
                                                    images_per_class=max(1, args.synthetic // 100), image_size=32))
    elif args.data_root.endswith(".npz"):  # a class subset (benchmarks/cifar_subset.py) where the archive is absent
        ds = get("dataset", "npz")(DataConfig(name="npz", root=args.data_root))
    else:
        ds = get("dataset", "cifar100")(DataConfig(name="cifar100", root=args.data_root, download=False))
    labels = ds.train.labels
    rows = []
    common = {"device": str(device), "threads": torch.get_num_threads(), "batch_size": args.batch_size,
              "steps": args.steps, "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}

    # ltcil: uint8 images resident on the device, batched crop/flip/normalise there; channels_last activations
    # as ltcil trains by default (train.channels_last), and the plain NCHW layout to show what that gives.
    # --amp adds the step under bf16 autocast, as ltcil trains on a GPU (train.amp): on a launch-bound step the
    # casts are extra kernels, so it is measured, not assumed faster.
    variants = [(True, mode, False) for mode in args.compile] + [(False, "off", False)]
    if args.amp and device.type == "cuda":
        variants.append((True, "off", True))
    for channels_last, mode, amp in variants:
        torch.manual_seed(0)
        data = DeviceData(ds, {"train": labels, "test": ds.test.labels}, device, channels_last)
        gen_cpu = torch.Generator().manual_seed(0)
        gen_dev = torch.Generator(device=device).manual_seed(0)
        spec = AugmentSpec(crop_padding=4, flip=True)
        model = make_model(device, args.shortcut)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        model.train()
        forward = None
        if mode != "off":
            forward = compile_step(lambda a, b: F.cross_entropy(model(a), b), mode)
        if amp:
            def forward(a, b):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return F.cross_entropy(model(a), b)
        batches = full_batches(data, len(labels), args.batch_size, spec, gen_cpu, gen_dev)
        ips = timed(batches, model, opt, args.steps, args.warmup, device, forward)
        name = "ltcil device-resident" + (" bf16 autocast" if amp else " (default)" if channels_last else " NCHW")
        rows.append({"pipeline": name, "workers": 0, "channels_last": channels_last, "compile": mode, "amp": amp,
                     "images_per_second": ips, **common})
        print(json.dumps(rows[-1]), flush=True)
        del data

    # Reference: per-sample PIL transforms in a DataLoader.
    for workers in args.workers:
        torch.manual_seed(0)
        model = make_model(device, args.shortcut)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        model.train()
        loader = torch.utils.data.DataLoader(
            PerSampleCifar(ds.train.images, labels), batch_size=args.batch_size, shuffle=True,
            num_workers=workers, pin_memory=device.type == "cuda", drop_last=True,
            persistent_workers=workers > 0,
        )
        ips = timed((batch for _ in iter(int, 1) for batch in loader), model, opt, args.steps, args.warmup,
                    device)  # epoch after epoch, as the ltcil rows
        rows.append({"pipeline": "per-sample PIL DataLoader", "workers": workers, "channels_last": False,
                     "compile": "off", "images_per_second": ips, **common})
        print(json.dumps(rows[-1]), flush=True)

    if args.floor:
        rows += compute_floor(args, ds, labels, device, common)

    best_ref = max(r["images_per_second"] for r in rows if r["pipeline"].startswith("per-sample"))
    print(f"\n{'pipeline':42s} {'compile':>15s} {'workers':>7s} {'images/s':>9s} {'/ best ref':>10s}")
    for r in rows:
        print(f"{r['pipeline']:42s} {r['compile']:>15s} {r['workers']:7d} {r['images_per_second']:9.1f} "
              f"{r['images_per_second'] / best_ref:9.2f}x")
    print(f"\n{common['device']}, {common['threads']} threads, batch {args.batch_size}")
    if args.floor:
        print(f"floor rows: one resident batch of {rows[-1]['batch_classes']} classes (seeded draw over the training "
              f"set), denormals {'flushed to zero' if rows[-1]['flush_denormal'] else 'NOT flushed (unsupported here)'}")


if __name__ == "__main__":
    main()

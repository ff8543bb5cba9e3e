"""Streamed ImageNet-size data on this machine: decode + augment throughput to 224 px batches, peak memory, packed
cache build time, memory as the dataset grows, and an end-to-end iCaRL run streamed against in memory.

Writes an ImageNet-like JPEG tree first (`--classes` x `--per-class` training images and `--val-per-class`
validation images per class, 300-500 px, smooth content so the JPEGs have realistic sizes), then measures, each
pipeline in its own process (so peak memory is its own), with the same number of decoding processes:

  stream   ltcil's streamed path from the image files (StreamData: worker processes decode and cut the random
           resized crop (area 0.08-1) + flip per image, resampled once; the batch normalised after)
  packed   the same from the packed cache (short side `--pack-side`), cache build timed first
  dataloader  a conventional reference: torch DataLoader with workers, per sample Pillow decode +
           RandomResizedCrop(224, scale 0.08-1) + flip + to-tensor + normalise, collated

and peak memory (PSS of the process and its workers, sampled every 50 ms) of the streamed path over 1x, 4x and
16x the images (entries repeated), then (`--e2e`) a 3-task iCaRL run on the tree at `--e2e-size` px, in memory
and streamed, with a kill inside task 2 and a resume of the streamed run.

    python benchmarks/streaming.py --work /tmp/ltcil_stream --batches 20 --e2e
Prints JSON lines and a summary. Not run by the test suite (tests/test_streaming.py covers the logic).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

SIZE = 224


# --- the tree --------------------------------------------------------------------------------------------------
def _write_class(args) -> int:
    from PIL import Image

    root, c, count, seed = args
    base = np.random.default_rng(c).integers(0, 256, (3,))  # the class's colour, in train and val alike
    rng = np.random.default_rng(seed)
    (root / f"n{c:08d}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        w, h = (int(v) for v in rng.integers(300, 501, size=2))
        low = np.clip(base + rng.normal(0, 60, (6, 6, 3)), 0, 255).astype(np.uint8)
        img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.float32)
        img += rng.normal(0, 8, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"n{c:08d}" / f"{i:05d}.JPEG", quality=90)
    return count


def make_tree(work: Path, classes: int, per_class: int, val_per_class: int, workers: int) -> Path:
    root = work / "tree"
    marker = root / f".complete_v2_{classes}x{per_class}+{val_per_class}"
    if marker.exists():
        return root
    from concurrent.futures import ProcessPoolExecutor

    shutil.rmtree(root, ignore_errors=True)
    jobs = [(root / "train", c, per_class, c) for c in range(classes)]
    jobs += [(root / "val", c, val_per_class, 10_000 + c) for c in range(classes)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_class, jobs))
    marker.touch()
    return root


# --- memory of a process tree ----------------------------------------------------------------------------------
def _tree_pids(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            pass
    return pids


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_peak_rss_gib(pid: int) -> float:
    """Sum over a process and its descendants of each one's peak resident memory (VmHWM, the kernel's own
    high-water mark; shared library pages count in every process, so this bounds the simultaneous total)."""
    total = 0
    for p in _tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
        except (OSError, StopIteration):
            pass
    return total / 2**20


def run_measured(cmd: list[str], env=None) -> tuple[dict, float]:
    """Run `cmd` (prints one JSON line last); returns that line and the peak PSS (GiB) of its process tree."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], sum(_pss_kib(p) for p in _tree_pids(proc.pid)))
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    return json.loads(out.strip().splitlines()[-1]), peak[0] / 2**20


# --- the pipelines (each runs in a child process: `--pipeline NAME`) --------------------------------------------
def train_split(root: Path, repeat: int = 1):
    from ltcil.data.imagelist import scan_folders

    paths, labels, classes = scan_folders(root / "train", None)
    return paths * repeat, np.tile(labels, repeat), classes


def repeat_index(images, n: int):
    """The index of a dataset `n` times as large (every entry repeated), built as a loader would hold it: the
    path blob and offsets, no Python object per image."""
    import copy

    out = copy.copy(images)
    length = int(images.offsets[-1])
    out.blob = np.tile(images.blob, n)
    out.offsets = np.concatenate([images.offsets[:-1] + k * length for k in range(n)] + [[n * length]])
    return out


def pipeline_ltcil(args) -> dict:
    import torch

    from ltcil.data.augment import AugmentSpec
    from ltcil.data.base import Dataset, Split
    from ltcil.data.stream import StreamedImages
    from ltcil.data.stream_loader import StreamData

    torch.set_num_threads(args.threads)
    root = Path(args.root)
    paths, labels, classes = train_split(root)
    images = repeat_index(StreamedImages(str(root), paths, SIZE), args.repeat)
    labels = np.tile(labels, args.repeat)
    build_s = None
    if args.pipeline == "packed":
        from ltcil.data import packed

        t0 = time.perf_counter()
        packed.attach({"train": images}, str(root), Path(args.work) / "cache", args.pack_side, 90, args.workers,
                      progress=False)
        build_s = time.perf_counter() - t0
    del paths
    split = Split(images, labels)
    ds = Dataset("bench", split, split, classes)
    t0 = time.perf_counter()
    device = torch.device(args.device)
    data = StreamData(ds, {"train": labels, "test": labels}, device, True, args.workers)
    stats_s = time.perf_counter() - t0
    spec = AugmentSpec(crop_padding=0, flip=True, resized_crop=True, crop_scale=(0.08, 1.0))
    gen = torch.Generator(device=device).manual_seed(0)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[: args.batches * args.batch_size]
    seen, start = 0, None
    for k, idx in enumerate(data.index_batches(order, args.batch_size, shuffle=False, split="train", augment=spec)):
        x, y = data.batch("train", idx, spec, gen)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if k == 0:  # the first batch waits for the worker processes to start: timed from its arrival
            start = time.perf_counter()
        else:
            seen += len(x)
    elapsed = time.perf_counter() - start
    peak = tree_peak_rss_gib(os.getpid())  # before the workers exit
    data.close()
    return {"pipeline": args.pipeline, "images_per_s": seen / elapsed, "images": len(labels), "shape": list(x.shape),
            "stats_s": stats_s, "cache_build_s": build_s, "peak_rss_gib": peak}


class PerSampleFolder:
    """The conventional design, written here (torchvision is not a dependency): open each file with Pillow,
    RandomResizedCrop as torchvision draws it (area 0.08-1, log-uniform ratio 3/4-4/3, ten tries, else centre),
    flip, to a float tensor, normalise; the DataLoader collates."""

    def __init__(self, paths, labels):
        self.paths, self.labels = paths, labels
        self.mean = np.array([0.485, 0.456, 0.406], np.float32)
        self.std = np.array([0.229, 0.224, 0.225], np.float32)

    def __len__(self):
        return len(self.paths)

    def _box(self, w, h):
        area = w * h
        for _ in range(10):
            target = area * np.random.uniform(0.08, 1.0)
            ratio = np.exp(np.random.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw, ch = int(round(np.sqrt(target * ratio))), int(round(np.sqrt(target / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                x, y = np.random.randint(0, w - cw + 1), np.random.randint(0, h - ch + 1)
                return (x, y, x + cw, y + ch)
        s = min(w, h)
        return ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)

    def __getitem__(self, i):
        import torch
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            img = img.convert("RGB")
            img = img.resize((SIZE, SIZE), Image.BILINEAR, box=self._box(*img.size))
        if np.random.rand() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        arr = (np.asarray(img, dtype=np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(arr.transpose(2, 0, 1).copy()), int(self.labels[i])


def pipeline_dataloader(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    paths, labels, _ = train_split(Path(args.root), args.repeat)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[: args.batches * args.batch_size]
    subset = torch.utils.data.Subset(PerSampleFolder(paths, labels), order.tolist())
    loader = torch.utils.data.DataLoader(subset, batch_size=args.batch_size, num_workers=args.workers,
                                         persistent_workers=False)
    seen, start, peak = 0, None, 0.0
    for k, (x, y) in enumerate(loader):
        if k == 0:
            start = time.perf_counter()
        else:
            seen += len(x)
        if k == len(loader) - 1:  # the workers are still alive
            elapsed = time.perf_counter() - start
            peak = tree_peak_rss_gib(os.getpid())
    return {"pipeline": "dataloader", "images_per_s": seen / elapsed, "images": len(labels), "shape": list(x.shape),
            "peak_rss_gib": peak}


# --- end to end ------------------------------------------------------------------------------------------------
def run_peak(cmd: list[str], env=None) -> float:
    """Run an ltcil command quietly; returns the peak PSS (GiB) of its process tree."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, sum(_pss_kib(p) for p in _tree_pids(proc.pid)))
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    return peak / 2**20


def e2e(args, root: Path, out: Path) -> list[dict]:
    """3 tasks of 10 classes of iCaRL (ResNet-18) at --e2e-size px, in memory and streamed, with the resized crop
    (streamed: cut from the whole image by the workers; in memory: from the stored square, so not the same
    pixels) and with padded crops (--e2e-padded: the same pixels, equal results expected); the streamed
    resized-crop run again, killed inside task 2 and resumed; a ResNet-18 run at 224 px
    (2 classes, 1 epoch, from the packed cache) for its peak memory."""
    config = str(Path(__file__).parent / "streaming_icarl.yaml")
    per_task = max(1, min(30, args.classes) // 3)
    base = [sys.executable, "-m", "ltcil", "run", config, f"data.root={root}", f"data.image_size={args.e2e_size}",
            f"scenario.order={list(range(3 * per_task))}".replace(" ", ""), f"scenario.initial={per_task}",
            f"scenario.increment={per_task}",
            f"train.epochs={args.e2e_epochs}", "--quiet", "log.report=never", f"data.workers={args.workers}",
            "data.cache=off"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
           "LTCIL_CACHE": str(out / "cache")}
    rows = []
    crop = ["train.resized_crop=false", "train.crop_padding=12"]
    for aug, extra in (("resized crop", []), ("padded crop", crop))[: 2 if args.e2e_padded else 1]:
        for storage in ("memory", "stream"):
            run = out / f"e2e_{storage}_{aug.split()[0]}"
            t0 = time.perf_counter()
            peak = run_peak(base + [f"data.storage={storage}", "--out", str(run), "--force", *extra], env)
            res = json.loads((run / "results.json").read_text())
            rows.append({"e2e": f"{storage}, {aug}", "accuracy": res["accuracy"],
                         "nme": res.get("accuracy_nme"), "wall_s": round(time.perf_counter() - t0, 1),
                         "peak_pss_gib": round(peak, 3)})
            print(json.dumps(rows[-1]), flush=True)
    # killed inside task 2 (a partial checkpoint after every epoch), then resumed
    run = out / "e2e_stream_killed"
    cmd = base + ["data.storage=stream", "train.checkpoint_minutes=1e-9", "--out", str(run), "--force"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    killed = False
    while proc.poll() is None:
        events = (run / "events.jsonl").read_text().splitlines() if (run / "events.jsonl").exists() else []
        if any('"event": "epoch"' in e and '"task": 1' in e for e in events):
            time.sleep(3)  # inside the herding / next steps of task 2
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.2)
    proc.wait()
    subprocess.run([sys.executable, "-m", "ltcil", "resume", str(run), "--quiet"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    res = json.loads((run / "results.json").read_text())
    rows.append({"e2e": f"stream, resized crop, {'killed in task 2 and ' if killed else ''}resumed",
                 "accuracy": res["accuracy"], "nme": res.get("accuracy_nme")})
    print(json.dumps(rows[-1]), flush=True)
    run = out / "e2e_224"
    peak = run_peak([sys.executable, "-m", "ltcil", "run", config, f"data.root={root}", "data.image_size=224",
                     "scenario.order=[0,1]", "scenario.initial=2", "scenario.increment=0", "train.epochs=1",
                     "data.storage=stream", f"data.workers={args.workers}", "--quiet", "log.report=never",
                     "--out", str(run), "--force"], env)
    rows.append({"e2e": "resnet18 at 224 px, streamed from the packed cache, batch 64", "peak_pss_gib": round(peak, 3),
                 "accuracy": json.loads((run / "results.json").read_text())["accuracy"], "nme": None})
    print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ltcil_streaming"))
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--per-class", type=int, default=260)
    ap.add_argument("--val-per-class", type=int, default=20)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes, every pipeline")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu", help="where ltcil's pipeline augments (cuda on a GPU machine)")
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--pack-side", type=int, default=160)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16], help="dataset repeats for the memory check")
    ap.add_argument("--e2e", action="store_true", help="also the end-to-end iCaRL runs")
    ap.add_argument("--e2e-size", type=int, default=112)
    ap.add_argument("--e2e-padded", action="store_true", help="also the padded-crop pair (equal by construction: "
                    "tests/test_streaming.py checks it on every commit)")
    ap.add_argument("--e2e-epochs", type=int, default=1)
    ap.add_argument("--pipeline", default=None, help=argparse.SUPPRESS)  # child process
    ap.add_argument("--root", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pipeline:
        fn = pipeline_dataloader if args.pipeline == "dataloader" else pipeline_ltcil
        print(json.dumps(fn(args)), flush=True)
        return

    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    root = make_tree(args.work, args.classes, args.per_class, args.val_per_class, args.workers)
    print(json.dumps({"tree": str(root), "images": args.classes * (args.per_class + args.val_per_class),
                      "write_s": time.perf_counter() - t0}), flush=True)
    child = [sys.executable, __file__, "--root", str(root), "--work", str(args.work), "--workers", str(args.workers),
             "--device", args.device,
             "--threads", str(args.threads), "--batch-size", str(args.batch_size), "--batches", str(args.batches),
             "--pack-side", str(args.pack_side)]
    rows = []
    for name in ("dataloader", "stream", "packed"):
        row, peak = run_measured(child + ["--pipeline", name])
        row["peak_pss_gib"] = peak
        rows.append(row)
        print(json.dumps(row), flush=True)
    scale_rows = []
    for repeat in args.scales:
        row, peak = run_measured(child + ["--pipeline", "stream", "--repeat", str(repeat)])
        scale_rows.append({"repeat": repeat, "images": row["images"], "peak_pss_gib": peak,
                           "peak_rss_gib": row["peak_rss_gib"]})
        print(json.dumps(scale_rows[-1]), flush=True)
    e2e_rows = e2e(args, root, args.work) if args.e2e else []

    ref = rows[0]["images_per_s"]
    print(f"\n{args.workers} decoding processes, batch {args.batch_size}, {SIZE} px, {args.batches} batches")
    print("| pipeline | images/s | vs DataLoader | peak PSS GiB (sampled) | sum of peak RSS GiB |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['pipeline']} | {row['images_per_s']:.1f} | {row['images_per_s'] / ref:.2f}x | "
              f"{row['peak_pss_gib']:.2f} | {row['peak_rss_gib']:.2f} |")
    if rows[2].get("cache_build_s"):
        print(f"packed cache build: {rows[2]['cache_build_s']:.1f} s for {rows[2]['images']} images")
    for key in ("peak_pss_gib", "peak_rss_gib"):
        lo, hi = min(r[key] for r in scale_rows), max(r[key] for r in scale_rows)
        sizes = ", ".join(f"{r['images']:,} images {r[key]:.3f}" for r in scale_rows)
        print(f"streamed {key} by dataset size: {sizes} (spread {100 * (hi / lo - 1):.1f}%)")
    for row in e2e_rows:
        print(f"e2e {row['e2e']}: accuracy {row['accuracy']} nme {row['nme']} peak PSS {row.get('peak_pss_gib')} GiB")


if __name__ == "__main__":
    main()

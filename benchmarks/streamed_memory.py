"""Where a streamed run's memory goes (issue 32 item 3): peak resident memory of a streamed Tiny-ImageNet-shaped
run by number of tasks, split into the main process and its decoding workers, and the main process's peak in each
phase (loading, training each task, the rest of each task: herding, evaluation, checkpoint), then the same run in
memory and at other batch sizes to tell the data path's share from training's.

Writes a tree with Tiny-ImageNet's layout first (`train/<wnid>/images/<wnid>_<i>.JPEG`, a flat `val/images` with
`val/val_annotations.txt`, `wnids.txt`; 64 px JPEGs, `--classes` x `--per-class`), then runs
`ltcil run imagelist_example data.root=TREE data.image_size=64 data.storage=stream scenario.initial=20
scenario.increment=20 scenario.max_tasks=T train.epochs=1`, as the issue did, sampling /proc every 50 ms.

    python benchmarks/streamed_memory.py --work /tmp/ltcil_tiny --per-class 50 --tasks 4
Prints one JSON line per run and a summary table. Not run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _write_class(job) -> list[str]:
    from PIL import Image

    root, c, count, val = job
    rng = np.random.default_rng(c)
    base = rng.integers(0, 256, (3,))
    wnid = f"n{c:08d}"
    folder = root / "train" / wnid / "images"
    folder.mkdir(parents=True, exist_ok=True)

    def image() -> "Image.Image":
        low = np.clip(base + rng.normal(0, 60, (4, 4, 3)), 0, 255).astype(np.uint8)
        img = np.asarray(Image.fromarray(low).resize((64, 64), Image.BICUBIC), dtype=np.float32)
        return Image.fromarray(np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8))

    for i in range(count):
        image().save(folder / f"{wnid}_{i}.JPEG", quality=90)
    lines = []
    for i in range(val):
        name = f"val_{c * val + i}.JPEG"
        image().save(root / "val" / "images" / name, quality=90)
        lines.append(f"{name}\t{wnid}\t0\t0\t63\t63\n")
    return lines


def make_tree(work: Path, classes: int, per_class: int, val: int) -> Path:
    root = work / f"tiny_{classes}x{per_class}"
    if (root / "wnids.txt").exists():
        return root
    (root / "val" / "images").mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        lines = list(pool.map(_write_class, [(root, c, per_class, val) for c in range(classes)]))
    (root / "val" / "val_annotations.txt").write_text("".join(line for part in lines for line in part))
    (root / "wnids.txt").write_text("".join(f"n{c:08d}\n" for c in range(classes)))  # written last: the marker
    return root


def _children(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    kids = [int(c) for c in fh.read().split()]
                    out.extend(kids)
                    todo.extend(kids)
        except OSError:
            pass
    return out


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def _phase(events: Path) -> str:
    """The phase the run is in, from its events.jsonl: load, task N train, task N after training (herding,
    evaluation, checkpoint), results (writing results.json at the end)."""
    try:
        lines = events.read_text().splitlines()
    except OSError:
        return "load"
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    tasks = next((e["num_tasks"] for e in events if e.get("event") == "start"), None)
    for e in reversed(events):
        kind = e.get("event")
        if kind == "start":
            return "task 1 train"
        if kind == "epoch":
            return f"task {e['task'] + 1} after training"
        if kind == "task":
            return "results" if e["task"] + 1 == tasks else f"task {e['task'] + 2} train"
    return "load"


def measure(cmd: list[str], run: Path, env: dict) -> dict:
    """Run `cmd`; peak RSS of the main process by phase and the peak of the sum over its decoding workers."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    by_phase: dict[str, int] = {}
    workers_peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            phase = _phase(run / "events.jsonl")
            by_phase[phase] = max(by_phase.get(phase, 0), _rss_kib(proc.pid))
            workers_peak[0] = max(workers_peak[0], sum(_rss_kib(p) for p in _children(proc.pid)))
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    thread.start()
    proc.wait()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    gib = {k: round(v / 2**20, 3) for k, v in by_phase.items()}
    return {"main_peak_gib": max(gib.values()), "main_by_phase_gib": gib,
            "workers_peak_gib": round(workers_peak[0] / 2**20, 3), "wall_s": round(time.perf_counter() - start, 1),
            "accuracy": json.loads((run / "results.json").read_text())["accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ltcil_tiny"))
    ap.add_argument("--classes", type=int, default=200)
    ap.add_argument("--per-class", type=int, default=500, help="training images per class (Tiny-ImageNet: 500)")
    ap.add_argument("--val-per-class", type=int, default=50)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[32], help="also these batch sizes, 1 task")
    ap.add_argument("--memory", action="store_true", help="also data.storage=memory, 1 task")
    ap.add_argument("--set", nargs="*", default=[], help="more key=value overrides for every run")
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    root = make_tree(args.work, args.classes, args.per_class, args.val_per_class)
    print(json.dumps({"tree": str(root), "write_s": round(time.perf_counter() - t0, 1)}), flush=True)
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src"), "LTCIL_CACHE": str(args.work / "cache")}
    base = [sys.executable, "-m", "ltcil", "run", "imagelist_example", f"data.root={root}", "data.image_size=64",
            "scenario.initial=20", "scenario.increment=20", "train.epochs=1", "--quiet", "log.report=never",
            *args.set, "--force"]
    runs = [("stream", args.tasks, [])]
    runs += [(f"stream, batch {b}", 1, [f"train.batch_size={b}"]) for b in args.batch_sizes]
    if args.memory:
        runs.append(("memory", 1, ["data.storage=memory"]))
    rows = []
    for name, tasks, extra in runs:
        storage = [] if any(e.startswith("data.storage") for e in extra) else ["data.storage=stream"]
        run = args.work / f"run_{len(rows)}"
        row = {"run": name, "tasks": tasks,
               **measure(base + storage + [f"scenario.max_tasks={tasks}", *extra, "--out", str(run)], run, env)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    print("\n| run | tasks | main process peak GiB | decoding workers peak GiB (sum) | wall s |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['run']} | {row['tasks']} | {row['main_peak_gib']:.2f} | {row['workers_peak_gib']:.2f} | "
              f"{row['wall_s']:.0f} |")
    print("\nmain process peak by phase (first run):")
    for phase, gib in rows[0]["main_by_phase_gib"].items():
        print(f"  {phase}: {gib:.2f} GiB")


if __name__ == "__main__":
    main()

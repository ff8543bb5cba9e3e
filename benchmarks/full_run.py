"""A full published schedule end to end, with accuracy against the published figure and wall time: by
default iCaRL on CIFAR-100 B0-Inc10 with PyCIL's schedule (200 + 9 x 170 epochs), a GPU job.

    python benchmarks/full_run.py --data-root ../shared/data                      # GPU: the whole schedule
    python benchmarks/full_run.py --data-root ../shared/data --out runs/full_icarl  # resumes if killed
    python benchmarks/full_run.py --config quickstart_digits --published 0          # a CPU smoke run
    python benchmarks/full_run.py --data-root ../shared/data --set train.epochs=1 train.first_task.epochs=1

Prints one JSON line per task (phase times, training images/s) and a summary line: average incremental
accuracy and its gap to the published figure, wall time, training image-steps, peak GPU memory and peak RSS.
Not run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from ltcil.config import load_config
from ltcil.engine.runner import Experiment

# average incremental accuracy reported for the shipped full schedules (top-1, %)
PUBLISHED = {
    "icarl_resnet32_cifar100_b0inc10_pycil": 64.4,  # PyCIL's reproduction of iCaRL, B0-Inc10
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="icarl_resnet32_cifar100_b0inc10_pycil")
    parser.add_argument("--data-root", default=None, help="sets data.root")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: runs/full_<config>)")
    parser.add_argument("--published", type=float, default=None,
                        help="published average incremental accuracy to compare with (0: none)")
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides, key=value")
    args = parser.parse_args()

    overrides = (["data.root=" + args.data_root] if args.data_root else []) + ["train.progress=false", *args.set]
    cfg = load_config(args.config, overrides)
    out = args.out or Path("runs") / f"full_{Path(args.config).stem}"
    published = PUBLISHED.get(Path(args.config).stem) if args.published is None else (args.published or None)

    start = time.perf_counter()
    exp = Experiment(cfg, out, progress=False)
    resumed = exp.restore()  # a killed run continues after its last finished task
    if exp.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(exp.device)
    results = exp.run()
    wall = time.perf_counter() - start

    for timing in results["timing"]:
        row = {"task": timing["task"] + 1, **{k: timing.get(k) for k in ("begin", "train", "end", "eval")},
               "train_images": timing["train_images"],
               "train_images_per_s": timing["train_images"] / timing["train"] if timing["train"] else None}
        print(json.dumps(row), flush=True)
    aia = results["average_incremental_accuracy"]
    summary = {
        "config": args.config, "overrides": overrides, "run_dir": str(out), "resumed": resumed,
        "average_incremental_accuracy": aia, "last_accuracy": results["last_accuracy"],
        "published": published, "gap_to_published": None if published is None else aia - published,
        "wall_s": wall, "train_s": sum(t["train"] for t in results["timing"]),
        "train_image_steps": sum(t["train_images"] for t in results["timing"]),
        "device": str(exp.device),
        "gpu": torch.cuda.get_device_name(exp.device) if exp.device.type == "cuda" else None,
        "peak_gpu_mb": torch.cuda.max_memory_allocated(exp.device) / 2**20 if exp.device.type == "cuda" else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": exp.threads, "torch": torch.__version__,
    }
    print(json.dumps(summary), flush=True)
    print(f"\naverage incremental accuracy {aia:.2f}"
          + ("" if published is None else f" (published {published:.2f}, gap {aia - published:+.2f})")
          + f", last {results['last_accuracy']:.2f}; wall {wall:.0f} s"
          + (" since resuming" if resumed else "") + f"; {summary['train_image_steps']:,} training image-steps on "
          f"{summary['gpu'] or summary['device']}")


if __name__ == "__main__":
    main()

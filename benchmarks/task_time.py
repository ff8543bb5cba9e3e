"""Wall time and peak memory of incremental tasks of iCaRL and BiC, by phase: begin (teacher copy, head
growth), train (epochs), end (herding / exemplar selection, class means, BiC's correction stage) and eval
(NME and linear predictions on every seen class's test images).

    python benchmarks/task_time.py --data-root ../shared/data --epochs 1 --tasks 2
    python benchmarks/task_time.py --synthetic --epochs 1 --tasks 3      # no files needed

Runs each method's CIFAR-100 B0-Inc10 config (or synthetic data of the same shape) for `--tasks` tasks and
prints one JSON line per task and a table. Not run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

from ltcil.config import load_config
from ltcil.engine.runner import Experiment

CONFIGS = {"icarl": "icarl_resnet32_cifar100_b0inc10", "bic": "bic_resnet32_cifar100_b0inc10_short"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--synthetic", action="store_true", help="32 px synthetic data, 100 classes x 500 images")
    parser.add_argument("--methods", nargs="+", default=["icarl", "bic"], choices=sorted(CONFIGS))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=2, help="tasks to run (the last ones are incremental)")
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides")
    args = parser.parse_args()

    rows = []
    for method in args.methods:
        data = (["data.name=synthetic", "data.num_classes=100", "data.images_per_class=500", "data.image_size=32"]
                if args.synthetic else [f"data.root={args.data_root}"])
        order = "scenario.order=natural" if args.synthetic else None
        overrides = [*data, *([order] if order else []), f"train.epochs={args.epochs}", "train.first_task.epochs=0",
                     "train.progress=false", *args.set]
        cfg = load_config(CONFIGS[method], overrides)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            exp = Experiment(cfg, tmp, progress=False, log=lambda *_: None)
            load = time.perf_counter() - start
            exp.scenario.tasks = exp.scenario.tasks[: args.tasks]  # only the first tasks
            exp.run()
        for timing in exp.timing:
            row = {"method": method, "task": timing["task"] + 1, "load_s": load,
                   **{k: timing.get(k) for k in ("begin", "train", "end", "eval")},
                   "train_images": timing["train_images"],
                   "train_images_per_s": timing["train_images"] / timing["train"] if timing["train"] else None,
                   "peak_rss_mb_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "threads": exp.threads, "device": str(exp.device)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\n{'method':8s} {'task':>4s} {'begin s':>8s} {'train s':>8s} {'img/s':>7s} {'end s':>7s} {'eval s':>7s} "
          f"{'peak RSS MB':>12s}")
    for r in rows:
        print(f"{r['method']:8s} {r['task']:4d} {r['begin']:8.2f} {r['train']:8.1f} {r['train_images_per_s']:7.0f} "
              f"{r['end']:7.2f} {r['eval']:7.2f} {r['peak_rss_mb_so_far']:12.0f}")


if __name__ == "__main__":
    main()

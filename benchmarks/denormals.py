"""Do real CPU runs meet denormal floats? The same run twice, with denormals kept (IEEE default) and flushed to
zero (`torch.set_flush_denormal(True)`), alone on the machine, one after the other: images/s of every epoch (a
run that fits its data drives small gradients towards denormals, which would show as late epochs slower than
early ones in the kept run only), whole-run training time, and the accuracy each reaches.

    python benchmarks/denormals.py --data-root ../shared/data                        # iCaRL's first task, 40 epochs
    python benchmarks/denormals.py --config quickstart_digits --set train.epochs=60   # any config and overrides

One JSON line per run ({"flush": ..., "epoch_images_per_s": [...], "train_s", "accuracy"}), then a comparison.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from ltcil.config import load_config
from ltcil.engine.runner import Experiment

DEFAULT = ["scenario.max_tasks=1", "train.first_task.epochs=40", "train.first_task.milestones=[20,30]",
           "log.report=never", "train.progress=false"]


def one_run(config: str, overrides: list, flush: bool, work: Path) -> dict:
    if not torch.set_flush_denormal(flush) and flush:
        raise SystemExit("this CPU cannot flush denormals (no SSE3): nothing to compare")
    try:
        start = time.perf_counter()
        exp = Experiment(load_config(config, overrides), work / f"flush_{flush}", progress=False)
        results = exp.run()
        wall = time.perf_counter() - start
    finally:
        torch.set_flush_denormal(False)
    events = [json.loads(line) for line in (work / f"flush_{flush}" / "events.jsonl").read_text().splitlines()]
    epochs = [e for e in events if e.get("event") == "epoch"]
    return {"flush": flush, "epoch_images_per_s": [round(e["images_per_second"], 1) for e in epochs],
            "final_losses": epochs[-1]["losses"] if epochs else None,
            "train_s": round(sum(e["seconds"] for e in epochs), 1), "wall_s": round(wall, 1),
            "accuracy": results["accuracy"], "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="icarl_resnet32_cifar100_b0inc10_pycil")
    p.add_argument("--data-root", default=None, help="sets data.root")
    p.add_argument("--set", nargs="*", default=None, help=f"overrides (default: {' '.join(DEFAULT)})")
    args = p.parse_args()
    overrides = (["data.root=" + args.data_root] if args.data_root else []) + (
        DEFAULT if args.set is None else args.set)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for flush in (False, True):
            rows.append(one_run(args.config, overrides, flush, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    kept, flushed = rows
    n = max(1, len(kept["epoch_images_per_s"]) // 5)
    for row in rows:
        speeds = row["epoch_images_per_s"]
        print(f"flush={str(row['flush']):5s}  first {n} epochs {sum(speeds[:n]) / n:7.1f} images/s, last {n} "
              f"{sum(speeds[-n:]) / n:7.1f}; training {row['train_s']:.1f} s; accuracy {row['accuracy']}")
    print(f"flushing: training time x{flushed['train_s'] / kept['train_s']:.3f}")


if __name__ == "__main__":
    main()

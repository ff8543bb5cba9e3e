"""Accuracy and wall time of several runs side by side (e.g. methods on one scenario).

    python benchmarks/compare_methods.py --out runs/bench_cifar \
        --runs finetune_resnet32_cifar100_b0inc10_short lwf_resnet32_cifar100_b0inc10_short \
               icarl_resnet32_cifar100_b0inc10_short bic_resnet32_cifar100_b0inc10_short \
        --set data.root=../shared/data train.epochs=2
    python benchmarks/compare_methods.py --out runs/bench_digits --runs quickstart_digits \
        --methods finetune lwf icarl bic joint

Prints one JSON line per run (machine-readable) and a table at the end. Not run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from ltcil.config import load_config
from ltcil.engine.runner import Experiment, prepare_run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_cifar"))
    parser.add_argument("--runs", nargs="+", required=True, help="shipped config names or YAML paths")
    parser.add_argument("--set", nargs="*", default=[], help="overrides applied to every run")
    parser.add_argument("--methods", nargs="*", default=[], help="run each config once per method.name")
    args = parser.parse_args()

    rows = []
    jobs = [(name, m) for name in args.runs for m in (args.methods or [None])]
    for name, method in jobs:
        extra = [f"method.name={method}"] if method else []
        cfg = load_config(name, ["train.progress=false", *args.set, *extra])
        label = Path(name).stem + (f"[{method}]" if method else "")
        run_dir = args.out / label.replace("[", "_").replace("]", "")
        prepare_run_dir(run_dir, force=True)
        start = time.perf_counter()
        results = Experiment(cfg, run_dir, progress=False).run()
        wall = time.perf_counter() - start
        row = {
            "run": label, "method": cfg.method["name"], "epochs": cfg.train.epochs,
            "average_incremental_accuracy": results["average_incremental_accuracy"],
            "last_accuracy": results["last_accuracy"], "forgetting": results["forgetting"],
            "accuracy": results["accuracy"], "wall_seconds": wall,
            "train_seconds": sum(t["train"] for t in results["timing"]),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "overrides": args.set,
        }
        for key in ("accuracy_linear", "accuracy_before_correction"):
            if key in results:
                row[key] = results[key]
        print(json.dumps(row), flush=True)
        rows.append(row)

    print(f"\n{'run':45s} {'avg inc':>8s} {'last':>6s} {'forget':>7s} {'wall s':>8s}")
    for r in rows:
        forget = "-" if r["forgetting"] is None else f"{r['forgetting']:.1f}"
        print(f"{r['run']:45s} {r['average_incremental_accuracy']:8.2f} {r['last_accuracy']:6.2f} {forget:>7s} "
              f"{r['wall_seconds']:8.0f}")


if __name__ == "__main__":
    main()

"""Accuracy and wall time of several runs side by side (e.g. methods on one scenario).

    python benchmarks/compare_methods.py --out runs/bench_cifar \
        --runs finetune_resnet32_cifar100_b0inc10_short lwf_resnet32_cifar100_b0inc10_short \
               icarl_resnet32_cifar100_b0inc10_short bic_resnet32_cifar100_b0inc10_short \
        --set data.root=../shared/data train.epochs=2
    python benchmarks/compare_methods.py --out runs/bench_digits --runs quickstart_digits \
        --methods finetune lwf icarl bic joint
    python benchmarks/compare_methods.py --out runs/bench_cifar_lt --runs crt_resnet32_cifar100lt_if100_short \
        ldam_drw_resnet32_cifar100lt_if100_short balanced_softmax_resnet32_cifar100lt_if100_short \
        sbcl_resnet32_cifar100lt_if100_short --set data.root=../shared/data
    python benchmarks/compare_methods.py --out runs/bench_r40 --set data.root=../shared/data --runs \
        proto_lt_protonet_cifar100_r40_5x20_short proto_lt_protonet_cifar100_r40_5x20_short@method.mix=false

A run is a config name with optional overrides of its own after "@" (NAME@key=value@key=value), for
ablations of one config; --set applies to every run.

Prints one JSON line per run (machine-readable) and a table at the end. Not run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from ltcil.config import load_config
from ltcil.engine import run_folder
from ltcil.engine.runner import Experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_cifar"))
    parser.add_argument("--runs", nargs="+", required=True,
                        help="shipped config names or YAML paths, each optionally followed by @key=value overrides")
    parser.add_argument("--set", nargs="*", default=[], help="overrides applied to every run")
    parser.add_argument("--methods", nargs="*", default=[], help="run each config once per method.name")
    args = parser.parse_args()

    rows = []
    jobs = [(name, m) for name in args.runs for m in (args.methods or [None])]
    for spec, method in jobs:
        name, *own = spec.split("@")
        extra = [f"method.name={method}"] if method else []
        cfg = load_config(name, ["train.progress=false", *args.set, *own, *extra])
        label = Path(name).stem + "".join(f"@{o}" for o in own) + (f"[{method}]" if method else "")
        run_dir = args.out / label.replace("[", "_").replace("]", "").replace("@", "_").replace("=", "-")
        if run_folder.check(run_dir, force=True):
            run_folder.clear(run_dir)
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
            "overrides": [*args.set, *own],
        }
        for key in ("accuracy_linear", "accuracy_before_correction", "tau", "classifier_selection"):
            if key in results:
                row[key] = results[key]
        if "shot_accuracy" in results:  # long-tailed runs: every classifier's all / many / medium / few, last task
            row["last_by_classifier"] = {
                name: {"all": results.get(f"accuracy_{name}", results["accuracy"])[-1],
                       **{g: series[-1] for g, series in groups.items()}}
                for name, groups in results["shot_accuracy"].items()
            }
        print(json.dumps(row), flush=True)
        rows.append(row)

    print(f"\n{'run':60s} {'avg inc':>8s} {'last':>6s} {'forget':>7s} {'wall s':>8s}")
    for r in rows:
        forget = "-" if r["forgetting"] is None else f"{r['forgetting']:.1f}"
        print(f"{r['run']:60s} {r['average_incremental_accuracy']:8.2f} {r['last_accuracy']:6.2f} {forget:>7s} "
              f"{r['wall_seconds']:8.0f}")
    print(f"\n{'run':60s} accuracy after each task")
    for r in rows:
        print(f"{r['run']:60s} " + " ".join(f"{a:6.2f}" for a in r["accuracy"]))
    shots = [(r["run"], name, v) for r in rows for name, v in r.get("last_by_classifier", {}).items()]
    if shots:
        def fmt(v):
            return "     -" if v is None else f"{v:6.2f}"

        print(f"\n{'run':60s} {'classifier':>10s} {'all':>6s} {'many':>6s} {'medium':>6s} {'few':>6s}")
        for run, name, v in shots:
            print(f"{run:60s} {name:>10s} {fmt(v['all'])} {fmt(v['many'])} {fmt(v['medium'])} {fmt(v['few'])}")


if __name__ == "__main__":
    main()

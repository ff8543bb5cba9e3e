"""How time per task and memory grow with the number of seen classes, up to an ImageNet-1000-sized label
space, on synthetic data (no files): herding, NME class means, evaluation and the growing head must scale
linearly in the images they process, so the time per image of each phase stays flat as classes grow.

    python benchmarks/scaling.py --classes 1000 --increment 100 --per-class 20 --method icarl

One JSON line per task, then a table: seconds per phase and per image processed (train: images x epochs;
end: the new classes' images, embedded for herding; eval: test images of all seen classes), peak RSS.
Not run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile

from ltcil.config import load_config
from ltcil.engine.runner import Experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--increment", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=20, help="training images per class (test: a quarter)")
    parser.add_argument("--size", type=int, default=16, help="image size in pixels")
    parser.add_argument("--method", default="icarl")
    parser.add_argument("--backbone", default="resnet20")
    parser.add_argument("--memory-per-class", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()

    overrides = [
        "data.name=synthetic", f"data.num_classes={args.classes}", f"data.images_per_class={args.per_class}",
        f"data.image_size={args.size}", f"scenario.increment={args.increment}", f"method.name={args.method}",
        f"backbone.name={args.backbone}", "memory.size=0", f"memory.per_class={args.memory_per_class}",
        f"train.epochs={args.epochs}", "train.batch_size=128", "train.progress=false",
    ]
    cfg = load_config(None, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        exp = Experiment(cfg, tmp, progress=False, log=lambda *_: None)
        exp.run()
        rows = []
        seen_test = 0
        for timing, task in zip(exp.timing, exp.scenario.tasks):
            seen = exp.scenario.seen_classes(task.index)
            seen_test += len(task.test_indices)
            row = {"task": task.index + 1, "seen_classes": seen, **{k: timing[k] for k in ("begin", "train", "end",
                   "eval")}, "train_images": timing["train_images"], "new_images": len(task.train_indices),
                   "eval_images": seen_test}
            row["train_ms_per_image"] = 1000 * row["train"] / max(1, row["train_images"])
            row["end_ms_per_image"] = 1000 * row["end"] / max(1, row["new_images"])
            row["eval_ms_per_image"] = 1000 * row["eval"] / max(1, seen_test)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(f"\n{'task':>4s} {'classes':>7s} {'train s':>8s} {'ms/img':>7s} {'end s':>7s} {'ms/img':>7s} "
          f"{'eval s':>7s} {'ms/img':>7s}")
    for r in rows:
        print(f"{r['task']:4d} {r['seen_classes']:7d} {r['train']:8.2f} {r['train_ms_per_image']:7.3f} "
              f"{r['end']:7.2f} {r['end_ms_per_image']:7.3f} {r['eval']:7.2f} {r['eval_ms_per_image']:7.3f}")


if __name__ == "__main__":
    main()

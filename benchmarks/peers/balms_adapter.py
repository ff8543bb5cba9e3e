"""Run jiawei-ren/BalancedMetaSoftmax-Classification's main.py (Ren et al., NeurIPS 2020) from an unmodified
checkout, with run-time adaptations only, on CIFAR-100-LT and write what it measured as JSON. Runs under the
peer's own venv (it imports torchvision, PyYAML, scikit-learn); ltcil is not imported here.

    python balms_adapter.py --repo /path/to/BalancedMetaSoftmax-Classification --loss balanced_softmax \
        --epochs 6 --warmup 2 --seed 0 --data ../shared/data --out result.json

The run is the released CIFAR-100-LT config (config/CIFAR100_LT/{balanced_softmax,softmax}_imba200.yaml:
ResNet-32 + linear classifier, batch 512, SGD momentum 0.9, weight decay 5e-4, base lr 0.05 warmed up to 0.1 then
a cosine to 0, crop + flip + AutoAugment (CIFAR-10 policy) + Cutout 16) at imbalance factor 100 instead of 200.

Adaptations, all applied in memory or in a copy of the config (nothing in the checkout is edited):
- schedule: the config counts iterations (13,000, warm-up 800) and main.py turns them into epochs of
  ceil(images / 512) loader batches; --epochs and --warmup set them as whole epochs (the code asserts a warm-up
  of at least 2 epochs). Each epoch trains int(images / 512) steps, as released (the trailing partial batch is
  not used).
- images: IMBALANCECIFAR100 draws each class's images with numpy's global generator, unseeded; here it is seeded
  with 0 right before the draw, which keeps the same images as LDAM-DRW's IMBALANCECIFAR100 (numpy seed 0, the
  same per-class shuffle) and ltcil's `scenario.longtail_images: ldam_drw`; --scenario-only prints them.
- seeds: the released code sets none; --seed seeds random, numpy and torch after the images are drawn.
- data: torchvision's CIFAR-100 constructor reads the shared archive (facil_adapter.patch_cifar).
- device: `.cuda()` of tensors and modules returns them unchanged when no GPU is present.
- library drift: PyYAML >= 6 needs a Loader (main.py's `yaml.load(f)`: the FullLoader it defaulted to);
  numpy >= 1.24 has no `np.int` (autoaugment.py's posterize levels: the builtin int it aliased).
- workers: 0 (this machine's 2 cores are the training threads').
- results: each epoch's top-1 on the set main.py validates on (CIFAR: the test set; the released code keeps the
  best of them, which selects on the test set; the parity compares the last) with its many / medium / few-shot
  split (more than 100, 20-100, fewer than 20 training images).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import runpy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from facil_adapter import patch_cifar  # noqa: E402  (the same archive reader, no ltcil import)

START = time.perf_counter()
CONFIGS = {"balanced_softmax": "balanced_softmax_imba200.yaml", "softmax": "softmax_imba200.yaml"}
IMAGES = 10847  # IMBALANCECIFAR100 at IF 100: sum of int(500 * 0.01^(i / 99))
BATCHES = math.ceil(IMAGES / 512)  # len(DataLoader) main.py divides the iterations by


def patch_device() -> None:
    import torch

    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
        torch.nn.Module.cuda = lambda self, *a, **k: self


def patch_drift() -> None:
    import yaml

    load = yaml.load
    yaml.load = lambda stream, Loader=yaml.FullLoader: load(stream, Loader=Loader)
    if not hasattr(np, "int"):
        np.int = int


def seed_images(run_seed: int) -> None:
    """IMBALANCECIFAR100's draw from numpy's generator seeded with 0 (LDAM-DRW's images); numpy then continues
    from the run's seed."""
    from data import ImbalanceCIFAR

    draw = ImbalanceCIFAR.IMBALANCECIFAR10.gen_imbalanced_data

    def seeded(self, img_num_per_cls):
        np.random.seed(0)
        draw(self, img_num_per_cls)
        np.random.seed(run_seed)

    ImbalanceCIFAR.IMBALANCECIFAR10.gen_imbalanced_data = seeded


def config(repo: Path, loss: str, epochs: int, warmup: int, work: Path) -> Path:
    """The released config at IF 100 with the parity's schedule, its files named by absolute paths."""
    import yaml

    cfg = yaml.safe_load((repo / "config" / "CIFAR100_LT" / CONFIGS[loss]).read_text())
    cfg["training_opt"].update(cifar_imb_ratio=100, num_iterations=epochs * BATCHES, num_workers=0,
                               log_dir=str(work / "logs"))
    cfg["warmup_iterations"] = warmup * BATCHES
    for net in cfg["networks"].values():
        net["def_file"] = str(repo / net["def_file"])
    for crit in cfg["criterions"].values():
        crit["def_file"] = str(repo / crit["def_file"])
        if crit.get("loss_params", {}).get("freq_path"):  # written by the dataset into the working folder
            crit["loss_params"]["freq_path"] = str(work / "cls_freq" / "CIFAR-100-LT_IMBA100.json")
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def record_eval(out: dict) -> None:
    """Each call of model.eval: main.py's top-1 and its many / medium / few split."""
    import run_networks

    evaluate = run_networks.model.eval

    def recorded(self, phase="val", *a, **k):
        rsl = evaluate(self, phase, *a, **k)
        out.setdefault(phase, []).append({"top1": 100 * float(self.eval_acc_mic_top1),
                                          "many": 100 * float(self.many_acc_top1),
                                          "medium": 100 * float(self.median_acc_top1),
                                          "few": 100 * float(self.low_acc_top1)})
        return rsl

    run_networks.model.eval = recorded


def scenario_only(out_path: Path) -> None:
    """What the reference trains on: IMBALANCECIFAR100 as main.py builds it, images replaced by indices."""
    import hashlib

    from data.ImbalanceCIFAR import IMBALANCECIFAR100

    ds = IMBALANCECIFAR100("train", imbalance_ratio=100, root="./dataset/CIFAR100")
    kept = np.sort(np.asarray(ds.data)[:, 0, 0, 0].astype(np.int64))
    out_path.write_text(json.dumps({"train_per_class": ds.img_num_per_cls, "train_total": int(len(kept)),
                                    "train_sha256": hashlib.sha256(kept.tobytes()).hexdigest()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True, help="checkout of BalancedMetaSoftmax-Classification")
    p.add_argument("--loss", default="balanced_softmax", choices=sorted(CONFIGS))
    p.add_argument("--epochs", type=int, default=591, help="epochs (the released 13,000 iterations: 591)")
    p.add_argument("--warmup", type=int, default=37, help="the lr reaches its warm-up value 0.1 at this 1-based "
                                                          "epoch (released: 800 iterations, 37 epochs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, required=True, help="folder with cifar-100-python.tar.gz")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--scenario-only", action="store_true")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    if not (a.repo / "main.py").exists() or not (a.repo / "run_networks.py").exists():
        raise SystemExit(f"--repo: {a.repo} is not a BalancedMetaSoftmax-Classification checkout")
    if not 2 <= a.warmup < a.epochs:
        raise SystemExit(f"--warmup: {a.warmup} must be in [2, epochs): the released scheduler asserts >= 2")
    repo, archive, out_path = a.repo.resolve(), (a.data / "cifar-100-python.tar.gz").resolve(), a.out.resolve()
    work = Path(tempfile.mkdtemp(prefix="balms_"))
    os.chdir(work)  # the dataset writes cls_freq/ into the working folder
    sys.path.insert(0, str(repo))
    patch_cifar(archive, index_images=a.scenario_only)
    import torchvision

    # IMBALANCECIFAR100 subclasses IMBALANCECIFAR10 (torchvision's CIFAR10): both read CIFAR-100's archive
    torchvision.datasets.CIFAR10.__init__ = torchvision.datasets.CIFAR100.__init__
    patch_device()
    patch_drift()
    seed_images(a.seed)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.scenario_only:
        scenario_only(out_path)
        return
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    seen: dict = {}
    record_eval(seen)
    sys.argv = ["main.py", "--cfg", str(config(repo, a.loss, a.epochs, a.warmup, work))]
    runpy.run_path(str(repo / "main.py"), run_name="__main__")
    last = seen["val"][-1]
    result = {"repo": str(repo), "loss": a.loss, "seed": a.seed, "epochs": a.epochs, "warmup": a.warmup,
              "tasks": [{"cnn": last["top1"]}], "top1_per_epoch": [e["top1"] for e in seen["val"]],
              "best_top1": max(e["top1"] for e in seen["val"]),
              "groups": {k: last[k] for k in ("many", "medium", "few")},
              "commit": (repo / ".git" / "HEAD").read_text().strip() if (repo / ".git" / "HEAD").exists() else None,
              "seconds": time.perf_counter() - START}
    out_path.write_text(json.dumps(result))


if __name__ == "__main__":
    main()

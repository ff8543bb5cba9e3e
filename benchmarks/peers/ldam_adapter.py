"""Run kaidic/LDAM-DRW's cifar_train.py (Cao et al., NeurIPS 2019) from an unmodified checkout, with run-time
adaptations only, on CIFAR-100-LT and write what it measured as JSON. Runs under the peer's own venv (it imports
torchvision, tensorboardX and scikit-learn); ltcil is not imported here.

    python ldam_adapter.py --repo /path/to/LDAM-DRW --loss LDAM --rule DRW --epochs 5 --warmup 1 \
        --milestones 4 5 --drw 4 --seed 0 --data ../shared/data --out result.json

The run is the released CIFAR recipe (`--dataset cifar100 --imb_type exp --imb_factor 0.01 --rand_number 0`:
ResNet-32, SGD lr 0.1, momentum 0.9, weight decay 2e-4, batch 128, IMBALANCECIFAR100's numpy-seed-0 images),
with the loss (CE | LDAM | Focal) and train rule (None | Reweight | DRW | Resample) asked for.

Adaptations, all applied in memory (nothing in the checkout is edited):
- data: torchvision's CIFAR-10/100 constructors read the shared archive's pickles (facil_adapter.patch_cifar)
  instead of checking the official archive's md5 and downloading.
- device: `.cuda()` returns the tensor and `torch.cuda.FloatTensor` is the CPU FloatTensor when no GPU is
  present (DataParallel already passes through on a CPU).
- schedule: the released schedule is written for 200 epochs (warm-up to epoch 5, lr x0.01 after 160, x0.0001
  after 180, DRW's class-balanced weights from epoch 160); a short run takes the same shape at --warmup,
  --milestones and --drw: `adjust_learning_rate` is replaced by the same rule at those epochs, and the literal
  `epoch // 160` of main_worker's DRW switch reads --drw (the function is compiled from its own source with that
  one expression replaced).
- workers: -j 0 (this machine's 2 cores are the training threads').
- --scenario-only: no training; the images IMBALANCECIFAR100 keeps (per-class counts and the SHA-256 of the sorted
  indices into the archive's training split) for tests/test_reference_scenarios.py's pin.
- results: each epoch's top-1 on the test set (the released code reports the best of them, which selects on the
  test set; the parity compares the last), and the last epoch's per-class accuracy, from the confusion matrix
  cifar_train.validate computes.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from facil_adapter import checkout_commit, patch_cifar  # noqa: E402  (the same archive reader, no ltcil import)

START = time.perf_counter()
DRW_SWITCH = "epoch // 160"  # main_worker's DRW index (betas [0, 0.9999] switched at epoch 160 of 200)


def patch_device() -> None:
    import torch

    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
        torch.cuda.FloatTensor = torch.FloatTensor


def short_schedule(module, lr: float, warmup: int, milestones: list[int], drw: int) -> None:
    """The released schedule's shape at a short run's epochs (see the module docstring)."""
    first, second = milestones

    def adjust_learning_rate(optimizer, epoch, args):  # the released rule with its constants as arguments
        epoch = epoch + 1
        if epoch <= warmup:
            value = args.lr * epoch / warmup
        elif epoch > second:
            value = args.lr * 0.0001
        elif epoch > first:
            value = args.lr * 0.01
        else:
            value = args.lr
        for group in optimizer.param_groups:
            group["lr"] = value

    module.adjust_learning_rate = adjust_learning_rate
    source = textwrap.dedent(inspect.getsource(module.main_worker))
    if source.count(DRW_SWITCH) != 1:
        raise SystemExit(f"{module.__file__}: main_worker does not hold `{DRW_SWITCH}` exactly once; "
                         "this adapter was written for commit 2536330")
    namespace = module.__dict__
    namespace["_PARITY_DRW_EPOCH"] = drw
    exec(compile(source.replace(DRW_SWITCH, "epoch // _PARITY_DRW_EPOCH"), module.__file__, "exec"), namespace)


def record_validation(module, out: dict) -> None:
    """Each epoch's top-1 (validate's return) and the last confusion matrix (validate's own)."""
    validate, confusion = module.validate, module.confusion_matrix

    def confusion_matrix(targets, preds, *a, **k):
        cf = confusion(targets, preds, *a, **k)
        out["confusion"] = cf
        return cf

    def validate_recorded(*a, **k):
        top1 = validate(*a, **k)
        out["top1"].append(float(top1))
        return top1

    module.confusion_matrix = confusion_matrix
    module.validate = validate_recorded


def scenario_only(out_path: Path) -> None:
    """What the reference trains on: IMBALANCECIFAR100 as cifar_train builds it, images replaced by indices."""
    import hashlib

    from imbalance_cifar import IMBALANCECIFAR100

    ds = IMBALANCECIFAR100(root="./data", imb_type="exp", imb_factor=0.01, rand_number=0, train=True)
    kept = np.sort(np.asarray(ds.data)[:, 0, 0, 0].astype(np.int64))
    out_path.write_text(json.dumps({"train_per_class": ds.get_cls_num_list(), "train_total": int(len(kept)),
                                    "train_sha256": hashlib.sha256(kept.tobytes()).hexdigest()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True, help="checkout of kaidic/LDAM-DRW (holds cifar_train.py)")
    p.add_argument("--loss", default="LDAM", choices=("CE", "LDAM", "Focal"))
    p.add_argument("--rule", default="DRW", choices=("None", "Reweight", "DRW", "Resample"))
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5, help="the lr reaches its base value at this epoch (1-based)")
    p.add_argument("--milestones", type=int, nargs=2, default=[160, 180], help="lr x0.01 after the first, "
                                                                                "x0.0001 after the second")
    p.add_argument("--drw", type=int, default=160, help="DRW's class-balanced weights from this epoch (0-based)")
    p.add_argument("--seed", type=int, default=0, help="--seed of cifar_train.py (random and torch)")
    p.add_argument("--data", type=Path, required=True, help="folder with cifar-100-python.tar.gz")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--scenario-only", action="store_true")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    if not (a.repo / "cifar_train.py").exists():
        raise SystemExit(f"--repo: {a.repo} is not an LDAM-DRW checkout (no cifar_train.py there)")
    if not 0 < a.drw <= a.epochs or a.epochs >= 2 * a.drw:  # epoch // drw must stay 0 or 1, as 200 // 160 does
        raise SystemExit(f"--drw: {a.drw} must be in (epochs / 2, epochs] for {a.epochs} epochs")
    repo, archive, out_path = a.repo.resolve(), (a.data / "cifar-100-python.tar.gz").resolve(), a.out.resolve()
    work = Path(tempfile.mkdtemp(prefix="ldam_"))
    os.chdir(work)  # the reference writes log/ and checkpoint/ in the working folder
    sys.path.insert(0, str(repo))
    patch_cifar(archive, index_images=a.scenario_only)
    import torchvision

    # IMBALANCECIFAR100 calls CIFAR10's constructor (its own base), the test set CIFAR100's: both read CIFAR-100
    torchvision.datasets.CIFAR10.__init__ = torchvision.datasets.CIFAR100.__init__
    patch_device()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.scenario_only:
        scenario_only(out_path)
        return
    import cifar_train

    short_schedule(cifar_train, 0.1, a.warmup, a.milestones, a.drw)
    seen: dict = {"top1": []}
    record_validation(cifar_train, seen)
    sys.argv = ["cifar_train.py", "--dataset", "cifar100", "--arch", "resnet32", "--loss_type", a.loss,
                "--train_rule", a.rule, "--imb_type", "exp", "--imb_factor", "0.01", "--rand_number", "0",
                "--epochs", str(a.epochs), "--seed", str(a.seed), "-j", "0", "--exp_str", f"parity_{a.seed}"]
    cifar_train.main()
    per_class = np.diag(seen["confusion"]) / seen["confusion"].sum(axis=1)
    counts = [int(500 * 0.01 ** (i / 99)) for i in range(100)]  # IMBALANCECIFAR100's images per class id
    groups = {"many": [c > 100 for c in counts], "medium": [20 <= c <= 100 for c in counts],
              "few": [c < 20 for c in counts]}
    result = {"repo": str(repo), "loss": a.loss, "rule": a.rule, "seed": a.seed, "epochs": a.epochs,
              "tasks": [{"cnn": seen["top1"][-1]}], "top1_per_epoch": seen["top1"], "best_top1": max(seen["top1"]),
              "per_class": [float(100 * v) for v in per_class],
              "groups": {k: float(100 * per_class[np.asarray(m)].mean()) for k, m in groups.items()},
              "commit": checkout_commit(repo),
              "seconds": time.perf_counter() - START}
    out_path.write_text(json.dumps(result))


if __name__ == "__main__":
    main()

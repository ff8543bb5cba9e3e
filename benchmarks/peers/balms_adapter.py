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
  numpy >= 1.24 has no `np.int` (autoaugment.py's posterize levels: the builtin int it aliased); torch >= 2.6
  loads only weights by default (stage 2 loads checkpoints with numpy scalars: weights_only=False, the old default).
- workers: 0 (this machine's 2 cores are the training threads').
- results: each epoch's top-1 on the set main.py validates on (CIFAR: the test set; the released code keeps the
  best of them, which selects on the test set; the parity compares the last) with its many / medium / few-shot
  split (more than 100, 20-100, fewer than 20 training images).

--decouple (with --loss softmax): Kang et al.'s stage 2 (ICLR 2020) from the same code base (this repository
forks facebookresearch/classifier-balancing): after the softmax stage 1, main.py runs again for cRT and for LWS
with the released stage-2 configs' settings (config/Places_LT/cls_crt.yaml, cls_lws.yaml: feature model fixed,
ClassAwareSampler with 4 images per class draw, CosineAnnealingLR to 0 stepped at each epoch's start, the
training augmentation; cRT re-initialises DotProductClassifier, LWS learns TauNormClassifier's per-class scales
on the stage-1 classifier) at the ImageNet-LT stage-2 values (batch 512, lr 0.2, weight decay 5e-4), then
main.py --test --save_feat and the released tau_norm.py print tau-norm's test accuracy at tau = 0, 0.1, ..., 2.
Further adaptations for stage 2:
- stage 2 starts from stage 1's last epoch (its latest_model_checkpoint.pth written as the state_dict_best that
  main.py loads; released: the best test-set epoch);
- CIFAR's `train_plain` split (IMBALANCECIFAR100 builds the test set for any phase but "train") is the long-tailed
  training set without augmentation, as for the other datasets: tau_norm.py reads its labels for the many /
  medium / few split;
- the released stage 2 leaves the fixed feature model in training mode (BatchNorm normalises with batch
  statistics and re-estimates its running statistics on the class-balanced batches); kept as released
  (--stage2-bn eval, a diagnostic, keeps stage 1's statistics instead).
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
from facil_adapter import checkout_commit, patch_cifar  # noqa: E402  (the same archive reader, no ltcil import)

START = time.perf_counter()
CONFIGS = {"balanced_softmax": "balanced_softmax_imba200.yaml", "softmax": "softmax_imba200.yaml"}
IMAGES = 10847  # IMBALANCECIFAR100 at IF 100: sum of int(500 * 0.01^(i / 99))
BATCHES = math.ceil(IMAGES / 512)  # len(DataLoader) main.py divides the iterations by
REPO = Path(".")  # the checkout (set by main)


def patch_device() -> None:
    import torch

    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
        torch.nn.Module.cuda = lambda self, *a, **k: self


def patch_drift() -> None:
    import yaml

    yaml_load = yaml.load
    yaml.load = lambda stream, Loader=yaml.FullLoader: yaml_load(stream, Loader=Loader)
    if not hasattr(np, "int"):
        np.int = int
    import torch

    torch_load = torch.load  # torch >= 2.6 loads weights only by default; the checkpoints hold numpy scalars too
    torch.load = lambda *a, **k: torch_load(*a, **{"weights_only": False, **k})


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
    """Each call of model.eval: main.py's top-1 and its many / medium / few split (a feature dump: nothing)."""
    import run_networks

    evaluate = run_networks.model.eval

    def recorded(self, phase="val", *a, **k):
        rsl = evaluate(self, phase, *a, **k)
        if k.get("save_feat"):
            return rsl
        out.setdefault(phase, []).append({"top1": 100 * float(self.eval_acc_mic_top1),
                                          "many": 100 * float(self.many_acc_top1),
                                          "medium": 100 * float(self.median_acc_top1),
                                          "few": 100 * float(self.low_acc_top1)})
        return rsl

    run_networks.model.eval = recorded


def plain_training_split() -> None:
    """IMBALANCECIFAR100's `train_plain`: the long-tailed training images with the test transform (released: the
    test set, since only phase "train" reads the training split)."""
    from data import ImbalanceCIFAR

    init = ImbalanceCIFAR.IMBALANCECIFAR10.__init__

    def patched(self, phase, *a, **k):
        if phase != "train_plain":
            return init(self, phase, *a, **k)
        init(self, "train", *a, **k)
        train_transform = self.transform
        self.transform = type(train_transform)([t for t in train_transform.transforms
                                                 if type(t).__name__ in ("ToTensor", "Normalize")])

    ImbalanceCIFAR.IMBALANCECIFAR10.__init__ = patched


def freeze_fixed_batchnorm() -> None:
    """--stage2-bn eval (a diagnostic, not the released behaviour): the fixed feature model runs in eval mode
    while stage 2 trains, so BatchNorm keeps stage 1's running statistics."""
    import run_networks

    forward = run_networks.model.batch_forward

    def patched(self, inputs, *a, phase="train", **k):
        if phase == "train" and self.config["networks"]["feat_model"].get("fix"):
            self.networks["feat_model"].eval()
        return forward(self, inputs, *a, phase=phase, **k)

    run_networks.model.batch_forward = patched


def run_main(cfg: dict, work: Path, name: str, seed: int, *extra: str) -> None:
    """main.py on `cfg` (written to work/name.yaml), python's, numpy's and torch's generators seeded first."""
    import torch
    import yaml

    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    sys.argv = ["main.py", "--cfg", str(path), *extra]
    runpy.run_path(str(REPO / "main.py"), run_name="__main__")


def last_epoch_as_best(log_dir: Path, out_dir: Path) -> Path:
    """Stage 1's last epoch as the state_dict_best stage 2 loads (released: its best test-set epoch)."""
    import torch

    final = torch.load(log_dir / "final_model_checkpoint.pth", map_location="cpu", weights_only=False)
    latest = torch.load(log_dir / "latest_model_checkpoint.pth", map_location="cpu", weights_only=False)
    final["state_dict_best"] = latest["state_dict"]
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(final, out_dir / "final_model_checkpoint.pth")
    return out_dir


def stage2_config(stage1: dict, kind: str, epochs: int, lr: float, model_dir: Path, work: Path) -> dict:
    """The stage-1 CIFAR config turned into the released stage-2 config of `kind` (crt | lws)."""
    import copy

    import yaml

    released = yaml.safe_load((REPO / "config" / "Places_LT" / f"cls_{kind}.yaml").read_text())
    cfg = copy.deepcopy(stage1)
    for key in ("warmup_iterations", "base_lr", "warmup_lr"):
        cfg.pop(key, None)
    cfg.update(coslr=released["coslr"], coslrwarmup=False, endlr=released["endlr"], shuffle=released["shuffle"],
               model_dir=str(model_dir))
    cfg["networks"]["feat_model"]["fix"] = released["networks"]["feat_model"]["fix"]
    clf = cfg["networks"]["classifier"]
    clf["def_file"] = str(REPO / released["networks"]["classifier"]["def_file"])
    clf["optim_params"] = {**released["networks"]["classifier"]["optim_params"], "lr": lr}
    sampler = dict(released["training_opt"]["sampler"], def_file=str(REPO / released["training_opt"]["sampler"]
                                                                      ["def_file"]))
    opt = cfg["training_opt"]
    opt.pop("num_iterations")
    opt.update(num_epochs=epochs, sampler=sampler, log_dir=str(work / kind))
    return cfg


def tau_norm_curve(stage1: dict, model_dir: Path, work: Path, seed: int) -> list:
    """main.py --test dumps the training and test features of stage 1's last model; the released tau_norm.py prints
    many / medium / few / mean-class top-1 for tau = 0, 0.1, ..., 2 (21 rows)."""
    import contextlib
    import io
    import shutil

    import yaml

    folder = work / "tau_norm"
    folder.mkdir()
    shutil.copy(model_dir / "final_model_checkpoint.pth", folder / "final_model_checkpoint.pth")
    cfg = yaml.safe_load(yaml.safe_dump(stage1))
    cfg["training_opt"]["log_dir"] = str(folder)
    for split in ("train_plain", "test"):
        run_main(cfg, work, f"dump_{split}", seed, "--test", "--model_dir", str(model_dir), "--save_feat", split)
    printed = io.StringIO()
    sys.argv = ["tau_norm.py", "--root", str(folder), "--type", "test"]
    with contextlib.redirect_stdout(printed):
        runpy.run_path(str(REPO / "tau_norm.py"), run_name="__main__")
    rows = [list(map(float, line.split())) for line in printed.getvalue().splitlines() if line.strip()]
    if len(rows) != 21 or any(len(r) != 4 for r in rows):
        raise SystemExit(f"tau_norm.py printed {len(rows)} rows, expected 21 of 4 numbers:\n{printed.getvalue()}")
    return [{"tau": round(0.1 * i, 1), "many": r[0], "medium": r[1], "few": r[2], "top1": r[3]}
            for i, r in enumerate(rows)]


def scenario_only(out_path: Path) -> None:
    """What the reference trains on: IMBALANCECIFAR100 as main.py builds it, images replaced by indices."""
    import hashlib

    from data.ImbalanceCIFAR import IMBALANCECIFAR100

    ds = IMBALANCECIFAR100("train", imbalance_ratio=100, root="./dataset/CIFAR100")
    kept = np.sort(np.asarray(ds.data)[:, 0, 0, 0].astype(np.int64))
    out_path.write_text(json.dumps({"train_per_class": ds.img_num_per_cls, "train_total": int(len(kept)),
                                    "train_sha256": hashlib.sha256(kept.tobytes()).hexdigest()}))


def main() -> None:
    global REPO
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True, help="checkout of BalancedMetaSoftmax-Classification")
    p.add_argument("--loss", default="balanced_softmax", choices=sorted(CONFIGS))
    p.add_argument("--epochs", type=int, default=591, help="epochs (the released 13,000 iterations: 591)")
    p.add_argument("--warmup", type=int, default=37, help="the lr reaches its warm-up value 0.1 at this 1-based "
                                                          "epoch (released: 800 iterations, 37 epochs)")
    p.add_argument("--decouple", action="store_true", help="then cRT, LWS and tau-norm (Kang et al.) on stage 1")
    p.add_argument("--crt-epochs", type=int, default=10, help="cRT's epochs (ImageNet-LT's released stage 2: 10)")
    p.add_argument("--lws-epochs", type=int, default=5, help="LWS's epochs (released: 5)")
    p.add_argument("--stage2-lr", type=float, default=0.2, help="stage 2's lr (ImageNet-LT's released: 0.2)")
    p.add_argument("--stage2-bn", choices=("train", "eval"), default="train",
                   help="the fixed feature model's mode in stage 2 (released: train; eval: a diagnostic)")
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
    if a.decouple and a.loss != "softmax":
        raise SystemExit(f"--decouple: stage 2 re-balances a softmax stage 1 (--loss softmax), not --loss {a.loss}")
    if min(a.crt_epochs, a.lws_epochs) < 1:
        raise SystemExit(f"--crt-epochs / --lws-epochs: {a.crt_epochs} / {a.lws_epochs} must be >= 1")
    REPO, archive, out_path = a.repo.resolve(), (a.data / "cifar-100-python.tar.gz").resolve(), a.out.resolve()
    work = Path(tempfile.mkdtemp(prefix="balms_"))
    os.chdir(work)  # the dataset writes cls_freq/ into the working folder
    sys.path.insert(0, str(REPO))
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
    seen: dict = {}
    record_eval(seen)
    import yaml

    stage1 = yaml.safe_load(config(REPO, a.loss, a.epochs, a.warmup, work).read_text())
    run_main(stage1, work, "stage1", a.seed)
    evals = seen.pop("val")
    seen.pop("test", None)  # main.py's closing evaluation of the best test-set epoch
    last = evals[-1]
    result = {"repo": str(REPO), "loss": a.loss, "seed": a.seed, "epochs": a.epochs, "warmup": a.warmup,
              "tasks": [{"cnn": last["top1"]}], "top1_per_epoch": [e["top1"] for e in evals],
              "best_top1": max(e["top1"] for e in evals), "groups": {k: last[k] for k in ("many", "medium", "few")},
              "commit": checkout_commit(REPO)}
    if a.decouple:
        plain_training_split()
        if a.stage2_bn == "eval":
            freeze_fixed_batchnorm()
        model_dir = last_epoch_as_best(Path(stage1["training_opt"]["log_dir"]), work / "stage1_last")
        for kind, epochs in (("crt", a.crt_epochs), ("lws", a.lws_epochs)):
            run_main(stage2_config(stage1, kind, epochs, a.stage2_lr, model_dir, work), work, kind, a.seed)
            evals = seen.pop("val")
            seen.pop("test", None)
            result["tasks"][0][kind] = evals[-1]["top1"]
            result[f"{kind}_groups"] = {k: evals[-1][k] for k in ("many", "medium", "few")}
            result[f"{kind}_top1_per_epoch"] = [e["top1"] for e in evals]
        curve = tau_norm_curve(stage1, model_dir, work, a.seed)
        at_one = next(row for row in curve if row["tau"] == 1.0)
        result["tasks"][0]["tau_norm"] = at_one["top1"]
        result["tau_norm_groups"] = {k: at_one[k] for k in ("many", "medium", "few")}
        result["tau_norm_curve"] = curve
        result["stage2_bn"] = a.stage2_bn
    result["seconds"] = time.perf_counter() - START
    out_path.write_text(json.dumps(result))


if __name__ == "__main__":
    main()

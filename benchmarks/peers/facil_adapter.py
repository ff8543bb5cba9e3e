"""Run one experiment of a FACIL-based long-tailed CIL codebase from an unmodified checkout, with run-time
adaptations only, and write what it measured as JSON. Runs under the peer's own venv (it imports torchvision);
ltcil is not imported here.

    python facil_adapter.py --repo /path/to/Long-Tailed-CIL --approach lucir --scenario lt --first 50 --tasks 11 \
        --stop-at 4 --epochs 5 --seed 0 --data ../shared/data --out result.json
    python facil_adapter.py --repo /path/to/imbalanced_cil --approach DGR ...
    python facil_adapter.py --repo /path/to/Long-Tailed-CIL --scenario lt --first 50 --tasks 11 --scenario-only \
        --data ../shared/data --out scenario.json

xialeiliu/Long-Tailed-CIL (ECCV 2022: LUCIR, PODNet, EEIL and their *_2stage forms), JiangpengHe/imbalanced_cil
(CVPR 2024: DGR) and JAYATEJAK/GVAlign (WACV 2024: lucir_gvalign_2stage, a Long-Tailed-CIL fork whose
main_incremental.py hands each task's test loader to the approach as its validation loader, for logging only, and
whose --save-models flag turns saving off) are FACIL forks with the same `src/main_incremental.py` interface; the
adapter passes the arguments of the repository's `scripts/*no_gridsearch.sh` / `script/main.sh` for CIFAR-100
(ResNet-32, lr 0.1 divided by 10 at --schedule_step, momentum 0.9, weight decay 5e-4, batch 128, 20 herding
exemplars per class) with the epochs, milestones, seed and number of tasks of the parity run.

Adaptations, all applied in memory (nothing in the checkout is edited):
- data: torchvision's CIFAR-100 checks the official archive's md5, which the re-packed archive in shared/data does
  not have; torchvision.datasets.CIFAR100.__init__ is replaced by one that reads the same pickles (train/test, fine
  labels) into .data (N, 32, 32, 3 uint8) and .targets, so the reference's IMBALANCECIFAR100 subclass
  subsamples exactly what it would from the downloaded files.
- device: the released DGR moves tensors with `.cuda()`; without a GPU `torch.Tensor.cuda` returns the tensor.
- torch version: LUCIR's margin ranking passes (N, 1) scores with an (N,) target, which the torch of its time
  broadcast to an N x N matrix of N equal columns (the same mean) and torch 2 refuses; the target is reshaped
  to the scores' shape.
- GVAlign's per-epoch and per-alignment-step evaluations on the test set, logged only, are skipped inside its
  train_loop (skip_logged_evaluations); the evaluation main_incremental records after each task is not. (Each
  skipped pass would have drawn a DataLoader seed from the global RNG, so the training batches differ from an
  unpatched run's draw, not in distribution.)
- GVAlign's checkout imports FACIL's last_layer_analysis module (a plot behind --last-layer-analysis) without
  shipping it: a stand-in that refuses to be called is put in its place (the parity runs never call it).
- workers: --num-workers (default 0; the scripts ask for 4, this machine has 2 cores and training threads need them).
- results: main() returns FACIL's task-agnostic accuracy matrix; each step's accuracy over all seen classes is its
  class-weighted mean (FACIL's wavg_accs_tag; the test set is balanced, so it is top-1 over the seen classes).
- --save-models DIR: the network's state_dict after each task (FACIL's own --save-models, copied to DIR/task_NNN.pt).
- --scenario-only: no training; the reference's long-tailed CIFAR-100 as it builds it (per-class training,
  validation and test counts, the class order, the first task's classes, and SHA-256 digests of the sorted indices
  (into the archive's training split) of the images each of training and validation holds)
  for tests/test_longtail.py's pins.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

START = time.perf_counter()


def read_cifar100(archive: Path) -> dict:
    out = {}
    with tarfile.open(archive, "r:gz") as tar:
        for split in ("train", "test"):
            d = pickle.load(tar.extractfile(f"cifar-100-python/{split}"), encoding="latin1")
            x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            out[split] = (np.ascontiguousarray(x), list(d["fine_labels"]))
    return out


def patch_cifar(archive: Path, index_images: bool = False) -> None:
    """torchvision's CIFAR100 reads the shared archive; `index_images`: each image is replaced by its index in
    the training split (1x1x1 uint16 is too small for PIL, so a (1, 1, 3) int array of [index, 0, 0]), so what
    the reference keeps can be read back as indices."""
    import torchvision

    splits = read_cifar100(archive)

    def init(self, root, train=True, transform=None, target_transform=None, download=False):
        self.root, self.train, self.transform, self.target_transform = root, train, transform, target_transform
        x, y = splits["train" if train else "test"]
        if index_images:
            x = np.zeros((len(y), 1, 1, 3), dtype=np.int64)
            x[:, 0, 0, 0] = np.arange(len(y))
        self.data, self.targets = x, list(y)
        self.classes = [str(i) for i in range(100)]

    torchvision.datasets.CIFAR100.__init__ = init


def checkout_commit(repo: Path):
    """The commit a git checkout is at (HEAD followed through a branch ref; None outside git)."""
    head = repo / ".git" / "HEAD"
    if not head.exists():
        return None
    ref = head.read_text().strip()
    ref_file = repo / ".git" / ref[5:] if ref.startswith("ref: ") else None
    if ref_file is not None and not ref_file.exists():  # a packed ref
        packed = repo / ".git" / "packed-refs"
        lines = packed.read_text().splitlines() if packed.exists() else []
        return next((line.split()[0] for line in lines if line.endswith(" " + ref[5:])), ref)
    return ref_file.read_text().strip() if ref_file is not None else ref


def patch_torch() -> None:
    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
    margin_ranking = F.margin_ranking_loss

    def margin_ranking_same_shape(input1, input2, target, *args, **kwargs):
        # LUCIR's margin ranking passes (N, 1) scores with an (N,) target of ones; the torch of its time broadcast
        # them (an N x N matrix of N equal columns, so the same mean), torch >= 2 refuses the shapes
        if target.dim() != input1.dim():
            target = target.view_as(input1)
        return margin_ranking(input1, input2, target, *args, **kwargs)

    F.margin_ranking_loss = margin_ranking_same_shape


def skip_logged_evaluations() -> None:
    """GVAlign's train_loop evaluates on the task's test loader after every epoch and after each of its 100
    alignment steps, and prints a test table at its end: logged only (nothing selects on them; its classifier_tune
    puts the model back in training mode each step), at 5 s a pass they make most of a run's time. Inside
    train_loop, Appr.eval returns zeros; main_incremental's own evaluation after each task is untouched."""
    import approach.incremental_learning as base

    real_eval = base.Inc_Learning_Appr.eval
    inside = []

    def eval_outside_training(self, t, loader, return_pred_targets=False):
        if inside:
            return (0.0, 0.0, 0.0, None, None) if return_pred_targets else (0.0, 0.0, 0.0)
        return real_eval(self, t, loader, return_pred_targets=return_pred_targets)

    import approach.lucir_gvalign_2stage as gvalign

    real_train_loop = gvalign.Appr.train_loop

    def train_loop(self, *args, **kwargs):
        inside.append(True)
        try:
            return real_train_loop(self, *args, **kwargs)
        finally:
            inside.pop()

    base.Inc_Learning_Appr.eval = eval_outside_training
    gvalign.Appr.train_loop = train_loop


def script_args(a, results: str) -> list[str]:
    """main_incremental.py's arguments as the repository's CIFAR-100 script gives them, at the parity schedule."""
    args = ["--exp-name", f"parity_{a.seed}", "--datasets", f"cifar100_{a.scenario}", "--num-tasks", str(a.tasks),
            "--network", "resnet32", "--seed", str(a.seed), "--nepochs", str(a.epochs), "--batch-size", "128",
            "--results-path", results, "--approach", a.approach, "--gpu", "0", "--lr", "0.1", "--lr-factor", "10",
            "--momentum", "0.9", "--weight-decay", "5e-4", "--nc-first-task", str(a.first),
            "--num-exemplars-per-class", "20", "--exemplar-selection", "herding",
            "--num-workers", str(a.workers), "--stop-at-task", str(a.stop_at)]
    if a.milestones:
        args += ["--schedule_step", *map(str, a.milestones)]
    if a.save_models:
        args.append("--save-models")
    return args + list(a.extra)


def scenario_only(a, out_path: Path) -> None:
    """The reference's scenario: get_loaders as main() calls it (same seeding), images replaced by indices."""
    import torch  # noqa: F401  (the reference's modules import it)

    from datasets.data_loader import get_loaders
    import utils

    utils.seed_everything(seed=a.seed)
    kwargs = {"exemplar": 20} if "exemplar" in get_loaders.__code__.co_varnames else {}
    trn, val, tst, taskcla = get_loaders([f"cifar100_{a.scenario}"], a.tasks, a.first, 128, num_workers=0,
                                         pin_memory=False, **kwargs)[:4]
    from datasets.dataset_config import dataset_config

    order = list(dataset_config[f"cifar100_{a.scenario}"]["class_order"])
    offsets = np.cumsum([0] + [n for _, n in taskcla])
    counts = {split: np.zeros(100, dtype=np.int64) for split in ("train", "val", "test")}
    kept = {"train": [], "val": []}
    for t, loaders in enumerate(zip(trn, val, tst)):
        for split, loader in zip(("train", "val", "test"), loaders):
            labels = np.asarray(loader.dataset.labels)  # arrival labels (task offset included)
            np.add.at(counts[split], np.asarray(order)[labels], 1)
            if split != "test":
                kept[split] += [int(i) for i in np.asarray(loader.dataset.images)[:, 0, 0, 0]]
    digest = {split: hashlib.sha256(np.sort(np.asarray(v, dtype=np.int64)).tobytes()).hexdigest()
              for split, v in kept.items()}
    result = {"repo": str(a.repo), "scenario": a.scenario, "class_order": order,
              "first_task": order[: int(offsets[1])], "task_sizes": [n for _, n in taskcla],
              "train_per_class": counts["train"].tolist(), "val_per_class": counts["val"].tolist(),
              "test_per_class": counts["test"].tolist(), "train_sha256": digest["train"],
              "val_sha256": digest["val"], "kept_total": sum(map(len, kept.values()))}
    out_path.write_text(json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True, help="checkout of a FACIL-based repository (holds src/)")
    p.add_argument("--approach", default="lucir", help="a module of src/approach (lucir, lucir_2stage, DGR, ...)")
    p.add_argument("--scenario", default="lt", choices=("conv", "lt", "ltio"))
    p.add_argument("--first", type=int, default=50, help="classes of the first task (--nc-first-task)")
    p.add_argument("--tasks", type=int, default=11, help="tasks of the whole scenario (--num-tasks)")
    p.add_argument("--stop-at", type=int, default=0, help="stop after this many tasks (0: all)")
    p.add_argument("--epochs", type=int, default=160)
    p.add_argument("--milestones", type=int, nargs="*", default=None, help="--schedule_step (default: 80 120)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, required=True, help="folder with cifar-100-python.tar.gz")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--save-models", type=Path, default=None)
    p.add_argument("--scenario-only", action="store_true")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("extra", nargs="*", help="after --: further main_incremental.py arguments")
    a = p.parse_args()
    if a.milestones is None:
        a.milestones = [80, 120]
    repo = a.repo.resolve()
    archive = (a.data / "cifar-100-python.tar.gz").resolve()
    out_path = a.out.resolve()
    if a.save_models:
        a.save_models = a.save_models.resolve()  # before the change of working folder below
    work = Path(tempfile.mkdtemp(prefix="facil_"))
    os.chdir(work)  # the reference writes ../data and its results relative to the working folder
    sys.path.insert(0, str(repo / "src"))
    patch_cifar(archive, index_images=a.scenario_only)
    patch_torch()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.scenario_only:
        scenario_only(a, out_path)
        return
    if not (repo / "src" / "last_layer_analysis.py").exists():  # GVAlign's repository lacks FACIL's plotting module
        import types

        def last_layer_analysis(*a, **k):
            raise SystemExit("last_layer_analysis is not in this checkout; run without --last-layer-analysis")

        sys.modules["last_layer_analysis"] = types.SimpleNamespace(last_layer_analysis=last_layer_analysis)
    if a.approach == "lucir_gvalign_2stage":
        skip_logged_evaluations()
    import main_incremental

    acc_taw, acc_tag, _, _, exp_path = main_incremental.main(script_args(a, str(work / "results")))
    sizes = [a.first] + [(100 - a.first) // (a.tasks - 1)] * (a.tasks - 1)
    steps = []
    for t in range(acc_tag.shape[0]):
        w = np.asarray(sizes[: t + 1], dtype=np.float64)
        steps.append({"cnn": float(100 * (acc_tag[t, : t + 1] * w).sum() / w.sum()),
                      "per_task": [float(100 * v) for v in acc_tag[t, : t + 1]]})
    if a.save_models:
        a.save_models.mkdir(parents=True, exist_ok=True)
        for f in sorted(Path(exp_path).glob("models/task*.ckpt")):
            t = int(f.stem.replace("task", ""))
            shutil.copy(f, a.save_models / f"task_{t:03d}.pt")
    out_path.write_text(json.dumps({"repo": str(repo), "approach": a.approach, "scenario": a.scenario,
                                    "seed": a.seed, "tasks": steps, "commit": checkout_commit(repo),
                                    "seconds": time.perf_counter() - START}))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

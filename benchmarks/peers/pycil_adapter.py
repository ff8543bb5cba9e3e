"""Run one PyCIL experiment from an unmodified checkout, with run-time adaptations only, and write what it
measured as JSON. Runs under PyCIL's own venv (it imports torchvision); ltcil is not imported here.

    python pycil_adapter.py --pycil /path/to/PyCIL --method icarl --epochs 5 --tasks 4 --seed 1993 \
        --data ../shared/data --out result.json

Adaptations, all applied in memory to the imported modules (nothing in the checkout is edited):
- device: PyCIL's `_set_device` compares the list of devices to -1 and so never selects the CPU; the adapter
  sets `args["device"]` to the CPU itself.
- data: torchvision's CIFAR-100 loader checks the official archive's md5, which the re-packed archive in
  shared/data does not have; the adapter reads the same pickles (train/test, fine labels) into the arrays
  PyCIL's iCIFAR100 expects (N, 32, 32, 3 uint8).
- schedule: PyCIL keeps epochs and lr milestones as module globals of each model file (`init_epoch`, `epochs`,
  `init_milestones`, `milestones`); the adapter sets the epochs to --epochs and, when given, the milestones to
  --init-milestones / --milestones (the harness scales PyCIL's own to the short schedule, the same on both
  sides; without them a short schedule runs at the constant initial lr).
- workers: every DataLoader PyCIL builds gets --workers worker processes (PyCIL asks for 4-8; this machine
  has 2 cores and training threads need them).
- tasks: the run stops after --tasks tasks (DataManager.nb_tasks).
- results: each task's CNN and NME top-1 (PyCIL's own eval_task) and the time since the start are recorded.
- --save-models DIR: the network's state_dict after each task, DIR/task_NNN.pt (CPU tensors), so ltcil can
  continue from PyCIL's model (shared_start.py).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

START = time.perf_counter()

# Model modules whose schedule globals the adapter sets (name in PyCIL's factory -> module).
MODULES = {"finetune": "models.finetune", "lwf": "models.lwf", "icarl": "models.icarl", "bic": "models.bic",
           "wa": "models.wa", "podnet": "models.podnet", "der": "models.der", "replay": "models.replay"}


def read_cifar100(archive: Path):
    """(train_x, train_y, test_x, test_y) from cifar-100-python.tar.gz, HWC uint8 like torchvision's .data."""
    out = []
    with tarfile.open(archive, "r:gz") as tar:
        for split in ("train", "test"):
            member = tar.extractfile(f"cifar-100-python/{split}")
            d = pickle.load(member, encoding="latin1")
            x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            out += [np.ascontiguousarray(x), np.asarray(d["fine_labels"], dtype=np.int64)]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pycil", type=Path, required=True, help="PyCIL checkout (its root holds main.py)")
    p.add_argument("--method", required=True, choices=sorted(MODULES))
    p.add_argument("--epochs", type=int, required=True, help="epochs of every task (init_epoch and epochs)")
    p.add_argument("--tasks", type=int, default=0, help="stop after this many tasks (0: all)")
    p.add_argument("--seed", type=int, default=1993, help="PyCIL's seed: the class order (numpy permutation)")
    p.add_argument("--data", type=Path, required=True, help="folder with cifar-100-python.tar.gz")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--init-cls", type=int, default=10)
    p.add_argument("--increment", type=int, default=10)
    p.add_argument("--memory", type=int, default=2000)
    p.add_argument("--init-milestones", type=int, nargs="*", default=None, help="first task's lr milestones")
    p.add_argument("--milestones", type=int, nargs="*", default=None, help="later tasks' lr milestones")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--save-models", type=Path, default=None, help="write the network after each task here")
    args = p.parse_args()

    pycil = args.pycil.resolve()
    archive = (args.data / "cifar-100-python.tar.gz").resolve()
    out_path = args.out.resolve()
    models_dir = args.save_models.resolve() if args.save_models else None
    work = out_path.parent / (out_path.stem + "_work")  # PyCIL writes logs/ into the working folder
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    sys.path.insert(0, str(pycil))

    import torch
    from torch.utils.data import DataLoader

    if args.threads:
        torch.set_num_threads(args.threads)

    import trainer as pycil_trainer
    import utils.data as pycil_data
    import utils.data_manager as pycil_dm
    import models.base as pycil_base

    train_x, train_y, test_x, test_y = read_cifar100(archive)

    def download_data(self):
        self.train_data, self.train_targets = train_x, train_y
        self.test_data, self.test_targets = test_x, test_y

    pycil_data.iCIFAR100.download_data = download_data

    def set_device(a):
        a["device"] = [torch.device("cpu")]

    pycil_trainer._set_device = set_device

    if args.tasks:
        real = pycil_dm.DataManager.nb_tasks
        pycil_dm.DataManager.nb_tasks = property(lambda self: min(args.tasks, real.fget(self)))

    def loader(*a, **k):
        k["num_workers"] = args.workers
        return DataLoader(*a, **k)

    module = importlib.import_module(MODULES[args.method])
    for mod in (module, pycil_base):
        mod.DataLoader = loader
    for name in ("init_epoch", "epochs"):
        if hasattr(module, name):
            setattr(module, name, args.epochs)
    for name, value in (("init_milestones", args.init_milestones), ("milestones", args.milestones)):
        if value is not None and hasattr(module, name):
            setattr(module, name, list(value))
    if hasattr(module, "num_workers"):
        module.num_workers = args.workers

    tasks: list = []
    eval_task = pycil_base.BaseLearner.eval_task

    def recording_eval_task(self, *a, **k):
        cnn, nme = eval_task(self, *a, **k)
        tasks.append({"task": len(tasks), "cnn": float(cnn["top1"]),
                      "nme": None if nme is None else float(nme["top1"]),
                      "seconds": time.perf_counter() - START})
        if models_dir is not None:
            models_dir.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().cpu() for k, v in self._network.state_dict().items()}
            torch.save(state, models_dir / f"task_{len(tasks) - 1:03d}.pt")
        return cnn, nme

    pycil_base.BaseLearner.eval_task = recording_eval_task

    exp = json.loads((pycil / "exps" / f"{args.method}.json").read_text())
    exp.update({"seed": [args.seed], "device": ["cpu"], "dataset": "cifar100", "init_cls": args.init_cls,
                "increment": args.increment, "memory_size": args.memory, "config": f"exps/{args.method}.json"})
    pycil_trainer.train(exp)

    commit = None
    head = pycil / ".git" / "HEAD"
    if head.exists():
        ref = head.read_text().strip()
        ref_file = pycil / ".git" / ref[5:] if ref.startswith("ref: ") else None
        commit = ref_file.read_text().strip() if ref_file and ref_file.exists() else ref
    result = {"toolkit": "pycil", "commit": commit, "method": args.method, "seed": args.seed,
              "epochs": args.epochs, "tasks": tasks,
              "milestones": {n: list(getattr(module, n)) for n in ("init_milestones", "milestones")
                             if hasattr(module, n)}, "wall_s": time.perf_counter() - START,
              "threads": torch.get_num_threads(), "workers": args.workers, "torch": torch.__version__}
    out_path.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

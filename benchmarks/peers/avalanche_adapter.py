"""Run one Avalanche (avalanche-lib, PyPI) experiment on CIFAR-100 B0-Inc10 and write what it measured as JSON.
Runs under Avalanche's own venv; ltcil is not imported here.

    python avalanche_adapter.py --method icarl --epochs 5 --tasks 4 --seed 1993 --data ../shared/data --out r.json

- icarl: the CIFAR-100 recipe of ContinualAI/continual-learning-baselines (experiments/split_cifar100/icarl.py):
  Avalanche's IcarlNet (ResNet-32, option-A shortcuts, no ReLU after the last block, a 100-way head from the
  start) with initialize_icarl_net, the ICaRL strategy (BCE with the old model's sigmoid outputs as targets,
  herding, nearest-mean classifier over exemplars and their mirror images), SGD lr 2.0, momentum 0.9, weight
  decay 1e-5, lr / 5 at epochs 49 and 63, batch 128, 2,000 exemplars; images in [0, 1] (no normalisation),
  padded crop and flip.
- naive, lwf: Avalanche ships no CIFAR-100 recipe for them; they run Avalanche's Naive and LwF strategies
  (LwF: alpha 1, temperature 2, its defaults) on the same network and data pipeline, with a growing
  IncrementalClassifier head, SGD lr 0.1, momentum 0.9, weight decay 2e-4, batch 128.

The class order is PyCIL's and iCaRL's numpy permutation for --seed; the run stops after --tasks tasks; after each
task the model Avalanche trained (its own classifier: NCM for iCaRL) is evaluated on the test images of the seen
classes, predicting among the seen classes as PyCIL and ltcil do. Avalanche's iCaRL gives its NCM a zero mean
for every class not yet seen (compute_class_means), which wins whenever a test feature's cosine to every seen
mean is below 0.5; its accuracy with those classes in the argmax is recorded too ("nme_all").
The data come from the shared CIFAR-100 archive (torchvision's loader would check the official md5).
"""

from __future__ import annotations

import argparse
import json
import pickle
import random
import tarfile
import time
from pathlib import Path

import numpy as np

START = time.perf_counter()
METHODS = ("naive", "lwf", "icarl")


def read_cifar100(archive: Path):
    out = []
    with tarfile.open(archive, "r:gz") as tar:
        for split in ("train", "test"):
            d = pickle.load(tar.extractfile(f"cifar-100-python/{split}"), encoding="latin1")
            x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            out += [np.ascontiguousarray(x), np.asarray(d["fine_labels"], dtype=np.int64)]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--tasks", type=int, default=0)
    p.add_argument("--seed", type=int, default=1993)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--init-milestones", type=int, nargs="*", default=None, help="unused: one schedule for all tasks")
    p.add_argument("--milestones", type=int, nargs="*", default=None,
                   help="lr milestones (icarl: the recipe's 49, 63 when not given)")
    args = p.parse_args()

    import torch
    from torch.optim import SGD
    from torch.optim.lr_scheduler import MultiStepLR
    from torch.utils.data import Dataset
    from torchvision import transforms

    import avalanche
    from avalanche.benchmarks import nc_benchmark
    from avalanche.models import IncrementalClassifier, initialize_icarl_net, make_icarl_net
    from avalanche.training import ICaRL, LwF, Naive
    from avalanche.training.plugins import EvaluationPlugin, LRSchedulerPlugin

    if args.threads:
        torch.set_num_threads(args.threads)
    # the baselines' set_seed
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    train_x, train_y, test_x, test_y = read_cifar100(args.data / "cifar-100-python.tar.gz")

    class Arrays(Dataset):
        def __init__(self, x, y):
            self.x, self.targets = x, y.tolist()

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            return self.x[i], self.targets[i]

    def icarl_augment(img):  # the baselines' icarl_cifar100_augment_data: zero-pad 4, random crop, flip
        img = img.numpy()
        padded = np.pad(img, ((0, 0), (4, 4), (4, 4)), mode="constant")
        crop = np.random.randint(0, high=9, size=(2,))
        out = padded[:, crop[0]:crop[0] + 32, crop[1]:crop[1] + 32]
        if np.random.randint(2) == 0:
            out = out[:, :, ::-1]
        return torch.tensor(np.ascontiguousarray(out), dtype=torch.float32)

    order = np.random.RandomState(args.seed).permutation(100).tolist()
    bench = nc_benchmark(
        Arrays(train_x, train_y), Arrays(test_x, test_y), n_experiences=10, task_labels=False, seed=args.seed,
        fixed_class_order=order, class_ids_from_zero_from_first_exp=True,
        train_transform=transforms.Compose([transforms.ToTensor(), icarl_augment]),
        eval_transform=transforms.Compose([transforms.ToTensor()]),
    )
    device = torch.device("cpu")
    quiet = EvaluationPlugin(loggers=[])
    common = dict(train_mb_size=128, train_epochs=args.epochs, eval_mb_size=256, device=device, evaluator=quiet)
    if args.method == "icarl":
        net = make_icarl_net(num_classes=100)
        net.apply(initialize_icarl_net)
        optim = SGD(net.parameters(), lr=2.0, weight_decay=1e-5, momentum=0.9)
        milestones = [49, 63] if args.milestones is None else args.milestones
        sched = LRSchedulerPlugin(MultiStepLR(optim, milestones, gamma=1.0 / 5.0))
        strategy = ICaRL(feature_extractor=net.feature_extractor, classifier=net.classifier, optimizer=optim,
                         memory_size=2000, buffer_transform=transforms.Compose([icarl_augment]),
                         fixed_memory=True, plugins=[sched], **common)
    else:
        net = make_icarl_net(num_classes=100)
        net.apply(initialize_icarl_net)
        model = torch.nn.Sequential(net.feature_extractor, IncrementalClassifier(64, initial_out_features=10))
        optim = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
        plugins = [LRSchedulerPlugin(MultiStepLR(optim, args.milestones, gamma=0.1))] if args.milestones else []
        if args.method == "lwf":
            strategy = LwF(model, optim, torch.nn.CrossEntropyLoss(), alpha=1.0, temperature=2.0, plugins=plugins,
                           **common)
        else:
            strategy = Naive(model, optim, torch.nn.CrossEntropyLoss(), plugins=plugins, **common)

    seen_x, seen_y, tasks = [], [], []
    n_tasks = args.tasks or len(bench.train_stream)
    for t, exp in enumerate(bench.train_stream[:n_tasks]):
        strategy.train(exp, num_workers=0)
        # the test images of the classes seen so far, labelled in arrival order
        for c in exp.classes_in_this_experience:
            mask = test_y == order[c]
            seen_x.append(test_x[mask])
            seen_y.append(np.full(int(mask.sum()), c))
        xs, ys = np.concatenate(seen_x), np.concatenate(seen_y)
        strategy.model.eval()
        n_seen = int(max(ys)) + 1
        correct = correct_all = 0
        with torch.no_grad():
            for i in range(0, len(ys), 256):
                x = torch.from_numpy(xs[i:i + 256]).permute(0, 3, 1, 2).float().div(255)
                out = strategy.model(x)
                correct += int((out[:, :n_seen].argmax(1).numpy() == ys[i:i + 256]).sum())
                correct_all += int((out.argmax(1).numpy() == ys[i:i + 256]).sum())
        name = "nme" if args.method == "icarl" else "cnn"
        tasks.append({"task": t, name: 100.0 * correct / len(ys), name + "_all": 100.0 * correct_all / len(ys),
                      "seconds": time.perf_counter() - START})
        print(json.dumps(tasks[-1]), flush=True)

    result = {"toolkit": "avalanche", "version": avalanche.__version__, "method": args.method, "seed": args.seed,
              "epochs": args.epochs, "tasks": tasks, "wall_s": time.perf_counter() - START,
              "threads": torch.get_num_threads(), "torch": torch.__version__}
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

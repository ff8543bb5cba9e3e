"""DGR's incremental step on both sides from the same weights and batches: LAMDA-PILOT's own
`models/dgr.py` `_update_representation` and ltcil's `dgr` method (variant pilot), compared gradient by gradient.

    python pilot_dgr_steps.py --repo ../peers/LAMDA-PILOT --weights vit_tiny_c32.pth --data ../shared/data

Runs in PILOT's venv (timm, torchvision) and imports ltcil from this checkout's src/. Both sides start from the
shared random ViT (pilot_adapter.py --make-weights) with one 10-class head (ltcil's initialisation, or
--peer-model: PILOT's network after its first task, pilot_adapter.py --save-models), the teacher a frozen copy of
it, then 10 new head rows (ltcil's draw, copied into PILOT's); the training set is 40 images of each old class
(the memory) and 100 of each new class, real CIFAR-100 pixels in [0, 1]; --steps batches of 128 drawn once and
fed to both without augmentation. PILOT's learner runs its `_update_representation` over those batches with its
own SGD (lr 1e-3, momentum 0.9, weight decay 5e-4: exps/dgr.json), ltcil its training_step with the optimiser its
engine builds from dgr_vit_b16_cifar100_b0inc10. Before every optimiser step the gradient of every parameter is
recorded; the script prints, per step, the largest relative difference of the head's old and new rows and of
the backbone, and of the parameters after the last step. --ltcil-set KEY=VALUE changes ltcil's side (a check
that the comparison sees a difference, e.g. method.attenuation=2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
OLD, NEW, MEMORY, IMAGES = 10, 10, 40, 100  # old / new classes, memory images per old class, images per new class


def recorder(named, store):
    """Wrap an optimiser's step: before it runs, keep every parameter's gradient and value."""
    def wrap(step):
        def run(*args, **kwargs):
            store.append({n: (p.grad.clone(), p.detach().clone()) for n, p in named if p.grad is not None})
            return step(*args, **kwargs)
        return run
    return wrap


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / a.norm().clamp_min(1e-12))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True, help="LAMDA-PILOT checkout")
    p.add_argument("--weights", type=Path, required=True, help="the shared ViT (pilot_adapter.py --make-weights)")
    p.add_argument("--data", type=Path, required=True, help="folder with cifar-100-python.tar.gz")
    p.add_argument("--peer-model", type=Path, default=None, help="PILOT's network after its first task (task_000.pt)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ltcil-set", nargs="*", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sys.path[:0] = [str(HERE.parents[1] / "src"), str(HERE), str(args.repo.resolve())]
    from pilot_adapter import _cpu_fixes, _timm_layer_aliases, make_model
    from pycil_adapter import read_cifar100
    from shared_start import map_state

    _timm_layer_aliases()
    import models.dgr as pilot_dgr
    import utils.inc_net as pilot_net

    from ltcil.config import load_config
    from ltcil.engine.optim import build_optimizer
    from ltcil.engine.runner import build_method

    _cpu_fixes("dgr", pilot_dgr)
    weights = args.weights.resolve()
    pilot_net.get_backbone = lambda a, pretrained=False: make_model(weights).requires_grad_(True).train()
    device = torch.device("cpu")

    # ltcil at the start of the second task
    cfg = load_config("dgr_vit_b16_cifar100_b0inc10", [
        "backbone.name=vit_tiny_patch16_224", "backbone.pretrained=false", "backbone.patch_size=4",
        "backbone.input_size=32", f"backbone.checkpoint={weights}", "memory.size=400", "data.name=synthetic",
        *args.ltcil_set])
    torch.manual_seed(0)
    method, _ = build_method(cfg, 3, 32, device)
    model = method.model
    model.head.add_classes(OLD)
    if args.peer_model is not None:
        model.load_state_dict(map_state(torch.load(args.peer_model, map_location="cpu", weights_only=True),
                                        model.state_dict()))
    method.teacher = method.frozen_copy()
    method.old_classes = OLD
    model.head.add_classes(NEW)
    counts = np.array([MEMORY] * OLD + [IMAGES] * NEW)
    method.train_counts = torch.tensor(counts, dtype=torch.float32)
    method.learned_counts = torch.full((OLD,), float(IMAGES), dtype=torch.float64)
    method.phi = torch.zeros(OLD + NEW, dtype=torch.float64)
    method._priors = None

    # PILOT's learner at the same point, holding the same tensors
    a = {"memory_size": 400, "memory_per_class": 20, "fixed_memory": False, "device": [device],
         "backbone_type": "vit_base_patch16_224", "epochs": 1, "init_epoch": 1, "lrate": 1e-3,
         "weight_decay": 5e-4, "T": 2, "gammar_r": 1, "lambda": 1, "batch_size": 128, "init_cls": OLD,
         "increment": NEW, "model_name": "dgr"}
    learner = pilot_dgr.Learner(a)
    net = learner._network
    net.update_fc(OLD)
    net.load_state_dict(map_state(method.teacher.state_dict(), net.state_dict()))
    learner._old_network = net.copy().freeze()
    net.update_fc(OLD + NEW)
    net.load_state_dict(map_state(model.state_dict(), net.state_dict()))
    learner._known_classes, learner._total_classes, learner._cur_task = OLD, OLD + NEW, 1

    train_x, train_y, _, _ = read_cifar100(args.data / "cifar-100-python.tar.gz")
    pool = np.concatenate([np.flatnonzero(train_y == c)[: counts[c]] for c in range(OLD + NEW)])
    x_all = torch.tensor(train_x[pool]).permute(0, 3, 1, 2).float() / 255
    y_all = torch.tensor(train_y[pool]).long()
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(pool), 128, replace=False) for _ in range(args.steps)]
    loader = [(None, x_all[b], y_all[b]) for b in batches]

    pilot_rec, ltcil_rec = [], []
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1)  # one epoch: the lr stays 1e-3
    opt.step = recorder(list(net.named_parameters()), pilot_rec)(opt.step)
    learner._update_representation(loader, loader[:1], opt, sched, [int(c) for c in counts])

    opt = build_optimizer(method.trainable_parameters(), cfg.train, cfg.train.lr, device)
    named = list(model.named_parameters())
    model.train()
    for _, x, y in loader:  # as the engine's epoch loop runs a step
        losses = method.training_step(x, y)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        recorder(named, ltcil_rec)(lambda: None)()
        opt.step()
    method._release_hooks()

    keys = list(zip(pilot_rec[0], ltcil_rec[0]))
    print(f"parameters with a gradient: PILOT {len(pilot_rec[0])}, ltcil {len(ltcil_rec[0])}")
    for s, (rp, rl) in enumerate(zip(pilot_rec, ltcil_rec)):
        head = {}
        for kp, kl in keys:
            if kp.startswith("fc."):
                gp, gl = rp[kp][0], rl[kl][0]
                head[kp] = (relative(gp[:OLD], gl[:OLD]), relative(gp[OLD:], gl[OLD:]))
        backbone = max(relative(rp[kp][0], rl[kl][0]) for kp, kl in keys if not kp.startswith("fc."))
        values = max(relative(rp[kp][1], rl[kl][1]) for kp, kl in keys)
        print(f"step {s}: head weight old / new rows {head['fc.weight'][0]:.1e} / {head['fc.weight'][1]:.1e}, "
              f"bias {head['fc.bias'][0]:.1e} / {head['fc.bias'][1]:.1e}; backbone {backbone:.1e}; "
              f"parameters before the step {values:.1e}")
    final_p, final_l = dict(net.named_parameters()), dict(model.named_parameters())
    print(f"after {args.steps} steps: parameters {max(relative(final_p[kp], final_l[kl]) for kp, kl in keys):.1e} "
          "(largest relative difference)")


if __name__ == "__main__":
    main()

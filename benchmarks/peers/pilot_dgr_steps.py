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

A whole task, replayed (runs in either venv; PILOT is not imported):

    python pilot_adapter.py --method dgr --tasks 2 ... --save-models M --record-task 1   # in PILOT's venv
    python shared_start.py --peer-model M/task_000.pt --ltcil-run RUN --out SHARED --peer-memory --max-tasks 1
    python pilot_dgr_steps.py --replay M/task_001_replay.pt --ltcil-run SHARED [--own-rows]

ltcil's engine pieces (begin_task with its teacher and new head rows, the task's counts from its memory, the
optimiser and the config's lr schedule, moved per epoch or per step as the engine moves it) train the second
task on the batches PILOT drew (its augmentation and order, recorded by the adapter) from the network PILOT
started it from (its new rows; --own-rows: ltcil's own draw); the script prints the largest relative
difference from PILOT's network after the task and both networks' accuracy on the seen classes' test images
(old / new classes).

One part of the random stream at a time: --augment pilot|ltcil|ltcil-torchvision keeps PILOT's order and batches
but crops and flips the same images again (the adapter records the task's raw images and each batch's positions
in them), by PILOT's torchvision transform or by ltcil's augmentation, generator --aug-seed; --stream-seed K
draws a fresh stream instead (ltcil's new head rows and a new order, seeded K) from the same start.
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
    a, b = a.detach().double(), b.detach().double()  # integer buffers too (BatchNorm's batch count)
    return float((a - b).norm() / a.norm().clamp_min(1e-12))


def fresh_order(record: dict, seed: int) -> list:
    """A new random stream's visiting order: each epoch a uniform permutation of the task's images (as a shuffling
    DataLoader draws one), cut into batches of the recorded size; returns positions in record["images"]."""
    gen = torch.Generator().manual_seed(seed)
    size, n = len(record["indices"][0][0]), len(record["images"])
    return [list(torch.randperm(n, generator=gen).split(size)) for _ in record["indices"]]


def augmented_batches(record: dict, augment: str, seed: int, cfg, order=None, finish=lambda x: x) -> list:
    """The replay's batches, epoch by epoch: PILOT's own (`recorded`), or the same images in the same order and
    batches augmented again from the task's raw images with generator seed `seed`: by PILOT's transform at 32 px
    (`pilot`: torchvision's RandomResizedCrop(32, area 5-100%) and flip on PIL images, then ToTensor; needs
    torchvision) or by ltcil's batched augmentation with the config's settings (`ltcil`; `ltcil-torchvision`: with
    train.resized_crop_style torchvision; `finish`: the data's normalisation, as the engine's batches end).
    `order`: other batches of positions (fresh_order) instead of PILOT's."""
    if augment == "recorded":
        return record["epochs"]
    if order is None and "indices" not in record:
        raise SystemExit("this replay file holds no batch positions: record it again with pilot_adapter.py "
                         "--record-task (it keeps them since 2026-12-07)")
    images, labels = record["images"], record["labels"].long()
    order = record["indices"] if order is None else order
    out = []
    if augment == "pilot":
        from PIL import Image
        from torchvision import transforms

        torch.manual_seed(seed)
        trsf = transforms.Compose([transforms.RandomResizedCrop(32, scale=(0.05, 1.0), ratio=(3 / 4, 4 / 3)),
                                   transforms.RandomHorizontalFlip(p=0.5), transforms.ToTensor()])
        for epoch in order:
            out.append([(torch.stack([trsf(Image.fromarray(images[i].numpy())) for i in idx.tolist()]),
                         labels[idx]) for idx in epoch])
        return out
    from ltcil.data.augment import AugmentSpec, augment_float, augment_uint8

    spec = AugmentSpec.from_train_config(cfg.train)
    if augment == "ltcil-torchvision":
        spec.resized_crop_style = "torchvision"
    gen = torch.Generator().manual_seed(seed)
    for epoch in order:
        batches = []
        for idx in epoch:
            x = augment_uint8(images[idx].permute(0, 3, 1, 2).contiguous(), spec, gen).float().div_(255)
            batches.append((finish(augment_float(x, spec, gen)), labels[idx]))
        out.append(batches)
    return out


def replay(args) -> None:
    """ltcil's dgr trains a whole task on PILOT's recorded batches from PILOT's recorded start (see the module's
    docstring, --replay), through the engine's own optimiser and lr schedule; prints how far its parameters end
    from PILOT's and both networks' accuracy on the seen classes' test images."""
    sys.path[:0] = [str(HERE.parents[1] / "src"), str(HERE)]
    from shared_start import map_state, restored

    from ltcil.engine.context import TaskContext
    from ltcil.engine.optim import build_optimizer, lr_factor, set_lr
    from ltcil.engine.seed import generators, seed_task
    from ltcil.engine.stage import task_settings
    from ltcil.engine.trainer import Trainer
    from ltcil.methods.base import train_class_counts
    from ltcil.reporting.events import EventLog

    record = torch.load(args.replay, map_location="cpu", weights_only=True)
    task = int(args.replay.stem.split("_")[1])
    exp = restored(args.ltcil_run)
    method, cfg = exp.method, exp.cfg
    if exp.next_task != task:
        raise SystemExit(f"--ltcil-run {args.ltcil_run} must hold exactly {task} finished task(s) (shared_start.py "
                         f"--max-tasks {task})")
    events = EventLog(None)
    spec = exp.scenario.tasks[task]
    rows_seed = next((s for s in (args.rows_seed, args.stream_seed) if s is not None), cfg.seed)
    seed_task(rows_seed, task)  # the new rows' draw
    ctx = TaskContext(cfg, exp.scenario, exp.data, Trainer(exp.data, exp.device, events, progress=False),
                      exp.device, generators(cfg.seed, task, exp.device), events, task, exp.new_model,
                      args.ltcil_run, task=spec)
    method.begin_task(spec, ctx)
    indices = method.train_indices(spec, ctx)
    method.train_counts = train_class_counts(ctx, indices, method.model.num_classes)
    counts = [int(c) for c in method.train_counts]
    print(f"label distribution: PILOT {record['label_distribution']}, ltcil {counts}")
    model = method.model
    ours = {k: v.clone() for k, v in model.state_dict().items()}
    start = map_state(record["start"], ours)
    if args.own_rows or args.rows_seed is not None or args.stream_seed is not None:  # ltcil's own new rows
        old = method.old_classes
        for key in ("head.weight", "head.bias"):
            start[key][old:] = ours[key][old:]
    drift = max(relative(ours[k], start[k]) for k in ours if not k.startswith("head."))
    print(f"start: ltcil's backbone vs PILOT's recorded start {drift:.1e} (0: the same first-task model)")
    model.load_state_dict(start)
    settings, epochs, lr = task_settings(cfg.train, first=False)
    if epochs != len(record["epochs"]):
        raise SystemExit(f"the replay holds {len(record['epochs'])} epochs, ltcil's config {epochs}")
    opt = build_optimizer(method.trainable_parameters(), settings, lr, exp.device)
    order = None if args.stream_seed is None else fresh_order(record, args.stream_seed)
    batches_of = augmented_batches(record, args.augment, args.aug_seed, cfg, order, exp.data.finish)
    for epoch, batches in enumerate(batches_of):
        set_lr(opt, lr * lr_factor(settings, epoch, epochs))
        print(f"epoch {epoch + 1}: lr PILOT {record['lr'][epoch]:.3e}, ltcil {opt.param_groups[0]['lr']:.3e}; "
              f"{len(batches)} batches")
        model.train()
        for n, (x, y) in enumerate(batches):
            if settings.schedule_unit == "step" and n:  # as the engine moves warm-up and cosine every step
                set_lr(opt, lr * lr_factor(settings, epoch + n / len(batches), epochs))
            losses = method.training_step(x.to(exp.device), y.to(exp.device))
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
    method._release_hooks()
    end = torch.load(args.replay.with_name(f"task_{task:03d}.pt"), map_location="cpu", weights_only=True)
    end = map_state(end, model.state_dict())
    final = {k: v.clone() for k, v in model.state_dict().items()}
    worst = max(final, key=lambda k: relative(end[k], final[k]))
    print(f"after the task: parameters {relative(end[worst], final[worst]):.1e} from PILOT's (largest relative "
          f"difference, {worst})")
    for name, state in (("PILOT", end), ("ltcil", final)):
        model.load_state_dict(state)
        model.eval()
        labels = exp.data.labels["test"]
        idx = torch.nonzero(labels < model.num_classes).flatten()
        correct = torch.zeros(2)
        total = torch.zeros(2)
        with torch.no_grad():
            for i in range(0, len(idx), 500):
                xb, yb = exp.data.batch("test", idx[i:i + 500])
                hit = model(xb).argmax(1) == yb
                new = (yb >= method.old_classes).long()
                correct.index_add_(0, new, hit.float())
                total.index_add_(0, new, torch.ones(len(yb)))
        print(f"{name}'s network: seen classes {100 * correct.sum() / total.sum():.2f}, old "
              f"{100 * correct[0] / total[0]:.2f}, new {100 * correct[1] / total[1]:.2f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replay", type=Path, default=None,
                   help="pilot_adapter.py --record-task's task_NNN_replay.pt: train ltcil on those batches instead")
    p.add_argument("--ltcil-run", type=Path, default=None,
                   help="with --replay: a shared_start.py run from PILOT's model, stopped before that task")
    p.add_argument("--own-rows", action="store_true", help="with --replay: ltcil's own draw of the new head rows")
    p.add_argument("--rows-seed", type=int, default=None,
                   help="with --replay: ltcil's own draw of the new head rows, seeded with this instead of the run's seed")
    p.add_argument("--augment", choices=("recorded", "pilot", "ltcil", "ltcil-torchvision"), default="recorded",
                   help="with --replay: PILOT's recorded batches, or the same images in the same batches augmented "
                        "again by PILOT's transform or by ltcil's (config's train settings), generator --aug-seed")
    p.add_argument("--aug-seed", type=int, default=0)
    p.add_argument("--stream-seed", type=int, default=None,
                   help="with --replay and --augment other than recorded: a fresh stream from PILOT's start "
                        "network: new head rows (ltcil's draw) and each epoch's order drawn with this seed")
    p.add_argument("--repo", type=Path, help="LAMDA-PILOT checkout")
    p.add_argument("--weights", type=Path, help="the shared ViT (pilot_adapter.py --make-weights)")
    p.add_argument("--data", type=Path, help="folder with cifar-100-python.tar.gz")
    p.add_argument("--peer-model", type=Path, default=None, help="PILOT's network after its first task (task_000.pt)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ltcil-set", nargs="*", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.replay is not None:
        if args.ltcil_run is None:
            p.error("--replay needs --ltcil-run")
        if args.stream_seed is not None and args.augment == "recorded":
            p.error("--stream-seed draws a new order: choose --augment pilot, ltcil or ltcil-torchvision")
        return replay(args)
    if None in (args.repo, args.weights, args.data):
        p.error("--repo, --weights and --data are required (without --replay)")
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

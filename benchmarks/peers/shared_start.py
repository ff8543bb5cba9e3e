"""Continue an ltcil parity run from PyCIL's model after a task, so the two toolkits' later tasks start from the
same network: a gap that remains is made by the incremental training, not by where the first task landed.

    python pycil_adapter.py --method lwf --tasks 1 --seed 1 ... --save-models runs/pycil_models   # in PyCIL's venv
    python benchmarks/peers/shared_start.py --peer-model runs/pycil_models/task_000.pt \
        --ltcil-run runs/parity_pycil/ltcil_pycil_lwf_s1_e5_t4_ms --out runs/shared_lwf_s1

--set KEY=VALUE ... changes the config of the tasks trained after the shared start (a diagnostic: does a setting
make the remaining gap?), e.g. `--set train.resized_crop_style=torchvision`.

--ltcil-run is a finished ltcil run of the same recipe, seed and schedule (the harness's run folder). Its
folder is copied to --out without the checkpoints after the peer model's task; the model weights in that
task's checkpoint are replaced by PyCIL's (matched entry by entry: PyCIL's resnet32 and ltcil's ResNet-32 with
`backbone.shortcut=pad` hold the same tensors in the same order; so do a FACIL-based peer's LLL_Net, `model.*` then
`heads.<t>.*`, saved by facil_adapter.py --save-models, and ltcil's ResNet-32 with 1x1-conv shortcuts; and LAMDA-PILOT's
IncrementalNet, `backbone.*` then `fc.*`, saved by pilot_adapter.py --save-models, and ltcil's timm ViT with its
linear head), the replaced model is evaluated on the seen
classes' test images (it must give PyCIL's own accuracy), and `ltcil resume` trains the remaining tasks.
For a method with exemplars (iCaRL) the peer model must be the first task's: the checkpoint's memory, chosen with
ltcil's model, is emptied and chosen again with PyCIL's (herding on its features, then the class means), as the
end of that task would have done with that model. --peer-memory takes the peer's own exemplars instead (LAMDA-PILOT
keeps them as pixels: pilot_adapter.py --save-models writes task_NNN_memory.npz), found in ltcil's training split
by pixels and label.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml


def kind(key: str) -> str:
    """What a state-dict entry is, whatever the toolkit calls the module: weight, bias, running_mean, ..."""
    return key.rsplit(".", 1)[-1]


# Peer entries no ltcil network holds: PyCIL's resnet32 keeps the classifier of its standalone form, which
# IncrementalNet and DERNet never call (they read the features and apply their own `fc`: `convnet.fc.`,
# `convnets.<i>.fc.`); DERNet's auxiliary classifier `aux_fc` is made anew at each task's start, as ltcil's DER
# makes its `aux` (which it does not have after the first task).
PEER_UNUSED = re.compile(r"^(convnet\.fc\.|convnets\.\d+\.fc\.|aux_fc\.)")


def map_state(peer: dict, ours: dict) -> dict:
    """`ours` with every tensor replaced by the peer's tensor in the same position (same kind, same shape)."""
    peer = {k: v for k, v in peer.items() if not PEER_UNUSED.match(k)}
    if len(peer) != len(ours):
        raise SystemExit(f"the peer model has {len(peer)} entries, ltcil's {len(ours)}: not the same network")
    out = {}
    for (pk, pv), (ok, ov) in zip(peer.items(), ours.items()):
        # a learned scalar may be a 0-d tensor on one side and a 1-element vector on the other (PODNet's sigma)
        scalar = pv.numel() == ov.numel() == 1
        if kind(pk) != kind(ok) or (tuple(pv.shape) != tuple(ov.shape) and not scalar):
            raise SystemExit(f"entry mismatch: peer {pk} {tuple(pv.shape)} vs ltcil {ok} {tuple(ov.shape)}")
        out[ok] = pv.reshape(ov.shape).to(ov.dtype)
    return out


def restored(run_dir: Path):
    from ltcil.config import load_config
    from ltcil.engine.runner import Experiment

    exp = Experiment(load_config(run_dir / "config.yaml"), run_dir, progress=False, log=lambda *_: None)
    exp.restore()
    return exp


@torch.no_grad()
def seen_class_accuracy(run_dir: Path) -> dict:
    """Top-1 of every classifier of the restored method (linear: PyCIL's CNN figure; nme) over the test images of
    the classes seen so far."""
    exp = restored(run_dir)
    exp.method.model.eval()
    data = exp.data
    labels = data.labels["test"]
    idx = torch.nonzero((labels >= 0) & (labels < exp.method.model.num_classes)).flatten()
    correct: dict = {}
    for start in range(0, len(idx), 500):
        x, y = data.batch("test", idx[start:start + 500])
        for name, logits in exp.method.predict(x).items():
            correct[name] = correct.get(name, 0) + int((logits.argmax(1) == y).sum())
    return {name: round(100.0 * c / len(idx), 2) for name, c in correct.items()}


def reselect_memory(run_dir: Path, task: int) -> None:
    """Empty the memory of the checkpoint after `task` and choose it again with the model now in it (the end of
    that task, as the method runs it), then save the checkpoint back."""
    from ltcil.engine.checkpoint import save_checkpoint
    from ltcil.engine.context import TaskContext
    from ltcil.engine.seed import generators
    from ltcil.engine.trainer import Trainer
    from ltcil.memory import ExemplarMemory
    from ltcil.reporting.events import EventLog

    exp = restored(run_dir)
    mem = exp.cfg.memory
    exp.method.memory = ExemplarMemory(mem.size, mem.per_class, mem.selection)
    events = EventLog(None)
    trainer = Trainer(exp.data, exp.device, events, progress=False)
    spec = exp.scenario.tasks[task]
    ctx = TaskContext(exp.cfg, exp.scenario, exp.data, trainer, exp.device, generators(exp.cfg.seed, task, exp.device),
                      events, task, exp.new_model, run_dir, task=spec)
    exp.method.end_task(spec, ctx)
    save_checkpoint(run_dir, task, exp._state(task))


def peer_memory(run_dir: Path, task: int, memory_file: Path) -> None:
    """Replace the memory of the checkpoint after `task` with the peer's own exemplars (pilot_adapter.py
    --save-models keeps them as pixels and labels, task_NNN_memory.npz): each is found in ltcil's training split
    by its pixels and label, each class keeping the peer's order (what a later reduction keeps first)."""
    from ltcil.engine.checkpoint import save_checkpoint

    exp = restored(run_dir)
    if hasattr(exp.method, "class_means"):  # computed from the memory at the task's end: would go stale
        raise SystemExit(f"--peer-memory: method {exp.cfg.method.name} keeps class means of its memory; only "
                         "methods that keep the exemplars alone take the peer's")
    with np.load(memory_file) as z:
        images, labels = z["images"], z["labels"].astype(np.int64)
    train = np.ascontiguousarray(exp.dataset.train.images)
    mapped = exp.data.labels["train"].cpu().numpy()
    where: dict = {}
    for i in range(len(train)):
        where.setdefault((int(mapped[i]), train[i].tobytes()), []).append(i)
    exemplars: dict = {}
    for image, label in zip(images, labels):
        found = where.get((int(label), np.ascontiguousarray(image, dtype=np.uint8).tobytes()))
        if not found:
            raise SystemExit(f"{memory_file}: an exemplar of class {label} is not in ltcil's training split")
        exemplars.setdefault(int(label), []).append(found.pop(0))
    exp.method.memory.exemplars = {c: np.asarray(v, dtype=np.int64) for c, v in sorted(exemplars.items())}
    save_checkpoint(run_dir, task, exp._state(task))
    print(json.dumps({"event": "peer_memory", "file": str(memory_file), "classes": len(exemplars),
                      "images": int(len(labels))}), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer-model", type=Path, required=True, help="pycil_adapter.py --save-models file")
    p.add_argument("--ltcil-run", type=Path, required=True, help="a finished ltcil run of the same recipe")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-tasks", type=int, default=0, help="train up to this many tasks (0: as the run did)")
    p.add_argument("--peer-memory", action="store_true",
                   help="keep the peer's own exemplars (task_NNN_memory.npz beside --peer-model) instead of "
                        "choosing them again with ltcil's herding")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config changes for the tasks after the shared start (a diagnostic: does this setting "
                        "close the gap?), e.g. train.resized_crop_style=torchvision")
    args = p.parse_args(argv)
    from ltcil.config import apply_override, from_dict, parse_override
    from ltcil.errors import LtcilError

    task = int(args.peer_model.stem.split("_")[-1])
    if args.out.exists():
        raise SystemExit(f"--out {args.out} exists; choose a new folder")
    config = (args.ltcil_run / "config.yaml").read_text()
    memory = yaml.safe_load(config).get("memory", {})
    with_memory = int(memory.get("size", 0)) > 0 or int(memory.get("per_class", 0)) > 0
    if with_memory and task != 0:
        raise SystemExit("this run keeps exemplars: its memory of earlier tasks was chosen with ltcil's models, so a "
                         "shared start must begin after the first task (task_000.pt)")
    memory_file = args.peer_model.with_name(args.peer_model.stem + "_memory.npz")
    if args.peer_memory and not with_memory:
        raise SystemExit("--peer-memory: this run keeps no exemplars (memory.size and memory.per_class are 0)")
    if args.peer_memory and not memory_file.is_file():
        raise SystemExit(f"--peer-memory: no {memory_file} (pilot_adapter.py --save-models writes it)")
    changes = [parse_override(text) for text in args.set]
    if args.max_tasks:  # a key resume lets change
        changes.append(("scenario.max_tasks", args.max_tasks))
    cfg = yaml.safe_load(config)
    for key, value in changes:
        apply_override(cfg, key, value)
    try:  # a wrong key or value is named before anything is copied or trained
        from_dict(cfg, "--set: ")
    except LtcilError as exc:
        raise SystemExit(str(exc)) from None
    shutil.copytree(args.ltcil_run, args.out, ignore=shutil.ignore_patterns("results.json", "report.*"))
    for ckpt in (args.out / "checkpoints").glob("*.pt"):
        if not ckpt.name.startswith("task_") or int(ckpt.stem.split("_")[1]) > task:
            ckpt.unlink()
    if changes:
        (args.out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    events = args.out / "events.jsonl"  # the log of the tasks kept, then the resumed run's
    if events.exists():
        kept = [line for line in events.read_text().splitlines() if json.loads(line).get("task", 0) <= task]
        events.write_text("".join(line + "\n" for line in kept))
    path = args.out / "checkpoints" / f"task_{task:03d}.pt"
    state = torch.load(path, weights_only=True)
    state["method"]["model"] = map_state(torch.load(args.peer_model, weights_only=True), state["method"]["model"])
    if args.set and state.get("config") is not None:  # the checkpoint's record of its config follows, or resume
        for key, value in changes:  # would refuse the changed keys
            apply_override(state["config"], key, value)
    torch.save(state, path)
    if with_memory and args.peer_memory:
        peer_memory(args.out, task, memory_file)
    elif with_memory:
        reselect_memory(args.out, task)
    accuracy = seen_class_accuracy(args.out)
    print(json.dumps({"event": "shared_start", "task": task, "peer_model": str(args.peer_model),
                      "ltcil_accuracy_of_peer_model": accuracy}), flush=True)
    subprocess.run([sys.executable, "-m", "ltcil", "resume", str(args.out), "--quiet"], check=True)
    results = json.loads((args.out / "results.json").read_text())
    print(json.dumps({"event": "shared_start_done", "accuracy": results["accuracy"],
                      "accuracy_matrix": results["accuracy_matrix"]}))


if __name__ == "__main__":
    main()

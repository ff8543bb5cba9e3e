"""Continue an ltcil parity run from PyCIL's model after a task, so the two toolkits' later tasks start from the
same network: a gap that remains is made by the incremental training, not by where the first task landed.

    python pycil_adapter.py --method lwf --tasks 1 --seed 1 ... --save-models runs/pycil_models   # in PyCIL's venv
    python benchmarks/peers/shared_start.py --peer-model runs/pycil_models/task_000.pt \
        --ltcil-run runs/parity_pycil/ltcil_pycil_lwf_s1_e5_t4_ms --out runs/shared_lwf_s1

--ltcil-run is a finished ltcil run of the same recipe, seed and schedule (the harness's run folder). Its
folder is copied to --out without the checkpoints after the peer model's task; the model weights in that
task's checkpoint are replaced by PyCIL's (matched entry by entry: PyCIL's resnet32 and ltcil's ResNet-32 with
`backbone.shortcut=pad` hold the same tensors in the same order), the replaced model is evaluated on the seen
classes' test images (it must give PyCIL's own accuracy), and `ltcil resume` trains the remaining tasks.
Methods with exemplars are refused: their memory was chosen with ltcil's model, not PyCIL's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml


def kind(key: str) -> str:
    """What a state-dict entry is, whatever the toolkit calls the module: weight, bias, running_mean, ..."""
    return key.rsplit(".", 1)[-1]


# PyCIL's resnet32 keeps the classifier of its standalone form, which IncrementalNet never calls (it reads the
# features and applies its own `fc`)
PEER_UNUSED = ("convnet.fc.",)


def map_state(peer: dict, ours: dict) -> dict:
    """`ours` with every tensor replaced by the peer's tensor in the same position (same kind, same shape)."""
    peer = {k: v for k, v in peer.items() if not k.startswith(PEER_UNUSED)}
    if len(peer) != len(ours):
        raise SystemExit(f"the peer model has {len(peer)} entries, ltcil's {len(ours)}: not the same network")
    out = {}
    for (pk, pv), (ok, ov) in zip(peer.items(), ours.items()):
        if kind(pk) != kind(ok) or tuple(pv.shape) != tuple(ov.shape):
            raise SystemExit(f"entry mismatch: peer {pk} {tuple(pv.shape)} vs ltcil {ok} {tuple(ov.shape)}")
        out[ok] = pv.to(ov.dtype)
    return out


@torch.no_grad()
def seen_class_accuracy(run_dir: Path) -> float:
    """Top-1 of the restored model over the test images of the classes seen so far (PyCIL's CNN figure)."""
    from ltcil.config import load_config
    from ltcil.engine.runner import Experiment

    exp = Experiment(load_config(run_dir / "config.yaml"), run_dir, progress=False, log=lambda *_: None)
    exp.restore()
    model, data = exp.method.model.eval(), exp.data
    labels = data.labels["test"]
    idx = torch.nonzero((labels >= 0) & (labels < exp.method.model.num_classes)).flatten()
    correct = 0
    for start in range(0, len(idx), 500):
        x, y = data.batch("test", idx[start:start + 500])
        correct += int((model(x).argmax(1) == y).sum())
    return 100.0 * correct / len(idx)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer-model", type=Path, required=True, help="pycil_adapter.py --save-models file")
    p.add_argument("--ltcil-run", type=Path, required=True, help="a finished ltcil run of the same recipe")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-tasks", type=int, default=0, help="train up to this many tasks (0: as the run did)")
    args = p.parse_args(argv)

    task = int(args.peer_model.stem.split("_")[-1])
    if args.out.exists():
        raise SystemExit(f"--out {args.out} exists; choose a new folder")
    config = (args.ltcil_run / "config.yaml").read_text()
    if int(yaml.safe_load(config).get("memory", {}).get("size", 0)) > 0:
        raise SystemExit("this run keeps exemplars, chosen with ltcil's model: a shared start needs a method "
                         "without memory (finetune, lwf)")
    shutil.copytree(args.ltcil_run, args.out, ignore=shutil.ignore_patterns("results.json", "report.*"))
    for ckpt in (args.out / "checkpoints").glob("*.pt"):
        if not ckpt.name.startswith("task_") or int(ckpt.stem.split("_")[1]) > task:
            ckpt.unlink()
    if args.max_tasks:  # a key resume lets change
        cfg = yaml.safe_load(config)
        cfg["scenario"]["max_tasks"] = args.max_tasks
        (args.out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    events = args.out / "events.jsonl"  # the log of the tasks kept, then the resumed run's
    if events.exists():
        kept = [line for line in events.read_text().splitlines() if json.loads(line).get("task", 0) <= task]
        events.write_text("".join(line + "\n" for line in kept))
    path = args.out / "checkpoints" / f"task_{task:03d}.pt"
    state = torch.load(path, weights_only=True)
    state["method"]["model"] = map_state(torch.load(args.peer_model, weights_only=True), state["method"]["model"])
    torch.save(state, path)
    accuracy = seen_class_accuracy(args.out)
    print(json.dumps({"event": "shared_start", "task": task, "peer_model": str(args.peer_model),
                      "ltcil_accuracy_of_peer_model": round(accuracy, 2)}), flush=True)
    subprocess.run([sys.executable, "-m", "ltcil", "resume", str(args.out), "--quiet"], check=True)
    results = json.loads((args.out / "results.json").read_text())
    print(json.dumps({"event": "shared_start_done", "accuracy": results["accuracy"],
                      "accuracy_matrix": results["accuracy_matrix"]}))


if __name__ == "__main__":
    main()

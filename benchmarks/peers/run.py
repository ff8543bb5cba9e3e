"""Peer parity: run a peer toolkit and ltcil on the same class-incremental scenario and print both side by side.

    python benchmarks/peers/run.py --peer pycil --pycil ../peers/pycil --peer-python ../peers/venv-pycil/bin/python \
        --methods finetune lwf icarl bic --epochs 5 --seeds 2 --tasks 4 --data ../shared/data --out runs/parity_pycil
    python benchmarks/peers/run.py --peer avalanche --peer-python ../peers/venv-avalanche/bin/python \
        --methods naive lwf icarl --epochs 5 --seeds 2 --tasks 4 --data ../shared/data --out runs/parity_avalanche

For every method and seed the peer runs first (its adapter, in the peer's own venv, from an unmodified checkout
or the installed package), then ltcil (`python -m ltcil run <recipe config> <overrides>` in this venv), one
after the other, never side by side: each process's wall time is measured from start to exit. Finished runs are
kept in --out and not run again (--rerun to force), so an interrupted comparison continues where it stopped.

Prints a table (average incremental accuracy per seed and mean, gap, tolerance, verdict, wall times and the
ltcil/peer time ratio) and writes --out/records.jsonl (one line per run) and --out/summary.jsonl (one line
per method and classifier). Not run by the test suite; tests/test_peers.py tests the harness's own logic.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import per_class_subset  # noqa: E402
import recipes  # noqa: E402

HERE = Path(__file__).resolve().parent
ADAPTERS = {"pycil": HERE / "pycil_adapter.py", "avalanche": HERE / "avalanche_adapter.py",
            "pilot": HERE / "pilot_adapter.py", "ldam-drw": HERE / "ldam_adapter.py",
            "balms": HERE / "balms_adapter.py",
            **{peer: HERE / "facil_adapter.py" for peer in recipes.FACIL_PEERS}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer", required=True, choices=sorted(ADAPTERS))
    p.add_argument("--methods", nargs="+", default=None, help="default: every method the peer has a recipe for")
    p.add_argument("--epochs", type=int, default=5, help="epochs of every task, on both sides")
    p.add_argument("--seeds", type=int, default=2, help="the first N of " + ", ".join(map(str, recipes.SEEDS)))
    p.add_argument("--seed-list", type=int, nargs="+", default=None, help="explicit seeds (class orders)")
    p.add_argument("--tasks", type=int, default=4, help="stop both toolkits after this many tasks (0: all)")
    p.add_argument("--data", default="../shared/data", help="folder with cifar-100-python.tar.gz")
    p.add_argument("--train-per-class", type=int, default=0,
                   help="both sides train on the first N training images of every class (per_class_subset.py writes "
                        "them into --out; the whole test set is kept); 0: all")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--peer-python", default=None, help="the peer venv's python (required unless --only ltcil)")
    p.add_argument("--pycil", type=Path, default=None, help="PyCIL checkout (--peer pycil)")
    p.add_argument("--repo", type=Path, default=None,
                   help="checkout of the FACIL-based peer (--peer " + " / ".join(recipes.FACIL_PEERS) + ") or of "
                        "LAMDA-PILOT (--peer pilot), of LDAM-DRW (--peer ldam-drw) or of "
                        "BalancedMetaSoftmax-Classification (--peer balms)")
    p.add_argument("--vit-weights", type=Path, default=None,
                   help="--peer pilot: the shared random ViT both sides load (pilot_adapter.py --make-weights)")
    p.add_argument("--threads", type=int, default=0, help="torch threads on both sides (0: all cores)")
    p.add_argument("--milestones", choices=("scaled", "full"), default="scaled",
                   help="scaled: the recipe's lr milestones at the same fractions of the short schedule, on both "
                        "sides (default); full: as written, so a short schedule runs at the initial lr")
    p.add_argument("--save-peer-models", action="store_true",
                   help="keep the peer's network after each task in --out/<peer>_<run>_models/task_NNN.pt, for "
                        "shared_start.py (PyCIL, the FACIL-based peers, LAMDA-PILOT)")
    p.add_argument("--only", choices=("both", "peer", "ltcil"), default="both")
    p.add_argument("--rerun", action="store_true", help="run again even where a result is stored")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    args.methods = args.methods or recipes.peer_methods(args.peer)
    args.data = str(Path(args.data).resolve())
    try:
        args.recipes = [recipes.recipe(args.peer, m) for m in args.methods]
        args.seed_values = recipes.seed_list(args.seeds, args.seed_list)
    except (KeyError, ValueError) as exc:
        p.error(str(exc).strip("'\""))
    if args.save_peer_models and args.peer == "avalanche":
        p.error("--save-peer-models: the Avalanche adapter does not save its models")
    if args.epochs < 1:
        p.error(f"--epochs: {args.epochs} must be >= 1")
    if args.train_per_class < 0:
        p.error(f"--train-per-class: {args.train_per_class} must be >= 0")
    if args.train_per_class and args.peer in recipes.FACIL_PEERS + ("ldam-drw", "balms"):
        p.error(f"--train-per-class: the {args.peer} adapter builds its own long-tailed subset of the archive")
    if args.tasks < 0 or args.tasks > 20:
        p.error(f"--tasks: {args.tasks} must be between 0 (all) and 20")
    if args.peer == "pilot" and (args.vit_weights is None or not args.vit_weights.is_file()) and not args.dry_run:
        p.error(f"--vit-weights: {args.vit_weights} is not a file; write it with pilot_adapter.py --make-weights")
    if args.vit_weights is not None:
        args.vit_weights = args.vit_weights.resolve()
    if args.only != "ltcil" and not args.dry_run:
        if not args.peer_python:
            p.error("--peer-python: the python of the peer's venv is required to run the peer")
        if args.peer == "pycil" and (args.pycil is None or not (args.pycil / "main.py").exists()):
            p.error(f"--pycil: {args.pycil} is not a PyCIL checkout (no main.py there)")
        if args.peer == "balms" and (args.repo is None or not (args.repo / "run_networks.py").exists()):
            p.error(f"--repo: {args.repo} is not a BalancedMetaSoftmax-Classification checkout (no run_networks.py)")
        if args.peer == "ldam-drw" and (args.repo is None or not (args.repo / "cifar_train.py").exists()):
            p.error(f"--repo: {args.repo} is not an LDAM-DRW checkout (no cifar_train.py there)")
        if args.peer == "pilot" and (args.repo is None or not (args.repo / "main.py").exists()):
            p.error(f"--repo: {args.repo} is not a LAMDA-PILOT checkout (no main.py there)")
        if args.peer in recipes.FACIL_PEERS and (args.repo is None
                                                  or not (args.repo / "src" / "main_incremental.py").exists()):
            p.error(f"--repo: {args.repo} is not a FACIL-based checkout (no src/main_incremental.py there)")
    return args


def peer_command(args, rec: recipes.Recipe, seed: int, out_json: Path) -> list[str]:
    if args.peer in recipes.FACIL_PEERS:
        cmd = [args.peer_python or "PEER_PYTHON", str(ADAPTERS[args.peer]), "--repo", str(args.repo or "REPO"),
               *rec.peer_args, "--epochs", str(args.epochs), "--stop-at", str(args.tasks), "--seed", str(seed),
               "--data", str(args.data), "--out", str(out_json)]
        if args.milestones == "scaled":
            cmd += ["--milestones", *map(str, recipes.short_schedule(rec, args.epochs)["later"])]
        if args.save_peer_models:
            cmd += ["--save-models", str(out_json.with_name(out_json.stem + "_models"))]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if rec.peer_epoch_args:
            cmd += ["--", *(x for arg in rec.peer_epoch_args for x in (arg, str(args.epochs)))]
        return cmd
    if args.peer == "balms":  # one task: the released warm-up + cosine at --epochs
        sched = recipes.short_schedule(rec, args.epochs)
        cmd = [args.peer_python or "PEER_PYTHON", str(ADAPTERS[args.peer]), "--repo", str(args.repo or "REPO"),
               *rec.peer_args, "--epochs", str(args.epochs), "--warmup", str(sched["warmup"]["peer"]),
               "--seed", str(seed), "--data", str(args.data), "--out", str(out_json)]
        if "--decouple" in rec.peer_args:  # cRT and LWS train for the parity's epochs too
            cmd += ["--crt-epochs", str(args.epochs), "--lws-epochs", str(args.epochs)]
        return cmd + (["--threads", str(args.threads)] if args.threads else [])
    if args.peer == "ldam-drw":  # one task: the whole recipe's schedule shape at --epochs
        sched = recipes.short_schedule(rec, args.epochs)
        cmd = [args.peer_python or "PEER_PYTHON", str(ADAPTERS[args.peer]), "--repo", str(args.repo or "REPO"),
               *rec.peer_args, "--epochs", str(args.epochs), "--seed", str(seed), "--data", str(args.data),
               "--warmup", str(sched["warmup"]["peer"]), "--milestones", *map(str, sched["later"]),
               "--drw", str(sched.get("drw", sched["later"][0])), "--out", str(out_json)]
        return cmd + (["--threads", str(args.threads)] if args.threads else [])
    cmd = [args.peer_python or "PEER_PYTHON", str(ADAPTERS[args.peer]), "--method", rec.method,
           "--epochs", str(args.epochs), "--tasks", str(args.tasks), "--seed", str(seed), "--data", str(args.data),
           "--out", str(out_json)]
    if args.peer == "pilot":
        cmd += ["--repo", str(args.repo or "REPO"), "--weights", str(args.vit_weights or "WEIGHTS"), *rec.peer_args]
        later = recipes.short_schedule(rec, args.epochs)["later"] if args.milestones == "scaled" else []
        if later:  # a stepped schedule (SLCA's): its milestones at the parity's epochs
            cmd += ["--milestones", *map(str, later)]
        if args.save_peer_models:
            cmd += ["--save-models", str(out_json.with_name(out_json.stem + "_models"))]
        return cmd + (["--threads", str(args.threads)] if args.threads else [])
    if args.peer == "pycil":
        cmd += ["--pycil", str(args.pycil)]
    if args.save_peer_models:
        cmd += ["--save-models", str(out_json.with_name(out_json.stem + "_models"))]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.milestones == "scaled":
        sched = recipes.short_schedule(rec, args.epochs)
        cmd += ["--init-milestones", *map(str, sched["init"]), "--milestones", *map(str, sched["later"])]
    return cmd


def ltcil_command(args, rec: recipes.Recipe, seed: int, run_dir: Path) -> list[str]:
    overrides = recipes.ltcil_overrides(rec, args.epochs, seed, args.tasks, args.data, threads=args.threads,
                                        scaled=args.milestones == "scaled")
    if args.peer == "pilot":
        overrides.append(f"backbone.checkpoint={args.vit_weights or 'WEIGHTS'}")
    if args.train_per_class:  # the subset's .npz (ltcil's CIFAR reader wants the official 50,000 images)
        overrides += ["data.name=npz", f"data.root={Path(args.data) / per_class_subset.NPZ}"]
    return [sys.executable, "-m", "ltcil", "run", rec.config, *overrides, "--out", str(run_dir), "--force",
            "--quiet"]


def timed(cmd: list[str], log: Path) -> float:
    """Run `cmd` to completion with its output in `log`; its wall time in seconds."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed with exit code {proc.returncode} (log: {log}):\n  {' '.join(cmd)}")
    return wall


def stored_or_run(args, who: str, what: str, stored: Path, cmd: list[str], log: Path, make_record):
    """The record stored at `stored`; without one (or with --rerun) run `cmd` first and store
    make_record(wall seconds). None on a dry run."""
    if args.rerun or not stored.exists():
        print(f"[{who}] {what}: {' '.join(cmd)}", flush=True)
        if args.dry_run:
            return None
        wall = timed(cmd, log)
        stored.write_text(json.dumps(make_record(wall)))
    return recipes.read_json(stored)


def run_one(args, rec: recipes.Recipe, seed: int) -> list[dict]:
    """The peer's and ltcil's records for one (method, seed), running what is not stored yet."""
    out = args.out
    tag = (f"{rec.method}_s{seed}_e{args.epochs}_t{args.tasks}" + ("_ms" if args.milestones == "scaled" else "")
           + (f"_n{args.train_per_class}" if args.train_per_class else ""))
    what = f"{rec.method} seed {seed}"
    records = []
    if args.only in ("both", "peer"):
        raw_path = out / f"{args.peer}_{tag}.json"
        records.append(stored_or_run(
            args, args.peer, what, out / f"{args.peer}_{tag}.record.json", peer_command(args, rec, seed, raw_path),
            out / f"{args.peer}_{tag}.log",
            lambda wall: recipes.peer_record(recipes.read_json(raw_path), rec, wall)))
    if args.only in ("both", "ltcil"):
        run_dir = out / f"ltcil_{args.peer}_{tag}"
        records.append(stored_or_run(
            args, "ltcil", what, out / f"ltcil_{args.peer}_{tag}.record.json",
            ltcil_command(args, rec, seed, run_dir), out / f"ltcil_{args.peer}_{tag}.log",
            lambda wall: recipes.ltcil_record(recipes.read_json(run_dir / "results.json"), rec, seed, wall)))
    return [r for r in records if r is not None]


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.train_per_class:
        subset = args.out / f"cifar100_train{args.train_per_class}"
        if not args.dry_run:
            per_class_subset.write_subset(Path(args.data), args.train_per_class, subset)
        args.data = str(subset.resolve())
    records = []
    for rec in args.recipes:
        for seed in args.seed_values:
            records += run_one(args, rec, seed)
    if args.dry_run:
        return
    with open(args.out / "records.jsonl", "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    rows = recipes.summarise(records)
    with open(args.out / "summary.jsonl", "w") as fh:
        for row in rows:
            fh.write(json.dumps({"peer": args.peer, "epochs": args.epochs, "tasks": args.tasks,
                                 "milestones": args.milestones, **row.as_dict()})
                     + "\n")
    print()
    print(recipes.format_table(rows, args.peer))
    print(f"\naverage incremental accuracy over the first {args.tasks or 'all'} tasks of each recipe's scenario, "
          f"{args.epochs} epochs per task, lr milestones {args.milestones}; tol = max({recipes.TOLERANCE}, seed "
          "spread); wall: whole process, s")


if __name__ == "__main__":
    main()

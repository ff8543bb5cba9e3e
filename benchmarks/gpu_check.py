"""Everything a first GPU slot should answer, in one command, each step time-boxed and recorded as soon as it
ends (a timeout keeps what finished):

    python3 benchmarks/gpu_check.py --out $OUT                # on the GPU machine, from the repository root
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu   # the same steps on the CPU with tiny data (CI)

Where the CIFAR-100 archive cannot travel (the device tool takes 64 MiB), take the first tasks' classes along:
    python benchmarks/cifar_subset.py --classes 20 --out gpu_data/cifar100_first20.npz   # here; 32 MiB
    python3 benchmarks/gpu_check.py --out /tmp/gc --data gpu_data/cifar100_first20.npz  # there (carry gpu_data)
full_run then runs the first tasks of the same iCaRL run (same order, full-archive normalisation) and projects
the wall time of all ten.

No install is needed beyond `PYTHONPATH=src` (set here for the subprocesses) or `pip install --no-deps -e .`.
Steps, in this order (the full schedule last, with whatever time is left):
  env         GPU name and memory, torch / CUDA / cuDNN versions, Python
  gpu_tests   the suite's CUDA tests (tests/test_gpu.py, tests/test_heads.py -k gpu)
  torchrun    `torchrun --nproc_per_node=1 -m ltcil run` on NCCL (gloo on the CPU), then `ltcil resume` on it
  smoke       every registered method, 2 tasks x 1 epoch on generated data, bf16 autocast and channels_last on,
              then a resume after task 1 that must give the same first-task accuracy
  throughput  benchmarks/train_throughput.py: ltcil's device pipeline (eager, torch.compile, CUDA graphs) vs the
              per-sample DataLoader pipeline, ResNet-32, batch 128, and the bare step on a resident batch (--floor:
              drawn across classes, denormals flushed)
  streaming   benchmarks/streaming.py on a generated ImageNet-like JPEG tree: streamed decode + augment to 224 px
              batches on the GPU, from the files and from the packed cache, vs a per-sample DataLoader
  vit         benchmarks/frozen_features.py: ViT-B/16 at 224 px, bf16: the frozen-feature pass (images/s, peak
              memory), a linear probe over features computed once vs the backbone re-run each epoch, a
              training step of L2P (images/s, peak memory)
  full_run    iCaRL CIFAR-100 B0-Inc10 at PyCIL's schedule (icarl_resnet32_cifar100_b0inc10_pycil, 200 + 9 x 170
              epochs): the first task, the projected wall time of all ten, then as many further tasks as the time
              left allows (resuming); accuracy against PyCIL's published 64.4

Writes $OUT/gpu_check.jsonl (one JSON object per step: name, ok, seconds, what it measured, the tail of its
output when it failed) and each step's full output as $OUT/<step>.log.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED_ICARL_PYCIL = 64.4  # PyCIL's reported average incremental accuracy for this recipe


class Check:
    def __init__(self, out: Path, budget: float, dry_run: bool):
        self.out, self.dry_run = out, dry_run
        self.deadline = time.monotonic() + budget
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
                    "PYTHONUNBUFFERED": "1"}
        out.mkdir(parents=True, exist_ok=True)
        self.log = open(out / "gpu_check.jsonl", "a")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, step: str, ok: bool, seconds: float, **fields) -> dict:
        row = {"step": step, "ok": ok, "seconds": round(seconds, 1), "dry_run": self.dry_run, **fields}
        self.log.write(json.dumps(row) + "\n")
        self.log.flush()
        print(json.dumps(row), flush=True)
        return row

    def run(self, step: str, cmd: list[str], limit: float) -> tuple[bool, str, float]:
        """Run `cmd` from the repository root within min(limit, time left); (ok, output, seconds)."""
        limit = max(1.0, min(limit, self.left()))
        start = time.monotonic()
        log = self.out / f"{step}.log"
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=limit)
            output, ok = proc.stdout, proc.returncode == 0
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            output, ok = output + f"\n[timed out after {limit:.0f} s]", False
        with open(log, "a") as fh:
            fh.write(f"$ {' '.join(cmd)}\n{output}\n")
        return ok, output, time.monotonic() - start


def step_env(check: Check) -> None:
    start = time.monotonic()
    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "gpu": None, "gpu_memory_gb": None, "devices": torch.cuda.device_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}")
    check.record("env", True, time.monotonic() - start, **info)


def step_gpu_tests(check: Check) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_gpu.py",
           "tests/test_heads.py", "-k", "gpu or GPU or cuda"]
    ok, output, seconds = check.run("gpu_tests", cmd, 150)
    summary = [line for line in output.splitlines() if " passed" in line or " failed" in line or "error" in line]
    check.record("gpu_tests", ok, seconds, summary=summary[-1:] or None, tail=None if ok else output[-3000:])


def tiny_overrides() -> list[str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import TINY

    return list(TINY)


def step_torchrun(check: Check, device: str) -> None:
    """The digits quick start (5 tasks, 1 epoch each; dry run: 3 tiny generated tasks) under torchrun; then its
    last task again through `ltcil resume` under torchrun, which must end as the first run did."""
    run_dir = check.out / "torchrun_run"
    shutil.rmtree(run_dir, ignore_errors=True)
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "ltcil"]
    setting = tiny_overrides() if check.dry_run else ["quickstart_digits", "train.epochs=1", "log.report=never"]
    ok, output, seconds = check.run("torchrun", base + [
        "run", *setting, f"device={device}", "--out", str(run_dir), "--quiet"], 120)
    fields = {"backend": "nccl" if device == "cuda" else "gloo"}
    if ok:
        first = json.loads((run_dir / "results.json").read_text())
        last = sorted((run_dir / "checkpoints").glob("task_*.pt"))[-1]
        last.unlink()
        ok, more, extra = check.run("torchrun", base + ["resume", str(run_dir)], 90)
        output, seconds = output + more, seconds + extra
        if ok:
            again = json.loads((run_dir / "results.json").read_text())
            fields.update(accuracy=first["accuracy"], resumed_accuracy=again["accuracy"])
            ok = again["accuracy"][:-1] == first["accuracy"][:-1] and len(again["accuracy"]) == len(first["accuracy"])
    check.record("torchrun", ok, seconds, **fields, tail=None if ok else output[-3000:])


def step_smoke(check: Check, device: str) -> None:
    """Every method in-process: 2 tiny tasks with autocast and channels_last, then a resume after task 1."""
    start = time.monotonic()
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import METHOD_OVERRIDES

    TINY = tiny_overrides()

    from ltcil import registry
    from ltcil.config import load_config
    from ltcil.engine.runner import Experiment

    rows = {}
    for name in registry.available("method"):
        if check.left() < 30:
            rows[name] = {"ok": False, "error": "not run: out of time"}
            continue
        t0 = time.monotonic()
        overrides = TINY + [f"method.name={name}", *METHOD_OVERRIDES.get(name, []), f"device={device}",
                            "train.amp=true", "train.channels_last=true", "scenario.max_tasks=2"]
        run_dir = check.out / "smoke" / name
        shutil.rmtree(run_dir, ignore_errors=True)
        try:
            quiet = dict(progress=False, log=lambda *_: None)
            full = Experiment(load_config(None, overrides), run_dir, **quiet).run()
            (run_dir / "checkpoints" / "task_001.pt").unlink()
            exp = Experiment(load_config(None, overrides), run_dir, **quiet)
            assert exp.restore() and exp.next_task == 1, "resume did not continue after task 1"
            resumed = exp.run()
            assert resumed["accuracy"][0] == full["accuracy"][0], "task 1 changed across the resume"
            rows[name] = {"ok": True, "accuracy": full["accuracy"], "seconds": round(time.monotonic() - t0, 1)}
        except Exception as exc:  # a failing method is recorded, the others still run
            rows[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    ok = all(isinstance(r, dict) and r["ok"] for r in rows.values())
    check.record("smoke", ok, time.monotonic() - start, methods=rows)


def step_throughput(check: Check, device: str, data: str) -> None:
    cmd = [sys.executable, "benchmarks/train_throughput.py", "--device", device, "--floor", "--amp"]  # + bare step
    if check.dry_run:
        cmd += ["--synthetic", "400", "--steps", "1", "--warmup", "1", "--workers", "0", "--compile", "off", "eager"]
    else:
        cmd += ["--data-root", data, "--steps", "100", "--warmup", "20", "--workers", "0", "8",
                "--compile", "off", "default", "reduce-overhead"]
    ok, output, seconds = check.run("throughput", cmd, 240)
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    check.record("throughput", ok, seconds, rows=[{k: r.get(k) for k in ("pipeline", "compile", "workers",
                                                                         "images_per_second")} for r in rows],
                 tail=None if ok else output[-3000:])


def step_streaming(check: Check, device: str) -> None:
    work = check.out / "streaming"
    size = ["--classes", "4", "--per-class", "12", "--val-per-class", "2", "--batches", "2", "--batch-size", "8",
            "--workers", "2", "--scales", "1"] if check.dry_run else \
        ["--classes", "20", "--per-class", "130", "--val-per-class", "5", "--batches", "15", "--workers", "12",
         "--scales", "1", "4"]
    cmd = [sys.executable, "benchmarks/streaming.py", "--work", str(work), "--device", device, *size]
    ok, output, seconds = check.run("streaming", cmd, 150)
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    check.record("streaming", ok, seconds, rows=rows, tail=None if ok else output[-3000:])


def step_vit(check: Check, device: str) -> None:
    """ViT-B/16 (random weights) at 224 px: the frozen-feature pass, a linear probe over features computed once
    against the backbone re-run every epoch, and an L2P training step (benchmarks/frozen_features.py)."""
    size = ["--model", "vit_micro", "--images", "16", "--batch-size", "8", "--epochs", "1"] if check.dry_run else \
        ["--model", "vit_base_patch16_224", "--images", "8192", "--batch-size", "256", "--epochs", "3", "--amp"]
    cmd = [sys.executable, "benchmarks/frozen_features.py", "--device", device, *size]
    ok, output, seconds = check.run("vit", cmd, 150)
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    check.record("vit", ok, seconds, rows=rows, tail=None if ok else output[-3000:])


def step_full_run(check: Check, device: str, data: str, more: list) -> None:
    """The published schedule: the first task, the projected wall time of all tasks from it, then as many further
    tasks as the time left allows (full_run.py resumes the same run folder)."""
    run_dir = check.out / "full_icarl"
    if check.dry_run:
        config, extra = "quickstart_digits", [*tiny_overrides(), "method.name=icarl", "train.first_task.epochs=2"]
    elif data.endswith(".npz"):  # the first classes of the same order (benchmarks/cifar_subset.py)
        side = json.loads(Path(data).with_suffix(".json").read_text())
        config, extra = "icarl_resnet32_cifar100_b0inc10_pycil", [*side["overrides"], "data.root=" + data]
    else:
        config, extra = "icarl_resnet32_cifar100_b0inc10_pycil", ["data.root=" + data, "data.download=false"]
    base = [sys.executable, "benchmarks/full_run.py", "--config", config, "--out", str(run_dir),
            "--set", f"device={device}", *extra, *more]

    def lines(text, prefix):
        return [json.loads(line) for line in text.splitlines() if line.startswith(prefix)]

    ok, output, seconds = check.run("full_run", base + ["scenario.max_tasks=1"], check.left() - 5)
    if not ok or not lines(output, '{"config"'):
        check.record("full_run", False, seconds, tail=output[-3000:])
        return
    first = lines(output, '{"task"')[0]
    results = json.loads((run_dir / "results.json").read_text())
    available = len(results["tasks"])  # the tasks the data holds; a class subset holds the first few
    scenario = results["config"]["scenario"]
    total = available if not data.endswith(".npz") else \
        1 + -(-(side["full_classes"] - scenario["initial"]) // scenario["increment"])
    cfg = results["config"]["train"]
    # a later task trains on the new classes plus the memory (B0-Inc10: 7,000 images instead of 5,000) for
    # train.epochs epochs, with a teacher forward (about a third of a step)
    later_images = first["train_images"] / (cfg["first_task"]["epochs"] or cfg["epochs"]) * cfg["epochs"] * 7 / 5
    per_later = first["train"] / first["train_images"] * later_images * 1.35 + first["end"] + first["eval"]
    projected = seconds + (total - 1) * per_later
    todo = min(available, 1 + int(max(0.0, check.left() - 20) // per_later))
    if todo > 1:
        ok, more, more_s = check.run("full_run", base + [f"scenario.max_tasks={todo}"], check.left() - 5)
        output, seconds = output + more, seconds + more_s
    summary = lines(output, '{"config"')[-1]
    results = json.loads((run_dir / "results.json").read_text())
    check.record("full_run", ok, seconds, config=config, data=Path(data).name, tasks_done=len(results["accuracy"]),
                 total_tasks=total,
                 accuracy=results["accuracy"], average_incremental_accuracy=results["average_incremental_accuracy"],
                 published=None if check.dry_run else PUBLISHED_ICARL_PYCIL, projected_full_wall_s=round(projected),
                 first_task_images_per_s=first["train_images_per_s"], gpu=summary.get("gpu"),
                 peak_gpu_mb=summary.get("peak_gpu_mb"), tail=None if ok else output[-3000:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny data: every step's code path, in minutes")
    p.add_argument("--budget", type=float, default=530, help="seconds for all steps (default fits a 9-min slot)")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"),
                   help="folder with the CIFAR-100 archive, or a class subset .npz from benchmarks/cifar_subset.py")
    p.add_argument("--set", nargs="*", default=[], help="extra overrides for full_run (e.g. a short schedule)")
    p.add_argument("--cpu", action="store_true", help="run the real steps on the CPU (checks the script itself)")
    p.add_argument("--steps", nargs="+",
                   default=["env", "gpu_tests", "torchrun", "smoke", "throughput", "streaming", "vit", "full_run"])
    args = p.parse_args()

    check = Check(args.out, args.budget, args.dry_run)
    import torch

    device = "cuda" if torch.cuda.is_available() and not (args.dry_run or args.cpu) else "cpu"
    if not (args.dry_run or args.cpu) and device != "cuda":
        check.record("env", False, 0.0, error="no CUDA device: use --dry-run on a machine without a GPU")
        raise SystemExit(2)
    steps = {"env": lambda: step_env(check), "gpu_tests": lambda: step_gpu_tests(check),
             "torchrun": lambda: step_torchrun(check, device), "smoke": lambda: step_smoke(check, device),
             "throughput": lambda: step_throughput(check, device, args.data),
             "streaming": lambda: step_streaming(check, device), "vit": lambda: step_vit(check, device),
             "full_run": lambda: step_full_run(check, device, args.data, args.set)}
    for name in args.steps:
        if check.left() <= 5:
            check.record(name, False, 0.0, error="not run: the time budget is spent")
            continue
        start = time.monotonic()
        try:
            steps[name]()
        except Exception as exc:  # the script itself must not stop the slot: record and go on
            check.record(name, False, time.monotonic() - start, error=f"{type(exc).__name__}: {exc}"[:1000])
    check.log.close()


if __name__ == "__main__":
    main()

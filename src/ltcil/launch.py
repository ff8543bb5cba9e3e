"""Who runs a grid's runs (`ltcil grid --launcher`): this machine, N at once, each pinned to its share of the
cores (or to one GPU where there are several), or a Slurm cluster through submitit (array jobs, throttled,
requeued jobs resuming). There is no scheduler here beyond a bounded pool: Slurm's queue does the rest.

Every run is a child `python -m ltcil run` (or `resume`) process, so a failing run fails alone and a killed
one resumes from its last checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .engine.run_folder import is_run_folder
from .errors import LtcilError
from .grid import GRID_DIR, GridRun, last_lines, log_path, read_status, state, write_status


def command(out: Path, run: GridRun) -> list[str]:
    """Resume a run that began (ltcil's resume starts it again when it stopped before its first checkpoint);
    start one that did not, replacing a folder it left with nothing written."""
    folder = out / run.name
    if is_run_folder(folder):
        return [sys.executable, "-m", "ltcil", "resume", str(folder), "--quiet"]
    return [sys.executable, "-m", "ltcil", *run.command(out)]


def execute(out: Path, run: GridRun, cores: Optional[list] = None, gpu: Optional[int] = None) -> dict:
    """Run (or resume) one run to its end in a child process; its outcome recorded under GRID_DIR."""
    if state(out, run) == "done":
        return read_status(out, run)
    cmd = command(out, run)
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores and hasattr(os, "sched_setaffinity") else None
    started = time.time()
    write_status(out, run, status="running", started=started, host=os.uname().nodename, command=cmd[2:])
    log = log_path(out, run)
    with open(log, "a") as fh:
        fh.write(f"$ ltcil {' '.join(cmd[3:])}\n")
        fh.flush()
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, preexec_fn=pin)
    seconds = round(time.time() - started, 1)
    if code == 0 and (out / run.name / "results.json").exists():
        record = {"status": "done", "seconds": seconds}
    else:
        record = {"status": "failed", "exit_code": code, "seconds": seconds, "error": last_lines(log)}
    write_status(out, run, **record, command=cmd[2:])
    return read_status(out, run)


class Progress:
    """Runs done / running / failed / waiting, one line each time one starts or ends."""

    def __init__(self, total: int, say: Callable[[str], None] = print):
        self.total, self.say = total, say
        self.done = self.failed = self.running = 0
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        waiting = self.total - self.done - self.failed - self.running
        self.say(f"[{self.done} done, {self.running} running, {self.failed} failed, {waiting} waiting] {text}")

    def start(self, run: GridRun) -> None:
        with self.lock:
            self.running += 1
            self.line(f"started {run.name}")

    def end(self, run: GridRun, record: dict) -> None:
        with self.lock:
            self.running -= 1
            if record.get("status") == "done":
                self.done += 1
                self.line(f"finished {run.name} in {record.get('seconds', 0):.0f} s")
            else:
                self.failed += 1
                self.line(f"FAILED {run.name} (exit {record.get('exit_code')}): "
                          + " / ".join(record.get("error") or []))


def cpu_slots(jobs: int) -> list[list[int]]:
    """The usable cores split between `jobs` runs (disjoint while there are enough)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if jobs >= len(cores):
        return [[cores[i % len(cores)]] for i in range(jobs)]
    share = len(cores) // jobs
    return [cores[i * share:(i + 1) * share] for i in range(jobs)]


def run_local(out: Path, runs: list[GridRun], jobs: int, say: Callable[[str], None] = print) -> dict:
    """Up to `jobs` runs at once on this machine: one per GPU where there are several (jobs defaults to
    their count), otherwise each on its share of the cores."""
    gpus = _gpu_count()
    jobs = max(1, jobs or (gpus if gpus > 1 else 1))
    slots = [{"gpu": i % gpus if gpus > 1 else None, "cores": cores} for i, cores in enumerate(cpu_slots(jobs))]
    free = list(range(jobs))
    free_lock = threading.Lock()
    progress = Progress(len(runs), say)
    outcomes = {}

    def one(run: GridRun) -> None:
        with free_lock:
            slot = slots[free.pop()]
        progress.start(run)
        try:
            record = execute(out, run, slot["cores"], slot["gpu"])
        finally:
            with free_lock:
                free.append(slots.index(slot))
        outcomes[run.name] = record
        progress.end(run, record)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(one, run) for run in runs]:
            future.result()
    return outcomes


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # no usable torch build here: plain CPU slots
        return 0


@dataclass
class SlurmOptions:
    partition: str = ""
    time_min: int = 240  # per run; a job past it is requeued and resumes
    gpus: int = 0  # per run
    cpus: int = 0  # per run (0: Slurm's default)
    parallel: int = 0  # array throttling: at most this many runs at once (0: no limit)
    cluster: str = "slurm"  # "local": submitit's local executor (tests; a machine without Slurm)


class GridJob:
    """What a Slurm array task runs: one grid run. submitit requeues it on preemption or timeout
    (`checkpoint`), and the requeued task resumes the run from its last checkpoint."""

    def __init__(self, out: Path):
        self.out = Path(out).resolve()

    def __call__(self, run: GridRun) -> dict:
        return execute(self.out, run)

    def checkpoint(self, run: GridRun):
        import submitit

        return submitit.helpers.DelayedSubmission(GridJob(self.out), run)


def run_slurm(out: Path, runs: list[GridRun], opts: SlurmOptions, say: Callable[[str], None] = print,
              poll: float = 10.0) -> dict:
    """Submit the runs as one Slurm array through submitit, then follow it until every task has ended."""
    try:
        import submitit
    except ImportError:
        raise LtcilError("ltcil grid --launcher slurm runs through submitit: pip install submitit (or "
                         "pip install 'ltcil[cluster]').") from None
    executor = submitit.AutoExecutor(folder=str(out / GRID_DIR / "submitit" / "%j"), cluster=opts.cluster)
    params = {"timeout_min": opts.time_min, "name": f"ltcil-grid-{out.name}"}
    if opts.cluster == "slurm":
        params.update(slurm_partition=opts.partition or None, gpus_per_node=opts.gpus or None,
                      cpus_per_task=opts.cpus or None, slurm_array_parallelism=opts.parallel or len(runs))
        params = {k: v for k, v in params.items() if v is not None}
    executor.update_parameters(**params)
    jobs = executor.map_array(GridJob(out), runs)
    say(f"submitted {len(jobs)} run(s) as {opts.cluster} job {jobs[0].job_id.split('_')[0] if jobs else '-'}")
    progress = Progress(len(runs), say)
    pending = dict(zip((run.name for run in runs), zip(runs, jobs)))
    started: set = set()
    outcomes = {}
    while pending:
        for name, (run, job) in list(pending.items()):
            if name not in started and (job.done() or job.state in ("RUNNING", "COMPLETING")):
                started.add(name)
                progress.start(run)
            if job.done():
                try:
                    record = job.result()
                except Exception as exc:  # the job itself failed (node lost, cancelled): what the run left
                    record = {**read_status(out, run), "status": "failed",
                              "error": last_lines(log_path(out, run)) or [f"{type(exc).__name__}: {exc}"[:300]]}
                outcomes[name] = record
                progress.end(run, record)
                del pending[name]
        if pending:
            time.sleep(poll)
    return outcomes

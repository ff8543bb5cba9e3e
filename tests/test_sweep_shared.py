"""`ltcil sweep --optuna N --storage URL`: several processes share each task's study through Optuna's RDB
storage (SQLite here), go on from the same chosen model, and a killed worker's trial is failed and retried."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY

optuna = pytest.importorskip("optuna")

SRC = str(Path(__file__).resolve().parents[1] / "src")
SETTING = [*TINY, "scenario.max_tasks=2", "scenario.val_fraction=0.25"]


def worker(out, db, *extra):
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-m", "ltcil", "sweep", *SETTING, "--grid", "train.lr=0.01,0.05,0.1,0.2",
                             "--grid", "train.weight_decay=0,0.001", "--optuna", "3", "--storage", f"sqlite:///{db}",
                             "--study", "shared", "--out", str(out), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def trials(db, task):
    study = optuna.load_study(study_name=f"shared-task{task}", storage=f"sqlite:///{db}")
    return study.get_trials(deepcopy=False)


@pytest.mark.slow
def test_two_workers_share_one_study_and_choose_the_same_path(tmp_path):
    out, db = tmp_path / "sweep", tmp_path / "sweep.db"
    procs = [worker(out, db), worker(out, db)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr[-2000:]
    for task in (1, 2):
        done = [t for t in trials(db, task) if t.state.name == "COMPLETE"]
        assert len(done) >= 3 and all((out / t.user_attrs["dir"]).is_dir() for t in done)
        assert all(t.user_attrs["dir"].startswith(f"task{task}/trial") for t in done)
    record = json.loads((out / "sweep.json").read_text())
    assert "shared study 'shared'" in record["search"] and len(record["tasks"]) == 2
    # both workers read the same finished trials: the same choices, printed by each
    chosen = [[line for line in stdout.splitlines() if line.strip()[:1].isdigit()] for stdout, _ in outputs]
    assert chosen[0] == chosen[1] and len(chosen[0]) == 2


@pytest.mark.slow
def test_a_killed_workers_trial_is_failed_and_run_again(tmp_path):
    out, db = tmp_path / "sweep", tmp_path / "sweep.db"
    first = worker(out, db, "--heartbeat", "1", "train.epochs=40")  # trials long enough to be killed in one
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if any(t.state.name == "RUNNING" for t in trials(db, 1)):
                break
        except (KeyError, Exception):  # the study is not created yet
            pass
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    second = worker(out, db, "--heartbeat", "1", "train.epochs=40")
    stdout, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr[-2000:]
    states = [t.state.name for t in trials(db, 1)]
    assert "FAIL" in states and states.count("COMPLETE") >= 3  # the dead trial failed, its retry finished
    assert (out / "sweep.json").exists()


def test_storage_needs_optuna_trials(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-m", "ltcil", "sweep", *SETTING, "--grid", "train.lr=0.1,0.2",
                           "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--out", str(tmp_path / "s")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "give --optuna N" in proc.stderr

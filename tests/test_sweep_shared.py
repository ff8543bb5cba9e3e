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
    url = db if str(db).startswith("postgresql") else f"sqlite:///{db}"
    return subprocess.Popen([sys.executable, "-m", "ltcil", "sweep", *SETTING, "--grid", "train.lr=0.01,0.05,0.1,0.2",
                             "--grid", "train.weight_decay=0,0.001", "--optuna", "3", "--storage", url,
                             "--study", "shared", "--out", str(out), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def trials(db, task):
    url = db if str(db).startswith("postgresql") else f"sqlite:///{db}"
    study = optuna.load_study(study_name=f"shared-task{task}", storage=url)
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
def test_a_worker_that_trains_nothing_stops_at_the_last_task_of_max_tasks(tmp_path):
    # a worker that finds every task's study finished learns the task count from the scenario; it used to read
    # the whole scenario (3 tasks here) rather than scenario.max_tasks=2 and fail on a third task
    out, db = tmp_path / "sweep", tmp_path / "sweep.db"
    first = worker(out, db)
    stdout1, stderr1 = first.communicate(timeout=600)
    assert first.returncode == 0, stderr1[-2000:]
    counts = [len(trials(db, task)) for task in (1, 2)]
    second = worker(out, db)
    stdout2, stderr2 = second.communicate(timeout=600)
    assert second.returncode == 0, stderr2[-2000:]
    assert "task 1/2 trial0" in stdout1 and "task 1/2 trial" not in stdout2  # the second trained nothing
    assert [len(trials(db, task)) for task in (1, 2)] == counts
    chosen = [[line for line in text.splitlines() if line.strip()[:1].isdigit()] for text in (stdout1, stdout2)]
    assert chosen[0] == chosen[1] and len(chosen[0]) == 2
    with pytest.raises(KeyError):  # no study for a third task
        trials(db, 3)


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


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server (Debian's postgresql package: initdb, pg_ctl) in a temporary folder, run
    as the postgres user when the test runs as root; skipped where the package or psycopg2 is missing."""
    import importlib.util
    import shlex
    import shutil
    import socket
    import tempfile

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found or importlib.util.find_spec("psycopg2") is None:
        pytest.skip("needs PostgreSQL's server binaries (Debian: postgresql) and psycopg2 (pip install psycopg2-binary)")
    bindir = found[-1].parent
    root = Path(tempfile.mkdtemp(prefix="ltcil-pg-"))
    as_root = os.geteuid() == 0
    if as_root:
        shutil.chown(root, "postgres", "postgres")

    def run(*cmd):
        cmd = [str(c) for c in cmd]
        subprocess.run(["su", "postgres", "-c", shlex.join(cmd)] if as_root else cmd, check=True,
                       capture_output=True, timeout=120)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = root / "data"
    run(bindir / "initdb", "-D", data, "-A", "trust", "-U", "ltcil")
    run(bindir / "pg_ctl", "-D", data, "-l", root / "server.log", "-w", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
    try:
        run(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "ltcil", "optuna")
        yield f"postgresql+psycopg2://ltcil@127.0.0.1:{port}/optuna"  # the driver the test checks for
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_a_study_in_postgresql(tmp_path, postgres_url):
    out = tmp_path / "sweep"
    procs = [worker(out, postgres_url), worker(out, postgres_url)]
    for p in procs:
        _, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-2000:]
    for task in (1, 2):
        assert sum(t.state.name == "COMPLETE" for t in trials(postgres_url, task)) >= 3
    assert "postgresql+psycopg2 storage" in json.loads((out / "sweep.json").read_text())["search"]


def test_a_storage_without_its_driver_or_server_is_one_clear_error(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC}
    for url, words in (("nosuchdb://x/y", "Optuna cannot open it"),
                       ("sqlite:////nonexistent-folder/sub/x.db", "Optuna cannot open it")):
        proc = subprocess.run([sys.executable, "-m", "ltcil", "sweep", *SETTING, "--grid", "train.lr=0.1,0.2",
                               "--optuna", "2", "--storage", url, "--out", str(tmp_path / "s")],
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-1500:]

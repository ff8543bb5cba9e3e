"""`ltcil grid`: the cross product of configs, methods, seeds and values, one run folder each, a mean ± std
table per setting; re-running skips finished runs, resumes killed ones, and never reuses a run whose setting
changed. Launchers: this machine's pool and submitit (its local executor: Slurm's code path without Slurm)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY

from ltcil import grid
from ltcil.config import load_config
from ltcil.errors import ConfigError
from ltcil.launch import SlurmOptions, cpu_slots, run_slurm

SRC = str(Path(__file__).resolve().parents[1] / "src")
FAST = [*TINY, "scenario.max_tasks=2"]


def ltcil(*args, cwd=None):
    import os

    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-m", "ltcil", *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=cwd)


def test_expand_crosses_everything_and_names_each_run_by_its_setting():
    configs, axes = grid.parse_axes(["quickstart_digits", *FAST, "train.weight_decay=0,0.001"])
    runs = grid.expand(configs, axes, ["finetune", "icarl"], ["1", "2"])
    assert len(runs) == 2 * 2 * 2 and len({r.name for r in runs}) == 8
    first = runs[0]
    assert first.name.startswith("quickstart_digits__finetune__train.weight_decay=0__seed1__")
    assert "method.name=finetune" in first.overrides and "seed=1" in first.overrides
    assert dict(first.setting) == {"config": "quickstart_digits", "method": "finetune", "train.weight_decay": "0"}
    # the table groups seeds: 4 settings of 2 runs
    assert len({r.setting for r in runs}) == 4


def test_a_bad_value_fails_before_anything_trains_and_seeds_go_through_their_flag():
    with pytest.raises(ConfigError, match=r"method.name=nosuch.*not valid \(nothing has been trained\)"):
        grid.expand(["quickstart_digits"], {}, ["finetune", "nosuch"], [])
    with pytest.raises(ConfigError, match="give seed with --seeds"):
        grid.parse_axes(["seed=1,2"])
    with pytest.raises(ConfigError, match="train.lr is given twice"):
        grid.parse_axes(["train.lr=0.1", "train.lr=0.2"])


def test_identity_ignores_where_data_lives_but_not_the_experiment():
    base = load_config("quickstart_digits", [])
    moved = load_config("quickstart_digits", ["data.root=/elsewhere", "train.threads=1", "train.progress=false"])
    other = load_config("quickstart_digits", ["train.lr=0.123"])
    assert grid.identity(base) == grid.identity(moved) != grid.identity(other)


def test_mean_and_sample_std_and_the_three_table_formats(tmp_path):
    runs = grid.expand(["quickstart_digits"], {}, ["finetune"], ["1", "2", "3"])
    for run, (aia, last) in zip(runs, ((50.0, 40.0), (60.0, 50.0), (None, None))):
        if aia is None:
            continue  # the third seed never finished: missing, not zero
        (tmp_path / run.name).mkdir()
        (tmp_path / run.name / "results.json").write_text(json.dumps(
            {"average_incremental_accuracy": aia, "last_accuracy": last, "forgetting": 10.0,
             "accuracy_many": [70.0, 65.0], "accuracy_medium": [50.0, 45.0], "accuracy_few": [30.0, 20.0]}))
        grid.write_status(tmp_path, run, status="done")
    tab = grid.write_tables(tmp_path, runs)
    row = tab["rows"][0]
    assert row["runs"] == 2 and row["planned"] == 3
    mean, std, n = row["stats"]["average_incremental_accuracy"]
    assert (mean, n) == (55.0, 2) and std == pytest.approx(7.0710678, rel=1e-6)  # n - 1
    assert tab["metrics"][-3:] == ["many", "medium", "few"] and row["stats"]["few"][0] == 20.0
    md = (tmp_path / "grid_table.md").read_text()
    assert "| quickstart_digits | finetune | 2/3 | 55.00 ± 7.07 | 45.00 ± 7.07 | 10.00 ± 0.00 |" in md
    assert r"$55.00 \pm 7.07$" in (tmp_path / "grid_table.tex").read_text()
    csv_lines = (tmp_path / "grid_table.csv").read_text().splitlines()
    assert csv_lines[0].startswith("config,method,seeds_done,seeds_planned,average_incremental_accuracy_mean")
    assert csv_lines[1].startswith("quickstart_digits,finetune,2,3,55.0,7.0711")


def test_cpu_slots_share_the_cores_without_overlap():
    slots = cpu_slots(2)
    assert len(slots) == 2 and all(slots)
    if len(sum(slots, [])) >= 2:
        assert not set(slots[0]) & set(slots[1])


@pytest.mark.slow
def test_grid_runs_tables_skips_finished_resumes_killed_and_never_reuses_a_changed_setting(tmp_path):
    out = tmp_path / "grid"
    args = ["grid", *FAST, "--methods", "finetune,icarl", "--seeds", "1,2", "--out", str(out), "--jobs", "2"]
    first = ltcil(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "| quickstart_digits | finetune | 2/2 |" in first.stdout  # no config given: the quick start's
    assert first.stdout.count("finished ") == 4
    table = json.loads((out / "grid_table.json").read_text())
    assert [dict(r["setting"])["method"] for r in table["rows"]] == ["finetune", "icarl"]
    assert all(r["runs"] == 2 and r["stats"]["average_incremental_accuracy"][1] is not None for r in table["rows"])
    assert (out / "report" / "report.html").exists()

    again = ltcil(*args)  # the same command: everything kept, nothing trained
    assert again.returncode == 0 and "4 done (kept)" in again.stdout and "started" not in again.stdout

    # a run killed after its first task: results and the grid's record gone, its checkpoint kept
    runs = grid.expand(["quickstart_digits"], dict(grid.parse_axes(FAST)[1]), ["icarl"], ["2"])
    killed = out / runs[0].name
    assert killed.exists()
    (killed / "results.json").unlink()
    grid.status_path(out, runs[0]).unlink()
    for ckpt in sorted((killed / "checkpoints").glob("task_*.pt"))[1:]:
        ckpt.unlink()
    third = ltcil(*args)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "1 to resume" in third.stdout and third.stdout.count("finished ") == 1
    assert "ltcil resume" in grid.log_path(out, runs[0]).read_text()

    changed = ltcil("grid", *FAST, "train.weight_decay=0.001", "--methods", "finetune", "--seeds", "1", "--out", str(out))
    assert changed.returncode == 0 and "1 new" in changed.stdout  # another folder, the old runs untouched
    assert len([p for p in out.iterdir() if p.is_dir() and p.name.startswith("quickstart_digits")]) == 5


def test_a_failing_run_fails_alone_with_its_last_lines(tmp_path):
    out = tmp_path / "grid"
    runs = grid.expand(["quickstart_digits"], dict(grid.parse_axes(FAST)[1]), ["finetune"], ["1"])
    (out / runs[0].name).mkdir(parents=True)
    (out / runs[0].name / "stray.txt").write_text("not ltcil's")  # ltcil run refuses such a folder
    from ltcil.launch import run_local

    lines = []
    outcome = run_local(out, runs, 1, say=lines.append)[runs[0].name]
    assert outcome["status"] == "failed" and outcome["exit_code"] == 2
    assert any("holds no ltcil run" in line for line in outcome["error"]) and "FAILED" in lines[-1]
    assert grid.state(out, runs[0]) == "failed"


def test_submitit_launcher_runs_the_grid_as_an_array(tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "grid"
    (out / grid.GRID_DIR).mkdir(parents=True)
    runs = grid.expand(["quickstart_digits"], dict(grid.parse_axes(FAST)[1]), ["finetune"], ["1", "2"])
    lines = []
    outcomes = run_slurm(out, runs, SlurmOptions(cluster="local", time_min=10), say=lines.append, poll=0.5)
    assert {o["status"] for o in outcomes.values()} == {"done"}, outcomes
    assert all(grid.state(out, run) == "done" for run in runs)
    assert lines[0].startswith("submitted 2 run(s) as local job")
    assert grid.table(out, runs)["rows"][0]["runs"] == 2


@pytest.fixture
def slurm_cluster(tmp_path):
    """A one-node Slurm cluster of this machine, started for the test from a config in tmp_path (Debian's
    slurmctld, slurmd and munge must be installed: `apt-get install slurmctld slurmd slurm-client munge`; the
    test installs nothing). Yields the environment that points sbatch and squeue at it."""
    import os
    import signal
    import socket
    import time

    needed = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "munged", "munge")
    if any(shutil.which(tool) is None for tool in needed) or os.geteuid() != 0:
        pytest.skip("needs Slurm (slurmctld, slurmd, client) and munge installed, and root to start them")
    if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode != 0:
        Path("/run/munge").mkdir(exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", "munged"], check=True)
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("", 0))
            ports.append(sock.getsockname()[1])
    root, host = tmp_path / "slurm", socket.gethostname()
    for sub in ("state", "spool"):
        (root / sub).mkdir(parents=True)
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=ltcil-test", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge",
        f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool", f"SlurmctldPidFile={root}/ctld.pid",
        f"SlurmdPidFile={root}/d.pid", f"SlurmctldPort={ports[0]}", f"SlurmdPort={ports[1]}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core", "ReturnToService=2", "MpiDefault=none", "JobRequeue=1",
        f"SlurmctldLogFile={root}/ctld.log", f"SlurmdLogFile={root}/d.log", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        f"NodeName={host} CPUs={os.cpu_count()} RealMemory=2000 State=UNKNOWN",
        "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
    env = {**os.environ, "SLURM_CONF": str(conf), "PYTHONPATH": SRC}
    subprocess.run(["slurmctld", "-f", str(conf)], check=True, env=env)
    subprocess.run(["slurmd", "-f", str(conf)], check=True, env=env)
    try:
        for _ in range(60):
            states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env).stdout
            if "idle" in states:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the test's Slurm node never came up: {states!r}")
        yield env
    finally:
        subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True)
        for pid_file in ("d.pid", "ctld.pid"):
            try:
                os.kill(int((root / pid_file).read_text()), signal.SIGTERM)
            except (OSError, ValueError):
                pass


@pytest.mark.slow
def test_grid_on_a_one_node_slurm_cluster(tmp_path, slurm_cluster):
    out = tmp_path / "grid"
    args = ["grid", *FAST, "--methods", "finetune,icarl", "--seeds", "1,2", "--launcher", "slurm", "--time", "10",
            "--parallel", "2", "--out", str(out)]
    proc = subprocess.run([sys.executable, "-m", "ltcil", *args], capture_output=True, text=True,
                          env=slurm_cluster, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "submitted 4 run(s) as slurm job" in proc.stdout and proc.stdout.count("finished ") == 4
    table = json.loads((out / "grid_table.json").read_text())
    assert [r["runs"] for r in table["rows"]] == [2, 2]
    assert all(r["stats"]["average_incremental_accuracy"][0] > 0 for r in table["rows"])
    assert any((out / grid.GRID_DIR / "submitit").rglob("*_log.out"))  # submitit's per-task logs

"""A run killed with SIGKILL in the middle of a task resumes from its last checkpoint and ends with the same
metrics as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import TINY

ARGS = [*TINY, "train.epochs=4", "method.name=icarl", "data.images_per_class=60"]


def cli(*args):
    return [sys.executable, "-m", "ltcil", *args]


@pytest.mark.slow
def test_sigkill_mid_task_then_resume_matches_uninterrupted(tmp_path):
    full = tmp_path / "full"
    assert subprocess.run(cli("run", "--out", str(full), "--quiet", *ARGS), capture_output=True,
                          timeout=300).returncode == 0
    expected = json.loads((full / "results.json").read_text())

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli("run", "--out", str(killed), "--quiet", *ARGS), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    events = killed / "events.jsonl"
    deadline = time.time() + 240
    # wait until the second task is under way (an epoch of task index 1 logged), then kill without warning
    while time.time() < deadline:
        if events.exists() and any(json.loads(line).get("task") == 1 and json.loads(line)["event"] == "epoch"
                                   for line in events.read_text().splitlines() if line.strip()):
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints" / "task_002.pt").exists(), "the run finished before it was killed"
    assert (killed / "checkpoints" / "task_000.pt").exists()

    resumed = subprocess.run(cli("resume", str(killed), "--quiet"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    got = json.loads((killed / "results.json").read_text())
    for key in ("accuracy", "accuracy_linear", "accuracy_matrix", "per_class_accuracy", "forgetting"):
        assert got[key] == expected[key], key
    kinds = [json.loads(line)["event"] for line in events.read_text().splitlines()]
    assert "resume" in kinds

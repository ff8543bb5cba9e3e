"""A run stopped inside a task's main training resumes from the partial checkpoint taken after the last
finished epoch (train.checkpoint_minutes), not from the start of the task, and ends exactly as if it had
never stopped: for every method, so any state a method keeps between epochs is covered."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import METHOD_OVERRIDES, TINY, shipped_methods, tiny_config

from ltcil.engine.checkpoint import partial_path
from ltcil.engine.runner import Experiment

EPOCHS = 2
TWO_TASKS = "scenario.increment=3"
EVERY_EPOCH = "train.checkpoint_minutes=1e-9"  # > 0 and always due: a partial checkpoint after every epoch
KEYS = ("accuracy", "accuracy_matrix", "per_class_accuracy", "forgetting", "accuracy_nme", "accuracy_linear")


class Stop(Exception):
    pass


def stop_at(experiment, call: int):
    """Raise inside the main training when begin_epoch is called for the `call`-th time (1-based)."""
    original, calls = experiment.method.begin_epoch, [0]

    def begin_epoch(epoch, epochs, ctx=None):
        calls[0] += 1
        if calls[0] == call:
            raise Stop
        original(epoch, epochs, ctx)

    experiment.method.begin_epoch = begin_epoch


def training_methods() -> list[str]:
    """Methods with epochs to stop inside (SimpleCIL and RanPAC train nothing: they resume between tasks only,
    tests/test_methods.py and tests/test_pretrained.py)."""
    from ltcil import registry
    from ltcil.methods.base import Method

    return [n for n in shipped_methods() if registry.get("method", n).trains is Method.trains]


@pytest.mark.parametrize("name", training_methods())
def test_stopped_inside_a_task_resumes_there_and_matches(tmp_path, name):
    overrides = [f"method.name={name}", f"train.epochs={EPOCHS}", TWO_TASKS, EVERY_EPOCH,
                 *METHOD_OVERRIDES.get(name, [])]
    expected = Experiment(tiny_config(*overrides), tmp_path / "full").run()

    stopped = Experiment(tiny_config(*overrides), tmp_path / "stopped")
    stop_at(stopped, EPOCHS + 2)  # task 2, before its second epoch: its first epoch is done
    with pytest.raises(Stop):
        stopped.run()
    partial = torch.load(partial_path(tmp_path / "stopped"), weights_only=True)
    assert partial["task"] == 1 and partial["loop"]["epoch"] == 1

    resumed = Experiment(tiny_config(*overrides), tmp_path / "stopped")
    assert resumed.restore() and resumed.next_task == 1 and resumed.partial is not None
    got = resumed.run()
    for key in KEYS:
        assert got.get(key) == expected.get(key), key
    assert not partial_path(tmp_path / "stopped").exists()  # replaced by the tasks' own checkpoints
    events = [json.loads(line) for line in (tmp_path / "stopped" / "events.jsonl").read_text().splitlines()]
    inside = [e for e in events if e["event"] == "resume_inside"]
    assert inside == [{**inside[0], "task": 1, "epoch": 1}]
    # the resumed task trained only its last epoch
    after = events[events.index(inside[0]) + 1:]
    assert [e["epoch"] for e in after if e["event"] == "epoch" and e["task"] == 1 and e["stage"] == "train"] == [2]


def test_no_partial_checkpoint_when_disabled_and_a_stale_one_is_ignored(tmp_path):
    overrides = [f"train.epochs={EPOCHS}", "train.checkpoint_minutes=0"]
    stopped = Experiment(tiny_config(*overrides), tmp_path / "run")
    stop_at(stopped, EPOCHS + 2)
    with pytest.raises(Stop):
        stopped.run()
    assert not partial_path(tmp_path / "run").exists()
    # a partial checkpoint of a task that has finished since (a crash between the two saves) is not used
    torch.save({"task": 0, "loop": {"epoch": 1}}, partial_path(tmp_path / "run"))
    resumed = Experiment(tiny_config(*overrides), tmp_path / "run")
    assert resumed.restore() and resumed.next_task == 1 and resumed.partial is None


@pytest.mark.slow
def test_sigkill_inside_a_single_task_run_resumes_from_the_partial_checkpoint(tmp_path):
    # long-tailed recognition is one long task: without a checkpoint inside it a kill loses all of it
    args = [*TINY, "scenario.initial=6", "scenario.increment=0", "train.epochs=6", EVERY_EPOCH,
            "data.images_per_class=60"]
    cli = [sys.executable, "-m", "ltcil"]
    full = tmp_path / "full"
    assert subprocess.run([*cli, "run", "--out", str(full), "--quiet", *args], capture_output=True,
                          timeout=300).returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cli, "run", "--out", str(killed), "--quiet", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not partial_path(killed).exists():
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial_path(killed).exists() and not (killed / "results.json").exists(), "finished before the kill"
    done = torch.load(partial_path(killed), weights_only=True)["loop"]["epoch"]
    resumed = subprocess.run([*cli, "resume", str(killed), "--quiet"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    got, expected = (json.loads((d / "results.json").read_text()) for d in (killed, full))
    for key in ("accuracy", "per_class_accuracy", "accuracy_matrix"):
        assert got[key] == expected[key], key
    events = [json.loads(line) for line in (killed / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "resume_inside" and e["task"] == 0 and e["epoch"] == done for e in events)


@pytest.mark.parametrize("which", ["partial.pt", "task_000.pt"])
def test_an_unreadable_checkpoint_is_named_and_nothing_is_deleted(tmp_path, which):
    from ltcil.errors import LtcilError

    overrides = [f"train.epochs={EPOCHS}", EVERY_EPOCH]
    stopped = Experiment(tiny_config(*overrides), tmp_path / "run")
    stop_at(stopped, EPOCHS + 2)
    with pytest.raises(Stop):
        stopped.run()
    path = tmp_path / "run" / "checkpoints" / which
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(LtcilError, match=f"checkpoint {path} cannot be read.*delete it to resume from"):
        Experiment(tiny_config(*overrides), tmp_path / "run").restore()
    assert sorted(p.name for p in path.parent.iterdir()) == ["partial.pt", "task_000.pt"]


def test_aper_stopped_inside_its_adapting_first_task_resumes_there_and_matches(tmp_path):
    # APER trains in its first task only (training_methods() leaves it out): stop after the first task's first epoch
    overrides = ["method.name=aper", f"train.epochs={EPOCHS}", TWO_TASKS, EVERY_EPOCH, *METHOD_OVERRIDES["aper"]]
    expected = Experiment(tiny_config(*overrides), tmp_path / "full").run()
    stopped = Experiment(tiny_config(*overrides), tmp_path / "stopped")
    stop_at(stopped, 2)
    with pytest.raises(Stop):
        stopped.run()
    partial = torch.load(partial_path(tmp_path / "stopped"), weights_only=True)
    assert partial["task"] == 0 and partial["loop"]["epoch"] == 1
    assert not any(k.startswith("backbone.vit.") for k in partial["method"]["model"])  # adapters, heads: no ViT
    resumed = Experiment(tiny_config(*overrides), tmp_path / "stopped")
    assert resumed.restore() and resumed.partial is not None
    got = resumed.run()
    for key in KEYS:
        assert got.get(key) == expected.get(key), key

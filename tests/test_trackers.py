"""Optional sinks: TensorBoard and W&B get the run's numbers when enabled, are never imported otherwise, and
fail before training with a clear message when their package is missing; every run writes its own report."""

import json
import sys
import types

import pytest
from helpers import run_tiny, tiny_config

from ltcil.engine.runner import Experiment
from ltcil.errors import ConfigError


class FakeWriter:
    instances = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeWriter.instances.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        self.closed = True


class FakeWandbRun:
    def __init__(self, kwargs):
        self.kwargs, self.logged, self.finished = kwargs, [], False

    def log(self, values):
        self.logged.append(values)

    def finish(self):
        self.finished = True


def test_tensorboard_gets_epoch_losses_and_task_accuracies(tmp_path, monkeypatch):
    FakeWriter.instances.clear()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    results = run_tiny(tmp_path, "method.name=icarl", "log.tensorboard=true")
    (writer,) = FakeWriter.instances
    assert writer.closed and writer.log_dir == str(tmp_path / "tensorboard")
    top1 = [(value, step) for tag, value, step in writer.scalars if tag == "accuracy/top1"]
    assert top1 == [(a, t + 1) for t, a in enumerate(results["accuracy"])]
    nme = [value for tag, value, _ in writer.scalars if tag == "accuracy/classifier/nme"]
    assert nme == results["accuracy_nme"]
    losses = [step for tag, _, step in writer.scalars if tag == "train/loss"]
    assert losses == [1, 2, 3]  # one epoch per task, numbered across the run
    final = {tag: value for tag, value, _ in writer.scalars if tag.startswith("final/")}
    assert final["final/average_incremental_accuracy"] == pytest.approx(results["average_incremental_accuracy"])


def test_wandb_gets_the_config_and_the_same_numbers(tmp_path, monkeypatch):
    runs = []

    def init(**kwargs):
        runs.append(FakeWandbRun(kwargs))
        return runs[-1]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    results = run_tiny(tmp_path, "log.wandb={project: ltcil-test, mode: offline}")
    (run,) = runs
    assert run.kwargs["project"] == "ltcil-test" and run.kwargs["mode"] == "offline"
    assert run.kwargs["dir"] == str(tmp_path) and run.kwargs["config"]["method"]["name"] == "finetune"
    # results.json keeps 6 decimals: the tracker's numbers are the same to that precision
    logged = [v["accuracy/top1"] for v in run.logged if "accuracy/top1" in v]
    assert logged == pytest.approx(results["accuracy"], abs=5e-7) and len(logged) == len(results["accuracy"])
    assert run.finished


@pytest.mark.parametrize("key, module, package", [
    ("log.tensorboard=true", "torch.utils.tensorboard", "tensorboard"),
    ("log.wandb={project: x}", "wandb", "wandb"),
])
def test_a_missing_tracker_package_fails_before_training(tmp_path, monkeypatch, key, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError, as when not installed
    with pytest.raises(ConfigError, match=f"pip install {package}"):
        Experiment(tiny_config(key), tmp_path)
    assert not (tmp_path / "events.jsonl").exists()


def test_trackers_are_not_imported_when_off(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert len(run_tiny(tmp_path)["accuracy"]) == 3


def test_every_run_writes_its_report_and_skips_it_without_matplotlib(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    run_tiny(tmp_path / "auto", "log.report=auto")
    page = (tmp_path / "auto" / "report.html").read_text()
    assert "<img" in page and "data:image/png;base64," in page
    assert "| auto | finetune |" in (tmp_path / "auto" / "report.md").read_text()

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    results = run_tiny(tmp_path / "bare", "log.report=auto")  # auto: the run still ends, without a report
    assert len(results["accuracy"]) == 3 and not (tmp_path / "bare" / "report.html").exists()
    assert json.loads((tmp_path / "bare" / "results.json").read_text())["accuracy"] == results["accuracy"]
    with pytest.raises(ConfigError, match="log.report=always.*matplotlib"):
        Experiment(tiny_config("log.report=always"), tmp_path / "always")

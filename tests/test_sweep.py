"""`ltcil sweep`: values chosen task by task on validation images; the test split is read only after every
choice is made, to report the chosen models."""

import json
import sys
import types

import pytest
from helpers import TINY

import ltcil.sweep as sweep_module
from ltcil.cli import main
from ltcil.data.loader import DeviceData
from ltcil.errors import ConfigError
from ltcil.sweep import candidates, parse_grid, run_sweep, split_values


def test_grid_parsing_keeps_lists_whole_and_random_search_samples_the_grid():
    assert split_values("0.1,0.01") == ["0.1", "0.01"]
    assert split_values("[10,20],[20,40]") == ["[10,20]", "[20,40]"]
    grid = parse_grid(["train.lr=0.1,0.01", "train.epochs=1,2,3"])
    assert len(candidates(grid)) == 6
    picked = candidates(grid, random_count=2, seed=1)
    assert len(picked) == 2 and all(p in candidates(grid) for p in picked)
    with pytest.raises(ConfigError, match="key=v1,v2"):
        parse_grid(["train.lr"])


def test_sweep_chooses_on_validation_and_never_reads_test_before_choosing(tmp_path, monkeypatch):
    reads = []  # (split, reporting?) of every batch the data hands out
    phase = {"reporting": False}
    original_batch, original_eval = DeviceData.batch, sweep_module.evaluate_step

    def spy_batch(self, split, idx, augment=None, gen=None):
        reads.append((split, phase["reporting"]))
        return original_batch(self, split, idx, augment, gen)

    def spy_eval(*args, **kwargs):
        phase["reporting"] = True
        return original_eval(*args, **kwargs)

    monkeypatch.setattr(DeviceData, "batch", spy_batch)
    monkeypatch.setattr(sweep_module, "evaluate_step", spy_eval)
    overrides = [o for o in TINY if not o.startswith("train.progress")] + ["scenario.val_fraction=0.25"]
    record = run_sweep(None, overrides, parse_grid(["train.lr=0.05,0.0001"]), tmp_path, log=lambda *_: None)

    assert ("train", False) in reads
    test_reads = [reporting for split, reporting in reads if split == "test"]
    assert test_reads and all(test_reads)  # the test split only once every task was chosen
    assert len(record["tasks"]) == 3
    for entry in record["tasks"]:
        scores = [t["validation_accuracy"] for t in entry["trials"]]
        assert entry["chosen"]["validation_accuracy"] == max(scores)
        assert len(scores) == 2
    assert len(record["test"]["accuracy"]) == 3
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["tasks"][0]["chosen"] == record["tasks"][0]["chosen"]
    # task 2's candidates started from task 1's chosen model
    chosen_first = record["tasks"][0]["chosen"]["candidate"]
    assert (tmp_path / "task2" / "candidate1" / "checkpoints" / "task_000.pt").read_bytes() == \
        (tmp_path / "task1" / f"candidate{chosen_first}" / "checkpoints" / "task_000.pt").read_bytes()


def test_sweep_cli_needs_validation_images_and_a_grid(tmp_path, capsys):
    tiny = [o for o in TINY if not o.startswith("train.progress")]
    assert main(["sweep", *tiny, "--out", str(tmp_path / "a")]) == 2
    assert "--grid" in capsys.readouterr().err
    assert main(["sweep", *tiny, "--grid", "train.lr=0.05,0.01", "--out", str(tmp_path / "b")]) == 2
    assert "val_fraction" in capsys.readouterr().err


class FakeTrial:
    def __init__(self, pick):
        self.pick = pick

    def suggest_categorical(self, key, options):
        return options[self.pick % len(options)]


class FakeStudy:
    """Proposes grid indices 0, 1, 0 (a repeat) and records what it was told."""

    def __init__(self):
        self.told, self.asked = [], 0

    def ask(self):
        self.asked += 1
        return FakeTrial([0, 1, 0][self.asked - 1])

    def tell(self, trial, value):
        self.told.append(value)


def fake_optuna(studies, seeds):
    def create_study(direction, sampler):
        assert direction == "maximize"
        studies.append(FakeStudy())
        return studies[-1]

    def tpe(seed):
        seeds.append(seed)
        return object()

    logging = types.SimpleNamespace(WARNING=30, set_verbosity=lambda level: None)
    return types.SimpleNamespace(create_study=create_study, logging=logging,
                                 samplers=types.SimpleNamespace(TPESampler=tpe))


def test_optuna_proposals_are_scored_on_validation_and_repeats_not_retrained(tmp_path, monkeypatch):
    studies, seeds = [], []
    monkeypatch.setitem(sys.modules, "optuna", fake_optuna(studies, seeds))
    overrides = [o for o in TINY if not o.startswith("train.progress")] + ["scenario.val_fraction=0.25"]
    record = run_sweep(None, overrides, parse_grid(["train.lr=0.05,0.0001"]), tmp_path, seed=7,
                       log=lambda *_: None, optuna_trials=3)
    assert seeds == [7, 8, 9]  # a fresh study per task
    assert record["search"].startswith("optuna")
    for entry, study in zip(record["tasks"], studies):
        assert [t["values"]["train.lr"] for t in entry["trials"]] == ["0.05", "0.0001"]  # the repeat: no run
        assert not (tmp_path / f"task{entry['task'] + 1}" / "candidate3").exists()
        scores = [t["validation_accuracy"] for t in entry["trials"]]
        assert study.told == [scores[0], scores[1], scores[0]]
        assert entry["chosen"]["validation_accuracy"] == max(scores)


def test_optuna_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    tiny = [o for o in TINY if not o.startswith("train.progress")] + ["scenario.val_fraction=0.25"]
    with pytest.raises(ConfigError, match="pip install optuna"):
        run_sweep(None, tiny, parse_grid(["train.lr=0.05,0.01"]), tmp_path, optuna_trials=2, log=lambda *_: None)

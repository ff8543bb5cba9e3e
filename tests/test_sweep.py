"""`ltcil sweep`: values chosen task by task on validation images; the test split is read only after every
choice is made, to report the chosen models."""

import json

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

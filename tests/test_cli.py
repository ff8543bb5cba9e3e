"""The command line as a user meets it: quick start, overrides, listing, errors without tracebacks, resume."""

import json
import subprocess
import sys

import pytest

from ltcil.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ltcil", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_quickstart_on_digits_end_to_end(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("run", "--out", str(out), "--quiet", "train.epochs=2")
    assert proc.returncode == 0, proc.stderr
    assert "average incremental accuracy" in proc.stdout and "nme" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    for key in ("accuracy", "accuracy_top5", "accuracy_matrix", "average_incremental_accuracy", "last_accuracy",
                "forgetting", "tasks", "config", "accuracy_nme", "accuracy_linear", "headline_classifier"):
        assert key in results, key
    assert results["tasks"] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert len(results["accuracy"]) == 5 and results["accuracy"][0] > 80
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "epoch" for e in events) == 10 and sum(e["event"] == "task" for e in events) == 5
    assert (out / "config.yaml").exists()


def test_existing_run_folder_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".ltcil-run").write_text("")
    (out / "results.json").write_text("{}")
    assert main(["run", "--out", str(out), "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())  # the message is wrapped where the path's length puts it
    assert "already holds a run" in err and "ltcil resume" in err
    assert (out / "results.json").read_text() == "{}"


@pytest.mark.parametrize(
    "args,match",
    [
        (["run", "train.epoch=2"], "Did you mean 'train.epochs'"),
        (["run", "no_such_config.yaml"], "does not exist"),
        (["run", "method.name=icrl"], "Did you mean 'icarl'"),
        (["resume", "/nonexistent/run"], "is not a run folder"),
    ],
)
def test_errors_are_one_paragraph_without_traceback(args, match, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert match in " ".join(err.split()) and "Traceback" not in err and err.startswith("error: ")


def test_overrides_may_follow_options(tmp_path, capsys):
    # `run CONFIG --out DIR key=value`: the override after --out is still read (here it is misspelt on purpose,
    # so the error shows it reached the config without training anything).
    assert main(["run", "quickstart_digits", "--out", str(tmp_path / "r"), "--quiet", "train.epoch=2"]) == 2
    assert "Did you mean 'train.epochs'" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(SystemExit) as exc:
        main(["run", "quickstart_digits", "--outt", str(tmp_path / "r")])
    assert exc.value.code == 2 and "unrecognized arguments: --outt" in capsys.readouterr().err


def test_list_commands(capsys):
    assert main(["list", "methods"]) == 0
    methods = capsys.readouterr().out.split()
    assert {"finetune", "joint", "lwf", "icarl", "bic"} <= set(methods)
    assert main(["list", "configs"]) == 0
    assert "icarl_resnet32_cifar100_b0inc10" in capsys.readouterr().out
    assert main(["list", "datasets"]) == 0
    assert "digits" in capsys.readouterr().out.split()
    assert main(["list", "backbones"]) == 0
    assert "resnet32" in capsys.readouterr().out.split()


def test_resume_continues_after_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert run_cli("run", "--out", str(out), "--quiet", "train.epochs=1", "method.name=finetune").returncode == 0
    full = json.loads((out / "results.json").read_text())
    for t in (3, 4):
        (out / "checkpoints" / f"task_{t:03d}.pt").unlink()
    proc = run_cli("resume", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["accuracy"] == full["accuracy"]


def test_missing_and_corrupt_dataset_errors_through_the_cli(tmp_path, capsys):
    args = ["run", "finetune_resnet32_cifar100_b0inc10_short", f"data.root={tmp_path}", "data.download=false",
            "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert str(tmp_path / "cifar-100-python.tar.gz") in err and "Traceback" not in err
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 50)  # a gzip header, then junk
    assert main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "corrupt or truncated" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing was started, nothing to clean up


def test_run_names_what_a_by_method_block_set(capsys):
    from ltcil.cli import _say_method_defaults
    from ltcil.config import load_config

    overrides = ["method.name=podnet", "train.epochs=2"]
    _say_method_defaults("quickstart_digits", overrides, load_config("quickstart_digits", overrides))
    out = capsys.readouterr().out
    assert out.startswith("podnet: quickstart_digits's by_method.podnet block sets")
    assert "train.lr=0.1," in out and "train.epochs=60 (command line: 2)" in out
    _say_method_defaults("quickstart_digits", [], load_config("quickstart_digits"))  # icarl: no block, no line
    assert capsys.readouterr().out == ""

"""Bad input and faults, by class: nothing lost, no traceback, no silent nonsense. Each case ends in a one-paragraph
error naming the file, key or value (exit 2), or in a documented behaviour with a warning."""

import errno
import json
import os
import pickle
import tarfile
from io import BytesIO

import numpy as np
import pytest
import yaml
from helpers import TINY, run_tiny, tiny_config

from ltcil.cli import main
from ltcil.config import load_config
from ltcil.engine import run_folder
from ltcil.engine.runner import Experiment
from ltcil.errors import ConfigError, DataError, LtcilWarning


def cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, " ".join(out.err.split()), out


# --- data loss -------------------------------------------------------------------------------------------------

def test_force_never_empties_a_folder_that_is_not_a_run(tmp_path, capsys):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("precious")
    code, err, _ = cli(capsys, "run", *TINY, "--out", str(mine), "--force")
    assert code == 2 and "empties only an ltcil run folder" in err and "chapter1.tex" in err
    assert (mine / "chapter1.tex").read_text() == "precious"


def test_force_never_empties_the_current_folder_or_a_symlink(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    run_tiny(run, "scenario.max_tasks=1")
    monkeypatch.chdir(run)
    code, err, _ = cli(capsys, "run", *TINY, "--out", ".", "--force")
    assert code == 2 and "current folder" in err and (run / "results.json").exists()
    link = tmp_path / "link"
    link.symlink_to(run)
    monkeypatch.chdir(tmp_path)
    code, err, _ = cli(capsys, "run", *TINY, "--out", str(link), "--force")
    assert code == 2 and "symbolic link" in err and (run / "results.json").exists()


def test_force_keeps_the_old_run_when_the_new_one_fails_its_checks(tmp_path, capsys):
    run = tmp_path / "run"
    old = run_tiny(run, "scenario.max_tasks=1")
    code, err, _ = cli(capsys, "run", *TINY, "data.name=cifar100", f"data.root={tmp_path / 'absent'}",
                       "data.download=false", "--out", str(run), "--force")
    assert code == 2 and "cifar" in err.lower()
    assert json.loads((run / "results.json").read_text())["accuracy"] == old["accuracy"]
    code, _, _ = cli(capsys, "run", *TINY, "scenario.max_tasks=1", "train.epochs=2", "--out", str(run), "--force")
    assert code == 0 and json.loads((run / "results.json").read_text())["config"]["train"]["epochs"] == 2


def test_a_second_process_on_the_same_folder_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    holder = run_folder.Lock(run)  # as another ltcil process would hold it
    try:
        code, err, _ = cli(capsys, "run", *TINY, "--out", str(run))
        assert code == 2 and f"in use by another ltcil process (pid {os.getpid()})" in err
    finally:
        holder.release()
    code, _, _ = cli(capsys, "run", *TINY, "scenario.max_tasks=1", "--out", str(run))
    assert code == 0


@pytest.mark.parametrize("edit,allowed", [
    (("scenario", "increment", 1), False), (("train", "epochs", 2), False), (("method", "name", "lwf"), False),
    (("backbone", "name", "resnet20"), False), (("log", "report", "never"), True),
    (("train", "checkpoint_minutes", 5.0), True), (("scenario", "max_tasks", 3), True),
])
def test_resume_refuses_a_config_edited_since_the_checkpoint(tmp_path, capsys, edit, allowed):
    run = tmp_path / "run"
    run_tiny(run, "method.name=icarl", "scenario.max_tasks=2")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    section, key, value = edit
    cfg[section][key] = value
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    code, err, _ = cli(capsys, "resume", str(run), "--quiet")
    if allowed:
        assert code == 0
    else:
        assert code == 2 and f"{section}.{key}" in err and "no longer describes the run" in err


def test_a_run_from_before_a_config_key_existed_resumes_unless_the_key_is_set_otherwise(tmp_path, capsys):
    """A checkpoint written by an older ltcil lacks the keys added since: it ran with what their defaults name,
    so resuming under the new version is the same experiment (a run could not be resumed after an upgrade)."""
    import torch

    run = tmp_path / "run"
    run_tiny(run, "method.name=icarl", "scenario.max_tasks=2")
    ckpt = run / "checkpoints" / "task_000.pt"
    state = torch.load(ckpt, weights_only=False)
    for key in ("storage", "pack_side", "stream_above_gb"):
        del state["config"]["data"][key]
    del state["config"]["train"]["crop_scale"]
    torch.save(state, ckpt)
    (run / "checkpoints" / "task_001.pt").unlink()
    (run / "results.json").unlink()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["scenario"]["max_tasks"] = 3
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    code, err, _ = cli(capsys, "resume", str(run), "--quiet")
    assert code == 0, err
    cfg["train"]["crop_scale"] = [0.5, 1.0]  # not the default the old run had: another experiment
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "checkpoints" / "task_002.pt").unlink()
    state = torch.load(run / "checkpoints" / "task_001.pt", weights_only=False)
    del state["config"]["train"]["crop_scale"]
    torch.save(state, run / "checkpoints" / "task_001.pt")
    code, err, _ = cli(capsys, "resume", str(run), "--quiet")
    assert code == 2 and "train.crop_scale: [0.35, 1.0] -> [0.5, 1.0]" in err


# --- silently wrong ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override,match", [
    ("scenario.imbalance_factor=.nan", "scenario.imbalance_factor: nan is not a finite number"),
    ("train.checkpoint_minutes=.nan", "train.checkpoint_minutes: nan is not a finite number"),
    ("train.lr=.inf", "train.lr: inf is not a finite number"),
    ("seed=-1", "seed: -1 must be >= 0"),
    ("seed=4294967296", r"seed: 4294967296 must be in 0 .. 2\^32 - 1"),
    ("scenario.seed=99999999999", "scenario.seed"),
    ("scenario.order=seed:-5", "scenario.order: 'seed:-5' is not valid"),
    ("scenario.order=seed:99999999999", "scenario.order: 'seed:99999999999' is not valid"),
    ("train.epochs=99999999999999999999", "train.epochs: .* is out of range"),
    ("train.milestones=*a", r"YAML aliases \(\*a\) are not supported"),
])
def test_bad_numbers_are_refused_naming_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_yaml_duplicate_keys_and_aliases(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"key 'lr' appears twice in one section \(first on line 2\)") as info:
        load_config(dup)
    assert str(dup) in str(info.value) and "line 4" in str(info.value)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text('a: &a ["x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b]\n')
    with pytest.raises(ConfigError, match=r"YAML aliases \(\*a\) are not supported"):
        load_config(bomb)


@pytest.mark.parametrize("name", ["icarl", "bic", "replay", "proto_lt"])
def test_exemplar_methods_refuse_a_zero_memory(name):
    from ltcil.engine.runner import check_components

    with pytest.raises(ConfigError, match=f"method {name} keeps exemplars"):
        check_components(tiny_config(f"method.name={name}", "memory.size=0"))


def test_a_validation_split_that_starves_training_is_warned(tmp_path):
    with pytest.warns(LtcilWarning, match="scenario.val_fraction=0.9 takes more than half"):
        Experiment(tiny_config("scenario.val_fraction=0.9"), tmp_path)
    with pytest.warns(LtcilWarning, match="scenario.val_per_class=20 takes more than half"):
        Experiment(tiny_config("scenario.val_per_class=20"), tmp_path)


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_channels_first_keras_keys_and_sparse_labels(tmp_path):
    rng = np.random.default_rng(0)
    path = _npz(tmp_path / "mine.npz", x_train=rng.integers(0, 255, (30, 3, 8, 8), dtype=np.uint8),
                y_train=np.repeat([3, 7, 42], 10),
                x_test=rng.integers(0, 255, (9, 1, 8, 8), dtype=np.uint8)[:, [0] * 3],
                y_test=np.repeat([3, 7, 42], 3))
    results = run_tiny(tmp_path / "run", "data.name=npz", f"data.root={tmp_path}", "scenario.increment=1",
                       "scenario.max_tasks=2")
    assert results["completed_tasks"] == 2
    from ltcil.data.arrays import read_npz

    ds = read_npz(path, "npz")
    assert ds.class_names == ["3", "7", "42"] and ds.train.images.shape == (30, 8, 8, 3)
    assert sorted(set(ds.train.labels.tolist())) == [0, 1, 2]


def test_list_file_labels_are_checked_before_decoding(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "img" / f"{i}.png")
    (tmp_path / "train.txt").write_text("img/0.png 0\nimg/1.png 1\n# a comment\nimg/2.png 100000000\n")
    (tmp_path / "test.txt").write_text("img/3.png 0\n")
    cfg = tiny_config("data.name=imagelist", f"data.root={tmp_path}", "data.train_list=train.txt",
                      "data.test_list=test.txt", "data.image_size=8")
    with pytest.raises(DataError, match=r"train.txt, line 4: label 100000000 but the train list has 3 classes"):
        Experiment(cfg, tmp_path / "run")
    (tmp_path / "train.txt").write_bytes(b"img/0.png 0\n\xff\xfe 1\n")
    with pytest.raises(DataError, match=r"list file .*train.txt cannot be read: it is not UTF-8"):
        Experiment(cfg, tmp_path / "run")


def test_images_that_cannot_fit_in_memory_are_refused_before_allocating(tmp_path, monkeypatch):
    from PIL import Image

    from ltcil.data import base

    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "a" / "0.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "a" / "0.png")
    monkeypatch.setattr(base, "available_memory", lambda: 2**30)
    cfg = tiny_config("data.name=imagelist", f"data.root={tmp_path}", "data.image_size=100000",
                      "data.storage=memory")
    with pytest.raises(DataError, match=r"2 images at data.image_size=100000 .* need 55.9 GiB in memory, but 1.0 GiB"):
        Experiment(cfg, tmp_path / "run")
    # data.storage=auto streams data too large to hold decoded, but not images too large for one batch
    cfg = tiny_config("data.name=imagelist", f"data.root={tmp_path}", "data.image_size=100000")
    with pytest.raises(DataError, match=r"streamed: a batch of 64 images at data.image_size=100000 .* 7,152.6 GiB"):
        Experiment(cfg, tmp_path / "run")


def test_an_oversized_archive_member_is_refused_before_reading(tmp_path, monkeypatch):
    from ltcil.data import cifar

    monkeypatch.setattr(cifar, "MAX_MEMBER_BYTES", 1000)
    with tarfile.open(tmp_path / "cifar-100-python.tar.gz", "w:gz") as tar:
        raw = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [0]}) + b"\0" * 5000
        info = tarfile.TarInfo("cifar-100-python/train")
        info.size = len(raw)
        tar.addfile(info, BytesIO(raw))
    cfg = tiny_config("data.name=cifar100", f"data.root={tmp_path}", "data.download=false")
    with pytest.raises(DataError, match="far larger than any CIFAR file"):
        Experiment(cfg, tmp_path / "run")


# --- tracebacks -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("setup,args,match", [
    (lambda d: (d / "cfg").mkdir(), ["run", "{d}/cfg"], "is a folder, not a file"),
    (lambda d: (d / "c.yaml").write_bytes(b"train:\n  lr: \xff\n"), ["run", "{d}/c.yaml"], "is not UTF-8 text"),
    (lambda d: (d / "out").write_text("x"), ["run", *TINY, "--out", "{d}/out"], "is a file, not a folder"),
    (lambda d: None, ["resume", "{d}/nothing"], "is not a run folder"),
    (lambda d: None, ["run", "--debug"], None),  # --debug after the command is accepted
])
def test_cli_errors_are_one_paragraph(tmp_path, capsys, setup, args, match):
    setup(tmp_path)
    args = [a.replace("{d}", str(tmp_path)) for a in args]
    if match is None:
        assert main([*args, *TINY, "scenario.max_tasks=1", "--out", str(tmp_path / "r")]) == 0
        return
    code, err, _ = cli(capsys, *args)
    assert code == 2 and match in err and "Traceback" not in err and err.startswith("error: ")


def test_read_only_output_folder_fails_before_loading(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root can write into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, err, _ = cli(capsys, "run", *TINY, "--out", str(ro / "run"))
        assert code == 2 and "read-only" in err
    finally:
        ro.chmod(0o700)


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint_and_no_tmp(tmp_path, monkeypatch, capsys):
    import torch

    run = tmp_path / "run"
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second task's checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    code, err, _ = cli(capsys, "run", *TINY, "train.checkpoint_minutes=0", "--out", str(run))
    assert code == 2 and "task_001.pt: no space left on device" in err and "intact" in err
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["task_000.pt"]  # the first survives, no .tmp is left
    monkeypatch.setattr(torch, "save", real_save)
    code, _, _ = cli(capsys, "resume", str(run), "--quiet")
    assert code == 0 and len(json.loads((run / "results.json").read_text())["accuracy"]) == 3


def test_report_on_results_with_wrong_types_names_the_key(tmp_path, capsys):
    run = tmp_path / "run"
    run_tiny(run, "scenario.max_tasks=1")
    results = json.loads((run / "results.json").read_text())
    results["accuracy"] = ["high"]
    (run / "results.json").write_text(json.dumps(results))
    code, err, _ = cli(capsys, "report", str(run))
    assert code == 2 and "entry 'accuracy' should be a list of numbers" in err


def test_report_escapes_run_names_and_marks_partial_runs(tmp_path):
    from ltcil.reporting.report import write_report

    run = tmp_path / "a|b*<i>"
    run_tiny(run, "scenario.max_tasks=2")
    results = json.loads((run / "results.json").read_text())
    results["config"]["scenario"]["max_tasks"] = 0  # as if it had stopped after 2 of 3 tasks
    (run / "results.json").write_text(json.dumps(results))
    _, md = write_report([run], tmp_path / "rep")
    text = md.read_text()
    assert r"a\|b\*\<i\>" in text and "partial: 2 of 3 tasks" in text


def test_sigterm_ends_a_run_as_ctrl_c_does_and_it_resumes(tmp_path):
    """A scheduler's SIGTERM: the interrupted message, exit 130, the run folder's lock released, resumable."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src}
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "ltcil", "run", *TINY, "train.epochs=40", "train.checkpoint_minutes=1e-9",
           "--out", str(run)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "events.jsonl").exists():
        time.sleep(0.2)
    while time.time() < deadline and '"event": "epoch"' not in (run / "events.jsonl").read_text():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    resumed = subprocess.run([sys.executable, "-m", "ltcil", "resume", str(run), "--quiet"], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run / "results.json").read_text())["completed_tasks"] == 3


# --- round three: files lost, tracebacks, crashes, bombs ------------------------------------------------------

def test_report_out_never_overwrites_the_users_own_report(tmp_path, capsys):
    run = tmp_path / "run"
    run_tiny(run, "scenario.max_tasks=1")
    mine = tmp_path / "paper"
    mine.mkdir()
    (mine / "report.md").write_text("# My report\nthree weeks of notes\n")
    (mine / "report.html").write_text("<html>mine</html>")
    code, err, _ = cli(capsys, "report", str(run), "--out", str(mine))
    assert code == 2 and "report.md and report.html that ltcil did not write" in err and "nothing was written" in err
    assert (mine / "report.md").read_text() == "# My report\nthree weeks of notes\n"
    assert (mine / "report.html").read_text() == "<html>mine</html>"
    pytest.importorskip("matplotlib")
    ours = tmp_path / "ours"
    assert cli(capsys, "report", str(run), "--out", str(ours))[0] == 0
    assert cli(capsys, "report", str(run), "--out", str(ours))[0] == 0  # ltcil's own report: replaced
    legacy = tmp_path / "legacy"  # a report written before ltcil marked its reports
    legacy.mkdir()
    (legacy / "report.md").write_text("# ltcil report\n\n1 run(s), generated 2026-01-01 00:00:00.\n")
    assert cli(capsys, "report", str(run), "--out", str(legacy))[0] == 0
    assert "Accuracy after each task" in (legacy / "report.md").read_text()


def _lightning_folder(path):
    path.mkdir()
    (path / "config.yaml").write_text("trainer:\n  max_epochs: 100\n")
    (path / "checkpoints").mkdir()
    (path / "checkpoints" / "epoch=99.ckpt").write_bytes(b"weights")
    (path / "NOTES.txt").write_text("what I tried")


def test_force_never_empties_another_tools_run_folder(tmp_path, capsys):
    lightning = tmp_path / "lightning_run"
    _lightning_folder(lightning)
    assert not run_folder.is_run_folder(lightning)
    code, err, _ = cli(capsys, "run", *TINY, "--out", str(lightning), "--force")
    assert code == 2 and "is not one: it holds NOTES.txt, checkpoints/ (1 entry), config.yaml" in err
    assert "Nothing was removed" in err
    assert (lightning / "checkpoints" / "epoch=99.ckpt").read_bytes() == b"weights"
    assert (lightning / "NOTES.txt").exists() and (lightning / "config.yaml").exists()
    code, err, _ = cli(capsys, "run", *TINY, "--out", str(lightning))
    assert code == 2 and "holds no ltcil run (NOTES.txt, checkpoints/ (1 entry), config.yaml)" in err


def test_force_removes_only_what_ltcil_wrote_and_names_what_it_left(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    run_tiny(run, "scenario.max_tasks=1")
    (run / "NOTES.txt").write_text("mine")
    (run / "checkpoints" / "best_by_hand.pt").write_bytes(b"mine too")

    def interrupted(self):  # Ctrl-C as soon as the new run starts, after --force has cleared the folder
        raise KeyboardInterrupt

    monkeypatch.setattr(Experiment, "run", interrupted)
    code, err, _ = cli(capsys, "run", *TINY, "--out", str(run), "--force")
    assert code == 130
    assert "left what ltcil did not write there: NOTES.txt, checkpoints/best_by_hand.pt." in err
    assert (run / "NOTES.txt").read_text() == "mine"
    assert (run / "checkpoints" / "best_by_hand.pt").read_bytes() == b"mine too"
    assert not (run / "results.json").exists() and not (run / "checkpoints" / "task_000.pt").exists()
    assert err.endswith("interrupted.")  # nothing of the new run was written yet: nothing to resume
    monkeypatch.undo()
    code, err, _ = cli(capsys, "run", *TINY, "scenario.max_tasks=1", "--out", str(run))  # no --force needed now
    assert code == 0 and "the new run in" in err and "starts beside what ltcil did not write there: NOTES.txt" in err
    assert (run / "NOTES.txt").read_text() == "mine" and (run / "results.json").exists()


@pytest.mark.parametrize("failure", ["torch_zip_writer", "enospc"])
def test_a_full_disk_mid_checkpoint_names_the_folder_and_the_space(tmp_path, monkeypatch, capsys, failure):
    import shutil
    import types

    import torch

    run = tmp_path / "run"
    real_save, real_usage = torch.save, shutil.disk_usage
    calls = {"n": 0}

    def save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # the third task's checkpoint (task_002.pt), half written
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04 half a checkpoint")
            if failure == "enospc":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1536 vs 1470")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: types.SimpleNamespace(total=3_000_000, used=2_990_000,
                                                                             free=10_000))
    code, err, _ = cli(capsys, "run", *TINY, "train.checkpoint_minutes=0", "--quiet", "--out", str(run))
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert "task_002.pt: no space left on device" in err and f"{run / 'checkpoints'} has 10,000 bytes free" in err
    assert "this file needs about" in err and "intact" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["task_000.pt", "task_001.pt"]  # no .tmp
    monkeypatch.setattr(shutil, "disk_usage", real_usage)
    assert torch.load(run / "checkpoints" / "task_001.pt", weights_only=True)["task"] == 1


def test_a_torch_writer_failure_on_a_disk_with_room_is_still_one_paragraph(tmp_path, monkeypatch):
    import torch

    from ltcil.engine.checkpoint import save_checkpoint
    from ltcil.errors import LtcilError

    def save(obj, f, *a, **k):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(LtcilError, match=r"task_000.pt: the write failed \(pytorchstreamwriter failed"):
        save_checkpoint(tmp_path, 0, {"task": 0})
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_resume_on_a_read_only_mount_says_so(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run_tiny(run, "scenario.max_tasks=1")

    def read_only_open(path, *a, **k):  # as on a read-only mount, where root cannot write either
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(run_folder, "open", read_only_open, raising=False)
    code, err, _ = cli(capsys, "resume", str(run), "--quiet")
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert f"{run} is on a read-only file system" in err and "Copy the run folder to a writable disk" in err


def test_ctrl_c_at_any_moment_is_one_line_and_says_resume_only_where_true(tmp_path, monkeypatch, capsys):
    from ltcil import cli as cli_module
    from ltcil.engine.trainer import Trainer

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # while the command line is being set up (imports, parser)
        m.setattr(cli_module, "_parser", ctrl_c)
        code, err, _ = cli(capsys, "run")
        assert code == 130 and err == "interrupted."
    with monkeypatch.context() as m:  # `ltcil data check`: there is no run to resume
        m.setattr("ltcil.datacheck.describe", ctrl_c)
        code, err, _ = cli(capsys, "data", "check", *TINY)
        assert code == 130 and err == "interrupted."
    run = tmp_path / "run"
    with monkeypatch.context() as m:  # inside the first task: resume starts it again
        m.setattr(Trainer, "fit", ctrl_c)
        code, err, _ = cli(capsys, "run", *TINY, "--out", str(run))
        assert code == 130 and f"interrupted before the first checkpoint; `ltcil resume {run}` starts" in err
    code, _, _ = cli(capsys, "resume", str(run), "--quiet")
    assert code == 0


def test_ctrl_c_in_the_first_second_is_one_line_exit_130(tmp_path):
    # while torch imports numpy a KeyboardInterrupt used to be cleared by torch's C++ code: numpy half-imported
    # (an AttributeError traceback later), the run going on as if never interrupted, or an abort in pybind11;
    # one landing while a dataclass is built (ltcil's modules, torch._dynamo which the first optimizer imports) ended
    # the process by SIGINT (returncode -2) after main had returned 130; cli._import_libraries holds Ctrl-C until
    # all are in
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src}
    for delay in (0.3, 0.45, 0.6, 0.8, 1.0, 1.1, 1.6, 3.5):  # while Python imports ltcil, numpy, torch, or after
        # a run long enough that the signal never lands in interpreter shutdown (a finished process's own race)
        # started as a terminal's foreground job is, with Ctrl-C at its default: a suite run as a background job
        # of a non-interactive shell inherits SIGINT ignored, which Python keeps (a background job is meant not to
        # see Ctrl-C), and a signal landing after the imports was then ignored and the run finished with exit 0
        proc = subprocess.Popen([sys.executable, "-m", "ltcil", "run", *TINY, "train.epochs=500", "--quiet",
                                 "--out", str(tmp_path / f"run{delay}")], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("interrupted"), lines


def test_train_threads_is_bounded_by_the_usable_cores(monkeypatch):
    import torch

    from ltcil.engine import runner

    before = torch.get_num_threads()
    monkeypatch.setattr(runner, "usable_cores", lambda: 2)
    try:
        with pytest.warns(LtcilWarning, match=r"train.threads=100000 is more than the 2 core\(s\) .* using 2"):
            assert runner.set_threads(100000) == 2
        assert torch.get_num_threads() == 2
        assert runner.set_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_config_bombs_are_refused_before_parsing_and_long_values_cut(tmp_path, capsys):
    import time

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("scenario:\n  order: [" + "1, " * 600_000 + "1]\n")  # 1.8 MB
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb.yaml is 1.8 MB, above the 1.0 MB a config file may have"):
        load_config(bomb)
    assert time.perf_counter() - t0 < 2
    with pytest.raises(ConfigError, match="/dev/zero is endless"):
        load_config("/dev/zero")
    with pytest.raises(ConfigError, match=r"overrides: 1.5 MB in all, above the 1.0 MB"):
        load_config(None, ["scenario.order=[" + "1," * 250_000 + "1]"] * 3)
    code, err, _ = cli(capsys, "run", "train.lr=" + "x" * 500_000)  # a string where a number goes
    assert code == 2 and "train.lr: expected float, got 'xxx" in err and "(500,002 characters)" in err
    assert len(err) < 600
    code, err, _ = cli(capsys, "run", "scenario.increment=[" + "-1," * 100_000 + "1]")
    assert code == 2 and "(100,001 items)" in err and len(err) < 600


def test_sweep_checks_every_grid_value_before_training(tmp_path, capsys, monkeypatch):
    trained = []
    monkeypatch.setattr(Experiment, "train_task", lambda self, t: trained.append(t))
    out = tmp_path / "sweep"
    for grid, match in (("method.name=finetune,icrl", "method.name"), ("scenario.increment=2,7", "do not split into tasks of 7")):
        code, err, _ = cli(capsys, "sweep", *TINY, "scenario.val_fraction=0.2", "--grid", grid, "--out", str(out))
        assert code == 2 and "cannot run, so nothing was trained" in err and match in err, err
        assert trained == [] and not out.exists()


def test_a_failed_sweep_leaves_a_folder_a_rerun_accepts(tmp_path, capsys, monkeypatch):
    import ltcil.sweep as sweep_module

    out = tmp_path / "sweep"
    args = ["sweep", *TINY, "scenario.val_fraction=0.2", "scenario.max_tasks=1", "--grid", "train.lr=0.05",
            "--out", str(out)]

    def fails(*a, **k):
        raise ConfigError("the first candidate failed")

    with monkeypatch.context() as m:  # fails before it wrote anything: no folder is left
        m.setattr(sweep_module, "run_sweep", fails)
        assert cli(capsys, *args)[0] == 2
    assert not out.exists()
    with monkeypatch.context() as m:  # fails after a candidate ran: a sweep, which --force replaces
        m.setattr(Experiment, "train_task", lambda self, t: (_ for _ in ()).throw(KeyboardInterrupt))
        assert cli(capsys, *args)[0] == 130
    code, err, _ = cli(capsys, *args)
    assert code == 2 and "already holds an ltcil sweep (unfinished: a sweep cannot be resumed); --force" in err
    code, err, _ = cli(capsys, "resume", str(out))
    assert code == 2 and "holds an ltcil sweep, and a sweep cannot be resumed" in err
    code, _, _ = cli(capsys, *args, "--force")
    assert code == 0 and (out / "sweep.json").exists()


def test_a_one_class_single_task_run_is_warned(tmp_path):
    with pytest.warns(LtcilWarning, match=r"single class \('class_2'\) in a single task.*100% by construction"):
        Experiment(tiny_config("scenario.order=[2]", "scenario.increment=0"), tmp_path)


def test_negative_npz_labels_are_not_counted_as_a_class(tmp_path):
    from ltcil.data.arrays import read_npz

    rng = np.random.default_rng(0)
    path = _npz(tmp_path / "d_neglabel.npz", x_train=rng.integers(0, 255, (12, 8, 8), dtype=np.uint8),
                y_train=np.array([-1, -1] + list(range(10))), x_test=rng.integers(0, 255, (10, 8, 8), dtype=np.uint8),
                y_test=np.arange(10))
    with pytest.raises(DataError, match=r"'train_labels' holds label -1, a negative one \(2 images\); the others run "
                                        r"0..9 \(10 classes\)") as info:
        read_npz(path, "npz")
    assert "11 classes" not in str(info.value)


def test_a_report_across_different_scenarios_is_warned(tmp_path):
    pytest.importorskip("matplotlib")
    from ltcil.reporting.report import write_report

    run_tiny(tmp_path / "a", "scenario.max_tasks=1")
    run_tiny(tmp_path / "b", "scenario.max_tasks=1", "scenario.increment=3")
    with pytest.warns(LtcilWarning, match=r"do not share a scenario \(scenario.increment: a=2, b=3\)"):
        write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "rep")


def test_the_readme_names_every_key_that_may_change_on_resume():
    from pathlib import Path

    from ltcil.engine.runner import RESUMABLE_CHANGES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    bullet = next(p for p in readme.split("\n- ") if "may change" in p and "ltcil resume" in p)
    named = [k.rstrip(".") for k in RESUMABLE_CHANGES]
    assert all(f"`{k}" in bullet for k in named), [k for k in named if f"`{k}" not in bullet]

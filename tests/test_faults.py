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

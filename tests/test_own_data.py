"""Bringing your own data: common layouts as downloaded (Tiny-ImageNet's tree, list files, Keras-style npz),
class names that reach results.json and the report, decoding only the classes a run uses, `ltcil data check`."""


import numpy as np
import pytest
from helpers import TINY
from PIL import Image

from ltcil.cli import main
from ltcil.config import load_config
from ltcil.engine import runner
from ltcil.engine.runner import Experiment

WNIDS = ["n01443537", "n01629819", "n01641577"]
WORDS = {"n01443537": "goldfish, Carassius auratus", "n01629819": "European fire salamander",
         "n01641577": "bullfrog, Rana catesbeiana"}


def tiny_imagenet(root, per_class=6, val_per_class=2):
    """Tiny-ImageNet's own layout: train/<wnid>/images/*.JPEG, a flat val/images with val_annotations.txt, an
    unlabelled test/images, wnids.txt and words.txt."""
    rng = np.random.default_rng(0)
    ann = []
    for c, wnid in enumerate(WNIDS):
        (root / "train" / wnid / "images").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
                root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(val_per_class):
            name = f"val_{c * val_per_class + i}.JPEG"
            ann.append(f"{name}\t{wnid}\t0\t0\t10\t10")
    (root / "val" / "images").mkdir(parents=True)
    for line in ann:
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / "val" / "images" / line.split()[0])
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    (root / "test" / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(root / "test" / "images" / "test_0.JPEG")
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\t{WORDS[w]}\n" for w in WNIDS) + "n00000000\tentity\n")
    return root


def imagelist_config(root, *extra):
    return load_config(None, [*TINY, "data.name=imagelist", f"data.root={root}", "data.image_size=8",
                              "scenario.increment=1", *extra])


def test_tiny_imagenet_tree_as_downloaded(tmp_path):
    root = tiny_imagenet(tmp_path / "tiny-imagenet-200")
    results = Experiment(imagelist_config(root), tmp_path / "run").run()
    assert results["completed_tasks"] == 3
    assert results["class_names"] == ["goldfish", "European fire salamander", "bullfrog"]  # from words.txt
    assert results["train_counts"] == [6, 6, 6]
    assert len(results["per_class_accuracy"][-1]) == 3
    report = (tmp_path / "run" / "report.md")
    if report.exists():  # written when matplotlib is installed
        assert "goldfish" in report.read_text()


def test_list_files_name_classes_by_the_folder_that_tells_them_apart(tmp_path):
    root = tiny_imagenet(tmp_path / "tin")
    lines = [f"train/{w}/images/{w}_{i}.JPEG {c}" for c, w in enumerate(WNIDS) for i in range(6)]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "test.txt").write_text("\n".join(f"train/{w}/images/{w}_0.JPEG {c}" for c, w in enumerate(WNIDS)) + "\n")
    (root / "words.txt").unlink()
    cfg = imagelist_config(root, "data.train_list=train.txt", "data.test_list=test.txt")
    exp = Experiment(cfg, tmp_path / "run")
    assert exp.dataset.class_names == WNIDS  # not "images" three times
    (root / "names.txt").write_text("fish\nsalamander\nfrog\n")
    cfg = imagelist_config(root, "data.train_list=train.txt", "data.test_list=test.txt", "data.class_names=names.txt")
    assert Experiment(cfg, tmp_path / "run2").dataset.class_names == ["fish", "salamander", "frog"]


def test_only_the_classes_of_an_explicit_order_are_decoded(tmp_path, monkeypatch):
    from ltcil.data import imagelist

    root = tiny_imagenet(tmp_path / "tin")
    decoded = []
    real = imagelist.decode

    def spy(path, size):
        decoded.append(path)
        return real(path, size)

    monkeypatch.setattr(imagelist, "decode", spy)
    exp = Experiment(imagelist_config(root, "scenario.order=[2,0]"), tmp_path / "run")
    assert all(WNIDS[1] not in p for p in decoded) and len(decoded) == 2 * (6 + 2)
    assert exp.dataset.num_classes == 3 and len(exp.dataset.train) == 12
    assert exp.run()["class_names"] == ["bullfrog", "goldfish"]


def test_data_check_prints_the_split_without_training(tmp_path, capsys):
    root = tiny_imagenet(tmp_path / "tin")
    assert main(["data", "check", *TINY, "data.name=imagelist", f"data.root={root}", "data.image_size=8",
                 "scenario.initial=1", "scenario.increment=1", "memory.size=6"]) == 0
    out = capsys.readouterr().out
    assert "3 task(s)" in out and "goldfish" in out and "6 train" in out
    assert "memory after the last task: 6 exemplars, 2-2 per class" in out
    assert not (tmp_path / "runs").exists()


def test_keras_style_npz_in_a_folder(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "fashion.npz", x_train=rng.integers(0, 255, (40, 8, 8), dtype=np.uint8),
             y_train=np.repeat(np.arange(4), 10), x_test=rng.integers(0, 255, (8, 8, 8), dtype=np.uint8),
             y_test=np.repeat(np.arange(4), 2), class_names=np.array(["shirt", "bag", "boot", "coat"]))
    results = Experiment(load_config(None, [*TINY, "data.name=npz", f"data.root={tmp_path}",
                                            "scenario.max_tasks=1"]), tmp_path / "run").run()
    assert results["class_names"] == ["shirt", "bag", "boot", "coat"]  # arrival order, as class_order


@pytest.mark.parametrize("config", ["npz_example", "imagelist_example"])
def test_example_configs_validate(config):
    runner.check_components(load_config(config))

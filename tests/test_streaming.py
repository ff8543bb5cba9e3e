"""Streamed image storage (data.storage=stream): the same batches and the same run as the in-memory path, bad
images named, the packed cache reused, rebuilt when its source changes and refused when truncated, resume inside a
task, and an index that keeps no Python object per image."""

import json
import warnings

import numpy as np
import pytest
import torch
from helpers import TINY
from PIL import Image

from ltcil.config import load_config
from ltcil.data.stream import StreamedImages
from ltcil.data.stream_loader import StreamData
from ltcil.engine.checkpoint import partial_path
from ltcil.engine.runner import Experiment
from ltcil.errors import DataError, LtcilWarning

CLASSES = ["cat", "dog", "eel", "fox"]


def jpeg_tree(root, per_class=8, test_per_class=3, seed=0):
    """train/<class>/*.jpg and val/<class>/*.jpg of random sizes (not square: resize and centre crop matter);
    each class has its own colour so a network can learn it."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", test_per_class)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = rng.integers(18, 40, size=2)
                img = rng.integers(0, 90, (h, w, 3)).astype(np.uint8)
                img[..., c % 3] += np.uint8(120 + 40 * (c // 3))
                Image.fromarray(img).save(root / split / name / f"{name}_{i}.jpg", quality=92)
    return root


def config(root, *extra):
    return load_config(None, [*TINY, "data.name=imagelist", f"data.root={root}", "data.image_size=16",
                              "data.workers=0", "data.cache=off", "scenario.increment=2", *extra])


def test_streamed_eval_batches_equal_the_in_memory_ones(tmp_path):
    root = jpeg_tree(tmp_path / "tree")
    memory = Experiment(config(root, "data.storage=memory"), tmp_path / "m")
    streamed = Experiment(config(root, "data.storage=stream"), tmp_path / "s")
    assert isinstance(streamed.data, StreamData) and not isinstance(memory.data, StreamData)
    assert torch.equal(memory.data.mean, streamed.data.mean) and torch.equal(memory.data.std, streamed.data.std)
    for split in ("train", "test"):
        idx = torch.arange(len(memory.data.labels[split]))
        x_m, y_m = memory.data.batch(split, idx)
        x_s, y_s = streamed.data.batch(split, idx)
        assert torch.equal(x_m, x_s) and torch.equal(y_m, y_s)


def test_normalize_false_feeds_pixels_in_0_1_from_either_storage(tmp_path):
    """data.normalize: false (Avalanche's iCaRL baseline): the network sees pixel / 255, in memory and streamed,
    the streamed resized crop's fused NHWC normalisation included."""
    from ltcil.data.augment import AugmentSpec

    root = jpeg_tree(tmp_path / "tree")
    idx = torch.arange(6)
    for storage in ("memory", "stream"):
        raw = Experiment(config(root, f"data.storage={storage}", "data.normalize=false"), tmp_path / storage).data
        std = Experiment(config(root, f"data.storage={storage}"), tmp_path / (storage + "_std")).data
        pixels = raw.pixels("test", idx).float() / 255
        assert torch.allclose(raw.batch("test", idx)[0], pixels)
        assert torch.allclose(std.batch("test", idx)[0], (pixels - std.mean) / std.std, atol=1e-6)
        assert not torch.allclose(std.batch("test", idx)[0], pixels, atol=0.05)
        if storage == "stream":
            aug = AugmentSpec(crop_padding=0, flip=False, resized_crop=True, crop_scale=(1.0, 1.0))
            x = raw.batch("train", idx, aug, torch.Generator().manual_seed(0))[0]
            assert 0 <= x.min() and x.max() <= 1 and x.max() > 0.5  # [0, 1], not standardised


def test_worker_processes_decode_the_same_batches_ahead(tmp_path):
    root = jpeg_tree(tmp_path / "tree")
    inline = Experiment(config(root, "data.storage=stream"), tmp_path / "a").data
    pooled = Experiment(config(root, "data.storage=stream", "data.workers=2"), tmp_path / "b").data
    try:
        order = torch.randperm(len(inline.labels["train"]), generator=torch.Generator().manual_seed(0))
        for k, idx in enumerate(pooled.index_batches(order, 7, shuffle=False, split="train")):
            if k == 0:  # this batch and the next two were submitted before the first was asked for
                assert [len(a[1]) for a in pooled._ahead] == [7, 7, 7]
            assert torch.equal(pooled.batch("train", idx)[0], inline.batch("train", idx)[0])
        assert k == 4 and not pooled._ahead
    finally:
        pooled.close()


def test_a_streamed_run_is_the_in_memory_run(tmp_path):
    """Padded crop and flip run on the device after decoding at the image size: bit-identical results."""
    root = jpeg_tree(tmp_path / "tree")
    extra = ["method.name=icarl", "train.epochs=2", "train.crop_padding=2"]
    memory = Experiment(config(root, "data.storage=memory", *extra), tmp_path / "m").run()
    streamed = Experiment(config(root, "data.storage=stream", *extra), tmp_path / "s").run()
    for key in ("accuracy", "accuracy_matrix", "accuracy_nme", "per_class_accuracy"):
        assert streamed[key] == memory[key], key


def test_resized_crops_are_cut_by_the_workers_the_same_whoever_decodes_them(tmp_path):
    from ltcil.data.augment import AugmentSpec

    root = jpeg_tree(tmp_path / "tree")
    extra = ["data.storage=stream", "train.resized_crop=true", "train.crop_padding=0"]
    inline = Experiment(config(root, *extra), tmp_path / "a").data
    pooled = Experiment(config(root, *extra, "data.workers=2"), tmp_path / "b").data
    aug = AugmentSpec(crop_padding=0, resized_crop=True, crop_scale=(0.2, 1.0))
    order = torch.randperm(32, generator=torch.Generator().manual_seed(1))
    try:
        got = []
        for data in (inline, pooled):
            gen = torch.Generator().manual_seed(5)
            got.append([torch.cat([data.batch("train", idx, aug, gen)[0] for _ in range(2)])  # two views
                        for idx in data.index_batches(order, 10, gen, shuffle=False, split="train", augment=aug,
                                                      views=2)])
        assert all(torch.equal(a, b) for a, b in zip(*got))  # independent of the workers and how far ahead
        first = got[0][0]
        assert first.shape == (20, 3, 16, 16) and not torch.equal(first[:10], first[10:])  # the views differ
        centre = inline.batch("train", order[:10])[0]
        assert not torch.equal(first[:10], centre)
        # not announced (a method's own batch): drawn from the generator it is given, reproducibly
        a = inline.batch("train", order[:4], aug, torch.Generator().manual_seed(9))[0]
        b = pooled.batch("train", order[:4], aug, torch.Generator().manual_seed(9))[0]
        assert torch.equal(a, b)
    finally:
        pooled.close()
    assert Experiment(config(root, *extra), tmp_path / "run").run()["completed_tasks"] == 2


def test_crop_box_draws_torchvisions_random_resized_crop():
    from ltcil.data.decode import crop_box

    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = crop_box(400, 300, rng, (0.08, 1.0))
        w, h = right - left, bottom - top
        assert 0 <= left and right <= 400 and 0 <= top and bottom <= 300
        assert 0.08 * 0.99 <= w * h / 120_000 <= 1.0 and 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03
    # ten failed tries (an area the image cannot hold at that aspect): the centred crop of the widest allowed aspect
    # 133 = round(100 * 4 / 3) wide
    assert crop_box(1000, 100, np.random.default_rng(0), (1.0, 1.0)) == (433, 0, 566, 100)


def test_resume_inside_a_task_on_streamed_data(tmp_path):
    root = jpeg_tree(tmp_path / "tree")
    extra = ["data.storage=stream", "train.epochs=2", "train.checkpoint_minutes=1e-9", "train.resized_crop=true",
             "train.crop_padding=0"]
    expected = Experiment(config(root, *extra), tmp_path / "full").run()

    class Stop(Exception):
        pass

    stopped = Experiment(config(root, *extra), tmp_path / "stopped")
    original, calls = stopped.method.begin_epoch, [0]

    def begin_epoch(epoch, epochs, ctx=None):
        calls[0] += 1
        if calls[0] == 4:  # task 2, before its second epoch
            raise Stop
        original(epoch, epochs, ctx)

    stopped.method.begin_epoch = begin_epoch
    with pytest.raises(Stop):
        stopped.run()
    assert partial_path(tmp_path / "stopped").exists()
    resumed = Experiment(config(root, *extra), tmp_path / "stopped")
    assert resumed.restore() and resumed.partial is not None
    got = resumed.run()
    assert got["accuracy"] == expected["accuracy"] and got["accuracy_matrix"] == expected["accuracy_matrix"]


def test_an_unreadable_image_is_named_and_skipped_only_within_the_budget(tmp_path):
    root = jpeg_tree(tmp_path / "tree")
    broken = root / "train" / "dog" / "dog_3.jpg"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated JPEG
    for storage in ("stream", "memory"):
        with pytest.raises(DataError, match="dog_3.jpg"):
            exp = Experiment(config(root, f"data.storage={storage}"), tmp_path / f"fail_{storage}")
            exp.run()
        run = tmp_path / f"ok_{storage}"
        results = Experiment(config(root, f"data.storage={storage}", "data.max_bad_images=1"), run).run()
        assert results["completed_tasks"] == 2
        listed = (run / "unreadable_images.txt").read_text()
        assert "dog_3.jpg" in listed and len(listed.splitlines()) == 1


def test_streamed_replacement_keeps_the_batch_size_and_class(tmp_path):
    root = jpeg_tree(tmp_path / "tree")
    (root / "train" / "cat" / "cat_1.jpg").write_bytes(b"not an image")
    data = Experiment(config(root, "data.storage=stream", "data.max_bad_images=1"), tmp_path / "s").data
    idx = torch.arange(len(data.labels["train"]))
    x, y = data.batch("train", idx)
    bad = [i for i in range(len(idx)) if data.sources["train"].path(i).endswith("cat_1.jpg")][0]
    same = [i for i in range(len(idx)) if y[i] == y[bad] and i != bad]
    assert len(x) == len(idx) and any(torch.equal(x[bad], x[i]) for i in same)


def test_packed_cache_is_reused_rebuilt_when_the_source_changes_and_refused_when_truncated(tmp_path):
    root = jpeg_tree(tmp_path / "tree")
    cache = tmp_path / "cache"
    cfg = config(root, "data.storage=stream", f"data.cache={cache}", "data.pack_side=20")
    first = Experiment(cfg, tmp_path / "a")
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]  # beside it: its .lock file
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["side"] == 20 and manifest["splits"]["train"]["count"] == 32
    assert first.data.sources["train"].packed is not None
    x_packed = first.data.batch("test", torch.arange(4))[0]
    x_source = Experiment(config(root, "data.storage=stream"), tmp_path / "b").data.batch("test", torch.arange(4))[0]
    assert x_packed.shape == x_source.shape and (x_packed - x_source).abs().mean() < 0.2  # re-encoded, close
    built = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.bin")}

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a matching cache is used as it is, silently
        Experiment(cfg, tmp_path / "c")
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.bin")} == built

    jpeg_tree(root, seed=1)  # every image rewritten with other content
    with pytest.warns(LtcilWarning, match="source images of the (train|test) split changed"):
        Experiment(cfg, tmp_path / "d")

    shard = sorted(folder.glob("train_*.bin"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.warns(LtcilWarning, match="truncated"):
        exp = Experiment(cfg, tmp_path / "e")
    assert shard.stat().st_size == json.loads((folder / "manifest.json").read_text())["shards"][0]["bytes"]
    assert exp.run()["completed_tasks"] == 2


def test_the_index_keeps_no_python_object_per_image(tmp_path):
    paths = [f"/data/imagenet/train/n{c:08d}/img_{i}.JPEG" for c in range(50) for i in range(200)]
    images = StreamedImages("/data/imagenet", paths, 224)
    assert images.shape == (10_000, 224, 224, 3) and images.path(4321) == paths[4321]
    for value in vars(images).values():  # flat arrays and scalars only
        assert isinstance(value, (np.ndarray, str, int, type(None)))
    per_image = (images.blob.nbytes + images.offsets.nbytes) / len(images)
    assert per_image < 40  # root-relative path bytes + one offset
    kept = images.select(np.arange(len(images)) % 2 == 0)
    assert len(kept) == 5_000 and kept.path(1) == paths[2]


IMAGENET_CONFIGS = ["bic_resnet18_imagenet100_b0inc10", "bic_resnet18_imagenet1000_b0inc100",
                    "icarl_resnet18_imagenet100_b0inc10", "sbcl_resnet50_imagenetlt",
                    "icarl_resnet18_imagenetsubsetlt_ordered_b50inc10",
                    "lucir_resnet18_imagenetsubsetlt_shuffled_b50inc10",
                    "podnet_resnet18_imagenetsubsetlt_ordered_b50inc10"]
SHORT = {"bic": ["method.bias_epochs=1"], "podnet": ["method.finetune_epochs=1", "method.proxies=1"],
         "lucir": ["method.cbf_epochs=1"],
         # ResNet-50 over 1,000 classes is slow on a CPU: 20 of them
         "sbcl": ["method.linear_epochs=1", "method.warmup_epochs=0", "method.delta=2", "method.linear_batch_size=16",
                  f"scenario.order={list(range(0, 1000, 50))}".replace(" ", "")]}


@pytest.mark.parametrize("name", IMAGENET_CONFIGS)
def test_imagenet_configs_run_streamed_on_list_files_of_their_names(tmp_path, name):
    """Each ImageNet config, unchanged but for its schedule, image size and data.root, reads list files with the
    names it expects (here a tiny tree of as many classes as the config needs) and trains its first task streamed."""
    from ltcil.config import shipped_configs

    path = shipped_configs()[name]
    cfg = load_config(path, [f"data.root={tmp_path}"])
    classes = 1000 if ("1000" in name or "imagenetlt" in name) else 100
    img = Image.fromarray(np.full((20, 24, 3), 128, np.uint8))
    (tmp_path / "img").mkdir()
    for key in ("train_list", "val_list", "test_list"):
        if getattr(cfg.data, key):
            per_class = 3 if key == "train_list" else 1
            lines = []
            for c in range(classes):
                for i in range(per_class):
                    rel = f"img/{key}_{c}_{i}.jpg"
                    img.save(tmp_path / rel)
                    lines.append(f"{rel} {c}")
            (tmp_path / getattr(cfg.data, key)).write_text("\n".join(lines) + "\n")
    method = cfg.method["name"]
    overrides = [f"data.root={tmp_path}", "data.image_size=16", "data.storage=stream", "data.workers=0",
                 "data.cache=off", "train.epochs=1", "train.batch_size=64", "scenario.max_tasks=1",
                 "scenario.imbalance_factor=1", "scenario.val_fraction=0", "train.progress=false", "log.report=never",
                 "eval.batch_size=256", *SHORT.get(method, [])]
    exp = Experiment(load_config(path, overrides), tmp_path / "run")
    assert isinstance(exp.data, StreamData)
    results = exp.run()
    assert results["completed_tasks"] == 1 and results["train_counts"][0] >= 3


def test_statistics_of_a_large_split_come_from_an_even_sample(tmp_path, monkeypatch):
    from ltcil.data import stream_loader

    root = jpeg_tree(tmp_path / "tree")
    exact = Experiment(config(root, "data.storage=stream"), tmp_path / "a").data
    monkeypatch.setattr(stream_loader, "STATS_IMAGES", 20)  # 32 training images: 20 of them, one pass
    sampled = Experiment(config(root, "data.storage=stream"), tmp_path / "b").data
    assert not torch.equal(exact.mean, sampled.mean)
    assert torch.allclose(exact.mean, sampled.mean, atol=0.01) and torch.allclose(exact.std, sampled.std, atol=0.01)


def test_a_list_entry_whose_image_is_missing_is_named_by_file_and_line(tmp_path):
    root = jpeg_tree(tmp_path / "tree")
    lines = [f"train/{c}/{c}_{i}.jpg {k}" for k, c in enumerate(CLASSES) for i in range(3)]
    lines[4] = "train/dog/nowhere.jpg 1"
    (root / "train.txt").write_text("# images\n" + "\n".join(lines) + "\n")
    (root / "test.txt").write_text("".join(f"val/{c}/{c}_0.jpg {k}\n" for k, c in enumerate(CLASSES)))
    for storage in ("memory", "stream"):
        with pytest.raises(DataError, match=r"train.txt, line 6: .*train/dog/nowhere.jpg does not exist"):
            Experiment(config(root, f"data.storage={storage}", "data.train_list=train.txt",
                              "data.test_list=test.txt"), tmp_path / storage)


def test_a_batch_a_method_asks_for_itself_leaves_the_batches_decoded_ahead(tmp_path):
    root = jpeg_tree(tmp_path / "tree")
    data = Experiment(config(root, "data.storage=stream"), tmp_path / "s").data
    order = torch.arange(len(data.labels["train"]))
    batches = data.index_batches(order, 8, shuffle=False, split="train")
    first = next(batches)
    ahead = [a[1] for a in data._ahead]
    data.batch("train", torch.tensor([30, 31]))  # e.g. exemplars drawn by the method within a step
    assert [a[1] for a in data._ahead] == ahead
    data.batch("train", first)
    assert len(data._ahead) == len(ahead) - 1


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_decoding_processes_die_with_a_killed_training_process(tmp_path, how):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = tmp_path / "hold.py"
    script.write_text(
        "import sys, time\n"
        "from ltcil.data.stream import DecodePool\n"
        "from ltcil.data.decode import decode_job\n"
        "if __name__ == '__main__':\n"
        "    pool = DecodePool(2)\n"
        "    [f.result() for f in pool.submit(decode_job, [(8, [], [], None)] * 2)]\n"
        "    print(' '.join(str(p) for p in pool._pool._processes), flush=True)\n"
        "    time.sleep(120)\n")
    src = str(Path(__file__).resolve().parents[1] / "src")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env={**os.environ, "PYTHONPATH": src})
    workers = [int(p) for p in proc.stdout.readline().split()]
    assert len(workers) == 2 and all(Path(f"/proc/{p}").exists() for p in workers)
    proc.send_signal(getattr(signal, how))
    proc.wait(timeout=30)
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
        time.sleep(0.1)
    assert not any(Path(f"/proc/{p}").exists() for p in workers)


def test_streamed_resized_crops_get_autoaugment_and_cutout(tmp_path):
    """The resized crop cut by the decoding workers is then augmented on the device like in-memory images:
    AutoAugment on its uint8 pixels, Cutout before normalising (the same draws from the same generator)."""
    from ltcil.data.augment import AugmentSpec
    from ltcil.data.autoaugment import auto_augment, cutout

    root = jpeg_tree(tmp_path / "tree")
    data = Experiment(config(root, "data.storage=stream", "data.normalize=false"), tmp_path / "s").data
    idx = torch.arange(8)
    plain_spec = AugmentSpec(crop_padding=0, flip=False, resized_crop=True, crop_scale=(1.0, 1.0))
    spec = AugmentSpec(crop_padding=0, flip=False, resized_crop=True, crop_scale=(1.0, 1.0), autoaugment="cifar10",
                       cutout=6)
    plain = data.batch("train", idx, plain_spec, torch.Generator().manual_seed(3))[0]
    data._crop_last = None  # a new batch, not the second view of the same one
    out = data.batch("train", idx, spec, torch.Generator().manual_seed(3))[0]
    gen = torch.Generator().manual_seed(3)
    torch.randint(2**62, (1,), generator=gen)  # the crop seed the unannounced batch drew
    pixels = (plain * 255).round().to(torch.uint8)
    expected = cutout(auto_augment(pixels, gen).float() / 255, 6, gen)
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(out, plain)

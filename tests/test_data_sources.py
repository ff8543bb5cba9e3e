"""Data sources on tiny generated files: layouts, validation and the errors users see."""

import dataclasses
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from ltcil.config import DataConfig
from ltcil.data import cifar
from ltcil.data.arrays import read_npz
from ltcil.errors import DataError
from ltcil.registry import get


def load(name, **kw):
    return get("dataset", name)(DataConfig(name=name, **kw))


def test_digits_split_is_fixed_and_stratified():
    a, b = load("digits"), load("digits")
    assert a.train.images.shape[1:] == (8, 8, 1) and a.train.images.dtype == np.uint8
    assert len(a.train) + len(a.test) == 1797
    assert np.array_equal(a.test.labels, b.test.labels) and np.array_equal(a.train.images, b.train.images)
    counts = np.bincount(a.test.labels)
    assert counts.min() >= 44 and counts.max() <= 46  # a quarter of ~180 per class
    assert a.train.images.max() == 255


def cifar_pickles(n_train=20, n_test=10, classes=100):
    rng = np.random.default_rng(0)

    def batch(n):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        data[0, :1024] = 10  # red plane of image 0
        data[0, 1024:2048] = 20
        data[0, 2048:] = 30
        return {b"data": data, b"fine_labels": list(rng.integers(0, classes, n)), b"coarse_labels": [0] * n}

    meta = {b"fine_label_names": [f"c{i}".encode() for i in range(classes)]}
    return {"train": batch(n_train), "test": batch(n_test), "meta": meta}


def write_cifar_archive(path, members, prefix="cifar-100-python/"):
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            raw = pickle.dumps(obj)
            info = tarfile.TarInfo(prefix + name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


@pytest.fixture
def small_counts(monkeypatch):
    """Tiny archives: the loader checks the official counts, so shrink them to the generated files'."""
    monkeypatch.setattr(cifar, "CIFAR100", dataclasses.replace(cifar.CIFAR100, train_count=20, test_count=10))
    monkeypatch.setattr(cifar, "CIFAR10", dataclasses.replace(cifar.CIFAR10, train_count=25, test_count=5))


def test_cifar_from_archive_and_folder(tmp_path, small_counts):
    members = cifar_pickles()
    write_cifar_archive(tmp_path / "cifar-100-python.tar.gz", members)
    ds = load("cifar100", root=str(tmp_path), download=False)
    assert ds.train.images.shape == (20, 32, 32, 3) and ds.test.images.shape == (10, 32, 32, 3)
    assert ds.train.images[0, 5, 7].tolist() == [10, 20, 30]  # planes -> HWC
    assert ds.class_names[3] == "c3"
    folder = tmp_path / "x" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, obj in members.items():
        (folder / name).write_bytes(pickle.dumps(obj))
    ds2 = load("cifar100", root=str(tmp_path / "x"), download=False)
    assert np.array_equal(ds.train.images, ds2.train.images)


def test_missing_cifar_names_the_expected_file(tmp_path):
    with pytest.raises(DataError) as info:
        load("cifar100", root=str(tmp_path), download=False)
    assert str(tmp_path / "cifar-100-python.tar.gz") in str(info.value)
    assert "cifar-100-python.tar.gz" in str(info.value) and "toronto" in str(info.value)


def test_truncated_archive_is_reported_as_corrupt(tmp_path, small_counts):
    path = tmp_path / "cifar-100-python.tar.gz"
    write_cifar_archive(path, cifar_pickles(200, 100))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="corrupt or truncated") as info:
        load("cifar100", root=str(tmp_path), download=False)
    assert str(path) in str(info.value)


def test_path_traversal_member_is_refused(tmp_path, small_counts):
    path = tmp_path / "cifar-100-python.tar.gz"
    write_cifar_archive(path, {"../evil": {b"x": 1}, **cifar_pickles()}, prefix="")
    with pytest.raises(DataError, match="'../evil' would escape"):
        load("cifar100", root=str(tmp_path), download=False)


def test_wrong_keys_and_shapes_are_named(tmp_path, small_counts):
    members = cifar_pickles()
    del members["train"][b"fine_labels"]
    write_cifar_archive(tmp_path / "cifar-100-python.tar.gz", members)
    with pytest.raises(DataError, match="key 'fine_labels' is missing"):
        load("cifar100", root=str(tmp_path), download=False)
    members = cifar_pickles()
    members["test"][b"data"] = members["test"][b"data"][:, :100]
    write_cifar_archive(tmp_path / "cifar-100-python.tar.gz", members)
    with pytest.raises(DataError, match=r"\(N, 3072\)"):
        load("cifar100", root=str(tmp_path), download=False)


def test_out_of_range_cifar_label(tmp_path, small_counts):
    members = cifar_pickles()
    members["train"][b"fine_labels"][3] = 100
    write_cifar_archive(tmp_path / "cifar-100-python.tar.gz", members)
    with pytest.raises(DataError, match="key 'fine_labels' holds label 100") as info:
        load("cifar100", root=str(tmp_path), download=False)
    assert str(tmp_path / "cifar-100-python.tar.gz") in str(info.value)


def test_cifar_labels_that_are_not_integers(tmp_path, small_counts):
    members = cifar_pickles()
    members["train"][b"fine_labels"] = ["cat"] * 20
    write_cifar_archive(tmp_path / "cifar-100-python.tar.gz", members)
    with pytest.raises(DataError, match="key 'fine_labels' must be a list of integers"):
        load("cifar100", root=str(tmp_path), download=False)


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def medmnist_arrays(n=12, rgb=False, classes=3):
    rng = np.random.default_rng(1)
    shape = (n, 28, 28, 3) if rgb else (n, 28, 28)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % classes).reshape(n, 1).astype(np.uint8)
    return arrays


@pytest.mark.parametrize("rgb", [False, True])
def test_medmnist_layout(tmp_path, rgb):
    write_npz(tmp_path / "bloodmnist.npz", **medmnist_arrays(rgb=rgb))
    ds = load("medmnist", root=str(tmp_path), subset="bloodmnist")
    assert ds.train.images.shape == (12, 28, 28, 3 if rgb else 1)
    assert ds.val is not None and ds.train.labels.ndim == 1 and ds.train.labels.dtype == np.int64
    assert ds.class_names[0] == "basophil"


def test_medmnist_needs_subset(tmp_path):
    with pytest.raises(DataError, match="data.subset"):
        load("medmnist", root=str(tmp_path))


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: a.pop("test_labels"), "no test split: expected the keys 'test_images' and 'test_labels' "
                                         r"\(or Keras-style 'x_test' and 'y_test'\)"),
        (lambda a: a.__setitem__("train_labels", a["train_labels"][:5]), "has 12 images but 'train_labels' has 5"),
        (lambda a: a.__setitem__("train_images", a["train_images"].astype(np.float32)), "must be uint8"),
        (lambda a: a.__setitem__("train_labels", np.full((12, 1), -1)), "'train_labels' holds label -1"),
        (lambda a: a.__setitem__("test_labels", np.full((12, 2), 0)), r"must have shape \(N,\) or \(N, 1\)"),
    ],
)
def test_npz_validation_errors_name_file_and_key(tmp_path, mutate, match):
    arrays = medmnist_arrays()
    mutate(arrays)
    path = write_npz(tmp_path / "mine.npz", **arrays)
    with pytest.raises(DataError, match=match) as info:
        load("npz", root=str(path))
    assert str(path) in str(info.value)


def test_corrupt_npz(tmp_path):
    path = tmp_path / "broken.npz"
    write_npz(path, **medmnist_arrays())
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match="corrupt or truncated") as info:
        read_npz(path, "npz")
    assert str(path) in str(info.value)


def test_npz_class_names_and_optional_val(tmp_path):
    arrays = medmnist_arrays()
    for k in ("val_images", "val_labels"):
        arrays.pop(k)
    arrays["class_names"] = np.array(["a", "b", "c"])
    ds = load("npz", root=str(write_npz(tmp_path / "d.npz", **arrays)))
    assert ds.val is None and ds.class_names == ["a", "b", "c"]


def make_png(path, color, size=(20, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_imagelist_folders_and_lists(tmp_path):
    for split in ("train", "val"):
        for c, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            for i in range(2):
                make_png(tmp_path / split / c / f"{i}.png", color)
    ds = load("imagelist", root=str(tmp_path), image_size=8)
    assert ds.class_names == ["cat", "dog"] and ds.train.images.shape == (4, 8, 8, 3)
    assert ds.train.images[0, 4, 4].tolist() == [255, 0, 0] and ds.test.labels.tolist() == [0, 0, 1, 1]
    (tmp_path / "train.txt").write_text("train/cat/0.png 0\ntrain/dog/1.png 1\n")
    (tmp_path / "val.txt").write_text("val/dog/0.png 1\n")
    ds = load("imagelist", root=str(tmp_path), image_size=6, train_list="train.txt", val_list="val.txt")
    assert ds.train.images.shape == (2, 6, 6, 3) and ds.test.labels.tolist() == [1]


def test_imagelist_errors_name_the_file(tmp_path):
    make_png(tmp_path / "train" / "a" / "0.png", (1, 2, 3))
    (tmp_path / "train" / "a" / "1.png").write_bytes(b"not an image")
    make_png(tmp_path / "val" / "a" / "0.png", (1, 2, 3))
    with pytest.raises(DataError, match="cannot be read") as info:
        load("imagelist", root=str(tmp_path), image_size=8)
    assert str(tmp_path / "train" / "a" / "1.png") in str(info.value)
    (tmp_path / "bad.txt").write_text("train/a/0.png 0\ntrain/a/0.png zero\n")
    with pytest.raises(DataError, match=r"bad.txt, line 2"):
        load("imagelist", root=str(tmp_path), image_size=8, train_list="bad.txt", val_list="bad.txt")
    with pytest.raises(DataError, match="data.image_size"):
        load("imagelist", root=str(tmp_path))


def test_failed_download_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(cifar.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="could not be downloaded") as info:
        load("cifar100", root=str(tmp_path / "data"), download=True)
    assert str(tmp_path / "data" / "cifar-100-python.tar.gz") in str(info.value)
    assert list((tmp_path / "data").iterdir()) == []


def test_download_with_wrong_md5_is_rejected(tmp_path, monkeypatch):
    class FakeResponse(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(cifar.urllib.request, "urlopen", lambda *a, **k: FakeResponse(b"not the archive"))
    with pytest.raises(DataError, match="md5 does not match"):
        load("cifar100", root=str(tmp_path), download=True)
    assert list(tmp_path.iterdir()) == []


def test_cifar10_layout_with_str_keys(tmp_path, small_counts):
    """CIFAR-10: five training batches, `labels`/`label_names`; str keys as in pickles written by Python 3."""
    rng = np.random.default_rng(2)
    members = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, size=(5, 3072), dtype=np.uint8)
        data[0] = np.repeat([i, 100 + i, 200 + i], 1024)  # image 0 of batch i is the colour (i, 100+i, 200+i)
        members[name] = {"data": data, "labels": [i] * 5}
    members["batches.meta"] = {"label_names": [f"n{c}" for c in range(10)]}
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_archive(archive, members, prefix="cifar-10-batches-py/")
    ds = load("cifar10", root=str(archive), download=False)  # data.root may name the archive itself
    assert ds.train.images.shape == (25, 32, 32, 3) and ds.test.images.shape == (5, 32, 32, 3)
    assert ds.train.images[5, 31, 0].tolist() == [1, 101, 201]  # batches concatenated in order
    assert ds.test.images[0, 0, 31].tolist() == [5, 105, 205]
    assert ds.train.labels.tolist() == np.repeat(np.arange(5), 5).tolist() and ds.class_names[9] == "n9"


@pytest.mark.parametrize("member", ["../evil", "/etc/evil", "cifar-100-python/../../evil", "..\\evil"])
def test_escaping_members_are_refused(tmp_path, small_counts, member):
    path = tmp_path / "cifar-100-python.tar.gz"
    write_cifar_archive(path, {member: {b"x": 1}, **cifar_pickles()}, prefix="")
    with pytest.raises(DataError, match="would escape the extraction folder") as info:
        load("cifar100", root=str(tmp_path), download=False)
    assert repr(member) in str(info.value) and str(path) in str(info.value)


class _MakesADirectory:
    """A pickle payload that would run code on load; the loader must refuse it before calling anything."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.mkdir, (self.target,)


def test_pickles_that_would_run_code_are_refused(tmp_path, small_counts):
    members = cifar_pickles()
    members["train"][b"data"] = _MakesADirectory(str(tmp_path / "pwned"))
    write_cifar_archive(tmp_path / "cifar-100-python.tar.gz", members)
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|nt)\.mkdir") as info:
        load("cifar100", root=str(tmp_path), download=False)
    assert "cifar-100-python/train" in str(info.value)
    assert not (tmp_path / "pwned").exists()


def test_download_saves_the_verified_archive(tmp_path, monkeypatch, small_counts):
    """A download whose md5 matches is renamed into place and read; no temporary file is left behind."""
    source = tmp_path / "served.tar.gz"
    write_cifar_archive(source, cifar_pickles())
    payload = source.read_bytes()
    monkeypatch.setattr(cifar, "CIFAR100", dataclasses.replace(cifar.CIFAR100, md5=cifar._md5(source)))

    class FakeResponse(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(cifar.urllib.request, "urlopen", lambda *a, **k: FakeResponse(payload))
    root = tmp_path / "data"
    ds = load("cifar100", root=str(root), download=True)
    assert len(ds.train) == 20 and [p.name for p in root.iterdir()] == ["cifar-100-python.tar.gz"]


def test_medmnist_plus_file_keeps_class_names(tmp_path):
    arrays = medmnist_arrays(classes=2)
    path = write_npz(tmp_path / "breastmnist_128.npz", **arrays)
    ds = load("medmnist", root=str(path))
    assert ds.class_names == ["malignant", "normal, benign"] and len(ds.val) == 12


def test_npz_labels_beyond_known_classes_name_the_key(tmp_path):
    arrays = medmnist_arrays(classes=3)
    arrays["class_names"] = np.array(["a", "b"])
    path = write_npz(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match="'train_labels' holds label 2, outside 0..1") as info:
        load("npz", root=str(path))
    assert str(path) in str(info.value)


def test_npz_object_class_names_are_not_unpickled(tmp_path):
    arrays = medmnist_arrays()
    arrays["class_names"] = np.array(["a", 1, None], dtype=object)
    path = write_npz(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match="key 'class_names' holds Python objects") as info:
        load("npz", root=str(path))
    assert str(path) in str(info.value)


def test_imagelist_resizes_short_side_then_centre_crops(tmp_path):
    # 40x20 (w x h): green | red | blue bands of 10, 20, 10 columns; the 10x10 centre crop of the
    # 20x10 resize is all red. A large JPEG exercises Pillow's reduced-scale (draft) decoding.
    bands = np.zeros((20, 40, 3), dtype=np.uint8)
    bands[:, :10, 1] = 255
    bands[:, 10:30, 0] = 255
    bands[:, 30:, 2] = 255
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.fromarray(bands).save(tmp_path / "train" / "a" / "wide.png")
    Image.fromarray(bands.transpose(1, 0, 2)).save(tmp_path / "train" / "a" / "tall.png")  # 20x40, crop is red
    Image.fromarray(bands).resize((800, 400), Image.NEAREST).save(tmp_path / "val" / "a" / "big.jpg", quality=95)
    ds = load("imagelist", root=str(tmp_path), image_size=10)
    assert ds.train.images.shape == (2, 10, 10, 3) and ds.test.images.shape == (1, 10, 10, 3)
    inner = ds.train.images[:, 1:-1, 1:-1]  # bilinear blends only the border pixels
    assert (inner[..., 0] == 255).all() and (inner[..., 1:] == 0).all()
    big = ds.test.images[0, 1:-1, 1:-1].astype(int)
    assert (big[..., 0] > 230).all() and (big[..., 1:] < 25).all()


def test_imagelist_list_class_names_come_from_folders(tmp_path):
    for wnid, color in (("n017", (255, 0, 0)), ("n002", (0, 255, 0))):
        make_png(tmp_path / "train" / wnid / "0.png", color)
    (tmp_path / "train.txt").write_text("# ImageNet-style list\ntrain/n017/0.png 0\n\ntrain/n002/0.png 1\n")
    (tmp_path / "test.txt").write_text("train/n002/0.png 1\n")
    ds = load("imagelist", root=str(tmp_path), image_size=4, train_list="train.txt", test_list="test.txt")
    assert ds.class_names == ["n017", "n002"] and ds.val is None
    assert ds.train.images[1, 0, 0].tolist() == [0, 255, 0]
    (tmp_path / "flat.txt").write_text("train/n017/0.png 0\ntrain/n017/0.png 1\n")  # one folder: no names
    ds = load("imagelist", root=str(tmp_path), image_size=4, train_list="flat.txt", val_list="test.txt")
    assert ds.class_names == ["0", "1"]


def test_imagelist_val_and_test_lists_give_three_splits(tmp_path):
    make_png(tmp_path / "img" / "a.png", (9, 9, 9))
    for name in ("train", "val", "test"):
        (tmp_path / f"{name}.txt").write_text("img/a.png 0\nimg/a.png 2\n")
    ds = load("imagelist", root=str(tmp_path), image_size=3, train_list="train.txt", val_list="val.txt",
              test_list="test.txt")
    assert len(ds.val) == len(ds.test) == 2 and ds.num_classes == 3


def _missing_archive(tmp):
    return {"name": "cifar100", "root": str(tmp), "download": False}, tmp / "cifar-100-python.tar.gz"


def _truncated_archive(tmp):
    write_cifar_archive(tmp / "cifar-100-python.tar.gz", cifar_pickles())
    path = tmp / "cifar-100-python.tar.gz"
    path.write_bytes(path.read_bytes()[:2000])
    return {"name": "cifar100", "root": str(tmp), "download": False}, path


def _incomplete_folder(tmp):
    folder = tmp / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(pickle.dumps(cifar_pickles()["train"]))
    return {"name": "cifar100", "root": str(tmp), "download": False}, folder


def _missing_medmnist(tmp):
    return {"name": "medmnist", "root": str(tmp), "subset": "dermamnist"}, tmp / "dermamnist.npz"


def _medmnist_without_subset(tmp):
    return {"name": "medmnist", "root": str(tmp)}, tmp


def _npz_missing_key(tmp):
    arrays = medmnist_arrays()
    del arrays["train_images"]
    return {"name": "npz", "root": str(write_npz(tmp / "a.npz", **arrays))}, tmp / "a.npz"


def _npz_corrupt(tmp):
    (tmp / "a.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    return {"name": "npz", "root": str(tmp / "a.npz")}, tmp / "a.npz"


def _corrupt_image(tmp):
    make_png(tmp / "train" / "a" / "0.png", (1, 2, 3))
    make_png(tmp / "val" / "a" / "0.png", (1, 2, 3))
    (tmp / "val" / "a" / "1.png").write_bytes(Image.new("RGB", (9, 9)).tobytes())
    return {"name": "imagelist", "root": str(tmp), "image_size": 4}, tmp / "val" / "a" / "1.png"


def _missing_list(tmp):
    return {"name": "imagelist", "root": str(tmp), "image_size": 4, "train_list": "lists/train.txt",
                "val_list": "lists/val.txt"}, tmp / "lists" / "train.txt"


def _bad_list_line(tmp):
    (tmp / "train.txt").write_text("a.png 0\na.png\n")
    return {"name": "imagelist", "root": str(tmp), "image_size": 4, "train_list": "train.txt", "val_list": "train.txt"}, \
        tmp / "train.txt"


def _no_train_folder(tmp):
    return {"name": "imagelist", "root": str(tmp), "image_size": 4}, tmp / "train"


def _no_image_size(tmp):
    return {"name": "imagelist", "root": str(tmp)}, tmp


@pytest.mark.parametrize("case", [
    _missing_archive, _truncated_archive, _incomplete_folder, _missing_medmnist, _medmnist_without_subset,
    _npz_missing_key, _npz_corrupt, _corrupt_image, _missing_list, _bad_list_line, _no_train_folder, _no_image_size,
])
def test_every_data_error_names_its_path(tmp_path, small_counts, case):
    kwargs, path = case(tmp_path)
    with pytest.raises(DataError) as info:
        load(**kwargs)
    assert str(path) in str(info.value) or str(path.resolve()) in str(info.value)

"""Data sources on tiny generated files: layouts, validation and the errors users see."""

import io
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
    spec = cifar.CIFAR100.__class__(**{**cifar.CIFAR100.__dict__, "train_count": 20, "test_count": 10})
    monkeypatch.setattr(cifar, "CIFAR100", spec)


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
    with pytest.raises(DataError, match="label 100 is out of range"):
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
        (lambda a: a.pop("test_labels"), "'test_labels' is missing"),
        (lambda a: a.__setitem__("train_labels", a["train_labels"][:5]), "has 12 images but 'train_labels' has 5"),
        (lambda a: a.__setitem__("train_images", a["train_images"].astype(np.float32)), "must be uint8"),
        (lambda a: a.__setitem__("train_labels", np.full((12, 1), -1)), "label -1 is out of range"),
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

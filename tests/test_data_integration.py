"""The real files in ../shared/data; each test skips with the reason when its file is absent."""

from pathlib import Path

import numpy as np
import pytest

from ltcil.config import DataConfig, load_config
from ltcil.engine.runner import Experiment
from ltcil.registry import get

pytestmark = pytest.mark.integration

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def need(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (integration data lives in ../shared/data beside the repository)")
    return path


@pytest.fixture(scope="module")
def cifar100():
    """Loaded once for the module: reading the 181 MB archive takes a few seconds."""
    need("cifar-100-python.tar.gz")
    return get("dataset", "cifar100")(DataConfig(name="cifar100", root=str(SHARED_DATA), download=False))


def test_cifar100_official_archive(cifar100):
    ds = cifar100
    assert ds.train.images.shape == (50000, 32, 32, 3) and ds.test.images.shape == (10000, 32, 32, 3)
    assert ds.train.images.dtype == np.uint8 and ds.train.labels.dtype == np.int64
    assert ds.num_classes == 100 and ds.class_names[0] == "apple" and ds.class_names[-1] == "worm"
    assert (np.bincount(ds.train.labels, minlength=100) == 500).all()
    assert (np.bincount(ds.test.labels, minlength=100) == 100).all()
    mean = ds.train.images.reshape(-1, 3).mean(0)
    assert np.allclose(mean, np.array([0.5071, 0.4865, 0.4409]) * 255, atol=0.5)


def test_cifar100_from_archive_path_and_read_only_copy(cifar100):
    """data.root may name the archive itself; reading it writes nothing next to the (read-only) file."""
    path = need("cifar-100-python.tar.gz")
    before = sorted(p.name for p in SHARED_DATA.iterdir())
    ds = get("dataset", "cifar100")(DataConfig(name="cifar100", root=str(path), download=True))
    assert np.array_equal(ds.test.images, cifar100.test.images)
    assert np.array_equal(ds.test.labels, cifar100.test.labels)
    assert sorted(p.name for p in SHARED_DATA.iterdir()) == before


def test_cifar100_lt_scenario_counts(cifar100):
    from ltcil.config import ScenarioConfig
    from ltcil.scenarios import build_scenario

    sc = build_scenario(ScenarioConfig(imbalance_factor=100), cifar100.train.labels, cifar100.test.labels, 100)
    assert sc.train_counts.sum() == 10847 and sc.train_counts[0] == 500 and sc.train_counts[-1] == 5


def test_breastmnist():
    path = need("breastmnist.npz")
    ds = get("dataset", "medmnist")(DataConfig(name="medmnist", root=str(path)))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (546, 78, 156)
    assert ds.num_classes == 2 and ds.class_names == ["malignant", "normal, benign"]
    assert ds.train.images.shape[1:] == (28, 28, 1) and ds.train.images.dtype == np.uint8
    assert set(np.unique(ds.train.labels)) == {0, 1}


def test_breastmnist_runs_end_to_end(tmp_path):
    need("breastmnist.npz")
    cfg = load_config(None, ["data.name=medmnist", f"data.root={SHARED_DATA}", "data.subset=breastmnist",
                             "scenario.increment=1", "backbone.name=convnet", "train.epochs=1",
                             "train.progress=false", "method.name=icarl", "memory.size=20"])
    results = Experiment(cfg, tmp_path).run()
    assert len(results["accuracy"]) == 2 and results["val_pool"] == "val"

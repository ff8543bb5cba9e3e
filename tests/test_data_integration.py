"""The real files in ../shared/data; each test skips with the reason when its file is absent."""

import numpy as np
import pytest

from ltcil.config import DataConfig, load_config
from ltcil.engine.runner import Experiment
from ltcil.registry import get

pytestmark = pytest.mark.integration


def need(shared_data, name):
    path = shared_data / name
    if not path.exists():
        pytest.skip(f"{path} is absent (integration data lives in ../shared/data)")
    return path


def test_cifar100_official_archive(shared_data):
    need(shared_data, "cifar-100-python.tar.gz")
    ds = get("dataset", "cifar100")(DataConfig(name="cifar100", root=str(shared_data), download=False))
    assert ds.train.images.shape == (50000, 32, 32, 3) and ds.test.images.shape == (10000, 32, 32, 3)
    assert ds.num_classes == 100 and ds.class_names[0] == "apple"
    assert (np.bincount(ds.train.labels) == 500).all() and (np.bincount(ds.test.labels) == 100).all()
    mean = ds.train.images.reshape(-1, 3).mean(0)
    assert np.allclose(mean, np.array([0.5071, 0.4865, 0.4409]) * 255, atol=0.5)


def test_cifar100_lt_scenario_counts(shared_data):
    need(shared_data, "cifar-100-python.tar.gz")
    from ltcil.scenarios import build_scenario
    from ltcil.config import ScenarioConfig

    ds = get("dataset", "cifar100")(DataConfig(name="cifar100", root=str(shared_data), download=False))
    sc = build_scenario(ScenarioConfig(imbalance_factor=100), ds.train.labels, ds.test.labels, 100)
    assert sc.train_counts.sum() == 10847 and sc.train_counts[0] == 500 and sc.train_counts[-1] == 5


def test_breastmnist(shared_data):
    path = need(shared_data, "breastmnist.npz")
    ds = get("dataset", "medmnist")(DataConfig(name="medmnist", root=str(path)))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (546, 78, 156)
    assert ds.num_classes == 2 and ds.train.images.shape[1:] == (28, 28, 1)


def test_breastmnist_runs_end_to_end(shared_data, tmp_path):
    need(shared_data, "breastmnist.npz")
    cfg = load_config(None, ["data.name=medmnist", f"data.root={shared_data}", "data.subset=breastmnist",
                             "scenario.increment=1", "backbone.name=convnet", "train.epochs=1",
                             "train.progress=false", "method.name=icarl", "memory.size=20"])
    results = Experiment(cfg, tmp_path).run()
    assert len(results["accuracy"]) == 2 and results["val_pool"] == "val"

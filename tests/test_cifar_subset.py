"""benchmarks/cifar_subset.py: the first classes of a class order as a small .npz that, with its side file's
overrides, is the start of the same run on the full archive (what a GPU slot carries when the archive can't go)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ltcil.config import DataConfig, load_config
from ltcil.data.cifar import CIFAR100, load_cifar
from ltcil.registry import get
from ltcil.scenarios.order import class_order

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar-100-python.tar.gz"


@pytest.mark.integration
@pytest.mark.skipif(not ARCHIVE.exists(), reason="needs ../shared/data/cifar-100-python.tar.gz")
def test_subset_holds_the_orders_first_classes_image_for_image(tmp_path):
    out = tmp_path / "first3.npz"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cifar_subset.py"), "--data-root",
                           str(ARCHIVE.parent), "--classes", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    side = json.loads(out.with_suffix(".json").read_text())
    full = load_cifar(CIFAR100, DataConfig(name="cifar100", root=str(ARCHIVE.parent), download=False))
    order = class_order("seed:1993", 100)[:3]
    assert side["classes"] == order.tolist() == [68, 56, 78]  # PyCIL's iCaRL order starts so

    cfg = load_config("icarl_resnet32_cifar100_b0inc10_pycil", [*side["overrides"], f"data.root={out}"])
    sub = get("dataset", "npz")(cfg.data)
    assert cfg.scenario.order == "natural" and sub.class_names == [full.class_names[c] for c in order]
    for split, whole in ((sub.train, full.train), (sub.test, full.test)):
        for rank, cls in enumerate(order):  # label = position in the order; the archive's images, in its order
            assert np.array_equal(split.images[split.labels == rank], whole.images[whole.labels == cls])
        assert len(split) == sum((whole.labels == c).sum() for c in order)
    # the full training split's statistics, not the subset's (a run normalises by what it is given)
    pixels = full.train.images.reshape(-1, 3).astype(np.float64) / 255
    assert np.allclose(cfg.data.mean, pixels.mean(0), atol=1e-6)
    assert np.allclose(cfg.data.std, pixels.std(0), atol=1e-5)

"""ltcil's long-tailed CIFAR-100 holds, image for image, what the long-tailed CIL reference code trains and validates
on (xialeiliu/Long-Tailed-CIL at 7db6317 and JiangpengHe/imbalanced_cil at 3118f67 build the same), shuffled (`lt`),
ordered (`ltio`) and conventional (`conv`).

The pinned digests and counts were printed by the references themselves, unmodified, in their own venv:
    python benchmarks/peers/facil_adapter.py --repo <checkout> --scenario lt|ltio|conv --first 50 --tasks 11 \
        --seed 0|1 --scenario-only --data ../shared/data --out scenario.json
(SHA-256 of the sorted indices into the archive's training split of the images in training and in validation.)
"""

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest

from ltcil.config import ScenarioConfig
from ltcil.scenarios.facil import facil_validation
from ltcil.scenarios.longtail import subsample_ldam_drw
from ltcil.scenarios.tasks import build_scenario

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# (scenario.order, seed, imbalance factor) -> (train digest, validation digest, training images of the first task)
REFERENCE = {
    ("seed:1993", 0, 100): ("7770f2ffd0ad512e66ff09d68e0d8662a2df593acc91f52dcc875696c5d0313e",
                       "088a34b7ae9dd497cebd74c40e56ca5e64ee4974b68207168d0b6bd0ca7892e1", 4719),
    ("natural", 0, 100): ("2922a4288f564d2f103115bc8067e57077f3467b4e64266577e930086f7645a9",
                     "0ddecac7253127f0d5cd58f43411027b08f8d246d28720032eedafe2468a794e", 8908),
    ("seed:1993", 1, 100): ("e88dc5e54fee6ddf47ce52c33c528d33ead10757f26b63e79d0e466ce7c06e9e",
                       "56ecc3ad1ca582ac3690f2d3d7204f0b40866412a7f3a51c9e950eaaad462e08", 4719),
    # the conventional setting ('conv'): every image, FACIL's split of the balanced data
    ("seed:1993", 0, 1): ("c3d9e238d2bafd2704c90b049f9e7f71932bec37bdd5629ce06af9cdbe56ec21",
                          "89787120c8534838e0bf89582a958b169eaded016935a36d3a0cc32dc166254c", 22500),
}
# the reference's shuffled order (dataset_config.py 'cifar100_lt'): iCaRL's numpy seed-1993 permutation
SHUFFLED_HEAD = [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]


def _digest(idx: np.ndarray) -> str:
    return hashlib.sha256(np.sort(idx).astype(np.int64).tobytes()).hexdigest()


@pytest.mark.integration
@pytest.mark.parametrize("order,seed,imbalance", sorted(REFERENCE))
def test_long_tailed_cifar100_holds_the_reference_images(order, seed, imbalance):
    archive = SHARED_DATA / "cifar-100-python.tar.gz"
    if not archive.exists():
        pytest.skip(f"{archive} is absent (integration data lives in ../shared/data beside the repository)")
    from ltcil.config import DataConfig
    from ltcil.data.cifar import load_cifar100

    ds = load_cifar100(DataConfig(name="cifar100", root=str(SHARED_DATA), download=False))
    cfg = ScenarioConfig(order=order, initial=50, increment=5, imbalance_factor=imbalance, longtail_images="ldam_drw",
                         val_fraction=0.1, val_rule="facil", seed=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sc = build_scenario(cfg, ds.train.labels, ds.test.labels, 100)
    # ordered: FACIL's quirk leaves class 95 one training image beside 5 validation images, and ltcil says so
    assert any("class 95 trains on 1 image" in str(w.message) for w in caught) == (order == "natural")
    train = np.concatenate([t.train_indices for t in sc.tasks])
    val = np.concatenate([t.val_indices for t in sc.tasks])
    want_train, want_val, first = REFERENCE[(order, seed, imbalance)]
    assert (_digest(train), _digest(val)) == (want_train, want_val)
    # int(500 * 0.01^(i/99)) summed: CIFAR-100-LT IF 100
    assert len(train) + len(val) == (10847 if imbalance == 100 else 50000)
    assert len(sc.tasks) == 11 and sc.tasks[0].num_classes == 50
    assert len(sc.tasks[0].train_indices) == first
    if order != "natural":
        assert sc.order[:10].tolist() == SHUFFLED_HEAD


# JAYATEJAK/GVAlign at 545c945 (a Long-Tailed-CIL fork): 50 + 5 x 10 classes, seed 0 (`facil_adapter.py --repo
# <GVAlign> --scenario lt|ltio --first 50 --tasks 6 --seed 0 --scenario-only ...`); FACIL's split is per task, so
# the held-out images differ from the 11-task scenario's
GVALIGN = {"seed:1993": ("9b8aa766efad67a1a68ee22d76650380b54a8132b9fded8176a6797d0d6e5c6d",
                         "7817122f6c8e825486473f0ed19a967260966cc8a8b2d4fee35980450d7774bc"),
           "natural": ("cf4f4fad31d73fad434c11674c9aa34a809820e9d2e0524b35992cb4d417def6",
                       "2892b3451f6dd26ea07d9284e3c95aee470fefcd1bb344b59c13d99bc394237a")}


@pytest.mark.integration
@pytest.mark.parametrize("order", sorted(GVALIGN))
def test_gvaligns_six_task_scenario_holds_the_reference_images(order):
    archive = SHARED_DATA / "cifar-100-python.tar.gz"
    if not archive.exists():
        pytest.skip(f"{archive} is absent (integration data lives in ../shared/data beside the repository)")
    from ltcil.config import DataConfig
    from ltcil.data.cifar import load_cifar100

    ds = load_cifar100(DataConfig(name="cifar100", root=str(SHARED_DATA), download=False))
    cfg = ScenarioConfig(order=order, initial=50, increment=10, imbalance_factor=100, longtail_images="ldam_drw",
                         val_fraction=0.1, val_rule="facil", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ordered scenario's class-95 note
        sc = build_scenario(cfg, ds.train.labels, ds.test.labels, 100)
    train = np.concatenate([t.train_indices for t in sc.tasks])
    val = np.concatenate([t.val_indices for t in sc.tasks])
    assert (_digest(train), _digest(val)) == GVALIGN[order] and len(sc.tasks) == 6


# kaidic/LDAM-DRW at 2536330: IMBALANCECIFAR100(imb_factor=0.01, rand_number=0) as cifar_train.py builds it
# (`python benchmarks/peers/ldam_adapter.py --repo <checkout> --scenario-only --data ../shared/data --out s.json`)
LDAM_DRW_TRAIN = "ba66b1fd8f540fe3b3f5c92bd717878c5685b8574d6ad6c638aa516c76a2c434"


@pytest.mark.integration
def test_long_tailed_recognition_trains_on_the_ldam_drw_reference_images():
    archive = SHARED_DATA / "cifar-100-python.tar.gz"
    if not archive.exists():
        pytest.skip(f"{archive} is absent (integration data lives in ../shared/data beside the repository)")
    from ltcil.config import DataConfig, load_config
    from ltcil.data.cifar import load_cifar100

    ds = load_cifar100(DataConfig(name="cifar100", root=str(SHARED_DATA), download=False))
    # the LT-recognition recipe, with the parity run's overrides (benchmarks/peers/recipes.py LT_RECOGNITION)
    cfg = load_config("ce_resnet32_cifar100lt_if100", ["scenario.longtail_images=ldam_drw", "scenario.val_per_class=0"])
    sc = build_scenario(cfg.scenario, ds.train.labels, ds.test.labels, 100)
    assert len(sc.tasks) == 1 and sc.tasks[0].num_classes == 100
    train = sc.tasks[0].train_indices
    assert _digest(train) == LDAM_DRW_TRAIN and len(train) == 10847
    counts = np.bincount(ds.train.labels[train], minlength=100)
    assert counts.tolist() == [int(500 * 0.01 ** (i / 99)) for i in range(100)]


def test_ldam_drw_keeps_a_class_the_same_images_whatever_else_the_scenario_holds():
    labels = np.repeat(np.arange(4), 10)
    rs = np.random.RandomState(0)  # LDAM-DRW: numpy.random.seed(0); every class shuffled in id order
    expected = {}
    for c in range(4):
        idx = np.flatnonzero(labels == c)
        rs.shuffle(idx)
        expected[c] = idx
    all_classes = subsample_ldam_drw(labels, {0: 10, 1: 6, 2: 3, 3: 1}, seed=0)
    only_two = subsample_ldam_drw(labels, {1: 6, 3: 1}, seed=0)
    for c, n in {0: 10, 1: 6, 2: 3, 3: 1}.items():
        assert all_classes[c].tolist() == expected[c][:n].tolist()  # the first n of the shuffle, in its order
    assert only_two[1].tolist() == all_classes[1].tolist() and only_two[3].tolist() == all_classes[3].tolist()


def test_facil_validation_takes_the_tasks_first_image_for_a_class_whose_share_rounds_to_zero():
    # class 0: 30 images (3 to validation, drawn), class 1: 5 images (round(0.5) = 0: FACIL pops list position 0,
    # which is class 0's first image), class 2 in another task: 12 images (1 drawn)
    labels = np.array([0] * 30 + [1] * 5 + [2] * 12)
    kept = {0: np.arange(30)[::-1].copy(), 1: np.arange(30, 35), 2: np.arange(35, 47)}
    train, val = facil_validation(labels, [[1, 0], [2]], kept, 0.1, seed=3)
    assert [len(val[c]) for c in range(3)] == [4, 0, 1]
    assert [len(train[c]) for c in range(3)] == [26, 5, 11]
    assert 29 in val[0]  # kept[0][0], the first image of the task's list (class ids ascending)
    again = facil_validation(labels, [[1, 0], [2]], kept, 0.1, seed=3)
    assert all(np.array_equal(val[c], again[1][c]) for c in range(3))

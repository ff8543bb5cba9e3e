import numpy as np
import pytest

from ltcil.config import ScenarioConfig
from ltcil.errors import ConfigError, DataError, LtcilWarning
from ltcil.scenarios import ICARL_CIFAR100_ORDER, build_scenario, class_order, task_sizes
from ltcil.scenarios.longtail import exponential_profile, step_profile


def balanced_labels(num_classes, per_class):
    return np.repeat(np.arange(num_classes), per_class)


def test_icarl_order_matches_legacy_numpy_seed_1993():
    rs_state = np.random.get_state()
    np.random.seed(1993)
    expected = np.random.permutation(100)
    np.random.set_state(rs_state)
    assert class_order("seed:1993", 100).tolist() == expected.tolist() == list(ICARL_CIFAR100_ORDER)


def test_class_order_does_not_touch_global_rng():
    np.random.seed(5)
    before = np.random.get_state()[1].copy()
    class_order("seed:1993", 100)
    assert (np.random.get_state()[1] == before).all()


def test_explicit_order_errors():
    with pytest.raises(ConfigError, match="out of range"):
        class_order([0, 1, 12], 10)
    with pytest.raises(ConfigError, match="more than once"):
        class_order([0, 1, 1], 10)


@pytest.mark.parametrize(
    "initial,increment,expected",
    [(0, 10, [10] * 10), (50, 10, [50] + [10] * 5), (0, 20, [20] * 5), (0, [30, 30, 40], [30, 30, 40]),
     (10, [45, 45], [10, 45, 45]), (0, 0, [100])],
)
def test_task_sizes(initial, increment, expected):
    assert task_sizes(100, initial, increment) == expected


@pytest.mark.parametrize("initial,increment,match", [(0, 30, "do not split"), (120, 10, "only 100"),
                                                     (0, [50, 40], "sum to 90"), (20, 0, "single task")])
def test_impossible_task_sizes_fail_clearly(initial, increment, match):
    with pytest.raises(ConfigError, match=match):
        task_sizes(100, initial, increment)


def test_cifar100_lt_count_is_10847():
    counts = exponential_profile(500, 100, 100)
    assert counts.sum() == 10847
    assert counts[0] == 500 and counts[-1] == 5
    assert (np.diff(counts) <= 0).all()


def test_step_profile():
    counts = step_profile(500, 10, 10)
    assert counts.tolist() == [500] * 5 + [50] * 5


def test_lt_scenario_counts_and_remapping():
    labels = balanced_labels(100, 500)
    test = balanced_labels(100, 100)
    cfg = ScenarioConfig(order="seed:1993", increment=10, imbalance_factor=100, longtail_by="class_id")
    sc = build_scenario(cfg, labels, test, 100)
    assert sc.train_counts.sum() == 10847
    # by class id: original class 0 keeps 500 images, class 99 keeps 5, wherever they arrive
    pos0 = int(np.flatnonzero(sc.order == 0)[0])
    pos99 = int(np.flatnonzero(sc.order == 99)[0])
    assert sc.train_counts[pos0] == 500 and sc.train_counts[pos99] == 5
    # labels are remapped to arrival order, original ids kept
    first = sc.tasks[0]
    assert first.original_classes == list(ICARL_CIFAR100_ORDER[:10])
    mapped = sc.label_maps["train"][first.train_indices]
    assert set(mapped.tolist()) == set(range(10))
    assert (labels[first.train_indices] == sc.order[mapped]).all()
    assert sc.is_imbalanced


def test_lt_by_arrival_gives_head_first_tasks():
    labels = balanced_labels(20, 100)
    cfg = ScenarioConfig(order="seed:3", increment=5, imbalance_factor=10, longtail_by="arrival")
    sc = build_scenario(cfg, labels, balanced_labels(20, 10), 20)
    assert (np.diff(sc.train_counts) <= 0).all()  # arrival position 0 is the head
    assert sc.train_counts[0] == 100 and sc.train_counts[-1] == 10


def test_every_class_appears_once_and_val_is_disjoint():
    labels = balanced_labels(10, 30)
    cfg = ScenarioConfig(order="seed:1", initial=4, increment=3, val_fraction=0.2, seed=7)
    sc = build_scenario(cfg, labels, balanced_labels(10, 5), 10)
    classes = np.concatenate([t.classes for t in sc.tasks])
    assert sorted(classes.tolist()) == list(range(10))
    train = np.concatenate([t.train_indices for t in sc.tasks])
    val = np.concatenate([t.val_indices for t in sc.tasks])
    assert len(np.intersect1d(train, val)) == 0
    assert len(train) + len(val) == len(labels)
    assert (sc.train_counts == 24).all()  # 30 - 6 held out per class
    assert sc.val_pool == "train"


def test_scenario_is_deterministic_for_a_seed_and_varies_across_seeds():
    labels = balanced_labels(10, 50)
    a = build_scenario(ScenarioConfig(increment=5, imbalance_factor=10, seed=1), labels, labels, 10)
    b = build_scenario(ScenarioConfig(increment=5, imbalance_factor=10, seed=1), labels, labels, 10)
    c = build_scenario(ScenarioConfig(increment=5, imbalance_factor=10, seed=2), labels, labels, 10)
    assert all((x.train_indices == y.train_indices).all() for x, y in zip(a.tasks, b.tasks))
    assert any(not np.array_equal(x.train_indices, y.train_indices) for x, y in zip(a.tasks, c.tasks))


def test_dataset_val_split_is_used_when_present():
    labels = balanced_labels(4, 10)
    val = balanced_labels(4, 3)
    sc = build_scenario(ScenarioConfig(increment=2), labels, labels, 4, val_labels=val)
    assert sc.val_pool == "val"
    assert sorted(np.concatenate([t.val_indices for t in sc.tasks]).tolist()) == list(range(12))


def test_subset_order_leaves_other_classes_out():
    labels = balanced_labels(10, 5)
    sc = build_scenario(ScenarioConfig(order=[3, 1], increment=1), labels, labels, 10)
    assert [t.original_classes for t in sc.tasks] == [[3], [1]]
    assert (sc.label_maps["train"][labels == 0] == -1).all()
    assert set(sc.tasks[1].test_indices.tolist()) == set(np.flatnonzero(labels == 1).tolist())


def test_a_class_without_test_images_is_warned_and_an_empty_test_split_refused():
    train = balanced_labels(4, 6)
    test = np.repeat([0, 1, 2], 3)  # class 3 has no test image
    with pytest.warns(LtcilWarning, match=r"1 class\(es\) have no test image \(class 3\)"):
        build_scenario(ScenarioConfig(increment=2), train, test, 4)
    with pytest.raises(DataError, match="the test split holds no image of the scenario's classes"):
        build_scenario(ScenarioConfig(increment=2), train, np.zeros(0, dtype=np.int64), 4)

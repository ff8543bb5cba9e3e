import numpy as np
import pytest

from ltcil.evaluation import metrics


def test_accuracy_matrix_metrics_against_hand_computation():
    # three tasks; A[t][j] = accuracy on task j after task t
    matrix = [[90.0], [60.0, 80.0], [50.0, 70.0, 85.0]]
    # forgetting: task 0: max(90, 60) - 50 = 40; task 1: 80 - 70 = 10 -> mean 25
    assert metrics.forgetting(matrix) == pytest.approx(25.0)
    assert metrics.forgetting_per_step(matrix) == [None, pytest.approx(30.0), pytest.approx(25.0)]
    assert metrics.average_incremental_accuracy([90.0, 70.0, 68.0]) == pytest.approx(76.0)
    assert metrics.forgetting([[50.0]]) is None


def test_task_row_and_per_class():
    target = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 0, 2])
    task_of_class = np.array([0, 0, 1])
    assert metrics.task_accuracies(pred, target, task_of_class, 3) == [75.0, 50.0, None]
    per_class = metrics.per_class_accuracy(pred, target, 4)
    assert per_class[:3].tolist() == [50.0, 100.0, 50.0] and np.isnan(per_class[3])


def test_shot_groups_thresholds():
    counts = np.array([500, 101, 100, 20, 19, 5])
    g = metrics.shot_groups(counts, many=100, few=20)
    assert g["many"].tolist() == [True, True, False, False, False, False]
    assert g["medium"].tolist() == [False, False, True, True, False, False]
    assert g["few"].tolist() == [False, False, False, False, True, True]


def test_topk():
    logits = np.array([[0.1, 0.5, 0.4], [0.9, 0.04, 0.06]])
    assert metrics.topk_correct(logits, np.array([2, 2]), 2).tolist() == [True, True]
    assert metrics.topk_correct(logits, np.array([2, 2]), 1).tolist() == [False, False]
    assert metrics.topk_correct(logits, np.array([0, 1]), 5).tolist() == [True, True]  # k > classes


def test_group_accuracy_empty_group_is_none():
    assert metrics.group_accuracy(np.array([0]), np.array([0]), np.array([False, True])) is None


def test_relative_shot_groups_split_the_training_counts_in_thirds():
    from ltcil.evaluation.metrics import shot_groups, shot_thresholds

    counts = np.array([900, 800, 700, 600, 500, 400, 300, 250, 200])  # every class "many" by the absolute rule
    assert shot_groups(counts)["many"].all()
    many, few = shot_thresholds(counts, rule="quantile")
    groups = shot_groups(counts, rule="quantile")
    assert (few, many) == (np.quantile(counts, 1 / 3), np.quantile(counts, 2 / 3))
    assert groups["many"].sum() == 3 and groups["few"].sum() == 3 and groups["medium"].sum() == 3


def test_results_json_has_no_float_noise_but_keeps_the_config_exact(tmp_path):
    from helpers import run_tiny

    results = run_tiny(tmp_path, "scenario.max_tasks=1", "train.lr=1e-7", "scenario.imbalance_factor=3")
    text = (tmp_path / "results.json").read_text()
    assert "000000000" not in text.split('"config"')[0]
    assert results["config"]["train"]["lr"] == 1e-7
    assert results["shot_groups"]["rule"] == "absolute"

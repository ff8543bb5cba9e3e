import numpy as np
import pytest
import torch

from ltcil.errors import ConfigError
from ltcil.memory import ExemplarMemory, class_budgets, closest_to_mean, herding


def brute_force_herding(features: np.ndarray, m: int) -> list:
    """Textbook iCaRL herding, one candidate at a time, in float64."""
    phi = features / np.linalg.norm(features, axis=1, keepdims=True)
    mu = phi.mean(0)
    chosen = []
    for _ in range(m):
        best, best_dist = None, np.inf
        for i in range(len(phi)):
            if i in chosen:
                continue
            dist = np.linalg.norm(mu - phi[chosen + [i]].mean(0))
            if dist < best_dist:
                best, best_dist = i, dist
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("seed", range(5))
def test_herding_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(30, 6))
    ours = herding(torch.tensor(feats, dtype=torch.float64), 12)
    assert ours.tolist() == brute_force_herding(feats, 12)


def test_herding_always_returns_the_budget_of_distinct_samples():
    feats = torch.randn(50, 8)
    for m in (1, 7, 20, 50, 80):
        sel = herding(feats, m)
        assert len(sel) == min(m, 50)
        assert len(set(sel.tolist())) == len(sel)


def test_herding_first_pick_is_closest_to_mean():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert herding(feats, 1).tolist() == [2]
    assert closest_to_mean(feats, 1).tolist() == [2]


def test_budgets_fixed_total_and_per_class():
    assert class_budgets({0: 500, 1: 500}, 600, 0) == {0: 300, 1: 300}
    assert class_budgets({0: 500, 1: 500}, 2000, 0) == {0: 500, 1: 500}  # cannot hold more than exists
    assert class_budgets({c: 500 for c in range(30)}, 2000, 0) == {c: 66 for c in range(30)}
    assert class_budgets({0: 500, 1: 3}, 0, 20) == {0: 20, 1: 3}


def test_budget_redistributes_tail_shortfall():
    budgets = class_budgets({0: 500, 1: 5, 2: 300}, 300, 0)
    assert budgets[1] == 5  # keeps all it has
    assert budgets[0] == budgets[2] == 147  # (300 - 5) // 2 each
    for c, n in {0: 500, 1: 5, 2: 300}.items():
        assert budgets[c] >= min(n, 300 // 3)


def test_memory_reduction_keeps_selection_order_and_indices_only():
    mem = ExemplarMemory(total=40, selection="herding")
    rng = np.random.default_rng(0)
    feats = torch.randn(200, 4)
    fn = lambda idx: feats[torch.as_tensor(idx)]
    mem.update({0: np.arange(0, 100), 1: np.arange(100, 200)}, fn, rng)
    first = {c: v.copy() for c, v in mem.exemplars.items()}
    assert all(len(v) == 20 for v in first.values())
    mem.update({2: np.array([50])}, fn, rng)  # a class with a single image
    assert len(mem.exemplars[2]) == 1
    assert (mem.exemplars[0] == first[0][: len(mem.exemplars[0])]).all()
    assert mem.indices().dtype == np.int64 and len(mem) <= 40


def test_impossible_budget_is_reported():
    with pytest.raises(ConfigError, match="memory.size: 5 exemplars"):
        ExemplarMemory(total=5).check_budget(10)


def test_memory_state_round_trip():
    mem = ExemplarMemory(total=10, selection="random")
    mem.update({3: np.arange(20)}, lambda idx: None, np.random.default_rng(1))
    other = ExemplarMemory(total=10)
    other.load_state_dict(mem.state_dict())
    assert (other.exemplars[3] == mem.exemplars[3]).all()


def test_selection_embeds_new_classes_in_one_pass_and_picks_as_class_by_class():
    rng_feats = np.random.default_rng(0)
    bank = torch.from_numpy(rng_feats.normal(size=(300, 8)).astype(np.float32))  # "features" of image i
    per_class = {c: np.arange(c * 60, (c + 1) * 60) for c in range(5)}
    calls = []

    def features(idx):
        calls.append(len(idx))
        return bank[torch.as_tensor(idx)]

    batched = ExemplarMemory(0, 7, "herding")
    batched.update(per_class, features, np.random.default_rng(1))
    assert calls == [300]  # one pass for all five classes
    for c, idx in per_class.items():  # the same exemplars as herding each class on its own features
        order = herding(bank[torch.as_tensor(idx)], 7)
        assert np.array_equal(batched.exemplars[c], idx[order])


def test_class_means_in_one_pass_equal_per_class_means(tmp_path):
    from helpers import tiny_config

    from ltcil.engine.context import TaskContext
    from ltcil.engine.runner import Experiment

    exp = Experiment(tiny_config(), tmp_path)
    model = exp.method.model.eval()
    ctx = TaskContext(exp.cfg, exp.scenario, exp.data, None, exp.device, None, None, 0)
    labels = exp.data.labels["train"].cpu().numpy()
    per_class = {c: np.flatnonzero(labels == c)[: 3 + c] for c in range(4)}
    per_class[9] = np.zeros(0, dtype=np.int64)  # an empty class is left out
    means = ctx.class_means(model, per_class, normalize=True, flip=True)
    assert sorted(means) == [0, 1, 2, 3]
    for c in range(4):
        plain = torch.nn.functional.normalize(ctx.features(model, per_class[c])[0], dim=1)
        mirrored = torch.nn.functional.normalize(ctx.features(model, per_class[c], flip=True)[0], dim=1)
        torch.testing.assert_close(means[c], torch.cat([plain, mirrored]).mean(0), rtol=1e-4, atol=1e-5)

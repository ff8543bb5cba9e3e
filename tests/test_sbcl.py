"""SBCL: the bi-granularity loss against a slow reference, subclass clustering, the two stages end to end."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import run_tiny

from ltcil.clustering import kmeans_cosine, split_into_subclasses, subclasses_per_class
from ltcil.data.augment import rotate_hue
from ltcil.losses.contrastive import class_temperatures, sbcl_loss, supcon_loss
from ltcil.scenarios.longtail import exponential_profile

SBCL_TINY = ["method.name=sbcl", "scenario.increment=0", "scenario.imbalance_factor=4", "memory.size=0",
             "train.epochs=3", "method.warmup_epochs=1", "method.recluster_every=1", "method.delta=4",
             "method.linear_epochs=4", "scenario.val_per_class=2"]


def reference_sbcl(z, labels, subs, tau2, t1, base, beta):
    """Eq. 4-6 written out anchor by anchor."""
    n, half = len(z), len(z) // 2
    total = 0.0
    for i in range(n):
        other = (i + half) % n
        others = [a for a in range(n) if a != i]
        sub_pos = [p for p in others if subs[p] == subs[i]]
        denom = math.log(sum(math.exp(float(z[i] @ z[a]) / t1) for a in others))
        term1 = sum(float(z[i] @ z[p]) / t1 - denom for p in sub_pos) / len(sub_pos)
        cls_pos = [p for p in others if (labels[p] == labels[i] and subs[p] != subs[i]) or p == other]
        contrast = [a for a in others if subs[a] != subs[i] or a == other]
        t2 = float(tau2[i])
        denom2 = math.log(sum(math.exp(float(z[i] @ z[a]) / t2) for a in contrast))
        term2 = sum(float(z[i] @ z[p]) / t2 - denom2 for p in cls_pos) / len(cls_pos)
        total += -(t1 / base) * term1 - beta * term2
    return total / n


def test_sbcl_loss_matches_slow_reference():
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(12, 5, generator=g, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 0, 0, 0, 1, 2] * 2)
    subs = torch.tensor([0, 0, 1, 1, 2, 3] * 2)
    tau2 = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.15, 0.3] * 2, dtype=torch.float64)
    got = sbcl_loss(z, labels, subs, tau2, temperature=0.1, base_temperature=0.07, beta=0.25)
    assert float(got) == pytest.approx(reference_sbcl(z, labels, subs, tau2, 0.1, 0.07, 0.25), rel=1e-9)


def test_sbcl_subclass_term_is_supcon_when_subclasses_are_classes():
    g = torch.Generator().manual_seed(1)
    z = F.normalize(torch.randn(8, 4, generator=g, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 1, 1, 2] * 2)
    tau2 = torch.full((8,), 0.3, dtype=torch.float64)
    assert float(sbcl_loss(z, labels, labels, tau2, 0.1, 0.07, beta=0.0)) == pytest.approx(
        float(supcon_loss(z, labels, 0.1, 0.07)), rel=1e-9)


def test_cifar100_lt_subclass_counts_follow_eq3():
    counts = torch.as_tensor(exponential_profile(500, 100, 100))
    per_class = subclasses_per_class(counts, delta=10)
    assert int(per_class[0]) == 50 and int(per_class.sum()) == 1051 and int((per_class > 1).sum()) == 70


def test_clustering_gives_the_expected_subclasses_per_class_deterministically():
    g = torch.Generator().manual_seed(0)
    labels = torch.repeat_interleave(torch.arange(3), torch.tensor([40, 20, 8]))
    feats = torch.randn(len(labels), 6, generator=g)
    a, per_class = split_into_subclasses(feats, labels, 3, delta=4, gen=torch.Generator().manual_seed(5),
                                         balanced=True)
    b, _ = split_into_subclasses(feats, labels, 3, delta=4, gen=torch.Generator().manual_seed(5), balanced=True)
    assert torch.equal(a, b)
    assert per_class.tolist() == [5, 2, 1]  # M = max(8, 4) = 8
    for c, m in enumerate(per_class.tolist()):
        sizes = torch.bincount(a[labels == c] - a[labels == c].min())
        assert len(sizes) == m and int(sizes.max() - sizes.min()) <= 1  # balanced
    assert len(torch.unique(a)) == 8 and set(torch.unique(a).tolist()) == set(range(8))


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(2)
    centres = F.normalize(torch.randn(4, 16, generator=g), dim=1)
    truth = torch.arange(4).repeat_interleave(25)
    x = centres[truth] + 0.05 * torch.randn(100, 16, generator=g)
    found = kmeans_cosine(x, 4, torch.Generator().manual_seed(0))
    # same partition up to renaming
    pairs = set(zip(truth.tolist(), found.tolist()))
    assert len(pairs) == 4


def test_class_temperatures_exceed_tau1():
    g = torch.Generator().manual_seed(3)
    z = F.normalize(torch.randn(60, 8, generator=g), dim=1)
    labels = torch.repeat_interleave(torch.arange(3), torch.tensor([40, 15, 5]))
    tau2 = class_temperatures(z, labels, 3, temperature=0.1)
    assert (tau2 > 0.1).all()


def test_hue_rotation_keeps_grey_and_is_identity_at_zero():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(3, 3, 4, 4, generator=g)
    assert torch.allclose(rotate_hue(x, torch.zeros(3)), x, atol=1e-5)
    assert torch.allclose(rotate_hue(x, torch.full((3,), 2 * math.pi)), x, atol=1e-4)
    grey = x[:, :1].expand(-1, 3, -1, -1)
    assert torch.allclose(rotate_hue(grey, torch.full((3,), 1.0)), grey, atol=1e-5)


def test_sbcl_runs_both_stages_and_selects_on_validation(tmp_path):
    results = run_tiny(tmp_path, *SBCL_TINY)
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    clusterings = [e for e in events if e["event"] == "subclasses"]
    assert [e["epoch"] for e in clusterings] == [2, 3]  # after the 1 warm-up epoch, then every epoch
    assert clusterings[0]["subclasses"] >= 6
    linear = [e for e in events if e["event"] == "epoch" and e["stage"] == "linear classifier"]
    assert len(linear) == 4
    assert results["classifier_selection"]["by"] == "validation"
    assert 1 <= results["classifier_selection"]["epoch"] <= 4
    assert "shot_accuracy" in results and np.isfinite(results["accuracy"][0])

"""Seed 1's prototype method: re-measure layer, Sample Mix, push/pull/centre and spread losses by hand;
the random long-tail profile; the method end to end with each component switched off."""

import numpy as np
import pytest
import torch
from helpers import run_tiny

from ltcil.config import ScenarioConfig
from ltcil.errors import ConfigError
from ltcil.heads.prototype import PrototypeHead, squared_distances
from ltcil.losses.prototype import (
    batch_prototypes,
    centre_loss,
    prototype_spread_loss,
    pull_loss,
    push_loss,
    sample_mix,
)
from ltcil.scenarios.tasks import build_scenario

PROTO_TINY = ["method.name=proto_lt", "memory.size=0", "memory.per_class=3", "memory.selection=closest",
              "train.optimizer=adam", "train.lr=0.001", "method.bias_epochs=2"]


def test_remeasure_layer_trains_only_the_current_stage_columns():
    head = PrototypeHead(4)
    head.add_classes(3)
    head.add_classes(2)  # columns 3, 4 are the current stage
    head.prototypes.copy_(torch.randn(5, 4, generator=torch.Generator().manual_seed(0)))
    feats = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    torch.nn.functional.cross_entropy(head(feats), torch.tensor([0, 1, 2, 3, 4, 0])).backward()
    assert (head.alpha.grad[:3] == 0).all() and (head.beta.grad[:3] == 0).all()
    assert (head.alpha.grad[3:] != 0).all() and (head.beta.grad[3:] != 0).all()
    # logits are -(alpha * d + beta)
    with torch.no_grad():
        head.alpha[3] = 2.0
        head.beta[3] = 0.5
    d = squared_distances(feats, head.prototypes)
    assert torch.allclose(head(feats)[:, 3], -(2.0 * d[:, 3] + 0.5))
    assert torch.allclose(head(feats)[:, :3], -d[:, :3])


def test_sample_mix_pairs_a_memory_slice_with_the_first_new_images():
    x_mem = torch.arange(10, dtype=torch.float).view(10, 1, 1, 1)
    y_mem = torch.arange(10) + 100
    x_new = torch.tensor([1000.0, 2000.0]).view(2, 1, 1, 1)
    y_new = torch.tensor([7, 8])
    mixed, labels_new, labels_mem = sample_mix(x_mem, y_mem, x_new, y_new, r=0.65, fraction=0.1)
    # slice [floor(10 * 0.55), floor(10 * 0.65)) = [5, 6): memory image 5 with both new images
    assert mixed.flatten().tolist() == [(5 + 1000) / 2, (5 + 2000) / 2]
    assert labels_new.tolist() == [7, 8] and labels_mem.tolist() == [105, 105]
    mixed, labels_new, labels_mem = sample_mix(x_mem, y_mem, x_new, y_new, r=0.95, fraction=0.3)
    assert len(mixed) == 3 * 2 and labels_mem.tolist() == [106, 106, 107, 107, 108, 108]


def test_push_pull_centre_by_hand():
    old = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    new = torch.tensor([[0.0, 2.0]])
    # push: distances^2 / T = 4/2 and 8/2 -> 2^-1/2 + 4^-1/2
    assert float(push_loss(new, old, T=2.0)) == pytest.approx(2 ** -0.5 + 0.5)
    current = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    # rows: [1, 5] / 2 and [4, 0] / 2; diagonal softmax shares
    row0 = np.exp(0.5) / (np.exp(0.5) + np.exp(2.5))
    row1 = np.exp(0.0) / (np.exp(2.0) + np.exp(0.0))
    assert float(pull_loss(current, old, T=2.0)) == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # centre: O_mean (1, 0), radius^2 1, gap ||(1, 0) - (0, 2)||^2 = 5 -> 1 / |2 * 1 - 5|
    assert float(centre_loss(old, new, R=2.0)) == pytest.approx(1 / 3)


def test_spread_loss_by_hand():
    protos = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    # r = [1, 1], mean pair distance 4: 1^2 / 4 + (0.5^2 + 0.5^2)
    assert float(prototype_spread_loss(protos)) == pytest.approx(0.25 + 0.5)


def test_batch_prototypes_mask_absent_classes():
    feats = torch.tensor([[1.0], [3.0], [10.0]])
    labels = torch.tensor([2, 2, 4])
    protos, present = batch_prototypes(feats, labels, 2, 5)
    assert present.tolist() == [True, False, True]
    assert protos[0].item() == 2.0 and protos[2].item() == 10.0


def test_random_profile_matches_the_thesis_stage_sizes():
    labels = np.repeat(np.arange(100), 500)
    sizes = [build_scenario(ScenarioConfig(increment=20, imbalance_factor=40, longtail_profile="random", seed=s),
                            labels, labels, 100).train_counts.reshape(5, 20).sum(1) for s in range(40)]
    assert np.mean(sizes) == pytest.approx(500 * (1 - 1 / 40) / np.log(40) * 20, rel=0.04)  # ~2,643; thesis 2,640
    assert min(np.min(s) for s in sizes) > 0


def test_proto_lt_runs_and_each_component_can_be_switched_off(tmp_path):
    full = run_tiny(tmp_path / "full", *PROTO_TINY)
    assert len(full["accuracy"]) == 3 and "re_measure" in full
    for i, off in enumerate(["method.mix=false", "method.distill=false", "method.bias_epochs=0",
                             "method.spread=false"]):
        results = run_tiny(tmp_path / str(i), *PROTO_TINY, off)
        assert len(results["accuracy"]) == 3


def test_proto_lt_needs_a_memory(tmp_path):
    with pytest.raises(ConfigError, match="memory.per_class"):
        run_tiny(tmp_path, "method.name=proto_lt", "memory.size=0")

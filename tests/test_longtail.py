"""Long-tailed recognition: losses against hand computations, samplers, balanced validation, decoupled stage 2."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import run_tiny, tiny_config

from ltcil.config import ScenarioConfig
from ltcil.data.sampling import epoch_order
from ltcil.engine.runner import Experiment
from ltcil.errors import ConfigError
from ltcil.losses.longtail import balanced_softmax_loss, class_balanced_weights, ldam_loss, ldam_margins
from ltcil.methods.decoupled import tau_normalized_logits
from ltcil.scenarios.tasks import build_scenario

LT_TINY = ["scenario.increment=0", "scenario.imbalance_factor=6", "memory.size=0"]


def test_ldam_margins_match_hand_computation():
    margins = ldam_margins(torch.tensor([100.0, 10.0, 1.0]), max_margin=0.5)
    # n^-1/4 = 0.31623, 0.56234, 1; scaled so the largest is 0.5
    assert torch.allclose(margins, torch.tensor([0.5 * 0.316228, 0.5 * 0.562341, 0.5]), atol=1e-5)


def test_ldam_loss_subtracts_the_margin_from_the_true_class_only():
    cosine = torch.tensor([[0.2, 0.5, -0.1], [0.9, 0.1, 0.3]])
    target = torch.tensor([1, 0])
    margins = torch.tensor([0.1, 0.3, 0.5])
    by_hand = torch.tensor([[0.2, 0.5 - 0.3, -0.1], [0.9 - 0.1, 0.1, 0.3]]) * 30
    assert torch.allclose(ldam_loss(cosine, target, margins, scale=30), F.cross_entropy(by_hand, target))


def test_class_balanced_weights_by_effective_number():
    w = class_balanced_weights(torch.tensor([1.0, 2.0]), beta=0.9)
    # effective numbers 1 and (1 - 0.81) / 0.1 = 1.9; weights 1 : 1/1.9, normalised to sum to 2
    assert torch.allclose(w, torch.tensor([2 * 1.9 / 2.9, 2 / 2.9]), atol=1e-6)
    assert torch.allclose(class_balanced_weights(torch.tensor([5.0, 50.0, 500.0]), beta=0.0), torch.ones(3))


def test_balanced_softmax_equals_ce_when_classes_are_balanced():
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    target = torch.arange(8) % 5
    assert torch.allclose(balanced_softmax_loss(logits, target, torch.full((5,), 37.0)),
                          F.cross_entropy(logits, target), atol=1e-6)
    # with a skewed prior the head class's logit is boosted during training, so its loss is lower
    prior = torch.tensor([100.0, 1, 1, 1, 1])
    head_rows = target == 0
    skewed = balanced_softmax_loss(logits[head_rows], target[head_rows], prior)
    assert skewed < F.cross_entropy(logits[head_rows], target[head_rows])


def test_samplers_visit_classes_as_specified():
    labels = np.repeat([0, 1, 2], [900, 90, 10])
    indices = np.arange(1000) + 5000
    gen = torch.Generator().manual_seed(0)
    inst = epoch_order("instance", indices, labels, gen)
    assert sorted(inst.tolist()) == indices.tolist()  # a permutation
    draws = torch.cat([epoch_order("class_balanced", indices, labels, gen) for _ in range(6)]) - 5000
    share = np.bincount(labels[draws.numpy()], minlength=3) / len(draws)
    assert np.allclose(share, 1 / 3, atol=0.03)  # every class equally likely
    draws = torch.cat([epoch_order("sqrt", indices, labels, gen) for _ in range(6)]) - 5000
    share = np.bincount(labels[draws.numpy()], minlength=3) / len(draws)
    expected = np.sqrt([900, 90, 10]) / np.sqrt([900, 90, 10]).sum()
    assert np.allclose(share, expected, atol=0.03)
    a = epoch_order("class_balanced", indices, labels, torch.Generator().manual_seed(3))
    b = epoch_order("class_balanced", indices, labels, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and len(a) == 1000


def test_balanced_validation_leaves_the_long_tail_profile_untouched():
    labels = np.repeat(np.arange(10), 100)
    plain = build_scenario(ScenarioConfig(imbalance_factor=10), labels, labels, 10)
    sc = build_scenario(ScenarioConfig(imbalance_factor=10, val_per_class=8), labels, labels, 10)
    val = sc.tasks[0].val_indices
    assert np.bincount(labels[val], minlength=10).tolist() == [8] * 10
    assert len(np.intersect1d(val, sc.tasks[0].train_indices)) == 0
    # the head class keeps all of its images in the profile, so its validation images are carved from them
    assert sc.train_counts[0] == plain.train_counts[0] - 8
    assert (sc.train_counts[1:] == plain.train_counts[1:]).all()


def test_val_per_class_and_val_fraction_conflict():
    labels = np.repeat(np.arange(4), 10)
    with pytest.raises(ConfigError, match="val_per_class"):
        build_scenario(ScenarioConfig(val_per_class=2, val_fraction=0.1), labels, labels, 4)


def test_tau_normalisation_by_hand():
    feats = torch.tensor([[1.0, 2.0]])
    weight = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert torch.allclose(tau_normalized_logits(feats, weight, 0.0), torch.tensor([[11.0, 2.0]]))
    assert torch.allclose(tau_normalized_logits(feats, weight, 1.0), torch.tensor([[11.0 / 5, 2.0]]))


def test_drw_switches_to_class_balanced_weights_at_its_epoch(tmp_path):
    exp = Experiment(tiny_config("method.name=ldam_drw", "method.drw_epoch=1", "train.epochs=2", *LT_TINY), tmp_path)
    seen = []
    original = exp.method.begin_epoch

    def spy(epoch, epochs, ctx=None):
        original(epoch, epochs, ctx)
        seen.append(None if exp.method.weights is None else exp.method.weights.clone())

    exp.method.begin_epoch = spy
    exp.run()
    assert seen[0] is None
    counts = torch.as_tensor(exp.scenario.train_counts, dtype=torch.float)
    assert torch.allclose(seen[1], class_balanced_weights(counts, 0.9999))
    assert seen[1][-1] > seen[1][0]  # the tail class weighs more


@pytest.mark.parametrize("features", ["augmented", "cached"])
def test_decoupled_stage_two_leaves_the_backbone_and_stage_one_head_untouched(tmp_path, features):
    exp = Experiment(tiny_config("method.name=decoupled", "scenario.val_per_class=3", f"method.stage2_features="
                                 f"{features}", *LT_TINY), tmp_path)
    method = exp.method
    captured = {"images": 0}
    original_end, original_features = method.end_task, method.model.forward_features

    def forward_features(x):
        captured["images"] += len(x) if captured.get("in_stage_two") else 0
        return original_features(x)

    def end_task(task, ctx):
        captured["stage_images"] = len(ctx.train_indices)  # what stage 1 trained on, stage 2's images
        captured["before"] = {k: v.clone() for k, v in method.model.state_dict().items()}
        captured["in_stage_two"] = True
        original_end(task, ctx)
        captured["in_stage_two"] = False

    method.model.forward_features = forward_features
    method.end_task = end_task
    results = exp.run()
    after = method.model.state_dict()
    assert all(torch.equal(captured["before"][k], after[k]) for k in after)  # BN statistics included
    assert all(f"accuracy_{name}" in results for name in ("ce", "crt", "lws", "tau_norm"))
    assert results["tau"] in [round(0.1 * i, 1) for i in range(21)]
    # the backbone embeds the stage-2 images at every step when augmented, once (plus validation) when cached
    o = method.options
    images = captured["stage_images"]
    if features == "augmented":
        assert captured["images"] >= images * (o.epochs + o.lws_epochs) * 0.9
    else:
        assert captured["images"] < images * 3


def test_tau_norm_without_validation_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match="validation split"):
        run_tiny(tmp_path, "method.name=decoupled", "method.classifier=tau_norm")


def test_tau_norm_with_one_fixed_tau_needs_no_validation(tmp_path):
    results = run_tiny(tmp_path, "method.name=decoupled", "method.classifier=tau_norm", "method.taus=[1.0]",
                       "method.stage2_schedule=cosine_skip_first", "method.lws_weight_decay=5e-4", *LT_TINY)
    assert results["tau"] == 1.0 and "accuracy_tau_norm" in results and results["headline_classifier"] == "tau_norm"


def test_bad_stage_two_schedule_is_named():
    with pytest.raises(ConfigError, match="method.stage2_schedule: 'step'"):
        Experiment(tiny_config("method.name=decoupled", "method.stage2_schedule=step"), "/tmp/never-used")


def test_unknown_decoupled_classifier_is_named():
    with pytest.raises(ConfigError, match="method.classifier"):
        Experiment(tiny_config("method.name=decoupled", "method.classifier=crtt"), "/tmp/never-used")


def test_bad_method_options_fail_before_any_data_loads(tmp_path):
    # the data root does not exist: the option error must come first
    for bad in (["method.name=decoupled", "method.classifier=crtt"], ["method.name=ldam_drw", "method.reweight=x"],
                ["method.name=sbcl", "method.classifier=svm"], ["method.name=proto_lt", "memory.size=0"]):
        cfg = tiny_config("data.name=cifar100", f"data.root={tmp_path / 'absent'}", "data.download=false", *bad)
        with pytest.raises(ConfigError, match="method"):
            Experiment(cfg, tmp_path / "run")


@pytest.mark.parametrize("kind", ["balanced_softmax", "class_balanced"])
def test_long_tail_losses_inside_incremental_methods(kind, tmp_path):
    # equal class counts: the long-tail loss is CE; skewed counts: it is not
    exp = Experiment(tiny_config("method.name=bic", f"train.loss={kind}"), tmp_path / "unit")
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    exp.method.train_counts = torch.full((4,), 20.0)
    assert torch.allclose(exp.method.classification_loss(logits, y), F.cross_entropy(logits, y), atol=1e-6)
    exp.method.train_counts = torch.tensor([200.0, 20.0, 5.0, 5.0])
    assert not torch.allclose(exp.method.classification_loss(logits, y), F.cross_entropy(logits, y))
    for method in ("bic", "replay", "lwf"):
        extra = ["method.bias_epochs=2"] if method == "bic" else ["method.loss=kd"] if method == "lwf" else []
        results = run_tiny(tmp_path / method, f"method.name={method}", f"train.loss={kind}",
                           "scenario.imbalance_factor=5", *extra)
        assert len(results["accuracy"]) == 3

"""The GVAlign-style classifier alignment plugin: pseudo-features from class prototypes and one global covariance,
a re-trained copy of the classifier reported beside the method's."""

import shutil

import pytest
import torch
from helpers import run_tiny, tiny_config

from ltcil.engine.runner import Experiment
from ltcil.errors import ConfigError
from ltcil.plugins.gvalign import class_statistics, sample_features


def test_pseudo_features_have_the_class_means_and_the_global_covariance():
    gen = torch.Generator().manual_seed(0)
    means = torch.tensor([[0.0, 0.0, 0.0], [5.0, -1.0, 2.0]])
    a = torch.randn(3, 3, generator=gen)
    cov = a @ a.T + 0.5 * torch.eye(3)
    feats, labels = sample_features(means, cov, 20000, torch.Generator().manual_seed(1))
    assert torch.bincount(labels).tolist() == [20000, 20000]  # equal numbers per class
    for c in range(2):
        f = feats[labels == c]
        assert torch.allclose(f.mean(0), means[c], atol=0.05)
        assert torch.allclose(torch.cov(f.T), cov, atol=0.08 * cov.abs().max())


def test_the_pooled_covariance_is_the_within_class_one():
    gen = torch.Generator().manual_seed(2)
    feats = torch.cat([torch.randn(500, 2, generator=gen) * torch.tensor([1.0, 3.0]) + torch.tensor([10.0, 0.0]),
                       torch.randn(400, 2, generator=gen) * torch.tensor([1.0, 3.0]) - torch.tensor([10.0, 0.0])])
    labels = torch.cat([torch.zeros(500, dtype=torch.long), torch.ones(400, dtype=torch.long)])
    means, cov, present = class_statistics(feats, labels, 3, shrinkage=0.0)
    assert present.tolist() == [True, True, False]
    assert torch.allclose(means[:2], torch.tensor([[10.0, 0.0], [-10.0, 0.0]]), atol=0.35)
    assert torch.allclose(cov, torch.diag(torch.tensor([1.0, 9.0])), atol=0.8)  # not inflated by the mean gap


def test_gvalign_reports_its_classifier_beside_the_methods_and_resumes(tmp_path):
    extra = ["method.name=icarl", "gvalign.enabled=true", "gvalign.epochs=2", "gvalign.samples_per_class=16"]
    full = run_tiny(tmp_path / "full", *extra)
    assert full["headline_classifier"] == "gvalign" and set(full["classifiers"]) == {"nme", "linear", "gvalign"}
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "full", crashed)
    (crashed / "checkpoints" / "task_002.pt").unlink()
    exp = Experiment(tiny_config(*extra), crashed)
    assert exp.restore()
    assert exp.run()["accuracy"] == full["accuracy"]
    with pytest.raises(ConfigError, match="gvalign.enabled: method 'lwf' keeps no exemplars"):
        Experiment(tiny_config("method.name=lwf", "gvalign.enabled=true"), tmp_path / "x")


RELEASED = ["method.name=lucir", "backbone.last_relu=false", "method.imprint=false", "method.mixup_alpha=1.0",
            "gvalign.enabled=true", "gvalign.variant=released", "gvalign.steps=20", "gvalign.lr=0.1",
            "train.milestones=[10]"]


def test_released_variant_aligns_the_methods_head_in_place_with_the_first_tasks_largest_class_covariance(tmp_path):
    # JAYATEJAK/GVAlign's lucir_gvalign_2stage.py: the covariance of the first task's class with the most images
    # (normalised features), kept; the model's own cosine head, every row, re-trained on one draw per class a step
    from ltcil.plugins.gvalign import CLASSIFIER

    exp = Experiment(tiny_config(*RELEASED, "data.images_per_class=24", "scenario.longtail_profile=exp",
                                 "scenario.imbalance_factor=4"), tmp_path / "run")
    plugin = next(p for p in exp.plugins if p.name == CLASSIFIER)
    seen = []
    align = plugin.align_in_place

    def recorded(method, ctx):
        head = method.model.head
        before = head.weight.detach().clone()
        feats, labels = ctx.features(method.model, ctx.train_indices)
        align(method, ctx)
        seen.append({"before": before, "after": head.weight.detach().clone(), "cov": plugin.covariance.clone(),
                     "feats": torch.nn.functional.normalize(feats.float(), dim=1), "labels": labels})

    plugin.align_in_place = recorded
    results = exp.run()
    first = seen[0]
    largest = int(torch.argmax(torch.bincount(first["labels"])))
    assert torch.allclose(first["cov"], torch.cov(first["feats"][first["labels"] == largest].T), atol=1e-6)
    assert all(torch.equal(s["cov"], first["cov"]) for s in seen[1:])  # fixed after the first task
    old_rows = exp.scenario.tasks[0].num_classes
    assert not torch.equal(seen[1]["after"][:old_rows], seen[1]["before"][:old_rows])  # old rows re-learn too
    assert plugin.head is None and results["headline_classifier"] == CLASSIFIER
    assert results["classifiers"][CLASSIFIER]["accuracy"] == results["classifiers"]["linear"]["accuracy"]


def test_released_variant_resumes_bit_identically(tmp_path):
    full = run_tiny(tmp_path / "full", *RELEASED)
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "full", crashed)
    (crashed / "checkpoints" / "task_002.pt").unlink()
    exp = Experiment(tiny_config(*RELEASED), crashed)
    assert exp.restore()
    assert exp.run()["accuracy"] == full["accuracy"]

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

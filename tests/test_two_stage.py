"""The two-stage LT-CIL recipe (Liu et al., ECCV 2022): class-balanced fine-tuning of the new classifier rows
with learned per-class weight scales on a frozen backbone, for any method with a linear or cosine head."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import run_tiny, tiny_config

from ltcil.config import load_config
from ltcil.engine.context import TaskContext
from ltcil.engine.runner import Experiment
from ltcil.errors import ConfigError
from ltcil.methods.base import IncrementalNet
from ltcil.plugins.two_stage import TwoStage
from ltcil.reporting.events import EventLog


class FlatBackbone(nn.Module):
    """Features are the inputs themselves, through one trainable layer the stage must leave alone."""

    def __init__(self, dim):
        super().__init__()
        self.num_features = dim
        self.proj = nn.Linear(dim, dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(dim))
            self.proj.bias.zero_()

    def forward_features(self, x):
        return self.proj(x)


class CachedContext(TaskContext):
    """A task context whose 'images' are the feature vectors themselves."""

    def features(self, model, indices, split="train", batch_size=None, embed=None):
        with torch.no_grad():
            return (embed or model.forward_features)(self.x[indices]), self.y[indices]


def recall(model, scales, x, y, c):
    with torch.no_grad():
        logits = model.head(model.forward_features(x)) * scales
    return float((logits[y == c].argmax(1) == c).float().mean())


def test_stage_two_lifts_the_tail_class_and_touches_only_new_rows_and_scales():
    gen = torch.Generator().manual_seed(0)
    counts = [200, 200, 200, 4]  # task 1: classes 0-1; task 2: class 2 (head) and class 3 (tail)
    centres = torch.eye(4) * 3
    x = torch.cat([centres[c] + torch.randn(n, 4, generator=gen) for c, n in enumerate(counts)])
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    model = IncrementalNet(FlatBackbone(4))
    model.head.add_classes(4)
    with torch.no_grad():  # a stage-1 head biased towards frequent classes, as CE on this data leaves it
        model.head.weight.copy_(centres)
        model.head.bias.copy_(torch.tensor([0.0, 0.0, 4.0, -12.0]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert recall(model, torch.ones(4), x, y, 3) == 0.0

    cfg = load_config(None, ["two_stage.enabled=true", "two_stage.epochs=20", "two_stage.lr=0.1",
                             "train.batch_size=32", "train.progress=false"])
    scenario = SimpleNamespace(tasks=[SimpleNamespace(num_classes=2), SimpleNamespace(num_classes=2)])
    ctx = CachedContext(cfg, scenario, None, None, torch.device("cpu"),
                        (torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)), EventLog(None), 1)
    ctx.x, ctx.y = x, y
    method = SimpleNamespace(model=model, memory=SimpleNamespace(enabled=True))
    stage = TwoStage(cfg, method)
    seen_old_rows = []  # what every forward of the stage saw in the old classes' rows
    model.head.register_forward_pre_hook(lambda head, args: seen_old_rows.append(head.weight[:2].detach().clone()))
    stage.fit(method, np.arange(len(y)), ctx)
    assert len(seen_old_rows) > 20 and all(torch.equal(w, before["head.weight"][:2]) for w in seen_old_rows)

    after = model.state_dict()
    for key in ("backbone.proj.weight", "backbone.proj.bias"):  # frozen backbone
        assert torch.equal(after[key], before[key]), key
    assert torch.equal(after["head.weight"][:2], before["head.weight"][:2])  # old rows exactly as they were
    assert torch.equal(after["head.bias"][:2], before["head.bias"][:2])
    assert not torch.equal(after["head.bias"][2:], before["head.bias"][2:])  # the task's rows fine-tuned
    assert stage.scales.shape == (4,) and not torch.allclose(stage.scales, torch.ones(4))
    assert recall(model, stage.scales, x, y, 3) > 0.6  # class-balanced batches: the tail class is found
    torch.testing.assert_close(stage.logits(model, x[:5]), model.head(model.forward_features(x[:5])) * stage.scales)


def test_two_stage_is_the_headline_beside_the_methods_own_classifiers_and_resumes(tmp_path):
    extra = ["method.name=icarl", "two_stage.enabled=true", "two_stage.epochs=2"]
    full = run_tiny(tmp_path / "full", *extra)
    assert full["headline_classifier"] == "two_stage" and len(full["accuracy"]) == 3
    assert len(full["accuracy_nme"]) == 3 and len(full["accuracy_two_stage"]) == 3
    events = [json.loads(line) for line in (tmp_path / "full" / "events.jsonl").read_text().splitlines()]
    fits = [e for e in events if e["event"] == "two_stage"]
    assert [e["task"] for e in fits] == [0, 1, 2] and len(fits[-1]["scales"]) == 6
    assert any(e["event"] == "epoch" and e["stage"] == "two_stage" for e in events)

    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "full", crashed)
    (crashed / "checkpoints" / "task_002.pt").unlink()
    exp = Experiment(tiny_config(*extra), crashed)
    assert exp.restore()
    assert exp.run()["accuracy"] == full["accuracy"]


def test_two_stage_on_podnets_lsc_keeps_every_proxy_of_the_old_classes(tmp_path):
    # Long-Tailed-CIL's podnet_2stage.py: the task's proxies (K rows a class) and the shared scale fine-tuned,
    # the old classes' proxies as they were
    from ltcil.plugins.two_stage import CLASSIFIER

    cfg = tiny_config("method.name=podnet", "backbone.name=resnet20", "method.proxies=3", "method.finetune_epochs=0",
                      "method.imprint=false", "method.nca_form=ce", "backbone.block_relu=false",
                      "two_stage.enabled=true", "two_stage.epochs=2", "scenario.max_tasks=2")
    exp = Experiment(cfg, tmp_path / "run")
    stage = next(p for p in exp.plugins if p.name == CLASSIFIER)
    fit = stage.fit
    seen = {}

    def recorded_fit(method, indices, ctx):
        seen.setdefault("before", []).append(method.model.head.weight.detach().clone())
        fit(method, indices, ctx)
        seen.setdefault("after", []).append(method.model.head.weight.detach().clone())

    stage.fit = recorded_fit
    results = exp.run()
    assert results["headline_classifier"] == CLASSIFIER
    before, after = seen["before"][1], seen["after"][1]
    old_rows = exp.scenario.tasks[0].num_classes * 3
    assert before.shape[0] == exp.method.model.head.num_classes * 3
    assert torch.equal(after[:old_rows], before[:old_rows])  # every proxy of every old class
    assert not torch.equal(after[old_rows:], before[old_rows:])
    assert stage.scales.shape == (exp.method.model.head.num_classes,)


def test_two_stage_refuses_a_method_without_a_linear_head_or_without_memory(tmp_path):
    with pytest.raises(ConfigError, match="proto_lt.*PrototypeHead"):
        Experiment(tiny_config("method.name=proto_lt", "two_stage.enabled=true"), tmp_path)
    with pytest.raises(ConfigError, match="'lwf' keeps no exemplars"):
        Experiment(tiny_config("method.name=lwf", "two_stage.enabled=true"), tmp_path)
    with pytest.raises(ConfigError, match="two_stage.head"):
        tiny_config("two_stage.head=old")


def test_two_stage_on_augmented_images_runs_the_frozen_backbone_at_every_step(tmp_path):
    # two_stage.features=augmented: the authors' loader (augmented images through the frozen backbone), the
    # backbone left as it was, BatchNorm statistics included
    from ltcil.plugins.two_stage import CLASSIFIER

    cfg = tiny_config("method.name=icarl", "two_stage.enabled=true", "two_stage.epochs=2",
                      "two_stage.features=augmented", "scenario.max_tasks=2")
    exp = Experiment(cfg, tmp_path / "run")
    stage = next(p for p in exp.plugins if p.name == CLASSIFIER)
    model, fit = exp.method.model, stage.fit
    seen = {"images": 0, "on": False, "stage_images": 0}
    forward_features = model.forward_features

    def counted(x):
        seen["images"] += len(x) if seen["on"] else 0
        return forward_features(x)

    def recorded_fit(method, indices, ctx):
        before = {k: v.clone() for k, v in method.model.backbone.state_dict().items()}
        seen["on"], seen["stage_images"] = True, seen["stage_images"] + len(indices)
        fit(method, indices, ctx)
        seen["on"] = False
        after = method.model.backbone.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in after)

    model.forward_features = counted
    stage.fit = recorded_fit
    results = exp.run()
    assert results["headline_classifier"] == CLASSIFIER and stage.scales is not None
    assert seen["images"] >= 2 * 0.9 * seen["stage_images"]  # every epoch embeds the images again (cached: once)

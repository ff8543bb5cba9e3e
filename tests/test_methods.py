"""Every registered method survives 3 tasks x 1 epoch and a resume between tasks; defining behaviours."""

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import METHOD_OVERRIDES, run_tiny, tiny_config

from ltcil import registry
from ltcil.engine.runner import Experiment
from ltcil.heads.bias import TaskBiasCorrection
from ltcil.losses.distillation import kd_loss


@pytest.mark.parametrize("name", registry.available("method"))
def test_method_runs_three_tasks_and_writes_results(name, tmp_path):
    results = run_tiny(tmp_path, f"method.name={name}", *METHOD_OVERRIDES.get(name, []))
    assert len(results["accuracy"]) == 3
    assert all(0 <= a <= 100 for a in results["accuracy"])
    assert len(results["accuracy_matrix"][2]) == 3
    assert (tmp_path / "results.json").exists() and (tmp_path / "config.yaml").exists()
    assert len(list((tmp_path / "checkpoints").glob("task_*.pt"))) == 3


@pytest.mark.parametrize("name", registry.available("method"))
def test_resume_between_tasks_gives_identical_results(name, tmp_path):
    extra = [f"method.name={name}", *METHOD_OVERRIDES.get(name, [])]
    full = run_tiny(tmp_path / "full", *extra)
    # Simulate a crash during task 3: only the first two checkpoints survive.
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "full", crashed)
    (crashed / "checkpoints" / "task_002.pt").unlink()
    (crashed / "results.json").unlink()
    exp = Experiment(tiny_config(*extra), crashed)
    assert exp.restore()
    assert exp.next_task == 2
    resumed = exp.run()
    for key in ("accuracy", "accuracy_matrix", "average_incremental_accuracy", "forgetting"):
        assert resumed[key] == full[key], key


def test_checkpoints_load_with_weights_only(tmp_path):
    run_tiny(tmp_path, "method.name=icarl")
    state = torch.load(tmp_path / "checkpoints" / "task_002.pt", weights_only=True)
    assert state["task"] == 2 and "memory" in state["method"]


def test_bic_correction_changes_new_class_logits_only():
    bias = TaskBiasCorrection()
    bias.add_task(4)  # task 0: classes 0-3
    bias.add_task(2)  # task 1: classes 4-5
    with torch.no_grad():
        bias.alpha[1] = 0.5
        bias.beta[1] = -1.0
    logits = torch.randn(3, 6)
    out = bias(logits)
    assert torch.equal(out[:, :4], logits[:, :4])
    assert torch.allclose(out[:, 4:], logits[:, 4:] * 0.5 - 1.0)


def test_bic_results_hold_before_and_after_correction(tmp_path):
    results = run_tiny(tmp_path, "method.name=bic", "method.bias_epochs=3")
    assert len(results["bias_correction"]) == 3
    assert results["bias_correction"][0] == {"scale": 1.0, "shift": 0.0}
    assert len(results["accuracy_before_correction"]) == 3
    assert results["accuracy_before_correction"][0] == results["accuracy"][0]  # task 0 is never corrected
    events = [json.loads(l) for l in (tmp_path / "events.jsonl").read_text().splitlines()]
    fitted = [e for e in events if e["event"] == "bias_correction"]
    assert [e["task"] for e in fitted] == [1, 2]
    assert all(e["scale"] != 1.0 or e["shift"] != 0.0 for e in fitted)


def test_bic_validation_split_is_never_trained_on(tmp_path):
    cfg = tiny_config("method.name=bic", "method.bias_epochs=1")
    exp = Experiment(cfg, tmp_path)
    seen = []
    original = exp.method.train_indices

    def spy(task, ctx):
        idx = original(task, ctx)
        seen.append((task.index, set(idx.tolist()), {c: set(v.tolist()) for c, v in exp.method.held_out.items()}))
        return idx

    exp.method.train_indices = spy
    exp.run()
    for _task_index, trained, held in seen[1:]:
        assert held and all(not (trained & v) for v in held.values())


def test_kd_is_zero_when_student_equals_teacher():
    logits = torch.randn(5, 4)
    assert kd_loss(logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(logits, torch.randn(5, 4)).item() > 0


def test_lwf_kd_variant_distillation_term_zero_on_identical_model(tmp_path):
    exp = Experiment(tiny_config("method.name=lwf", "method.loss=kd"), tmp_path)
    exp.run()
    method = exp.method
    method.teacher = method.frozen_copy()
    method.old_classes = method.model.num_classes
    x = torch.randn(4, 3, 8, 8)
    method.model.eval()
    losses = method.training_step(x, torch.zeros(4, dtype=torch.long))
    assert losses["kd"].item() == pytest.approx(0.0, abs=1e-6)


def test_icarl_nme_matches_hand_computation(tmp_path):
    exp = Experiment(tiny_config("method.name=icarl"), tmp_path)
    exp.run()
    method = exp.method
    means = torch.nn.functional.normalize(torch.randn(6, method.model.backbone.num_features), dim=1)
    method.class_means = means
    x = torch.randn(5, 3, 8, 8)
    method.model.eval()
    with torch.no_grad():
        feats = method.model.forward_features(x)
        expected = []
        for f in feats:
            f = f / f.norm()
            expected.append(int(np.argmin([float(((f - m) ** 2).sum()) for m in means])))
        got = method.predict(x)["nme"].argmax(1).tolist()
    assert got == expected


def test_icarl_reports_nme_and_linear(tmp_path):
    results = run_tiny(tmp_path, "method.name=icarl")
    assert results["headline_classifier"] == "nme"
    assert results["accuracy"] == results["accuracy_nme"]
    assert len(results["accuracy_linear"]) == 3


def test_icarl_memory_respects_budget(tmp_path):
    exp = Experiment(tiny_config("method.name=icarl", "memory.size=12"), tmp_path)
    exp.run()
    sizes = [len(v) for v in exp.method.memory.exemplars.values()]
    assert sizes == [2] * 6  # 12 exemplars over 6 classes
    labels = exp.data.labels["train"].numpy()
    for c, idx in exp.method.memory.exemplars.items():
        assert (labels[idx] == c).all()


def test_joint_trains_on_all_seen_data(tmp_path):
    cfg = tiny_config("method.name=joint")
    exp = Experiment(cfg, tmp_path)
    exp.run()
    assert exp.timing[2]["train_images"] == sum(len(t.train_indices) for t in exp.scenario.tasks)


def test_bic_applies_only_the_newest_tasks_pair():
    # Eq. 4: old classes (all earlier tasks) are left as they are; earlier pairs live on through distillation.
    bias = TaskBiasCorrection()
    for size in (2, 2, 3):
        bias.add_task(size)
    with torch.no_grad():
        bias.alpha[1], bias.beta[1] = 0.1, 5.0  # an earlier task's fitted pair: not applied any more
        bias.alpha[2], bias.beta[2] = 2.0, 1.0
    logits = torch.randn(4, 7)
    out = bias(logits)
    assert torch.equal(out[:, :4], logits[:, :4])
    assert torch.allclose(out[:, 4:], 2.0 * logits[:, 4:] + 1.0)
    assert [p["scale"] for p in bias.pairs()] == pytest.approx([1.0, 0.1, 2.0])


def test_bic_bias_fitting_leaves_the_network_untouched(tmp_path):
    exp = Experiment(tiny_config("method.name=bic", "method.bias_epochs=3"), tmp_path)
    fitted = {}
    original = exp.method.fit_bias

    def spy(task, ctx):
        before = {k: v.clone() for k, v in exp.method.model.state_dict().items() if not k.startswith("bias.")}
        original(task, ctx)
        after = exp.method.model.state_dict()
        fitted[task.index] = all(torch.equal(before[k], after[k]) for k in before)

    exp.method.fit_bias = spy
    exp.run()
    assert fitted == {1: True, 2: True}  # BN running statistics included

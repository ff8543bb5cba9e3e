"""Every registered method survives 3 tasks x 1 epoch and a resume between tasks; defining behaviours."""

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import METHOD_OVERRIDES, run_tiny, shipped_methods, tiny_config

from ltcil.engine.runner import Experiment
from ltcil.heads.bias import TaskBiasCorrection
from ltcil.losses.distillation import kd_loss


@pytest.mark.parametrize("name", shipped_methods())
def test_method_runs_three_tasks_and_writes_results(name, tmp_path):
    from ltcil.reporting.results import check_schema

    results = run_tiny(tmp_path, f"method.name={name}", *METHOD_OVERRIDES.get(name, []))
    assert check_schema(json.loads((tmp_path / "results.json").read_text())) == []
    assert results["classifiers"][results["headline_classifier"]]["accuracy"] == results["accuracy"]
    assert len(results["accuracy"]) == 3
    assert all(0 <= a <= 100 for a in results["accuracy"])
    assert len(results["accuracy_matrix"][2]) == 3
    assert (tmp_path / "results.json").exists() and (tmp_path / "config.yaml").exists()
    assert len(list((tmp_path / "checkpoints").glob("task_*.pt"))) == 3


@pytest.mark.parametrize("name", shipped_methods())
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


def _after_tasks(tmp_path, *overrides):
    """A method after 2 tiny tasks (4 classes), set up as begin_task sets up the third: teacher = the model so
    far, 2 new rows."""
    exp = Experiment(tiny_config(*overrides, "scenario.max_tasks=2"), tmp_path)
    exp.run()
    method = exp.method
    method.teacher = method.frozen_copy() if hasattr(method, "frozen_copy") else None
    method.old_classes = method.model.num_classes
    method.model.head.add_classes(2)
    method.model.eval()
    return method


def test_icarl_ce_kd_is_cross_entropy_plus_distillation(tmp_path):
    # PyCIL's iCaRL (models/icarl.py): CE over the seen classes + KD(T) on the old classes' logits, weight 1
    method = _after_tasks(tmp_path, "method.name=icarl", "method.loss=ce_kd", "method.T=2")
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 3, 4, 5])
    with torch.no_grad():
        losses = method.training_step(x, y)
        logits, old = method.model(x), method.teacher(x)
        ce = torch.nn.functional.cross_entropy(logits, y)
        p = torch.softmax(old / 2, 1)
        kd = -(p * torch.log_softmax(logits[:, :4] / 2, 1)).sum(1).mean() + (p * torch.log(p)).sum(1).mean()
    assert losses["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert losses["kd"].item() == pytest.approx(kd.item(), abs=1e-5)
    assert losses["loss"].item() == pytest.approx((ce + kd).item(), rel=1e-5)


def test_icarl_bce_unseen_trains_every_scenario_output_and_hands_rows_to_the_head(tmp_path):
    """The official iCaRL code's (and Avalanche's) BCE: one output per class of the scenario from the start, the
    not-yet-seen ones trained towards 0; a class's row enters the head as that training left it."""
    extra = ["method.name=icarl", "method.bce_unseen=true"]
    exp = Experiment(tiny_config(*extra), tmp_path / "run")
    method, starts = exp.method, {}
    begin = method.begin_task

    def spy(task, ctx):
        begin(task, ctx)
        starts[task.index] = (method.unseen.weight.detach().clone(), method.unseen.bias.detach().clone(),
                              method.model.head.weight.detach().clone())

    method.begin_task = spy
    exp.run()
    w0, b0, _ = starts[0]
    assert w0.shape[0] == 6  # every class of the scenario, from the first task
    for t in (1, 2):
        w, b, head = starts[t]
        new = slice(2 * t, 2 * t + 2)
        assert torch.equal(head[new], w[new])  # the arriving rows come from the block
        assert not torch.equal(w[new], w0[new])  # ... trained while their classes were unseen
        assert (b[new] < b0[new]).all()  # towards sigmoid 0: every unseen output's bias went down
    # the loss after one task (2 classes) as the second begins: 2 old, 2 new and 2 unseen outputs, the unseen
    # with target 0, the sum divided by batch x 6
    exp = Experiment(tiny_config(*extra, "scenario.max_tasks=1"), tmp_path / "loss")
    exp.run()
    method = exp.method
    method.teacher, method.old_classes = method.frozen_copy(), 2
    method.model.head.add_classes(2)
    method.model.eval()
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 2, 3, 3])
    with torch.no_grad():
        loss = method.training_step(x, y)["loss"]
        feats = method.model.forward_features(x)
        logits = torch.cat([method.model.head(feats), method.unseen(feats)[:, 4:]], 1)
        targets = torch.nn.functional.one_hot(y, 6).float()
        targets[:, :2] = torch.sigmoid(method.teacher(x))
        expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / (4 * 6)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert targets[:, 4:].abs().sum() == 0
    with pytest.raises(Exception, match="bce_unseen"):
        from ltcil.engine.runner import check_components
        check_components(tiny_config("method.name=icarl", "method.bce_unseen=true", "method.loss=ce_kd"))


def test_icarl_bce_unseen_resumes_between_tasks_and_inside_one(tmp_path):
    """The rows of the classes not seen yet are method state: a resumed run ends as the uninterrupted one."""
    extra = ["method.name=icarl", "method.bce_unseen=true", "train.epochs=2", "train.checkpoint_minutes=1e-9"]
    full = run_tiny(tmp_path / "full", *extra)
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "full", crashed)
    (crashed / "checkpoints" / "task_002.pt").unlink()
    (crashed / "results.json").unlink()
    exp = Experiment(tiny_config(*extra), crashed)
    assert exp.restore() and exp.next_task == 2
    assert exp.run()["accuracy_matrix"] == full["accuracy_matrix"]

    class Stop(Exception):
        pass

    stopped = Experiment(tiny_config(*extra), tmp_path / "stopped")
    original, calls = stopped.method.begin_epoch, [0]

    def begin_epoch(epoch, epochs, ctx=None):
        calls[0] += 1
        if calls[0] == 4:  # task 2, before its second epoch
            raise Stop
        original(epoch, epochs, ctx)

    stopped.method.begin_epoch = begin_epoch
    with pytest.raises(Stop):
        stopped.run()
    resumed = Experiment(tiny_config(*extra), tmp_path / "stopped")
    assert resumed.restore() and resumed.next_task == 1 and resumed.partial is not None
    got = resumed.run()
    for key in ("accuracy_matrix", "accuracy_nme", "accuracy_linear"):
        assert got[key] == full[key], key


def test_icarl_and_lwf_bce_refuse_a_train_loss_they_would_ignore():
    from ltcil.errors import ConfigError
    from ltcil.engine.runner import check_components

    for method in ("icarl", "lwf"):
        with pytest.raises(ConfigError, match="train.loss"):
            check_components(tiny_config(f"method.name={method}", "train.loss=balanced_softmax"))
    check_components(tiny_config("method.name=icarl", "method.loss=ce_kd", "train.loss=balanced_softmax"))


@pytest.mark.parametrize("name", ["finetune", "lwf"])
def test_new_classes_only_ce_leaves_old_rows_without_gradient(name, tmp_path):
    # PyCIL's finetune and LwF: CE over the new task's logits (targets shifted), old rows get no CE gradient
    extra = ["method.loss=kd", "method.lamb=0"] if name == "lwf" else []
    method = _after_tasks(tmp_path, f"method.name={name}", "method.ce_classes=new", *extra)
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([4, 5, 4, 5, 4, 5])
    method.model.zero_grad()
    loss = method.training_step(x, y)["loss"]
    loss.backward()
    grad = method.model.head.weight.grad
    assert torch.equal(grad[:4], torch.zeros_like(grad[:4])) and grad[4:].abs().sum() > 0
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(method.model(x)[:, 4:], y - 4)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_bic_keep_corrections_applies_every_tasks_pair():
    # PyCIL's BiC keeps every bias layer in the forward pass: each task's pair acts on its own classes
    bias = TaskBiasCorrection(keep_all=True)
    for size in (2, 2, 3):
        bias.add_task(size)
    with torch.no_grad():
        bias.alpha[1], bias.beta[1] = 0.5, 1.0
        bias.alpha[2], bias.beta[2] = 2.0, -1.0
    logits = torch.randn(4, 7)
    out = bias(logits)
    assert torch.equal(out[:, :2], logits[:, :2])
    assert torch.allclose(out[:, 2:4], 0.5 * logits[:, 2:4] + 1.0)
    assert torch.allclose(out[:, 4:], 2.0 * logits[:, 4:] - 1.0)
    # a fit's stand-in pair replaces only the newest
    scale, shift = torch.tensor(3.0, requires_grad=True), torch.tensor(0.0, requires_grad=True)
    out = bias(logits, newest=(scale, shift))
    assert torch.allclose(out[:, 4:], 3.0 * logits[:, 4:]) and torch.allclose(out[:, 2:4], 0.5 * logits[:, 2:4] + 1.0)
    out.sum().backward()
    assert scale.grad is not None and bias.alpha.grad is None


def test_bic_pycil_variant_fits_only_the_newest_pair(tmp_path):
    overrides = ["method.name=bic", "method.bias_epochs=3", "method.keep_corrections=true",
                 "method.bias_loss=softmax_ce", "method.bias_weight_decay=0.01", "method.bias_augment=true",
                 "method.bias_bn=train"]
    exp = Experiment(tiny_config(*overrides), tmp_path)
    pairs = {}
    original = exp.method.fit_bias

    def spy(task, ctx):
        before = exp.method.model.bias.pairs()
        original(task, ctx)
        pairs[task.index] = (before, exp.method.model.bias.pairs())

    exp.method.fit_bias = spy
    results = exp.run()
    for t, (before, after) in pairs.items():
        assert after[:-1] == before[:-1]  # earlier pairs never move, weight decay included
        assert after[-1] != before[-1]
    assert len(results["accuracy"]) == 3 and len(results["bias_correction"]) == 3
    # stage 1 never trains the correction pairs
    assert all(id(p) not in {id(q) for q in exp.method.model.bias.parameters()}
               for p in exp.method.trainable_parameters())


def test_max_tasks_runs_the_first_tasks_of_the_full_scenario(tmp_path):
    results = run_tiny(tmp_path, "method.name=icarl", "scenario.max_tasks=2")
    assert results["completed_tasks"] == 2 and len(results["accuracy"]) == 2
    assert len(results["tasks"]) == 3  # the scenario itself is unchanged


def test_bic_correction_on_cached_logits_equals_the_image_path(tmp_path, monkeypatch):
    # the frozen network's logits of the un-augmented validation images are computed once; an epoch of the
    # correction then costs no network pass. Forcing the per-batch image path must fit the same scale and shift.
    from ltcil.engine.context import TaskContext

    cached = run_tiny(tmp_path / "cached", "method.name=bic", "method.bias_epochs=4")["bias_correction"]
    original = TaskContext.frozen_stage
    monkeypatch.setattr(TaskContext, "frozen_stage",
                        lambda self, model, indices, augmented, embed=None: original(self, model, indices, True, embed))
    images = run_tiny(tmp_path / "images", "method.name=bic", "method.bias_epochs=4")["bias_correction"]
    assert [p["scale"] for p in cached] == pytest.approx([p["scale"] for p in images], abs=1e-4)
    assert [p["shift"] for p in cached] == pytest.approx([p["shift"] for p in images], abs=1e-4)
    assert cached[1]["scale"] != 1.0  # a correction was fitted


def test_the_headline_classifier_is_the_configs_choice(tmp_path):
    results = run_tiny(tmp_path / "a", "method.name=icarl", "eval.headline=linear")
    assert results["headline_classifier"] == "linear" and results["accuracy"] == results["accuracy_linear"]
    from ltcil.errors import ConfigError

    with pytest.raises(ConfigError, match="eval.headline: 'nme' is not a classifier of this run"):
        run_tiny(tmp_path / "b", "method.name=finetune", "eval.headline=nme")


def test_wa_aligns_the_new_rows_to_the_old_rows_mean_norm(tmp_path):
    # Zhao et al. 2020, Eq. 6-7: after a task, mean ||w_new|| = mean ||w_old||; weights clipped non-negative
    exp = Experiment(tiny_config("method.name=wa"), tmp_path)
    norms = {}
    original = exp.method.align_weights

    def spy():
        gamma = original()
        w = exp.method.model.head.weight.detach()
        old = exp.method.old_classes
        norms[len(norms)] = (float(w[:old].norm(dim=1).mean()), float(w[old:].norm(dim=1).mean()), gamma)
        return gamma

    exp.method.align_weights = spy
    results = exp.run()
    assert len(norms) == 2  # tasks 2 and 3
    for old_mean, new_mean, gamma in norms.values():
        assert new_mean == pytest.approx(old_mean, rel=1e-5) and gamma != 1.0
    assert (exp.method.model.head.weight >= 0).all()
    assert results["weight_aligning"][0] == 1.0 and len(results["weight_aligning"]) == 3


def test_der_freezes_old_extractors_and_grows_one_per_task(tmp_path):
    # Yan et al. 2021: a new extractor per task, the old ones (BatchNorm included) unchanged by later tasks
    exp = Experiment(tiny_config("method.name=der"), tmp_path)
    widths, unchanged = [], []
    original = exp.method.end_task

    def end_task(task, ctx):
        widths.append(exp.method.model.num_features)
        original(task, ctx)

    def begin_capture(task, ctx):
        snapshot[task.index] = [{k: v.clone() for k, v in b.state_dict().items()} for b in exp.method.model.backbones]
        begin(task, ctx)

    snapshot, begin = {}, exp.method.begin_task
    exp.method.begin_task, exp.method.end_task = begin_capture, end_task
    results = exp.run()
    d = exp.method.model.backbones[0].num_features
    assert widths == [d, 2 * d, 3 * d]
    for t in (1, 2):  # every extractor that existed before task t is bit-for-bit the same after it
        for before, backbone in zip(snapshot[t], exp.method.model.backbones):
            unchanged.append(all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items()))
    assert all(unchanged)
    params = results["parameters"]
    assert len(params) == 3 and params[0] < params[1] < params[2]


def test_lucir_losses_by_hand(tmp_path):
    # Hou et al. 2019: CE on sigma * cos, less-forget 1 - cos(f, f_old) weighted 5 sqrt(old / new) (Eq. 6-7),
    # margin ranking on old-class samples over the K = 2 hardest new-class cosines, margin 0.5 (Eq. 8)
    method = _after_tasks(tmp_path, "method.name=lucir", "backbone.last_relu=false")
    method.model.head.frozen = method.old_classes
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 4, 5, 3])
    with torch.no_grad():
        losses = method.training_step(x, y)
        head = method.model.head
        f, f_old = method.model.forward_features(x), method.teacher.forward_features(x)
        cos = torch.nn.functional.normalize(f, dim=1) @ torch.nn.functional.normalize(head.weight, dim=1).T
        ce = torch.nn.functional.cross_entropy(head.sigma * cos, y)
        lf = (1 - torch.nn.functional.cosine_similarity(f, f_old, dim=1)).mean()
        old = y < 4
        own = cos[old].gather(1, y[old].unsqueeze(1))
        hardest = cos[old][:, 4:].topk(2, dim=1).values
        margin = torch.clamp(0.5 - own + hardest, min=0).mean()
    lam = 5.0 * (4 / 2) ** 0.5
    assert losses["margin"].item() == pytest.approx(margin.item(), abs=1e-6)
    assert losses["loss"].item() == pytest.approx((ce + lam * lf + margin).item(), rel=1e-5)
    # the old rows pass no gradient; imprinted new rows point at their class's mean feature
    method.model.train()
    method.model.zero_grad()
    method.training_step(x, y)["loss"].backward()
    assert torch.equal(head.weight.grad[:4], torch.zeros_like(head.weight.grad[:4]))


def test_lucir_mixup_doubles_the_batch_and_adds_the_mixed_halfs_two_label_ce(tmp_path):
    # GVAlign's stage 1 (lucir_gvalign_2stage.py's train_epoch): one forward of [x, lam x + (1 - lam) x[perm]],
    # lam ~ Beta(1, 1) per batch; CE and LUCIR's terms on the original half, lam CE(y) + (1 - lam) CE(y[perm]) on
    # the mixed one; the teacher sees the original half only
    from types import SimpleNamespace

    import numpy as np

    method = _after_tasks(tmp_path, "method.name=lucir", "backbone.last_relu=false", "method.mixup_alpha=1.0")
    assert method.needs_context
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 4, 5, 3])
    sizes = {}
    for name, net in (("student", method.model), ("teacher", method.teacher)):
        def recorded(inputs, name=name, forward=net.forward_features):
            sizes.setdefault(name, len(inputs))
            return forward(inputs)

        net.forward_features = recorded
    gen = torch.Generator().manual_seed(7)
    replay = torch.Generator().manual_seed(7)
    method.model.eval()  # batch statistics aside, the same forward gives the same numbers
    with torch.no_grad():
        losses = method.training_step(x, y, ctx=SimpleNamespace(gens=(gen, None)))
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=replay))
        lam = float(np.random.RandomState(seed).beta(1.0, 1.0))
        partner = torch.randperm(6, generator=replay)
        head = method.model.head
        mixed = head(method.model.forward_features(lam * x + (1 - lam) * x[partner]))
        expected = lam * torch.nn.functional.cross_entropy(mixed, y) + (1 - lam) * torch.nn.functional.cross_entropy(
            mixed, y[partner])
    assert sizes == {"student": 12, "teacher": 6}
    assert losses["mixup"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses["loss"].item() == pytest.approx(
        (losses["ce"] + losses["mixup"] + 5.0 * (4 / 2) ** 0.5 * losses["less_forget"]
         + losses.get("margin", 0.0)).item(), rel=1e-5)


def test_eeil_fine_tunes_on_a_class_balanced_subset(tmp_path):
    # Castro et al. 2018, Sec. 3.4: the exemplars and as many images of each new class as an old class keeps
    exp = Experiment(tiny_config("method.name=eeil", "method.finetune_epochs=2", "memory.size=12"), tmp_path)
    seen = {}
    original = exp.method.balanced_finetuning

    def spy(task, ctx):
        real_fit = ctx.fit

        def fit(step, params, indices, *a, **k):
            labels = ctx.data.labels["train"][torch.as_tensor(indices)]
            seen[task.index] = torch.bincount(labels).tolist()
            return real_fit(step, params, indices, *a, **k)

        ctx.fit = fit
        original(task, ctx)

    exp.method.balanced_finetuning = spy
    results = exp.run()
    assert seen == {1: [6, 6, 6, 6], 2: [3, 3, 3, 3, 3, 3]}  # 12 exemplars: 6 per old class, then 3
    assert len(results["accuracy"]) == 3


def test_eeil_facil_variant_distils_per_old_task_and_fine_tunes_on_memory_plus_as_many_new(tmp_path):
    # FACIL's eeil.py (Masana et al. 2022): BCE between per-task softmaxes at T; the main training leaves the
    # most recent old task out; balanced fine-tuning = memory + len(memory) random images of the new task
    import torch.nn.functional as F

    exp = Experiment(tiny_config("method.name=eeil", "method.variant=facil", "method.finetune_epochs=1",
                                 "memory.size=12"), tmp_path)
    method = exp.method
    method.old_task_ends = [0, 2, 5]  # two old tasks: classes 0-1 and 2-4
    student, teacher = torch.randn(4, 7), torch.randn(4, 7)
    expected = sum(F.binary_cross_entropy(torch.softmax(student[:, a:b] / 2, 1), torch.softmax(teacher[:, a:b] / 2, 1))
                   for a, b in ((0, 2), (2, 5)))
    assert method.facil_kd(student, teacher, 2).item() == pytest.approx(expected.item(), rel=1e-6)
    assert method.facil_kd(student, teacher, 0).item() == 0.0

    kd_tasks, subsets = {}, {}
    original_kd, original_ft = method.facil_kd, method.facil_finetuning

    def kd_spy(logits, old, tasks):
        kd_tasks.setdefault(len(method.old_task_ends) - 1, set()).add(tasks)
        return original_kd(logits, old, tasks)

    def ft_spy(task, ctx, rng):
        real_fit = ctx.fit

        def fit(step, params, indices, *a, **k):
            subsets[task.index] = (np.asarray(indices), method.memory.indices().copy(), task.train_indices.copy())
            return real_fit(step, params, indices, *a, **k)

        ctx.fit = fit
        original_ft(task, ctx, rng)

    method.facil_kd, method.facil_finetuning = kd_spy, ft_spy
    results = exp.run()
    # old tasks 1 at task 1 (main: 0 distilled, fine-tuning: 1), 2 at task 2 (main: 1, fine-tuning: 2)
    assert kd_tasks == {1: {0, 1}, 2: {1, 2}}
    for index, (indices, memory, new) in subsets.items():
        assert len(indices) == 2 * len(memory) == 24
        assert set(indices[:12]) == set(memory) and set(indices[12:]) <= set(new)
    assert len(results["accuracy"]) == 3


def test_pod_spatial_is_zero_on_equal_maps_and_by_hand_on_a_2x2_map():
    # Douillard et al. 2020, Eq. 2-3: width- and height-pooled (squared) maps, normalised, L2 distance
    from ltcil.methods.podnet import pod_spatial

    maps = [torch.randn(3, 4, 2, 2), torch.randn(3, 8, 2, 2)]
    assert pod_spatial(maps, [m.clone() for m in maps]).item() == pytest.approx(0.0, abs=1e-7)
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # one image, one channel
    b = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])

    def pooled(m):
        sq = m[0, 0] ** 2
        v = torch.cat([sq.sum(0), sq.sum(1)])  # over height (per column), then over width (per row)
        return v / v.norm()

    expected = (pooled(a) - pooled(b)).norm()
    assert pod_spatial([a], [b]).item() == pytest.approx(expected.item(), rel=1e-6)


def test_lsc_and_nca_by_hand():
    # Eq. 5-6: class similarity = softmax-weighted mean of its proxies' cosines; Eq. 7: hinge NCA with margin
    from ltcil.heads.lsc import LSCHead
    from ltcil.methods.podnet import nca_loss

    head = LSCHead(3, proxies=2, num_classes=2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]]))
    x = torch.tensor([[1.0, 0.0, 0.0]])
    s = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2 ** -0.5])
    expected = [float((torch.softmax(v, 0) * v).sum()) for v in s]
    sims = head.class_similarities(x)
    assert sims[0].tolist() == pytest.approx(expected, abs=1e-6) and head.num_classes == 2
    eta, delta = torch.tensor(4.0), 0.6
    loss = nca_loss(sims, torch.tensor([0]), eta, delta)
    manual = max(0.0, -(eta.item() * expected[0] - delta - eta.item() * expected[1]))  # margin after the scale
    assert loss.item() == pytest.approx(manual, abs=1e-6)


def test_nca_released_form_is_the_released_codes_stabilised_loss():
    # the released PODNet code and PyCIL's podnet.py shift by the row's largest logit and zero the target's slot
    # of the denominator, so exp(max) stays in the sum: the cross-entropy when the target leads
    from ltcil.methods.podnet import nca_loss

    gen = torch.Generator().manual_seed(3)
    sims = torch.rand(5, 4, generator=gen) * 2 - 1
    y = torch.tensor([0, 1, 2, 3, 1])
    eta, delta = torch.tensor(3.0), 0.2

    def by_hand(row, t):
        z = eta.item() * row.clone()
        z[t] -= delta
        z = z - z.max()
        denominator = z.clone()
        denominator[t] = 0.0  # the target's slot becomes exp(0) = exp(max - max)
        return float(torch.log(torch.exp(denominator).sum()) - z[t])

    expected = sum(by_hand(sims[i], int(y[i])) for i in range(5)) / 5
    assert nca_loss(sims, y, eta, delta, hinge=False, form="released").item() == pytest.approx(expected, rel=1e-5)
    leading = torch.tensor([[0.9, 0.1, -0.3, 0.2]])
    ce = torch.nn.functional.cross_entropy(eta * leading, torch.tensor([0]))
    assert nca_loss(leading, torch.tensor([0]), eta, 0.0, hinge=False, form="released").item() == pytest.approx(
        ce.item(), rel=1e-6)
    paper = nca_loss(leading, torch.tensor([0]), eta, 0.0, hinge=False)
    assert paper.item() < 0 < ce.item()  # the paper's form, without the hinge, keeps falling below 0


def test_nca_ce_form_is_facils_call_of_the_released_nca_where_the_margin_cancels():
    # Long-Tailed-CIL's podnet.py: nca(outputs, targets) with scale 1, margin 0.6 subtracted from every logit and
    # the target kept in the denominator: F.cross_entropy(scale * s - 0.6, y)
    from ltcil.methods.podnet import nca_loss

    gen = torch.Generator().manual_seed(5)
    sims = torch.rand(6, 5, generator=gen) * 2 - 1
    y = torch.tensor([0, 4, 2, 3, 1, 1])
    eta = torch.tensor(2.5)
    released_call = torch.nn.functional.cross_entropy(1.0 * (eta * sims - 0.6), y)
    for margin in (0.0, 0.6, 3.0):  # the margin cannot change it
        assert nca_loss(sims, y, eta, margin, hinge=False, form="ce").item() == pytest.approx(released_call.item(),
                                                                                               rel=1e-6)
    assert nca_loss(sims, y, eta, 0.6, hinge=False, form="ce").item() != pytest.approx(
        nca_loss(sims, y, eta, 0.6, hinge=False).item(), rel=1e-3)


def test_podnet_pycil_options_keep_random_proxies_and_fine_tune_on_the_old_quota(tmp_path):
    # PyCIL's podnet.py: no imprinting of the new proxies; the balanced set holds memory // old classes
    # exemplars of every class (herded before the fine-tuning), the memory is chosen after it
    from ltcil.heads.lsc import LSCHead

    imprinted = []
    real_imprint = LSCHead.imprint_proxies

    def counting_imprint(head, *a, **k):
        imprinted.append(True)
        return real_imprint(head, *a, **k)

    def run(run_dir, *options):
        exp = Experiment(tiny_config(*METHOD_OVERRIDES["podnet"], "method.name=podnet", "memory.size=12",
                                     *options), run_dir)
        seen = {}
        original = exp.method.balanced_finetuning

        def spy(ctx, indices):
            memory_now = sorted(len(v) for v in exp.method.memory.exemplars.values())
            seen[exp.method.old_classes] = (torch.bincount(ctx.data.labels["train"][torch.as_tensor(indices)]).tolist(),
                                            memory_now)
            return original(ctx, indices)

        exp.method.balanced_finetuning = spy
        imprinted.clear()
        results = exp.run()
        assert len(results["accuracy"]) == 3
        return seen, sorted(len(v) for v in exp.method.memory.exemplars.values()), len(imprinted)

    LSCHead.imprint_proxies = counting_imprint
    try:
        pycil = run(tmp_path / "pycil", "method.imprint=false", "method.finetune_set=old_quota")
        default = run(tmp_path / "default")
    finally:
        LSCHead.imprint_proxies = real_imprint
    # 12 // 2 and 12 // 4 of every class, while the memory still holds the previous task's choice
    assert pycil[0] == {2: ([6, 6, 6, 6], [6, 6]), 4: ([3] * 6, [3] * 4)} and pycil[1] == [2] * 6 and pycil[2] == 0
    # the default fine-tunes on the memory as updated for the task and imprints the proxies of tasks 2 and 3
    assert default[0] == {2: ([3] * 4, [3] * 4), 4: ([2] * 6, [2] * 6)} and default[1] == [2] * 6 and default[2] == 2


def test_lsc_learned_scale_grows_while_the_classes_separate():
    # the margin sits outside the learned eta (released code): with it inside, d loss / d eta > 0 until the
    # classes are delta apart in cosine, eta went negative and the LSC inverted (25.6% on digits, NME 95%)
    from ltcil.heads.lsc import LSCHead
    from ltcil.methods.podnet import nca_loss

    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(2, 16, generator=gen)
    y = torch.arange(2).repeat_interleave(32)
    x = centres[y] + 0.8 * torch.randn(64, 16, generator=gen)
    head = LSCHead(16, proxies=3, num_classes=2)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    for _ in range(150):
        loss = nca_loss(head.class_similarities(x), y, head.sigma, margin=0.6)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(head.sigma) > 1.0  # grew from its initial 1
    assert (head(x).argmax(1) == y).float().mean() == 1.0

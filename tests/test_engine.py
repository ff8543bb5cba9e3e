"""Engine behaviour: determinism, schedules, non-finite losses, events, per-task timing."""

import json

import pytest
import torch

from helpers import run_tiny, tiny_config
from ltcil.config import ConfigError, TrainConfig, load_config
from ltcil.engine.optim import lr_factor
from ltcil.engine.runner import Experiment
from ltcil.engine.trainer import NonFiniteLossError


def test_same_config_and_seed_give_identical_results(tmp_path):
    a = run_tiny(tmp_path / "a", "method.name=icarl")
    b = run_tiny(tmp_path / "b", "method.name=icarl")
    for key in ("accuracy", "accuracy_linear", "accuracy_matrix", "per_class_accuracy"):
        assert a[key] == b[key]


def test_training_seed_changes_results(tmp_path):
    a = run_tiny(tmp_path / "a", "seed=1")
    b = run_tiny(tmp_path / "b", "seed=2")
    assert a["per_class_accuracy"] != b["per_class_accuracy"] or a["accuracy"] != b["accuracy"]


def test_lr_schedules():
    step = TrainConfig(schedule="step", milestones=[49, 63], gamma=0.2)
    assert [lr_factor(step, e, 70) for e in (0, 48, 49, 62, 63, 69)] == pytest.approx([1, 1, 0.2, 0.2, 0.04, 0.04])
    cos = TrainConfig(schedule="cosine", warmup_epochs=2)
    assert lr_factor(cos, 0, 12) == pytest.approx(1 / 3) and lr_factor(cos, 1, 12) == pytest.approx(2 / 3)
    assert lr_factor(cos, 2, 12) == pytest.approx(1.0) and lr_factor(cos, 11, 12) < 0.05
    # warm-up from a given factor, and a cosine that reaches 0 at the last epoch (Balanced Softmax's code)
    balms = TrainConfig(schedule="cosine_to_zero", warmup_epochs=2, warmup_from=0.5)
    assert [lr_factor(balms, e, 6) for e in range(6)] == pytest.approx([0.5, 0.75, 1.0, 0.75, 0.25, 0.0])
    # PyTorch's CosineAnnealingLR stepped before each epoch (Kang et al.'s classifier-balancing code)
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 5, eta_min=0.0)
    released = []
    for _ in range(5):
        opt.step()
        sched.step()
        released.append(opt.param_groups[0]["lr"])
    skip = TrainConfig(schedule="cosine_skip_first")
    assert [0.2 * lr_factor(skip, e, 5) for e in range(5)] == pytest.approx(released, abs=1e-12)
    assert released[0] < 0.2 and released[-1] == pytest.approx(0.0, abs=1e-12)
    for bad in ("1.5", "-0.1", "yes"):
        with pytest.raises(ConfigError, match="train.warmup_from"):
            load_config(None, ["method.name=finetune", f"train.warmup_from={bad}"])


def test_non_finite_loss_stops_with_task_and_epoch(tmp_path):
    exp = Experiment(tiny_config("method.name=finetune"), tmp_path)
    original = exp.method.training_step

    def exploding(x, y):
        losses = original(x, y)
        if exp.next_task == 1:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    exp.method.training_step = exploding
    with pytest.raises(NonFiniteLossError, match="task 2, stage 'train', epoch 1, step 1 of 3"):
        exp.run()
    assert (tmp_path / "checkpoints" / "task_000.pt").exists()  # the last good checkpoint is kept
    assert not (tmp_path / "checkpoints" / "task_001.pt").exists()


def test_events_and_timing(tmp_path):
    results = run_tiny(tmp_path, "method.name=finetune", "train.epochs=2")
    events = [json.loads(l) for l in (tmp_path / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert kinds.count("epoch") == 6 and kinds.count("task") == 3
    assert all(e["images_per_second"] > 0 for e in events if e["event"] == "epoch")
    assert [t["task"] for t in results["timing"]] == [0, 1, 2]
    assert all(t["train"] > 0 and t["eval"] > 0 for t in results["timing"])


def test_imbalanced_scenario_reports_shot_groups(tmp_path):
    results = run_tiny(tmp_path, "scenario.imbalance_factor=10", "data.images_per_class=120",
                       "eval.many_shot=60", "eval.few_shot=20")
    assert results["train_counts"][0] == 120 and results["train_counts"][-1] == 12
    for key in ("accuracy_many", "accuracy_medium", "accuracy_few"):
        assert len(results[key]) == 3
    balanced = run_tiny(tmp_path / "b")
    assert "accuracy_many" not in balanced


def test_val_split_is_never_trained_on(tmp_path):
    exp = Experiment(tiny_config("scenario.val_fraction=0.25"), tmp_path)
    trained = set()
    original = exp.method.train_indices

    def spy(task, ctx):
        idx = original(task, ctx)
        trained.update(idx.tolist())
        return idx

    exp.method.train_indices = spy
    exp.run()
    val = set(torch.cat([torch.as_tensor(t.val_indices) for t in exp.scenario.tasks]).tolist())
    assert val and not (val & trained)


def test_trainer_gives_views_and_indices_to_the_step(tmp_path):
    import numpy as np
    import torch

    from ltcil.data.augment import AugmentSpec
    from ltcil.engine.seed import generators
    from ltcil.engine.trainer import Trainer
    from ltcil.reporting.events import EventLog

    exp = Experiment(tiny_config(), tmp_path)
    seen = []

    def step(x, y, idx):
        seen.append((x.shape[0], y.shape[0], idx.clone()))
        assert torch.equal(exp.data.labels["train"][idx], y)
        return {"loss": (x.mean() * 0 + torch.ones((), requires_grad=True)).sum()}

    indices = exp.scenario.tasks[0].train_indices
    from ltcil.engine.stage import Stage

    stage = Stage("train", exp.cfg.train, epochs=1, lr=0.1, augment=AugmentSpec.contrastive(), views=2,
                  with_indices=True)
    Trainer(exp.data, exp.device, EventLog(None), progress=False).fit(
        step, [torch.nn.Parameter(torch.zeros(1))], indices, stage, gens=generators(0, 0, exp.device), task_index=0)
    assert all(nx == 2 * ny for nx, ny, _ in seen)
    assert sorted(torch.cat([i for _, _, i in seen]).tolist()) == sorted(np.asarray(indices).tolist())


def test_periodic_save_is_called_between_epochs_and_its_state_resumes(tmp_path):
    import inspect

    import numpy as np

    from ltcil.engine.seed import generators
    from ltcil.engine.stage import Stage
    from ltcil.engine.trainer import PeriodicSave, Trainer
    from ltcil.reporting.events import EventLog

    exp = Experiment(tiny_config(), tmp_path)
    trainer = Trainer(exp.data, exp.device, EventLog(None), progress=False)
    indices = np.asarray(exp.scenario.tasks[0].train_indices)
    stage = Stage("train", exp.cfg.train, epochs=3, lr=0.1)
    weight = torch.nn.Parameter(torch.zeros(1))

    def step(x, y):
        return {"loss": (weight - 1).pow(2).sum() + x.mean() * 0}

    saved = []
    trainer.fit(step, [weight], indices, stage, gens=generators(0, 0, exp.device), task_index=0,
                periodic_save=PeriodicSave(lambda done, loop: saved.append((done, loop)), every_seconds=0))
    assert [done for done, _ in saved] == [1, 2]  # after every epoch but the last
    assert all(loop["epoch"] == done and set(loop) == {"epoch", "optimizer", "generators"} for done, loop in saved)

    never = []
    trainer.fit(step, [torch.nn.Parameter(torch.zeros(1))], indices, stage, gens=generators(0, 0, exp.device),
                task_index=0, periodic_save=PeriodicSave(lambda *a: never.append(a), every_seconds=3600))
    assert never == []

    resumed = trainer.fit(step, [torch.nn.Parameter(torch.zeros(1))], indices, stage,
                          gens=generators(0, 0, exp.device), task_index=0, resume=saved[1][1])
    assert [e["epoch"] for e in resumed] == [3]  # continues after the saved epoch 2
    params = [p for p in inspect.signature(Trainer.fit).parameters if p != "self"]
    assert len(params) <= 8, params  # the architecture's limit on a function's parameters


def test_cosine_lr_moves_every_step_inside_a_single_epoch(tmp_path):
    # train.schedule_unit=step (default): warm-up and cosine move with each step, so a 1-epoch task anneals too
    from ltcil.engine import trainer as trainer_module

    seen = []
    real = trainer_module.set_lr

    def spy(optimizer, lr):
        seen.append(lr)
        real(optimizer, lr)

    trainer_module.set_lr = spy
    try:
        run_tiny(tmp_path / "step", "scenario.max_tasks=1", "train.epochs=1", "train.schedule=cosine",
                 "data.images_per_class=48")
        per_step = list(seen)
        seen.clear()
        run_tiny(tmp_path / "epoch", "scenario.max_tasks=1", "train.epochs=1", "train.schedule=cosine",
                 "data.images_per_class=48", "train.schedule_unit=epoch")
    finally:
        trainer_module.set_lr = real
    assert len(per_step) == 6 and per_step[0] == 0.05  # 96 images / 16 per batch: one lr per step
    assert all(a > b for a, b in zip(per_step, per_step[1:]))  # cosine decreasing inside the epoch
    assert seen == [0.05]  # per epoch: the lr never moves in a 1-epoch task


def test_the_first_task_takes_its_own_settings(tmp_path):
    results = run_tiny(tmp_path, "train.first_task.epochs=3", "train.first_task.lr=0.02", "train.epochs=1",
                       "scenario.max_tasks=2", "train.schedule=constant")
    epochs = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "epoch"]
    assert [(e["task"], e["lr"]) for e in epochs] == [(0, 0.02)] * 3 + [(1, 0.05)]
    assert results["completed_tasks"] == 2


def test_the_training_loop_is_the_textbook_pytorch_loop(tmp_path):
    """Given the same initial weights and the same batches, ltcil's loop ends at the weights (and BatchNorm
    statistics) of the plain loop every peer toolkit runs: SGD with momentum and weight decay, the lr stepped per
    epoch at the milestones, CE over the seen classes, BatchNorm in train mode. What differs between toolkits
    is then only the data (which batches, which augmentation draws) and the initial weights."""
    import copy

    cfg = tiny_config("method.name=finetune", "memory.size=0", "scenario.max_tasks=1", "train.epochs=3",
                      "train.schedule=step", "train.milestones=[1, 2]", "train.gamma=0.1", "train.momentum=0.9",
                      "train.weight_decay=5e-4", "train.lr=0.05", "backbone.name=resnet20")
    exp = Experiment(cfg, tmp_path / "run")
    method, batches, start = exp.method, [], {}
    step = method.training_step

    def recording_step(x, y):
        if not batches:
            start["model"] = copy.deepcopy(method.model)  # after begin_task grew the head, before any update
        batches.append((x.detach().clone(), y.clone()))
        return step(x, y)

    method.training_step = recording_step
    exp.run()
    per_epoch = len(batches) // 3
    assert per_epoch * 3 == len(batches) and per_epoch >= 3  # 48 images in batches of 16, every epoch
    ref = start["model"]
    initial = copy.deepcopy(ref.state_dict())
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1, 2], gamma=0.1)
    ref.train()
    for epoch in range(3):
        for x, y in batches[epoch * per_epoch:(epoch + 1) * per_epoch]:
            loss = torch.nn.functional.cross_entropy(ref(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    got, want = method.model.state_dict(), ref.state_dict()
    assert got.keys() == want.keys()
    moved = max((want[k].float() - initial[k].float()).abs().max().item() for k in want)
    assert moved > 1e-2  # the loop did train
    for key in want:
        assert torch.allclose(got[key].float(), want[key].float(), atol=1e-5, rtol=1e-4), key


@pytest.mark.parametrize("drop_last", [False, True])
def test_drop_last_drops_only_an_epochs_trailing_partial_batch(tmp_path, drop_last):
    from ltcil.engine.seed import generators
    from ltcil.engine.stage import Stage
    from ltcil.engine.trainer import Trainer
    from ltcil.reporting.events import EventLog

    exp = Experiment(tiny_config("train.batch_size=14", f"train.drop_last={drop_last}"), tmp_path)
    indices = exp.scenario.tasks[0].train_indices
    sizes = []

    def step(x, y):
        sizes.append(len(y))
        return {"loss": (x.mean() * 0 + torch.ones((), requires_grad=True)).sum()}

    stage = Stage("train", exp.cfg.train, epochs=1, lr=0.1)
    full, rest = divmod(len(indices), 14)
    assert rest >= 2  # the tiny task leaves a partial batch to drop
    assert stage.steps_per_epoch(len(indices)) == full + (0 if drop_last else 1)
    Trainer(exp.data, exp.device, EventLog(None), progress=False).fit(
        step, [torch.nn.Parameter(torch.zeros(1))], indices, stage, gens=generators(0, 0, exp.device), task_index=0)
    assert sizes == [14] * full + ([] if drop_last else [rest])
    small = Stage("train", exp.cfg.train, epochs=1, lr=0.1)  # fewer images than a batch: still one step
    assert small.steps_per_epoch(10) == 1

"""DGR (He, CVPR 2024): the classifier's gradient is reweighted per class, the backbone's is not; DAKD by hand."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config

from ltcil.engine.runner import Experiment
from ltcil.methods.dgr import dakd_loss, normalised_entropy


def _grads(method, loss):
    method.model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in method.model.named_parameters() if p.grad is not None}


def _method(tmp_path, *overrides, tasks=1):
    exp = Experiment(tiny_config("method.name=dgr", "memory.per_class=3", f"scenario.max_tasks={tasks}",
                                 *overrides), tmp_path)
    exp.run()
    return exp.method


def _plain_losses(method, x, y):
    """CE on the logit-adjusted logits (+ the distillation term as DGR weighs it), without any reweighting."""
    logits = method.model(x)
    prior = method.train_counts[: logits.shape[1]]
    ce = F.cross_entropy(logits + torch.log(prior / prior.sum()), y)
    if method.teacher is None:
        return ce, None
    lost, n_old, n_new = method._old_new()
    kd = 0.7 * np.sqrt(n_old / n_new) * 4 * dakd_loss(logits[:, : method.old_classes], method.teacher(x), lost, 2)
    return ce, kd


def test_first_task_scales_each_class_row_by_its_balance_ratio_and_leaves_the_backbone_alone(tmp_path):
    method = _method(tmp_path)  # one task: 2 classes, then set up as a fresh first task again
    method.model.train()
    method.train_counts = torch.tensor([20.0, 5.0])
    method.phi = torch.tensor([3.0, 1.0], dtype=torch.float64)  # accumulated from earlier steps
    x, y = torch.randn(8, 3, 8, 8), torch.tensor([0, 0, 0, 0, 0, 1, 1, 0])
    torch.manual_seed(0)
    ce, _ = _plain_losses(method, x, y)
    plain = _grads(method, ce)
    reweighted = _grads(method, method.training_step(x, y)["loss"])
    norms = plain["head.weight"].norm(dim=1).double()
    phi = torch.tensor([3.0, 1.0], dtype=torch.float64) + norms
    alpha = (phi.min() / phi).float()
    torch.testing.assert_close(reweighted["head.weight"], plain["head.weight"] * alpha[:, None])
    torch.testing.assert_close(reweighted["head.bias"], plain["head.bias"] * alpha)
    assert alpha.min() < 1  # the class with the larger accumulated gradient is slowed down
    for name, g in plain.items():
        if not name.startswith("head."):
            torch.testing.assert_close(reweighted[name], g)  # the backbone's gradient is CE's own
    torch.testing.assert_close(method.phi, phi)


def test_later_task_decouples_old_and_new_rows_and_rescales_the_distillation_gradient(tmp_path):
    method = _method(tmp_path, tasks=2)
    # as begin_task sets up the third task: teacher = the model so far, 2 new rows, memory counts for the old
    method.teacher = method.frozen_copy()
    method.old_classes = method.model.num_classes  # 4
    method.model.head.add_classes(2)
    method.model.train()
    method.learned_counts = torch.tensor([14.0, 12.0, 10.0, 8.0], dtype=torch.float64)
    method.train_counts = torch.tensor([3.0, 3.0, 3.0, 3.0, 14.0, 6.0])
    method._priors = None  # as begin_task leaves it: computed from these counts at the first step
    method.phi = torch.zeros(6, dtype=torch.float64)
    x, y = torch.randn(10, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 4, 4, 5, 5, 4])
    ce, kd = _plain_losses(method, x, y)
    g_ce = _grads(method, ce)
    g_kd = _grads(method, _plain_losses(method, x, y)[1])
    ce2, kd2 = _plain_losses(method, x, y)
    g_all = _grads(method, ce2 + kd2)
    losses = method.training_step(x, y)
    assert losses["kd"].item() == pytest.approx(kd.item(), rel=1e-5)
    got = _grads(method, losses["loss"])

    phi = g_ce["head.weight"].norm(dim=1).double()
    old, new = phi[:4], phi[4:]
    ratio = float(new.mean() / old.mean())
    n_old, n_new = 44.0, 20.0
    gamma = np.exp(-n_old / (n_old + n_new))
    alpha = torch.cat([old.min() / old * min(1, ratio), new.min() / new * min(1, ratio * gamma)])
    rescale = float((alpha * phi).norm() / g_kd["head.weight"][:4].norm(dim=1).double().norm())
    want = g_ce["head.weight"] * alpha.float()[:, None]
    want[:4] += rescale * g_kd["head.weight"][:4]
    torch.testing.assert_close(got["head.weight"], want, rtol=1e-4, atol=1e-6)
    want_b = g_ce["head.bias"] * alpha.float()
    want_b[:4] += rescale * g_kd["head.bias"][:4]
    torch.testing.assert_close(got["head.bias"], want_b, rtol=1e-4, atol=1e-6)
    for name, g in g_all.items():
        if not name.startswith("head."):
            torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6)  # CE + DAKD, unweighted
    torch.testing.assert_close(method.last_weights, alpha)


def test_pilot_variant_weighs_plain_distillation_and_attenuation_by_classes(tmp_path):
    # LAMDA-PILOT's models/dgr.py: loss = CE + lambda * known / new classes * KD (no T^2, no DAKD), and the new rows'
    # task-balance ratio attenuated by exp(-gamma * known / total classes)
    from ltcil.methods.dgr import soft_ce

    method = _method(tmp_path, "method.variant=pilot", "method.dakd=false", "method.lambda_b=1.0", tasks=2)
    method.teacher = method.frozen_copy()
    method.old_classes = method.model.num_classes  # 4
    method.model.head.add_classes(2)
    method.model.train()
    method.learned_counts = torch.tensor([14.0, 12.0, 10.0, 8.0], dtype=torch.float64)
    method.train_counts = torch.tensor([3.0, 3.0, 3.0, 3.0, 14.0, 6.0])
    method._priors = None
    method.phi = torch.zeros(6, dtype=torch.float64)
    x, y = torch.randn(10, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 4, 4, 5, 5, 4])
    with torch.no_grad():
        logits = method.model(x)
        kd = 1.0 * 4 / 2 * soft_ce(logits[:, :4], method.teacher(x), 2.0)
    g_ce = _grads(method, _plain_losses(method, x, y)[0])  # before the step, whose head hooks wait for a backward
    losses = method.training_step(x, y)
    assert losses["kd"].item() == pytest.approx(kd.item(), rel=1e-5)
    phi = g_ce["head.weight"].norm(dim=1).double()
    old, new = phi[:4], phi[4:]
    ratio = float(new.mean() / old.mean())
    gamma = np.exp(-4 / 6)  # classes, not images
    alpha = torch.cat([old.min() / old * min(1, ratio), new.min() / new * min(1, ratio * gamma)])
    torch.testing.assert_close(method.last_weights, alpha)


def test_dakd_by_hand_and_plain_distillation_when_every_class_lost_alike():
    torch.manual_seed(1)
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    lost = np.array([480.0, 100.0, 0.0])
    p = (lost + 1e-3) / (lost + 1e-3).sum()
    rho = -(p * np.log(p)).sum() / np.log(3)
    assert normalised_entropy(lost) == pytest.approx(rho)
    w = torch.tensor(lost / lost.sum(), dtype=torch.float32)
    w = w / w.norm()
    mix = s * w + t * (1 - w)
    log_p = rho * F.log_softmax(s / 2, 1) + (1 - rho) * F.log_softmax(mix / 2, 1)
    want = -(F.softmax(t / 2, 1) * log_p).sum(1).mean()
    assert dakd_loss(s, t, lost, 2.0).item() == pytest.approx(want.item(), rel=1e-5)
    # balanced removal (the conventional CIL case): entropy 1, plain soft-target distillation
    plain = -(F.softmax(t / 2, 1) * F.log_softmax(s / 2, 1)).sum(1).mean()
    assert dakd_loss(s, t, np.array([80.0, 80.0, 80.0]), 2.0).item() == pytest.approx(plain.item(), rel=1e-5)


def test_dgr_remembers_what_each_class_had_and_resumes_its_accumulated_gradients(tmp_path):
    method = _method(tmp_path, tasks=2)
    counts = method.learned_counts
    assert len(counts) == 4 and (counts > 3).all()  # full task counts, not the memory's 3 per class
    state = method.state_dict()
    method.learned_counts = torch.zeros(0)
    method.load_state_dict(state)
    torch.testing.assert_close(method.learned_counts, counts)
    method.phi = torch.tensor([1.0, 2.0], dtype=torch.float64)
    saved = method.epoch_state()
    method.phi = torch.zeros(2, dtype=torch.float64)
    method.load_epoch_state(saved)
    assert method.phi.tolist() == [1.0, 2.0]

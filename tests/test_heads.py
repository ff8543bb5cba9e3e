"""Growable heads: growth keeps old classes intact, checkpoints load across growth, cosine logits and imprinting."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ltcil.heads import CosineLinear, IncrementalLinear

HEADS = [IncrementalLinear, CosineLinear]


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("head_cls", HEADS)
def test_starts_empty_and_grows(head_cls):
    head = head_cls(16)
    x = torch.randn(4, 16)
    assert head.num_classes == 0
    assert head(x).shape == (4, 0)
    head.add_classes(5)
    assert head.num_classes == 5 and head(x).shape == (4, 5)
    head.add_classes(0)
    assert head.num_classes == 5
    head.add_classes(2)
    assert head.num_classes == 7 and head(x).shape == (4, 7)
    with pytest.raises(ValueError):
        head.add_classes(-1)


@pytest.mark.parametrize("head_cls", HEADS)
def test_growing_keeps_old_rows_and_logits(head_cls):
    head = head_cls(32, num_classes=5)
    x = torch.randn(8, 32)
    old_params = {k: v.detach().clone() for k, v in head.state_dict().items()}
    old_logits = head(x).detach()
    head.add_classes(3)
    new_logits = head(x).detach()
    assert new_logits.shape == (8, 8)
    assert torch.equal(head.weight[:5].detach(), old_params["weight"])
    if head.bias is not None:
        assert torch.equal(head.bias[:5].detach(), old_params["bias"])
    torch.testing.assert_close(new_logits[:, :5], old_logits, rtol=0, atol=1e-6)
    # The new rows are not copies of old ones or zeros.
    assert head.weight[5:].abs().sum() > 0
    assert not torch.allclose(new_logits[:, 5:], new_logits[:, :3])


def test_new_linear_rows_follow_nn_linear_init():
    head = IncrementalLinear(100, num_classes=0)
    head.add_classes(400)
    bound = 1 / math.sqrt(100)
    assert head.weight.abs().max() <= bound and head.bias.abs().max() <= bound
    # Uniform(-b, b) has std b / sqrt(3).
    assert abs(head.weight.std().item() - bound / math.sqrt(3)) < 0.01 * bound


@pytest.mark.parametrize("head_cls", HEADS)
def test_growth_keeps_dtype_and_requires_grad(head_cls):
    head = head_cls(8, num_classes=2).double()
    head.weight.requires_grad_(False)
    head.add_classes(2)
    assert head.weight.dtype == torch.float64 and not head.weight.requires_grad
    assert head(torch.randn(3, 8, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("head_cls", HEADS)
def test_growth_on_gpu(head_cls):
    head = head_cls(8, num_classes=2).cuda()
    head.add_classes(3)
    assert head.weight.device.type == "cuda"
    assert head(torch.randn(2, 8, device="cuda")).shape == (2, 5)


@pytest.mark.parametrize("head_cls", HEADS)
def test_grown_parameters_are_trained(head_cls):
    head = head_cls(8, num_classes=2)
    head.add_classes(2)
    F.cross_entropy(head(torch.randn(6, 8)), torch.tensor([0, 1, 2, 3, 3, 2])).backward()
    assert head.weight.grad is not None and head.weight.grad.shape == (4, 8)
    assert head.weight.grad[2:].abs().sum() > 0


@pytest.mark.parametrize("head_cls", HEADS)
def test_state_dict_round_trip_after_growth(head_cls):
    head = head_cls(16, num_classes=4)
    head.add_classes(6)
    if isinstance(head, CosineLinear):
        with torch.no_grad():
            head.sigma.fill_(3.5)
    x = torch.randn(5, 16)
    fresh = head_cls(16)
    fresh.load_state_dict(head.state_dict())
    assert fresh.num_classes == 10
    torch.testing.assert_close(fresh(x), head(x), rtol=0, atol=0)
    # A head that already grew past the checkpoint is resized down to it as well.
    bigger = head_cls(16, num_classes=12)
    bigger.load_state_dict(head.state_dict())
    assert bigger.num_classes == 10


@pytest.mark.parametrize("head_cls", HEADS)
def test_state_dict_round_trip_when_nested(head_cls):
    def model():
        return nn.Sequential(nn.Linear(4, 16), head_cls(16))

    grown = model()
    grown[1].add_classes(7)
    fresh = model()
    fresh.load_state_dict(grown.state_dict())
    x = torch.randn(3, 4)
    assert fresh[1].num_classes == 7
    torch.testing.assert_close(fresh(x), grown(x), rtol=0, atol=0)


def test_state_dict_with_wrong_feature_size_fails():
    source = IncrementalLinear(16, num_classes=3)
    with pytest.raises(RuntimeError, match="size mismatch"):
        IncrementalLinear(8).load_state_dict(source.state_dict())


@pytest.mark.parametrize("sigma_value", [1.0, 4.0, -2.5])
def test_cosine_logits_are_bounded_by_sigma(sigma_value):
    head = CosineLinear(32, num_classes=10)
    with torch.no_grad():
        head.sigma.fill_(sigma_value)
    x = torch.randn(64, 32) * 100
    logits = head(x)
    assert logits.abs().max() <= abs(sigma_value) + 1e-5
    # Scaling features or weights does not change cosine logits.
    torch.testing.assert_close(head(x * 0.01), logits)
    # A feature equal to a class weight reaches the bound on that class.
    torch.testing.assert_close(head(head.weight[3:4].detach() * 7)[0, 3], torch.tensor(sigma_value))


def test_cosine_sigma_is_learnable_scalar_or_absent():
    head = CosineLinear(8, num_classes=3)
    assert head.sigma.shape == () and head.sigma.item() == 1.0 and head.sigma.requires_grad
    assert any(p is head.sigma for p in head.parameters())
    fixed = CosineLinear(8, sigma=False, num_classes=3)
    assert fixed.sigma is None and set(fixed.state_dict()) == {"weight"}
    assert fixed(torch.randn(10, 8)).abs().max() <= 1 + 1e-6
    assert head.bias is None


def expected_imprint(feats: torch.Tensor, scale) -> torch.Tensor:
    return F.normalize(F.normalize(feats, dim=1).mean(0), dim=0) * scale


def test_imprinting_sets_new_rows_to_normalised_mean_scaled_to_old_norm():
    head = CosineLinear(16, num_classes=4)
    with torch.no_grad():
        head.weight.mul_(torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None])
    old = head.weight.detach().clone()
    old_norm = old.norm(dim=1).mean()
    head.add_classes(2)
    feats = [torch.randn(5, 16) * 3 + 1, torch.randn(9, 16) * 0.1 - 2]
    head.imprint([4, 5], feats)
    assert torch.equal(head.weight[:4].detach(), old)
    for row, f in zip((4, 5), feats):
        torch.testing.assert_close(head.weight[row].detach(), expected_imprint(f, old_norm))
        torch.testing.assert_close(head.weight[row].norm(), old_norm)
        # Unit direction = normalised mean of normalised features.
        torch.testing.assert_close(F.normalize(head.weight[row], dim=0),
                                   F.normalize(F.normalize(f, dim=1).mean(0), dim=0))


def test_imprinting_with_labels_and_without_old_rows():
    head = CosineLinear(8, num_classes=3)
    feats = torch.randn(30, 8)
    labels = torch.arange(30) % 3
    head.imprint(range(3), feats, labels=labels)
    for c in range(3):
        torch.testing.assert_close(head.weight[c].detach(), expected_imprint(feats[labels == c], 1.0))
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(3))
    # Imprinted rows classify their own class mean best.
    means = torch.stack([F.normalize(feats[labels == c], dim=1).mean(0) for c in range(3)])
    assert torch.equal(head(means).argmax(1), torch.arange(3))


def test_imprinting_rejects_missing_features():
    head = CosineLinear(8, num_classes=2)
    with pytest.raises(ValueError):
        head.imprint([0, 1], [torch.randn(3, 8)])
    with pytest.raises(ValueError):
        head.imprint([1], [torch.empty(0, 8)])


def test_cosine_rows_can_start_at_a_fixed_norm_and_growth_keeps_old_rows():
    # LDAM's released NormedLinear: class vectors U(-1, 1) renormalised to 1 (the default init gives ~0.58).
    head = CosineLinear(64, sigma=False, num_classes=5, row_norm=1.0)
    assert torch.allclose(head.weight.norm(dim=1), torch.ones(5))
    old = head.weight.detach().clone()
    head.add_classes(3)
    assert torch.equal(head.weight[:5], old)
    assert torch.allclose(head.weight[5:].norm(dim=1), torch.ones(3))
    default = CosineLinear(64, sigma=False, num_classes=200).weight.norm(dim=1)
    assert default.max() < 0.8  # the default stays nn.Linear's U(-1/8, 1/8) for CCSI / LUCIR-style heads


def test_ldam_heads_start_with_unit_rows():
    from ltcil.config import load_config
    from ltcil.engine.runner import build_method

    cfg = load_config("quickstart_digits", ["method.name=ldam_drw"])
    method, _ = build_method(cfg, in_channels=1, image_size=8, device=torch.device("cpu"))
    method.model.head.add_classes(4)
    assert torch.allclose(method.model.head.weight.norm(dim=1), torch.ones(4))


def test_kaiming_uniform_rows_follow_pycils_head_init():
    torch.manual_seed(0)
    head = IncrementalLinear(64, num_classes=0, init="kaiming_uniform")
    head.add_classes(500)
    bound = (3 / 64) ** 0.5
    assert head.weight.abs().max() <= bound and head.weight.abs().max() > 0.95 * bound
    assert torch.equal(head.bias, torch.zeros(500))
    with pytest.raises(ValueError, match="head init"):
        IncrementalLinear(4, init="normal")


def test_kaiming_normal_rows_follow_avalanches_icarl_head_init():
    torch.manual_seed(0)
    head = IncrementalLinear(64, num_classes=0, init="kaiming_normal")
    head.add_classes(400)
    assert head.weight.std().item() == pytest.approx(1 / 8, rel=0.02)  # N(0, 1 / fan_in)
    assert abs(head.weight.mean().item()) < 0.002 and head.weight.abs().max() > 3 / 8  # normal, not uniform
    assert torch.equal(head.bias, torch.zeros(400))


def test_lsc_growth_keeps_every_proxy_of_the_old_classes():
    # A head with K rows per class must copy all K * classes old rows when it grows: copying only `num_classes`
    # rows re-drew the proxies of PODNet's old classes at every task (found by the PyCIL parity run: the LSC's
    # old-class accuracy fell to 16% where PyCIL's kept 44%, the NME agreeing within 0.5).
    from ltcil.heads.lsc import LSCHead

    head = LSCHead(8, proxies=3, num_classes=2)
    x = torch.randn(5, 8)
    old_rows, old_logits = head.weight.detach().clone(), head(x).detach()
    head.add_classes(2)
    assert head.weight.shape == (12, 8) and head.num_classes == 4
    assert torch.equal(head.weight[:6].detach(), old_rows)
    torch.testing.assert_close(head(x)[:, :2].detach(), old_logits, rtol=0, atol=1e-6)
    fresh = LSCHead(8, proxies=3)
    fresh.load_state_dict(head.state_dict())
    assert fresh.num_classes == 4 and torch.equal(fresh.weight, head.weight)

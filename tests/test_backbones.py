"""Backbones: shapes at the input sizes each is meant for, gradient flow, reference parameter counts."""

import pytest
import torch

from ltcil.backbones import build_backbone
from ltcil.config import BackboneConfig
from ltcil.errors import ConfigError
from ltcil.registry import available

BACKBONES = available("backbone")
IMAGENET_SIZED = {"resnet18", "resnet50"}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(name: str, in_channels: int = 3, image_size: int = 32, block: str = "basic", **options):
    torch.manual_seed(0)
    return build_backbone(BackboneConfig(name=name, block=block, **options), in_channels, image_size)


def check_forward(model, in_channels: int, image_size: int, batch: int = 2) -> torch.Tensor:
    x = torch.randn(batch, in_channels, image_size, image_size)
    out = model(x)
    assert out.shape == (batch, model.num_features)
    assert torch.isfinite(out).all()
    return out


def test_builtin_backbones_are_registered():
    expected = {"convnet", "preresnet32", "protonet", "resnet18", "resnet20", "resnet32", "resnet50", "resnet56"}
    assert expected <= set(BACKBONES)


def test_unknown_backbone_names_the_key_and_a_suggestion():
    with pytest.raises(ConfigError, match=r"backbone\.name.*Did you mean 'resnet32'"):
        build("resnet33")


@pytest.mark.parametrize("name", BACKBONES)
def test_forward_shape_and_gradient_flow(name):
    model = build(name, 3, 32)
    assert isinstance(model.num_features, int) and model.num_features > 0
    if name.startswith("vit"):  # linear layers are the transformer's own; the classifier must be gone
        assert not any(n.startswith(("head", "fc_norm")) for n, _ in model.named_modules()), "no classifier"
    else:
        assert not any(isinstance(m, torch.nn.Linear) for m in model.modules()), "no classifier in a backbone"
    out = check_forward(model, 3, 32)
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all()
    first = next(p for p in model.parameters() if p.dim() == 4)
    assert first.grad.abs().sum() > 0, "gradient does not reach the first conv"


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("image_size", [8, 28])
def test_single_channel_small_images(name, image_size):
    model = build(name, 1, image_size).eval()
    with torch.no_grad():
        check_forward(model, 1, image_size)


@pytest.mark.parametrize("name", BACKBONES)
def test_forward_features_equals_forward(name):
    model = build(name, 3, 32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_features(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "name, n_features", [("resnet20", 64), ("resnet32", 64), ("resnet56", 64), ("preresnet32", 64),
                         ("convnet", 128), ("resnet18", 512), ("resnet50", 2048)]
)
def test_num_features(name, n_features):
    assert build(name).num_features == n_features


# Paper counts (0.27M / 0.46M / 0.85M) are for option-A shortcuts; the reference option-A implementations
# have 269,722 / 464,154 / 853,018 parameters with a 10-way fc (650). Option B adds two 1x1 conv + BN
# projections: 16*32 + 2*32 + 32*64 + 2*64 = 2,752 parameters.
@pytest.mark.parametrize(
    "name, paper, option_a_with_fc",
    [("resnet20", 0.27e6, 269_722), ("resnet32", 0.46e6, 464_154), ("resnet56", 0.85e6, 853_018)],
)
def test_cifar_resnet_parameter_counts(name, paper, option_a_with_fc):
    count = n_params(build(name))
    assert abs(count - paper) / paper < 0.02
    assert count == option_a_with_fc - 650 + 2_752


def test_cifar_resnet_bottleneck_gives_256_features():
    model = build("resnet56", block="bottleneck")
    assert model.num_features == 256
    check_forward(model.eval(), 3, 32)


def test_cifar_resnet_rejects_unknown_block():
    with pytest.raises(ConfigError, match="backbone.block"):
        build("resnet20", block="wide")


def test_protonet_features_follow_image_size():
    assert build("protonet", 3, 32).num_features == 2 * 2 * 64
    assert build("protonet", 1, 28).num_features == 64  # floor pooling, as in the paper: 28->14->7->3->1
    assert build("protonet", 1, 8).num_features == 64  # the 4th pool is skipped: 8->4->2->1->1
    assert build("protonet", 3, 84).num_features == 5 * 5 * 64  # miniImageNet size of the paper


def test_preresnet32_is_preactivation():
    model = build("preresnet32")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 2 * 15 + 2  # stem, 15 blocks, two projections
    assert all(c.bias is None for c in convs)
    first_block = model.stages[0][0]
    assert isinstance(first_block.bn1, torch.nn.BatchNorm2d) and first_block.bn1.num_features == 16


@pytest.mark.parametrize("name", sorted(IMAGENET_SIZED))
def test_imagenet_resnets_use_cifar_stem_on_small_images(name):
    small = build(name, 3, 64)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in small.modules())
    assert small.stem[0].kernel_size == (3, 3) and small.stem[0].stride == (1, 1)
    out = check_forward(small, 3, 64)
    out.mean().backward()
    assert small.stem[0].weight.grad.abs().sum() > 0
    large = build(name, 3, 224)
    assert large.stem[0].kernel_size == (7, 7) and isinstance(large.stem[3], torch.nn.MaxPool2d)


def test_resnet18_at_224_matches_reference_size():
    model = build("resnet18", 3, 224).eval()
    # torchvision's resnet18 has 11,689,512 parameters, 513,000 of them in its 1000-way fc.
    assert abs(n_params(model) - 11.18e6) / 11.18e6 < 0.01
    assert n_params(model) == 11_689_512 - 513_000
    with torch.no_grad():
        check_forward(model, 3, 224)


def test_resnet50_parameter_count():
    # torchvision's resnet50: 25,557,032 parameters, 2,049,000 in the fc.
    assert n_params(build("resnet50", 3, 224)) == 25_557_032 - 2_049_000


def test_init_is_deterministic_under_the_global_seed():
    a, b = build("resnet20"), build("resnet20")
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_groupnorm_backbone_has_no_batch_statistics():
    # backbone.norm=gn: an image's features do not depend on the rest of its batch, in training mode too
    net = build_backbone(BackboneConfig(name="resnet20", norm="gn", norm_groups=4), 3, 32).train()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in net.modules())
    x = torch.randn(6, 3, 32, 32)
    torch.testing.assert_close(net(x)[:2], net(x[:2]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="not one of bn, cn, gn"):
        build_backbone(BackboneConfig(name="resnet20", norm="ln"), 3, 32)


@pytest.mark.parametrize("name, option_a_with_fc",
                         [("resnet20", 269_722), ("resnet32", 464_154), ("resnet56", 853_018)])
def test_pad_shortcuts_give_the_option_a_parameter_counts(name, option_a_with_fc):
    # He et al. 2016 option A (PyCIL's resnet32: 463,504 without its unused 10-way fc)
    model = build(name, shortcut="pad")
    assert n_params(model) == option_a_with_fc - 650
    check_forward(model.eval(), 3, 32)


def test_pad_shortcut_subsamples_and_zero_pads_channels():
    from ltcil.backbones.resnet import PadShortcut

    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(16, 32, 2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2])
    assert torch.equal(out[:, 16:], torch.zeros(2, 16, 4, 4))


def test_last_relu_off_leaves_negative_features_and_the_rest_unchanged():
    with_relu = build("resnet20")
    without = build("resnet20", last_relu=False)
    without.load_state_dict(with_relu.state_dict())
    x = torch.randn(8, 3, 32, 32)
    trunk = lambda m: m.stages(m.stem(x))  # noqa: E731
    a, b = trunk(with_relu.eval()), trunk(without.eval())
    assert (b < 0).any() and (a >= 0).all()
    assert torch.allclose(torch.relu(b), a)


def test_block_relu_off_ends_every_block_without_its_relu():
    # Long-Tailed-CIL's resnet32_podnet: no block of any stage ends with a ReLU; the stem keeps its own
    net = build("resnet20", block_relu=False, shortcut="pad").eval()
    blocks = [b for stage in net.stages for b in stage]
    assert not any(b.final_relu for b in blocks)
    x = torch.randn(8, 3, 32, 32)
    maps, feats = net.forward_maps(x)
    assert all((m < 0).any() for m in maps) and (feats < 0).any()
    stem_out = net.stem(x)
    assert (stem_out >= 0).all()
    # each block is then conv-bn-relu-conv-bn plus the shortcut, nothing after
    b = blocks[0]
    expected = b.bn2(b.conv2(b.relu(b.bn1(b.conv1(stem_out))))) + stem_out
    assert torch.allclose(b(stem_out), expected, atol=1e-6)
    assert all(b.final_relu for stage in build("resnet20").stages for b in list(stage)[:-1])


@pytest.mark.parametrize("name", ["resnet32", "resnet18"])
def test_conv_init_scales_he_normal_by_the_chosen_fan(name):
    """fan_out (torchvision, PyCIL) vs fan_in (Avalanche's initialize_icarl_net): std sqrt(2 / fan) per conv, so
    the two differ exactly where a conv changes the width (the stem) and agree where it keeps it."""
    out, inn = build(name), build(name, conv_init="fan_in")
    for (label, a), (_, b) in zip(out.named_modules(), inn.named_modules()):
        if not isinstance(a, torch.nn.Conv2d):
            continue
        k = a.kernel_size[0] * a.kernel_size[1]
        for conv, fan in ((a, k * a.out_channels), (b, k * a.in_channels)):
            assert conv.weight.std().item() == pytest.approx((2 / fan) ** 0.5, rel=0.25 if conv.weight.numel() < 2000
                                                             else 0.06), label
    stem_out, stem_in = (next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d)) for net in (out, inn))
    assert stem_in.weight.std() > 1.8 * stem_out.weight.std()  # 3 -> 16 (or 64) channels
    with pytest.raises(ConfigError, match="backbone.conv_init"):
        from ltcil.config import load_config
        load_config("quickstart_digits", ["backbone.conv_init=fan_avg"])

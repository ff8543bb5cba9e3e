"""CCSI (seed 5): continual normalization, the MedMNIST backbone, class-impression synthesis, the method's
losses by hand, and the data-free guarantee (no real old-class image reaches a batch after its task)."""

import struct
import zlib

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import run_tiny, tiny_config

from ltcil.backbones import build_backbone
from ltcil.config import BackboneConfig
from ltcil.engine.runner import Experiment
from ltcil.errors import ConfigError
from ltcil.heads.cosine import CosineLinear
from ltcil.impressions import ImpressionConfig, learning_rate, synthesize
from ltcil.layers.continual_norm import ContinualNorm, convert_norm
from ltcil.methods.base import IncrementalNet
from ltcil.losses.ccsi import class_centroids, class_weights, idc_loss
from ltcil.losses.margin import margin_ranking
from ltcil.methods.ccsi import CCSI
from ltcil.reporting.png import image_grid, write_png

CCSI_TINY = ["method.name=ccsi", "memory.size=0", "scenario.val_fraction=0.2", "method.synth_per_class=6",
             "method.synth_batch_size=4", "method.synth_iterations=4", "method.synth_warmup=1",
             "method.synth_jitter=1", "train.epochs=2"]


def test_continual_norm_is_groupnorm_without_affine_then_batchnorm():
    torch.manual_seed(0)
    cn = ContinualNorm(8, groups=4)
    gn, bn = nn.GroupNorm(4, 8, affine=False), nn.BatchNorm2d(8)
    with torch.no_grad():
        for layer in (cn.bn, bn):
            layer.weight.copy_(torch.linspace(0.5, 2, 8))
            layer.bias.copy_(torch.linspace(-1, 1, 8))
    x = torch.randn(5, 8, 4, 4) * 3 + 1
    torch.testing.assert_close(cn(x), bn(gn(x)))  # training mode: batch statistics
    torch.testing.assert_close(cn.bn.running_mean, bn.running_mean)
    torch.testing.assert_close(cn.bn.running_var, bn.running_var)
    cn.eval(), bn.eval()
    torch.testing.assert_close(cn(x), bn(gn(x)))  # evaluation: running statistics


def test_convert_norm_swaps_every_batchnorm_and_names_a_bad_group_count():
    net = build_backbone(BackboneConfig(name="medmnist_small", norm="cn", norm_groups=4), 3, 28)
    kinds = [type(m) for m in net.modules()]
    assert ContinualNorm in kinds
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == kinds.count(ContinualNorm)
    assert net(torch.randn(2, 3, 28, 28)).shape == (2, 256)
    with pytest.raises(ConfigError, match="16 channels.*3 groups"):
        convert_norm(build_backbone(BackboneConfig(name="medmnist_small"), 3, 28), "cn", 3)


@pytest.mark.parametrize("size", [32, 28, 8])
def test_small_medmnist_backbone_gives_256_features(size):
    # 32 px: stride-2 stem -> 16x16 -> 7x7 average pool (stride 7) -> 2x2x64, as the seed's small_model
    net = build_backbone(BackboneConfig(name="medmnist_small"), 1, size)
    assert net.num_features == 256 and net(torch.randn(3, 1, size, size)).shape == (3, 256)


def test_split_cosine_head_freezes_old_rows():
    head = CosineLinear(4, sigma=True)
    head.add_classes(3)
    head.frozen = 2
    F.cross_entropy(head(torch.randn(6, 4)), torch.tensor([0, 1, 2, 0, 1, 2])).backward()
    assert (head.weight.grad[:2] == 0).all() and (head.weight.grad[2] != 0).any()
    assert head.sigma.grad is not None


def test_synthesis_lr_warms_up_then_follows_a_continuous_cosine():
    cfg = ImpressionConfig(iterations=110, warmup=10, lr=0.05)
    assert learning_rate(0, cfg) == pytest.approx(0.005) and learning_rate(9, cfg) == pytest.approx(0.05)
    assert learning_rate(10, cfg) == pytest.approx(0.05)  # no drop to 0.4 lr after warm-up (release's 0.2)
    assert learning_rate(60, cfg) == pytest.approx(0.025)


def _trained_teacher(classes=3, size=8, steps=60):
    """A tiny net that tells apart three colours of noisy images (what synthesis must invert)."""
    g = torch.Generator().manual_seed(0)
    net = IncrementalNet(build_backbone(BackboneConfig(name="medmnist_small"), 3, size), CosineLinear(256))
    net.head.add_classes(classes)
    with torch.no_grad():
        net.head.sigma.fill_(10.0)  # a trained cosine classifier's scale (LUCIR's sigma grows in training)
    colours = torch.eye(3)[:classes].view(classes, 3, 1, 1) * 2 - 0.5
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):
        y = torch.randint(classes, (48,), generator=g)
        x = colours[y] + 0.5 * torch.randn(48, 3, size, size, generator=g)
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    for m in net.modules():  # exact running statistics of the final weights (what synthesis matches)
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        for _ in range(10):
            y = torch.randint(classes, (48,), generator=g)
            net(colours[y] + 0.5 * torch.randn(48, 3, size, size, generator=g))
    return net.eval(), colours


def test_synthesis_decreases_its_objective_and_the_old_model_recognises_the_impressions():
    net, colours = _trained_teacher()
    labels = torch.arange(3).repeat(8)  # classes mixed in every group, as the method shuffles them
    g = torch.Generator().manual_seed(1)
    # a faint class mean under noise: the old model cannot tell the classes apart at the start
    init = 0.05 * colours[labels] + 0.5 * torch.randn(len(labels), 3, 8, 8, generator=g)
    low, high = torch.full((1, 3, 1, 1), -3.0), torch.full((1, 3, 1, 1), 3.0)
    cfg = ImpressionConfig(iterations=60, warmup=5, lr=0.1, jitter=1, main=10.0)  # main_loss_multiplier 10 (seed)
    before = [p.detach().clone() for p in net.parameters()]
    images, stats = synthesize(net, init, labels, 8, cfg, low, high, g)
    assert stats["best_loss"] < 0.2 * stats["first_loss"]
    with torch.no_grad():
        assert (net(init).argmax(1) == labels).float().mean() < 0.5
        assert (net(images).argmax(1) == labels).float().mean() >= 0.9
    assert images.min() >= -3.0 and images.max() <= 3.0  # clamped on every channel
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # the old model is untouched
    assert all(p.requires_grad for p in net.parameters()) and not net.training


def test_parallel_groups_optimise_exactly_as_one_group_at_a_time():
    net, _ = _trained_teacher(steps=5)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])  # 3 groups of 3, 3 and 1 images
    init = torch.randn(7, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    low, high = torch.full((1, 3, 1, 1), -3.0), torch.full((1, 3, 1, 1), 3.0)
    cfg = ImpressionConfig(iterations=8, warmup=2, jitter=0, flip=False)  # no random draws
    together, _ = synthesize(net, init, labels, 3, cfg, low, high, torch.Generator(), parallel=0)
    alone, _ = synthesize(net, init, labels, 3, cfg, low, high, torch.Generator(), parallel=1)
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


def test_margin_ranking_and_idc_by_hand():
    cos = torch.tensor([[0.9, 0.1, 0.7, 0.2], [0.2, 0.3, 0.1, 0.6]])
    y = torch.tensor([0, 1])
    # old classes 0, 1; new 2, 3. Top-1 new: 0.7 and 0.6 -> max(0, .3 - .9 + .7) = .1, max(0, .3 - .3 + .6) = .6
    assert margin_ranking(cos, y, 2, 0.3, 1).item() == pytest.approx(0.35)
    # top-2 adds max(0, .3 - .9 + .2) = 0 and max(0, .3 - .3 + .1) = .1
    assert margin_ranking(cos, y, 2, 0.3, 2).item() == pytest.approx((0.1 + 0.0 + 0.6 + 0.1) / 4)
    cent = class_centroids(torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0, 1]), 3)
    torch.testing.assert_close(cent, torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]]))
    source = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    t = F.normalize(target, dim=1)
    sim = (t @ source.T / 0.5).numpy()
    expected = -np.log((np.exp(sim[0, 0]) + np.exp(sim[1, 1])) / np.exp(sim).sum())
    assert idc_loss(source, target, 0.5).item() == pytest.approx(float(expected), rel=1e-5)


def test_class_weights_from_counts_or_from_batch_shares():
    real = torch.tensor([0.0, 0.0, 450.0, 150.0])  # classes 0, 1 old (impressions only), 2, 3 new
    fake = torch.tensor([10.0, 30.0, 0.0, 0.0])
    # release: max n / n_c over the counts -> 45, 15, 1, 3
    torch.testing.assert_close(class_weights(real, fake, 0.66, "dataset"), torch.tensor([45.0, 15.0, 1.0, 3.0]))
    # batch shares: .66 * (.25, .75) and .34 * (.75, .25) -> .165, .495, .255, .085
    shares = torch.tensor([0.165, 0.495, 0.255, 0.085])
    torch.testing.assert_close(class_weights(real, fake, 0.66, "batch"), shares.max() / shares)
    first_task = class_weights(torch.tensor([100.0, 50.0]), torch.zeros(2), 0.66, "batch")
    torch.testing.assert_close(first_task, torch.tensor([1.0, 2.0]))  # no impressions: the counts decide


def test_ccsi_refuses_a_memory_and_idc_without_validation_images(tmp_path):
    with pytest.raises(ConfigError, match="data-free"):
        Experiment(tiny_config("method.name=ccsi"), tmp_path / "a")  # TINY keeps memory.size=12
    with pytest.raises(ConfigError, match="val_fraction"):
        run_tiny(tmp_path / "b", *[o for o in CCSI_TINY if not o.startswith("scenario.val")])


def test_no_real_old_class_image_reaches_a_batch_after_its_task(tmp_path, monkeypatch):
    seen = []  # (task, labels of the real images' indices)
    original = CCSI.training_step

    def spy(self, x, y, idx, ctx):
        labels = ctx.data.labels["train"][idx.to(ctx.data.labels["train"].device)]
        seen.append((ctx.task_index, labels.cpu(), y[: len(idx)].cpu()))
        return original(self, x, y, idx, ctx)

    monkeypatch.setattr(CCSI, "training_step", spy)
    exp = Experiment(tiny_config(*CCSI_TINY), tmp_path)
    exp.run()
    tasks = exp.scenario.tasks
    assert {t for t, *_ in seen} == {0, 1, 2}
    for t, labels, y_real in seen:
        assert set(labels.tolist()) <= set(tasks[t].classes.tolist())  # only the task's own classes
        assert torch.equal(labels, y_real)
    state = exp.method.state_dict()
    assert "memory" not in state and state["mean_images"].shape[0] == 6  # one mean image per class, nothing else
    log = exp.results()["synthesis"]
    assert [s["task"] for s in log] == [1, 2] and [s["images"] for s in log] == [12, 24]
    assert all(s["seconds_per_image"] > 0 for s in log)
    for task in (2, 3):
        assert (tmp_path / f"impressions_task{task}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _read_png(path):
    data = path.read_bytes()
    pos, chunks = 8, {}
    while pos < len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        kind = data[pos + 4 : pos + 8]
        chunks.setdefault(kind, b"")
        chunks[kind] += data[pos + 8 : pos + 8 + length]
        crc = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0]
        assert crc == zlib.crc32(kind + data[pos + 8 : pos + 8 + length]) & 0xFFFFFFFF
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    channels = 3 if colour == 2 else 1
    raw = zlib.decompress(chunks[b"IDAT"])
    rows = [raw[y * (width * channels + 1) + 1 : (y + 1) * (width * channels + 1)] for y in range(height)]
    return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(height, width, channels)


def test_png_writer_round_trips_a_grid(tmp_path):
    rows = [torch.rand(3, 3, 4, 5), torch.rand(1, 3, 4, 5)]
    grid = image_grid(rows)
    assert grid.shape == (2 * 5 + 1, 3 * 6 + 1, 3)
    write_png(tmp_path / "g.png", grid)
    np.testing.assert_array_equal(_read_png(tmp_path / "g.png"), grid)
    write_png(tmp_path / "grey.png", grid[:, :, :1], scale=2)
    np.testing.assert_array_equal(_read_png(tmp_path / "grey.png")[:, :, 0], grid[:, :, 0].repeat(2, 0).repeat(2, 1))

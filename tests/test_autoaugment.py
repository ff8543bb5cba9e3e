"""AutoAugment's CIFAR-10 policy and Cutout (data/autoaugment.py): each operation against PIL, the policy's
dispatch, Cutout's square, and the config keys through a training batch."""

import numpy as np
import pytest
import torch

from ltcil.config import ConfigError, load_config
from ltcil.data import autoaugment as aa
from ltcil.data.augment import AugmentSpec, augment_float, augment_uint8

PIL = pytest.importorskip("PIL", reason="Pillow (a test dependency, through matplotlib) is the reference")
from PIL import Image, ImageEnhance, ImageOps  # noqa: E402

GREY = (128, 128, 128)


def _pil(img: np.ndarray, op: str, m: float) -> np.ndarray:
    """The operation as PIL does it (the definitions AutoAugment's implementations use)."""
    im, size = Image.fromarray(img), (img.shape[1], img.shape[0])
    enhance = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast,
               "brightness": ImageEnhance.Brightness, "sharpness": ImageEnhance.Sharpness}
    if op in enhance:
        out = enhance[op](im).enhance(1 + m)
    elif op == "posterize":
        out = ImageOps.posterize(im, int(m))
    elif op == "solarize":
        out = ImageOps.solarize(im, m)
    elif op in ("autocontrast", "equalize", "invert"):
        out = getattr(ImageOps, op)(im)
    elif op == "shear_x":
        out = im.transform(size, Image.AFFINE, (1, m, 0, 0, 1, 0), Image.BICUBIC, fillcolor=GREY)
    elif op == "shear_y":
        out = im.transform(size, Image.AFFINE, (1, 0, 0, m, 1, 0), Image.BICUBIC, fillcolor=GREY)
    elif op == "translate_x":
        out = im.transform(size, Image.AFFINE, (1, 0, m * size[0], 0, 1, 0), fillcolor=GREY)
    elif op == "translate_y":
        out = im.transform(size, Image.AFFINE, (1, 0, 0, 0, 1, m * size[1]), fillcolor=GREY)
    else:  # rotate, grey outside
        out = im.rotate(m, fillcolor=GREY)
    return np.asarray(out)


def _images() -> np.ndarray:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (4, 20, 24, 3), dtype=np.uint8)  # not square: rows and columns differ
    imgs[1] = imgs[1] // 4 + 60  # low contrast: autocontrast / equalize stretch it
    imgs[2, :, :12] = 10  # a flat half
    yy, xx = np.mgrid[0:20, 0:24]
    imgs[3] = np.stack([xx * 10, yy * 12, (xx + yy) * 5], -1).clip(0, 255).astype(np.uint8)  # smooth ramps
    return imgs


@pytest.mark.parametrize("op,m", [
    ("color", 0.3), ("color", -0.7), ("contrast", 0.6), ("contrast", -0.5), ("brightness", 0.7),
    ("brightness", -0.3), ("sharpness", 0.9), ("sharpness", -0.6), ("posterize", 4), ("posterize", 7),
    ("solarize", 100.0), ("solarize", 256 * 7 / 9), ("autocontrast", 0), ("equalize", 0), ("invert", 0),
    ("shear_x", 0.3), ("shear_x", -0.2), ("shear_y", 0.25), ("translate_x", 0.3), ("translate_x", -150 / 331),
    ("translate_y", 0.2), ("rotate", 13.3), ("rotate", -30.0)])
def test_each_operation_equals_pil(op, m):
    imgs = _images()
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float()
    n = len(imgs)
    signed = op not in ("posterize", "solarize")
    ours = aa.apply_op(op, x, torch.full((n,), abs(m) if signed else m),
                       torch.full((n,), -1.0 if m < 0 else 1.0))
    ours = ours.permute(0, 2, 3, 1).numpy().astype(int)
    ref = np.stack([_pil(img, op, m) for img in imgs]).astype(int)
    diff = np.abs(ours - ref)
    # bicubic shear: float32 against PIL's double arithmetic may move a truncated level by one, rarely
    assert diff.max() <= (1 if op.startswith("shear") else 0)
    assert (diff > 0).mean() < 0.001


def test_rotate_90_is_rot90_and_the_levels_follow_the_paper():
    x = torch.arange(36, dtype=torch.float32).reshape(1, 1, 6, 6)
    out = aa.apply_op("rotate", x, torch.tensor([90.0]), torch.tensor([1.0]))
    assert torch.equal(out, torch.rot90(x, 1, (2, 3)))  # counter-clockwise, about the centre
    assert aa._level("rotate", 9) == 30 and aa._level("translate_x", 9) == pytest.approx(150 / 331)
    assert [aa._level("posterize", m) for m in range(10)] == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
    assert aa._level("solarize", 0) == 256 and aa._level("solarize", 9) == 0
    assert len(aa.CIFAR10_POLICY) == 25 and {p[1] for p in aa.CIFAR10_POLICY} | {p[4] for p in aa.CIFAR10_POLICY} \
        == set(aa.OPS) - {"shear_x"}  # the CIFAR-10 policy never shears horizontally


def test_policy_applies_one_sub_policy_per_image_with_its_probabilities(monkeypatch):
    x = torch.randint(0, 256, (3000, 3, 8, 8), dtype=torch.uint8)
    # one sub-policy: invert always, then posterize to 4 bits with probability 0.5
    monkeypatch.setitem(aa.POLICIES, "test", ((1.0, "invert", 0, 0.5, "posterize", 9),))
    out = aa.auto_augment(x, torch.Generator().manual_seed(0), "test")
    inverted = 255 - x
    plain = (out == inverted).flatten(1).all(1)
    posterized = (out == (inverted & 0xF0)).flatten(1).all(1)
    assert bool((plain | posterized).all())  # every image: invert, then maybe posterize; nothing else
    share = (~plain).float().mean().item()  # posterize changed it (random images always have low bits set)
    assert 0.46 < share < 0.54
    assert out.dtype == torch.uint8 and out.shape == x.shape


def test_cifar10_policy_is_reproducible_and_changes_most_images():
    x = torch.randint(30, 221, (400, 3, 32, 32), dtype=torch.uint8)  # not full range: autocontrast acts
    a = aa.auto_augment(x, torch.Generator().manual_seed(5))
    b = aa.auto_augment(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    changed = (a != x).flatten(1).any(1).float().mean().item()

    def acts(p, op, level):  # an enhance factor at level 0 is 1: no change
        return 0.0 if op in ("color", "contrast", "sharpness", "brightness") and level == 0 else p

    # an image stays when neither operation acts: mean over the 25 sub-policies
    expected = 1 - np.mean([(1 - acts(*p[:3])) * (1 - acts(*p[3:])) for p in aa.CIFAR10_POLICY])
    assert abs(changed - expected) < 0.06


def test_cutout_zeroes_one_clipped_square():
    x = torch.ones(2000, 3, 32, 32)
    out = aa.cutout(x, 16, torch.Generator().manual_seed(0))
    holes = out[:, 0] == 0
    assert bool((holes == (out == 0).all(1)).all())  # the same square in every channel
    rows, cols = holes.any(2).sum(1), holes.any(1).sum(1)
    area = holes.flatten(1).sum(1)
    assert bool((area == rows * cols).all())  # a rectangle
    assert int(rows.max()) == 16 and int(cols.max()) == 16 and int(area.max()) == 256
    assert int(rows.min()) == 8 and int(area.min()) >= 64  # centred on the first row: half of it, clipped
    assert bool((out[holes.unsqueeze(1).expand_as(out) == 0] == 1).all())


def test_config_keys_reach_the_training_batch(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("method: {name: finetune}\ntrain: {autoaugment: cifar10, cutout: 8}\n")
    spec = AugmentSpec.from_train_config(load_config(cfg_file).train)
    assert spec.autoaugment == "cifar10" and spec.cutout == 8
    x = torch.full((64, 3, 16, 16), 200, dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    out = augment_float(augment_uint8(x, spec, gen).float().div(255), spec, gen)
    assert bool(((out == 0).flatten(1).sum(1) >= 3 * 16).all())  # every image has its Cutout hole
    for bad, key in (("autoaugment: imagenet", "train.autoaugment"), ("cutout: -1", "train.cutout")):
        cfg_file.write_text(f"method: {{name: finetune}}\ntrain: {{{bad}}}\n")
        with pytest.raises(ConfigError, match=key):
            load_config(cfg_file)

import torch

from ltcil.data.augment import AugmentSpec, augment_uint8, color_jitter, random_crop, random_flip, random_resized_crop


def test_random_crop_is_a_shift_of_the_padded_image():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).reshape(2, 3, 6, 6)
    gen = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, gen)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):
        windows = [(i, j) for i in range(5) for j in range(5)
                   if torch.equal(padded[b, :, i:i + 6, j:j + 6], out[b])]
        assert windows, "every crop must be a window of the padded image"


def test_random_crop_covers_all_offsets():
    x = torch.zeros(4000, 1, 3, 3, dtype=torch.uint8)
    x[:, :, 1, 1] = 1  # track where the centre lands
    out = random_crop(x, 1, torch.Generator().manual_seed(1))
    positions = out[:, 0].flatten(1).float().argmax(1)
    assert len(torch.unique(positions)) == 9  # 3x3 offsets with padding 1 -> centre anywhere


def test_flip_flips_about_half():
    x = torch.arange(8, dtype=torch.uint8).reshape(1, 1, 1, 8).repeat(1000, 1, 1, 1)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] == 7).float().mean().item()
    assert 0.45 < flipped < 0.55
    assert all(torch.equal(o, x[0]) or torch.equal(o, x[0].flip(2)) for o in out[:20])


def test_augment_is_deterministic_for_a_generator():
    x = torch.randint(0, 255, (16, 3, 8, 8), dtype=torch.uint8)
    spec = AugmentSpec(crop_padding=2, flip=True)
    a = augment_uint8(x, spec, torch.Generator().manual_seed(3))
    b = augment_uint8(x, spec, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_resized_crop_and_jitter_keep_shape_and_range():
    x = torch.rand(8, 3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    y = random_resized_crop(x, gen)
    z = color_jitter(x, 0.4, gen)
    assert y.shape == x.shape and z.shape == x.shape
    assert z.min() >= 0 and z.max() <= 1
    assert not torch.allclose(y, x)


def test_contrastive_views_jitter_a_share_and_grey_a_share():
    from ltcil.data.augment import augment_float

    x = torch.rand(4000, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    spec = AugmentSpec(crop_padding=0, flip=False, color_jitter=0.4, hue=0.1, jitter_prob=0.8, grayscale=0.2)
    out = augment_float(x, spec, torch.Generator().manual_seed(6))
    grey = (out[:, 0] == out[:, 1]).flatten(1).all(1) & (out[:, 1] == out[:, 2]).flatten(1).all(1)
    untouched = (out == x).flatten(1).all(1)
    assert abs(grey.float().mean().item() - 0.2) < 0.03
    assert abs(untouched.float().mean().item() - 0.2 * 0.8) < 0.03  # neither jittered nor greyed
    assert out.min() >= 0 and out.max() <= 1


def test_brightness_only_jitter_scales_each_image_by_one_factor():
    # torchvision's ColorJitter(brightness=s): x * f, f ~ U(1 - s, 1 + s), clamped; no contrast or saturation
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 8, 8) * 0.5 + 0.1
    out = color_jitter(x, [0.25, 0.0, 0.0], gen)
    ratio = (out / x).flatten(1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-6)
    assert ((ratio[:, 0] >= 0.75) & (ratio[:, 0] <= 1.25)).all() and ratio[:, 0].std() > 0.05


def test_resized_crop_padding_crops_from_the_zero_padded_image():
    # FACIL-based code on CIFAR: Pad(4), then RandomResizedCrop(32); a crop of the whole padded image (area 1,
    # aspect 1) is the 40 x 40 padded picture resized to 32: a black frame of 4 * 32/40 = 3.2 pixels
    from ltcil.data.augment import augment_float

    x = torch.ones(2, 3, 32, 32)
    spec = AugmentSpec(crop_padding=0, flip=False, resized_crop=True, crop_scale=(1.0, 1.0), resized_crop_padding=4)
    out = augment_float(x, spec, torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 32, 32)
    assert out[:, :, :2, :].abs().max() < 0.05 and out[:, :, 16, 16].min() > 0.99  # the frame, the centre
    unpadded = augment_float(x, AugmentSpec(crop_padding=0, flip=False, resized_crop=True, crop_scale=(1.0, 1.0)),
                             torch.Generator().manual_seed(0))
    assert unpadded.min() > 0.99


def test_torchvision_style_resized_crop_equals_pillows_resize_of_each_box():
    """FACIL-based code crops with torchvision's RandomResizedCrop on PIL images: each output is Pillow's bilinear
    resize of an integer box (antialiased when the box is larger than the output), to the 8-bit level."""
    import numpy as np
    import pytest

    Image = pytest.importorskip("PIL.Image")
    from ltcil.data.augment import pil_bilinear_weights, torchvision_crop_boxes, torchvision_resized_crop

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 40, 40), generator=gen, dtype=torch.uint8)
    out = torchvision_resized_crop(x.float() / 255, torch.Generator().manual_seed(1), size=32)
    boxes = torchvision_crop_boxes(64, 40, 40, torch.Generator().manual_seed(1))
    assert out.shape == (64, 3, 32, 32)
    assert (boxes[:, 3] > 32).any() and (boxes[:, 3] < 32).any()  # both shrinking and enlarging boxes
    diff = []
    for b, (top, left, h, w) in enumerate(boxes.tolist()):
        img = Image.fromarray(x[b].permute(1, 2, 0).numpy()).crop((left, top, left + w, top + h))
        ref = np.asarray(img.resize((32, 32), Image.BILINEAR), dtype=np.int64)
        diff.append(np.abs((out[b].permute(1, 2, 0).numpy() * 255).round().astype(np.int64) - ref))
    diff = np.stack(diff)
    # Pillow's fixed-point sums, rounded as Pillow rounds them; Pillow 13 runs the vertical pass first for some
    # box shapes, which moves a quarter of those crops' values by one 8-bit level
    assert diff.max() <= 1 and (diff == 0).mean() > 0.9
    exact = [b for b, (_, _, h, w) in enumerate(boxes.tolist()) if h <= 32]  # the horizontal pass first
    assert exact and diff[exact].max() == 0
    # a box the size of the output is copied unchanged
    same = pil_bilinear_weights(torch.tensor([3]), torch.tensor([32]), 40, 32)[0]
    assert torch.equal(same, torch.eye(40, dtype=torch.float64)[3:35])


def test_torchvision_crop_boxes_fit_follow_the_area_and_aspect_and_fall_back_to_the_centre():
    from ltcil.data.augment import torchvision_crop_boxes

    boxes = torchvision_crop_boxes(5000, 40, 40, torch.Generator().manual_seed(2))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all() and (left + w <= 40).all()
    area = (h * w).double() / 1600
    assert area.min() >= 0.06 and area.max() <= 1.0
    assert (w.double() / h).min() >= 0.6 and (w.double() / h).max() <= 1.6
    # positions uniform over every place the box fits: both ends are reached, and the mean offset is central
    assert (left == 0).any() and (left == 40 - w).any() and (top == 0).any() and (top == 40 - h).any()
    assert abs(((left + 0.5) / (40 - w + 1)).mean().item() - 0.5) < 0.02
    # no try fits (all of a 1000 x 100 image at aspect <= 4/3): the centred crop 133 = round(100 * 4/3) wide
    one = torchvision_crop_boxes(3, 100, 1000, torch.Generator().manual_seed(0), scale=(1.0, 1.0))
    assert one.tolist() == [[0, 433, 100, 133]] * 3


def test_resized_crop_style_comes_from_the_config_and_is_checked(tmp_path):
    import pytest

    from ltcil.config import load_config
    from ltcil.data.augment import augment_float
    from ltcil.errors import ConfigError

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("method: {name: finetune}\ntrain: {resized_crop: true, resized_crop_padding: 4, "
                        "resized_crop_style: torchvision, crop_scale: [0.08, 1.0]}\n")
    spec = AugmentSpec.from_train_config(load_config(cfg_file).train)
    assert spec.resized_crop_style == "torchvision"
    x = torch.randint(0, 256, (8, 3, 32, 32), generator=torch.Generator().manual_seed(0)).float() / 255
    out = augment_float(x, spec, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    assert torch.equal(out, torch.round(out * 255) / 255)  # 8-bit values, as Pillow's resize gives
    cfg_file.write_text("method: {name: finetune}\ntrain: {resized_crop_style: pil}\n")
    with pytest.raises(ConfigError, match="train.resized_crop_style"):
        load_config(cfg_file)

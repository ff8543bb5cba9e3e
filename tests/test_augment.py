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

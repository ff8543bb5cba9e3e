"""Batched augmentation on the training device: one kernel per op for the whole batch, no per-sample Python.

Crop, flip and AutoAugment run on uint8 (4x less memory traffic than float); colour jitter, resized crop and
Cutout on float.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .autoaugment import auto_augment, cutout


@dataclass
class AugmentSpec:
    crop_padding: int = 4
    flip: bool = True
    color_jitter: float | tuple = 0.0  # brightness/contrast/saturation strength, or one strength each
    resized_crop: bool = False
    crop_scale: tuple = (0.35, 1.0)  # area range of the resized crop
    hue: float = 0.0  # hue jitter: rotation by up to hue * 360 degrees (torchvision's hue, max 0.5)
    jitter_prob: float = 1.0  # share of images whose colours are jittered
    grayscale: float = 0.0  # share of images turned grey
    resized_crop_padding: int = 0  # zero padding before the resized crop (FACIL: Pad(4), RandomResizedCrop(32))
    autoaugment: str = "none"  # none | cifar10: AutoAugment's CIFAR-10 policy on uint8, after crop and flip
    cutout: int = 0  # side of Cutout's square of zeros, last before normalising (0: off)
    resized_crop_style: str = "affine"  # affine: continuous box, one grid_sample | torchvision: as
    # torchvision's RandomResizedCrop on a PIL image (integer box by up to ten tries, Pillow's bilinear resize)

    @classmethod
    def contrastive(cls) -> "AugmentSpec":
        """SimCLR / SupCon views (as SBCL uses on CIFAR): resized crop of 20-100% of the area, flip, colour
        jitter (0.4, 0.4, 0.4, hue 0.1) on 80% of images, grayscale on 20%."""
        return cls(crop_padding=0, flip=True, color_jitter=0.4, resized_crop=True, crop_scale=(0.2, 1.0),
                   hue=0.1, jitter_prob=0.8, grayscale=0.2)

    @classmethod
    def from_train_config(cls, train) -> "AugmentSpec":
        return cls(train.crop_padding, train.flip, train.color_jitter, train.resized_crop,
                   tuple(float(v) for v in train.crop_scale), resized_crop_padding=train.resized_crop_padding,
                   autoaugment=getattr(train, "autoaugment", "none"), cutout=getattr(train, "cutout", 0),
                   resized_crop_style=getattr(train, "resized_crop_style", "affine"))


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by `padding` and take a random HxW window per sample, as a single gather."""
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    wp = w + 2 * padding
    offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=gen, device=gen.device).to(x.device)
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # (B, W)
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return padded.flatten(2).gather(2, flat).reshape(b, c, h, w)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    mask = torch.rand(x.shape[0], generator=gen, device=gen.device).to(x.device) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def random_resized_crop(
    x: torch.Tensor, gen: torch.Generator, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3), size: int | None = None
) -> torch.Tensor:
    """Random area/aspect crop resized to `size` (default: the input's), via one batched affine grid_sample."""
    b = x.shape[0]
    rand = torch.rand(b, 4, generator=gen, device=gen.device).to(x.device)
    area = scale[0] + (scale[1] - scale[0]) * rand[:, 0]
    log_r = torch.log(torch.tensor(ratio, device=x.device))
    aspect = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * rand[:, 1])
    sw = torch.sqrt(area * aspect).clamp(max=1.0)  # crop width / image width
    sh = torch.sqrt(area / aspect).clamp(max=1.0)
    tx = (2 * rand[:, 2] - 1) * (1 - sw)  # centre stays inside the image
    ty = (2 * rand[:, 3] - 1) * (1 - sh)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw, tx, sh, ty
    shape = list(x.shape[:2]) + ([size, size] if size else list(x.shape[2:]))
    grid = F.affine_grid(theta, shape, align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def torchvision_crop_boxes(b: int, height: int, width: int, gen: torch.Generator, scale=(0.08, 1.0),
                           ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """(B, 4) integer boxes (top, left, height, width) drawn as torchvision's RandomResizedCrop.get_params draws
    one (Szegedy et al. 2015; decode.crop_box is the per-image form): area in `scale`, log-uniform aspect in
    `ratio`, sides rounded, the first of ten tries that fits, else the largest centred crop within `ratio`."""
    r = torch.rand(b, 10, 2, generator=gen, device=gen.device, dtype=torch.float64).cpu()
    area = height * width * (scale[0] + (scale[1] - scale[0]) * r[..., 0])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * r[..., 1])
    w, h = torch.round(torch.sqrt(area * aspect)), torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(1)  # the first try that fits
    rows = torch.arange(b)
    w, h = w[rows, first], h[rows, first]
    if width / height < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    ok = fits.any(1)
    w, h = torch.where(ok, w, float(fw)), torch.where(ok, h, float(fh))
    pos = torch.rand(b, 2, generator=gen, device=gen.device, dtype=torch.float64).cpu()
    top = torch.where(ok, torch.floor(pos[:, 0] * (height - h + 1)), torch.floor((height - h) / 2))
    left = torch.where(ok, torch.floor(pos[:, 1] * (width - w + 1)), torch.floor((width - w) / 2))
    return torch.stack([top, left, h, w], 1).long()


def pil_bilinear_weights(start: torch.Tensor, length: torch.Tensor, size: int, out: int) -> torch.Tensor:
    """(B, out, size) rows that resample the window [start, start + length) of an axis of `size` pixels to `out`
    pixels as Pillow's bilinear resize of the cropped image does (Resample.c, precompute_coeffs): the triangle
    filter widened by the shrink factor (antialiasing), taps from round(centre -+ support) within the window,
    normalised to sum 1."""
    length = length.double()
    step = length / out
    stretch = step.clamp(min=1.0)  # filter scale and support (the bilinear filter's support is 1)
    centre = (torch.arange(out, dtype=torch.float64) + 0.5)[None] * step[:, None]  # in window coordinates
    lo = torch.trunc(centre - stretch[:, None] + 0.5).clamp(min=0)
    hi = torch.minimum(torch.trunc(centre + stretch[:, None] + 0.5), length[:, None])
    pos = torch.arange(size, dtype=torch.float64)[None, None] - start.double()[:, None, None]
    w = (1 - ((pos - centre[..., None] + 0.5) / stretch[:, None, None]).abs()).clamp(min=0)
    w = w * ((pos >= lo[..., None]) & (pos < hi[..., None]))
    return w / w.sum(-1, keepdim=True).clamp(min=1e-12)


PIL_BITS = 22  # Pillow's fixed-point precision for 8-bit resampling (Resample.c: 32 - 8 - 2)


def _pil_pass(pixels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One resampling pass as Pillow computes it on 8-bit pixels: weights in fixed point, sums rounded half up and
    clipped to 0..255. `pixels`: integer values as float64 (exact: every sum stays far below 2^53)."""
    fixed = torch.floor(weights * 2**PIL_BITS + 0.5)
    return torch.floor((torch.matmul(pixels, fixed) + 2 ** (PIL_BITS - 1)) / 2**PIL_BITS).clamp(0, 255)


def torchvision_resized_crop(x: torch.Tensor, gen: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                             size: int | None = None) -> torch.Tensor:
    """torchvision's RandomResizedCrop on PIL images, batched: each image's box from torchvision_crop_boxes, then
    Pillow's two bilinear passes (horizontal, then vertical) in its fixed-point arithmetic, each rounded to 8 bits.
    x: floats in [0, 1] on the 8-bit grid (uint8 / 255). Two batched matmuls instead of a per-image resize."""
    b, _, height, width = x.shape
    size = size or width
    box = torchvision_crop_boxes(b, height, width, gen, scale, ratio)
    wy = pil_bilinear_weights(box[:, 0], box[:, 2], height, size).to(x.device)  # (B, size, H)
    wx = pil_bilinear_weights(box[:, 1], box[:, 3], width, size).to(x.device)  # (B, size, W)
    pixels = torch.round(x.double() * 255)
    rows = _pil_pass(pixels, wx.transpose(1, 2)[:, None])  # (B, C, H, size)
    out = _pil_pass(rows.transpose(2, 3), wy.transpose(1, 2)[:, None]).transpose(2, 3)  # (B, C, size, size)
    return (out / 255).to(x.dtype)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Hue rotation by `angle` radians per sample, as a rotation about the grey axis in YIQ space (a linear
    map per image: one batched matmul instead of an RGB -> HSV round trip)."""
    to_yiq = x.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(len(angle), 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    matrix = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", matrix, x)


def jitter_strengths(strength) -> tuple[float, float, float]:
    """(brightness, contrast, saturation) from one strength for all three or a sequence of three."""
    if isinstance(strength, (int, float)):
        return (float(strength),) * 3
    return tuple(float(v) for v in strength)


def color_jitter(x: torch.Tensor, strength, gen: torch.Generator, hue: float = 0.0,
                 prob: float = 1.0) -> torch.Tensor:
    """Brightness, contrast and saturation factors drawn per sample in [1-s, 1+s] (`strength`: one s for all
    three, or (s_b, s_c, s_s); a zero strength skips that op), hue rotated by up to +-hue turns, on a `prob`
    share of the images; x in [0, 1]. Brightness alone is torchvision's ColorJitter(brightness=s)."""
    b = x.shape[0]
    s_b, s_c, s_s = jitter_strengths(strength)
    r = torch.rand(b, 5, generator=gen, device=gen.device).to(x.device)
    f = (1 + r.new_tensor([s_b, s_c, s_s]) * (2 * r[:, :3] - 1)).view(b, 3, 1, 1, 1)
    out = x * f[:, 0] if s_b > 0 else x
    if s_c > 0:
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * f[:, 1] + mean
    if x.shape[1] == 3:
        if s_s > 0:
            gray = _gray(out)
            out = (out - gray) * f[:, 2] + gray
        if hue > 0:
            out = rotate_hue(out.clamp(0, 1), (2 * r[:, 3] - 1) * hue * 2 * torch.pi)
    out = out.clamp(0, 1)
    if prob < 1:
        out = torch.where((r[:, 4] < prob).view(b, 1, 1, 1), out, x)
    return out


def random_grayscale(x: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    if x.shape[1] != 3 or prob <= 0:
        return x
    mask = torch.rand(x.shape[0], generator=gen, device=gen.device).to(x.device) < prob
    return torch.where(mask.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)


def augment_uint8(x: torch.Tensor, spec: AugmentSpec, gen: torch.Generator) -> torch.Tensor:
    """Augmentation that is exact on uint8: crop, flip, then AutoAugment's policy."""
    if not spec.resized_crop:
        x = random_crop(x, spec.crop_padding, gen)
    if spec.flip:
        x = random_flip(x, gen)
    if spec.autoaugment != "none":
        x = auto_augment(x, gen, spec.autoaugment)
    return x


def augment_float(x: torch.Tensor, spec: AugmentSpec, gen: torch.Generator, size: int | None = None) -> torch.Tensor:
    """Photometric and resampling augmentation on floats in [0, 1]; the resized crop outputs `size` (default: the
    input's size; streamed data decodes larger images for it)."""
    if spec.resized_crop:
        pad = spec.resized_crop_padding
        if pad > 0:  # the crop is drawn from the padded image and resized back to the input's size
            size = size or x.shape[-1]
            x = F.pad(x, (pad, pad, pad, pad))
        crop = torchvision_resized_crop if spec.resized_crop_style == "torchvision" else random_resized_crop
        x = crop(x, gen, scale=spec.crop_scale, size=size)
    if any(jitter_strengths(spec.color_jitter)) or spec.hue > 0:
        x = color_jitter(x, spec.color_jitter, gen, spec.hue, spec.jitter_prob)
    x = random_grayscale(x, spec.grayscale, gen)
    return cutout(x, spec.cutout, gen) if spec.cutout > 0 else x

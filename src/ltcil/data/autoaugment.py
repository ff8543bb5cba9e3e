"""AutoAugment's CIFAR-10 policy and Cutout, batched on the training device (no PIL, no per-image Python).

AutoAugment (Cubuk et al., "AutoAugment: Learning Augmentation Policies from Data", CVPR 2019, Appendix, the
policy found on reduced CIFAR-10): each image draws one of 25 sub-policies, whose two operations apply in turn,
each with its own probability, at a magnitude on the paper's 10-level scale. Cutout (DeVries & Taylor, "Improved
Regularization of Convolutional Neural Networks with Cutout", 2017, Sec. 3): a square of zeros of side `length`
centred anywhere in the image, clipped at its border. Crop + flip + AutoAugment + Cutout is the CIFAR-LT recipe of
Balanced Softmax's released code (jiawei-ren/BalancedMetaSoftmax-Classification) and of later long-tailed papers.

Each operation follows PIL's definition (ImageOps / ImageEnhance / Image.transform), as the implementations the
papers ran do, on integer pixel values: images are rounded to uint8 after every operation. Geometric operations
fill uncovered pixels with grey (128). Rotation draws its sign like the other signed operations (the paper's
range is -30..30 degrees; the implementation BALMS ships always rotates counter-clockwise [QUIRK, not copied]).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FILL = 128.0
OPS = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate", "color", "posterize", "solarize", "contrast",
       "sharpness", "brightness", "autocontrast", "equalize", "invert")


def _level(op: str, m: int) -> float:
    """Magnitude of level m (0-9) on the paper's ranges: shear 0-0.3, translate 0-150/331 of the side, rotate 0-30
    degrees, enhance factors 1 +- 0-0.9, posterize 8-4 bits, solarize threshold 256-0."""
    top = {"shear_x": 0.3, "shear_y": 0.3, "translate_x": 150 / 331, "translate_y": 150 / 331, "rotate": 30.0,
           "color": 0.9, "contrast": 0.9, "sharpness": 0.9, "brightness": 0.9}
    if op in top:
        return top[op] * m / 9
    if op == "posterize":
        return float(round(8 - 4 * m / 9))
    if op == "solarize":
        return 256 - 256 * m / 9
    return 0.0


# (p1, op1, level1, p2, op2, level2): the 25 sub-policies of the CIFAR-10 policy
CIFAR10_POLICY = (
    (0.1, "invert", 7, 0.2, "contrast", 6), (0.7, "rotate", 2, 0.3, "translate_x", 9),
    (0.8, "sharpness", 1, 0.9, "sharpness", 3), (0.5, "shear_y", 8, 0.7, "translate_y", 9),
    (0.5, "autocontrast", 8, 0.9, "equalize", 2), (0.2, "shear_y", 7, 0.3, "posterize", 7),
    (0.4, "color", 3, 0.6, "brightness", 7), (0.3, "sharpness", 9, 0.7, "brightness", 9),
    (0.6, "equalize", 5, 0.5, "equalize", 1), (0.6, "contrast", 7, 0.6, "sharpness", 5),
    (0.7, "color", 7, 0.5, "translate_x", 8), (0.3, "equalize", 7, 0.4, "autocontrast", 8),
    (0.4, "translate_y", 3, 0.2, "sharpness", 6), (0.9, "brightness", 6, 0.2, "color", 8),
    (0.5, "solarize", 2, 0.0, "invert", 3), (0.2, "equalize", 0, 0.6, "autocontrast", 0),
    (0.2, "equalize", 8, 0.6, "equalize", 4), (0.9, "color", 9, 0.6, "equalize", 6),
    (0.8, "autocontrast", 4, 0.2, "solarize", 8), (0.1, "brightness", 3, 0.7, "color", 0),
    (0.4, "solarize", 5, 0.9, "autocontrast", 3), (0.9, "translate_y", 9, 0.7, "translate_y", 9),
    (0.9, "autocontrast", 2, 0.8, "solarize", 3), (0.8, "equalize", 8, 0.1, "invert", 3),
    (0.7, "translate_y", 9, 0.9, "autocontrast", 1),
)
POLICIES = {"cifar10": CIFAR10_POLICY}


# --- geometry: PIL's Image.transform(AFFINE) maps each output pixel centre to an input point -----------------
def affine(x: torch.Tensor, coeffs: torch.Tensor, mode: str) -> torch.Tensor:
    """Resample x (N, C, H, W, floats 0-255) by per-image PIL affine coefficients (N, 6): the output pixel at
    (u, v) (pixel units, centres at +0.5) reads the input at (a u + b v + c, d u + e v + f); outside: grey."""
    h, w = x.shape[-2:]
    a, b, c, d, e, f = coeffs.to(x.dtype).unbind(1)
    theta = torch.stack([  # the same map in grid_sample's [-1, 1] coordinates (align_corners=False)
        torch.stack([a, b * h / w, a + b * h / w + 2 * c / w - 1], 1),
        torch.stack([d * w / h, e, d * w / h + e + 2 * f / h - 1], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - FILL, grid, mode=mode, padding_mode="zeros", align_corners=False) + FILL


def shear_rows(x: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """Horizontal shear (PIL's AFFINE (1, m, 0, 0, 1, 0), bicubic): row y's pixel at x reads the input at
    x + m y (pixel centres), a 1-D interpolation per row with PIL's cubic (a = -1), edge pixels repeated for the
    taps, grey where the point falls outside the image, truncated to uint8 levels."""
    n, _, h, w = x.shape
    centre = torch.arange(w, device=x.device, dtype=x.dtype) + 0.5
    src = centre.view(1, 1, w) + mag.view(n, 1, 1).to(x.dtype) * (torch.arange(h, device=x.device) + 0.5).view(1, h, 1)
    inside = (src >= 0) & (src < w)  # (N, H, W)
    pos = src - 0.5
    base = torch.floor(pos)
    d = (pos - base).unsqueeze(1)
    taps = [x.gather(3, (base + k).clamp(0, w - 1).long().unsqueeze(1).expand_as(x)) for k in (-1, 0, 1, 2)]
    v1, v2, v3, v4 = taps
    v = v2 + d * ((v3 - v1) + d * ((2 * (v1 - v2) + v3 - v4) + d * (v2 - v1 - v3 + v4)))
    return torch.where(inside.unsqueeze(1), torch.trunc(v.clamp(0, 255)), torch.full_like(x, FILL))


def _geometric(op: str, x: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    n, (h, w) = len(x), x.shape[-2:]
    one, zero = torch.ones(n, device=x.device), torch.zeros(n, device=x.device)
    if op == "shear_x":
        return shear_rows(x, mag)
    if op == "shear_y":  # the horizontal shear of the transposed image
        return shear_rows(x.transpose(2, 3), mag).transpose(2, 3)
    if op == "translate_x":
        return affine(x, torch.stack([one, zero, mag * w, zero, one, zero], 1), "nearest")
    if op == "translate_y":
        return affine(x, torch.stack([one, zero, zero, zero, one, mag * h], 1), "nearest")
    # rotate: counter-clockwise by `mag` degrees about the centre (PIL's Image.rotate, nearest)
    angle = -mag * math.pi / 180
    cos, sin = torch.cos(angle), torch.sin(angle)
    cx, cy = w / 2, h / 2
    return affine(x, torch.stack([cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy], 1),
                  "nearest")


# --- colour: PIL's ImageEnhance blends with a degenerate image, ImageOps maps each channel by a table ---------
def gray(x: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L conversion (ITU-R 601-2 luma in 16-bit fixed point), (N, 1, H, W)."""
    if x.shape[1] == 1:
        return x
    return torch.floor((x[:, 0:1] * 19595 + x[:, 1:2] * 38470 + x[:, 2:3] * 7471 + 32768) / 65536)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)


def smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageFilter.SMOOTH (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, divided by 13); border pixels kept."""
    c = x.shape[1]
    kernel = x.new_tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13
    inner = F.conv2d(x, kernel.expand(c, 1, 3, 3), groups=c)
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = torch.floor(inner + 0.5)
    return out


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Each channel stretched from its [min, max] to [0, 255] (ImageOps.autocontrast, no cutoff)."""
    lo = x.amin(dim=(2, 3), keepdim=True).double()
    hi = x.amax(dim=(2, 3), keepdim=True).double()
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp_min(1)  # scalar / tensor is not correctly rounded
    stretched = torch.trunc(x.double() * scale - lo * scale).clamp(0, 255)  # PIL's int(i * scale + offset)
    return torch.where(hi > lo, stretched, x.double()).to(x.dtype)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.equalize per channel: the lookup table from the cumulative histogram, with PIL's step
    ((pixels - count of the top used level) // 255); a channel with one level, or too few pixels, stays."""
    n, c = x.shape[:2]
    flat = x.reshape(n * c, -1).long()
    hist = torch.zeros(n * c, 256, device=x.device, dtype=torch.long).scatter_add_(1, flat, torch.ones_like(flat))
    top = 255 - (hist > 0).flip(1).long().argmax(1, keepdim=True)
    step = (flat.shape[1] - hist.gather(1, top)) // 255
    before = hist.cumsum(1) - hist  # pixels below each level
    lut = ((step // 2 + before) // step.clamp_min(1)).clamp(max=255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device).expand_as(lut))
    return lut.gather(1, flat).reshape(x.shape).to(x.dtype)


def apply_op(op: str, x: torch.Tensor, mag: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """One operation on x (N, C, H, W, integer-valued floats 0-255) at per-image magnitudes, rounded to uint8
    levels. `sign` (+-1 per image) applies to the signed operations (geometry and enhance factors)."""
    if op in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):
        out = torch.floor(_geometric(op, x, mag * sign) + 0.5)
    elif op in ("color", "contrast", "sharpness", "brightness"):
        factor = 1 + mag * sign
        if op == "color":
            degenerate = gray(x).expand_as(x)
        elif op == "contrast":  # the mean of the grey image, rounded, as a flat image
            degenerate = torch.floor(gray(x).mean(dim=(1, 2, 3), keepdim=True) + 0.5).expand_as(x)
        elif op == "sharpness":
            degenerate = smooth(x)
        else:
            degenerate = torch.zeros_like(x)
        out = torch.floor(_blend(degenerate, x, factor))  # Image.blend truncates
    elif op == "posterize":
        keep = (2.0 ** (8 - mag)).view(-1, 1, 1, 1)
        out = torch.floor(x / keep) * keep
    elif op == "solarize":
        out = torch.where(x < mag.view(-1, 1, 1, 1), x, 255 - x)
    elif op == "autocontrast":
        out = autocontrast(x)
    elif op == "equalize":
        out = equalize(x)
    elif op == "invert":
        out = 255 - x
    else:
        raise KeyError(op)
    return out.clamp(0, 255)


def _policy_tensors(policy, device):
    ops = torch.tensor([[OPS.index(p[1]), OPS.index(p[4])] for p in policy], device=device)
    prob = torch.tensor([[p[0], p[3]] for p in policy], device=device)
    mag = torch.tensor([[_level(p[1], p[2]), _level(p[4], p[5])] for p in policy], device=device)
    return ops, prob, mag


def auto_augment(x: torch.Tensor, gen: torch.Generator, policy: str = "cifar10") -> torch.Tensor:
    """AutoAugment on a uint8 batch (N, C, H, W): one sub-policy per image, each of its two operations applied
    with its probability; images sharing an operation are transformed together."""
    n = x.shape[0]
    ops, prob, mag = _policy_tensors(POLICIES[policy], x.device)
    r = torch.rand(n, 5, generator=gen, device=gen.device).to(x.device)
    choice = (r[:, 0] * len(ops)).long().clamp(max=len(ops) - 1)
    out = x.float()
    for stage in (0, 1):
        op, p, m = ops[choice, stage], prob[choice, stage], mag[choice, stage]
        active = r[:, 1 + stage] < p
        sign = torch.where(r[:, 3 + stage] < 0.5, -1.0, 1.0)
        for k, name in enumerate(OPS):
            idx = torch.nonzero(active & (op == k)).flatten()
            if len(idx):
                out[idx] = apply_op(name, out[idx], m[idx], sign[idx])
    return out.to(torch.uint8)


def cutout(x: torch.Tensor, length: int, gen: torch.Generator) -> torch.Tensor:
    """One square of zeros per image, side `length`, centre uniform over the pixels, clipped at the border (rows
    cy - length // 2 to cy + length // 2, exclusive, as DeVries & Taylor's code)."""
    n, _, h, w = x.shape
    r = torch.rand(n, 2, generator=gen, device=gen.device).to(x.device)
    cy = (r[:, 0] * h).long().clamp(max=h - 1).view(n, 1, 1)
    cx = (r[:, 1] * w).long().clamp(max=w - 1).view(n, 1, 1)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    half = length // 2
    hole = (rows >= cy - half) & (rows < cy + half) & (cols >= cx - half) & (cols < cx + half)
    return x * (~hole).unsqueeze(1).to(x.dtype)

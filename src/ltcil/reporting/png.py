"""PNG pictures of image tensors without an imaging library (zlib + struct): run folders get pictures even
where matplotlib is not installed."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch


def image_grid(rows: list, pad: int = 1) -> np.ndarray:
    """Rows of (n_i, C, H, W) float images in [0, 1] -> one (H', W', C) uint8 grid, white padding; short
    rows are left blank on the right."""
    rows = [r.detach().float().cpu() for r in rows if len(r)]
    if not rows:
        raise ValueError("image_grid: no images")
    c, h, w = rows[0].shape[1:]
    cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        pixels = (row.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for j, image in enumerate(pixels):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            grid[top : top + h, left : left + w] = image
    return grid


def write_png(path: Path, image: np.ndarray, scale: int = 1) -> None:
    """Write an (H, W) or (H, W, 1|3) uint8 array as an 8-bit greyscale or RGB PNG, each pixel repeated
    `scale` times in both directions (small images stay visible)."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    height, width = image.shape[:2]
    colour = 2 if image.ndim == 3 else 0
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(height))  # filter type 0 on every line

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
                          + chunk(b"IEND", b""))

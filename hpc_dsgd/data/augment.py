"""Batched, reproducible CIFAR-style augmentation (pad-4 random crop + horizontal flip)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F

PAD = 4


def _normalise(x_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 -> float32 in [0,1] -> per-channel (x - mean) / std."""
    m = torch.tensor(mean, dtype=torch.float32, device=x_uint8.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x_uint8.device).view(1, -1, 1, 1)
    return (x_uint8.to(torch.float32) / 255.0 - m) / s


def augment_batch(
    x_uint8: torch.Tensor,
    gen: torch.Generator,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
) -> torch.Tensor:
    """Return a normalised float32 batch on ``x_uint8.device``.

    With ``train``: zero-pad by 4, take a random HxW crop and flip horizontally with p=0.5.
    Random numbers come from the CPU generator ``gen`` in a fixed order (B crop rows, B crop
    columns, B flip bits), so the result is bitwise reproducible on any device.
    """
    if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4:
        raise ValueError(f"expected (B,C,H,W) uint8, got {tuple(x_uint8.shape)} {x_uint8.dtype}")
    if not train:
        return _normalise(x_uint8, mean, std)
    if gen.device.type != "cpu":
        raise ValueError("augment_batch needs a CPU torch.Generator for reproducibility")

    b, c, h, w = x_uint8.shape
    dev = x_uint8.device
    top = torch.randint(0, 2 * PAD + 1, (b,), generator=gen)
    left = torch.randint(0, 2 * PAD + 1, (b,), generator=gen)
    flip = torch.randint(0, 2, (b,), generator=gen).bool()

    padded = F.pad(x_uint8, (PAD, PAD, PAD, PAD))  # zero padding, (B,C,H+8,W+8)
    rows = (top[:, None] + torch.arange(h)).to(dev)  # (B,H) source row per output row
    col_off = torch.arange(w)
    # a flip reads the crop's columns right-to-left, so fold it into the column index
    col_off = torch.where(flip[:, None], (w - 1) - col_off, col_off)
    cols = (left[:, None] + col_off).to(dev)  # (B,W)
    bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
    ci = torch.arange(c, device=dev).view(1, c, 1, 1)
    out = padded[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]  # one batched gather
    return _normalise(out, mean, std)

"""Device-side, counter-based CIFAR augmentation (pad-4 random crop + horizontal flip) for k replicas at once.

Random numbers are not drawn from a generator with state: each one is a hash of the counters
(seed, global replica id, iteration, image slot, stream), computed with 64-bit integer tensor ops on
whatever device holds the data. So the numbers
  - depend only on (seed, replica, iteration): never on the rank split or on the execution mode;
  - are the same on the CPU and on a GPU (integer arithmetic is exact);
  - need no generator state in checkpoints (resuming at iteration t recomputes them);
  - can be computed inside a captured CUDA graph (the iteration is a device tensor).
The hash is Mueller's 32-bit integer finaliser (multiplier 0x45d9f3b < 2^27, so every product fits in
int64 without overflow), applied once per counter as a chain: h <- mix(h + counter).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F

PAD = 4
M32 = 0xFFFFFFFF
_MUL = 0x45D9F3B
STREAM_TOP, STREAM_LEFT, STREAM_FLIP = 0, 1, 2


def mix(h: torch.Tensor) -> torch.Tensor:
    """One round of the 32-bit finaliser on int64 values in [0, 2^32)."""
    h = h ^ (h >> 16)
    h = (h * _MUL) & M32
    h = h ^ (h >> 16)
    h = (h * _MUL) & M32
    return h ^ (h >> 16)


def counter_hash(seed: int, replica: torch.Tensor, t: torch.Tensor | int, slot: torch.Tensor, stream: int) -> torch.Tensor:
    """Uniform 32-bit values (int64 tensor) for every (replica, slot) pair, broadcast together."""
    dev = replica.device
    h = torch.full((), (seed ^ (seed >> 32)) & M32, dtype=torch.int64, device=dev)
    h = mix((h + stream) & M32)
    h = mix((h + torch.as_tensor(t, dtype=torch.int64, device=dev)) & M32)
    h = mix((h + replica.to(torch.int64)) & M32)
    return mix((h + slot.to(torch.int64)) & M32)


def uniform_int(bits: torch.Tensor, high: int) -> torch.Tensor:
    """Map uniform 32-bit values to 0..high-1 (multiply-shift: exact for CPU and GPU)."""
    return (bits * high) >> 32


def crop_flip_params(seed: int, replicas: torch.Tensor, t: torch.Tensor | int, batch: int):
    """(top, left, flip) for replicas (k,) x batch slots: each (k, B); top/left in 0..2*PAD."""
    slot = torch.arange(batch, device=replicas.device).view(1, -1)
    r = replicas.view(-1, 1)
    top = uniform_int(counter_hash(seed, r, t, slot, STREAM_TOP), 2 * PAD + 1)
    left = uniform_int(counter_hash(seed, r, t, slot, STREAM_LEFT), 2 * PAD + 1)
    flip = uniform_int(counter_hash(seed, r, t, slot, STREAM_FLIP), 2).bool()
    return top, left, flip


def channel_stats(mean: Sequence[float], std: Sequence[float], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std as (C, 1, 1) float32 tensors on `device` (made once, outside a capture)."""
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1),
            torch.tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1))


def normalise(x_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 -> float32 in [0,1] -> per-channel (x - mean) / std; channels are dim -3. mean and std:
    sequences, or (C, 1, 1) tensors on the data's device (no host-to-device copy: CUDA-graph safe)."""
    if not isinstance(mean, torch.Tensor):
        mean, std = channel_stats(mean, std, x_uint8.device)
    return (x_uint8.to(torch.float32) / 255.0 - mean) / std


def crop_flip(x_uint8: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Zero-pad by PAD, crop HxW at (top, left), flip where `flip`: one batched gather.

    x_uint8: (..., C, H, W); top/left/flip: the leading (...) shape."""
    *lead, c, h, w = x_uint8.shape
    flat = x_uint8.reshape(-1, c, h, w)
    b = flat.shape[0]
    dev = x_uint8.device
    padded = F.pad(flat, (PAD, PAD, PAD, PAD))  # (b, C, H+8, W+8)
    rows = top.reshape(b, 1) + torch.arange(h, device=dev)  # (b, H) source row per output row
    col = torch.arange(w, device=dev).expand(b, w)
    col = torch.where(flip.reshape(b, 1), (w - 1) - col, col)  # a flip reads the crop right to left
    cols = left.reshape(b, 1) + col  # (b, W)
    bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
    ci = torch.arange(c, device=dev).view(1, c, 1, 1)
    out = padded[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]
    return out.reshape(*lead, c, h, w)


def augment_replicas(x_uint8: torch.Tensor, seed: int, replicas: torch.Tensor, t: torch.Tensor | int,
                     mean, std) -> torch.Tensor:
    """Training batches of k replicas at iteration t: (k, B, C, H, W) uint8 -> normalised float32.

    Replica replicas[j]'s image in slot b gets the crop and flip of counters (seed, replicas[j], t, b)."""
    k, B = x_uint8.shape[:2]
    top, left, flip = crop_flip_params(seed, replicas, t, B)
    return normalise(crop_flip(x_uint8, top, left, flip), mean, std)


def augment_batch(x_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float], *, seed: int = 0,
                  replica: int = 0, t: int = 0, train: bool = True) -> torch.Tensor:
    """One replica's batch (B, C, H, W) uint8 -> float32: augmented at (seed, replica, t) or, with
    train=False, only normalised (evaluation). The reference path of the tests."""
    if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4:
        raise ValueError(f"expected (B,C,H,W) uint8, got {tuple(x_uint8.shape)} {x_uint8.dtype}")
    if not train:
        return normalise(x_uint8, mean, std)
    ids = torch.tensor([replica], device=x_uint8.device)
    return augment_replicas(x_uint8.unsqueeze(0), seed, ids, t, mean, std)[0]

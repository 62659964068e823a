"""A small VGG-style CNN with batch norm: the second model family (exercises the vmap executor)."""

from __future__ import annotations

from torch import nn


def small_cnn(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    """conv-BN-ReLU-pool x 2, then a linear classifier, for 32x32 inputs (about 0.1 M parameters at width 1)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    c1, c2 = max(1, round(32 * width)), max(1, round(64 * width))
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(c2 * 16, num_classes),
    )

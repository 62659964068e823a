"""Common in-memory image data set container."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


class DataError(ValueError):
    """A data set is missing, incomplete, corrupt or unknown."""


@dataclass
class ImageData:
    """A whole image-classification data set held as uint8 tensors.

    ``train_x``/``test_x`` are (N, 3, 32, 32) uint8, ``train_y``/``test_y`` are (N,) int64.
    ``mean``/``std`` are per-channel statistics in [0, 1] pixel units.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x: torch.Tensor = getattr(self, f"{split}_x")
            y: torch.Tensor = getattr(self, f"{split}_y")
            if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
                raise DataError(f"{self.name}: {split}_x must be (N,3,H,W) uint8, got {tuple(x.shape)} {x.dtype}")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise DataError(f"{self.name}: {split}_y must be ({x.shape[0]},) int64, got {tuple(y.shape)} {y.dtype}")

    def to(self, device: torch.device | str) -> "ImageData":
        """Return a copy whose tensors live on ``device``."""
        return replace(
            self,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            test_x=self.test_x.to(device),
            test_y=self.test_y.to(device),
        )

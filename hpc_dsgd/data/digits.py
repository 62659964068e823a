"""Offline stand-in data set: scikit-learn's 8x8 handwritten digits upsampled to 32x32 RGB.

The 1797 real images (UCI optical digits) ship inside scikit-learn, so this runs with no
network access. It is a small, easy substitute for CIFAR-10 with the same tensor layout
(N, 3, 32, 32) uint8 and 10 classes; it is NOT a benchmark of CIFAR-10 accuracy.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from hpc_dsgd.data.base import ImageData

DIGITS_NUM_TEST = 360  # 1797 = 1437 train + 360 test
DIGITS_SPLIT_SEED = 0


def load_digits32() -> ImageData:
    """Return the digits set as 32x32 3-channel uint8 images with a fixed train/test split."""
    from sklearn.datasets import load_digits  # local import: sklearn is only needed here

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)  # (1797, 8, 8), values 0..16
    labels = torch.as_tensor(np.asarray(bunch.target, dtype=np.int64))
    x = images.unsqueeze(1) * (255.0 / 16.0)  # (N,1,8,8) in 0..255
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = x.round().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()

    perm = torch.as_tensor(np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(labels)))
    test_idx, train_idx = perm[:DIGITS_NUM_TEST], perm[DIGITS_NUM_TEST:]
    train_x = x[train_idx].contiguous()

    pixels = train_x.to(torch.float64) / 255.0
    mean = pixels.mean(dim=(0, 2, 3)).tolist()
    std = pixels.std(dim=(0, 2, 3), unbiased=False).tolist()
    return ImageData(
        name="digits",
        train_x=train_x,
        train_y=labels[train_idx].contiguous(),
        test_x=x[test_idx].contiguous(),
        test_y=labels[test_idx].contiguous(),
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
        num_classes=10,
    )

"""CIFAR-10 from the official python-pickle files, via torchvision (no download)."""

from __future__ import annotations

import os

import numpy as np
import torch
import torchvision

from hpc_dsgd.data.base import DataError, ImageData

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_FILES = (
    "data_batch_1",
    "data_batch_2",
    "data_batch_3",
    "data_batch_4",
    "data_batch_5",
    "test_batch",
    "batches.meta",
)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _how_to_fetch(root: str) -> str:
    """Instructions for obtaining the data set offline."""
    return (
        f"Expected the files {', '.join(CIFAR10_FILES)} in {os.path.join(root, CIFAR10_DIR)}/. "
        "To get them, on a machine with internet access run\n"
        "    python -c \"import torchvision; torchvision.datasets.CIFAR10('DIR', download=True)\"\n"
        f"then copy DIR/{CIFAR10_DIR} into {root}/ on this machine."
    )


def check_cifar10(root: str) -> None:
    """Raise DataError (one message) unless all official CIFAR-10 files are present under ``root``."""
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise DataError(f"CIFAR-10 root directory {root} does not exist. " + _how_to_fetch(root))
    folder = os.path.join(root, CIFAR10_DIR)
    missing = [f for f in CIFAR10_FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise DataError(
            f"CIFAR-10 under {root} is incomplete: missing {', '.join(missing)} in {folder}/. "
            + _how_to_fetch(root)
        )


def _to_tensors(ds: torchvision.datasets.CIFAR10) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,32,32,3) uint8 array + label list -> (N,3,32,32) uint8, (N,) int64 tensors."""
    x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    y = torch.as_tensor(np.asarray(ds.targets, dtype=np.int64))
    return x, y


def load_cifar10(root: str) -> ImageData:
    """Load CIFAR-10 (50 000 train / 10 000 test) with torchvision's MD5 integrity check."""
    check_cifar10(root)
    root = os.path.abspath(os.path.expanduser(root))
    try:
        train = torchvision.datasets.CIFAR10(root, train=True, download=False)
        test = torchvision.datasets.CIFAR10(root, train=False, download=False)
    except RuntimeError as exc:  # torchvision reports a failed MD5 check as RuntimeError
        raise DataError(
            f"CIFAR-10 files in {os.path.join(root, CIFAR10_DIR)}/ failed torchvision's MD5 integrity "
            f"check: they are corrupt or not the official files ({exc}). " + _how_to_fetch(root)
        ) from exc
    train_x, train_y = _to_tensors(train)
    test_x, test_y = _to_tensors(test)
    return ImageData(
        name="cifar10",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        num_classes=10,
    )


def check_md5(root: str) -> None:
    """torchvision's MD5 of every official CIFAR-10 file present under ``root`` (DataError naming the first that
    fails), before any work; the loader checks again."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    folder = os.path.join(os.path.abspath(os.path.expanduser(root)), CIFAR10.base_folder)
    for fname, md5 in CIFAR10.train_list + CIFAR10.test_list:
        fpath = os.path.join(folder, fname)
        if os.path.isfile(fpath) and not check_integrity(fpath, md5):
            raise DataError(f"data_dir={root!r}: {fpath} fails its MD5 check (corrupt, truncated or not the official "
                            f"CIFAR-10 file): copy cifar-10-batches-py/ again from a download by "
                            f"torchvision.datasets.CIFAR10(DIR, download=True)")

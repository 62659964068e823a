"""Data sets (no MPI): the offline digits stand-in, CIFAR-10 (in memory), ImageNet-32 (memory-mapped cache) and
Multi30k (parallel text; the translation workload tokenizes it)."""

from __future__ import annotations

from hpc_dsgd.data.augment import augment_batch
from hpc_dsgd.data.base import DataError, ImageData
from hpc_dsgd.data.cifar10 import check_cifar10, load_cifar10
from hpc_dsgd.data.digits import load_digits32
from hpc_dsgd.data.imagenet32 import check_imagenet32, load_imagenet32
from hpc_dsgd.data.multi30k import Multi30k, load_multi30k
from hpc_dsgd.data.partition import (
    PARTITIONS,
    DataPartition,
    PartitionError,
    epoch_permutation,
    make_partition,
    replica_shard,
    validation_indices,
)

DATASETS = ("digits", "cifar10", "imagenet32", "multi30k")


def check_dataset(name: str, root: str | None, prepare: bool = True) -> str | None:
    """Fail fast (DataError) if data set ``name`` is unknown or not available under ``root``. prepare=False
    builds and writes nothing (a cache not built yet is left to the first run): a line saying what is left
    to prepare is returned then; None when the data set is ready."""
    if name == "digits":
        return None  # embedded in scikit-learn, always available
    if name == "cifar10":
        if root is None:
            raise DataError("data set 'cifar10' needs a data root directory, got none")
        check_cifar10(root)
        return None
    if name == "imagenet32":
        if root is None:
            raise DataError("data set 'imagenet32' needs data_dir: the directory holding train_data_batch_1 ... "
                            "train_data_batch_10 and val_data (or Imagenet32_train/ and Imagenet32_val/), got none")
        return check_imagenet32(root, build=prepare)  # prepare: converts the pickles into the cache on first use
    if name == "multi30k":
        if root is None:
            raise DataError("data set 'multi30k' needs data_dir: the directory holding train.en/.de, val.en/.de and "
                            "test_2016_flickr.en/.de (plain or .gz), got none")
        load_multi30k(root)  # every file present, UTF-8, no blank line, the two languages aligned
        return None
    raise DataError(f"unknown data set {name!r}; choices: {', '.join(DATASETS)}")


def load_dataset(name: str, root: str | None) -> ImageData | Multi30k:
    """Check, then load data set ``name`` into memory (CPU tensors; multi30k: the sentence pairs)."""
    if name == "multi30k" and root is not None:
        return load_multi30k(root)
    check_dataset(name, root)
    if name == "digits":
        return load_digits32()
    assert root is not None  # guaranteed by check_dataset
    if name == "imagenet32":
        return load_imagenet32(root)
    return load_cifar10(root)


__all__ = [
    "DATASETS",
    "PARTITIONS",
    "DataError",
    "DataPartition",
    "PartitionError",
    "ImageData",
    "augment_batch",
    "check_cifar10",
    "check_dataset",
    "check_imagenet32",
    "epoch_permutation",
    "load_cifar10",
    "load_dataset",
    "load_digits32",
    "load_imagenet32",
    "make_partition",
    "replica_shard",
    "validation_indices",
]

"""Serial tests of the data sets, partition and augmentation (no MPI, no network)."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from hpc_dsgd.data import (
    DATASETS,
    DataError,
    augment_batch,
    check_dataset,
    epoch_permutation,
    load_cifar10,
    load_dataset,
    load_digits32,
    replica_shard,
)
from hpc_dsgd.data.augment import augment_replicas, counter_hash, crop_flip_params
from hpc_dsgd.data.cifar10 import CIFAR10_FILES, check_cifar10

torch.set_num_threads(1)

TRAIN_FILES = [f"data_batch_{k}" for k in range(1, 6)]


def _write_pickle(path: Path, obj: dict) -> str:
    """Pickle ``obj`` to ``path`` and return its MD5.

    The official files are Python-2 pickles whose byte-string keys torchvision reads back
    (``encoding="latin1"``) as ``str``; a protocol-2 pickle with ``str`` keys is equivalent.
    """
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return hashlib.md5(path.read_bytes()).hexdigest()


def _fake_cifar(root: Path) -> tuple[dict[str, str], np.ndarray, list[int], np.ndarray, list[int]]:
    """Write a tiny CIFAR-10 in the official format; return md5s and the HWC images/labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(7)
    md5s: dict[str, str] = {}
    train_imgs, train_labels = [], []
    for k, name in enumerate(TRAIN_FILES):
        imgs = rng.randint(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)  # N,H,W,C
        labels = [(k + j) % 10 for j in range(3)]
        rows = imgs.transpose(0, 3, 1, 2).reshape(3, 3072)  # official layout: R plane, G plane, B plane
        md5s[name] = _write_pickle(folder / name, {"data": rows, "labels": labels})
        train_imgs.append(imgs)
        train_labels += labels
    test_imgs = rng.randint(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    test_labels = [4, 9]
    rows = test_imgs.transpose(0, 3, 1, 2).reshape(2, 3072)
    md5s["test_batch"] = _write_pickle(folder / "test_batch", {"data": rows, "labels": test_labels})
    md5s["batches.meta"] = _write_pickle(
        folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]}
    )
    return md5s, np.concatenate(train_imgs), train_labels, test_imgs, test_labels


def _patch_md5s(monkeypatch: pytest.MonkeyPatch, md5s: dict[str, str]) -> None:
    """Make torchvision's own MD5 check accept the files this test wrote."""
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[f, md5s[f]] for f in TRAIN_FILES])
    monkeypatch.setattr(cls, "test_list", [["test_batch", md5s["test_batch"]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5s["batches.meta"]})


def test_load_cifar10_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    md5s, train_hwc, train_labels, test_hwc, test_labels = _fake_cifar(tmp_path)
    _patch_md5s(monkeypatch, md5s)
    data = load_cifar10(str(tmp_path))
    assert data.name == "cifar10" and data.num_classes == 10
    assert data.train_x.shape == (15, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (2, 3, 32, 32)
    assert data.train_y.dtype == torch.int64
    # channel c of image n equals the HWC image's [:, :, c]
    for n in range(15):
        for c in range(3):
            assert np.array_equal(data.train_x[n, c].numpy(), train_hwc[n, :, :, c])
    assert np.array_equal(data.test_x.permute(0, 2, 3, 1).numpy(), test_hwc)
    assert data.train_y.tolist() == train_labels
    assert data.test_y.tolist() == test_labels
    assert load_dataset("cifar10", str(tmp_path)).train_x.equal(data.train_x)


def test_cifar10_missing_dir(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        check_cifar10(str(root))
    msg = str(err.value)
    assert str(root) in msg and "download=True" in msg and "cifar-10-batches-py" in msg
    with pytest.raises(DataError):
        check_dataset("cifar10", str(root))


def test_cifar10_missing_file(tmp_path: Path) -> None:
    _fake_cifar(tmp_path)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(DataError) as err:
        load_cifar10(str(tmp_path))
    msg = str(err.value)
    assert "data_batch_3" in msg and str(tmp_path / "cifar-10-batches-py") in msg
    assert "download=True" in msg
    assert all(f in msg for f in CIFAR10_FILES)


def test_cifar10_wrong_md5(tmp_path: Path) -> None:
    _fake_cifar(tmp_path)  # correct format but not the official files: MD5 fails
    with pytest.raises(DataError) as err:
        load_cifar10(str(tmp_path))
    assert "MD5" in str(err.value) and str(tmp_path) in str(err.value)


def test_unknown_dataset() -> None:
    with pytest.raises(DataError) as err:
        check_dataset("mnist", None)
    assert "mnist" in str(err.value) and all(d in str(err.value) for d in DATASETS)
    check_dataset("digits", None)  # no-op


def test_digits() -> None:
    a = load_digits32()
    assert a.train_x.shape == (1437, 3, 32, 32) and a.test_x.shape == (360, 3, 32, 32)
    assert a.train_x.dtype == torch.uint8 and a.train_y.dtype == torch.int64
    assert a.num_classes == 10 and set(a.train_y.tolist()) == set(range(10))
    assert torch.equal(a.train_x[:, 0], a.train_x[:, 2])  # grey replicated to 3 channels
    assert int(a.train_x.max()) > 200
    assert all(0 < m < 1 for m in a.mean) and all(0 < s < 1 for s in a.std)
    b = load_dataset("digits", None)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert a.mean == b.mean
    c = a.to("cpu")
    assert torch.equal(c.test_x, a.test_x)


def test_partition() -> None:
    n, N = 4, 103
    perm = epoch_permutation(N, epoch=3, seed=11)
    assert sorted(perm.tolist()) == list(range(N))
    shards = [replica_shard(perm, n, i) for i in range(n)]
    assert all(len(s) == N // n for s in shards)
    flat = torch.cat(shards).tolist()
    assert len(set(flat)) == len(flat)  # disjoint
    assert torch.equal(epoch_permutation(N, 3, 11), perm)
    assert not torch.equal(epoch_permutation(N, 4, 11), perm)
    assert not torch.equal(epoch_permutation(N, 3, 12), perm)
    with pytest.raises(ValueError):
        replica_shard(perm, n, n)


MEAN = (0.4, 0.5, 0.6)
STD = (0.2, 0.25, 0.3)


def _batch(b: int = 6) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def _manual_norm(x: torch.Tensor) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=torch.float32)
    for c in range(3):
        out[:, c] = (x[:, c].float() / 255.0 - MEAN[c]) / STD[c]
    return out


def test_augment_shape_and_repro() -> None:
    x = _batch()
    a = augment_batch(x, MEAN, STD, seed=5, replica=3, t=7)
    b = augment_batch(x, MEAN, STD, seed=5, replica=3, t=7)
    assert a.shape == x.shape and a.dtype == torch.float32 and a.device == x.device
    assert torch.equal(a, b)
    for other in (dict(seed=6, replica=3, t=7), dict(seed=5, replica=4, t=7), dict(seed=5, replica=3, t=8)):
        assert not torch.equal(a, augment_batch(x, MEAN, STD, **other))  # every counter matters


def test_augment_eval_is_normalisation() -> None:
    x = _batch()
    out = augment_batch(x, MEAN, STD, train=False)
    assert torch.allclose(out, _manual_norm(x), atol=1e-6)


def test_augment_crop_matches_padded_slice() -> None:
    """Each image is the HxW window at (top, left) of its zero-padded self, mirrored where flip."""
    x = _batch(8)
    out = augment_batch(x, MEAN, STD, seed=9, replica=2, t=11)
    top, left, flip = crop_flip_params(9, torch.tensor([2]), 11, 8)
    expected = torch.empty_like(x)
    for n in range(8):
        padded = torch.zeros(3, 40, 40, dtype=torch.uint8)
        padded[:, 4:36, 4:36] = x[n]
        crop = padded[:, top[0, n] : top[0, n] + 32, left[0, n] : left[0, n] + 32]
        expected[n] = crop.flip(-1) if flip[0, n] else crop
    assert torch.equal(out, _manual_norm(expected))
    assert flip.any() and not flip.all()  # both branches exercised with this seed


def test_augment_random_numbers_are_uniform() -> None:
    """Over 64 replicas x 50 iterations x 32 slots: crop offsets uniform on 0..8 (chi-square, 8 degrees
    of freedom, below the 0.999 quantile 26.1), flips at rate 1/2 within 4 binomial standard deviations,
    and top, left and flip not correlated."""
    ids = torch.arange(64)
    draws = [crop_flip_params(3, ids, t, 32) for t in range(50)]
    top = torch.cat([d[0].reshape(-1) for d in draws])
    left = torch.cat([d[1].reshape(-1) for d in draws])
    flip = torch.cat([d[2].reshape(-1) for d in draws]).double()
    m = len(top)
    for v in (top, left):
        assert v.min() == 0 and v.max() == 8
        counts = torch.bincount(v, minlength=9).double()
        chi2 = float(((counts - m / 9) ** 2 / (m / 9)).sum())
        assert chi2 < 26.1, chi2
    assert abs(float(flip.mean()) - 0.5) < 4 * (0.25 / m) ** 0.5
    assert abs(float(np.corrcoef(top.numpy(), left.numpy())[0, 1])) < 0.05
    assert abs(float(np.corrcoef(top.numpy(), flip.numpy())[0, 1])) < 0.05


def test_augment_streams_do_not_depend_on_the_split() -> None:
    """Replicas 0..7 drawn together (1 x 8) or as 4 ranks x 2 give the same numbers: a replica's
    stream is a function of (seed, replica id, iteration) only."""
    whole = crop_flip_params(1, torch.arange(8), 5, 16)
    for r in range(4):
        part = crop_flip_params(1, torch.arange(2 * r, 2 * r + 2), 5, 16)
        for a, b in zip(whole, part):
            assert torch.equal(a[2 * r:2 * r + 2], b)
    imgs = torch.randint(0, 256, (8, 16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batched = augment_replicas(imgs, 1, torch.arange(8), 5, MEAN, STD)
    for i in range(8):  # k replicas at once = each replica alone
        assert torch.equal(batched[i], augment_batch(imgs[i], MEAN, STD, seed=1, replica=i, t=5))


def test_counter_hash_known_values() -> None:
    """Integer arithmetic only: these values are what every device computes (a GPU test compares)."""
    h = counter_hash(0, torch.tensor([0, 1, 2]), 0, torch.tensor([0]), 0)
    assert h.dtype == torch.int64 and bool(((h >= 0) & (h < 2**32)).all())
    assert len(set(h.tolist())) == 3
    assert torch.equal(h, counter_hash(0, torch.tensor([0, 1, 2]), torch.tensor(0), torch.tensor([0]), 0))

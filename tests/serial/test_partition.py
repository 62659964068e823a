"""Claims about the data partitions and the validation split (docs/partitions.md, data/partition.py):
- every partition is disjoint, covers the training set (iid: epoch 0's n equal shards), and each replica's
  stream of mini-batches is the same whether the n replicas run as 1 x 8, 2 x 4 or 4 x 2 (each rank computes
  the partition alone, as in a run);
- Dirichlet(alpha): at a large alpha every replica's label proportions approach the training set's, at a small
  one each replica concentrates on few classes (read from the label histograms);
- shards: each replica holds at most shards_per_replica x (labels per shard) classes;
- a replica smaller than one mini-batch is refused with one `hpc_dsgd: error:` line naming it;
- the validation split is disjoint from the training subset, deterministic, and the same for any split;
- a short non-iid run records the label histograms in its trace, evaluates on the held-out part, and resumes
  in the middle of a phase bitwise."""
import re

import h5py
import numpy as np
import pytest
import torch
from mpi4py import MPI

from hpc_dsgd.checkpoint import list_checkpoints
from hpc_dsgd.config import ConfigError, from_dict
from hpc_dsgd.data import load_digits32
from hpc_dsgd.data.partition import (
    DataPartition,
    epoch_permutation,
    held_out,
    label_histogram,
    make_partition,
    replica_shard,
    validation_indices,
)
from hpc_dsgd.train import run

QUIET = dict(log=lambda *a, **k: None)
B = 8


@pytest.fixture(scope="module")
def digits():
    return load_digits32()


def labels_of(digits) -> np.ndarray:
    return digits.train_y.numpy()


def build(kind, labels, n=8, seed=3, train_index=None, **kw):
    return DataPartition(kind, n, seed, len(labels), B, labels, 10, train_index, **kw)


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shards"])
def test_partition_is_disjoint_covers_and_ignores_the_rank_split(digits, kind):
    y = labels_of(digits)
    p = build(kind, y, alpha=0.3)
    parts = [p.part(i) for i in range(8)]
    flat = np.concatenate(parts)
    assert len(np.unique(flat)) == len(flat)  # disjoint
    if kind == "iid":
        assert len(flat) == (len(y) // 8) * 8 and all(len(q) == len(y) // 8 for q in parts)  # remainder dropped
        np.testing.assert_array_equal(p.epoch_perm(0).numpy(), epoch_permutation(len(y), 0, 3).numpy())  # today's
    else:
        np.testing.assert_array_equal(np.sort(flat), np.arange(len(y)))  # the whole training set
    np.testing.assert_array_equal(p.histogram(), label_histogram(parts, y, 10))
    np.testing.assert_array_equal(p.histogram().sum(axis=1), [len(q) for q in parts])
    # every rank builds its own partition and draws its k replicas' batches: the global map is split-free
    ts = [0, 1, 7, 40, 41]
    maps = {}
    for ranks in (1, 2, 4):
        k = 8 // ranks
        rows = {}
        for r in range(ranks):
            mine = build(kind, y, alpha=0.3)  # computed on that rank alone
            ids = list(range(r * k, (r + 1) * k))
            for t in ts:
                if kind == "iid":  # replica.batch_indices: the shard of the epoch permutation
                    ipe = len(y) // (8 * B)
                    perm = mine.epoch_perm(t // ipe)
                    got = torch.stack([replica_shard(perm, 8, i)[(t % ipe) * B:(t % ipe + 1) * B] for i in ids])
                else:
                    got = mine.batches(ids, t, B)
                for j, i in enumerate(ids):
                    rows[(i, t)] = got[j].numpy()
        maps[ranks] = rows
    for ranks in (2, 4):
        assert maps[ranks].keys() == maps[1].keys()
        for key, v in maps[1].items():
            np.testing.assert_array_equal(maps[ranks][key], v)
    if kind != "iid":  # a replica's batches come from its own part, and it reads all of it before repeating
        for i in range(8):
            m = len(parts[i])
            seen = p.stream(i, 0, m)
            np.testing.assert_array_equal(np.sort(seen), parts[i])
            assert set(maps[1][(i, 7)]) <= set(parts[i].tolist())


def test_dirichlet_alpha_moves_between_iid_and_concentrated(digits):
    y = labels_of(digits)
    overall = np.bincount(y, minlength=10) / len(y)
    big = build("dirichlet", y, n=4, alpha=1e4).histogram()
    frac = big / big.sum(axis=1, keepdims=True)
    assert np.abs(frac - overall).max() < 0.02, np.abs(frac - overall).max()  # the iid proportions
    small = build("dirichlet", y, n=4, alpha=0.05).histogram()
    frac_s = small / small.sum(axis=1, keepdims=True)
    iid = build("iid", y, n=4).histogram()
    frac_i = iid / iid.sum(axis=1, keepdims=True)
    assert frac_s.max(axis=1).mean() > 0.5 > frac_i.max(axis=1).mean()  # one class dominates each replica
    assert np.median((frac_s > 0.05).sum(axis=1)) <= 3 and (frac_i > 0.05).sum(axis=1).min() == 10


@pytest.mark.parametrize("s", [1, 2, 3])
def test_shards_bound_the_classes_per_replica(digits, s):
    y = labels_of(digits)
    n = 8
    p = build("shards", y, n=n, shards_per_replica=s)
    per_shard = max(len(np.unique(c)) for c in np.array_split(np.sort(y), n * s))  # labels per shard
    classes = (p.histogram() > 0).sum(axis=1)
    assert classes.max() <= s * per_shard, (classes, per_shard)
    assert classes.max() < 10  # non-iid: no replica holds every class
    sizes = p.sizes()
    assert sizes.max() - sizes.min() <= s and sizes.sum() == len(y)


def test_replica_smaller_than_a_batch_is_refused_with_one_line(tmp_path, capsys):
    """1437 digits over 16 x 4 shards of 22 or 23: a replica of four 22-image shards (seed 0 makes one) cannot
    fill a batch of 89 (an epoch still has one iteration: 16 x 89 = 1424 <= 1437)."""
    from hpc_dsgd.__main__ import main

    cfg = tmp_path / "c.toml"
    cfg.write_text('dataset = "digits"\nn = 16\nbatch_size = 89\npartition = "shards"\nshards_per_replica = 4\n'
                   f'out_dir = "{tmp_path}"\ndevice = "cpu"\n')
    assert main(["check", str(cfg), "--ranks", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.fullmatch(r"hpc_dsgd: error: partition='shards': replica \d+ holds 88 training "
                                          r"samples, fewer than one mini-batch \(batch_size=89\).*", err[0]), err
    assert main(["check", str(cfg), "--ranks", "4", "--set", "batch_size=8"]) == 0
    out = capsys.readouterr().out
    assert ("partition shards: 16 replicas, 1437 training samples; samples per replica min 88 / median 90 / "
            "max 91") in out
    with pytest.raises(ConfigError, match=r"partition='dirichlet': translation \(multi30k\)"):
        from_dict(dict(dataset="multi30k", model="transformer", partition="dirichlet", data_dir=str(tmp_path),
                       optimizer="adam", lr_schedule="inverse_sqrt", decay_fractions=[], policies=["gossip"]))
    with pytest.raises(ConfigError, match=r"dirichlet_alpha=0.0: need a concentration > 0"):
        from_dict(dict(partition="dirichlet", dirichlet_alpha=0.0))


def test_validation_split_is_disjoint_fixed_and_split_free(digits):
    y = labels_of(digits)
    N = len(y)
    train, held = validation_indices(N, 0.1)
    assert len(held) == held_out(N, 0.1) == 144 and len(held) + len(train) == N
    assert not set(train.tolist()) & set(held.tolist())
    _, again_held = validation_indices(N, 0.1)
    np.testing.assert_array_equal(held, again_held)
    assert set(validation_indices(N, 0.05)[1].tolist()) <= set(held.tolist())  # nested
    assert held_out(50_000, 0.1) == 5000  # CIFAR-10
    for kind in ("iid", "dirichlet", "shards"):
        seen = {}
        for ranks in (1, 2, 4):  # the held-out set depends on neither the split nor n nor the seed
            cfg = from_dict(dict(n=8, batch_size=B, partition=kind, dirichlet_alpha=0.5, validation_split=0.1,
                                 seed=ranks), ranks=ranks)
            part, h = make_partition(cfg, y, 10)
            np.testing.assert_array_equal(h, held)
            batches = part.batches(range(8), 5, B).numpy().ravel() if kind != "iid" else part.epoch_perm(3).numpy()
            drawn = np.concatenate([part.part(i) for i in range(8)] + [batches])
            assert not set(drawn.tolist()) & set(held.tolist())  # training never reads a held-out sample
            seen[ranks] = part.num_train
        assert set(seen.values()) == {N - 144}


def _cfg(tmp, name, **kw):
    base = dict(name=name, out_dir=str(tmp), n=4, dataset="digits", model="small_cnn", batch_size=B, epochs=0.2,
                warmup_epochs=0.0, decay_fractions=[0.5], policies=["allreduce", "gossip"], base_lr=0.1,
                base_batch=32, device="cpu", checkpoint_minutes=0.0, local_eval_samples=40, replica_exec="loop",
                partition="dirichlet", dirichlet_alpha=0.1, validation_split=0.1, seed=5)
    base.update(kw)
    return from_dict(base, 1)


def test_non_iid_run_records_histograms_resumes_and_branches_bitwise(tmp_path, digits):
    """8 iterations (0.2 epochs of 40), phase 2 from iteration 4; the cut stops at 6 (mid-phase) and resumes; a
    dec-phase-2 run branches from the phase-1 checkpoint."""
    comm = MPI.COMM_SELF
    full = run(_cfg(tmp_path, "full"), comm, **QUIET)
    run(_cfg(tmp_path, "cut", max_iterations=6), comm, **QUIET)
    rest = run(_cfg(tmp_path, "cut"), comm, resume="auto", **QUIET)
    assert torch.equal(full.X, rest.X)
    part, held = make_partition(_cfg(tmp_path, "x"), labels_of(digits), 10)  # the independent reference
    losses = {}
    for name in ("full", "cut"):
        with h5py.File(tmp_path / name / "trace.h5", "r") as f:
            np.testing.assert_array_equal(f["partition/label_histogram"][()], part.histogram())
            np.testing.assert_array_equal(f["partition/sizes"][()], part.sizes())
            assert f.attrs["partition"] == "dirichlet" and f.attrs["eval_set"] == "validation"
            assert f.attrs["eval_samples"] == len(held) == 144 and f.attrs["train_samples"] == 1437 - 144
            losses[name] = f["iter/loss"][()]
    assert len(losses["full"]) == 8
    np.testing.assert_array_equal(losses["full"], losses["cut"])
    assert full.metrics["test_acc_avg"] == rest.metrics["test_acc_avg"]
    # dec-phase-2 branched from the run's own phase-1 checkpoint reads the same partition: the same trajectory
    phase1 = [c for c in list_checkpoints(str(tmp_path / "full")) if c.endswith(f"{4:09d}")]
    branched = run(_cfg(tmp_path, "branch", branch_from=phase1[0]), comm, **QUIET)
    assert torch.equal(full.X, branched.X)


def test_translation_validation_is_multi30k_own_validation_set():
    """validation_split > 0 on multi30k: BLEU of its own validation set, training on the whole training set."""
    from hpc_dsgd.bench import synthetic_translation
    from hpc_dsgd.config import Config

    for split, want in ((0.0, "test"), (0.1, "validation")):
        cfg = Config(n=2, dataset="multi30k", model="transformer", batch_size=4, vocab_size=300, d_model=16, heads=2,
                     layers=1, d_ff=32, validation_split=split)
        wl = synthetic_translation(cfg, 24, "cpu")
        assert wl.eval_set == want and wl.trace_attrs()["eval_set"] == want and wl.num_train == 24
        assert wl.bleu_pairs is (wl.val if split else wl.test) and wl.partition.kind == "iid"

"""Which training samples each of the n replicas reads (docs/partitions.md), and the validation split.

Partitions (config key `partition`), each a pure function of (seed, n, the training labels) and its own keys,
computed alike on every rank, so it never depends on the ranks x k split:
  iid        the data-centre setting (the paper): one global shuffle of the training set per epoch, cut into n
             equal contiguous shards (remainder dropped); replica i reads shard i of every epoch's permutation.
  dirichlet  each class c split over the n replicas in proportions p_c ~ Dir(alpha 1_n) (Hsu et al. 2019, as in
             epfml's pcode and decentralizepy): the class's samples, in a seeded random order, are cut at
             floor(N_c cumsum(p_c)). The draw is repeated (the same seeded generator) until every replica holds
             at least one mini-batch, as FedML and pcode redraw small partitions; at most DIRICHLET_MAX_DRAWS.
  shards     McMahan et al. 2017: the training set sorted by label (ties in a seeded random order), cut into
             n * shards_per_replica shards of equal size (+-1), each replica given shards_per_replica of them
             by a seeded random permutation of the shard ids. The shards cover the training set.
A non-iid replica reads its own partition as a stream: pass q of replica i is a permutation of its partition
seeded by (seed, i, q), the passes concatenated; iteration t reads positions [t B, (t+1) B) of that stream.
So a replica cycles through its own partition at its own pace; an epoch is still N / (n B) iterations.

Validation split (config key `validation_split`, a fraction f): a fixed choice of round(f N) training samples
(the first of a permutation with the constant seed VALIDATION_SEED: independent of the run's seed, of n and of
the split, and nested: a larger f holds out a superset) is held out; partitions then cut the rest.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import DataError

PARTITIONS = ("iid", "dirichlet", "shards")
DIRICHLET_MAX_DRAWS = 1000  # redraws of the Dirichlet proportions before a too-small partition is refused
VALIDATION_SEED = 20_191_104  # the held-out set's permutation (a constant: every run holds out the same samples)
_TAG_DIRICHLET, _TAG_SHARDS, _TAG_PASS = 0x44495249, 0x53484152, 0x50415353  # SeedSequence stream tags


class PartitionError(DataError):
    """A partition that cannot train: a replica with fewer samples than one mini-batch."""


def epoch_permutation(num_samples: int, epoch: int, seed: int) -> torch.Tensor:
    """Permutation of ``range(num_samples)`` for ``epoch``; identical on every process."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    # SeedSequence mixes (seed, epoch) into a well-spread 64-bit seed without collisions like seed+epoch
    mixed = int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0])
    gen = torch.Generator(device="cpu")
    gen.manual_seed(mixed)
    return torch.randperm(num_samples, generator=gen)


def replica_shard(perm: torch.Tensor, n: int, i: int) -> torch.Tensor:
    """Replica ``i``'s shard: the i-th of ``n`` contiguous chunks of size floor(N/n) (remainder dropped)."""
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"need n >= 1 and 0 <= i < n, got n={n}, i={i}")
    size = perm.numel() // n
    if size == 0:
        raise ValueError(f"{perm.numel()} samples cannot be split among {n} replicas")
    return perm[i * size : (i + 1) * size]


def _rng(*words: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(words))))


# -- the validation split ----------------------------------------------------------------------------------
def held_out(num_train: int, fraction: float) -> int:
    """How many of num_train training samples validation_split = fraction holds out (round(fraction N))."""
    return int(round(fraction * num_train)) if fraction > 0 else 0


def validation_indices(num_train: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(training subset, held-out set): sorted, disjoint index arrays covering range(num_train)."""
    v = held_out(num_train, fraction)
    perm = _rng(VALIDATION_SEED).permutation(num_train)
    return np.sort(perm[v:]), np.sort(perm[:v])


# -- the partitions (positions 0..N-1 of the training subset) ---------------------------------------------
def _dirichlet(rng: np.random.Generator, alpha: float, shape: tuple[int, int]) -> np.ndarray:
    """Rows ~ Dir(alpha 1): Gamma(alpha) = Gamma(alpha + 1) U^(1/alpha), normalised in log space, so that a
    small alpha (0.01) neither underflows to 0/0 nor depends on numpy's Dirichlet algorithm."""
    log_y = np.log(rng.standard_gamma(alpha + 1.0, shape)) + np.log(1.0 - rng.random(shape)) / alpha
    y = np.exp(log_y - log_y.max(axis=1, keepdims=True))
    return y / y.sum(axis=1, keepdims=True)


def dirichlet_partition(labels: np.ndarray, n: int, alpha: float, seed: int, num_classes: int,
                        min_size: int = 1) -> tuple[list[np.ndarray], int]:
    """(parts, draws): part i = the sorted positions replica i holds; draws = proportion draws made (>= 1).
    PartitionError if no draw of DIRICHLET_MAX_DRAWS gives every replica min_size samples."""
    rng = _rng(seed, n, _TAG_DIRICHLET)
    counts = np.bincount(labels, minlength=num_classes)[:num_classes]
    by_class = np.split(np.argsort(labels, kind="stable"), np.cumsum(counts)[:-1])  # class c's positions, ascending
    members = [rng.permutation(m) for m in by_class]
    worst = (-1, -1)
    for draw in range(1, DIRICHLET_MAX_DRAWS + 1):
        p = _dirichlet(rng, alpha, (num_classes, n))  # (C, n): class c's proportions over the replicas
        cuts = np.floor(np.cumsum(p, axis=1) * counts[:, None]).astype(np.int64)
        cuts[:, -1] = counts  # the last cut is the class size (cumsum may end at 0.999...)
        cuts = np.concatenate([np.zeros((num_classes, 1), np.int64), np.maximum.accumulate(cuts, axis=1)], axis=1)
        sizes = np.diff(cuts, axis=1).sum(axis=0)
        if sizes.min() >= min_size:
            parts = [np.sort(np.concatenate([members[c][cuts[c, i]:cuts[c, i + 1]] for c in range(num_classes)]))
                     for i in range(n)]
            return parts, draw
        if sizes.min() > worst[1]:
            worst = (int(sizes.argmin()), int(sizes.min()))
    raise PartitionError(
        f"partition='dirichlet' (dirichlet_alpha={alpha:g}, seed={seed}, n={n}): replica {worst[0]} holds only "
        f"{worst[1]} training samples, fewer than one mini-batch (batch_size={min_size}), in the best of "
        f"{DIRICHLET_MAX_DRAWS} draws: raise dirichlet_alpha, lower batch_size or n")


def shard_partition(labels: np.ndarray, n: int, shards_per_replica: int, seed: int) -> list[np.ndarray]:
    """Part i = the sorted positions of replica i's shards_per_replica label-sorted shards."""
    rng = _rng(seed, n, _TAG_SHARDS)
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]  # by label; within a label, the seeded random order
    shards = np.array_split(order, n * shards_per_replica)
    owner = rng.permutation(n * shards_per_replica)
    s = shards_per_replica
    return [np.sort(np.concatenate([shards[j] for j in owner[i * s:(i + 1) * s]])) for i in range(n)]


def label_histogram(parts: list[np.ndarray], labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(n, classes) int64: row i counts the labels of part i (indices into `labels`)."""
    return np.stack([np.bincount(labels[p], minlength=num_classes)[:num_classes] for p in parts]).astype(np.int64)


class DataPartition:
    """The n replicas' training data: which samples each reads at every iteration (module docstring).

    labels: the labels of the WHOLE training set (None for data without labels: translation, iid only);
    train_index: the training subset's indices into it (None = all of it; a validation split holds some out).
    Every index this class returns is an index into the whole training set."""

    def __init__(self, kind: str, n: int, seed: int, num_train: int, batch_size: int, labels: np.ndarray | None = None,
                 num_classes: int = 0, train_index: np.ndarray | None = None, alpha: float = 0.5,
                 shards_per_replica: int = 2):
        if kind not in PARTITIONS:
            raise ValueError(f"partition={kind!r}: choose one of {', '.join(PARTITIONS)}")
        if kind != "iid" and labels is None:
            raise PartitionError(f"partition={kind!r} needs class labels; this data set has none: use 'iid'")
        self.kind, self.n, self.seed, self.batch_size = kind, n, seed, batch_size
        self.labels, self.num_classes = labels, num_classes
        self.train_index = None if train_index is None else np.asarray(train_index, dtype=np.int64)
        self.num_train = num_train if train_index is None else len(self.train_index)
        self.draws = 0
        self.parts: list[np.ndarray] | None = None  # non-iid: every replica's samples (whole-set indices)
        if kind != "iid":
            sub = labels if self.train_index is None else labels[self.train_index]
            if kind == "dirichlet":
                pos, self.draws = dirichlet_partition(sub, n, alpha, seed, num_classes, batch_size)
            else:
                pos = shard_partition(sub, n, shards_per_replica, seed)
            self.parts = [self._absolute(p) for p in pos]
            self.sizes_ = np.array([len(p) for p in self.parts])
            small = np.flatnonzero(self.sizes_ < batch_size)
            if len(small):
                i = int(small[0])
                raise PartitionError(
                    f"partition={kind!r}: replica {i} holds {self.sizes_[i]} training samples, fewer than one "
                    f"mini-batch (batch_size={batch_size}); {len(small)} of {n} replicas are that small: lower "
                    f"batch_size or n" + (", or shards_per_replica" if kind == "shards" else ""))
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _absolute(self, pos) -> np.ndarray:
        pos = np.asarray(pos, dtype=np.int64)
        return pos if self.train_index is None else self.train_index[pos]

    # -- iid ------------------------------------------------------------------------------------------
    def epoch_perm(self, epoch: int) -> torch.Tensor:
        """iid: the epoch's permutation of the training subset, as whole-set indices (int64, CPU)."""
        perm = epoch_permutation(self.num_train, epoch, self.seed)
        return perm if self.train_index is None else torch.from_numpy(self.train_index)[perm]

    # -- non-iid: each replica's stream --------------------------------------------------------------
    def _pass(self, i: int, q: int) -> np.ndarray:
        """Pass q over replica i's part: its samples in the order of a permutation seeded by (seed, i, q)."""
        key = (i, q)
        if key not in self._perms:
            for old in [k for k in self._perms if k[0] == i and k[1] < q - 1]:  # keep replica i's last two passes
                del self._perms[old]
            mixed = int(np.random.SeedSequence([self.seed, _TAG_PASS, i, q]).generate_state(1, dtype=np.uint64)[0])
            perm = torch.randperm(len(self.parts[i]), generator=torch.Generator().manual_seed(mixed)).numpy()
            self._perms[key] = self.parts[i][perm]
        return self._perms[key]

    def stream(self, i: int, start: int, count: int) -> np.ndarray:
        """Positions [start, start + count) of replica i's stream (passes over its part, concatenated)."""
        m = len(self.parts[i])
        j = np.arange(start, start + count, dtype=np.int64)
        q, off = j // m, j % m
        return np.concatenate([self._pass(i, int(p))[off[q == p]] for p in np.unique(q)])

    def batches(self, replicas, t: int, batch_size: int) -> torch.Tensor:
        """(k, B) whole-set indices of the replicas' mini-batches at iteration t (non-iid partitions)."""
        return torch.from_numpy(np.stack([self.stream(int(i), t * batch_size, batch_size) for i in replicas]))

    # -- what the trace and the check command report ------------------------------------------------
    def part(self, i: int) -> np.ndarray:
        """Replica i's samples (whole-set indices): its partition, or for iid its shard of epoch 0."""
        if self.parts is not None:
            return self.parts[i]
        return replica_shard(self.epoch_perm(0), self.n, i).numpy()

    def sizes(self) -> np.ndarray:
        return np.array([len(self.part(i)) for i in range(self.n)]) if self.parts is None else self.sizes_

    def histogram(self) -> np.ndarray:
        """(n, classes) label counts of every replica's part (iid: of its epoch-0 shard)."""
        if self.labels is None:
            return np.zeros((self.n, 0), dtype=np.int64)
        perm0 = self.epoch_perm(0).numpy() if self.parts is None else None
        size = self.num_train // self.n
        parts = self.parts or [perm0[i * size:(i + 1) * size] for i in range(self.n)]
        return label_histogram(parts, np.asarray(self.labels), self.num_classes)

    def summary(self) -> str:
        """One line: partition sizes (min/median/max) and classes per replica (min/median/max)."""
        sizes, hist = self.sizes(), self.histogram()
        line = (f"partition {self.kind}: {self.n} replicas, {self.num_train} training samples; samples per replica "
                f"min {sizes.min()} / median {np.median(sizes):g} / max {sizes.max()}")
        if hist.shape[1]:
            cls = (hist > 0).sum(axis=1)
            line += (f"; classes per replica min {cls.min()} / median {np.median(cls):g} / max {cls.max()} "
                     f"of {self.num_classes}")
        if self.kind == "dirichlet":
            line += f"; {self.draws} draw(s)"
        return line


def check_data_keys(cfg, num_train: int | None = None) -> None:
    """The partition and validation keys (config.validate calls it with the values alone; preflight with the
    training set's size, num_train, once known). PartitionError (a ValueError, as the config's errors) naming the
    key and what would be right."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise PartitionError(msg)

    need(cfg.partition in PARTITIONS, f"partition={cfg.partition!r}: choose one of {', '.join(PARTITIONS)}")
    need(cfg.dirichlet_alpha > 0, f"dirichlet_alpha={cfg.dirichlet_alpha}: need a concentration > 0 "
         "(0.1: few classes per replica; 100: close to iid)")
    need(cfg.shards_per_replica >= 1, f"shards_per_replica={cfg.shards_per_replica}: need >= 1 (McMahan et al.: 2)")
    need(0 <= cfg.validation_split < 1, f"validation_split={cfg.validation_split}: need a fraction of the training "
         "set in [0, 1): 0 = off (evaluate on the test set), e.g. 0.1 = 5,000 CIFAR-10 images")
    if cfg.dataset == "multi30k":
        need(cfg.partition == "iid", f"partition={cfg.partition!r}: translation (multi30k) has no class labels to "
             "partition by; only partition = 'iid'")
        return  # multi30k's validation set is its own (val.en/.de): nothing is held out of training
    if num_train is None:
        return
    v = held_out(num_train, cfg.validation_split)
    need(cfg.validation_split == 0 or v >= 1, f"validation_split={cfg.validation_split}: holds out round("
         f"{cfg.validation_split} x {num_train}) = 0 samples of {cfg.dataset}: use at least {1 / num_train:.2g}")
    rest, nb = num_train - v, cfg.n * cfg.batch_size
    need(rest >= nb, f"validation_split={cfg.validation_split}: the {rest} training samples left after holding out "
         f"{v} of {num_train} are fewer than n x batch_size = {nb}: an epoch would have no iteration; lower "
         "validation_split, n or batch_size")
    if cfg.partition == "shards":
        need(cfg.n * cfg.shards_per_replica <= rest, f"shards_per_replica={cfg.shards_per_replica}: n x "
             f"shards_per_replica = {cfg.n * cfg.shards_per_replica} shards exceed the {rest} training samples")


def make_partition(cfg, labels: np.ndarray, num_classes: int) -> tuple[DataPartition, np.ndarray | None]:
    """The run's partition of a labelled training set (labels: all of it, numpy) and its held-out set (sorted
    indices; None when validation_split = 0). PartitionError if a replica's part is smaller than a batch."""
    train_index = held = None
    if cfg.validation_split > 0:
        train_index, held = validation_indices(len(labels), cfg.validation_split)
    part = DataPartition(cfg.partition, cfg.n, cfg.seed, len(labels), cfg.batch_size, labels, num_classes,
                         train_index, cfg.dirichlet_alpha, cfg.shards_per_replica)
    return part, held

"""Learning-rate schedule and phases (paper Sec. 4.1-4.2).

Iteration t (0-based) uses lr(t). Warm-up: linear from warmup_lr to the linearly scaled peak over
the first warmup_epochs. Decay: lr /= decay_factor once the samples seen reach each fraction of the
total, i.e. from the first iteration t >= fraction * total_iters. Phase k (1-based) is the stretch
between the (k-1)-th and k-th decay; warm-up belongs to phase 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    iters_per_epoch: int  # floor(N_train / (n * batch_size)): every replica sees a fresh shard
    total_iters: int
    warmup_iters: int
    warmup_lr: float
    peak_lr: float
    decay_iters: tuple[int, ...]  # first iteration of phase 2, 3, ...
    decay_factor: float

    @classmethod
    def from_config(cls, cfg, num_train: int) -> "Schedule":
        ipe = num_train // (cfg.n * cfg.batch_size)
        if ipe < 1:
            raise ValueError(f"batch_size={cfg.batch_size} x n={cfg.n} = {cfg.n * cfg.batch_size} exceeds the "
                             f"{num_train} training images: an epoch would have no iteration; lower n or batch_size")
        total = max(1, round(cfg.epochs * ipe))
        return cls(ipe, total, round(cfg.warmup_epochs * ipe), cfg.warmup_lr, cfg.peak_lr(),
                   tuple(math.ceil(f * total) for f in cfg.decay_fractions), cfg.decay_factor)

    def phase(self, t: int) -> int:
        return 1 + sum(t >= d for d in self.decay_iters)

    def lr(self, t: int) -> float:
        if t < self.warmup_iters:
            return self.warmup_lr + (self.peak_lr - self.warmup_lr) * t / self.warmup_iters
        return self.peak_lr / self.decay_factor ** (self.phase(t) - 1)

    def epoch(self, t: int) -> float:
        """Epochs completed after iteration t."""
        return (t + 1) / self.iters_per_epoch

    def phase_bounds(self) -> list[tuple[int, int]]:
        """[first, last) iteration of every phase."""
        edges = (0,) + self.decay_iters + (self.total_iters,)
        return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]

"""Learning-rate schedules and phases (paper Sec. 4.1-4.2).

step (image classification):

Iteration t (0-based) uses lr(t). Warm-up: linear from warmup_lr to the linearly scaled peak over
the first warmup_epochs. Decay: lr /= decay_factor once the samples seen reach each fraction of the
total, i.e. from the first iteration t >= fraction * total_iters. Phase k (1-based) is the stretch
between the (k-1)-th and k-th decay; warm-up belongs to phase 1.

inverse_sqrt (translation, Vaswani et al. 2017 Eq. 3): lr(t) = lr_scale * d_model^-0.5 *
min(s^-0.5, s * w^-1.5) at step s = t + 1, with w = warmup_steps at mini-batch 64 scaled down linearly
by the global mini-batch n * batch_size (Kong et al. 2021, Sec. 4.2). No decay: the whole of training
is one phase (Sec. 3.3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


def scaled_warmup_steps(n: int, local_batch: int, warmup_at_64: int = 4000) -> int:
    """Warm-up steps for global mini-batch n * local_batch: 4000 at mini-batch 64, scaled down linearly
    with the global mini-batch (Kong et al. 2021, Sec. 4.2); at least 1."""
    return max(1, round(warmup_at_64 * 64 / (n * local_batch)))


def inverse_sqrt_lr(step: int, d_model: int, warmup: int, scale: float = 1.0) -> float:
    """lr(step) = scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), step counted from 1."""
    step = max(step, 1)
    return scale * d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


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
                             f"{num_train} training samples: an epoch would have no iteration; lower n or batch_size")
        total = max(1, round(cfg.epochs * ipe))
        if cfg.lr_schedule == "inverse_sqrt":
            warm = scaled_warmup_steps(cfg.n, cfg.batch_size, cfg.warmup_steps)
            return InverseSqrtSchedule(ipe, total, warm, 0.0, 0.0, (), 1.0, d_model=cfg.d_model, scale=cfg.lr_scale)
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


@dataclass(frozen=True)
class InverseSqrtSchedule(Schedule):
    """One phase; lr(t) = scale * d_model^-0.5 * min((t+1)^-0.5, (t+1) * warmup_iters^-1.5)."""

    d_model: int = 256
    scale: float = 1.0

    def lr(self, t: int) -> float:
        return inverse_sqrt_lr(t + 1, self.d_model, self.warmup_iters, self.scale)

"""Data-center i.i.d. partition: one global shuffle per epoch, split into equal contiguous shards."""

from __future__ import annotations

import numpy as np
import torch


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

"""Gossip-only consensus simulation (paper Sec. 5, Figure 4): pure numpy, no MPI, no training.

Start from x_i ~ U[0, 10] (i.i.d. per replica and coordinate), apply X <- W_t X for t = 0, 1, ...
with the mixing matrices of `hpc_dsgd.topology`, and record the consensus distance
Xi_t = sqrt((1/n) sum_i ||xbar - x_i||^2) (Sec. 3, definition of Xi_t^2). xbar never changes because
every W_t is doubly stochastic. For a fixed W, Xi_t <= (1 - p)^(t/2) Xi_0 (Assumption 1, eq. 2).
"""
from __future__ import annotations

import numpy as np

from ..topology import Topology

FIG4_TOPOLOGIES = ("ring", "torus", "exponential", "one_peer_exponential", "random_matching")


def consensus_distance(X: np.ndarray) -> float:
    """Xi = sqrt(mean_i ||xbar - x_i||^2) for X of shape (n, d)."""
    D = X - X.mean(axis=0, keepdims=True)
    return float(np.sqrt((D * D).sum() / X.shape[0]))


def simulate_consensus(topology_name: str, n: int = 32, steps: int = 50, d: int = 1, seed: int = 0,
                       shape: tuple[int, int] | None = None) -> np.ndarray:
    """Xi_t for t = 0..steps (length steps + 1) of pure gossip on `topology_name` over n replicas.

    `seed` draws the initial values and, for random matching, the matchings."""
    if steps < 0 or d < 1:
        raise ValueError(f"steps={steps}, d={d}: need steps >= 0 and d >= 1")
    topo = Topology(topology_name, n, seed=seed, shape=shape)
    X = np.random.default_rng(seed).uniform(0.0, 10.0, size=(n, d))  # (n, d), paper Fig. 4
    xi = np.empty(steps + 1)
    xi[0] = consensus_distance(X)
    for t in range(steps):
        X = topo.W(t) @ X  # X <- W_t X
        xi[t + 1] = consensus_distance(X)
    return xi


def simulate_all(n: int = 32, steps: int = 50, d: int = 1, seed: int = 0,
                 topologies: tuple[str, ...] = FIG4_TOPOLOGIES) -> dict[str, np.ndarray]:
    """Figure 4's curves: {topology: Xi_0..Xi_steps}; a topology that cannot be built at n is left out
    (e.g. torus at prime n)."""
    from ..topology import TopologyError

    out = {}
    for name in topologies:
        try:
            out[name] = simulate_consensus(name, n, steps, d, seed)
        except TopologyError:
            continue
    return out

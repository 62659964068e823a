"""Communication topologies as pure functions of n: mixing matrices W_t, spectral gap, p.

numpy only: no MPI, no torch. Rows/columns index replicas 0..n-1.
Convention (paper Sec. 3.1, eq. D-SGD): x_i <- sum_j w_ij x_j, i.e. X <- W X with X of shape
(n, d), row i = replica i. Every W_t built here is doubly stochastic (Assumption 1), except the directed
random graph's: `directed_random` is column-stochastic only (push-sum, algorithms/push_sum.py, de-biases it).

Directed graphs for push-sum (Assran et al. 2019, SGP), W_t = P_t column-stochastic (sender j keeps
p_jj, sends p_ij to i; x <- P_t x):
  directed_exponential  SGP's one-peer directed exponential graph: at step t replica j keeps 1/2 and sends 1/2
                        to j + 2^(t mod m) (mod n), m = ceil(log2 n). P_t = (I + S^h)/2 is circulant, hence
                        doubly stochastic, and equals one_peer_exponential's W_t (i receives from i - 2^(t mod m)).
  directed_random       at step t every replica j keeps 1/2 and sends 1/2 to one out-peer o_t(j) != j drawn
                        uniformly from counters (seed, t) (every rank draws the same): P_t = (I + sum_j e_o(j)
                        e_j^T)/2. Columns sum to 1, rows to (1 + indeg_t(i))/2: not doubly stochastic, so
                        Assumption 1's p does not apply (push_sum_contraction measures push-sum's rate instead).

Mixing parameter (Assumption 1, eq. 2): the largest p with ||W X - Xbar||_F^2 <= (1-p)||X - Xbar||_F^2
for all X, i.e. 1 - p = sigma_max(W - J)^2 with J = 11^T/n. For symmetric W with spectral gap
rho = 1 - max_{i>=2} |lambda_i(W)| this is the paper's p = 1 - (1 - rho)^2. For a non-symmetric
(directed, circulant) W we report rho := 1 - sigma_max(W - J), so p = 1 - (1 - rho)^2 holds for both.
For time-varying topologies p is the expected one-step contraction E||W_t X - Xbar||^2 <= (1-p)||X - Xbar||^2:
for random matching over the matching distribution (estimated by sampling); for the one-peer
exponential graph over a step drawn uniformly from its cycle of m = ceil(log2 n) matrices (exact).
A single one-peer step can contract far less (a hop of n/2 leaves half the disagreement), while a
full cycle averages exactly when n is a power of two: `p_cycle` reports that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

TOPOLOGIES = ("ring", "torus", "complete", "exponential", "one_peer_exponential", "random_matching",
              "directed_exponential", "directed_random")
NOT_DOUBLY_STOCHASTIC = ("directed_random",)  # column-stochastic only: push-sum's (algorithm = "push_sum")
ONE_PEER_CYCLE = ("one_peer_exponential", "directed_exponential")  # the same cycle of m = ceil(log2 n) matrices
RANDOM_PER_STEP = ("random_matching", "directed_random")  # a new W_t drawn from (seed, t) at every step
TIME_VARYING = ONE_PEER_CYCLE + RANDOM_PER_STEP
DIRECTED = ("directed_exponential", "directed_random")  # push-sum's graphs (x <- P_t x, P_t column-stochastic)


def spectral_gap_of(p: float) -> float:
    """rho with p = 1 - (1 - rho)^2; NaN where p is (a topology Assumption 1 does not cover)."""
    return 1.0 - math.sqrt(max(0.0, 1.0 - p)) if math.isfinite(p) else math.nan


class TopologyError(ValueError):
    """A topology that cannot be built for the requested n (the message says what would work)."""


def _uniform_from_in_neighbours(n: int, in_nbrs: list[list[int]]) -> np.ndarray:
    """W with w_ii = w_ij = 1/(1+deg) over the distinct in-neighbours j of i (self excluded)."""
    W = np.zeros((n, n))
    for i, nb in enumerate(in_nbrs):
        s = sorted(set(nb) - {i})
        w = 1.0 / (len(s) + 1)
        W[i, i] = w
        W[i, s] = w
    return W


def ring_matrix(n: int) -> np.ndarray:
    """Ring: each replica averages itself and its two neighbours (1/3 each; n=2: 1/2, n=1: 1)."""
    return _uniform_from_in_neighbours(n, [[(i - 1) % n, (i + 1) % n] for i in range(n)])


def torus_shape(n: int, shape: tuple[int, int] | None = None) -> tuple[int, int]:
    """Sides (a, b) with a*b = n, a, b >= 2; the most square factorisation unless given."""
    if shape is not None:
        a, b = int(shape[0]), int(shape[1])
        if a * b != n or a < 2 or b < 2:
            raise TopologyError(
                f"torus_shape={list(shape)} does not fit n={n}: need two sides >= 2 whose product is n"
                + (f" (e.g. {list(torus_shape(n))})" if _has_torus(n) else "; use topology 'ring' for this n"))
        return a, b
    if not _has_torus(n):
        raise TopologyError(f"a 2-D torus needs n = a*b with a, b >= 2; n={n} has no such factorisation "
                            f"(choose n in 4, 6, 8, 9, ... or use topology 'ring')")
    a = max(d for d in range(2, math.isqrt(n) + 1) if n % d == 0)
    return a, n // a


def _has_torus(n: int) -> bool:
    return any(n % d == 0 for d in range(2, math.isqrt(n) + 1))


def torus_matrix(n: int, shape: tuple[int, int] | None = None) -> np.ndarray:
    """2-D periodic torus a x b (row-major): self and the 4 grid neighbours (distinct ones), equal weights."""
    a, b = torus_shape(n, shape)
    nbrs = []
    for i in range(n):
        r, c = divmod(i, b)
        nbrs.append([((r - 1) % a) * b + c, ((r + 1) % a) * b + c, r * b + (c - 1) % b, r * b + (c + 1) % b])
    return _uniform_from_in_neighbours(n, nbrs)


def complete_matrix(n: int) -> np.ndarray:
    """Complete graph, W = 11^T/n: exact averaging (what All-Reduce computes)."""
    return np.full((n, n), 1.0 / n)


def exponential_hops(n: int) -> list[int]:
    """Hop distances 2^0, 2^1, ... below n (Assran et al. 2019)."""
    hops, h = [], 1
    while h < n:
        hops.append(h)
        h *= 2
    return hops


def exponential_matrix(n: int) -> np.ndarray:
    """Static exponential graph: i receives from i - 2^k (mod n) for all 2^k < n, uniform weights.

    Directed and circulant, hence doubly stochastic (not symmetric for n > 2)."""
    return _uniform_from_in_neighbours(n, [[(i - h) % n for h in exponential_hops(n)] for i in range(n)])


def one_peer_exponential_matrix(n: int, t: int) -> np.ndarray:
    """Time-varying one-peer exponential graph: at step t, i averages with i - 2^(t mod m), m = #hops.

    W_t = (I + P^h)/2 with P the cyclic shift: doubly stochastic, one peer per replica per step."""
    hops = exponential_hops(n)
    if not hops:
        return np.eye(n)
    h = hops[t % len(hops)]
    W = 0.5 * np.eye(n)
    for i in range(n):
        W[i, (i - h) % n] += 0.5
    return W


def random_matching_pairs(n: int, t: int, seed: int) -> list[tuple[int, int]]:
    """The random perfect matching of step t, drawn from (seed, t) so every rank draws the same one.

    n odd: one replica stays unmatched this step."""
    rng = np.random.default_rng([int(seed), int(t), 0x6D61746368])  # 'match'
    perm = rng.permutation(n)
    return [(int(min(perm[2 * k], perm[2 * k + 1])), int(max(perm[2 * k], perm[2 * k + 1])))
            for k in range(n // 2)]


def random_matching_matrix(n: int, t: int, seed: int) -> np.ndarray:
    """Random matching: matched pairs average (1/2, 1/2); an unmatched replica keeps its value."""
    W = np.eye(n)
    for i, j in random_matching_pairs(n, t, seed):
        W[i, i] = W[j, j] = W[i, j] = W[j, i] = 0.5
    return W


def directed_random_peers(n: int, t: int, seed: int) -> np.ndarray:
    """The out-peer o_t(j) != j of every replica j at step t, drawn from (seed, t): every rank draws the same."""
    rng = np.random.default_rng([int(seed), int(t), 0x70757368])  # 'push'
    return (np.arange(n) + rng.integers(1, n, size=n)) % n


def directed_random_matrix(n: int, t: int, seed: int) -> np.ndarray:
    """Column-stochastic P_t: replica j keeps 1/2 and sends 1/2 to o_t(j) (n = 1: the identity)."""
    if n == 1:
        return np.eye(1)
    P = 0.5 * np.eye(n)
    for j, o in enumerate(directed_random_peers(n, t, seed)):
        P[o, j] += 0.5
    return P


def mixing_parameter(W: np.ndarray) -> float:
    """p of Assumption 1 for one fixed W: 1 - sigma_max(W - 11^T/n)^2."""
    n = W.shape[0]
    s = np.linalg.norm(W - np.full((n, n), 1.0 / n), ord=2)
    return float(max(0.0, 1.0 - s * s))


@dataclass
class Topology:
    """A (possibly time-varying) communication topology over n replicas."""

    name: str
    n: int
    seed: int = 0  # random matching: the seed all ranks share
    shape: tuple[int, int] | None = None  # torus: (a, b)
    lazy: bool = False  # lazy mixing: every W_t replaced by (I + W_t)/2 (eigenvalues (1 + lambda)/2 >= 0)
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.name not in TOPOLOGIES:
            raise TopologyError(f"topology={self.name!r} is unknown; choose one of {', '.join(TOPOLOGIES)}")
        if not isinstance(self.n, int) or self.n < 1:
            raise TopologyError(f"n={self.n!r} replicas: need an integer n >= 1")
        if self.name == "torus":
            self.shape = torus_shape(self.n, self.shape)

    @property
    def time_varying(self) -> bool:
        return self.name in TIME_VARYING

    @property
    def doubly_stochastic(self) -> bool:
        """Every W_t has unit row and column sums (all but directed_random, which is column-stochastic only)."""
        return self.name not in NOT_DOUBLY_STOCHASTIC

    @property
    def period(self) -> int | None:
        """Number of distinct W_t cycled through (1 for fixed graphs, None for random ones)."""
        if self.name in ONE_PEER_CYCLE:
            return max(1, len(exponential_hops(self.n)))
        return None if self.name in RANDOM_PER_STEP else 1

    def W(self, t: int = 0) -> np.ndarray:
        """Mixing matrix of gossip step t (float64, n x n; doubly stochastic, directed_random column-stochastic)."""
        key = t % self.period if self.period else t
        if key in self._cache:
            return self._cache[key]
        n = self.n
        if self.name == "ring":
            W = ring_matrix(n)
        elif self.name == "torus":
            W = torus_matrix(n, self.shape)
        elif self.name == "complete":
            W = complete_matrix(n)
        elif self.name == "exponential":
            W = exponential_matrix(n)
        elif self.name in ONE_PEER_CYCLE:
            W = one_peer_exponential_matrix(n, key)  # directed_exponential: the same P_t (module docstring)
        else:
            W = (random_matching_matrix if self.name == "random_matching" else directed_random_matrix)(n, t, self.seed)
            return 0.5 * (np.eye(n) + W) if self.lazy else W  # not cached: a new matching every step
        if self.lazy:
            W = 0.5 * (np.eye(n) + W)
        W.setflags(write=False)
        self._cache[key] = W
        return W

    def p(self, samples: int = 200) -> float:
        """Mixing parameter p (Assumption 1).

        Fixed graph: exact. Time-varying: 1 - lambda_max(E[(W-J)^T (W-J)]), the expectation over a
        uniformly drawn step of the one-peer cycle (exact), or over `samples` random matchings.
        directed_random: NaN (Assumption 1 is for doubly stochastic W; see push_sum_contraction)."""
        n = self.n
        if n == 1:
            return 1.0
        if not self.doubly_stochastic:
            return math.nan
        if self.time_varying:
            J = np.full((n, n), 1.0 / n)
            Ws = ([self.W(t) for t in range(self.period)] if self.period
                  else [random_matching_matrix(n, t, self.seed + 7919) for t in range(samples)])
            if self.lazy and self.name == "random_matching":
                Ws = [0.5 * (np.eye(n) + W) for W in Ws]
            M = sum((W - J).T @ (W - J) for W in Ws) / len(Ws)
            return float(max(0.0, 1.0 - np.linalg.eigvalsh(M).max()))
        return mixing_parameter(self.W(0))

    def p_cycle(self) -> float:
        """One-peer exponential: p of W_{m-1} ... W_0 (exact averaging when n is a power of two)."""
        P = np.eye(self.n)
        for t in range(self.period or 1):
            P = self.W(t) @ P
        return mixing_parameter(P)

    def spectral_gap(self) -> float:
        """rho with p = 1 - (1 - rho)^2 (the usual 1 - |lambda_2| for a symmetric W); NaN where p is."""
        return spectral_gap_of(self.p())

    def push_sum_contraction(self, steps: int = 60, trials: int = 4) -> float:
        """Measured per-step contraction r of push-sum consensus on this graph: from random X_0 (seeded), x and
        w = 1 mixed by W_t for t < steps, z = x / w; r = geometric mean over trials of
        (||Z_steps - 1 xbar_0^T||_F / ||X_0 - 1 xbar_0^T||_F)^(1/steps) (push-sum's z tends to the average of
        X_0 on any column-stochastic sequence that mixes). An empirical figure, not a bound; defined for every
        topology (for a doubly stochastic one w stays 1 and this is plain gossip's measured rate)."""
        n = self.n
        if n == 1:
            return 0.0
        rng = np.random.default_rng([int(self.seed), 0x72617465])  # 'rate'
        logs = []
        for _ in range(trials):
            X0 = rng.standard_normal((n, 4))
            X, w = X0.copy(), np.ones(n)
            for t in range(steps):
                Wt = self.W(t)
                X, w = Wt @ X, Wt @ w
            e0 = np.linalg.norm(X0 - X0.mean(0))
            e = np.linalg.norm(X / w[:, None] - X0.mean(0))
            logs.append((math.log(max(e, 1e-300)) - math.log(e0)) / steps)
        return float(math.exp(sum(logs) / len(logs)))

    def in_neighbours(self, i: int, t: int = 0) -> list[int]:
        """Replicas j != i with w_ij > 0 at step t."""
        row = self.W(t)[i]
        return [j for j in np.flatnonzero(row) if j != i]

    def describe(self) -> str:
        extra = f" {self.shape[0]}x{self.shape[1]}" if self.name == "torus" else ""
        return f"{self.name}{extra} n={self.n}" + (" lazy (I+W)/2" if self.lazy else "")

    @property
    def symmetric(self) -> bool:
        """Every W_t is symmetric (ring, torus, complete, random matching; not the directed graphs)."""
        return self.name in ("ring", "torus", "complete", "random_matching")

    def lambda_min(self) -> float:
        """Smallest eigenvalue of the fixed symmetric W (D2's condition lambda_min > -1/3, Tang et al. 2018)."""
        return float(np.linalg.eigvalsh(self.W(0)).min())


def gossip_steps_needed(p: float, xi_now: float, xi_target: float) -> int:
    """Lemma 3.4 planner: smallest k with (1-p)^(k/2) xi_now <= xi_target (0 if already there).

    Repeated gossip: p_k >= 1 - (1-p)^k, so Xi^2 shrinks at least by (1-p)^k in expectation."""
    if xi_now <= xi_target:
        return 0
    if p >= 1.0:
        return 1
    if p <= 0.0 or xi_target <= 0.0:
        return math.inf  # type: ignore[return-value]
    return math.ceil(2.0 * math.log(xi_target / xi_now) / math.log(1.0 - p))

"""Claims about the algorithms (hpc_dsgd/algorithms/, docs/algorithms.md), in one process:
- each algorithm's trajectory (D-SGD, gradient tracking with and without momentum, D2, quasi-global momentum,
  gossip_every = 2, dec-phase-2 runs of gradient tracking and D2, and push-sum on the directed random graph,
  12 iterations, with Nesterov momentum and with gossip_every = 2) on 1 rank x 4 replicas equals the dense
  reference of its textbook equations (tests/alg_reference.py);
- a run stopped in the middle of a phase and resumed equals the uninterrupted run bitwise, for each algorithm,
  and its checkpoint holds the algorithm's companion blocks;
- on linear regression with heterogeneous local optima, gradient tracking and D2 reach the global optimum and
  D-SGD keeps a bias (the package's algorithm classes and Gossiper, in-process);
- the refusals: D2 on lambda_min(W) <= -1/3, and each combination that makes no sense, one line each."""
import json
import os
import types

import numpy as np
import pytest
import torch
from alg_reference import CASES, reference, small  # tests/alg_reference.py
from mpi4py import MPI

from hpc_dsgd.algorithms import ALGORITHMS
from hpc_dsgd.checkpoint import list_checkpoints
from hpc_dsgd.comm import Gossiper, make_world
from hpc_dsgd.config import ConfigError, from_dict
from hpc_dsgd.consensus import Context, GossipCounter, GossipPolicy
from hpc_dsgd.optim import LocalSGD
from hpc_dsgd.topology import Topology
from hpc_dsgd.train import run

QUIET = dict(log=lambda *a, **k: None)
ITERS = 5
PUSH_SUM_ITERS = 12  # push-sum's cases: a dozen iterations on the directed random graph (w varies)


@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_equals_dense_reference(tmp_path, case):
    iters = PUSH_SUM_ITERS if case.startswith("push_sum") else ITERS
    cfg = from_dict(small(tmp_path, max_iterations=iters, **CASES[case]), ranks=1)
    res = run(cfg, MPI.COMM_SELF, **QUIET)
    X, ref = res.X.double().numpy(), reference(cfg, iters)
    if cfg.policies[-1] != "allreduce":  # the replicas differ: not a disguised average
        assert np.abs(X[:, :res.d] - X[0, :res.d]).max() > 1e-4
    np.testing.assert_allclose(X, ref, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("case", ["gradient_tracking_nesterov", "d2", "quasi_global", "gossip_every_2",
                                  "push_sum_random"])
def test_resume_mid_phase_is_bitwise(tmp_path, case):
    kw = CASES[case]
    whole = run(from_dict(small(tmp_path, "whole", max_iterations=7, **kw), ranks=1), MPI.COMM_SELF, **QUIET)
    run(from_dict(small(tmp_path, "cut", max_iterations=4, **kw), ranks=1), MPI.COMM_SELF, **QUIET)
    (ckpt,) = list_checkpoints(os.path.join(tmp_path, "cut"))
    with open(os.path.join(ckpt, "manifest.json")) as f:
        names = set(json.load(f)["tensors"])
    want = {"gradient_tracking": {"Y", "Gprev"}, "d2": {"Xprev", "Uprev"},
            "push_sum": {"push_sum_w"}}.get(kw.get("algorithm"), set())
    assert want | {"X", "M"} <= names
    resumed = run(from_dict(small(tmp_path, "cut", max_iterations=7, **kw), ranks=1), MPI.COMM_SELF, resume="auto",
                  **QUIET)
    assert torch.equal(whole.X, resumed.X)


class _Regression:
    """The replica block of a linear regression f_i(x) = 1/2 ||A_i x - b_i||^2 / m on n replicas (full
    gradients): what Algorithm.local_step calls on train.py's Replicas."""

    def __init__(self, A, b, world, lr):
        self.A, self.b, self.k, self.d, self.device = A, b, A.shape[0], A.shape[2], torch.device("cpu")
        self.X = torch.zeros(self.k, self.d, dtype=torch.float64)
        cfg = types.SimpleNamespace(momentum=0.0, nesterov=False, weight_decay=0.0)
        self.opt, self.companions = LocalSGD(cfg, self.k, self.d, self.device), {}
        self.opt.state["M"] = self.opt.state["M"].double()
        self.neg_lr = torch.tensor(-lr, dtype=torch.float64)

    @property
    def P(self):
        return self.X

    def local_step(self, t, epoch, b, lr, grad_hook=None):
        G = torch.einsum("imd,im->id", self.A, torch.einsum("imd,id->im", self.A, self.X) - self.b) / self.A.shape[1]
        if grad_hook is not None:
            grad_hook(G)
        self.opt.step(self.P, G, self.neg_lr, lr, t)
        return 0.0, 0.0, 0.0, 0.0


def test_bias_correction_on_heterogeneous_linear_regression():
    """n = 8 on the lazy ring, each replica's own optimum far from the global one (b_i = A_i (c + 3 e_i)),
    constant step 0.1, 600 iterations: D-SGD's average stays off the optimum by a step-size-dependent bias,
    gradient tracking and D2 reach it (their residuals are printed)."""
    rng = np.random.default_rng(0)
    n, m, d, lr = 8, 20, 5, 0.1
    A = torch.from_numpy(rng.normal(size=(n, m, d)))
    shift = torch.from_numpy(rng.normal(size=(n, d)) * 3.0)
    b = torch.einsum("imd,id->im", A, shift + torch.from_numpy(rng.normal(size=d)))
    x_star = torch.linalg.solve(torch.einsum("imd,ime->de", A, A), torch.einsum("imd,im->d", A, b))
    world = make_world(MPI.COMM_SELF, n, "cpu")
    topo = Topology("ring", n, lazy=True)
    cfg = types.SimpleNamespace(gossip_every=1)
    residual = {}
    for name in ("dsgd", "gradient_tracking", "d2"):
        reps = _Regression(A, b, world, lr)
        alg = ALGORITHMS[name](cfg, world, reps, topo, Gossiper(world, topo, d, dtype=torch.float64))
        ctx = Context(world, alg.gossip, GossipCounter(), topo.p(), algorithm=alg)
        policy = GossipPolicy()
        for t in range(600):
            alg.local_step(t, 10**9, lr, policy, ctx)
            alg.communicate(t, lr, policy, ctx)
        alg.gossip.free()
        residual[name] = float((reps.X - x_star).norm(dim=1).max())  # worst replica's distance to x*
    print("max_i ||x_i - x*|| after 600 iterations: " + ", ".join(f"{k} {v:.3e}" for k, v in residual.items()))
    assert residual["dsgd"] > 1e-2
    assert residual["gradient_tracking"] < 1e-6 and residual["d2"] < 1e-6


REFUSALS = [
    (dict(algorithm="d2"), "smallest eigenvalue of W is -0.3333"),  # the ring, n = 4, weights 1/3
    (dict(algorithm="d2", topology="torus", n=16), "set lazy_mixing = true"),
    (dict(algorithm="d2", topology="one_peer_exponential", lazy_mixing=True), "one fixed symmetric W"),
    (dict(algorithm="d2", lazy_mixing=True, policies=["target", "gossip", "gossip"], reference_trace="x.h5"),
     "defined for one fixed W"),
    (dict(algorithm="d2", lazy_mixing=True, gossip_every=2), "alternate between I and W"),
    (dict(algorithm="d2", lazy_mixing=True, policies=["csgd", "gossip", "gossip"]), "csgd"),
    (dict(algorithm="gradient_tracking", policies=["csgd", "gossip", "gossip"]), "nothing to track"),
    (dict(algorithm="gradient_tracking", optimizer="adam"), "use optimizer='sgd'"),
    (dict(algorithm="push_pull"), "algorithm='push_pull': choose one of"),
    (dict(momentum_kind="quasi_global", momentum=0.0, nesterov=False), "needs optimizer='sgd' with momentum > 0"),
    (dict(momentum_kind="quasi_global", algorithm="gradient_tracking"), "defined on D-SGD"),
    (dict(momentum_kind="quasi_global", policies=["csgd", "gossip", "gossip"]), "one global momentum"),
    (dict(momentum_kind="global"), "momentum_kind='global': choose one of"),
    (dict(gossip_every=0), "gossip_every=0: need >= 1"),
    (dict(gossip_every=4, policies=["csgd", "gossip", "gossip"]), "no local steps"),
]


@pytest.mark.parametrize("kw,why", REFUSALS)
def test_refusals(tmp_path, kw, why):
    with pytest.raises(ConfigError, match=None) as e:
        from_dict(small(tmp_path, **kw), ranks=1)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_lazy_ring_admits_d2(tmp_path):
    cfg = from_dict(small(tmp_path, algorithm="d2", lazy_mixing=True, n=16), ranks=4)
    assert Topology(cfg.topology, 16, lazy=True).lambda_min() == pytest.approx(1 / 3, abs=1e-12)
    assert Topology("ring", 16).lambda_min() == pytest.approx(-1 / 3, abs=1e-12)

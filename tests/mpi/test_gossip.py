"""Claim: one MPI gossip step equals W_t X computed densely in numpy (float64), for every topology,
any replicas-per-rank split, at several t; one message per neighbour rank."""
import numpy as np
import pytest
import torch
from mpi4py import MPI

from hpc_dsgd.comm import Gossiper, global_mean, make_world
from hpc_dsgd.topology import TOPOLOGIES, Topology, _has_torus

D = 37


def _dense(n, seed=3):
    return np.random.default_rng(seed).normal(size=(n, D))


@pytest.mark.parametrize("name", TOPOLOGIES)
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("which", ["world", "self"])
def test_gossip_equals_dense_WX(name, k, which):
    comm = MPI.COMM_WORLD if which == "world" else MPI.COMM_SELF
    if which == "self":
        k = k * MPI.COMM_WORLD.Get_size()  # one process holds every replica
    while name == "torus" and not _has_torus(comm.Get_size() * k):  # a torus needs n = a*b, a, b >= 2
        k += 1
    world = make_world(comm, k, "cpu")
    topo = Topology(name, world.n, seed=11)
    g = Gossiper(world, topo, D, dtype=torch.float64)
    Xg = _dense(world.n)
    X = torch.tensor(Xg[world.first:world.first + k])
    for t in range(5):  # several t: time-varying graphs change W_t
        sent, _ = g.step(X, t)
        Xg = topo.W(t) @ Xg
        np.testing.assert_allclose(X.numpy(), Xg[world.first:world.first + k], rtol=0, atol=1e-12)
        assert sent >= 0
        if not g.exact:
            plan = g.plan(t)
            assert len(set(plan.sources)) == len(plan.sources)  # one message per neighbour rank
            assert world.rank not in plan.sources
    g.free()


def test_communicator_kind_follows_the_rank_grid():
    """Ring: a periodic Cartesian communicator once the ranks form a ring with >= 3 sides, a
    distributed graph for 2 ranks (both neighbours are one rank), no communicator for 1 rank."""
    comm = MPI.COMM_WORLD
    size = comm.Get_size()
    world = make_world(comm, 2, "cpu")
    g = Gossiper(world, Topology("ring", world.n), D)
    want = "cart" if size >= 3 else "graph" if size == 2 else "local"
    assert g.kind == want
    if size >= 2:
        assert g.plan(0).comm.Get_topology() == (MPI.CART if size >= 3 else MPI.DIST_GRAPH)
    g.free()
    g = Gossiper(world, Topology("exponential", world.n), D)
    assert g.kind == ("graph" if size >= 2 else "local")
    if size >= 2:
        assert g.plan(0).comm.Get_topology() == MPI.DIST_GRAPH
    g.free()


def test_global_mean_is_exact_average():
    world = make_world(MPI.COMM_WORLD, 3, "cpu")
    Xg = _dense(world.n, seed=5)
    X = torch.tensor(Xg[world.first:world.first + 3])
    np.testing.assert_allclose(global_mean(world, X).numpy(), Xg.mean(0), atol=1e-12)

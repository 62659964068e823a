"""Claims about the communication modes (modes.py), each against a dense reference written here from the
equations of docs/communication.md, on a D-SGD trajectory over a quadratic (local step x_i -= eta (x_i - b_i)),
n = 8 replicas stacked as rows, W as a matrix:
- CHOCO-SGD (every operator): x^_0 = x_0, x^ += Q(x - x^) for all rows, x += gamma (W - I) x^; the split over the ranks
  (world: ranks x k, self: 1 x n) gives bitwise the same trajectory; the bytes sent are the messages' sizes;
- hierarchical: X <- W_h X with W_h[i, j] = W_nodes[a(i), a(j)] / m;
- overlap: x^(t+1) = x^(t+1/2) + c_t (W - I) x^t, c_t = 0 after an exact average, bitwise split-free.
Each runs in milliseconds."""
import numpy as np
import pytest
import torch
from mpi4py import MPI

from hpc_dsgd.comm import make_world
from hpc_dsgd.compression import make_operator
from hpc_dsgd.modes import ChocoGossiper, HierarchicalGossiper, OverlapGossiper
from hpc_dsgd.topology import Topology

D, ETA, ITERS = 37, 0.3, 12


def _start(n, seed=4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, D)).astype(np.float32), rng.normal(size=(n, D)).astype(np.float32)


def _worlds():
    size = MPI.COMM_WORLD.Get_size()
    k = 8 // size if 8 % size == 0 else 2
    return [make_world(MPI.COMM_WORLD, k, "cpu"), make_world(MPI.COMM_SELF, k * size, "cpu")]


def _gather(world, X):
    rows = world.comm.allgather(X.numpy().copy())
    return np.concatenate(rows)


def _run(world, mode, X0, B, rounds):
    """Local quadratic step, then mode.step (or the exact average where rounds says 'avg'); returns all rows."""
    sl = slice(world.first, world.first + world.k)
    X, Bt = torch.tensor(X0[sl]), torch.tensor(B[sl])
    mode.start(X, resumed=False)
    sent = []
    for t, what in enumerate(rounds):
        X.sub_(ETA * (X - Bt))
        b, _ = mode.allreduce_average(X, D) if what == "avg" else mode.step(X, t, theta_cols=D)
        sent.append(b)
    out = _gather(world, X)
    mode.free()
    return out, sent


@pytest.mark.parametrize("op,topology,gamma", [("topk", "ring", 0.5), ("randomk", "ring", 0.3), ("sign", "exponential", 0.6),
                                              ("qsgd", "torus", 0.8)])
def test_choco_equals_dense_reference_any_split(op, topology, gamma):
    results = []
    for world in _worlds():
        n = world.n
        topo = Topology(topology, n)
        X0, B = _start(n)
        operator = make_operator(op, ratio=0.25, levels=4, seed=9)
        mode = ChocoGossiper(world, topo, D, operator, gamma)
        M = operator.nbytes(D)
        X, sent = _run(world, mode, X0, B, ["g"] * ITERS)
        results.append(X)
        # the dense reference: all rows at once, the same operator on the same (replica, step) counters
        W = topo.W(0)
        x, hat = torch.tensor(X0), torch.tensor(X0)  # x^_i = x_i at the start
        scale = operator.choco_scale(D) if op == "qsgd" else 1.0
        for t in range(ITERS):
            x = x - ETA * (x - torch.tensor(B))
            q = operator.decode(operator.encode(x - hat, range(n), t), range(n), t, D) * scale
            hat = hat + q
            x = x + gamma * torch.tensor((W - np.eye(n)) @ hat.double().numpy(), dtype=torch.float32)
        np.testing.assert_allclose(X, x.numpy(), rtol=0, atol=2e-5)
        assert np.abs(X - X0).max() > 0.1
        # bytes: each replica's message goes once to every other rank holding one of its out-neighbours
        owners = np.arange(n) // world.k
        want = sum(len({owners[i] for i in np.flatnonzero(W[:, j]) if owners[i] != owners[j]})
                   for j in world.replica_ids) * M
        assert all(s == want for s in sent)
        assert M == len(operator.encode(torch.zeros(1, D), [0], 0)[0])
    if MPI.COMM_WORLD.Get_size() > 1:
        np.testing.assert_array_equal(results[0], results[1])  # ranks x k and 1 x n: bitwise


@pytest.mark.parametrize("ranks_per_node,topology", [(1, "ring"), (2, "one_peer_exponential")])
def test_hierarchical_equals_dense_reference(ranks_per_node, topology):
    for world in _worlds():
        n = world.n
        mode = HierarchicalGossiper(world, topology, D, ranks_per_node=ranks_per_node)
        X0, B = _start(n)
        X, _ = _run(world, mode, X0, B, ["g"] * ITERS)
        nodes = max(world.ranks // ranks_per_node, 1)
        assert mode.topology.nodes.n == nodes and mode.topology.m == n // nodes
        node_of = np.arange(n) // (n // nodes)  # ranks_per_node consecutive ranks form a node
        x = X0.astype(np.float64)
        for t in range(ITERS):
            x = x - ETA * (x - B)
            Wn = Topology(topology, nodes).W(t)
            Wh = Wn[np.ix_(node_of, node_of)] / (n // nodes)
            np.testing.assert_allclose(Wh, np.kron(Wn, np.full((n // nodes,) * 2, nodes / n)))
            np.testing.assert_allclose(mode.topology.W(t), Wh)
            x = Wh @ x
        np.testing.assert_allclose(X, x, rtol=0, atol=2e-5)


@pytest.mark.parametrize("topology", ["ring", "one_peer_exponential"])
def test_overlap_equals_dense_delayed_reference(topology):
    rounds = ["g"] * 5 + ["avg"] + ["g"] * 6
    results = []
    for world in _worlds():
        n = world.n
        topo = Topology(topology, n)
        X0, B = _start(n)
        X, _ = _run(world, OverlapGossiper(world, topo, D), X0, B, rounds)
        results.append(X)
        x, prev, s_prev = X0.astype(np.float64), None, None
        for t, what in enumerate(rounds):
            half = x - ETA * (x - B)
            if what == "avg":
                x, prev = np.repeat(half.mean(0, keepdims=True), n, 0), None
                continue
            x = half + ((topo.W(s_prev) - np.eye(n)) @ prev if prev is not None else 0.0)
            prev, s_prev = x, t  # x^(t+1) is what iteration t sends
        np.testing.assert_allclose(X, x, rtol=0, atol=2e-5)
    if MPI.COMM_WORLD.Get_size() > 1:
        np.testing.assert_array_equal(results[0], results[1])


def test_overlap_and_choco_state_resume_bitwise():
    """Stop after 5 rounds, rebuild the mode from its companions (as a checkpoint does), continue: the same rows
    bitwise as without the stop (the overlap's exchange in flight and CHOCO's halo copies are rebuilt)."""
    world = _worlds()[0]
    n = world.n
    X0, B = _start(n)
    sl = slice(world.first, world.first + world.k)
    for make in (lambda: OverlapGossiper(world, Topology("ring", n), D),
                 lambda: ChocoGossiper(world, Topology("ring", n), D, make_operator("topk", 0.2), 0.5)):
        outs = []
        for stop in (None, 5):
            mode = make()
            X, Bt = torch.tensor(X0[sl]), torch.tensor(B[sl])
            mode.start(X, resumed=False)
            for t in range(10):
                if t == stop:  # a checkpoint: the companions and X survive, the mode object does not
                    saved = {k: v.clone() for k, v in mode.companions.items()}
                    mode.free()
                    mode = make()
                    for k, v in mode.companions.items():
                        v.copy_(saved[k])
                    mode.start(X, resumed=True)
                X.sub_(ETA * (X - Bt))
                mode.step(X, t, theta_cols=D)
            mode.free()
            outs.append(X.clone())
        assert torch.equal(outs[0], outs[1])

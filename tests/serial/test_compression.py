"""Claims about the compression operators on their own (compression.py): top-k keeps the k largest
magnitudes; random-k draws the same coordinates from the same counters; scaled sign is (||v||_1 / D) sign(v);
QSGD is unbiased (the mean of 4000 independent draws within 4 standard errors of v); every message has the documented
byte count and decodes to the same vector wherever it is decoded."""
import math

import numpy as np
import pytest
import torch

from hpc_dsgd.compression import QSGD, RandomK, Sign, TopK, make_operator, pack_bits, unpack_bits

D = 53


def _v(rows=3, seed=0):
    return torch.tensor(np.random.default_rng(seed).normal(size=(rows, D)), dtype=torch.float32)


def test_topk_keeps_the_k_largest():
    V = _v()
    op = TopK(0.1)
    c = op.count(D)
    assert c == round(0.1 * D) and op.nbytes(D) == 8 * c
    msg = op.encode(V, [0, 1, 2], 0)
    assert msg.shape == (3, 8 * c) and msg.dtype == torch.uint8
    Q = op.decode(msg, [0, 1, 2], 0, D)
    for v, q in zip(V, Q):
        kept = set(np.flatnonzero(q.numpy()))
        assert kept == set(np.argsort(-np.abs(v.numpy()))[:c])
        assert torch.equal(q[list(kept)], v[list(kept)])  # values exact, the rest zero


def test_randomk_counters():
    V = _v()
    op = RandomK(0.2, seed=5)
    assert op.nbytes(D) == 4 * op.count(D)  # the indices do not travel: the receiver draws them again
    Q = op.decode(op.encode(V, [7, 8, 9], 3), [7, 8, 9], 3, D)
    for v, q in zip(V, Q):
        nz = np.flatnonzero(q.numpy())
        assert len(nz) == op.count(D) and torch.equal(q[nz], v[nz])
    # the same (seed, replica, step): the same coordinates, whatever else is encoded with it
    alone = op.decode(op.encode(V[1:2], [8], 3), [8], 3, D)
    assert torch.equal(alone[0], Q[1])
    other = op.decode(op.encode(V, [7, 8, 9], 4), [7, 8, 9], 4, D)
    assert not torch.equal((other != 0), (Q != 0))


def test_sign_scale_and_bits():
    V = _v()
    V[0, 3] = 0.0  # sign(0) := +1
    op = Sign()
    assert op.nbytes(D) == 4 + math.ceil(D / 8)
    Q = op.decode(op.encode(V, [0, 1, 2], 0), [0, 1, 2], 0, D)
    scale = V.abs().sum(1, keepdim=True) / D
    want = torch.where(V >= 0, 1.0, -1.0) * scale
    assert torch.allclose(Q, want, rtol=1e-6, atol=0)


def test_qsgd_unbiased_and_bytes():
    op = QSGD(4, seed=1)
    assert op.b == 4 and op.nbytes(D) == 4 + math.ceil(D * 4 / 8)
    V = _v(1)
    ids = range(4000)  # 4000 draws: one row per (replica, step) counter
    draws = op.decode(op.encode(V.expand(4000, D), ids, 0), ids, 0, D)
    levels = draws / V.norm() * 4  # integers in [-4, 4]
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.abs().max() <= 4
    se = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - V[0]).abs() <= 4 * se + 1e-6).all()
    assert 0 < op.choco_scale(D) < 1


@pytest.mark.parametrize("b", [1, 3, 8])
def test_pack_roundtrip(b):
    vals = torch.tensor(np.random.default_rng(b).integers(0, 2 ** b, size=(2, D)))
    packed = pack_bits(vals, b)
    assert packed.shape == (2, math.ceil(D * b / 8))
    assert torch.equal(unpack_bits(packed, D, b), vals)


def test_make_operator_refuses_unknown():
    with pytest.raises(ValueError, match="compression='zip'"):
        make_operator("zip")


@pytest.mark.parametrize("keys, says", [
    (dict(compression="topk", topology="one_peer_exponential"), "fixed sparse topology"),
    (dict(compression="sign", topology="complete"), "fixed sparse topology"),
    (dict(compression="sign", hierarchy="node"), "not implemented"),
    (dict(compression="qsgd", overlap=True), "not implemented"),
    (dict(compression="topk", policies=["target"] * 3, reference_trace="r.h5", control_signal="theta"),
     "use control_signal"),
    (dict(overlap=True, policies=["adaptive"] * 3), "lands one iteration late"),
    (dict(overlap=True, policies=["csgd", "gossip", "gossip"]), "csgd"),
    (dict(overlap=True, topology="complete"), "no neighbour exchange to overlap"),
    (dict(hierarchy="node", overlap=True), "not implemented"),
    (dict(hierarchy="node", ranks_per_node=3), "does not divide"),
    (dict(ranks_per_node=2), "hierarchy is 'none'"),
    (dict(compression="zip"), "choose one of none"),
    (dict(consensus_lr=1.5), "0 < gamma <= 1"),
])
def test_config_refuses_what_makes_no_sense(keys, says):
    """One line naming the keys and why (config.validate), before any work."""
    from hpc_dsgd.config import ConfigError, from_dict

    with pytest.raises(ConfigError) as e:
        from_dict(dict(n=8, **keys), ranks=4)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_config_accepts_the_modes():
    from hpc_dsgd.config import from_dict

    for keys in (dict(compression="topk", policies=["target"] * 3, reference_trace="r.h5"),
                 dict(hierarchy="node", ranks_per_node=2, policies=["adaptive"] * 3, control_signal="theta"),
                 dict(overlap=True, policies=["gossip", "allreduce", "gossip"])):
        from_dict(dict(n=8, **keys), ranks=4)

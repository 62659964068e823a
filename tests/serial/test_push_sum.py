"""Claims about push-sum (algorithm = "push_sum", hpc_dsgd/algorithms/push_sum.py) and the directed topologies
(topology.py; docs/algorithms.md), in one process (its trajectory against the dense reference and its resume are
in test_algorithms.py, the rank split in tests/mpi/test_algorithms.py):
- on the ring (symmetric, doubly stochastic) push-sum is D-SGD: bitwise the same X and Theta;
- on directed_exponential every push-sum weight stays exactly 1, and the run is bitwise D-SGD's on
  one_peer_exponential (the same mixing);
- the directed graphs' matrices: directed_exponential = one_peer_exponential, directed_random column-stochastic
  with a self-free out-peer per replica, rows not stochastic; what the topology report says of them;
- the refusals, one line each."""
import numpy as np
import pytest
import torch
from alg_reference import small  # tests/alg_reference.py
from mpi4py import MPI

from hpc_dsgd.checkpoint import list_checkpoints, load_checkpoint_collective
from hpc_dsgd.config import ConfigError, from_dict
from hpc_dsgd.topology import Topology, directed_random_peers
from hpc_dsgd.topology_report import describe, table
from hpc_dsgd.trace import read_trace
from hpc_dsgd.train import run

QUIET = dict(log=lambda *a, **k: None)
ITERS = 6


def _run(tmp_path, name, **kw):
    cfg = from_dict(small(tmp_path, name, max_iterations=ITERS, **kw), ranks=1)
    res = run(cfg, MPI.COMM_SELF, **QUIET)
    (ckpt,) = list_checkpoints(f"{tmp_path}/{name}")
    _, tensors, _, _ = load_checkpoint_collective(MPI.COMM_SELF, ckpt, list(range(cfg.n)), torch.device("cpu"))
    return res.X, tensors, read_trace(f"{tmp_path}/{name}/trace.h5").iter


def test_push_sum_on_the_ring_is_dsgd_bitwise(tmp_path):
    X_ps, tensors, tr_ps = _run(tmp_path, "ps", algorithm="push_sum")
    X_d, _, tr_d = _run(tmp_path, "d")
    assert torch.equal(tensors["push_sum_w"], torch.ones(4, 1, dtype=torch.float64))
    assert torch.equal(X_ps, X_d) and np.abs(X_d[:, :100].numpy() - X_d[0, :100].numpy()).max() > 1e-4
    np.testing.assert_array_equal(tr_ps["theta"], tr_d["theta"])
    np.testing.assert_array_equal(tr_ps["xi"], tr_d["xi"])


def test_directed_exponential_keeps_weights_exactly_one(tmp_path):
    X_ps, tensors, _ = _run(tmp_path, "ps", algorithm="push_sum", topology="directed_exponential")
    X_d, _, _ = _run(tmp_path, "d", topology="one_peer_exponential")
    assert torch.equal(tensors["push_sum_w"], torch.ones(4, 1, dtype=torch.float64))
    assert torch.equal(X_ps, X_d)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 16])
def test_directed_matrices(n):
    de, op, dr = Topology("directed_exponential", n), Topology("one_peer_exponential", n), Topology("directed_random", n, seed=3)
    assert de.period == op.period and de.doubly_stochastic and not dr.doubly_stochastic and dr.period is None
    for t in range(6):
        np.testing.assert_array_equal(de.W(t), op.W(t))
        P = dr.W(t)
        np.testing.assert_array_equal(P.sum(axis=0), np.ones(n))  # column-stochastic
        if n > 1:
            o = directed_random_peers(n, t, 3)
            assert (o != np.arange(n)).all() and np.array_equal(P, Topology("directed_random", n, seed=3).W(t))
            np.testing.assert_array_equal(P.sum(axis=1), 0.5 + 0.5 * np.bincount(o, minlength=n))
    if n >= 5:
        assert any(not np.allclose(dr.W(t).sum(axis=1), 1) for t in range(6))  # rows are not stochastic
    assert np.isnan(dr.p()) if n > 1 else dr.p() == 1.0


def test_topology_report_describes_directed_graphs():
    text = describe(Topology("directed_random", 8, seed=1))
    assert "not doubly stochastic" in text and "p (Assumption 1) does not apply" in text
    r = Topology("directed_random", 8, seed=1).push_sum_contraction()
    assert f"push-sum contraction r = {r:.6g} per step" in text and 0 < r < 1
    text = describe(Topology("directed_exponential", 8))
    assert "push-sum weights stay exactly 1" in text and f"p = {Topology('one_peer_exponential', 8).p():.6g}" in text
    rows = {line.split(" | ")[0].strip("| "): line for line in table([8]).splitlines() if line.startswith("| d")}
    assert rows["directed_exponential"].split(" | ")[1:] == \
        [c for c in table([8]).splitlines() if c.startswith("| one_peer")][0].split(" | ")[1:]
    assert "n/a (push-sum)" in rows["directed_random"]


REFUSALS = [
    (dict(topology="directed_random"), "use algorithm='push_sum'"),
    (dict(topology="directed_random", algorithm="gradient_tracking"), "not doubly stochastic"),
    (dict(algorithm="push_sum", policies=["target", "gossip", "gossip"], reference_trace="x.h5"), "doubly stochastic"),
    (dict(algorithm="push_sum", policies=["gossip", "adaptive", "gossip"]), "Theta bound"),
    (dict(algorithm="push_sum", policies=["csgd", "gossip", "gossip"]), "no push-sum weight to de-bias"),
    (dict(algorithm="push_sum", topology="directed_exponential", overlap=True), "push-sum's weights"),
    (dict(algorithm="push_sum", compression="sign"), "push-sum's weights"),
    (dict(topology="directed_exponential", compression="sign"), "CHOCO-SGD keeps public copies of fixed"),
]


@pytest.mark.parametrize("kw,why", REFUSALS)
def test_refusals(tmp_path, kw, why):
    with pytest.raises(ConfigError) as e:
        from_dict(small(tmp_path, **kw), ranks=1)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_admitted(tmp_path):
    for kw in (dict(algorithm="push_sum", topology="directed_random", gossip_every=3, lazy_mixing=True),
               dict(algorithm="push_sum", policies=["allreduce", "gossip", "allreduce"]),
               dict(topology="directed_exponential", policies=["gossip", "target", "gossip"], reference_trace="x.h5")):
        from_dict(small(tmp_path, **kw), ranks=1)


def test_table_labels():
    from hpc_dsgd.analysis.algorithms import method_of
    from hpc_dsgd.analysis.communication import mode_label

    cfg = dict(policies=["gossip"] * 3, algorithm="push_sum", topology="directed_random")
    assert mode_label(cfg) == "push-sum, directed_random" and method_of(cfg) == "push-sum"
    assert mode_label(dict(cfg, algorithm="gradient_tracking")) is None  # the algorithms table's, not this one's

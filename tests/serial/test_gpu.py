"""Claims that need a CUDA device (skipped, with that reason, where there is none; run on an H100):
- the counter-based augmentation draws the same numbers on the GPU as on the CPU;
- batched execution equals the loop on the GPU;
- the captured (CUDA graph) step equals the eager batched step after 20 iterations;
- with deterministic = true two runs give bitwise-equal traces, and a stopped and resumed run equals
  the uninterrupted one."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from mpi4py import MPI

from hpc_dsgd.comm import make_world
from hpc_dsgd.config import Config, from_dict
from hpc_dsgd.data import load_dataset
from hpc_dsgd.data.augment import crop_flip_params
from hpc_dsgd.replica import Replicas, set_precision
from hpc_dsgd.trace import read_trace
from hpc_dsgd.train import run, set_determinism
from hpc_dsgd.workloads import ImageClassification

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible)")
QUIET = dict(log=lambda *a, **k: None)


def test_counter_hash_same_on_gpu_and_cpu():
    ids = torch.arange(64)
    for t in (0, 1, 12345):
        for a, b in zip(crop_flip_params(7, ids, t, 32), crop_flip_params(7, ids.cuda(), torch.tensor(t).cuda(), 32)):
            assert torch.equal(a, b.cpu())


def _reps(**kw):
    cfg = Config(n=8, width=0.5, batch_size=32, device="cuda", **kw)
    set_determinism(torch.device("cuda"), cfg.deterministic)
    set_precision(cfg.precision)
    torch.manual_seed(cfg.seed)  # the run's set-up: every replica starts from the same initial model
    return Replicas(cfg, make_world(MPI.COMM_SELF, 8, "cuda"),
                    ImageClassification(cfg, load_dataset("digits", None).to("cuda"), "cuda"))


def test_batched_step_equals_loop_on_gpu():
    a, b = _reps(replica_exec="loop", cuda_graph=False), _reps(replica_exec="batched", cuda_graph=False)
    for t in range(3):
        b.X.copy_(a.X)
        b.M.copy_(a.M)
        assert b.local_step(t, 0, t, 0.01) == pytest.approx(a.local_step(t, 0, t, 0.01), rel=1e-4)
        torch.testing.assert_close(b.P, a.P, rtol=1e-4, atol=1e-5)  # strict fp32: no TF32 in either
        # BN running statistics: cuDNN reduces k*c channels in one call vs c per call (seen: 3e-5 apart)
        torch.testing.assert_close(b.Bf, a.Bf, rtol=1e-4, atol=1e-4)


def test_captured_step_equals_eager_after_20_iterations():
    eager, graph = _reps(cuda_graph=False), _reps(cuda_graph=True)
    assert graph.capture and not eager.capture
    for t in range(20):
        se = eager.local_step(t, t // 5, t % 5, 0.02)
        sg = graph.local_step(t, t // 5, t % 5, 0.02)
        assert sg == pytest.approx(se, rel=1e-5)
    assert graph.graph is not None
    torch.testing.assert_close(graph.X, eager.X, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(graph.M, eager.M, rtol=1e-4, atol=1e-6)


def _cfg(tmp, name, **kw):
    base = dict(name=name, out_dir=str(tmp), n=8, dataset="digits", width=0.5, batch_size=16, epochs=3.0,
                warmup_epochs=0.5, base_lr=0.1, base_batch=32, eval_every=1, local_eval_samples=100,
                device="cuda", topology="ring", checkpoint_minutes=0.0, deterministic=True)
    base.update(kw)
    return from_dict(base, 1)


def _same_trace(a, b):
    ta, tb = read_trace(a), read_trace(b)
    np.testing.assert_array_equal(tb.iter["it"], np.arange(len(ta.iter["it"])))
    for col in ("loss", "acc", "theta", "xi", "phi"):
        np.testing.assert_array_equal(ta.iter[col], tb.iter[col])
    np.testing.assert_array_equal(ta.epoch["test_acc_avg"], tb.epoch["test_acc_avg"])


def test_deterministic_runs_are_bitwise_equal_and_resume_exactly(tmp_path):
    comm = MPI.COMM_SELF
    one = run(_cfg(tmp_path, "one"), comm, **QUIET)
    two = run(_cfg(tmp_path, "two"), comm, **QUIET)
    assert torch.equal(one.X, two.X)
    _same_trace(f"{tmp_path}/one/trace.h5", f"{tmp_path}/two/trace.h5")
    stop_at = 2 * (1437 // (8 * 16)) + 3  # mid-phase, after two epochs
    run(_cfg(tmp_path, "cut", max_iterations=stop_at), comm, **QUIET)
    rest = run(_cfg(tmp_path, "cut"), comm, resume="auto", **QUIET)
    assert torch.equal(one.X, rest.X)
    _same_trace(f"{tmp_path}/one/trace.h5", f"{tmp_path}/cut/trace.h5")
    assert read_trace(f"{tmp_path}/one/trace.h5").attrs["deterministic"]


def test_captured_local_gossip_equals_eager():
    """n replicas on one GPU: the gossip step replayed as a CUDA graph equals the eager step, X and
    Theta bitwise, over 5 steps of the ring (and the capture's warm-up leaves X alone)."""
    from hpc_dsgd.comm import Gossiper
    from hpc_dsgd.topology import Topology

    world = make_world(MPI.COMM_SELF, 8, "cuda")
    X0 = torch.randn(8, 1000, generator=torch.Generator().manual_seed(0)).cuda()
    out = {}
    for capture in (False, True):
        g = Gossiper(world, Topology("ring", 8), 1000, capture=capture)
        X, thetas = X0.clone(), []
        for s in range(5):
            _, th = g.step(X, s, theta_cols=900)
            thetas.append(th.clone())
        out[capture] = (X, torch.stack(thetas))
        assert bool(g._graphs) == capture
        g.free()
    assert torch.equal(out[True][0], out[False][0]) and torch.equal(out[True][1], out[False][1])
    assert not torch.equal(out[True][0], X0)

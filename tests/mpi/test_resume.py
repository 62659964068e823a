"""Claims about checkpoints in real runs on 4 ranks:
- stop after phase 1 (or in the middle of a phase), resume, finish: parameters bitwise equal to the
  uninterrupted run, and the trace has every iteration exactly once;
- a checkpoint written by 4 ranks x 1 replica resumes as 2 ranks x 2 (bitwise equal);
- a dec-phase-2 run branched from a centralized run's phase-1 checkpoint equals the dec-phase-2 run
  trained from scratch; a mismatched branch or resume is refused with the differing keys named."""
import math

import numpy as np
import pytest
from mpi4py import MPI

from hpc_dsgd.checkpoint import CheckpointError, list_checkpoints
from hpc_dsgd.config import from_dict
from hpc_dsgd.schedule import Schedule
from hpc_dsgd.trace import read_trace
from hpc_dsgd.train import run

QUIET = dict(log=lambda *a, **k: None)
IPE = 1437 // (4 * 8)  # digits train images // (n * batch)


def cfg(tmp, name, ranks=None, **kw):
    base = dict(name=name, out_dir=tmp, n=4, dataset="digits", width=0.25, batch_size=8, epochs=2.0,
                warmup_epochs=0.5, base_lr=0.2, base_batch=32, eval_every=1, local_eval_samples=40,
                device="cpu", topology="ring", checkpoint_minutes=0.0)
    base.update(kw)
    return from_dict(base, ranks or MPI.COMM_WORLD.Get_size())


def shared_tmp(factory, name):
    comm = MPI.COMM_WORLD
    return comm.bcast(str(factory.mktemp(name)) if comm.Get_rank() == 0 else None)


def gathered(comm, X):
    rows = comm.gather(X.numpy(), root=0)
    return np.concatenate(rows) if comm.Get_rank() == 0 else None


def check_trace_same(tmp, a, b):
    if MPI.COMM_WORLD.Get_rank() == 0:
        ta, tb = read_trace(f"{tmp}/{a}/trace.h5"), read_trace(f"{tmp}/{b}/trace.h5")
        np.testing.assert_array_equal(tb.iter["it"], np.arange(len(ta.iter["it"])))  # none duplicated or missing
        for col in ("loss", "acc", "lr", "theta", "xi", "gossip_steps"):
            np.testing.assert_array_equal(ta.iter[col], tb.iter[col])
        np.testing.assert_array_equal(ta.epoch["test_acc_avg"], tb.epoch["test_acc_avg"])
        np.testing.assert_array_equal(ta.phase["xi_max"], tb.phase["xi_max"])
        assert tb.attrs["status"] == "finished"


CONTROLLED = dict(policies=["adaptive", "gossip", "gossip"], target_factors=[0.05, 1.0, 1.0], control_signal="theta",
                  topology="one_peer_exponential")


@pytest.mark.parametrize("where", ["phase_end", "mid_phase", "controlled_mid_phase"])
def test_stop_resume_is_bitwise_identical(tmp_path_factory, where):
    """The controlled case also carries the control state (EMA(phi), the gossip-step counter of a
    time-varying graph) through the checkpoint."""
    comm = MPI.COMM_WORLD
    tmp = shared_tmp(tmp_path_factory, "res")
    extra = CONTROLLED if where.startswith("controlled") else {}
    full = run(cfg(tmp, "full", **extra), comm, **QUIET)
    sched = Schedule.from_config(cfg(tmp, "x"), 1437)
    stop_at = sched.decay_iters[0] if where == "phase_end" else sched.decay_iters[0] - 7 if extra else sched.decay_iters[0] + 5
    part = run(cfg(tmp, "cut", max_iterations=stop_at, **extra), comm, **QUIET)
    assert part.checkpoint.endswith(f"ckpt-{stop_at:09d}")
    rest = run(cfg(tmp, "cut", **extra), comm, resume="auto", **QUIET)
    if extra and comm.Get_rank() == 0:
        steps = read_trace(f"{tmp}/cut/trace.h5").iter["gossip_steps"]
        assert steps[:stop_at].max() > 1 and steps[stop_at:sched.decay_iters[0]].max() > 1  # control acted on both sides
    A, B = gathered(comm, full.X), gathered(comm, rest.X)
    if comm.Get_rank() == 0:
        np.testing.assert_array_equal(A, B)
    assert full.metrics == {**rest.metrics, "elapsed": full.metrics["elapsed"], "images_per_s": full.metrics["images_per_s"]}
    check_trace_same(tmp, "full", "cut")


def test_checkpoint_resumes_on_another_split(tmp_path_factory):
    """Written by R ranks x n/R replicas, resumed on the largest proper divisor of R ranks
    (4 x 1 -> 2 x 2 under mpiexec -n 4): bitwise the uninterrupted run. With replica_exec = loop, whose
    arithmetic per replica does not depend on k (batched runs on another split agree to rounding only,
    tests/mpi/test_dsgd.py)."""
    world = MPI.COMM_WORLD
    R = world.Get_size()
    n = math.lcm(4, R)
    ipe = 1437 // (n * 8)
    s = max(d for d in range(1, R) if R % d == 0)
    tmp = shared_tmp(tmp_path_factory, "split")
    full = run(cfg(tmp, "full", n=n, replica_exec="loop"), world, **QUIET)
    run(cfg(tmp, "cut", n=n, max_iterations=ipe + 3, replica_exec="loop"), world, **QUIET)  # R ranks x n/R replicas
    A = gathered(world, full.X)
    sub = world.Split(0 if world.Get_rank() < s else MPI.UNDEFINED, world.Get_rank())
    if sub != MPI.COMM_NULL:
        rest = run(cfg(tmp, "cut", n=n, ranks=s, replica_exec="loop"), sub, resume="auto", **QUIET)  # s x n/s
        B = gathered(sub, rest.X)
        if sub.Get_rank() == 0:
            np.testing.assert_array_equal(A, B)
            tr = read_trace(f"{tmp}/cut/trace.h5")
            np.testing.assert_array_equal(tr.iter["it"], np.arange(2 * ipe))
            assert tr.attrs["ranks"] == s and tr.attrs["replicas_per_rank"] == n // s
        sub.Free()
    world.Barrier()


def test_branch_from_centralized_phase_1_checkpoint(tmp_path_factory):
    comm = MPI.COMM_WORLD
    tmp = shared_tmp(tmp_path_factory, "br")
    central = ["allreduce"] * 3
    dec2 = ["allreduce", "gossip", "allreduce"]
    run(cfg(tmp, "central", policies=central), comm, **QUIET)
    phase1 = comm.bcast([p for p in list_checkpoints(f"{tmp}/central") if p.endswith(f"{IPE:09d}")]
                        if comm.Get_rank() == 0 else None)
    assert len(phase1) == 1
    scratch = run(cfg(tmp, "dec2_scratch", policies=dec2), comm, **QUIET)
    branched = run(cfg(tmp, "dec2_branch", policies=dec2, branch_from=phase1[0]), comm, **QUIET)
    A, B = gathered(comm, scratch.X), gathered(comm, branched.X)
    if comm.Get_rank() == 0:
        np.testing.assert_array_equal(A, B)
    check_trace_same(tmp, "dec2_scratch", "dec2_branch")  # the branch's trace starts with the parent's rows
    with pytest.raises(CheckpointError, match=r"the config differs in") as e:  # each differing key named, in role order
        run(cfg(tmp, "bad_branch", policies=dec2, branch_from=phase1[0], seed=1, width=0.5), comm, **QUIET)
    assert "width: checkpoint=0.25 config=0.5" in str(e.value) and "seed: checkpoint=0 config=1" in str(e.value)
    with pytest.raises(CheckpointError, match=r"policies: checkpoint="):
        run(cfg(tmp, "central", policies=dec2), comm, resume="auto", **QUIET)

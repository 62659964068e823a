"""Claims about the communication modes inside whole training runs (train.run, digits, a tiny CNN, n = 4):
- the run is the same bitwise on R x n/R ranks and on 1 x n (replica_exec = loop) for CHOCO-SGD and overlap;
- a run stopped after 3 iterations and resumed from its checkpoint reaches iteration 6 bitwise as the
  uninterrupted run, for every mode (CHOCO's x^, the overlap's exchange in flight, hierarchical);
- the trace records the mode's bytes per iteration (CHOCO: the compressed messages)."""
import numpy as np
import pytest
from mpi4py import MPI

from hpc_dsgd.compression import make_operator
from hpc_dsgd.config import from_dict
from hpc_dsgd.trace import read_trace
from hpc_dsgd.train import run

N = 4
MODES = {"choco_topk": dict(compression="topk", compression_ratio=0.05, consensus_lr=0.5),
         "overlap": dict(overlap=True),
         "hierarchical": dict(hierarchy="node", ranks_per_node=1)}


def cfg(out, ranks, iters, **kw):
    base = dict(name="t", out_dir=str(out), n=N, dataset="digits", model="small_cnn", width=0.25, batch_size=8,
                epochs=1.0, warmup_epochs=0.0, base_lr=0.05, base_batch=32, max_iterations=iters, eval_every=100,
                local_eval_samples=10, device="cpu", replica_exec="loop", checkpoint_minutes=0,
                topology="ring", policies=["gossip", "allreduce", "gossip"], decay_fractions=[0.5, 0.75])
    base.update(kw)
    return from_dict(base, ranks=ranks)


def rows(comm, X):
    got = comm.gather(X.numpy(), root=0)
    return np.concatenate(got) if comm.Get_rank() == 0 else None


def quiet(*a, **k):
    pass


@pytest.mark.parametrize("mode", list(MODES))
def test_mode_split_free_and_resumes_bitwise(tmp_path_factory, mode):
    world = MPI.COMM_WORLD
    R = world.Get_size()
    tmp = world.bcast(str(tmp_path_factory.mktemp(mode)) if world.Get_rank() == 0 else None)
    kw = MODES[mode]
    whole = rows(world, run(cfg(f"{tmp}/whole", R, 6, **kw), world, log=quiet).X)
    run(cfg(f"{tmp}/part", R, 3, **kw), world, log=quiet)
    resumed = rows(world, run(cfg(f"{tmp}/part", R, 6, **kw), world, log=quiet, resume="auto").X)
    if world.Get_rank() == 0:
        assert np.abs(whole - whole[0]).max() > 1e-5  # the replicas differ: the comparison is not vacuous
        np.testing.assert_array_equal(resumed, whole)
        tr = read_trace(f"{tmp}/whole/t/trace.h5").iter
        assert len(tr["bytes_sent"]) == 6 and np.isfinite(tr["xi"]).all() and np.isfinite(tr["theta"]).all()
        if mode.startswith("choco") and R > 1:  # ring, one replica per rank: 2 messages per replica
            D = whole.shape[1]
            M = make_operator(kw["compression"], kw.get("compression_ratio", 0.01)).nbytes(D)
            assert tr["bytes_sent"][0] == N * 2 * M
    if R > 1 and mode != "hierarchical":  # hierarchical: the nodes are the ranks, so the split is the experiment
        sub = world.Split(0 if world.Get_rank() == 0 else MPI.UNDEFINED, 0)
        if sub != MPI.COMM_NULL:
            one = run(cfg(f"{tmp}/one", 1, 6, **kw), sub, log=quiet).X.numpy()
            np.testing.assert_array_equal(one, whole)
            sub.Free()
        world.Barrier()

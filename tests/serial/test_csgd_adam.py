"""Figure 3's centralized baseline is data-parallel Adam (issue 25 item 5): the csgd policy with optimizer adam
equals ONE torch.optim.Adam stepping on the mean of the n replicas' gradients (each on the replica's own
mini-batch, its own BN batch statistics; the BN running statistics averaged), on a tiny problem in one process;
the replicas' Adam moments stay identical. Local Adam plus parameter averaging (policy allreduce) is another
algorithm (Adam is nonlinear in the gradient): it ends measurably elsewhere. The SGD version of this reference
is tests/mpi/test_csgd.py."""

import numpy as np
import torch
from data_parallel import data_parallel, optimizer_state  # tests/data_parallel.py
from mpi4py import MPI

from hpc_dsgd.checkpoint import load_checkpoint
from hpc_dsgd.config import from_dict
from hpc_dsgd.train import run

N, ITERS = 4, 5


def cfg_for(tmp, policy):
    return from_dict(dict(name=policy, out_dir=str(tmp), n=N, dataset="digits", model="small_cnn", width=0.25,
                          batch_size=8, epochs=2.0, warmup_epochs=0.5, base_lr=0.004, warmup_lr=0.001, base_batch=32,
                          optimizer="adam", adam_betas=[0.9, 0.98], adam_eps=1e-6, weight_decay=1e-4,
                          max_iterations=ITERS, eval_every=100, local_eval_samples=20, device="cpu",
                          replica_exec="loop", policies=[policy] * 3, checkpoint_minutes=0), ranks=1)


def data_parallel_adam(cfg):
    """tests/data_parallel.py with torch.optim.Adam (the run's betas, eps and weight decay)."""
    row, model, opt = data_parallel(cfg, lambda ps: torch.optim.Adam(ps, lr=0.1, betas=tuple(cfg.adam_betas),
                                                                     eps=cfg.adam_eps, weight_decay=cfg.weight_decay))
    return row, optimizer_state(model, opt, "exp_avg"), optimizer_state(model, opt, "exp_avg_sq")


def quiet(*a, **k):
    pass


def test_csgd_with_adam_is_one_adam_on_the_global_batch(tmp_path):
    cfg = cfg_for(tmp_path, "csgd")
    res = run(cfg, MPI.COMM_SELF, log=quiet)
    X = res.X.numpy()
    assert (X == X[0]).all()  # one model: parameters and BN buffers bitwise equal on every replica
    tensors = load_checkpoint(res.checkpoint, list(range(N)))[1]
    M, V = tensors["M"].numpy(), tensors["V"].numpy()
    assert (M == M[0]).all() and (V == V[0]).all() and np.abs(M).max() > 1e-4  # one Adam state
    ref, ref_m, ref_v = data_parallel_adam(cfg)
    moved = np.abs(ref[:res.d] - data_parallel_adam(from_dict(dict(cfg.to_dict(), max_iterations=1)))[0][:res.d])
    assert moved.max() > 1e-3
    np.testing.assert_allclose(X[0], ref, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(M[0], ref_m, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(V[0], ref_v, rtol=2e-4, atol=1e-9)
    # parameter averaging after local Adam steps (policy allreduce) is not the same algorithm
    other = run(cfg_for(tmp_path, "allreduce"), MPI.COMM_SELF, log=quiet).X.numpy()
    assert np.abs(other[0, :res.d] - ref[:res.d]).max() > 1e-3  # (measured: 7e-3; csgd's distance: 6e-8)

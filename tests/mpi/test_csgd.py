"""Claims about centralized SGD (policy csgd) and the sharpness measurement on any rank count:
- csgd equals a single-process data-parallel reference: one model and one torch.optim.SGD, whose
  gradient is the average of the n replicas' gradients, each computed on the replica's own
  mini-batch in training mode with its own batch-norm batch statistics (same data order and
  augmentation), the BN running statistics averaged over the replicas; replicas and momenta stay
  bitwise identical;
- entering a csgd phase makes parameters, BN buffers and momenta the exact average;
- the sharpness measured with the subset split over the ranks equals the single-process value;
- a run writes /sharpness rows that equal an offline measurement of its final checkpoint."""
import math
import os
import re

import numpy as np
import pytest
import torch
from data_parallel import data_parallel, optimizer_state  # tests/data_parallel.py
from mpi4py import MPI

from hpc_dsgd.checkpoint import load_checkpoint
from hpc_dsgd.comm import make_world
from hpc_dsgd.config import from_dict
from hpc_dsgd.consensus import Context, CsgdPolicy, GossipCounter
from hpc_dsgd.data import load_dataset
from hpc_dsgd.data.augment import normalise
from hpc_dsgd.models import build_model
from hpc_dsgd.sharpness import HessianOperator, hutchinson, lanczos, load_row, rank_batches, sharpness_subset
from hpc_dsgd.sharpness import main as sharpness_main
from hpc_dsgd.trace import read_trace
from hpc_dsgd.train import run

from test_dsgd import gather_rows
from test_dsgd import small_cfg as dsgd_cfg


def quiet(*a, **k) -> None:
    pass


def small_cfg(tmp, n, **kw):
    """test_dsgd's small run, with C-SGD in every phase unless kw says otherwise."""
    return dsgd_cfg(tmp, n=n, **{"policies": ["csgd"] * 3, **kw})


def data_parallel_reference(cfg):
    """tests/data_parallel.py with torch.optim.SGD (the run's momentum, Nesterov and weight decay)."""
    row, model, opt = data_parallel(cfg, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=cfg.momentum,
                                                                    nesterov=cfg.nesterov, weight_decay=cfg.weight_decay))
    return row, optimizer_state(model, opt, "momentum_buffer")


@pytest.mark.parametrize("replica_exec", ["batched", "loop"])
def test_csgd_equals_the_data_parallel_reference_and_keeps_replicas_identical(tmp_path_factory, replica_exec):
    comm = MPI.COMM_WORLD
    n = math.lcm(4, comm.Get_size())
    tmp = comm.bcast(str(tmp_path_factory.mktemp("csgd")) if comm.Get_rank() == 0 else None)
    cfg = from_dict(small_cfg(tmp, n, replica_exec=replica_exec), ranks=comm.Get_size())
    res = run(cfg, comm, log=quiet)
    X = gather_rows(comm, res.X)
    if comm.Get_rank() == 0:
        assert (X == X[0]).all()  # parameters AND BN buffers, bitwise, on every rank
        _, tensors, _, _ = load_checkpoint(res.checkpoint, list(range(n)))
        M = tensors["M"].numpy()
        assert (M == M[0]).all() and np.abs(M).max() > 1e-3  # one momentum, as in C-SGD
        ref, ref_m = data_parallel_reference(cfg)
        assert np.abs(X[0, :res.d] - X[0, :res.d].mean()).max() > 0.01
        np.testing.assert_allclose(X[0], ref, rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(M[0], ref_m, rtol=2e-4, atol=2e-5)
    comm.Barrier()


def test_allreduce_reaches_the_same_parameters_with_local_momenta(tmp_path_factory):
    """`allreduce` stays Kong et al.'s parameter averaging after local momentum steps. As the update is
    linear in the momentum, averaging every iteration gives C-SGD's parameters (to rounding), but the
    replicas' momenta differ; their mean is C-SGD's momentum."""
    comm = MPI.COMM_WORLD
    n = math.lcm(4, comm.Get_size())
    tmp = comm.bcast(str(tmp_path_factory.mktemp("ar")) if comm.Get_rank() == 0 else None)
    cfg = from_dict(small_cfg(tmp, n, policies=["allreduce"] * 3), ranks=comm.Get_size())
    res = run(cfg, comm, log=quiet)
    X = gather_rows(comm, res.X)
    if comm.Get_rank() == 0:
        ref, ref_m = data_parallel_reference(cfg)
        np.testing.assert_allclose(X[0], ref, rtol=2e-4, atol=2e-5)
        M = load_checkpoint(res.checkpoint, list(range(n)))[1]["M"].numpy()
        assert np.abs(M[0] - M[1]).max() > 1e-3
        np.testing.assert_allclose(M.astype(np.float64).mean(0), ref_m, rtol=2e-4, atol=2e-5)
    comm.Barrier()


def test_entering_csgd_averages_parameters_buffers_and_momenta():
    comm = MPI.COMM_WORLD
    k, D, d = 2, 9, 6
    world = make_world(comm, k, "cpu")
    g = torch.Generator().manual_seed(11)
    Xall = torch.randn(world.n, D, generator=g)
    Mall = torch.randn(world.n, d, generator=g)
    X, M = Xall[world.first:world.first + k].clone(), Mall[world.first:world.first + k].clone()
    pol = CsgdPolicy()
    ctx = Context(world, None, GossipCounter(), 1.0, opt_state=[M])
    pol.communicate(X, d, ctx)
    torch.testing.assert_close(X, Xall.double().mean(0).float().expand(k, D), rtol=0, atol=1e-6)
    torch.testing.assert_close(M, Mall.double().mean(0).float().expand(k, d), rtol=0, atol=1e-6)
    # afterwards only the BN columns are averaged (the parameters are identical already)
    X[:, d:] = torch.arange(float(k * (D - d))).view(k, D - d) + world.rank
    before = X[:, :d].clone()
    pol.communicate(X, d, ctx)
    assert torch.equal(X[:, :d], before)
    assert (X[:, d:] == X[0, d:]).all()
    G = torch.randn(k, d, generator=torch.Generator().manual_seed(world.rank))
    want = torch.cat(comm.allgather(G)).double().mean(0).float()
    pol.grad_hook(ctx)(G)
    assert torch.equal(G, want.expand(k, d))


def _model_and_data(seed=0):
    data = load_dataset("digits", None)
    torch.manual_seed(seed)
    model = build_model("resnet20", 10, 0.25)
    with torch.no_grad():
        model.train()
        model(normalise(data.train_x[:64], data.mean, data.std))
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return model, data


def test_sharpness_over_the_ranks_equals_the_single_process_value():
    comm = MPI.COMM_WORLD
    model, data = _model_and_data()
    idx = sharpness_subset(0, len(data.train_y), 24)
    split = HessianOperator(model, rank_batches(data, idx, comm.Get_rank(), comm.Get_size(), "cpu"), len(idx), comm)
    single = HessianOperator(model, rank_batches(data, idx, 0, 1, "cpu"), len(idx), None)
    v = torch.randn(split.d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(split(v), single(v), rtol=1e-5, atol=1e-6 * float(single(v).abs().max()))
    a, b = lanczos(split, split.d, 1e-4, 60), lanczos(single, single.d, 1e-4, 60)
    assert a.converged and b.converged
    assert a.value == pytest.approx(b.value, rel=2e-4)
    ta, tb = hutchinson(split, split.d, 2, seed=2), hutchinson(single, single.d, 2, seed=2)
    assert ta.value == pytest.approx(tb.value, rel=1e-5)
    la, _, ga = split.loss_grad()
    lb, _, gb = single.loss_grad()
    assert la == pytest.approx(lb, rel=1e-6)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-7)


def test_run_writes_sharpness_rows_equal_to_an_offline_measurement(tmp_path_factory, capsys):
    comm = MPI.COMM_WORLD
    n = math.lcm(4, comm.Get_size())
    tmp = comm.bcast(str(tmp_path_factory.mktemp("sh")) if comm.Get_rank() == 0 else None)
    # batch 64 x n=4: 5 iterations per epoch on the digits; two epochs, sharpness at each epoch's end
    cfg = from_dict(small_cfg(tmp, n, batch_size=64, epochs=2.0, warmup_epochs=0.0, max_iterations=0,
                              policies=["gossip"] * 3, sharpness_every=1, sharpness_samples=24,
                              sharpness_replica=n - 1, sharpness_tol=1e-3), ranks=comm.Get_size())
    res = run(cfg, comm, log=quiet)
    if comm.Get_rank() == 0:
        sh = read_trace(f"{tmp}/t/trace.h5").sharpness
        assert list(sh["replica"]) == [-1, n - 1] * 2 and list(sh["it"]) == [4, 4, 9, 9]
        sh = {k: v[2:] for k, v in sh.items()}  # the last measurement, at the final checkpoint
        assert (sh["samples"] == 24).all() and (sh["hvps"] >= 2).all()
        # the rows describe the checkpointed models: their loss, recomputed in one process
        X = load_checkpoint(res.checkpoint, list(range(n)))[1]["X"]
        data = load_dataset("digits", None)
        torch.manual_seed(0)
        model = build_model("resnet20", 10, 0.25)
        batches = rank_batches(data, sharpness_subset(cfg.seed, len(data.train_y), 24), 0, 1, "cpu")
        for r, row in ((0, X.double().mean(0).float()), (1, X[n - 1])):
            load_row(model, row)
            assert sh["loss"][r] == pytest.approx(HessianOperator(model, batches, 24).loss_grad()[0], rel=1e-5)
            assert bool(sh["converged"][r]) and sh["tol_reached"][r] <= 1e-3
        assert sh["lambda_max"][0] != pytest.approx(sh["lambda_max"][1], rel=1e-6)  # D-SGD: replicas differ
    # measuring changes nothing in the trajectory: the same run without sharpness ends bitwise equal
    plain = run(from_dict(dict(cfg.to_dict(), out_dir=f"{tmp}/plain", sharpness_every=0), ranks=comm.Get_size()),
                comm, log=quiet)
    assert torch.equal(plain.X, res.X)
    # the offline command on the same ranks, from the run's last checkpoint
    capsys.readouterr()
    assert sharpness_main([res.checkpoint, "--samples", "24", "--replica", str(n - 1)]) == 0
    if comm.Get_rank() == 0:
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 2 and "averaged model" in out[0] and f"replica {n - 1}" in out[1]
        got = [float(re.search(r"lambda_max (\S+)", ln).group(1)) for ln in out]
        np.testing.assert_allclose(got, sh["lambda_max"], rtol=2e-5)  # printed to 6 digits
        # loss-surface slices (1-D and 2-D) of the same averaged model, written as PNG
        from hpc_dsgd.analysis.surface import surface_figures

        files = surface_figures([res.checkpoint], f"{tmp}/s1.png", f"{tmp}/s2.png", samples=24, steps=3, span=0.5,
                                seed=cfg.seed)
        assert all(os.path.getsize(f) > 1000 for f in files)
    comm.Barrier()

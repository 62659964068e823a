"""Claims about the execution of a rank's k replicas (hpc_dsgd/execution.py, replica.py):
- the batched executions (grouped ResNet-20, vmap for any model) are the same function as k separate
  models run one after another: outputs, gradients and BN running statistics, to fp32 rounding;
- a whole local step (data, forward, backward, SGD on the (k, D) block) is the same in both modes;
- the weights are views of the block: no second copy of the parameters exists between steps."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from mpi4py import MPI

from hpc_dsgd.comm import make_world
from hpc_dsgd.config import Config
from hpc_dsgd.data import load_dataset
from hpc_dsgd.execution import Layout, float_buffers, make_executor
from hpc_dsgd.models import build_model
from hpc_dsgd.replica import Replicas, set_precision
from hpc_dsgd.workloads import ImageClassification

torch.set_num_threads(1)


def _block(proto, k, seed=0):
    """(k, D) rows: the prototype's parameters, perturbed per replica, then its BN buffers, perturbed."""
    g = torch.Generator().manual_seed(seed)
    row = torch.cat([p.detach().reshape(-1) for p in proto.parameters()] + [b.reshape(-1) for _, b in float_buffers(proto)])
    X = row.repeat(k, 1)
    X += 0.05 * torch.randn(X.shape, generator=g) * (X.abs() + 0.1)
    d = Layout(proto).d
    X[:, d:] = X[:, d:].abs()  # running variances stay positive
    return X


def _run(exec_, layout, X, x, y, k, B):
    P = X[:, :layout.d].detach().requires_grad_(True)
    out = exec_.forward(P, X[:, layout.d:], x, train=True)
    loss = F.cross_entropy(out.reshape(k * B, -1), y.reshape(-1), reduction="sum") / B
    (g,) = torch.autograd.grad(loss, P)
    exec_.finish()
    ev = exec_.forward(X[:, :layout.d], X[:, layout.d:], x[0], train=False, shared=True)
    return out.detach(), g, X[:, layout.d:].clone(), ev.detach()


@pytest.mark.parametrize("model,kind,k", [("resnet20", "grouped", 4), ("resnet20", "grouped", 1),
                                          ("resnet20", "vmap", 4), ("small_cnn", "vmap", 4), ("small_cnn", "vmap", 1)])
def test_batched_equals_loop(model, kind, k):
    torch.manual_seed(0)
    proto = build_model(model, 10, 0.25)
    layout = Layout(proto)
    B = 6
    g = torch.Generator().manual_seed(1)
    x = torch.randn(k, B, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (k, B), generator=g)
    X0 = _block(proto, k)
    Xl, Xb = X0.clone(), X0.clone()
    loop = make_executor("loop", proto, layout)
    batched = make_executor("batched", proto, layout, kind)
    assert batched.name == kind
    ref = _run(loop, layout, Xl, x, y, k, B)
    got = _run(batched, layout, Xb, x, y, k, B)
    names = ("outputs", "gradients", "BN running statistics", "eval outputs")
    for name, a, b in zip(names, got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5, msg=lambda m, name=name: f"{name}: {m}")
    assert (ref[2] - X0[:, layout.d:]).abs().max() > 1e-3  # BN statistics really moved ...
    assert torch.equal(Xb[:, :layout.d], X0[:, :layout.d])  # ... and the parameters were only read
    if k > 1:
        assert (ref[1][0] - ref[1][1]).abs().max() > 1e-4  # replicas differ: not k copies of one


def _replicas(exec_, k=4, **kw):
    cfg = Config(n=k, width=0.25, batch_size=8, replica_exec=exec_, device="cpu", **kw)
    world = make_world(MPI.COMM_SELF, k, "cpu")
    set_precision(cfg.precision)
    torch.manual_seed(cfg.seed)  # the run's set-up: every replica starts from the same initial model
    return Replicas(cfg, world, ImageClassification(cfg, load_dataset("digits", None), world.device))


@pytest.mark.parametrize("model", ["resnet20", "small_cnn"])
def test_local_step_equal_in_both_modes(model):
    """A local step (device-side data, forward, backward, Nesterov SGD on X) from the same state gives
    the same state in loop and batched mode, at five different iterations and batches."""
    a, b = _replicas("loop", model=model), _replicas("batched", model=model)
    for t in range(5):
        b.X.copy_(a.X)
        b.M.copy_(a.M)
        sa = a.local_step(t, 0, t, 0.01)
        sb = b.local_step(t, 0, t, 0.01)
        assert sb == pytest.approx(sa, rel=1e-5)
        torch.testing.assert_close(b.X, a.X, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.M, a.M, rtol=1e-4, atol=1e-5)
    assert (a.X[0] - a.X[1]).abs().max() > 1e-4


def test_resnet_trajectories_equal_in_both_modes():
    """Five free-running ResNet-20 steps: the two modes stay together (no drift beyond rounding)."""
    a, b = _replicas("loop"), _replicas("batched")
    for t in range(5):
        assert b.local_step(t, 0, t, 0.1) == pytest.approx(a.local_step(t, 0, t, 0.1), rel=1e-5)
    torch.testing.assert_close(b.X, a.X, rtol=1e-4, atol=1e-5)


def test_weights_are_views_of_the_block():
    """Between steps the block X is the only storage: changing a row changes that replica's outputs."""
    reps = _replicas("batched")
    idx = torch.arange(20)
    before = reps.wl.local_correct(reps, idx).clone()
    reps.X[2, :reps.d] = 0.0  # replica 2 loses its weights (its classifier now outputs zeros)
    after = reps.wl.local_correct(reps, idx)
    assert torch.equal(after[[0, 1, 3]], before[[0, 1, 3]])
    assert after[2] == (reps.data.test_y[idx] == 0).sum()  # all-zero logits: argmax is class 0


def test_bf16_precision_runs_close_to_fp32():
    """precision = bf16 (autocast of convolutions and matrix products): same losses to bf16 accuracy."""
    a, b = _replicas("batched"), _replicas("batched", precision="bf16")
    la = [a.local_step(t, 0, t, 0.05)[0] for t in range(3)]
    lb = [b.local_step(t, 0, t, 0.05)[0] for t in range(3)]
    assert lb == pytest.approx(la, rel=0.05)
    assert b.X.dtype == torch.float32 and b.M.dtype == torch.float32  # the state stays fp32


def test_weight_decay_bn_false_is_torch_sgd_without_decay_on_norm_parameters():
    """weight_decay_bn = false: LocalSGD on the flat block = torch.optim.SGD with two parameter groups, the
    batch-norm scales and shifts at weight_decay 0; true (the default) decays every parameter."""
    from hpc_dsgd.config import Config
    from hpc_dsgd.models import build_model
    from hpc_dsgd.optim import LocalSGD, decay_mask

    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, width=0.25)
    mask = decay_mask(model)
    bn = [p for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters(recurse=False)]
    assert int((mask == 0).sum()) == sum(p.numel() for p in bn) > 0
    cfg = Config(momentum=0.9, nesterov=True, weight_decay=0.05, weight_decay_bn=False)
    P = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).unsqueeze(0).clone()
    local = LocalSGD(cfg, 1, P.shape[1], "cpu")
    local.wd_row = (cfg.weight_decay * mask).unsqueeze(0)
    ids = {id(p) for p in bn}
    ref = torch.optim.SGD([{"params": [p for p in model.parameters() if id(p) not in ids]},
                           {"params": bn, "weight_decay": 0.0}], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05)
    g = torch.Generator().manual_seed(1)
    for t in range(5):
        G = torch.randn(P.shape, generator=g)
        off = 0
        for p in model.parameters():
            p.grad = G[0, off:off + p.numel()].reshape(p.shape).clone()
            off += p.numel()
        ref.step()
        local.step(P, G, torch.tensor(-0.1), 0.1, t)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(P[0], flat, rtol=1e-6, atol=1e-7)

"""The dense single-process reference of every algorithm (for tests/serial and tests/mpi test_algorithms.py).

All n replicas of a tiny model stacked as a float64 matrix x (n, d), W_t a dense numpy matrix, each update
written out as its textbook equations (docs/algorithms.md), independent of hpc_dsgd's replica block, optimizer,
algorithms and gossip: only the data pipeline (the replicas' i.i.d. shards, counter-based augmentation), the
model builder and the schedule are shared. Gradients come from one ordinary torch module per replica (float32,
loaded with x_i); the batch-norm running statistics are gossiped with the parameters, as in D-SGD.
weight_decay must be 0 here (the reference leaves it out).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from hpc_dsgd.data import augment_batch, epoch_permutation, load_dataset, replica_shard
from hpc_dsgd.models import build_model
from hpc_dsgd.schedule import Schedule
from hpc_dsgd.topology import Topology


def _load(model, row: np.ndarray) -> None:
    off = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(row[off:off + p.numel()]).view_as(p))
            off += p.numel()


def _buffers(model) -> list:
    return [b for b in model.buffers() if b.is_floating_point()]


def reference(cfg, iters: int) -> np.ndarray:
    """The (n, D) rows (parameters, then BN buffers) after `iters` iterations of cfg's algorithm, momentum kind and
    gossip_every, under the gossip policy (allreduce phases: W = 11^T/n)."""
    assert cfg.weight_decay == 0
    data = load_dataset("digits", None)
    sched = Schedule.from_config(cfg, len(data.train_y))
    topo = Topology(cfg.topology, cfg.n, seed=cfg.seed, lazy=cfg.lazy_mixing)
    torch.manual_seed(cfg.seed)
    proto = build_model(cfg.model, 10, cfg.width)
    models = [copy.deepcopy(proto) for _ in range(cfg.n)]
    n, beta, H, alg = cfg.n, cfg.momentum, cfg.gossip_every, cfg.algorithm
    x = np.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()]).double().numpy() for m in models])
    y, g_prev, x_prev, m, m_hat = (np.zeros_like(x) for _ in range(5))
    x_prev[:] = x  # D2: x^(-1) = x^0
    lr_prev, s = 0.0, 0
    w = np.ones(n)  # push-sum weights (Assran et al. 2019): x holds the biased sums, z = x / w the parameters
    for t in range(iters):
        ep, b = divmod(t, sched.iters_per_epoch)
        lr = sched.lr(t)
        perm = epoch_permutation(len(data.train_y), ep, cfg.seed)
        g = np.zeros_like(x)
        for i, mod in enumerate(models):
            idx = replica_shard(perm, n, i)[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            inp = augment_batch(data.train_x[idx], data.mean, data.std, seed=cfg.seed, replica=i, t=t)
            _load(mod, (x[i] / w[i]).astype(np.float32))  # the gradient at z_i = x_i / w_i (w = 1 but in push-sum)
            mod.train()
            mod.zero_grad()
            F.cross_entropy(mod(inp), data.train_y[idx]).backward()
            g[i] = torch.cat([p.grad.reshape(-1) for p in mod.parameters()]).double().numpy()
        policy = cfg.policies[sched.phase(t) - 1]
        comm = (t + 1) % H == 0
        if not comm:
            W = np.eye(n)
        elif policy == "allreduce" or topo.name == "complete" and not topo.lazy:
            W = np.full((n, n), 1.0 / n)
        else:
            W = topo.W(s)
            s += 1
        if alg == "gradient_tracking":  # DIGing, adapt-then-combine: y tracks the mean gradient
            y = y + g - g_prev
            g_prev = g
            a = y
        else:
            a = g
        if beta:  # torch.optim.SGD's momentum (dampening 0); quasi-global: the buffer starts from m^
            m = beta * (m_hat if cfg.momentum_kind == "quasi_global" else m) + a
            a = a + beta * m if cfg.nesterov else m
        if alg == "d2":  # Tang et al. 2018: x^(t+1) = W (2 x^t - x^(t-1) - lr_t g^t + lr_(t-1) g^(t-1))
            assert not beta
            z = 2 * x - x_prev - lr * g + lr_prev * g_prev
            x_prev, g_prev, lr_prev = x, g, lr
        else:
            z = x - lr * a
        x_new = W @ z  # push-sum: x^(t+1) = P_t (x^t - lr u^t), u from the gradient at z^t
        w_old, w = w, (W @ w if alg == "push_sum" else w)
        if alg == "gradient_tracking":
            y = W @ y
        if cfg.momentum_kind == "quasi_global":  # Lin et al. 2021: m^ = beta m^ + (1 - beta) (x^t - x^(t+1)) / lr
            m_hat = beta * m_hat + (1 - beta) * (x - x_new) / lr
        x = x_new
        bufs = [_buffers(mod) for mod in models]
        with torch.no_grad():
            for pos in range(len(bufs[0])):
                b = np.stack([bufs[i][pos].double().numpy() for i in range(n)])  # push-sum: b are z-values
                mixed = np.tensordot(W, b * w_old.reshape((n,) + (1,) * (b.ndim - 1)), axes=1)
                mixed = mixed / w.reshape((n,) + (1,) * (b.ndim - 1))
                for i in range(n):
                    bufs[i][pos].copy_(torch.from_numpy(mixed[i]))
    x = x / w[:, None]  # z (w = 1 but in push-sum)
    B = np.stack([torch.cat([bf.reshape(-1) for bf in _buffers(mod)]).double().numpy() for mod in models])
    return np.concatenate([x, B], axis=1)


# The algorithms under test: config overrides (on the tests' small config) per case. The learning rates are
# where this tiny CNN's float32 trajectory follows the float64 reference over the tests' 5 iterations: a
# max-pool or ReLU that flips on a rounding difference makes the two part by 1e-4 at some rates (chaotic,
# not systematic: each case matches to 1e-6 at one of 0.02, 0.05 and drifts at the other).
CASES = {
    "dsgd": dict(momentum=0.0, nesterov=False),
    "gradient_tracking": dict(algorithm="gradient_tracking", momentum=0.0, nesterov=False),
    "gradient_tracking_nesterov": dict(algorithm="gradient_tracking", momentum=0.9, nesterov=True),
    "d2": dict(algorithm="d2", momentum=0.0, nesterov=False, lazy_mixing=True, base_lr=0.05),
    "quasi_global": dict(momentum_kind="quasi_global", momentum=0.9, nesterov=True),
    "gossip_every_2": dict(gossip_every=2, momentum=0.9, nesterov=False),
    # push-sum on the column-stochastic directed random graph (w varies), with momentum and a local iteration
    "push_sum_random": dict(algorithm="push_sum", topology="directed_random", momentum=0.9, nesterov=True),
    "push_sum_random_every_2": dict(algorithm="push_sum", topology="directed_random", gossip_every=2, momentum=0.0,
                                    nesterov=False),
    # dec-phase runs: All-Reduce, gossip, All-Reduce within the 5 iterations (phases of 2, 1 and 2 iterations)
    "gradient_tracking_dec_phase_2": dict(algorithm="gradient_tracking", policies=["allreduce", "gossip", "allreduce"],
                                          epochs=0.12, decay_fractions=[0.4, 0.6], warmup_epochs=0.0),
    "d2_dec_phase_2": dict(algorithm="d2", momentum=0.0, nesterov=False, lazy_mixing=True, base_lr=0.05,
                           policies=["allreduce", "gossip", "allreduce"], epochs=0.12, decay_fractions=[0.4, 0.6],
                           warmup_epochs=0.0),
}


def small(out_dir, name="t", **kw) -> dict:
    """A tiny run: small_cnn width 0.25 on digits, n = 4, a small learning rate (this stand-in's first iterations
    amplify float32 rounding chaotically at the recipe's rate: tests/mpi/test_dsgd.py)."""
    base = dict(name=name, out_dir=str(out_dir), n=4, dataset="digits", model="small_cnn", width=0.25, batch_size=8,
                epochs=2.0, warmup_epochs=0.5, base_lr=0.02, warmup_lr=0.01, base_batch=32, eval_every=100,
                local_eval_samples=40, device="cpu", weight_decay=0.0, replica_exec="loop", checkpoint_minutes=0.0)
    base.update(kw)
    return base

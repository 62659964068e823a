"""The single-process data-parallel reference (one model, one torch optimizer) shared by tests/mpi/test_csgd.py
(SGD) and tests/serial/test_csgd_adam.py (Adam): per iteration every replica i copies the model, runs its own
mini-batch in training mode (its own BN batch statistics, the same data order and augmentation as the run), the
mean of the n gradients is the step's gradient, and the BN running statistics become the mean of the replicas'
updated ones."""
import copy

import torch
import torch.nn.functional as F

from hpc_dsgd.data import augment_batch, epoch_permutation, load_dataset, replica_shard
from hpc_dsgd.models import build_model
from hpc_dsgd.schedule import Schedule


def bn_buffers(m):
    return [b for b in m.buffers() if b.is_floating_point()]


def data_parallel(cfg, make_optimizer):
    """The reference run of cfg.max_iterations iterations; returns (its parameter-and-BN row as numpy, the model,
    the optimizer), make_optimizer(parameters) building the optimizer (its lr is set from the schedule)."""
    data = load_dataset("digits", None)
    sched = Schedule.from_config(cfg, len(data.train_y))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, 10, cfg.width)
    opt = make_optimizer(model.parameters())
    for t in range(cfg.max_iterations):
        ep, b = divmod(t, sched.iters_per_epoch)
        perm = epoch_permutation(len(data.train_y), ep, cfg.seed)
        grads = [torch.zeros_like(p) for p in model.parameters()]
        bufs = [torch.zeros_like(bf, dtype=torch.float64) for bf in bn_buffers(model)]
        for i in range(cfg.n):
            worker = copy.deepcopy(model)
            idx = replica_shard(perm, cfg.n, i)[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x = augment_batch(data.train_x[idx], data.mean, data.std, seed=cfg.seed, replica=i, t=t)
            worker.train()
            F.cross_entropy(worker(x), data.train_y[idx]).backward()
            for g, p in zip(grads, worker.parameters()):
                g += p.grad / cfg.n
            for acc, bf in zip(bufs, bn_buffers(worker)):
                acc += bf.double() / cfg.n
        for gr in opt.param_groups:
            gr["lr"] = sched.lr(t)
        for p, g in zip(model.parameters(), grads):
            p.grad = g
        opt.step()
        with torch.no_grad():
            for bf, acc in zip(bn_buffers(model), bufs):
                bf.copy_(acc)
    row = torch.cat([p.detach().reshape(-1) for p in model.parameters()] + [bf.reshape(-1) for bf in bn_buffers(model)])
    return row.numpy(), model, opt


def optimizer_state(model, opt, key):
    """The optimizer's per-parameter state `key` (e.g. momentum_buffer, exp_avg) as one numpy row."""
    return torch.cat([opt.state[p][key].reshape(-1) for p in model.parameters()]).numpy()

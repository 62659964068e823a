"""A rank's k replicas as one flat (k, D) block.

Row j of X is replica (first + j): its D = d + b numbers are the d trainable parameters followed by
the b floating-point batch-norm buffers (running mean and variance). Every module's parameters and
BN buffers are views into X, so the local optimizer step, gossip and checkpoints all act on X.

Batch-norm buffers are GOSSIPED WITH THE PARAMETERS (they ride in the same flat row, so no extra
message): a replica's running statistics stay consistent with its mixed weights, `allreduce` makes
replicas fully identical, and the averaged model's statistics are the average of the replicas'.
Consensus quantities (Xi, Theta, phi) are computed over the d parameters only, as in the paper.
num_batches_tracked (an integer counter, unused with a fixed BN momentum) stays local.

The optimizer is SGD with (Nesterov) momentum, no dampening, and weight decay, vectorised over the
k replicas with exactly torch.optim.SGD's arithmetic; the momentum M (k, d) stays local.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .comm import World
from .data import ImageData, augment_batch, epoch_permutation, replica_shard
from .models import build_model


def _float_buffers(module: torch.nn.Module):
    return [(m, name, b) for m in module.modules() for name, b in m._buffers.items()
            if b is not None and b.is_floating_point()]


def replica_generator(seed: int, i: int) -> torch.Generator:
    """Augmentation RNG of global replica i: depends on (seed, i) only, never on the rank split."""
    return torch.Generator().manual_seed(seed * 1_000_003 + i)


class Replicas:
    def __init__(self, cfg, world: World, num_classes: int):
        self.cfg, self.world, self.k = cfg, world, world.k
        dev = world.device
        torch.manual_seed(cfg.seed)  # every replica starts from the same initial model (Xi_0 = 0)
        proto = build_model(cfg.model, num_classes, cfg.width)
        params = list(proto.parameters())
        bufs = _float_buffers(proto)
        self.d = sum(p.numel() for p in params)
        self.D = self.d + sum(b.numel() for _, _, b in bufs)
        flat0 = torch.cat([p.detach().reshape(-1) for p in params] + [b.reshape(-1) for _, _, b in bufs])
        self.X = flat0.to(dev).repeat(self.k, 1)  # (k, D)
        self.G = torch.zeros(self.k, self.d, device=dev)  # (k, d) gradients
        self.M = torch.zeros(self.k, self.d, device=dev)  # (k, d) local momentum
        self.models = [self._bind(copy.deepcopy(proto).to(dev), self.X[j], self.G[j]) for j in range(self.k)]
        self.eval_x = torch.empty(self.D, device=dev)  # the averaged model's row
        self.eval_model = self._bind(copy.deepcopy(proto).to(dev), self.eval_x, None)
        # one augmentation generator per replica, seeded by its global index: split-independent
        self.gens = [replica_generator(cfg.seed, i) for i in world.replica_ids]
        self._perm_epoch, self._perm = -1, None

    def _bind(self, model: torch.nn.Module, row: torch.Tensor, grad_row: torch.Tensor | None) -> torch.nn.Module:
        """Make the model's parameters (and grads) and float buffers views into one flat row."""
        off = 0
        for p in model.parameters():
            n = p.numel()
            p.data = row[off:off + n].view_as(p)
            if grad_row is not None:
                p.grad = grad_row[off:off + n].view_as(p)
            off += n
        for m, name, b in _float_buffers(model):
            n = b.numel()
            m._buffers[name] = row[off:off + n].view_as(b)
            off += n
        return model

    @property
    def P(self) -> torch.Tensor:
        """(k, d) parameter part of X."""
        return self.X[:, :self.d]

    # -- one local step ----------------------------------------------------------------------
    def batch_indices(self, data: ImageData, epoch: int, b: int, j: int) -> torch.Tensor:
        """Training indices of local replica j at batch b of `epoch` (data-center i.i.d. partition)."""
        if epoch != self._perm_epoch:
            self._perm = epoch_permutation(len(data.train_y), epoch, self.cfg.seed)
            self._perm_epoch = epoch
        shard = replica_shard(self._perm, self.world.n, self.world.first + j)
        B = self.cfg.batch_size
        return shard[b * B:(b + 1) * B]

    def local_step(self, data: ImageData, epoch: int, b: int, lr: float, grad_hook=None) -> tuple[float, float, float]:
        """Forward/backward on every local replica, then one SGD step on X.

        grad_hook: None, or a callable that modifies the (k, d) gradient block G in place after the
        backward pass and phi's norm, before weight decay and momentum (csgd: the gradient Allreduce).
        Returns (sum of mini-batch losses, sum of correct predictions, sum of ||g_i||^2) over the
        k replicas; g_i is the mini-batch loss gradient before weight decay (for phi, Prop. 3.3)."""
        self.G.zero_()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.X.device)  # summed on the device:
        correct = torch.zeros((), dtype=torch.int64, device=self.X.device)  # one host sync per step, not 2k
        for j, model in enumerate(self.models):
            idx = self.batch_indices(data, epoch, b, j).to(data.train_x.device)
            x = augment_batch(data.train_x[idx], self.gens[j], data.mean, data.std, train=True)
            y = data.train_y[idx]
            model.train()
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()  # accumulates in place into G[j] (p.grad are views)
            loss_sum += loss.detach()
            correct += (out.argmax(1) == y).sum()
        grad_sq = self.G.pow(2).sum(dtype=torch.float64)
        if grad_hook is not None:
            grad_hook(self.G)
        self.sgd_step(lr)
        return float(loss_sum), float(correct), float(grad_sq)

    def sgd_step(self, lr: float) -> None:
        """torch.optim.SGD(momentum, dampening=0, nesterov, weight_decay) on all k rows at once."""
        c, P, G, M = self.cfg, self.P, self.G, self.M
        if c.weight_decay:
            G.add_(P, alpha=c.weight_decay)
        if c.momentum:
            M.mul_(c.momentum).add_(G)  # buf = mu buf + g (first step: buf = g, as M starts at 0)
            if c.nesterov:
                G.add_(M, alpha=c.momentum)  # g + mu buf
            else:
                G.copy_(M)
        P.add_(G, alpha=-lr)

    def check_grad_views(self) -> None:
        """The in-place gradient accumulation into G is what phi and the optimizer rely on."""
        for j, model in enumerate(self.models):
            off = 0
            for p in model.parameters():
                if p.grad is None or p.grad.data_ptr() != self.G[j, off:off + 1].data_ptr():
                    raise RuntimeError("autograd replaced a gradient view: flat gradient buffer broken")
                off += p.numel()

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def accuracy(self, model: torch.nn.Module, data: ImageData, idx: torch.Tensor, bs: int = 500) -> tuple[float, float]:
        """(correct count, summed loss) of `model` on test images idx."""
        model.eval()
        correct, loss = 0.0, 0.0
        for s in range(0, len(idx), bs):
            sel = idx[s:s + bs].to(data.test_x.device)
            x = augment_batch(data.test_x[sel], None, data.mean, data.std, train=False)
            out = model(x)
            y = data.test_y[sel]
            correct += (out.argmax(1) == y).sum().item()
            loss += F.cross_entropy(out, y, reduction="sum").item()
        return correct, loss

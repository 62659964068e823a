"""A rank's k replicas: one flat (k, D) block for storage, an executor for the computation.

Row j of X is replica (first + j): its D = d + b numbers are the d trainable parameters followed by
the b floating-point batch-norm buffers (running mean and variance). Every executor (execution.py)
reads the weights as views of X and updates the BN buffers in X, so the local optimizer step, gossip
and checkpoints all act on X, the one storage.

Batch-norm buffers are GOSSIPED WITH THE PARAMETERS (they ride in the same flat row, so no extra
message): a replica's running statistics stay consistent with its mixed weights, `allreduce` makes
replicas fully identical, and the averaged model's statistics are the average of the replicas'.
Consensus quantities (Xi, Theta, phi) are computed over the d parameters only, as in the paper.
num_batches_tracked (an integer counter, unused with a fixed BN momentum) is not stored.

What is trained comes from a workload (workloads/): the model, the k mini-batches, the loss, the local
optimizer. One local step (all on the data's device, no host synchronisation until the caller reads the
scalars, for a capturable workload):
  1. the k mini-batches: indices from the workload's partition (data/partition.py: iid, the epoch's
     permutation cut into data-centre shards; non-iid, each replica's own stream, computed on the host and
     copied into a static (k, B) device tensor), turned into inputs by the workload (images: gathered from
     the device-resident uint8 set, cropped and flipped with counter-based random numbers of (seed, global
     replica id, iteration), normalised);
  2. forward and backward of all k replicas by the executor (loop | grouped | vmap), gradients into G;
  3. the local optimizer on all k rows at once (optim.py: SGD with Nesterov momentum, or Adam); its state
     (k, d) blocks stay local; the SGD learning rate is a device tensor.
On CUDA (cuda_graph = true, and a workload with fixed shapes) steps 1-3 are captured once as a CUDA graph
and replayed every iteration: the iteration, batch index and learning rate live in static device tensors,
the epoch permutation in a static device buffer, so one capture serves the whole run.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable

import torch

from .comm import World
from .execution import Layout, float_buffers, make_executor
from .optim import decay_mask
from .workloads import Workload

GradHook = Callable[[torch.Tensor], None]


def set_precision(precision: str) -> None:
    """Process-wide: TF32 tensor cores for fp32 convolutions and matmuls only with precision 'tf32'
    ('fp32' is strict IEEE single precision, as the paper; cuDNN would otherwise use TF32 by default)."""
    tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32


class Replicas:
    def __init__(self, cfg, world: World, workload: Workload, batched_kind: str = "auto"):
        """The k replicas of this rank, every one the model workload.build_model() builds now. Process-wide
        state is the caller's to set first, where the run is set up (train.run, bench.py): the global seed
        (torch.manual_seed(cfg.seed): every replica, on every rank, starts from the same initial model, so
        Xi_0 = 0) and the precision flags (set_precision(cfg.precision))."""
        self.cfg, self.world, self.k, self.wl = cfg, world, world.k, workload
        dev = self.device = world.device
        proto = workload.build_model().to(dev)
        self.layout = Layout(proto)
        self.d, self.D = self.layout.d, self.layout.d + self.layout.b
        flat0 = torch.cat([p.detach().reshape(-1) for p in proto.parameters()]
                          + [b.reshape(-1) for _, b in float_buffers(proto)])
        self.X = flat0.repeat(self.k, 1).contiguous()  # (k, D)
        self.G = torch.zeros(self.k, self.d, device=dev)  # (k, d) gradients (before weight decay)
        self.opt = workload.optimizer(self.k, self.d, dev)  # local state: (k, d) blocks, never gossiped
        self.companions: dict[str, torch.Tensor] = {}  # the algorithm's (k, d) blocks (algorithms/), set by it
        if not cfg.weight_decay_bn and cfg.weight_decay:
            self.opt.wd_row = (cfg.weight_decay * decay_mask(proto)).to(dev).unsqueeze(0)
        self.exec = make_executor(cfg.replica_exec, proto, self.layout, batched_kind)
        self.eval_x = torch.empty(self.D, device=dev)  # the averaged model's row
        self.eval_model = self._bind(copy.deepcopy(proto), self.eval_x)
        self.ids = torch.arange(world.first, world.first + self.k, device=dev)  # global replica ids
        B = cfg.batch_size
        self.part = getattr(workload, "partition", None)  # which training samples each replica reads (data/partition.py)
        if self.part is None:  # a workload that states no partition reads the data-centre (iid) one
            from .data.partition import DataPartition

            self.part = DataPartition("iid", cfg.n, cfg.seed, workload.num_train, cfg.batch_size)
        self.iid = self.part.kind == "iid"
        self.shard = workload.num_train // world.n  # iid: every replica's shard of the epoch permutation
        self._ids_host = list(range(world.first, world.first + self.k))
        # static inputs of a step (device tensors, so a captured graph reads their current values)
        self.perm = torch.empty(workload.num_train if self.iid else 0, dtype=torch.int64, device=dev)  # iid
        self.idx = torch.zeros(self.k, B, dtype=torch.int64, device=dev)  # non-iid: the step's (k, B) indices
        self.t_dev = torch.zeros((), dtype=torch.int64, device=dev)  # iteration (augmentation counter)
        self.b_dev = torch.zeros((), dtype=torch.int64, device=dev)  # batch index within the epoch
        self.neg_lr = torch.zeros((), dtype=torch.float32, device=dev)  # -learning rate
        self.stats = torch.zeros(4, dtype=torch.float64, device=dev)  # loss sum, correct, predictions, sum ||g_i||^2
        self._slots = torch.arange(B, device=dev)
        self._perm_epoch = -1
        self._t, self._lr = 0, 0.0  # the step's iteration and learning rate as host numbers
        self.premade: tuple | None = None  # (inputs, target) instead of the data pipeline (benchmark)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capture = dev.type == "cuda" and cfg.cuda_graph and workload.capturable and self.opt.capturable
        bf16 = cfg.precision == "bf16"
        self.autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def state_blocks(self) -> dict[str, torch.Tensor]:
        """Every per-replica block a checkpoint holds, by name: X, the optimizer's, the algorithm's companions."""
        return {"X": self.X, **self.opt.state, **self.companions}

    @property
    def M(self) -> torch.Tensor:
        """(k, d) first optimizer state block (SGD momentum, Adam's first moment)."""
        return self.opt.state["M"]

    @property
    def data(self):
        return self.wl.data

    @staticmethod
    def _bind(model: torch.nn.Module, row: torch.Tensor) -> torch.nn.Module:
        """Make the model's parameters and float buffers views into one flat row (the averaged model)."""
        off = 0
        for p in model.parameters():
            p.requires_grad_(False)
            p.data = row[off:off + p.numel()].view_as(p)
            off += p.numel()
        for m in model.modules():
            for name, b in m._buffers.items():
                if b is not None and b.is_floating_point():
                    m._buffers[name] = row[off:off + b.numel()].view_as(b)
                    off += b.numel()
        return model

    @property
    def P(self) -> torch.Tensor:
        """(k, d) parameter part of X."""
        return self.X[:, :self.d]

    @property
    def Bf(self) -> torch.Tensor:
        """(k, b) batch-norm buffer part of X."""
        return self.X[:, self.d:]

    # -- one local step ----------------------------------------------------------------------
    def batch_indices(self, b: torch.Tensor | int, replicas: torch.Tensor | None = None) -> torch.Tensor:
        """(k, B) training indices of the local replicas (or of `replicas`) at batch b of the current epoch
        permutation: replica i reads perm[i*shard + b*B : i*shard + (b+1)*B] (data-centre i.i.d. partition).
        A non-iid partition: the local replicas' indices set_inputs copied for this iteration."""
        if not self.iid:
            if replicas is not None:
                raise ValueError(f"partition={self.part.kind!r} serves the local replicas only")
            return self.idx
        B = self.cfg.batch_size
        start = (self.ids if replicas is None else replicas) * self.shard + b * B  # (k,)
        return self.perm[start.view(-1, 1) + self._slots]

    def _body(self, grad_hook: GradHook | None = None) -> torch.Tensor:
        """Data, forward/backward and the optimizer step of all k replicas from the static inputs; returns stats."""
        if self.premade is not None:  # benchmark: fixed batches, no data pipeline
            inputs, target = self.premade
        else:
            with torch.no_grad():
                inputs, target = self.wl.batch(self, self.batch_indices(self.b_dev))
        P = self.P.detach().requires_grad_(True)
        with self.autocast():
            out = self.exec.forward(P, self.Bf, inputs, train=True)  # (k, B, ...)
        loss, correct, count = self.wl.loss(out, target)
        (grad,) = torch.autograd.grad(loss, P)
        self.exec.finish()
        with torch.no_grad():
            self.G.copy_(grad)
            grad_sq = self.G.pow(2).sum(dtype=torch.float64)  # sum_i ||g_i||^2 (phi, Prop. 3.3)
            if grad_hook is not None:
                grad_hook(self.G)
            self.opt.step(self.P, self.G, self.neg_lr, self._lr, self._t)
            self.stats.copy_(torch.stack([loss.detach().double(), correct.double(), count.double(), grad_sq]))
        return self.stats

    def set_inputs(self, t: int, epoch: int, b: int, lr: float) -> None:
        """The step's inputs into the static device tensors (iid: a new permutation once per epoch; non-iid: the
        k replicas' indices of iteration t, from their streams)."""
        if not self.iid:
            self.idx.copy_(self.part.batches(self._ids_host, t, self.cfg.batch_size))
        elif epoch != self._perm_epoch:
            self.perm.copy_(self.part.epoch_perm(epoch))
            self._perm_epoch = epoch
        self.t_dev.fill_(t)
        self.b_dev.fill_(b)
        self.neg_lr.fill_(-lr)
        self._t, self._lr = t, lr

    def local_step(self, t: int, epoch: int, b: int, lr: float,
                   grad_hook: GradHook | None = None) -> tuple[float, float, float, float]:
        """One local step of every replica at iteration t (batch b of `epoch`, learning rate lr).

        grad_hook(G), if given, sees the (k, d) mini-batch gradients after phi's norm and before the
        optimizer update, and may change them in place (e.g. average them: C-SGD); such a step runs
        eagerly. Returns (sum of the replicas' mini-batch losses, correct predictions, predictions, sum of
        ||g_i||^2) over the k replicas, read from the device once."""
        self.set_inputs(t, epoch, b, lr)
        if grad_hook is not None or not self.capture:
            stats = self._body(grad_hook)
        else:
            if self.graph is None:
                self._capture()
            self.graph.replay()
            stats = self.stats
        loss, correct, count, grad_sq = stats.tolist()  # the step's one host synchronisation
        return loss, correct, count, grad_sq

    def _capture(self) -> None:
        """Capture _body as a CUDA graph. The warm-up steps it needs run on copies: the state (X and the
        optimizer's) is restored afterwards, so capturing does not change the trajectory."""
        saved = [self.X.clone()] + [S.clone() for S in self.opt.state.values()]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                self._body()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._body()
        for dst, src in zip([self.X] + list(self.opt.state.values()), saved):
            dst.copy_(src)
        torch.cuda.synchronize(self.device)

"""How a rank's k replicas are computed: one per call (loop), or all k as one network (batched).

Storage is not execution's business: the (k, D) block X holds every replica's parameters (first d
columns, `P`) and floating-point batch-norm buffers (the rest, `Bf`), and every executor reads the
weights as views of P and updates the BN running statistics in X. The same function of (P, Bf, x)
is computed by every executor, outputs, gradients and BN running statistics alike
(tests/serial/test_execution.py):

  loop     the reference: replica j is `torch.func.functional_call` of the model on row j's views,
           one after another;
  grouped  ResNet-20 at any width as ONE grouped network: replica r owns channel group r of every
           convolution (`groups = k`), batch norm over k x c channels (statistics per replica), and a
           per-replica classifier as one batched matrix product. Input (B, k*3, H, W): replica r's
           images in channels 3r..3r+2. The fastest formulation on a GPU (README, GPU table);
  vmap     any model: `torch.func.vmap` over `functional_call` with the stacked views (in_dims 0).

forward(P, Bf, x, train, shared=False) -> outputs (k, B, ...); x is (k, B, ...) (each replica its own
batch) or, with shared=True, (B, ...) (one batch for all replicas, for evaluation); x may be a tuple of such
tensors, the model's positional inputs (the Transformer's source, target and dropout key). After the backward
pass the caller calls finish(), which completes the BN running-statistics update in X where an executor
deferred it. P may be a leaf that requires grad: its gradient then reaches every replica's row through one
split (whose backward is one concatenation).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from .config import REPLICA_EXECS as EXECS  # the config values of replica_exec (declared there)
from .models.resnet import CifarResNet


def float_buffers(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(qualified name, tensor) of the floating-point buffers, in the order they sit in a row of X."""
    return [(name, b) for name, b in module.named_buffers() if b.is_floating_point()]


class Layout:
    """Where each parameter and float buffer of `proto` sits in a row of X: names, shapes, sizes."""

    def __init__(self, proto: nn.Module):
        self.pnames = [n for n, _ in proto.named_parameters()]
        self.pshapes = [tuple(p.shape) for _, p in proto.named_parameters()]
        self.bnames = [n for n, _ in float_buffers(proto)]
        self.bshapes = [tuple(b.shape) for _, b in float_buffers(proto)]
        self.psizes = [math.prod(s) for s in self.pshapes]
        self.bsizes = [math.prod(s) for s in self.bshapes]
        self.d, self.b = sum(self.psizes), sum(self.bsizes)

    def stacked(self, P: torch.Tensor, Bf: torch.Tensor) -> tuple[dict, dict]:
        """Views (k, *shape) of every parameter and buffer, by name."""
        k = P.shape[0]
        ps = {n: t.view(k, *s) for n, s, t in zip(self.pnames, self.pshapes, P.split(self.psizes, dim=1))}
        bs = {n: t.view(k, *s) for n, s, t in zip(self.bnames, self.bshapes, Bf.split(self.bsizes, dim=1))}
        return ps, bs


@contextlib.contextmanager
def _vmappable_attention():
    """Attention as plain matrix products under vmap: the math SDPA backend, and no fused fast path of
    nn.MultiheadAttention / nn.TransformerEncoderLayer. The fused and flash kernels have no batching rule,
    and vmap would run them replica by replica (the same numbers, k times slower)."""
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def _args(x) -> tuple:
    """The model's positional inputs: one tensor, or a tuple of them (e.g. source, target, dropout key)."""
    return x if isinstance(x, tuple) else (x,)


class _Exec:
    """Deferred writes of BN running statistics into X (see finish())."""

    name = "exec"

    def __init__(self):
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def finish(self) -> None:
        """Write the updated BN running statistics into X. Called after the backward pass: an in-place
        write into X before it would invalidate the weight views autograd saved."""
        with torch.no_grad():
            for row, new in self._pending:
                if new.data_ptr() != row.data_ptr():  # k = 1: a view after all, BN wrote X itself
                    row.copy_(new.view_as(row))
        self._pending = []


class LoopExec(_Exec):
    """The reference: k calls of the ordinary module, replica j on row j's views (BN writes X directly)."""

    name = "loop"

    def __init__(self, proto: nn.Module, layout: Layout):
        super().__init__()
        self.model, self.layout = proto, layout

    def forward(self, P: torch.Tensor, Bf: torch.Tensor, x: torch.Tensor, train: bool,
                shared: bool = False) -> torch.Tensor:
        self.model.train(train)
        ps, bs = self.layout.stacked(P, Bf)
        args = _args(x)
        outs = [functional_call(self.model, ({n: v[j] for n, v in ps.items()}, {n: v[j] for n, v in bs.items()}),
                                args if shared else tuple(a[j] for a in args)) for j in range(P.shape[0])]
        return torch.stack(outs)


class VmapExec(LoopExec):
    """Any model: vmap over functional_call with every weight and buffer stacked along the replica axis.
    vmap's batch norm updates strided (non-contiguous) running statistics in a copy, so the buffers go in
    as contiguous copies and finish() writes them back."""

    name = "vmap"

    def forward(self, P: torch.Tensor, Bf: torch.Tensor, x: torch.Tensor, train: bool,
                shared: bool = False) -> torch.Tensor:
        self.model.train(train)
        ps, views = self.layout.stacked(P, Bf)
        bs = {n: v.contiguous() for n, v in views.items()}
        if train:
            self._pending += [(views[n], bs[n]) for n in views]

        def f(p, b, args):
            return functional_call(self.model, (p, b), args)

        with _vmappable_attention():
            return vmap(f, in_dims=(0, 0, None if shared else 0))(ps, bs, _args(x))


class GroupedResNetExec(_Exec):
    """A CifarResNet's k replicas as one grouped network (replica r = channel group r of every layer)."""

    name = "grouped"

    def __init__(self, proto: nn.Module, layout: Layout):
        if not isinstance(proto, CifarResNet):
            raise TypeError("the grouped executor needs a CifarResNet")
        super().__init__()
        self.proto, self.layout = proto, layout
        self.pidx = {n: i for i, n in enumerate(layout.pnames)}
        self.bidx = {n: i for i, n in enumerate(layout.bnames)}
        self.convs = {n: m for n, m in proto.named_modules() if isinstance(m, nn.Conv2d)}
        self.bns = {n: m for n, m in proto.named_modules() if isinstance(m, nn.BatchNorm2d)}
        for name, m in self.bns.items():
            if m.momentum is None or not m.affine or not m.track_running_stats:
                raise ValueError(f"grouped execution needs affine BN with running stats and a fixed momentum ({name})")

    def _conv(self, name: str, x: torch.Tensor, ps: list, k: int) -> torch.Tensor:
        m = self.convs[name]
        w = ps[self.pidx[name + ".weight"]]  # (k, out*in*kh*kw) view of P
        out_c, in_c, kh, kw = m.weight.shape
        return F.conv2d(x, w.reshape(k * out_c, in_c, kh, kw), None, m.stride, m.padding, groups=k)

    def _bn(self, name: str, x: torch.Tensor, ps: list, bs: list, train: bool) -> torch.Tensor:
        m = self.bns[name]
        w, b = ps[self.pidx[name + ".weight"]], ps[self.pidx[name + ".bias"]]  # (k, c) each
        rm_row, rv_row = bs[self.bidx[name + ".running_mean"]], bs[self.bidx[name + ".running_var"]]
        rm, rv = rm_row.reshape(-1), rv_row.reshape(-1)  # (k*c,) copies: BN updates them in place ...
        out = F.batch_norm(x, rm, rv, w.reshape(-1), b.reshape(-1), train, m.momentum, m.eps)
        if train:  # ... and finish() writes them back into the replicas' rows of X
            self._pending += [(rm_row, rm), (rv_row, rv)]
        return out


    def forward(self, P: torch.Tensor, Bf: torch.Tensor, x: torch.Tensor, train: bool,
                shared: bool = False) -> torch.Tensor:
        k = P.shape[0]
        ps = list(P.split(self.layout.psizes, dim=1))
        bs = list(Bf.split(self.layout.bsizes, dim=1))
        if shared:  # one batch (B, C, H, W) for all replicas (evaluation)
            x = x.repeat(1, k, 1, 1)
        else:  # (k, B, C, H, W) -> (B, k*C, H, W): replica r's images in channel group r
            x = x.transpose(0, 1).reshape(x.shape[1], k * x.shape[2], *x.shape[3:])
        out = F.relu(self._bn("bn1", self._conv("conv1", x, ps, k), ps, bs, train))
        for stage in ("layer1", "layer2", "layer3"):
            for i, _ in enumerate(getattr(self.proto, stage)):
                blk = f"{stage}.{i}"
                h = F.relu(self._bn(f"{blk}.bn1", self._conv(f"{blk}.conv1", out, ps, k), ps, bs, train))
                h = self._bn(f"{blk}.bn2", self._conv(f"{blk}.conv2", h, ps, k), ps, bs, train)
                if f"{blk}.shortcut.0" in self.convs:
                    sc = self._bn(f"{blk}.shortcut.1", self._conv(f"{blk}.shortcut.0", out, ps, k), ps, bs, train)
                else:
                    sc = out
                out = F.relu(h + sc)
        feats = out.mean(dim=(2, 3))  # (B, k*c)
        B = feats.shape[0]
        feats = feats.view(B, k, -1).transpose(0, 1)  # (k, B, c)
        fc = self.proto.fc
        W = ps[self.pidx["fc.weight"]].view(k, fc.out_features, fc.in_features)
        bias = ps[self.pidx["fc.bias"]].view(k, 1, fc.out_features)
        return torch.baddbmm(bias, feats, W.transpose(1, 2))  # (k, B, classes)


def make_executor(replica_exec: str, proto: nn.Module, layout: Layout, batched_kind: str = "auto"):
    """replica_exec 'loop' -> LoopExec; 'batched' -> grouped for a CifarResNet, vmap for anything else
    (batched_kind 'vmap' forces vmap, e.g. to compare the two)."""
    if replica_exec == "loop":
        return LoopExec(proto, layout)
    if replica_exec != "batched":
        raise ValueError(f"replica_exec={replica_exec!r}: choose one of {', '.join(EXECS)}")
    if batched_kind == "vmap" or (batched_kind == "auto" and not isinstance(proto, CifarResNet)):
        return VmapExec(proto, layout)
    return GroupedResNetExec(proto, layout)

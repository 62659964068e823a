"""Sharpness of a minimum: the top eigenvalue lambda_max of the training-loss Hessian (and its trace).

Zhu et al. ("Would decentralization hurt generalization?") argue that D-SGD implicitly penalizes
lambda_max together with the consensus distance, so that in large-batch training D-SGD finds
flatter minima than centralized SGD. This module measures it.

  L(theta) = (1/N) sum_{s in S} CE(f(x_s; theta), y_s)   S: a fixed, seeded subset of N training
                                                         images, no augmentation, BN in eval mode
  H v      = d/dtheta (grad L(theta) . v)                 double backward, per chunk of images

The subset is split over the ranks (each rank its share), and every Hessian-vector product is one
float64 Allreduce of d numbers, so the measured operator is the same for any rank count.
The gradient of each chunk is built once with its graph (create_graph) and kept for all products
of one measurement, so a product costs one double-backward pass per chunk; memory grows with the
rank's share of the subset (about three times a training step's activations per image). Computed in
fp32 whatever the run's `precision`.

lambda_max by Lanczos (full reorthogonalisation; converged when the Ritz residual ||H y - theta y||
<= tol |theta|, which guarantees an eigenvalue of H within tol |theta| of theta) or by power
iteration (converged when the Rayleigh quotient changes by <= tol relatively between products;
power iteration finds the eigenvalue of largest magnitude). The trace by Hutchinson's estimator:
mean of z^T H z over Rademacher probes z, with its standard error std(z^T H z) / sqrt(probes).

    python -m hpc_dsgd sharpness runs/NAME/checkpoints/ckpt-000001234 [--samples N] [--replica I]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import CheckpointError, load_checkpoint, verify_checkpoint
from .compat import model_sizes, saved_config
from .config import FIELDS, ConfigError, from_dict
from .data import load_dataset
from .data.augment import normalise
from .models import build_model
from .preflight import check_inputs
from .workloads.spec import sharpness_datasets, spec_of

CHUNK = 250  # images per forward/double-backward pass


@dataclass
class Eigen:
    """lambda_max and how it was obtained."""

    value: float
    hvps: int  # Hessian-vector products used
    tol_reached: float  # the relative criterion at the last product (residual or change)
    converged: bool  # tol_reached <= the requested tolerance


@dataclass
class TraceEstimate:
    value: float  # mean of z^T H z
    stderr: float  # sample std / sqrt(probes) (NaN for one probe)
    probes: int


def _start_vector(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=g, dtype=torch.float64)
    return v / v.norm()


def power_iteration(hvp: Callable[[torch.Tensor], torch.Tensor], d: int, tol: float = 1e-3,
                    max_hvps: int = 100, seed: int = 0) -> Eigen:
    """Eigenvalue of largest magnitude of the symmetric operator hvp (float64 vectors of length d)."""
    v = _start_vector(d, seed)
    lam_prev, rel = math.nan, math.inf
    for k in range(1, max_hvps + 1):
        w = hvp(v)
        lam = float(v @ w)  # Rayleigh quotient of the unit vector v
        if k > 1:
            rel = abs(lam - lam_prev) / max(abs(lam), 1e-30)
            if rel <= tol:
                return Eigen(lam, k, rel, True)
        nw = float(w.norm())
        if nw == 0.0:  # H v = 0: v lies in the null space
            return Eigen(0.0, k, 0.0, True)
        v, lam_prev = w / nw, lam
    return Eigen(lam, max_hvps, rel, rel <= tol)


def lanczos(hvp: Callable[[torch.Tensor], torch.Tensor], d: int, tol: float = 1e-3, max_hvps: int = 100,
            seed: int = 0) -> Eigen:
    """Largest (algebraic) eigenvalue of the symmetric operator hvp by Lanczos with full
    reorthogonalisation; stops when the Ritz residual |beta_j s_j| <= tol |theta|."""
    q = _start_vector(d, seed)
    Q = [q]
    alphas: list[float] = []
    betas: list[float] = []
    theta, rel = math.nan, math.inf
    for j in range(min(max_hvps, d)):
        w = hvp(Q[-1])
        a = float(Q[-1] @ w)
        alphas.append(a)
        w = w - a * Q[-1] - (betas[-1] * Q[-2] if betas else 0.0)
        B = torch.stack(Q)  # (j+1, d)
        for _ in range(2):  # full reorthogonalisation, twice is enough
            w = w - B.T @ (B @ w)
        b = float(w.norm())
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        ev, S = np.linalg.eigh(T)
        theta = float(ev[-1])
        rel = abs(b * S[-1, -1]) / max(abs(theta), 1e-30)  # ||H y - theta y|| / |theta|, y the Ritz vector
        if rel <= tol or b <= 1e-12 * max(abs(theta), 1e-30):
            return Eigen(theta, j + 1, rel, True)
        betas.append(b)
        Q.append(w / b)
    return Eigen(theta, min(max_hvps, d), rel, rel <= tol)


def hutchinson(hvp: Callable[[torch.Tensor], torch.Tensor], d: int, probes: int, seed: int = 0) -> TraceEstimate:
    """tr(H) ~ mean_i z_i^T H z_i, z_i Rademacher; stderr = sample std / sqrt(probes)."""
    g = torch.Generator().manual_seed(seed + 7919)
    vals = []
    for _ in range(probes):
        z = torch.randint(0, 2, (d,), generator=g).to(torch.float64) * 2 - 1
        vals.append(float(z @ hvp(z)))
    a = np.asarray(vals)
    return TraceEstimate(float(a.mean()), float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan,
                         len(a))


def _allreduce(comm, t: torch.Tensor) -> torch.Tensor:
    """Sum of a float64 tensor over the ranks (host buffer: d numbers per product)."""
    if comm is None or comm.Get_size() == 1:
        return t
    from mpi4py import MPI

    h = t.detach().cpu().numpy().copy()
    comm.Allreduce(MPI.IN_PLACE, h, op=MPI.SUM)
    return torch.from_numpy(h).to(t.device)


class HessianOperator:
    """H v of L = (1/total) sum of loss_sum(model(x), y) over every rank's batches, at the model's
    current parameters (evaluation mode: BN uses its running statistics, so L is a function of the
    parameters only). Each product is one Allreduce of d float64 numbers over `comm` (None: one process)."""

    def __init__(self, model: torch.nn.Module, batches: list, total: int, comm=None,
                 loss_sum: Callable | None = None):
        self.model, self.batches, self.total, self.comm = model, batches, total, comm
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.d = sum(p.numel() for p in self.params)
        self.loss_sum = loss_sum or (lambda out, y: F.cross_entropy(out, y, reduction="sum"))
        self.hvps = 0
        self._grads: list | None = None  # per chunk: the gradient with its graph, built on the first product

    def _chunk_grads(self) -> list:
        """grad of every chunk's loss, differentiable (create_graph), kept for all products: each
        product is then one double-backward per chunk. Valid while the parameters do not change."""
        if self._grads is None:
            self.model.eval()
            self._grads = [torch.autograd.grad(self.loss_sum(self.model(x), y), self.params, create_graph=True)
                           for x, y in self.batches]
        return self._grads

    def _split(self, v: torch.Tensor) -> list[torch.Tensor]:
        out, off = [], 0
        for p in self.params:
            out.append(v[off:off + p.numel()].view_as(p).to(device=p.device, dtype=p.dtype))
            off += p.numel()
        return out

    def loss_grad(self) -> tuple[float, float, torch.Tensor]:
        """(L, accuracy % where the model is a classifier, grad L as float64 (d,)), global."""
        self.model.eval()
        g = torch.zeros(self.d, dtype=torch.float64)
        s = torch.zeros(2, dtype=torch.float64)
        for x, y in self.batches:
            out = self.model(x)
            loss = self.loss_sum(out, y)
            gr = torch.autograd.grad(loss, self.params)
            g += torch.cat([t.reshape(-1) for t in gr]).double().cpu()
            s[0] += float(loss.detach())
            if out.dim() == 2 and y.dtype == torch.int64:
                s[1] += float((out.argmax(1) == y).sum())
        s = _allreduce(self.comm, s)
        g = _allreduce(self.comm, g)
        return float(s[0]) / self.total, 100.0 * float(s[1]) / self.total, g / self.total

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        vs = self._split(v)
        out = torch.zeros(self.d, dtype=torch.float64)
        for gr in self._chunk_grads():
            dot = sum((a * b).sum() for a, b in zip(gr, vs))
            hv = torch.autograd.grad(dot, self.params, retain_graph=True, allow_unused=True)
            out += torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1)
                              for t, p in zip(hv, self.params)]).double().cpu()
        self.hvps += 1
        return _allreduce(self.comm, out) / self.total


# -- the training-loss subset ---------------------------------------------------------------------
def sharpness_subset(seed: int, num_train: int, samples: int) -> torch.Tensor:
    """The fixed subset S: the first `samples` of a permutation of the training set seeded by `seed`."""
    if not 1 <= samples <= num_train:
        raise ValueError(f"samples={samples}: need 1 <= samples <= {num_train} (the training set size)")
    g = torch.Generator().manual_seed(seed * 7_368_787 + 29)
    return torch.randperm(num_train, generator=g)[:samples]


def rank_batches(data, idx: torch.Tensor, rank: int, ranks: int, device) -> list:
    """This rank's share of the subset (every ranks-th image), normalised, no augmentation, in chunks."""
    mine = idx[rank::ranks]
    out = []
    for s in range(0, len(mine), CHUNK):
        sel = mine[s:s + CHUNK].to(data.train_x.device)
        x = normalise(data.train_x[sel], data.mean, data.std).to(device)
        out.append((x, data.train_y[sel].to(device)))
    return out


def measure(model: torch.nn.Module, batches: list, total: int, comm=None, method: str = "lanczos",
            tol: float = 1e-3, max_hvps: int = 100, probes: int = 0, seed: int = 0) -> dict:
    """One sharpness row for `model` at its current parameters: loss, lambda_max, trace (all global)."""
    tic = time.perf_counter()
    op = HessianOperator(model, batches, total, comm)
    loss, acc, _ = op.loss_grad()
    eig = (lanczos if method == "lanczos" else power_iteration)(op, op.d, tol, max_hvps, seed)
    tr = hutchinson(op, op.d, probes, seed) if probes else TraceEstimate(math.nan, math.nan, 0)
    return dict(lambda_max=eig.value, converged=int(eig.converged), tol_reached=eig.tol_reached, tol=tol,
                hvps=eig.hvps, trace=tr.value, trace_stderr=tr.stderr, trace_probes=tr.probes,
                samples=total, loss=loss, acc=acc, method=0 if method == "lanczos" else 1,
                seconds=time.perf_counter() - tic)


def load_row(model: torch.nn.Module, row: torch.Tensor) -> torch.nn.Module:
    """Copy one flat replica row (parameters, then the floating-point BN buffers) into `model`."""
    off = 0
    with torch.no_grad():
        tensors = list(model.parameters()) + [b for m in model.modules() for b in m._buffers.values()
                                              if b is not None and b.is_floating_point()]
        for t in tensors:
            t.copy_(row[off:off + t.numel()].view_as(t))
            off += t.numel()
    if off != row.numel():
        raise ValueError(f"a row of {row.numel()} numbers does not fit this model ({off} parameters and buffers)")
    return model


def measure_run(cfg, world, reps, data, epoch: float, it: int) -> list[dict]:
    """The /sharpness rows at this point of a run: the averaged model (replica -1) and, if
    cfg.sharpness_replica >= 0, that local model (its row broadcast from the rank holding it).

    Reads only the replica block reps.X (k, D) and reps.D; the model is a plain module of the run's
    architecture (built without touching the global RNG) into which each row is copied, in fp32."""
    from .comm import global_mean  # comm initialises MPI: the loss-surface figures import this module without it

    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg.model, data.num_classes, cfg.width).to(world.device)

    idx = sharpness_subset(cfg.seed, len(data.train_y), min(cfg.sharpness_samples, len(data.train_y)))
    batches = rank_batches(data, idx, world.rank, world.ranks, world.device)
    rows = []
    for replica in [-1] + ([cfg.sharpness_replica] if cfg.sharpness_replica >= 0 else []):
        if replica < 0:
            row = global_mean(world, reps.X)
        else:
            row = reps.X[replica - world.first].detach().cpu().numpy().copy() if world.rank_of(replica) == world.rank \
                else np.empty(reps.D, dtype=np.float32)
            world.comm.Bcast(row, root=world.rank_of(replica))
            row = torch.from_numpy(row)
        load_row(model, row.to(device=world.device, dtype=torch.float32))
        r = measure(model, batches, len(idx), world.comm, cfg.sharpness_method, cfg.sharpness_tol,
                    cfg.sharpness_max_hvps, cfg.sharpness_trace_probes, cfg.seed)
        rows.append(dict(epoch=epoch, it=it, replica=replica, **r))
    return rows


def describe(row: dict) -> str:
    who = "averaged model" if row["replica"] < 0 else f"replica {row['replica']}"
    tr = (f", trace {row['trace']:.4g} ± {row['trace_stderr']:.2g} ({row['trace_probes']} probes)"
          if row["trace_probes"] else "")
    return (f"sharpness {who}: lambda_max {row['lambda_max']:.6g} ({'lanczos' if row['method'] == 0 else 'power'}, "
            f"{row['hvps']} HVPs, relative tolerance {row['tol_reached']:.1e} "
            f"{'<=' if row['converged'] else '> (NOT converged)'} {row['tol']:.0e}){tr}; loss {row['loss']:.4f}, "
            f"train acc {row['acc']:.1f}% on {row['samples']} images, {row['seconds']:.1f}s")


# -- offline: python -m hpc_dsgd sharpness CHECKPOINT ----------------------------------------------
def main(argv: list[str]) -> int:
    """Sharpness of a checkpoint's averaged model (and optionally one local model), under mpiexec or alone."""
    ap = argparse.ArgumentParser(prog="python -m hpc_dsgd sharpness",
                                 description="lambda_max (and the Hessian trace) of the training loss at a "
                                             "checkpoint's averaged model; the subset is split over the ranks.")
    ap.add_argument("checkpoint", help="a checkpoint directory RUN_DIR/checkpoints/ckpt-<iteration>")
    ap.add_argument("--samples", type=int, default=None, help="training images in the subset (default: the "
                    "run's sharpness_samples)")
    ap.add_argument("--replica", type=int, default=None, help="also measure this local model (global id)")
    ap.add_argument("--method", choices=("lanczos", "power"), default=None, help="default: the run's")
    ap.add_argument("--tol", type=float, default=None, help="relative tolerance (default: the run's)")
    ap.add_argument("--max-hvps", type=int, default=None, help="cap on Hessian-vector products (default: the run's)")
    ap.add_argument("--probes", type=int, default=None, help="Hutchinson probes for the trace (default: the run's)")
    ap.add_argument("--data-dir", default=None, help="override the run's data_dir")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    args = ap.parse_args(argv)

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, ranks = comm.Get_rank(), comm.Get_size()
    err, cfg_d = None, None
    if rank == 0:
        try:
            for opt, v, lo in (("--samples", args.samples, 1), ("--max-hvps", args.max_hvps, 2), ("--probes", args.probes, 0)):
                if v is not None and v < lo:
                    raise ConfigError(f"{opt} {v}: need >= {lo}")
            man = verify_checkpoint(args.checkpoint, sizes=model_sizes)
            cfg_d = saved_config(man["meta"])
            cfg_d = {k: v for k, v in cfg_d.items() if k in _config_fields()}
            over = {"sharpness_samples": args.samples, "sharpness_method": args.method, "sharpness_tol": args.tol,
                    "sharpness_max_hvps": args.max_hvps, "sharpness_trace_probes": args.probes,
                    "sharpness_replica": -1 if args.replica is None else args.replica, "device": "cpu",
                    "data_dir": args.data_dir}
            cfg_d.update({k: v for k, v in over.items() if v is not None})
            if args.replica is not None and not 0 <= args.replica < int(cfg_d.get("n", 0)):
                raise ConfigError(f"--replica {args.replica}: the checkpoint holds replicas 0..{int(cfg_d.get('n', 0)) - 1}")
            cfg = from_dict(cfg_d, ranks=1)
            check_inputs(cfg)  # the data (and what else the run named: references, branch_from)
            if not spec_of(cfg.dataset).supports_sharpness:
                raise ConfigError(f"{args.checkpoint} is a {cfg.dataset} ({spec_of(cfg.dataset).task}) run: the sharpness "
                                  f"study measures checkpoints of {', '.join(sharpness_datasets())}")
            ntrain = len(load_dataset(cfg.dataset, cfg.data_dir or None).train_y)
            if cfg.sharpness_samples > ntrain:
                raise ConfigError(f"--samples {cfg.sharpness_samples}: the training set has {ntrain} images; "
                                  f"choose 1..{ntrain}")
            if args.device not in ("cpu", "cuda"):
                raise ConfigError(f"--device {args.device!r}: choose cpu or cuda")
            if args.device == "cuda" and not torch.cuda.is_available():
                raise ConfigError(f"--device cuda but torch sees no CUDA device on this node (torch {torch.__version__}, "
                                  f"built for CUDA {torch.version.cuda or 'none'}): use --device cpu, or run on a GPU node")
        except (CheckpointError, ConfigError, ValueError, OSError) as e:
            err = str(e)
    err, cfg_d = comm.bcast((err, cfg_d), root=0)
    if err:
        if rank == 0:
            print(f"hpc_dsgd: error: {err}", file=sys.stderr, flush=True)
        return 2
    cfg = from_dict(cfg_d, ranks=1)
    dev = torch.device(args.device)
    torch.set_num_threads(cfg.torch_threads)
    data = load_dataset(cfg.dataset, cfg.data_dir or None)
    ids = [int(i) for i in np.array_split(np.arange(cfg.n), ranks)[rank]]
    _, tensors, _, _ = load_checkpoint(args.checkpoint, ids, "cpu")
    X = tensors["X"]
    s = X.sum(0, dtype=torch.float64).numpy().copy() if len(ids) else None
    D = comm.bcast(X.shape[1] if rank == 0 else None, root=0)
    s = s if s is not None else np.zeros(D)
    comm.Allreduce(MPI.IN_PLACE, s, op=MPI.SUM)
    rows_x = [("averaged model", -1, torch.from_numpy(s / cfg.n))]
    if cfg.sharpness_replica >= 0:
        owner = next(r for r in range(ranks) if cfg.sharpness_replica in
                     np.array_split(np.arange(cfg.n), ranks)[r])
        buf = X[ids.index(cfg.sharpness_replica)].numpy().copy() if rank == owner else np.empty(D, np.float32)
        comm.Bcast(buf, root=owner)
        rows_x.append((f"replica {cfg.sharpness_replica}", cfg.sharpness_replica, torch.from_numpy(buf)))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.num_classes, cfg.width).to(dev)
    idx = sharpness_subset(cfg.seed, len(data.train_y), cfg.sharpness_samples)
    batches = rank_batches(data, idx, rank, ranks, dev)
    for _, replica, row in rows_x:
        load_row(model, row.to(torch.float32).to(dev))
        r = dict(replica=replica, **measure(model, batches, len(idx), comm, cfg.sharpness_method, cfg.sharpness_tol,
                                            cfg.sharpness_max_hvps, cfg.sharpness_trace_probes, cfg.seed))
        if rank == 0:
            print(describe(r), flush=True)
    return 0


def _config_fields() -> set:
    return set(FIELDS)

"""MPI side of D-SGD: the rank/replica layout, device choice, and gossip X <- W_t X on a flat block.

The replicas form the rows of X (n x D). Rank r holds the contiguous block of rows
[r*k, (r+1)*k) as one (k, D) tensor. Gossip is a distributed sparse product: rows whose
in-neighbours live on this rank mix locally; rows held elsewhere arrive in ONE message per
neighbour rank per step (packed contiguously), through an MPI neighbourhood collective on
 - a periodic Cartesian communicator (ring, torus) when the rank-level graph is a proper periodic grid,
 - a distributed-graph communicator otherwise (fixed graphs, and one cached per distinct W_t for the
   one-peer exponential graph),
 - paired point-to-point exchanges for random matchings (a new W_t every step).
The communicator is always an argument.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from mpi4py import MPI

from .topology import Topology

_MPI_DTYPES = {torch.float32: MPI.FLOAT, torch.float64: MPI.DOUBLE}


@dataclass
class World:
    """Who this process is: communicator, replica block, device."""

    comm: MPI.Comm
    k: int  # replicas on this rank
    device: torch.device
    cuda_aware: bool  # device buffers go to MPI directly

    @property
    def rank(self) -> int:
        return self.comm.Get_rank()

    @property
    def ranks(self) -> int:
        return self.comm.Get_size()

    @property
    def n(self) -> int:
        return self.ranks * self.k

    @property
    def first(self) -> int:
        """Global index of this rank's first replica."""
        return self.rank * self.k

    @property
    def replica_ids(self) -> range:
        return range(self.first, self.first + self.k)

    def rank_of(self, i: int) -> int:
        return i // self.k


def mpi_cuda_aware(comm: MPI.Comm) -> bool:
    """Whether this MPI takes CUDA device buffers: MPI 4.1 memory-alloc-kinds info key (MPICH,
    Open MPI 5), overridable with HPC_DSGD_CUDA_AWARE=0/1. Detected, never assumed."""
    env = os.environ.get("HPC_DSGD_CUDA_AWARE")
    if env in ("0", "1"):
        return env == "1"
    try:
        kinds = comm.Get_info().Get("mpi_memory_alloc_kinds") or ""
    except Exception:  # an MPI older than 4.1 has no such key: assume host memory only
        kinds = ""
    return "cuda" in kinds.lower()


def select_device(comm: MPI.Comm, request: str) -> torch.device:
    """'cpu', 'cuda' or 'auto' (cuda if available). One GPU per rank: node-local rank modulo GPU count."""
    if request == "cpu" or (request == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch sees no CUDA device on this node")
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    local = node.Get_rank()
    node.Free()
    return torch.device("cuda", local % torch.cuda.device_count())


def make_world(comm: MPI.Comm, replicas_per_rank: int, device: str = "auto") -> World:
    dev = select_device(comm, device)
    return World(comm=comm, k=replicas_per_rank, device=dev, cuda_aware=dev.type == "cuda" and mpi_cuda_aware(comm))


# ----------------------------------------------------------------------------------------------
# The exchange plan of one W_t for one rank: pure bookkeeping from W, identical on every rank.


@dataclass
class _Plan:
    sources: list[int]  # neighbour ranks we receive from, in communicator order
    dests: list[int]  # neighbour ranks we send to, in communicator order
    send_rows: list[np.ndarray]  # per dest: local row indices packed (sorted global order)
    recv_rows: list[np.ndarray]  # per source: global row indices received (sorted)
    terms: list[list[tuple[int, float]]]  # per local output row: (slot, w) in increasing global j
    send_index: torch.Tensor  # concatenated send_rows, for one index_select
    comm: MPI.Comm | None  # neighbourhood communicator (None: point-to-point or purely local)
    kind: str  # "cart", "graph", "p2p", "local"

    def __post_init__(self) -> None:
        # message sizes and offsets in rows, fixed per plan: computed once, not every gossip step
        self.scounts = [len(r) for r in self.send_rows]
        self.rcounts = [len(r) for r in self.recv_rows]
        self.sdispl = [int(x) for x in np.cumsum([0] + self.scounts[:-1])] if self.scounts else []
        self.rdispl = [int(x) for x in np.cumsum([0] + self.rcounts[:-1])] if self.rcounts else []
        self.nsend, self.nrecv = sum(self.scounts), sum(self.rcounts)


def _rows_needed(W: np.ndarray, dst_rows: range, src_rows: range) -> np.ndarray:
    """Global indices j in src_rows with w_ij != 0 for some i in dst_rows (sorted)."""
    sub = W[dst_rows.start:dst_rows.stop, src_rows.start:src_rows.stop]
    return np.flatnonzero((sub != 0).any(axis=0)) + src_rows.start


def _build_plan(world: World, W: np.ndarray, comm_kind: str, cart_dims: list[int] | None) -> _Plan:
    k, me = world.k, world.rank
    def block(r: int) -> range:
        return range(r * k, (r + 1) * k)

    mine = block(me)
    need_from = {q: _rows_needed(W, mine, block(q)) for q in range(world.ranks) if q != me}
    give_to = {q: _rows_needed(W, block(q), mine) for q in range(world.ranks) if q != me}
    sources = sorted(q for q, rows in need_from.items() if len(rows))
    dests = sorted(q for q, rows in give_to.items() if len(rows))
    comm: MPI.Comm | None = None
    if not sources and not dests:
        comm_kind = "local"
    elif comm_kind == "cart" and cart_dims is not None:
        comm = world.comm.Create_cart(cart_dims, periods=[True] * len(cart_dims), reorder=False)
        order = []
        for d in range(len(cart_dims)):
            lo, hi = comm.Shift(d, 1)
            order += [lo, hi]
        ok = sorted(order) == sources and sources == dests
        if not world.comm.allreduce(ok, op=MPI.LAND):  # decided together: every rank takes one path
            comm.Free()
            comm, comm_kind = None, "graph"
        else:
            sources = dests = order
    if comm is None and comm_kind in ("graph", "cart"):
        comm_kind = "graph"
        comm = world.comm.Create_dist_graph_adjacent(sources, dests, reorder=False)
    slot = {}  # global row -> slot in [local rows | received rows]
    for loc, g in enumerate(mine):
        slot[g] = loc
    off = k
    recv_rows = []
    for q in sources:
        rows = need_from[q]
        recv_rows.append(rows)
        for g in rows:
            slot[int(g)] = off
            off += 1
    terms = []
    for g in mine:
        cols = np.flatnonzero(W[g])
        terms.append([(slot[int(j)], float(W[g, j])) for j in cols])
    send_rows = [give_to[q] - mine.start for q in dests]
    send_index = torch.as_tensor(np.concatenate(send_rows) if send_rows else np.zeros(0, dtype=np.int64))
    return _Plan(sources, dests, send_rows, recv_rows, terms, send_index, comm, comm_kind)


def _cart_dims(topology: Topology, ranks: int, k: int) -> list[int] | None:
    """Rank-level periodic grid for ring/torus when it is one with every side >= 3, else None."""
    if topology.name == "ring" and ranks >= 3:
        return [ranks]
    if topology.name == "torus":
        a, b = topology.shape
        if b % k == 0 and a >= 3 and b // k >= 3:
            return [a, b // k]
    return None


class Gossiper:
    """X <- W_t X on this rank's (k, D) block, one message per neighbour rank per step."""

    def __init__(self, world: World, topology: Topology, D: int, dtype: torch.dtype = torch.float32,
                 capture: bool = False):
        if topology.n != world.n:
            raise ValueError(f"topology has n={topology.n} replicas but the world holds {world.n}")
        self.world, self.topology, self.D, self.dtype = world, topology, D, dtype
        self.mpi_dtype = _MPI_DTYPES[dtype]
        self.rowtype = self.mpi_dtype.Create_contiguous(D).Commit()  # counts in rows: no int32 overflow
        self.exact = topology.name == "complete" and not topology.lazy  # W = J: the exact average is an Allreduce
        self._plans: dict[int, _Plan] = {}
        self._staging: dict[tuple[str, int], torch.Tensor] = {}
        # CUDA: a gossip step that needs no MPI (all neighbours on this rank, e.g. n replicas on one GPU)
        # is captured once per (W_t, theta, X) as a CUDA graph: k*terms row kernels, one launch
        self.capture = capture and world.device.type == "cuda"
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor | None]] = {}
        # per-replica state of a communication mode (modes.py: CHOCO's public copies, overlap's in-flight
        # rows): (k, ...) blocks checkpointed with X and restored on resume; none for plain gossip
        self.companions: dict[str, torch.Tensor] = {}
        if not self.exact and topology.period is not None:
            # Fixed graphs and the one-peer exponential cycle: every plan (and its communicator)
            # is built up front, collectively, in the same order on every rank.
            cart = _cart_dims(topology, world.ranks, world.k)
            for t in range(topology.period):
                self._plans[t] = _build_plan(world, topology.W(t), "cart" if cart else "graph", cart)

    def start(self, X: torch.Tensor, resumed: bool) -> None:
        """Called once the run's state is in place (fresh, branched or resumed), before the first iteration:
        a mode initialises its companions, or rebuilds what follows from them. Plain gossip has nothing to do."""

    @property
    def kind(self) -> str:
        if self.exact:
            return "allreduce"
        if self.topology.period is None:
            return "p2p"
        return self._plans[0].kind

    def plan(self, t: int) -> _Plan:
        if self.topology.period is not None:
            return self._plans[t % self.topology.period]
        return _build_plan(self.world, self.topology.W(t), "p2p", None)  # random matching: no new comm

    # -- buffers ---------------------------------------------------------------------------
    def _buf(self, name: str, rows: int, device: torch.device, pinned: bool = False) -> torch.Tensor:
        key = (name, rows)
        buf = self._staging.get(key)
        if buf is None:
            buf = torch.empty((max(rows, 1), self.D), dtype=self.dtype, device=device,
                              pin_memory=pinned and torch.cuda.is_available())
            self._staging[key] = buf
        return buf[:rows]

    def _mpi(self, t: torch.Tensor):
        """A buffer MPI can read/write without a copy (numpy view on CPU, CUDA array interface on GPU)."""
        return t.numpy() if t.device.type == "cpu" else t

    # -- the step --------------------------------------------------------------------------
    def step(self, X: torch.Tensor, t: int, theta_cols: int | None = None) -> tuple[int, torch.Tensor | None]:
        """In place X <- W_t X. Returns (bytes sent by this rank, theta_i^2 per local row or None).

        theta_i^2 = ||(W X)_i - x_i||^2 over the first theta_cols columns (paper Sec. 5), computed
        here from the gossip step at the cost of one subtraction."""
        if self.exact:
            return self.allreduce_average(X, theta_cols)
        plan = self.plan(t)
        if self.capture and plan.kind == "local" and X.is_cuda and self.topology.period is not None:
            return 0, self._replay_local(plan, t % self.topology.period, X, theta_cols)
        return self._step(plan, X, theta_cols)

    def _replay_local(self, plan: _Plan, key: int, X: torch.Tensor, theta_cols: int | None) -> torch.Tensor | None:
        """The local step as a CUDA graph (captured on first use; the warm-up runs on a copy of X)."""
        k = (key, theta_cols, X.data_ptr())
        if k not in self._graphs:
            saved = X.clone()
            side = torch.cuda.Stream(X.device)
            side.wait_stream(torch.cuda.current_stream(X.device))
            with torch.cuda.stream(side):
                self._step(plan, X, theta_cols)
            torch.cuda.current_stream(X.device).wait_stream(side)
            X.copy_(saved)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                _, theta = self._step(plan, X, theta_cols)
            self._graphs[k] = (graph, theta)
        graph, theta = self._graphs[k]
        graph.replay()
        return theta

    def _step(self, plan: _Plan, X: torch.Tensor, theta_cols: int | None) -> tuple[int, torch.Tensor | None]:
        dev = X.device
        stage = dev.type == "cuda" and not self.world.cuda_aware
        nsend, nrecv = plan.nsend, plan.nrecv
        send = self._buf("send", nsend, dev)
        recv = self._buf("recv", nrecv, dev)
        if nsend:
            plan.send_index = plan.send_index.to(dev)  # once per plan (a no-op on the CPU)
            torch.index_select(X, 0, plan.send_index, out=send)
        if plan.kind != "local":
            s_mpi, r_mpi = send, recv
            if stage:  # device -> pinned host -> MPI -> pinned host -> device
                s_mpi = self._buf("hsend", nsend, torch.device("cpu"), pinned=True)
                r_mpi = self._buf("hrecv", nrecv, torch.device("cpu"), pinned=True)
                s_mpi.copy_(send)
            elif dev.type == "cuda":
                torch.cuda.current_stream(dev).synchronize()  # MPI reads device memory directly
            self._exchange(plan, s_mpi, r_mpi)
            if stage:
                recv.copy_(r_mpi, non_blocking=False)
        out = self._buf("out", self.world.k, dev)
        for i, terms in enumerate(plan.terms):  # sum_j w_ij x_j in increasing j: bitwise split-independent
            acc = out[i]
            (s0, w0), rest = terms[0], terms[1:]
            torch.mul(X[s0] if s0 < self.world.k else recv[s0 - self.world.k], w0, out=acc)
            for s, w in rest:
                acc.add_(X[s] if s < self.world.k else recv[s - self.world.k], alpha=w)
        theta = None
        if theta_cols is not None:
            theta = (out[:, :theta_cols] - X[:, :theta_cols]).pow(2).sum(dim=1, dtype=torch.float64)
        X.copy_(out)
        return nsend * self.D * X.element_size(), theta

    def _exchange(self, plan: _Plan, send: torch.Tensor, recv: torch.Tensor, rowtype=None) -> None:
        if plan.comm is not None:  # blocking neighbourhood collective
            rowtype = rowtype or self.rowtype
            plan.comm.Neighbor_alltoallv([self._mpi(send), (plan.scounts, plan.sdispl), rowtype],
                                         [self._mpi(recv), (plan.rcounts, plan.rdispl), rowtype])
            return
        MPI.Request.Waitall(self._start_exchange(plan, send, recv, rowtype))

    def _start_exchange(self, plan: _Plan, send: torch.Tensor, recv: torch.Tensor, rowtype=None) -> list:
        """Start the exchange of one row (of `rowtype`: D numbers by default; a compressed message in CHOCO)
        per counted row with the plan's neighbours, non-blocking; returns the requests to wait for."""
        rowtype = rowtype or self.rowtype
        scounts, rcounts, sdispl, rdispl = plan.scounts, plan.rcounts, plan.sdispl, plan.rdispl
        sb, rb = self._mpi(send), self._mpi(recv)
        if plan.comm is not None:
            return [plan.comm.Ineighbor_alltoallv([sb, (scounts, sdispl), rowtype], [rb, (rcounts, rdispl), rowtype])]
        comm = self.world.comm  # paired exchange (matchings): one Isend/Irecv per partner rank
        reqs = []
        for q, c, d in zip(plan.sources, rcounts, rdispl):
            reqs.append(comm.Irecv([rb[d:d + c], c, rowtype], source=q, tag=77))
        for q, c, d in zip(plan.dests, scounts, sdispl):
            reqs.append(comm.Isend([sb[d:d + c], c, rowtype], dest=q, tag=77))
        return reqs

    def allreduce_average(self, X: torch.Tensor, theta_cols: int | None = None) -> tuple[int, torch.Tensor | None]:
        """Exact averaging (W = 11^T/n) of all n rows: float64 Allreduce of the local row sums."""
        xbar = global_mean(self.world, X)
        theta = None
        if theta_cols is not None:
            theta = (X[:, :theta_cols] - xbar[:theta_cols].to(X.dtype)).pow(2).sum(dim=1, dtype=torch.float64)
        X.copy_(xbar.to(X.dtype).expand_as(X))
        return self.D * 8, theta

    def free(self) -> None:
        for plan in self._plans.values():
            if plan.comm is not None:
                plan.comm.Free()
        self._plans.clear()
        self.rowtype.Free()


def global_mean(world: World, X: torch.Tensor) -> torch.Tensor:
    """xbar = (1/n) sum_i x_i over all ranks, in float64 (one Allreduce of D numbers)."""
    s = X.sum(dim=0, dtype=torch.float64)
    if s.device.type == "cuda" and not world.cuda_aware:
        h = s.cpu()
        world.comm.Allreduce(MPI.IN_PLACE, h.numpy(), op=MPI.SUM)
        s = h.to(X.device)
    else:
        if s.device.type == "cuda":
            torch.cuda.current_stream(s.device).synchronize()
        world.comm.Allreduce(MPI.IN_PLACE, s.numpy() if s.device.type == "cpu" else s, op=MPI.SUM)
    return s / world.n


def average_rows(world: World, G: torch.Tensor) -> torch.Tensor:
    """Every row of G (k, d) <- the mean of all n rows over all ranks (float64 sum of the local rows,
    one Allreduce of d numbers): the gradient average of data-parallel (centralized) SGD. In place."""
    G.copy_(global_mean(world, G).to(G.dtype).expand_as(G))
    return G


def allreduce_scalars(comm: MPI.Comm, values: list[float] | np.ndarray) -> np.ndarray:
    """All per-iteration scalars (loss, counts, theta, phi, ...) in ONE small float64 Allreduce."""
    buf = np.asarray(values, dtype=np.float64).copy()
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    return buf

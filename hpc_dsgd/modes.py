"""Communication modes: what "one more round" of mixing is. The equations are in docs/communication.md.

Every mode answers the interface the policies (consensus.py) use of comm.Gossiper:
  step(X, s, theta_cols) -> (bytes this rank sent, theta_i^2 per local row)   one round, gossip step index s
  allreduce_average(X, theta_cols)                                           exact averaging
  companions: {name: (k, ...) tensor}   per-replica state, checkpointed beside X and restored on resume
  start(X, resumed)                     once the state is in place: initialise or rebuild from companions
  topology                              the effective n x n mixing (W(t), p(), describe()); kind; free()
so gossip, target and adaptive control compose with every mode (a combination that does not is refused in
config.validate). A mode is a class here plus a line in MODES.

  gossip        comm.Gossiper: X <- W_s X (plain D-SGD)
  choco         CHOCO-SGD (Koloskova et al. 2019): compressed differences to public copies x^
  hierarchical  exact average inside a node, then gossip between nodes
  overlap       the exchange of iteration t completes after the local step of t + 1 (one-step-stale)
"""
from __future__ import annotations

import numpy as np
import torch
from mpi4py import MPI

from .comm import Gossiper, World
from .compression import QSGD, make_operator
from .topology import Topology


def _mix(terms, own: torch.Tensor, halo: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out_i = sum_j w_ij v_j over the plan's terms (slot < k: own rows, else received rows), in increasing j."""
    k = own.shape[0]
    for i, row in enumerate(terms):
        (s0, w0), rest = row[0], row[1:]
        torch.mul(own[s0] if s0 < k else halo[s0 - k], w0, out=out[i])
        for s, w in rest:
            out[i].add_(own[s] if s < k else halo[s - k], alpha=w)
    return out


def _theta(diff: torch.Tensor, cols: int | None) -> torch.Tensor | None:
    return None if cols is None else diff[:, :cols].pow(2).sum(dim=1, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------
class ChocoGossiper(Gossiper):
    """CHOCO-SGD's consensus round, with a compression operator Q (compression.py):
        q_i = Q(x_i - x^_i);  x^_j += q_j  (j = i and every in-neighbour, from the received messages);
        x_i += gamma * sum_j w_ij (x^_j - x^_i).
    Only the messages q cross MPI. A rank keeps x^ of its own rows (the companion `choco_xhat`, checkpointed)
    and of the rows it receives (`halo`): each copy is updated by the same float operations on the same
    decoded message, so every copy of x^_j is bitwise the owner's; a resume rebuilds the halo from the owners'
    rows with one dense exchange. theta_i = ||sum_j w_ij x^_j - x^_i|| (the estimator on the public copies).
    x^_i starts at x_i (see start: a departure from the paper's x^_i = 0, docs/communication.md).
    Fixed topologies only (config.validate): the copies are kept for fixed neighbours."""

    def __init__(self, world: World, topology: Topology, D: int, operator, gamma: float,
                 dtype: torch.dtype = torch.float32):
        super().__init__(world, topology, D, dtype)
        if self.exact or topology.period != 1:
            raise ValueError(f"compressed gossip needs a fixed sparse topology, not {topology.name!r}")
        self.op, self.gamma = operator, gamma
        self.scale = operator.choco_scale(D) if isinstance(operator, QSGD) else 1.0
        self.M = operator.nbytes(D)
        self.msgtype = MPI.BYTE.Create_contiguous(self.M).Commit()
        plan, dev = self.plan(0), world.device
        self.ids = list(world.replica_ids)
        self.recv_ids = [int(j) for rows in plan.recv_rows for j in rows]
        self.hat = torch.zeros(world.k, D, dtype=dtype, device=dev)
        self.halo = torch.zeros(plan.nrecv, D, dtype=dtype, device=dev)
        self.companions = {"choco_xhat": self.hat}

    @property
    def kind(self) -> str:
        return f"choco-{self.op.name}+{super().kind}"

    def start(self, X, resumed):
        """x^_i = x_i at a fresh start (every replica starts from the same model, so this costs the paper's x^_i = 0
        nothing and spares the first rounds from sending the whole model); a resume keeps the checkpointed x^_i. The
        neighbours' copies are then the owners' rows: one dense exchange (set-up, not counted in bytes_sent)."""
        if not resumed:
            self.hat.copy_(X)
        plan = self.plan(0)
        send = self.hat.index_select(0, plan.send_index.to(self.hat.device))
        self._move(plan, send, self.halo, self.rowtype)

    def _move(self, plan, send: torch.Tensor, recv: torch.Tensor, rowtype) -> None:
        if plan.kind == "local":
            return
        if send.device.type == "cuda":  # messages are small: through the host whatever the MPI
            hs, hr = send.cpu(), torch.empty(recv.shape, dtype=recv.dtype)
            self._exchange(plan, hs.contiguous(), hr, rowtype)
            recv.copy_(hr)
        else:
            self._exchange(plan, send.contiguous(), recv, rowtype)

    def step(self, X, t, theta_cols=None):
        plan, D = self.plan(t), self.D
        msg = self.op.encode((X - self.hat).float(), self.ids, t)
        recv = torch.empty(plan.nrecv, self.M, dtype=torch.uint8, device=X.device)
        self._move(plan, msg.index_select(0, plan.send_index.to(X.device)), recv, self.msgtype)
        q_self = self.op.decode(msg, self.ids, t, D)
        q_recv = self.op.decode(recv, self.recv_ids, t, D) if plan.nrecv else self.halo.new_zeros(0, D)
        if self.scale != 1.0:
            q_self.mul_(self.scale)
            q_recv.mul_(self.scale)
        self.hat.add_(q_self.to(self.dtype))
        self.halo.add_(q_recv.to(self.dtype))
        diff = _mix(plan.terms, self.hat, self.halo, torch.empty_like(self.hat)).sub_(self.hat)
        X.add_(diff, alpha=self.gamma)
        return plan.nsend * self.M, _theta(diff, theta_cols)

    def free(self):
        self.msgtype.Free()
        super().free()


# ----------------------------------------------------------------------------------------------
class OverlapGossiper(Gossiper):
    """Gossip overlapped with computation: iteration t, after its local step, completes the exchange of x^t that
    iteration t - 1 started (it ran during this local step), applies its correction, and starts the exchange of its
    own result x^(t+1) (docs/communication.md):
        x_i^(t+1) = x_i^(t+1/2) + c_t * sum_j w_ij^(s_(t-1)) (x_j^t - x_i^t)
                  = sum_j w_ij x_j^t + (x_i^(t+1/2) - x_i^t)          (c_t = 1)
    i.e. the neighbours' values are one local step stale (the local step of t is taken from x^t, mixed with the
    others' x^t). c_t = 1 when iteration t - 1 started an exchange (it gossiped), else 0 (the first iteration,
    after an exact average). The correction has zero mean (W doubly stochastic): the average is D-SGD's.
    Companions: `overlap_prev` = x^(t+1), the rows of the exchange in flight, `overlap_pending` = its gossip step
    index + 1 (0: none). A checkpoint holds them; a resume starts the exchange again from them (the same
    numbers, so the resumed trajectory is bitwise the uninterrupted one)."""

    def __init__(self, world: World, topology: Topology, D: int, dtype: torch.dtype = torch.float32):
        super().__init__(world, topology, D, dtype)
        if self.exact:
            raise ValueError("overlap needs a sparse topology (complete is exact averaging by Allreduce)")
        dev = world.device
        self.prev = torch.zeros(world.k, D, dtype=dtype, device=dev)
        self.pending = torch.zeros(world.k, 1, dtype=torch.int64)
        self.companions = {"overlap_prev": self.prev, "overlap_pending": self.pending}
        self._flight: tuple | None = None  # (plan, requests, recv buffer, host recv buffer or None)

    @property
    def kind(self) -> str:
        return f"overlap+{super().kind}"

    def start(self, X, resumed):
        if not resumed:
            self.pending.zero_()
        elif int(self.pending[0, 0]) > 0:  # the exchange in flight at the checkpoint: started again
            self._launch(int(self.pending[0, 0]) - 1)

    def _launch(self, s: int) -> None:
        plan, dev = self.plan(s), self.prev.device
        send, recv = self._buf("osend", plan.nsend, dev), self._buf("orecv", plan.nrecv, dev)
        host = None
        if plan.nsend:
            torch.index_select(self.prev, 0, plan.send_index.to(dev), out=send)
        reqs = []
        if plan.kind != "local":
            if dev.type == "cuda":  # through pinned host buffers (the simple, always-correct path)
                hs = self._buf("ohsend", plan.nsend, torch.device("cpu"), pinned=True)
                host = self._buf("ohrecv", plan.nrecv, torch.device("cpu"), pinned=True)
                hs.copy_(send)
                send = hs
            reqs = self._start_exchange(plan, send, host if host is not None else recv)
        self._flight = (plan, reqs, recv, host)

    def _complete(self) -> torch.Tensor | None:
        """Wait for the exchange in flight; its correction sum_j w_ij (x_j - x_i) of the rows sent, or None."""
        if self._flight is None:
            return None
        plan, reqs, recv, host = self._flight
        MPI.Request.Waitall(reqs)
        if host is not None:
            recv.copy_(host)
        self._flight = None
        return _mix(plan.terms, self.prev, recv, torch.empty_like(self.prev)).sub_(self.prev)

    def step(self, X, t, theta_cols=None):
        corr = self._complete()
        if corr is None:
            corr = torch.zeros_like(X)
        X.add_(corr)
        self.prev.copy_(X)
        self.pending.fill_(t + 1)
        self._launch(t)
        return self._flight[0].nsend * self.D * X.element_size(), _theta(corr, theta_cols)

    def allreduce_average(self, X, theta_cols=None):
        """Exact averaging: a stale correction in flight is completed and dropped (it has zero mean, so the
        average is unchanged by it); nothing is in flight afterwards."""
        self._complete()
        self.pending.zero_()
        return super().allreduce_average(X, theta_cols)

    def free(self):
        self._complete()
        super().free()


# ----------------------------------------------------------------------------------------------
class HierarchicalTopology:
    """The n x n mixing of hierarchical gossip: w_ij = W_nodes[a(i), a(j)] / m, a(i) = the node of replica i,
    m = replicas per node. With the replicas of node a contiguous, W_h = W_nodes kron (1/m) 1 1^T; its p is the
    node topology's (W_h - J = (W_nodes - J) kron (1/m) 1 1^T has the same singular values)."""

    def __init__(self, nodes: Topology, node_of):
        self.nodes, self.node_of = nodes, np.asarray(node_of, dtype=np.int64)
        self.n, self.name = len(self.node_of), nodes.name
        self.m = self.n // nodes.n
        self.time_varying, self.period = nodes.time_varying, nodes.period

    def W(self, t: int = 0) -> np.ndarray:
        a = self.node_of
        return self.nodes.W(t)[np.ix_(a, a)] / self.m

    def p(self, samples: int = 200) -> float:
        return self.nodes.p(samples) if self.nodes.n > 1 else 1.0

    def describe(self) -> str:
        return f"{self.nodes.describe()} nodes x {self.m} replicas (hierarchy node) n={self.n}"


def node_communicator(comm: MPI.Comm, ranks_per_node: int) -> MPI.Comm:
    """The ranks of this rank's node: consecutive groups of ranks_per_node ranks, or (0) the ranks sharing
    memory with this one (MPI_COMM_TYPE_SHARED)."""
    if ranks_per_node > 0:
        return comm.Split(comm.Get_rank() // ranks_per_node, comm.Get_rank())
    return comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())


class HierarchicalGossiper:
    """Exact average of the node's replicas (Allreduce of the row sums on the node communicator, float64), then
    one gossip step of the node averages over the node topology: rank l of every node gossips with rank l of the
    others (a "rail" communicator per local rank), so every rank gets its node's result without a broadcast.
    Every rank of a node sends its node's row on its rail: ranks_per_node copies of the inter-node traffic
    (a bandwidth-optimal split of the row over the rails is not done). theta_i = ||(W_h X)_i - x_i||."""

    exact = False

    def __init__(self, world: World, topology_name: str, D: int, ranks_per_node: int = 0, seed: int = 0,
                 dtype: torch.dtype = torch.float32):
        comm = world.comm
        self.world, self.D, self.dtype = world, D, dtype
        self.node = node_communicator(comm, ranks_per_node)
        sizes = comm.allgather(self.node.Get_size())
        if len(set(sizes)) != 1:
            self.node.Free()
            raise ValueError(f"hierarchy='node' needs the same number of ranks on every node, got {sorted(set(sizes))}"
                             ": set ranks_per_node to a divisor of the rank count")
        leader = self.node.allreduce(comm.Get_rank(), op=MPI.MIN)
        leaders = sorted(set(comm.allgather(leader)))
        a = leaders.index(leader)
        self.rail = comm.Split(self.node.Get_rank(), a)
        self.m = sizes[0] * world.k  # replicas per node
        self.nodes = Topology(topology_name, len(leaders), seed=seed)
        self.inner = Gossiper(World(self.rail, 1, world.device, world.cuda_aware), self.nodes, D, dtype)
        node_of_rank = comm.allgather(a)
        self.topology = HierarchicalTopology(self.nodes, [node_of_rank[i // world.k] for i in range(world.n)])
        self.companions: dict[str, torch.Tensor] = {}
        self._y = torch.empty(1, D, dtype=dtype, device=world.device)

    @property
    def kind(self) -> str:
        return f"node-allreduce+{self.inner.kind}"

    def start(self, X, resumed):
        pass

    def step(self, X, t, theta_cols=None):
        s = X.sum(dim=0, dtype=torch.float64)
        if self.node.Get_size() > 1:
            if s.device.type == "cuda":
                h = s.cpu()
                self.node.Allreduce(MPI.IN_PLACE, h.numpy(), op=MPI.SUM)
                s = h.to(X.device)
            else:
                self.node.Allreduce(MPI.IN_PLACE, s.numpy(), op=MPI.SUM)
        self._y.copy_((s / self.m).to(self.dtype).unsqueeze(0))
        sent, _ = self.inner.step(self._y, t)
        theta = _theta(self._y - X, theta_cols)
        X.copy_(self._y.expand_as(X))
        return sent + (self.D * 8 if self.node.Get_size() > 1 else 0), theta

    def allreduce_average(self, X, theta_cols=None):
        return Gossiper.allreduce_average(self, X, theta_cols)

    def free(self):
        self.inner.free()
        self.rail.Free()
        self.node.Free()


MODES = {"gossip": "comm.Gossiper", "choco": "ChocoGossiper", "hierarchical": "HierarchicalGossiper",
         "overlap": "OverlapGossiper"}


def mode_of(cfg) -> str:
    """The communication mode a config selects (config.validate refuses combinations of them)."""
    if cfg.compression != "none":
        return "choco"
    if cfg.hierarchy == "node":
        return "hierarchical"
    return "overlap" if cfg.overlap else "gossip"


def make_comm(cfg, world: World, topology: Topology, D: int, capture: bool = False):
    """The configured mode for a run on `world` (topology: the configured n-replica topology)."""
    mode = mode_of(cfg)
    if mode == "choco":
        op = make_operator(cfg.compression, cfg.compression_ratio, cfg.qsgd_levels, cfg.seed)
        return ChocoGossiper(world, topology, D, op, cfg.consensus_lr)
    if mode == "hierarchical":
        return HierarchicalGossiper(world, cfg.topology, D, cfg.ranks_per_node, cfg.seed)
    if mode == "overlap":
        return OverlapGossiper(world, topology, D)
    return Gossiper(world, topology, D, capture=capture)

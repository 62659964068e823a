"""What happens around the D-SGD iteration: observers, each deciding for itself when to act.

train.run calls, per iteration t: every observer's before(t) (its stop and checkpoint votes, which
travel in the iteration's one scalar Allreduce), the iteration, then every observer's after(step),
in the order of the list: EpochMeter, PhaseSummary, Evaluator, Sharpness, ProgressPrinter,
TraceRecorder, Checkpointer. At the end, finish(done, status). Each observer owns its part of the
checkpointed loop state (meta.loop) through state_dict() / load_state_dict(); the Checkpointer
collects them, beside LoopState (the trajectory), into meta.loop: the same keys and
meanings as before the observers existed (LOOP_KEYS), so older checkpoints resume.
Each owner names its keys (STATE_KEYS) and checks their values (check_state, which load_state_dict calls
first); check_loop runs every owner's check on a manifest's meta.loop before anything uses it.
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, fields

import numpy as np

from .checkpoint import CheckpointWriteError, save_checkpoint
from .comm import allreduce_scalars
from .consensus import NAN
from .sharpness import describe as describe_sharpness
from .sharpness import measure_run as measure_sharpness
from .trace import TraceWriteError


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v) -> bool:
    return _is_num(v) and math.isfinite(v)


def need_loop(loop: dict, key: str, ok, what: str) -> None:
    """ValueError naming meta.loop.KEY unless ok(value); an absent key is its owner's default (older checkpoints)."""
    if key in loop and not ok(loop[key]):
        raise ValueError(f"meta.loop.{key} must be {what}, not {json.dumps(loop[key])[:80]}")


@dataclass
class LoopState:
    """The trajectory besides the replica block and the optimizer state: where the iteration is, the gossip
    step (time-varying W_s) and EMA(phi) with its phase. meta.loop holds these and the observers' states."""

    it: int = 0  # next iteration
    gossip_s: int = 0  # next gossip step index
    phi_ema: float = NAN
    ema_phase: int = 0

    @staticmethod
    def check_state(loop: dict, iteration: int) -> None:
        """The trajectory's keys of a manifest's meta.loop (`iteration`: the manifest's)."""
        need_loop(loop, "it", lambda v: _is_int(v) and v == iteration, f"the manifest's iteration {iteration}")
        need_loop(loop, "gossip_s", lambda v: _is_int(v) and 0 <= v < 2 ** 62, "an integer >= 0")
        need_loop(loop, "ema_phase", lambda v: _is_int(v) and 0 <= v < 2 ** 31, "an integer >= 0")
        need_loop(loop, "phi_ema", _is_num, "a number (NaN before the first measurement)")


@dataclass
class Scalars:
    """The per-iteration scalars, summed over all ranks in ONE float64 Allreduce (fields in buffer order).
    The last two are votes: a rank > 0 asks every rank to stop, or to checkpoint, after this iteration."""

    loss: float  # sum of the local mini-batch losses
    correct: float  # correct predictions
    bytes_sent: float
    theta_sq: float  # sum_i ||x_i - xbar||^2 contributions (the policy's local part)
    grad_sq: float  # sum_i ||g_i||^2
    xi_pre_sq: float  # Xi^2 of x^(t+1/2) (measured iterations)
    xi_post_sq: float  # Xi^2 after communicating (measured iterations the policy did not measure)
    count: float  # predictions made
    stop: float = 0.0
    checkpoint: float = 0.0

    def allreduce(self, comm) -> Scalars:
        return Scalars(*allreduce_scalars(comm, [getattr(self, f.name) for f in fields(self)]))


@dataclass
class Step:
    """One finished iteration, as the observers see it (identical on every rank)."""

    t: int
    phase: int
    lr: float
    row: dict  # the /iter/ trace row
    stop: bool  # some rank asked to stop, and this is not the run's last iteration
    checkpoint: bool  # some rank asked for a checkpoint (periodic)


def phase_end(sched, t: int) -> bool:
    return t + 1 in sched.decay_iters or t + 1 == sched.total_iters


def every(sched, t: int, epochs: int = 1) -> bool:
    """Iteration t ends an epoch that is a multiple of `epochs`, or the training."""
    return (t + 1) % (sched.iters_per_epoch * epochs) == 0 or t + 1 == sched.total_iters


class Observer:
    STATE_KEYS: tuple[str, ...] = ()  # the keys of meta.loop this observer owns (state_dict / load_state_dict)

    @classmethod
    def check_state(cls, loop: dict) -> None:
        """ValueError naming meta.loop.KEY unless this observer's keys in `loop` are typed and in range."""

    def before(self, t: int) -> tuple[bool, bool]:
        """This rank's votes for iteration t: (stop, checkpoint)."""
        return False, False

    def after(self, step: Step) -> None:
        pass

    def finish(self, done: int, status: str) -> None:
        """The loop ended after `done` iterations (status: finished or stopped)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, loop: dict) -> None:
        pass


class PhaseStats:
    """Per-phase summary (the /phase/ rows): Xi_max, gossip steps, bytes, cap hits, and whether a control
    acted: bound_iterations counts the iterations in which the target made gossip more than once, next to
    pre_control_max (the largest distance one plain gossip step left) and target (the phase's largest
    target). bound_iterations = 0 under a target policy means the target never bound: the run was plain
    D-SGD in that phase, and the tables say so."""

    COLS = ("xi_max", "xi_pre_max", "theta_max", "gossip_steps", "bytes_sent", "cap_hits", "iterations",
            "bound_iterations", "pre_control_max", "target")
    NAN_COLS = ("xi_max", "xi_pre_max", "pre_control_max", "target")
    # The columns every checkpoint has; the later ones (bound_iterations, pre_control_max, target) start at
    # their defaults when a checkpoint predates them.
    REQUIRED = ("xi_max", "xi_pre_max", "theta_max", "gossip_steps", "bytes_sent", "cap_hits", "iterations")

    def __init__(self, v: dict | None = None):
        self.v = dict.fromkeys(self.COLS, 0.0)
        self.v.update(dict.fromkeys(self.NAN_COLS, NAN))
        if v:  # a checkpoint written before a column existed leaves it at its start value
            self.v.update(v)

    def add(self, row: dict) -> None:
        v = self.v
        for k, src in (("xi_max", "xi"), ("xi_pre_max", "xi_pre"), ("pre_control_max", "pre_control"),
                       ("target", "target")):
            if math.isfinite(row[src]):
                v[k] = row[src] if not math.isfinite(v[k]) else max(v[k], row[src])
        v["theta_max"] = max(v["theta_max"], row["theta"])
        v["gossip_steps"] += row["gossip_steps"]
        v["bytes_sent"] += row["bytes_sent"]
        v["cap_hits"] += row["hit_cap"]
        v["bound_iterations"] += int(math.isfinite(row["target"]) and row["gossip_steps"] > 1)
        v["iterations"] += 1


class EpochMeter(Observer):
    """Training time and the epoch's sums (loss, correct, samples); at an epoch's end, its summary `train`."""

    def __init__(self, cfg, sched, samples: str):
        self.n, self.sched, self.imgs, self.rate = cfg.n, sched, cfg.n * cfg.batch_size, f"{samples}_per_s"
        self.acc, self.t_train, self.t_train0, self.tic, self.train = np.zeros(3), 0.0, 0.0, 0.0, {}

    def before(self, t):
        self.tic = time.perf_counter()
        return False, False

    def after(self, step):
        t, row, ipe = step.t, step.row, self.sched.iters_per_epoch
        self.t_train += time.perf_counter() - self.tic
        self.acc += (row["loss"] * self.n, row["acc"] * row["predictions"] / 100.0, row["predictions"])
        if every(self.sched, t):
            self.train = dict(epoch=(t + 1) / ipe, it=t, train_loss=self.loss(t), train_acc=self.train_acc(),
                              **{self.rate: (t + 1) * self.imgs / self.t_train}, elapsed=self.t_train)
            self.acc[:] = 0

    def loss(self, t: int) -> float:
        ipe = self.sched.iters_per_epoch
        return self.acc[0] / (self.n * max(t + 1 - (t // ipe) * ipe, 1))

    def train_acc(self) -> float:
        return 100.0 * self.acc[1] / max(self.acc[2], 1)

    STATE_KEYS = ("acc", "t_train")

    @classmethod
    def check_state(cls, loop):
        need_loop(loop, "t_train", lambda v: _finite(v) and v >= 0, "a finite number >= 0")
        need_loop(loop, "acc", lambda v: isinstance(v, list) and len(v) == 3 and all(_finite(x) for x in v),
                  "3 finite numbers")

    def state_dict(self):
        return {"acc": tuple(self.acc), "t_train": self.t_train}

    def load_state_dict(self, loop):
        self.check_state(loop)
        self.acc, self.t_train = np.array(loop.get("acc", (0.0, 0.0, 0.0))), loop.get("t_train", 0.0)
        self.t_train0 = self.t_train


class PhaseSummary(Observer):
    """Accumulates PhaseStats; at a phase's end appends the /phase/ row and starts anew."""

    def __init__(self, sched, recorder: TraceRecorder):
        self.sched, self.recorder, self.stats = sched, recorder, PhaseStats()

    def after(self, step):
        self.stats.add(step.row)
        if phase_end(self.sched, step.t):
            self.recorder.append("phase", phase=step.phase, first_it=self.sched.phase_bounds()[step.phase - 1][0],
                                 last_it=step.t, complete=1, **self.stats.v)
            self.stats = PhaseStats()

    STATE_KEYS = ("stats",)

    @classmethod
    def check_state(cls, loop):
        need_loop(loop, "stats", lambda v: not v or isinstance(v, dict) and set(PhaseStats.REQUIRED) <= set(v)
                  and all(_is_num(x) for x in v.values()), f"null or an object of numbers {list(PhaseStats.REQUIRED)}")

    def state_dict(self):
        return {"stats": self.stats.v}

    def load_state_dict(self, loop):
        self.check_state(loop)
        self.stats = PhaseStats(loop.get("stats"))


class Evaluator(Observer):
    """Every eval_every epochs and at the end: the workload's evaluation (collective) -> `last`, an /epoch/ row."""

    def __init__(self, cfg, sched, wl, world, reps, meter: EpochMeter, recorder: TraceRecorder):
        self.cfg, self.sched, self.wl, self.world, self.reps = cfg, sched, wl, world, reps
        self.meter, self.recorder, self.last, self.evaluated = meter, recorder, {}, False

    def after(self, step):
        self.evaluated = every(self.sched, step.t, self.cfg.eval_every)
        if self.evaluated:
            self.last = {**self.wl.evaluate(self.world, self.reps), **self.meter.train}
            self.recorder.append("epoch", **self.last)

    STATE_KEYS = ("last",)

    @classmethod
    def check_state(cls, loop):
        need_loop(loop, "last", lambda v: v is None or isinstance(v, dict) and all(
            x is None or isinstance(x, (int, float, str, bool)) for x in v.values()), "null or an object of numbers")

    def state_dict(self):
        return {"last": self.last}

    def load_state_dict(self, loop):
        self.check_state(loop)
        self.last = dict(loop.get("last") or {})


class Sharpness(Observer):
    """Every sharpness_every epochs and at the end: lambda_max of the averaged model (collective)."""

    def __init__(self, cfg, sched, world, reps, wl, recorder: TraceRecorder, log):
        self.cfg, self.sched, self.world, self.reps, self.wl = cfg, sched, world, reps, wl  # wl.data: image workloads
        self.recorder, self.log = recorder, log

    def after(self, step):
        k, t = self.cfg.sharpness_every, step.t
        if k and every(self.sched, t) and every(self.sched, t, k):
            ep = (t + 1) / self.sched.iters_per_epoch
            for srow in measure_sharpness(self.cfg, self.world, self.reps, self.wl.data, ep, t):
                if self.world.rank == 0:
                    self.recorder.append("sharpness", **srow)
                    self.log(f"epoch {ep:6.2f} {describe_sharpness(srow)}", flush=True)


class ProgressPrinter(Observer):
    """Rank 0: one line per epoch; one more if the run stops mid-epoch."""

    def __init__(self, cfg, sched, wl, world, meter: EpochMeter, evaluator: Evaluator, end: int, log):
        self.cfg, self.sched, self.wl, self.rank0, self.meter, self.evaluator = cfg, sched, wl, world.rank == 0, meter, evaluator
        self.end, self.log, self.unit = end, log, {"images": "img/s", "sentences": "sent/s"}.get(wl.samples, "samples/s")
        self.phase, self.lr, self.first = 0, 0.0, None

    def after(self, step):
        t, tr = step.t, self.meter.train
        self.phase, self.lr, self.first = step.phase, step.lr, step.t if self.first is None else self.first
        if self.rank0 and every(self.sched, t):
            test = self.wl.describe(self.evaluator.last if self.evaluator.evaluated else None)
            self.log(f"epoch {tr['epoch']:6.2f}/{self.cfg.epochs:g} phase {step.phase} lr {step.lr:.3e} loss "
                     f"{tr['train_loss']:.4f} train {tr['train_acc']:5.1f}% {test} {tr[self.meter.rate]:7.0f} "
                     f"{self.unit} ETA {hms(self.meter.t_train / (t + 1) * (self.end - t - 1))}", flush=True)

    def finish(self, done, status):
        if self.rank0 and self.first is not None and not every(self.sched, done - 1):  # stopped mid-epoch
            m, total = self.meter, self.sched.total_iters
            self.log(f"epoch {done / self.sched.iters_per_epoch:6.2f}/{self.cfg.epochs:g} phase {self.phase} lr "
                     f"{self.lr:.3e} loss {m.loss(done - 1):.4f} train {m.train_acc():5.1f}% (stopped at iteration "
                     f"{done} of {total}, mid-epoch: not evaluated) "
                     f"{(done - self.first) * m.imgs / max(m.t_train - m.t_train0, 1e-9):7.0f} {self.unit}", flush=True)


class TraceRecorder(Observer):
    """Rank 0 writes the trace: the /iter/ row of every iteration, the other observers' rows (append), a flush
    at each epoch's end and every trace_flush_seconds. A failed flush (a full disk) keeps the rows buffered
    and votes to stop: the Checkpointer then saves them in the checkpoint (trace_pending)."""

    def __init__(self, cfg, sched, world, trace, meter: EpochMeter):
        self.cfg, self.sched, self.comm, self.trace, self.meter = cfg, sched, world.comm, trace, meter  # trace: rank 0
        self.err, self.failed = None, None  # err: rank 0, why the last flush failed; failed: its broadcast

    def append(self, group: str, **row) -> None:
        if self.trace is not None:
            self.trace.append(group, **row)

    def before(self, t):
        return self.err is not None, False

    def after(self, step):
        if self.trace is None:
            return
        self.trace.append("iter", **step.row, time=self.meter.t_train)
        if every(self.sched, step.t) or self.trace.due(self.cfg.trace_flush_seconds):
            self.flush()

    def flush(self) -> None:
        if self.trace is not None and self.err is None:
            try:
                self.trace.flush()
            except TraceWriteError as e:
                self.err = str(e)

    def state_dict(self):
        """Collective: rank 0 flushes (durable, fsynced, before the checkpoint that records its position) and
        broadcasts the rows per group, the rows not written (a failed flush) and why (also self.failed)."""
        self.flush()
        t = self.trace
        pos, pending, self.failed = self.comm.bcast((t.rows(), t.pending() if self.err else None, self.err)
                                                    if t is not None else None, root=0)
        return {"trace_pos": pos, "trace_pending": pending}

    STATE_KEYS = ("trace_pos", "trace_pending")

    @classmethod
    def check_state(cls, loop):
        need_loop(loop, "trace_pos", lambda v: v is None or isinstance(v, dict) and all(
            re.match(r"^[a-z_]+$", k) and _is_int(x) and 0 <= x < 2 ** 62 for k, x in v.items()),
            "null or an object trace group -> row count (an integer >= 0)")
        need_loop(loop, "trace_pending", lambda v: v is None or isinstance(v, dict) and all(
            g in ("iter", "epoch", "phase", "sharpness") and isinstance(cols, dict) and all(
                isinstance(c, str) and re.match(r"^[A-Za-z0-9_]+$", c) and isinstance(x, list) and all(
                    _is_num(y) or y in (None, "nan", "inf", "-inf") for y in x)
                for c, x in cols.items()) for g, cols in v.items()),
            "null or an object trace group -> column -> list of values (rows a full disk kept out of the trace)")

    def load_state_dict(self, loop):
        self.check_state(loop)  # the trace is truncated to trace_pos, given trace_pending, when train opens it

    def finish(self, done, status):
        if self.trace is not None:
            self.trace.set_attrs(status=status, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))


class Checkpointer(Observer):
    """Votes to checkpoint every checkpoint_minutes (rank 0) and to stop on a StopRequest; checkpoints the
    state after each phase, on a vote, on a stop and at the end, with every observer's state_dict(). It owns
    xi_max: the reference Xi_max per phase the run is controlled against (train refuses another on resume)."""

    STATE_KEYS = ("xi_max",)

    @classmethod
    def check_state(cls, loop):
        need_loop(loop, "xi_max", lambda v: v is None or isinstance(v, dict) and all(
            isinstance(k, str) and k.lstrip("-").isdigit() and _is_num(x) for k, x in v.items()),
            "null or an object phase -> number")

    def load_state_dict(self, loop):
        self.check_state(loop)

    def __init__(self, cfg, world, run_dir, sched, reps, ctx, observers, recorder: TraceRecorder, stop, end,
                 meta: dict, xi_max, log):
        self.cfg, self.world, self.run_dir, self.sched, self.reps, self.ctx = cfg, world, run_dir, sched, reps, ctx
        self.observers, self.recorder, self.stop, self.end, self.meta = observers, recorder, stop, end, meta
        self.xi_max, self.log, self.path, self.stopped, self.last = xi_max, log, "", False, time.monotonic()

    def before(self, t):
        due = self.world.rank == 0 and self.cfg.checkpoint_minutes > 0 and \
            time.monotonic() - self.last >= 60 * self.cfg.checkpoint_minutes
        return self.stop is not None and self.stop.requested(), due

    def after(self, step):
        t, ends = step.t, phase_end(self.sched, step.t)
        self.stopped = step.stop
        if not (ends or step.checkpoint or step.stop or t + 1 == self.end):
            return
        loop = asdict(LoopState(t + 1, self.ctx.counter.s, self.ctx.phi_ema, self.ctx.ema_phase))
        for o in self.observers:
            loop.update(o.state_dict())
        loop = {k: self.xi_max if k == "xi_max" else loop[k] for k in LOOP_KEYS}
        failed, world = self.recorder.failed, self.world
        try:
            self.path = save_checkpoint(
                world.comm, self.run_dir, t + 1, "phase" if ends else "periodic", self.sched.phase(t if ends else t + 1),
                {**self.reps.state_blocks(), **getattr(self.ctx.gossiper, "companions", {})}, list(world.replica_ids),
                [{} for _ in world.replica_ids],
                {**self.meta, "loop": loop}, keep_last=self.cfg.keep_checkpoints)
        except CheckpointWriteError as e:  # raised on every rank alike
            if failed:
                raise TraceWriteError(f"{failed}; the checkpoint of iteration {t + 1} could not be written either "
                                      f"({e}): free space there and continue with --resume auto, which restarts "
                                      f"from the newest intact checkpoint") from None
            raise
        self.last = time.monotonic()
        rank0, it = world.rank == 0, t + 1
        if failed:
            if rank0:
                self.log(f"epoch {it / self.sched.iters_per_epoch:6.2f}/{self.cfg.epochs:g} stopped at iteration {it} of "
                         f"{self.sched.total_iters}: the trace could not be written; checkpoint {self.path} holds the "
                         f"state and the {len((loop['trace_pending'] or {}).get('iter', {}).get('it', ()))} unwritten "
                         f"iteration rows", flush=True)
            raise TraceWriteError(f"{failed}; checkpoint {self.path} (iteration {it}) holds the state and the "
                                  f"rows not written: free space there and continue with --resume auto")
        if step.stop and rank0:
            self.log(f"hpc_dsgd: stop requested by signal{' ' + self.stop.name if self.stop and self.stop.name else ''}: "
                     f"stopped at iteration {it}, checkpoint {self.path}; exiting for requeue", flush=True)


# Every observer class, in the order train._observers makes them (the Checkpointer last); the owners of meta.loop.
OBSERVERS = (EpochMeter, PhaseSummary, Evaluator, Sharpness, ProgressPrinter, TraceRecorder, Checkpointer)
# meta.loop of a checkpoint: the trajectory's keys, then each observer's
LOOP_KEYS = tuple(f.name for f in fields(LoopState)) + tuple(k for o in OBSERVERS for k in o.STATE_KEYS)


def check_loop(meta: dict, iteration: int) -> None:
    """A manifest's meta.loop (if any), before anything uses it: an object whose values each owner (LoopState,
    every observer) finds typed and in range. ValueError naming meta.loop.KEY. A key no owner knows is train's
    to refuse, naming it; meta.loop absent is train's to refuse (a branch or resume needs it)."""
    if "loop" not in meta:
        return
    loop = meta["loop"]
    if not isinstance(loop, dict):
        raise ValueError(f"meta.loop must be an object, not {json.dumps(loop)[:80]}")
    LoopState.check_state(loop, iteration)
    for o in OBSERVERS:
        o.check_state(loop)


def hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"

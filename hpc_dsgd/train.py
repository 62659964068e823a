"""The training loop: config -> world -> workload (data, model, optimizer, schedule) -> replicas -> iterations -> trace.

One code path for every workload (workloads/): image classification and translation differ only in
what the workload object supplies. One iteration (paper eq. D-SGD): every replica takes a local
optimizer step on its own mini-batch, then
the phase's policy communicates (gossip X <- W X, or exact averaging); all scalars of the
iteration travel in one small Allreduce; rank 0 appends them to the HDF5 trace.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass

import h5py
import mpi4py
import numpy as np
import torch
from mpi4py import MPI

from . import __version__
from .comm import Gossiper, World, allreduce_scalars, make_world
from .consensus import NAN, Context, GossipCounter, make_policies, reference_xi_max, xi_sq_local
from .replica import Replicas, set_precision
from .topology import Topology
from .checkpoint import (CheckpointError, CheckpointWriteError, list_checkpoints, load_checkpoint_collective,
                         resolve_branch, resolve_resume, restore_rank_state, save_checkpoint, verify_checkpoint)
from .compat import BRANCH_MUST_MATCH, RESUME_MUST_MATCH_EXCEPT, check_compatible
from .faults import fault_point
from .signals import StopRequest
from .sharpness import describe as describe_sharpness, measure_run as measure_sharpness
from .trace import TraceError, TraceWriteError, TraceWriter, mount_of, read_trace
from .workloads import Workload, make_workload


def code_revision() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "-C", here, "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict:
    return {"hpc_dsgd": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "h5py": h5py.__version__, "mpi4py": mpi4py.__version__,
            "mpi": MPI.Get_library_version().splitlines()[0].strip(),
            "cuda": torch.version.cuda or "none"}


@dataclass
class RunResult:
    metrics: dict  # the last evaluation (identical on every rank; {} if none yet)
    X: torch.Tensor  # this rank's final (k, D) replica block, on the CPU
    d: int  # parameters per replica (the first d columns of X)
    stopped: bool = False  # stopped on a signal after writing a checkpoint (exit REQUEUE_EXIT_CODE)
    checkpoint: str = ""  # the last checkpoint written


class PhaseStats:
    """Per-phase summary (the /phase/ rows): Xi_max, gossip steps, bytes, cap hits, and whether a control
    acted: bound_iterations counts the iterations in which the target made gossip more than once, next to
    pre_control_max (the largest distance one plain gossip step left) and target (the phase's largest
    target). bound_iterations = 0 under a target policy means the target never bound: the run was plain
    D-SGD in that phase, and the tables say so."""

    COLS = ("xi_max", "xi_pre_max", "theta_max", "gossip_steps", "bytes_sent", "cap_hits", "iterations",
            "bound_iterations", "pre_control_max", "target")
    NAN_COLS = ("xi_max", "xi_pre_max", "pre_control_max", "target")

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


@dataclass
class LoopState:
    """Everything besides the replica block that the trajectory and the trace depend on (checkpointed)."""

    it: int = 0  # next iteration
    gossip_s: int = 0  # next gossip step index (time-varying W_s)
    phi_ema: float = NAN
    ema_phase: int = 0
    stats: dict | None = None  # PhaseStats.v of the current phase
    acc: tuple = (0.0, 0.0, 0.0)  # epoch sums: loss, correct, samples
    t_train: float = 0.0
    last: dict | None = None
    trace_pos: dict | None = None  # rows per trace group at this point
    xi_max: dict | None = None  # the reference Xi_max per phase the targets were computed from
    trace_pending: dict | None = None  # rows not on disk yet (a flush failed, e.g. a full disk): a resume writes them


def _start_state(cfg, world: World, reps: Replicas, run_dir: str, resume: str | None, log) -> tuple:
    """Resume this run (--resume), branch from another run's phase checkpoint (branch_from), or start fresh.

    Rank 0 picks and verifies the checkpoint and checks the config against it; the verdict is
    broadcast, so every rank raises the same CheckpointError or loads the same checkpoint."""
    path, how, err = None, "fresh", None
    if world.rank == 0:
        try:
            if resume:
                path, skipped = resolve_resume(run_dir, resume)
                for bad, why in skipped:
                    log(f"hpc_dsgd: skipping damaged checkpoint {bad}: {why}")
                how = "resume" if path else how
            if path is None and cfg.branch_from:
                path, how = resolve_branch(cfg.branch_from), "branch"
            if path:
                man = verify_checkpoint(path)
                if how == "resume":
                    diffs = check_compatible(man["meta"], cfg.to_dict(), exclude=RESUME_MUST_MATCH_EXCEPT + ("branch_from",))
                else:
                    diffs = check_compatible(man["meta"], cfg.to_dict(), keys=BRANCH_MUST_MATCH)
                    if man["kind"] != "phase":
                        diffs.append(f"checkpoint kind is {man['kind']!r}: branch from a phase checkpoint")
                if diffs:
                    raise CheckpointError(f"cannot {how} from {path}: the config differs in " + "; ".join(diffs))
                if how == "resume":
                    _check_trace_covers(os.path.join(run_dir, "trace.h5"), man["meta"].get("loop"), path)
        except (CheckpointError, OSError) as e:
            err = str(e)
    path, how, err = world.comm.bcast((path, how, err), root=0)
    if err:
        raise CheckpointError(err)
    if not path:
        return LoopState(), how, None
    man, tensors, _, rank_state = load_checkpoint_collective(world.comm, path, list(world.replica_ids), world.device)
    missing = [name for name in ("X",) + reps.opt.names if name not in tensors]
    if missing:  # the same manifest on every rank: all refuse alike
        raise CheckpointError(f"checkpoint {path} has no {', '.join(missing)} state for optimizer {cfg.optimizer!r}")
    reps.X.copy_(tensors["X"])
    for name, S in reps.opt.state.items():
        S.copy_(tensors[name])
    if rank_state is not None:
        restore_rank_state(rank_state)
    try:
        st = LoopState(**man["meta"]["loop"])
    except (KeyError, TypeError) as e:  # the same manifest on every rank: all refuse alike
        raise CheckpointError(f"checkpoint {path}: manifest.json has no valid meta.loop ({e!r})") from None
    if how == "branch":  # a new run: its own trace, its own gossip-step and control history
        st.trace_pos = None
    return st, how, path


def _check_trace_covers(tpath: str, loop, ckpt: str) -> None:
    """A resume continues the trace from the checkpoint's position: the trace must hold at least the rows the
    checkpoint records (it was fsynced before the checkpoint was committed), else the rows between are lost
    and resuming would leave a gap. CheckpointError, one line, before anything is written."""
    pos = (loop or {}).get("trace_pos") if isinstance(loop, dict) else None
    if not isinstance(pos, dict) or not any(isinstance(v, int) and v > 0 for v in pos.values()):
        return
    try:
        tr = read_trace(tpath)
    except TraceError as e:
        raise CheckpointError(f"cannot resume from {ckpt}: {e}; the checkpoint records {pos.get('iter', 0)} iteration "
                              f"rows of it. Restore the trace, or start a new run (--set name=...)") from None
    short = {g: (len(next(iter(getattr(tr, g).values()), ())), n) for g, n in pos.items()
             if g in ("iter", "epoch", "phase", "sharpness") and isinstance(n, int)
             and len(next(iter(getattr(tr, g).values()), ())) < n}
    if short:
        raise CheckpointError(
            f"cannot resume from {ckpt}: trace {tpath} is shorter than the checkpoint's position ("
            + ", ".join(f"/{g}: {have} rows, the checkpoint records {n}" for g, (have, n) in short.items())
            + "): the rows between are lost (truncated, rolled back or replaced) and resuming would leave a gap. "
              "Resume from an earlier checkpoint the trace covers (--resume RUN_DIR/checkpoints/ckpt-...), "
              "or start a new run (--set name=...)")


def _refuse_overwrite(run_dir: str, resume: str | None) -> str | None:
    """A fresh start never overwrites a run: an existing trace or checkpoints need --resume."""
    if resume:
        return None
    found = [f for f in ("trace.h5",) if os.path.isfile(os.path.join(run_dir, f))]
    ckpts = list_checkpoints(run_dir) if os.path.isdir(run_dir) else []
    if ckpts:
        found.append(f"{len(ckpts)} checkpoint(s)")
    if found:
        return (f"run directory {run_dir!r} already holds a run ({', '.join(found)}): continue it with "
                f"--resume auto, or start a new one with another name (--set name=...) or out_dir")
    return None


def run(cfg, comm: MPI.Comm = MPI.COMM_WORLD, log=print, resume: str | None = None,
        stop: StopRequest | None = None) -> RunResult:
    """Train as configured on `comm` (any communicator: COMM_WORLD, a split, COMM_SELF).

    resume: None (start fresh), "auto" (newest valid checkpoint of this run, fresh if none) or a path.
    stop: a StopRequest whose signal makes every rank checkpoint and return with stopped=True."""
    wall0 = time.monotonic()
    torch.set_num_threads(cfg.torch_threads)
    if cfg.deterministic:  # cuBLAS reads this when CUDA starts: before any device work
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    run_dir = os.path.join(cfg.out_dir, cfg.name)
    err = _refuse_overwrite(run_dir, resume) if comm.Get_rank() == 0 else None
    err = comm.bcast(err, root=0)
    if err:
        raise CheckpointError(err)
    world = make_world(comm, cfg.replicas_per_rank(comm.Get_size()), cfg.device)
    set_determinism(world.device, cfg.deterministic)
    rank0 = world.rank == 0
    wl: Workload = make_workload(cfg, world, run_dir, "resume" if resume else "branch" if cfg.branch_from else "fresh")
    sched = wl.schedule()
    topo = Topology(cfg.topology, cfg.n, seed=cfg.seed, shape=tuple(cfg.torus_shape) if cfg.torus_shape else None)
    p = topo.p()
    set_precision(cfg.precision)  # process-wide: TF32 or strict fp32 (the paper)
    torch.manual_seed(cfg.seed)  # every replica starts from the same initial model (Xi_0 = 0)
    reps = Replicas(cfg, world, wl)
    gossiper = Gossiper(world, topo, reps.D, capture=bool(reps.capture))
    xi_max = reference_xi_max(cfg) if "target" in cfg.policies else None
    policies = make_policies(cfg, xi_max)
    st, how, ckpt_from = _start_state(cfg, world, reps, run_dir, resume, log)
    saved = {int(k): v for k, v in (st.xi_max or {}).items()}  # older checkpoints kept every phase of the reference
    if how == "resume" and st.xi_max and any(saved.get(k) != v for k, v in (xi_max or {}).items()):
        raise CheckpointError(f"cannot resume from {ckpt_from}: the reference trace(s) now give Xi_max {xi_max}, "
                              f"the run was controlled against {st.xi_max}")
    end = sched.total_iters if not cfg.max_iterations else min(cfg.max_iterations, sched.total_iters)
    if how == "resume" and st.it >= end:  # nothing to do: say so and change nothing (not even the trace's attributes)
        if rank0:
            log(f"hpc_dsgd: run already finished at iteration {st.it} ({ckpt_from}); trace "
                f"{os.path.join(run_dir, 'trace.h5')} left unchanged" if st.it >= sched.total_iters else
                f"hpc_dsgd: run already at iteration {st.it} ({ckpt_from}), max_iterations = {cfg.max_iterations}; "
                f"nothing changed: raise max_iterations (0 = to the end, {sched.total_iters}) to continue", flush=True)
        gossiper.free()
        return RunResult(dict(st.last or {}), reps.X.detach().cpu().clone(), reps.d, False, ckpt_from)
    ctx = Context(world, gossiper, GossipCounter(st.gossip_s), p, phi_ema=st.phi_ema, ema_phase=st.ema_phase,
                  opt_state=list(reps.opt.state.values()))
    stats = PhaseStats(st.stats)

    trace, setup_err = None, None
    revision = code_revision() if rank0 else ""  # once per run, not per checkpoint (it runs git)
    tpath = os.path.join(run_dir, "trace.h5")
    if rank0:
        try:
            os.makedirs(run_dir, exist_ok=True)
            with open(os.path.join(run_dir, "config.toml"), "w") as f:
                f.write(cfg.to_toml())
            attrs = {"config_json": cfg.to_json(), "config_toml": cfg.to_toml(), "n": cfg.n, "ranks": world.ranks,
                     "replicas_per_rank": world.k, "topology": topo.describe(), "p": p,
                     "spectral_gap": 1.0 - math.sqrt(max(0.0, 1.0 - p)), "iters_per_epoch": sched.iters_per_epoch,
                     "total_iters": sched.total_iters, "phase_bounds": np.array(sched.phase_bounds()),
                     "measure_every": cfg.measure_every, "reference_xi_max_json": json.dumps(xi_max or {}),
                     "versions_json": json.dumps(versions()), "code_revision": revision,
                     "device": str(world.device), "gossip_comm": gossiper.kind, "cuda_aware_mpi": world.cuda_aware,
                     "parameters": reps.d, "row_length": reps.D, "executor": reps.exec.name,
                     "precision": cfg.precision, "deterministic": cfg.deterministic,
                     "cuda_graph": bool(reps.capture), "optimizer": cfg.optimizer, **wl.trace_attrs()}
            if how == "resume" and st.trace_pos is not None and os.path.isfile(tpath):
                trace = TraceWriter(tpath, {}, mode="a")
                for grp, rows in st.trace_pos.items():
                    trace.truncate(grp, rows)  # rows flushed after the checkpoint are redone, never duplicated
                trace.add_pending(st.trace_pending or {})  # rows a full disk kept out of the trace: written now
                trace.set_attrs(status="running", resumed_from=ckpt_from, ranks=world.ranks, replicas_per_rank=world.k)
            else:
                if os.path.isfile(tpath):  # --resume auto found no checkpoint: keep the old trace, start a new one
                    kept = f"{tpath}.before-{time.strftime('%Y%m%dT%H%M%S')}"
                    os.replace(tpath, kept)
                    log(f"hpc_dsgd: no checkpoint to resume from; the previous trace is kept as {kept}")
                trace = TraceWriter(tpath, dict(attrs, started_from=ckpt_from or "", start_iteration=st.it))
                if how == "branch":
                    copy_trace_prefix(os.path.join(os.path.dirname(os.path.dirname(ckpt_from)), "trace.h5"), trace, st.it)
            log(f"hpc_dsgd: n={cfg.n} replicas = {world.ranks} ranks x {world.k}, {topo.describe()} (p={p:.4f}, "
                f"gossip via {gossiper.kind}), {cfg.model} d={reps.d} ({reps.exec.name}, {cfg.precision}"
                f"{', CUDA graph' if reps.capture else ''}), {cfg.dataset}, device {world.device}"
                f"{' (CUDA-aware MPI)' if world.cuda_aware else ' (host-staged MPI)' if world.device.type == 'cuda' else ''}, "
                f"{sched.total_iters} iterations ({sched.iters_per_epoch}/epoch), trace {tpath}"
                + (f", {how} from {ckpt_from} at iteration {st.it}" if ckpt_from else ""))
        except (TraceError, TraceWriteError, OSError) as e:  # every rank stops alike, before any iteration
            setup_err = (type(e).__name__, str(e) if not isinstance(e, OSError) else
                         f"cannot write run directory {run_dir}: {e.strerror or e} (on {mount_of(run_dir)})")
    setup_err = world.comm.bcast(setup_err, root=0)
    if setup_err:
        gossiper.free()
        raise (TraceError if setup_err[0] == "TraceError" else TraceWriteError)(setup_err[1])
    trace_err = None  # rank 0: why the last flush failed (its rows stay buffered; the run checkpoints and stops)

    def flush() -> None:
        nonlocal trace_err
        if trace_err is None:
            try:
                trace.flush()
            except TraceWriteError as e:
                trace_err = str(e)

    ipe, imgs, rate = sched.iters_per_epoch, cfg.n * cfg.batch_size, f"{wl.samples}_per_s"
    unit = {"images": "img/s", "sentences": "sent/s"}.get(wl.samples, "samples/s")
    acc, t_train, last = np.array(st.acc), st.t_train, dict(st.last or {})
    last_ckpt, ckpt_path, stopped = time.monotonic(), "", False
    for t in range(st.it, end):
        fault_point("iteration", world.rank, t)
        tic = time.perf_counter()
        epoch, b, lr, phase = t // ipe, t % ipe, sched.lr(t), sched.phase(t)
        periodic_due = rank0 and cfg.checkpoint_minutes > 0 and time.monotonic() - last_ckpt >= 60 * cfg.checkpoint_minutes
        flags = [float(stop is not None and stop.requested() or trace_err is not None), float(periodic_due)]
        row, (stop_all, due_all) = iteration(cfg, world, reps, ctx, policies[phase - 1], t, epoch, b, lr,
                                             phase, sched, flags)
        t_train += time.perf_counter() - tic
        acc += (row["loss"] * cfg.n, row["acc"] * row["predictions"] / 100.0, row["predictions"])  # epoch sums
        stats.add(row)
        if rank0:
            trace.append("iter", **row, time=t_train)
        phase_end = t + 1 in sched.decay_iters or t + 1 == sched.total_iters
        if phase_end:
            if rank0:
                trace.append("phase", phase=phase, first_it=sched.phase_bounds()[phase - 1][0], last_it=t,
                             complete=1, **stats.v)
            stats = PhaseStats()
        if (t + 1) % ipe == 0 or t + 1 == sched.total_iters:  # end of an epoch: progress line, evaluation
            ep = (t + 1) / ipe
            train = dict(epoch=ep, it=t, train_loss=acc[0] / (cfg.n * max(t + 1 - epoch * ipe, 1)),
                         train_acc=100.0 * acc[1] / max(acc[2], 1), **{rate: (t + 1) * imgs / t_train},
                         elapsed=t_train)
            acc[:] = 0
            evaluated = (t + 1) % (ipe * cfg.eval_every) == 0 or t + 1 == sched.total_iters
            if evaluated:
                last = {**wl.evaluate(world, reps), **train}
            if cfg.sharpness_every and ((t + 1) % (ipe * cfg.sharpness_every) == 0 or t + 1 == sched.total_iters):
                for srow in measure_sharpness(cfg, world, reps, wl.data, ep, t):  # collective: every rank
                    if rank0:
                        trace.append("sharpness", **srow)
                        log(f"epoch {ep:6.2f} {describe_sharpness(srow)}", flush=True)
            if rank0:
                if evaluated:
                    trace.append("epoch", **last)
                test = wl.describe(last if evaluated else None)
                log(f"epoch {ep:6.2f}/{cfg.epochs:g} phase {phase} lr {lr:.3e} loss {train['train_loss']:.4f} "
                    f"train {train['train_acc']:5.1f}% {test} {train[rate]:7.0f} {unit} "
                    f"ETA {_hms(t_train / (t + 1) * (end - t - 1))}", flush=True)
                flush()
        elif rank0 and trace.due(cfg.trace_flush_seconds):
            flush()
        stopped = stop_all > 0 and t + 1 < end
        if phase_end or due_all > 0 or stopped or t + 1 == end:  # checkpoint the state after iteration t
            if rank0:
                flush()  # durable (fsynced) before the checkpoint that records its position
            pos, pending, failed = world.comm.bcast(
                (trace.rows(), trace.pending() if trace_err else None, trace_err) if rank0 else None, root=0)
            state = LoopState(t + 1, ctx.counter.s, ctx.phi_ema, ctx.ema_phase, stats.v, tuple(acc), t_train, last,
                              pos, xi_max, pending)
            try:
                ckpt_path = save_checkpoint(
                    world.comm, run_dir, t + 1, "phase" if phase_end else "periodic", sched.phase(t + 1 if not phase_end else t),
                    {"X": reps.X, **reps.opt.state}, list(world.replica_ids), [{} for _ in world.replica_ids],
                    {"config_json": cfg.to_json(), "loop": asdict(state), "code_revision": revision,
                     "n": cfg.n, "topology": topo.describe()}, keep_last=cfg.keep_checkpoints)
            except CheckpointWriteError as e:  # raised on every rank alike
                if failed:
                    raise TraceWriteError(f"{failed}; the checkpoint of iteration {t + 1} could not be written either "
                                          f"({e}): free space there and continue with --resume auto, which restarts "
                                          f"from the newest intact checkpoint") from None
                raise
            last_ckpt = time.monotonic()
            if failed:
                if rank0:
                    log(f"epoch {(t + 1) / ipe:6.2f}/{cfg.epochs:g} stopped at iteration {t + 1} of {sched.total_iters}: "
                        f"the trace could not be written; checkpoint {ckpt_path} holds the state and the "
                        f"{len((pending or {}).get('iter', {}).get('it', ()))} unwritten iteration rows", flush=True)
                gossiper.free()
                raise TraceWriteError(f"{failed}; checkpoint {ckpt_path} (iteration {t + 1}) holds the state and the "
                                      f"rows not written: free space there and continue with --resume auto")
        if stopped:
            if rank0:
                log(f"hpc_dsgd: stop requested by signal{' ' + stop.name if stop and stop.name else ''}: "
                    f"stopped at iteration {t + 1}, checkpoint {ckpt_path}; exiting for requeue", flush=True)
            break
    if rank0 and end > st.it and (t + 1) % ipe and t + 1 != sched.total_iters:  # stopped mid-epoch: a final line too
        log(f"epoch {(t + 1) / ipe:6.2f}/{cfg.epochs:g} phase {phase} lr {lr:.3e} loss "
            f"{acc[0] / (cfg.n * max(t + 1 - (t // ipe) * ipe, 1)):.4f} train {100.0 * acc[1] / max(acc[2], 1):5.1f}% "
            f"(stopped at iteration {t + 1} of {sched.total_iters}, mid-epoch: not evaluated) "
            f"{(t + 1 - st.it) * imgs / max(t_train - st.t_train, 1e-9):7.0f} {unit}", flush=True)
    if rank0:
        status = "finished" if end == sched.total_iters and not stopped else "stopped"
        trace.set_attrs(status=status, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        log(f"hpc_dsgd: {status} at iteration {t + 1 if end > st.it else st.it} of {sched.total_iters}"
            + (f", checkpoint {ckpt_path}" if ckpt_path else "") + f"; trace {tpath}; wall time "
            f"{_hms(time.monotonic() - wall0)}", flush=True)
    gossiper.free()
    return RunResult(last, reps.X.detach().cpu().clone(), reps.d, stopped, ckpt_path)


def copy_trace_prefix(parent: str, trace: TraceWriter, it: int) -> None:
    """A branch's trace starts with its parent's rows before the branch point (if the parent trace is there)."""
    if not os.path.isfile(parent):
        return
    tr = read_trace(parent)
    for grp, key in (("iter", "it"), ("epoch", "it"), ("phase", "last_it"), ("sharpness", "it")):
        cols = getattr(tr, grp)
        if key not in cols:
            continue
        keep = cols[key] < it
        for j in np.flatnonzero(keep):
            trace.append(grp, **{c: v[j].item() for c, v in cols.items()})
    trace.flush()


def iteration(cfg, world: World, reps: Replicas, ctx: Context, policy, t, epoch, b, lr, phase, sched,
              flags: list[float]) -> tuple[dict, np.ndarray]:
    """One D-SGD iteration: local step, communication by the phase's policy, one scalar Allreduce
    (which also carries the ranks' stop/checkpoint flags, summed).

    Returns the trace row (global values, identical on every rank) and the summed flags."""
    n = cfg.n
    loss, correct, count, grad_sq = reps.local_step(t, epoch, b, lr, grad_hook=policy.grad_hook(ctx))
    if policy.needs_phi:  # the adaptive target needs this iteration's phi before communicating
        ctx.phi = math.sqrt(allreduce_scalars(world.comm, [grad_sq])[0] / n)
        ctx.phi_ema = _ema(ctx, phase, cfg.phi_ema_beta)
    measure = cfg.measure_every > 0 and t % cfg.measure_every == 0
    xi_pre = xi_sq_local(world, reps.P) if measure else 0.0  # Xi of x^(t+1/2), for Lemma A.1
    res = policy.communicate(reps.X, reps.d, ctx)
    xi_post = xi_sq_local(world, reps.P) if measure and not math.isfinite(res.xi) else 0.0
    s = allreduce_scalars(world.comm, [loss, correct, res.bytes_sent, res.theta_sq_local, grad_sq, xi_pre, xi_post,
                                       count] + list(flags))
    if not policy.needs_phi:
        ctx.phi = math.sqrt(s[4] / n)
        ctx.phi_ema = _ema(ctx, phase, cfg.phi_ema_beta)
    xi = res.xi if math.isfinite(res.xi) else (math.sqrt(max(s[6], 0.0) / n) if measure else NAN)
    return dict(it=t, epoch=sched.epoch(t), phase=phase, lr=lr, loss=s[0] / n,
                acc=100.0 * s[1] / max(s[7], 1.0), predictions=int(s[7]), gossip_steps=res.steps, bytes_sent=int(s[2]),
                theta=math.sqrt(max(s[3], 0.0) / n), phi=ctx.phi, phi_ema=ctx.phi_ema,
                xi=xi if measure or math.isfinite(res.xi) else NAN,
                xi_pre=math.sqrt(max(s[5], 0.0) / n) if measure else NAN,
                target=res.target, controlled=res.controlled, pre_control=res.first, planned_steps=res.planned,
                hit_cap=int(res.hit_cap)), s[8:]


def set_determinism(device: torch.device, deterministic: bool) -> None:
    """CUDA: deterministic kernels and no autotuning (bitwise-reproducible runs), or the fastest ones.
    The CPU kernels used here are deterministic already."""
    if device.type != "cuda":
        return
    torch.use_deterministic_algorithms(deterministic)
    torch.utils.deterministic.fill_uninitialized_memory = False  # no reads of uninitialised memory here: skip the fills
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def _ema(ctx: Context, phase: int, beta: float) -> float:
    """EMA(phi) over the current phase (restarted at each phase's first iteration)."""
    if ctx.ema_phase != phase or not math.isfinite(ctx.phi_ema):
        ctx.ema_phase = phase
        return ctx.phi
    return beta * ctx.phi_ema + (1.0 - beta) * ctx.phi


def _hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"

"""The training loop: config -> world -> workload (data, model, optimizer, schedule) -> replicas -> iterations -> trace.

One code path for every workload (workloads/): image classification and translation differ only in
what the workload object supplies. One iteration (paper eq. D-SGD): every replica takes a local
optimizer step on its own mini-batch, then
the phase's policy communicates (gossip X <- W X, or exact averaging); all scalars of the
iteration (observers.Scalars, with the ranks' stop and checkpoint votes) travel in one small Allreduce.
`run` sets up, then loops: `iteration`, then a fixed list of observers (observers.py), each deciding
for itself when to act: the trace rows, the phase summary, evaluation, sharpness, the progress lines
and checkpoints. LoopState is the trajectory (iteration, gossip step, EMA(phi)); the observers own the rest
of a checkpoint's meta.loop.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass, fields

import h5py
import mpi4py
import numpy as np
import torch
from mpi4py import MPI

from . import __version__
from .algorithms import make_algorithm
from .checkpoint import CheckpointError, list_checkpoints, load_checkpoint_collective, verify_checkpoint
from .comm import World, allreduce_scalars, make_world
from .compat import BRANCH_MUST_MATCH, RESUME_MUST_MATCH_EXCEPT, check_compatible, model_sizes
from .consensus import NAN, Context, GossipCounter, make_policies, reference_xi_max, xi_sq_local
from .faults import fault_point
from .fileio import atomic_write_text
from .modes import make_comm
from .observers import (
    LOOP_KEYS,
    Checkpointer,
    EpochMeter,
    Evaluator,
    LoopState,
    PhaseSummary,
    ProgressPrinter,
    Scalars,
    Sharpness,
    Step,
    TraceRecorder,
    check_loop,
    hms,
)
from .replica import Replicas, set_precision
from .resume import resolve_branch, resolve_resume
from .rngstate import restore_rank_state
from .rundir import RunDir
from .signals import StopRequest
from .topology import Topology, spectral_gap_of
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


def _start_state(cfg, world: World, reps: Replicas, run_dir: str, resume: str | None, log,
                 companions: dict | None = None) -> tuple:
    """Resume this run (--resume), branch from another run's phase checkpoint (branch_from), or start fresh.

    Rank 0 picks and verifies the checkpoint and checks the config against it; the verdict is
    broadcast, so every rank raises the same CheckpointError or loads the same checkpoint."""
    path, how, err = None, "fresh", None
    if world.rank == 0:
        try:
            if resume:
                path, skipped = resolve_resume(run_dir, resume, check=_check_loop, sizes=model_sizes)
                for bad, why in skipped:
                    log(f"hpc_dsgd: skipping damaged checkpoint {bad}: {why}")
                how = "resume" if path else how
            if path is None and cfg.branch_from:
                path, how = resolve_branch(cfg.branch_from), "branch"
            if path:
                man = verify_checkpoint(path, sizes=model_sizes)
                _check_loop(path, man)
                if how == "resume":
                    diffs = check_compatible(man["meta"], cfg.to_dict(), exclude=RESUME_MUST_MATCH_EXCEPT + ("branch_from",))
                else:
                    diffs = check_compatible(man["meta"], cfg.to_dict(), keys=BRANCH_MUST_MATCH)
                    if man["kind"] != "phase":
                        diffs.append(f"checkpoint kind is {man['kind']!r}: branch from a phase checkpoint")
                if diffs:
                    raise CheckpointError(f"cannot {how} from {path}: the config differs in " + "; ".join(diffs))
                if how == "resume":
                    _check_trace_covers(RunDir(run_dir).trace, man["meta"].get("loop"), path)
        except (CheckpointError, OSError) as e:
            err = str(e)
    path, how, err = world.comm.bcast((path, how, err), root=0)
    if err:
        raise CheckpointError(err)
    if not path:
        return LoopState(), {}, how, None
    man, tensors, _, rank_state = load_checkpoint_collective(world.comm, path, list(world.replica_ids), world.device)
    companions = companions if how == "resume" else {}  # a branch (a new run) starts its mode's state afresh
    blocks = {**reps.state_blocks(), **companions}
    missing = [name for name in blocks if name not in tensors]
    if missing:  # the same manifest on every rank: all refuse alike
        raise CheckpointError(f"checkpoint {path} has no {', '.join(missing)} state for optimizer {cfg.optimizer!r}"
                              f", algorithm {cfg.algorithm!r}")
    for name, S in blocks.items():
        S.copy_(tensors[name])
    if rank_state is not None:
        restore_rank_state(rank_state)
    loop = man["meta"].get("loop")
    unknown = sorted(set(loop) - set(LOOP_KEYS)) if isinstance(loop, dict) else None
    if unknown or unknown is None:  # the same manifest on every rank: all refuse alike
        raise CheckpointError(f"checkpoint {path}: manifest.json has no valid meta.loop ("
                              + (f"unknown key(s) {', '.join(unknown)}" if unknown else "none") + ")")
    if how == "branch":  # a new run: its own trace, its own gossip-step and control history
        loop = dict(loop, trace_pos=None)
    return LoopState(*(loop.get(f.name, f.default) for f in fields(LoopState))), loop, how, path


def _check_loop(path: str, man: dict) -> None:
    """The checkpoint's meta.loop as its owners check it (observers.check_loop), before anything uses it."""
    try:
        check_loop(man["meta"], man["iteration"])
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: manifest.json is malformed: {e}") from None


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
    found = [RunDir.TRACE] if os.path.isfile(RunDir(run_dir).trace) else []
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
    run_dir = RunDir.of(cfg).path
    if err := comm.bcast(_refuse_overwrite(run_dir, resume) if comm.Get_rank() == 0 else None, root=0):
        raise CheckpointError(err)
    world = make_world(comm, cfg.replicas_per_rank(comm.Get_size()), cfg.device)
    set_determinism(world.device, cfg.deterministic)
    wl: Workload = make_workload(cfg, world, run_dir, "resume" if resume else "branch" if cfg.branch_from else "fresh")
    sched = wl.schedule()
    topo = Topology(cfg.topology, cfg.n, seed=cfg.seed, shape=tuple(cfg.torus_shape) if cfg.torus_shape else None,
                    lazy=cfg.lazy_mixing)
    set_precision(cfg.precision)  # process-wide: TF32 or strict fp32 (the paper)
    torch.manual_seed(cfg.seed)  # every replica starts from the same initial model (Xi_0 = 0)
    reps = Replicas(cfg, world, wl)
    mode = make_comm(cfg, world, topo, reps.D, capture=bool(reps.capture))  # the communication mode (modes.py)
    topo = mode.topology  # the mixing it realises (hierarchy: over all n replicas)
    alg = make_algorithm(cfg, world, reps, topo, mode)
    gossiper = alg.gossip  # the mode, or one that gossips the algorithm's companion with X
    xi_max = reference_xi_max(cfg) if "target" in cfg.policies else None
    policies = make_policies(cfg, xi_max)
    st, loop, how, ckpt_from = _start_state(cfg, world, reps, run_dir, resume, log, mode.companions)
    mode.start(reps.X, resumed=how == "resume")
    end = sched.total_iters if not cfg.max_iterations else min(cfg.max_iterations, sched.total_iters)
    if _nothing_to_do(cfg, world, sched, loop, xi_max, how, ckpt_from, end, run_dir, log):
        gossiper.free()
        return RunResult(dict(loop.get("last") or {}), reps.X.detach().cpu().clone(), reps.d, False, ckpt_from)
    ctx = Context(world, gossiper, GossipCounter(st.gossip_s), topo.p(), phi_ema=st.phi_ema, ema_phase=st.ema_phase,
                  opt_state=list(reps.opt.state.values()), algorithm=alg)
    revision = code_revision() if world.rank == 0 else ""  # once per run, not per checkpoint (it runs git)
    trace = _open_trace(cfg, world, wl, topo, sched, reps, gossiper, xi_max, st.it, loop, how, ckpt_from, revision, log)
    observers, evaluator, ckpt = _observers(cfg, world, wl, sched, reps, ctx, topo, trace, revision, xi_max, stop, end, log)
    for o in observers:
        o.load_state_dict(loop)
    done = st.it
    try:
        for t in range(st.it, end):
            fault_point("iteration", world.rank, t)
            votes = [o.before(t) for o in observers]
            row, s = iteration(cfg, world, reps, ctx, policies[sched.phase(t) - 1], t, sched,
                               stop=any(v[0] for v in votes), checkpoint=any(v[1] for v in votes))
            step, done = Step(t, row["phase"], row["lr"], row, s.stop > 0 and t + 1 < end, s.checkpoint > 0), t + 1
            for o in observers:
                o.after(step)
            if step.stop:
                break
    except TraceWriteError:  # a full disk: raised on every rank alike, after the checkpoint (or its failure)
        gossiper.free()
        raise
    status = "finished" if end == sched.total_iters and not ckpt.stopped else "stopped"
    for o in observers:
        o.finish(done, status)
    if world.rank == 0:
        log(f"hpc_dsgd: {status} at iteration {done} of {sched.total_iters}"
            + (f", checkpoint {ckpt.path}" if ckpt.path else "") + f"; trace {RunDir(run_dir).trace}; "
            f"wall time {hms(time.monotonic() - wall0)}"
            + (f"; {f'base_lr {cfg.base_lr:g}' if cfg.lr_schedule == 'step' else 'the learning rate'} is untuned "
               f"({cfg.lr_origin})" if cfg.lr_origin.startswith("untuned") else ""),
            flush=True)
    gossiper.free()
    return RunResult(evaluator.last, reps.X.detach().cpu().clone(), reps.d, ckpt.stopped, ckpt.path)


def _observers(cfg, world, wl, sched, reps, ctx, topo, trace, revision: str, xi_max, stop, end: int, log) -> tuple:
    """The observers, in the order they act after each iteration; the Checkpointer last, as it collects the
    others' state. Returns (observers, the Evaluator, the Checkpointer)."""
    meter = EpochMeter(cfg, sched, wl.samples)
    recorder = TraceRecorder(cfg, sched, world, trace, meter)
    evaluator = Evaluator(cfg, sched, wl, world, reps, meter, recorder)
    observers = [meter, PhaseSummary(sched, recorder), evaluator, Sharpness(cfg, sched, world, reps, wl, recorder, log),
                 ProgressPrinter(cfg, sched, wl, world, meter, evaluator, end, log), recorder]
    meta = {"config_json": cfg.to_json(), "loop": None, "code_revision": revision, "n": cfg.n, "topology": topo.describe()}
    ckpt = Checkpointer(cfg, world, RunDir.of(cfg).path, sched, reps, ctx, list(observers), recorder,
                        stop, end, meta, xi_max, log)
    return observers + [ckpt], evaluator, ckpt


def _nothing_to_do(cfg, world, sched, loop: dict, xi_max, how: str, ckpt_from, end: int, run_dir: str, log) -> bool:
    """A resume refuses another reference Xi_max than the run was controlled against; one at (or past) the
    end has nothing to do: it says so and changes nothing (not even the trace's attributes)."""
    saved = {int(k): v for k, v in (loop.get("xi_max") or {}).items()}  # older checkpoints kept every phase
    if how == "resume" and loop.get("xi_max") and any(saved.get(k) != v for k, v in (xi_max or {}).items()):
        raise CheckpointError(f"cannot resume from {ckpt_from}: the reference trace(s) now give Xi_max {xi_max}, "
                              f"the run was controlled against {loop['xi_max']}")
    it = loop.get("it", 0)
    if how != "resume" or it < end:
        return False
    if world.rank == 0:
        log(f"hpc_dsgd: run already finished at iteration {it} ({ckpt_from}); trace "
            f"{RunDir(run_dir).trace} left unchanged" if it >= sched.total_iters else
            f"hpc_dsgd: run already at iteration {it} ({ckpt_from}), max_iterations = {cfg.max_iterations}; "
            f"nothing changed: raise max_iterations (0 = to the end, {sched.total_iters}) to continue", flush=True)
    return True


def _open_trace(cfg, world, wl, topo, sched, reps, gossiper, xi_max, it: int, loop: dict, how: str, ckpt_from,
                revision: str, log) -> TraceWriter | None:
    """Rank 0 writes config.toml and opens the trace: a resume truncates it to the checkpoint's position
    (trace_pos) and adds the rows a full disk kept out of it (trace_pending); a fresh start or a branch starts
    a new one (a branch with its parent's rows before the branch point). Logs the run's set-up line.
    Any error stops every rank alike, before any iteration. The TraceWriter on rank 0, None elsewhere."""
    trace, setup_err, p = None, None, topo.p()
    rd = RunDir.of(cfg)
    run_dir, tpath = rd.path, rd.trace
    if world.rank == 0:
        try:
            os.makedirs(run_dir, exist_ok=True)
            atomic_write_text(rd.config, cfg.to_toml())
            attrs = {"config_json": cfg.to_json(), "config_toml": cfg.to_toml(), "n": cfg.n, "ranks": world.ranks,
                     "replicas_per_rank": world.k, "topology": topo.describe(), "p": p,
                     "spectral_gap": spectral_gap_of(p),
                     "iters_per_epoch": sched.iters_per_epoch,
                     "total_iters": sched.total_iters, "phase_bounds": np.array(sched.phase_bounds()),
                     "measure_every": cfg.measure_every, "reference_xi_max_json": json.dumps(xi_max or {}),
                     "versions_json": json.dumps(versions()), "code_revision": revision,
                     "device": str(world.device), "gossip_comm": gossiper.kind, "cuda_aware_mpi": world.cuda_aware,
                     "parameters": reps.d, "row_length": reps.D, "executor": reps.exec.name,
                     "precision": cfg.precision, "deterministic": cfg.deterministic,
                     "cuda_graph": bool(reps.capture), "optimizer": cfg.optimizer, **wl.trace_attrs()}
            if how == "resume" and loop.get("trace_pos") is not None and os.path.isfile(tpath):
                trace = TraceWriter(tpath, {}, mode="a")
                for grp, rows in loop["trace_pos"].items():
                    trace.truncate(grp, rows)  # rows flushed after the checkpoint are redone, never duplicated
                trace.add_pending(loop.get("trace_pending") or {})  # rows a full disk kept out of the trace: written now
                trace.set_attrs(status="running", resumed_from=ckpt_from, ranks=world.ranks, replicas_per_rank=world.k)
            else:
                if os.path.isfile(tpath):  # --resume auto found no checkpoint: keep the old trace, start a new one
                    kept = f"{tpath}.before-{time.strftime('%Y%m%dT%H%M%S')}"
                    os.replace(tpath, kept)
                    log(f"hpc_dsgd: no checkpoint to resume from; the previous trace is kept as {kept}")
                trace = TraceWriter(tpath, dict(attrs, started_from=ckpt_from or "", start_iteration=it),
                                    arrays=getattr(wl, "trace_arrays", dict)())
                if how == "branch":
                    copy_trace_prefix(RunDir.of_checkpoint(ckpt_from).trace, trace, it)
            log(f"hpc_dsgd: n={cfg.n} replicas = {world.ranks} ranks x {world.k}, {topo.describe()} (p={p:.4f}, "
                f"gossip via {gossiper.kind}), {cfg.model} d={reps.d} ({reps.exec.name}, {cfg.precision}"
                f"{', CUDA graph' if reps.capture else ''}), {cfg.dataset}"
                + (f" ({cfg.partition} partition)" if cfg.partition != "iid" else "")
                + (" (evaluated on a validation set)" if cfg.validation_split > 0 else "") + f", device {world.device}"
                f"{' (CUDA-aware MPI)' if world.cuda_aware else ' (host-staged MPI)' if world.device.type == 'cuda' else ''}, "
                f"{sched.total_iters} iterations ({sched.iters_per_epoch}/epoch), trace {tpath}"
                + (f", {how} from {ckpt_from} at iteration {it}" if ckpt_from else ""))
        except (TraceError, TraceWriteError, OSError) as e:  # every rank stops alike, before any iteration
            setup_err = (type(e).__name__, str(e) if not isinstance(e, OSError) else
                         f"cannot write run directory {run_dir}: {e.strerror or e} (on {mount_of(run_dir)})")
    setup_err = world.comm.bcast(setup_err, root=0)
    if setup_err:
        gossiper.free()
        raise (TraceError if setup_err[0] == "TraceError" else TraceWriteError)(setup_err[1])
    return trace


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


def iteration(cfg, world: World, reps: Replicas, ctx: Context, policy, t: int, sched, stop: bool = False,
              checkpoint: bool = False) -> tuple[dict, Scalars]:
    """One iteration: the algorithm's local step (ctx.algorithm, algorithms/: D-SGD's by default), its
    communication by the phase's policy (none on the gossip_every - 1 local iterations), one scalar Allreduce
    (which also carries this rank's stop/checkpoint votes, summed over the ranks). xi_pre is Xi of the vector
    the algorithm gossips (x^(t+1/2) for D-SGD), xi Xi of x^(t+1).

    Returns the trace row (global values, identical on every rank) and the summed Scalars."""
    n, ipe, phase, lr = cfg.n, sched.iters_per_epoch, sched.phase(t), sched.lr(t)
    alg = ctx.algorithm
    loss, correct, count, grad_sq = alg.local_step(t, ipe, lr, policy, ctx)
    if policy.needs_phi:  # the adaptive target needs this iteration's phi before communicating
        ctx.phi = math.sqrt(allreduce_scalars(world.comm, [grad_sq])[0] / n)
        ctx.phi_ema = _ema(ctx, phase, cfg.phi_ema_beta)
    measure = cfg.measure_every > 0 and t % cfg.measure_every == 0
    xi_pre = xi_sq_local(world, reps.P) if measure else 0.0  # Xi of x^(t+1/2), for Lemma A.1
    res = alg.communicate(t, lr, policy, ctx)
    xi_post = xi_sq_local(world, reps.P) if measure and not math.isfinite(res.xi) else 0.0
    s = Scalars(loss, correct, res.bytes_sent, res.theta_sq_local, grad_sq, xi_pre, xi_post, count,
                float(stop), float(checkpoint)).allreduce(world.comm)
    if not policy.needs_phi:
        ctx.phi = math.sqrt(s.grad_sq / n)
        ctx.phi_ema = _ema(ctx, phase, cfg.phi_ema_beta)
    xi = res.xi if math.isfinite(res.xi) else (math.sqrt(max(s.xi_post_sq, 0.0) / n) if measure else NAN)
    return dict(it=t, epoch=sched.epoch(t), phase=phase, lr=lr, loss=s.loss / n,
                acc=100.0 * s.correct / max(s.count, 1.0), predictions=int(s.count), gossip_steps=res.steps,
                bytes_sent=int(s.bytes_sent), theta=math.sqrt(max(s.theta_sq, 0.0) / n), phi=ctx.phi,
                phi_ema=ctx.phi_ema, xi=xi if measure or math.isfinite(res.xi) else NAN,
                xi_pre=math.sqrt(max(s.xi_pre_sq, 0.0) / n) if measure else NAN,
                target=res.target, controlled=res.controlled, pre_control=res.first, planned_steps=res.planned,
                hit_cap=int(res.hit_cap)), s


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

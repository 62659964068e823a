"""Command line: python -m hpc_dsgd {train,check,topology,bench,checkpoint,sharpness,campaign} ...

Under mpiexec every rank parses and validates the same arguments independently (no collective),
so a bad config stops every rank with the same message and exit code 2. An exception raised on
any rank during the run aborts the whole MPI job (exit 1) instead of leaving the others waiting.
Exit codes of `train`: 0 done (or stopped at max_iterations), 1 failed during the run, 2 refused before
any work (config, inputs), 73 the run directory is in use by another live run (runlock.LOCKED_EXIT_CODE),
75 checkpointed on a stop request (signals.REQUEUE_EXIT_CODE: requeue me).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

# Light modules only at the top (standard library alone: no numpy, torch or MPI), so that `--help` starts in a
# fraction of a second; each command imports what it runs (numpy, torch, mpi4py, whose import initialises
# MPI) inside its function.
from .config import ConfigError, load_config
from .signals import REQUEUE_EXIT_CODE, StopBeforeStart, StopRequest

ABORT_GRACE_S = 1.0  # seconds a failing rank waits, after printing its traceback, before MPI_Abort


def _one_line(msg: str) -> str:
    """Every refusal is one line: `hpc_dsgd: error: ...` (line breaks inside a message become spaces)."""
    return " ".join(msg.split())


def _train(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpc_dsgd train",
                                 description="Train n model replicas with D-SGD (run under mpiexec/srun or alone).")
    ap.add_argument("config", help="TOML config file (see configs/)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (TOML value syntax), repeatable: --set n=32 --set topology=ring")
    ap.add_argument("--resume", metavar="PATH|auto", default=None,
                    help="continue from a checkpoint: 'auto' = the newest valid one of this run (a fresh start if "
                         "none), or a checkpoint directory RUN_DIR/checkpoints/ckpt-<iteration>")
    args = ap.parse_args(argv)

    from mpi4py import MPI

    from .checkpoint import CheckpointError, CheckpointWriteError
    from .data import DataError
    from .preflight import check_inputs, check_run, launch_error
    from .rundir import RunDir
    from .runlock import LOCKED_EXIT_CODE, RunLock, RunLockError
    from .topology import TopologyError
    from .trace import TraceError, TraceWriteError
    from .train import run

    comm = MPI.COMM_WORLD
    launch = launch_error(comm.Get_size())
    if launch:  # every task is alone in its world: each says so itself, no collective could help
        print(f"hpc_dsgd: error: {_one_line(launch)}", file=sys.stderr, flush=True)
        return 2
    # Stop signals are flags from here on: the preparation (the data cache, the tokenizer) polls them
    # and stops with REQUEUE_EXIT_CODE, the training loop checkpoints first (signals.py).
    stop = StopRequest()
    error, stopped = None, None
    try:
        cfg = load_config(args.config, args.overrides, ranks=comm.Get_size())
        check_inputs(cfg)  # reference traces, branch_from, the data (builds the ImageNet-32 cache on first use)
        check_run(cfg, comm.Get_size())  # the device on this node, the data size, a writable out_dir
    except (ConfigError, TopologyError, ValueError) as e:
        error = str(e)
    except StopBeforeStart as e:
        stopped = str(e)
    # Every rank validated on its own (no collective could hang); now agree, so that a value bad on
    # one node only (a data directory missing there) still stops every rank before any work.
    bad = comm.allgather((error, stopped))
    if any(s for _, s in bad) and not any(e for e, _ in bad):
        stop.restore()
        if comm.Get_rank() == 0:
            print(f"hpc_dsgd: {next(s for _, s in bad if s)}; nothing to checkpoint yet: exiting for requeue "
                  f"(exit {REQUEUE_EXIT_CODE})", flush=True)
        return REQUEUE_EXIT_CODE
    bad = [e for e, _ in bad]
    if any(bad):
        stop.restore()
        rank, msg = next((r, m) for r, m in enumerate(bad) if m)
        if comm.Get_rank() == 0:
            where = f" (on rank {rank})" if comm.Get_size() > 1 and bad.count(msg) < len(bad) else ""
            print(f"hpc_dsgd: error{where}: {_one_line(msg)}", file=sys.stderr, flush=True)
        return 2
    # One run per run directory: rank 0 holds RUN_DIR/run.lock for the whole run (stale locks of
    # dead jobs are taken over); a directory in use stops every rank with its own exit code,
    # LOCKED_EXIT_CODE (73), before any work (a campaign tells "in use" from "failed" by it).
    lock, error, code = None, None, 2
    if comm.Get_rank() == 0:
        try:
            lock = RunLock(RunDir.of(cfg).path).acquire()
            if lock.taken_over:
                print(f"hpc_dsgd: took over the stale lock of a dead run ({lock.taken_over})", flush=True)
        except RunLockError as e:
            error, code = str(e), LOCKED_EXIT_CODE
        except ValueError as e:
            error = str(e)
        except OSError as e:  # the reason in words, not a raw errno
            error = f"out_dir={cfg.out_dir!r}: cannot create the run directory {RunDir.of(cfg).path}: " \
                    f"{(e.strerror or str(e)).lower()}"
    error, code = comm.bcast((error, code), root=0)
    if error:
        stop.restore()
        if comm.Get_rank() == 0:
            print(f"hpc_dsgd: error: {_one_line(error)}", file=sys.stderr, flush=True)
        return code
    try:
        with stop:
            result = run(cfg, comm, resume=args.resume, stop=stop)
        if result.stopped:
            return REQUEUE_EXIT_CODE  # checkpointed on SIGUSR1/SIGTERM: the batch script requeues
    except CheckpointWriteError as e:  # raised on every rank alike; the previous checkpoints are intact
        if comm.Get_rank() == 0:
            print(f"hpc_dsgd: error: {_one_line(str(e))}; the previous checkpoints are intact: fix the cause and continue "
                  f"with --resume auto", file=sys.stderr, flush=True)
        return 1
    except TraceWriteError as e:  # a full disk: rank 0 names the file system; the rows are in the trace or a checkpoint
        if comm.Get_rank() == 0:
            print(f"hpc_dsgd: error: {_one_line(str(e))}", file=sys.stderr, flush=True)
        return 1
    except (CheckpointError, TraceError, DataError) as e:  # raised on every rank alike, before training
        if comm.Get_rank() == 0:
            print(f"hpc_dsgd: error: {_one_line(str(e))}", file=sys.stderr, flush=True)
        return 2
    except StopBeforeStart as e:  # every rank alike (rank 0 decided and told the others)
        if comm.Get_rank() == 0:
            print(f"hpc_dsgd: {e}; nothing to checkpoint yet: exiting for requeue (exit {REQUEUE_EXIT_CODE})", flush=True)
        return REQUEUE_EXIT_CODE
    except Exception:
        sys.stderr.write(f"[rank {comm.Get_rank()}] " + traceback.format_exc())
        sys.stderr.flush()
        sys.stdout.flush()
        if lock is not None:
            lock.release()
        if comm.Get_size() > 1:
            # The launcher forwards our stderr through its own pipes and drops what it still holds when it
            # tears the job down on MPI_Abort (seen once with MPICH's hydra on a loaded 2-core machine: the
            # job ended non-zero with an empty stderr). Give it a moment to forward the traceback first.
            time.sleep(ABORT_GRACE_S)
            comm.Abort(1)  # the other ranks may be waiting in a collective: end the whole job
        return 1
    finally:
        if lock is not None:
            lock.release()
    return 0


def _check(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpc_dsgd check",
                                 description="Validate a config for a rank count without MPI (batch scripts call it "
                                             "before srun, so a mismatch fails in seconds, not after the queue): its "
                                             "values, the reference traces, branch_from and the data files. It builds "
                                             "and writes nothing (a data cache not built yet is left to the first run).")
    ap.add_argument("config", help="TOML config file")
    ap.add_argument("--ranks", type=int, required=True, help="the number of MPI ranks (tasks) the job will start")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--resume", default=None, help=argparse.SUPPRESS)  # accepted and ignored: same argv as train
    args = ap.parse_args(argv)

    from .preflight import check_data_size, check_inputs, partition_summary

    try:
        if args.ranks < 1:
            raise ValueError(f"--ranks {args.ranks}: need at least one task")
        cfg = load_config(args.config, args.overrides, ranks=args.ranks)
        found = check_inputs(cfg, prepare_data=False)  # builds nothing: a data cache is the first run's to build
        if found.data_ready:
            check_data_size(cfg)
            found.checked.append(f"an epoch has at least one iteration of n x batch_size = {cfg.n * cfg.batch_size}")
            found.checked += partition_summary(cfg)  # non-iid or held out: sizes, classes per replica
        else:
            found.checked.append("the epoch size and the partition are checked when the run starts (after the cache is built)")
    except ValueError as e:
        print(f"hpc_dsgd: error: {_one_line(str(e))}", file=sys.stderr, flush=True)
        return 2
    print(f"hpc_dsgd: {args.config}: values valid; n={cfg.n} = {args.ranks} ranks x {cfg.n // args.ranks} replicas")
    for line in found.checked:
        print(f"hpc_dsgd:   {line}")
    print(f"hpc_dsgd: {args.config}: ok")
    return 0


def _checkpoint(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpc_dsgd checkpoint",
                                 description="Inspect or convert checkpoints (no MPI).")
    sub = ap.add_subparsers(dest="action", required=True)
    v = sub.add_parser("verify", help="check checksums and structure (never runs code from a file)")
    v.add_argument("paths", nargs="+", metavar="PATH", help="checkpoint directory (RUN_DIR/checkpoints/ckpt-...), "
                   "or a run directory (all of its)")
    u = sub.add_parser("upgrade", help="convert format-1 checkpoints (pickles, read with the restricted unpickler) to format 2")
    u.add_argument("paths", nargs="+", metavar="PATH", help="checkpoint directory, or a run directory (all of its)")
    args = ap.parse_args(argv)

    from .checkpoint import MANIFEST, CheckpointError, list_checkpoints, verify_checkpoint
    from .checkpoint_v1 import upgrade_checkpoint
    from .compat import model_sizes

    rc = 0
    for path in args.paths:
        if not os.path.isdir(path):
            what = "does not exist" if not os.path.lexists(path) else "is not a directory"
            print(f"hpc_dsgd: error: {_one_line(path)} {what}: give a checkpoint directory (RUN_DIR/checkpoints/ckpt-...) "
                  f"or a run directory", file=sys.stderr)
            rc = 2
            continue
        paths = [path] if os.path.lexists(os.path.join(path, MANIFEST)) else list_checkpoints(path)
        if not paths:
            print(f"hpc_dsgd: error: {_one_line(path)}: neither a checkpoint nor a run directory with checkpoints",
                  file=sys.stderr)
            rc = 2
        for p in paths:
            try:
                if args.action == "verify":
                    m = verify_checkpoint(p, sizes=model_sizes)
                    print(f"{p}: intact, format {m['format']}, iteration {m['iteration']}, {m['kind']}, n={m['n']}")
                else:
                    backup = upgrade_checkpoint(p)
                    print(f"{p}: upgraded to plain-data format (original kept as {backup})")
            except CheckpointError as e:
                print(f"hpc_dsgd: error: {_one_line(str(e))}", file=sys.stderr)
                rc = 2
    return rc


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"train": "train n replicas with D-SGD",
                "topology": "show a topology (neighbours, W, spectral gap, p) or the spectral-gap table",
                "bench": "time the local step, gossip, allreduce and consensus measurement",
                "check": "validate a config for a rank count, without MPI (batch scripts run it before srun)",
                "checkpoint": "verify checkpoints, or upgrade format-1 ones (python -m hpc_dsgd checkpoint upgrade PATH)",
                "sharpness": "lambda_max (and trace) of the training-loss Hessian at a checkpoint's averaged model",
                "campaign": "run a plan's dependent runs (configs x seeds) locally or on SLURM, resumably; status; report"}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: python -m hpc_dsgd {" + ",".join(commands) + "} ...\n")
        for k, v in commands.items():
            print(f"  {k:9s} {v}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        return _train(rest)
    if cmd == "checkpoint":
        return _checkpoint(rest)
    if cmd == "check":
        return _check(rest)
    if cmd == "topology":
        from .topology_report import main as topo_main

        return topo_main(rest)
    if cmd == "campaign":
        from .campaign import main as campaign_main

        return campaign_main(rest)
    if cmd == "sharpness":
        from .sharpness import main as sharpness_main

        return sharpness_main(rest)
    from .bench import main as bench_main

    return bench_main(rest)


if __name__ == "__main__":
    sys.exit(main())

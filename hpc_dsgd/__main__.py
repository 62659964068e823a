"""Command line: python -m hpc_dsgd {train,topology,bench,sharpness} ...

Under mpiexec every rank parses and validates the same arguments independently (no collective),
so a bad config stops every rank with the same message and exit code 2. An exception raised on
any rank during the run aborts the whole MPI job (exit 1) instead of leaving the others waiting.
"""
from __future__ import annotations

import argparse
import sys
import traceback


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

    from .config import ConfigError, load_config
    from .topology import TopologyError

    comm = MPI.COMM_WORLD
    error = None
    try:
        cfg = load_config(args.config, args.overrides, ranks=comm.Get_size())
    except (ConfigError, TopologyError, ValueError) as e:
        error = str(e)
    # Every rank validated on its own (no collective could hang); now agree, so that a value bad on
    # one node only (a data directory missing there) still stops every rank before any work.
    bad = comm.allgather(error)
    if any(bad):
        rank, msg = next((r, m) for r, m in enumerate(bad) if m)
        if comm.Get_rank() == 0:
            where = f" (on rank {rank})" if comm.Get_size() > 1 and bad.count(msg) < len(bad) else ""
            print(f"hpc_dsgd: error{where}: {msg}", file=sys.stderr, flush=True)
        return 2
    from .checkpoint import CheckpointError
    from .signals import REQUEUE_EXIT_CODE, StopRequest
    from .trace import TraceError
    from .train import run

    try:
        with StopRequest() as stop:
            result = run(cfg, comm, resume=args.resume, stop=stop)
        if result.stopped:
            return REQUEUE_EXIT_CODE  # checkpointed on SIGUSR1/SIGTERM: the batch script requeues
    except (CheckpointError, TraceError) as e:  # raised on every rank alike, before training
        if comm.Get_rank() == 0:
            print(f"hpc_dsgd: error: {e}", file=sys.stderr, flush=True)
        return 2
    except Exception:
        sys.stderr.write(f"[rank {comm.Get_rank()}] " + traceback.format_exc())
        sys.stderr.flush()
        if comm.Get_size() > 1:
            comm.Abort(1)  # the other ranks may be waiting in a collective: end the whole job
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"train": "train n replicas with D-SGD",
                "topology": "show a topology (neighbours, W, spectral gap, p) or the spectral-gap table",
                "bench": "time the local step, gossip, allreduce and consensus measurement",
                "sharpness": "lambda_max (and trace) of the training-loss Hessian at a checkpoint's averaged model"}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: python -m hpc_dsgd {" + ",".join(commands) + "} ...\n")
        for k, v in commands.items():
            print(f"  {k:9s} {v}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        return _train(rest)
    if cmd == "topology":
        from .topology_report import main as topo_main

        return topo_main(rest)
    if cmd == "sharpness":
        from .sharpness import main as sharpness_main

        return sharpness_main(rest)
    from .bench import main as bench_main

    return bench_main(rest)


if __name__ == "__main__":
    sys.exit(main())

"""`python -m hpc_dsgd campaign {run,status,report} PLAN ...`: the command line of campaigns."""
from __future__ import annotations

import argparse
import sys

import hpc_dsgd.campaign.launchers as launchers

from .plan import CampaignError, load_plan


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m hpc_dsgd campaign",
                                 description="Run the dependent runs of a plan (configs x seeds) in order, locally "
                                             "or on SLURM, resumably; show their status; write the report.")
    sub = ap.add_subparsers(dest="action", required=True)
    for name, hlp in (("run", "start (or resume) every run not finished, in dependency order"),
                      ("status", "one line per run: finished, running (iteration, ETA), queued (why it waits), "
                                 "pending on what, blocked by what, failed with its error"),
                      ("report", "tables (md, tex, csv) and figures (png) with index.md into the report directory")):
        p = sub.add_parser(name, help=hlp)
        p.add_argument("plan", help="plan TOML file (configs/campaigns/)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key of every run (TOML value syntax), repeatable")
        p.add_argument("--ranks", type=int, default=None,
                       help="MPI ranks per run (default: the plan's `ranks`, else 1: one process holding all n "
                            "replicas, the fastest on one GPU)")
        if name == "run":
            p.add_argument("--launcher", choices=tuple(launchers.LAUNCHERS), default="local")
            p.add_argument("--parallel", type=int, default=1, metavar="J",
                           help="local: J independent runs at once (CPU cores or GPUs permitting)")
            p.add_argument("--resume", choices=("auto",), default="auto",
                           help="runs always continue from their newest intact checkpoint (the only mode)")
            p.add_argument("--rerun", action="append", default=[], metavar="NAME",
                           help="run NAME again from scratch (its old directory is moved aside); repeatable")
            p.add_argument("--retries", type=int, default=2, help="start a failed run again up to N times (default 2)")
            p.add_argument("--sbatch-arg", dest="sbatch_args", action="append", default=[], metavar="OPTION",
                           help="slurm: one more sbatch option, e.g. --sbatch-arg=--qos=long (after the plan's "
                                "[slurm] table, so it wins); repeatable")
        if name == "report":
            p.add_argument("--out", default=None, help="report directory (default: the plan's `report`)")
            p.add_argument("--write-tuned", action="store_true",
                           help="a learning-rate sweep plan: write configs/tuned_lr.toml from its finished runs "
                                "(best mean on the held-out samples) and regenerate the configs (hpc_dsgd/tuning.py)")
    return ap


def untuned_note(runs) -> str | None:
    """Print (and return) one line when any run rests on an untuned learning rate (its config's lr_origin)."""
    origins = sorted({r.cfg.get("lr_origin", "") for r in runs if r.cfg.get("lr_origin", "").startswith("untuned")})
    if not origins:
        return None
    line = (f"hpc_dsgd: campaign: untuned: {sum(r.cfg.get('lr_origin', '') in origins for r in runs)} of {len(runs)} "
            f"runs rest on an untuned learning rate ({'; '.join(origins)}): tune with configs/campaigns/lr_sweep.toml "
            "and `campaign report ... --write-tuned` before reading them as the paper's")
    print(line, flush=True)
    return line


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "parallel", 1) < 1:
            raise CampaignError(f"--parallel {args.parallel}: need at least 1 run at a time")
        if getattr(args, "retries", 0) < 0:
            raise CampaignError(f"--retries {args.retries}: need N >= 0 (0 = a failed run is not started again)")
        bad = [a for a in getattr(args, "sbatch_args", []) if not a.startswith("--")]
        if bad:
            raise CampaignError(f"--sbatch-arg {bad[0]!r}: need a long sbatch option, e.g. --sbatch-arg=--qos=long")
        plan = load_plan(args.plan, args.overrides, args.ranks, validate=args.action == "run")
        from .driver import run, status

        if args.action == "status":
            return status(plan, _launcher_of_state(plan))
        if args.action == "report":
            from ..analysis.report import report

            if args.write_tuned:  # first: a refusal is one line, before any report is written
                from ..tuning import write_tuned

                if write_tuned(plan):
                    return 2
            rc = report(plan, args.out)
            untuned_note(plan.runs)
            return rc
        untuned_note(plan.runs)
        _refuse_other_launchers_jobs(plan, args.launcher)
        options = launchers.Options(ranks=plan.ranks, parallel=args.parallel, sbatch_args=args.sbatch_args)
        return run(plan, launchers.get(args.launcher, plan, options), args.retries, args.rerun)
    except (ValueError, OSError) as e:  # CampaignError, ControllerError, a config's, a manifest's, a state file's
        print(f"hpc_dsgd: error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return 2


def _launcher_of_state(plan):
    """The launcher the state file names (status asks it about queued jobs); None for local or none."""
    from .state import State

    name = State(plan.state_path).data.get("launcher")
    if not name or name == "local" or name not in launchers.LAUNCHERS:
        return None
    return launchers.get(name, plan, launchers.Options(ranks=plan.ranks))


def _refuse_other_launchers_jobs(plan, name: str) -> None:
    """Another launcher's jobs of this plan still queued: running them here too would run them twice."""
    from .state import State

    prev = _launcher_of_state(plan)
    if prev is None or prev.name == name:
        return
    active = [f"{n} ({job.describe(prev.label)})" for n, job in prev.poll(State(plan.state_path).runs).items()
              if job.active]
    if active:
        raise CampaignError(f"run(s) of this plan are queued by --launcher {prev.name}: {', '.join(active)}; "
                            f"continue with --launcher {prev.name}, or cancel those jobs first")

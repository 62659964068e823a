"""Tables from a directory of traces: mean +- std over seeds per experiment, and the paper's Tables 1-7.

    python tools/tables.py runs/                         # every experiment found, Markdown
    python tools/tables.py runs/ --preset table2 --paper # the paper's Table 2 layout, paper values beside
    python tools/tables.py runs/ --format latex --seeds 3 --metric test_acc_avg

An experiment (a "group") is every identifying config key of a run (`config_json`) except those that
cannot change a result (seed, name, output and data paths, device, threads, flush interval; see
`NON_IDENTIFYING`). The metric of a run is the chosen /epoch/ column at its last evaluation row
(default test_acc_avg, the averaged model's test top-1 accuracy in percent, as in the paper's tables).

Nothing is silently averaged in: only finished runs (status "finished") count;
a seed is counted once per experiment (a second run of the same seed is a duplicate, listed, and the
newest finished copy counts); unfinished ("running" left behind: still running or crashed) and failed
runs are shown in the cell ("92.10 ± 0.20 (2/3 seeds, 1 unfinished)") and listed below the table.
Std is the sample std over seeds (ddof=1); a cell with one seed shows no std ("n=1").
Traces that cannot be read (no schema_version, a newer schema, not HDF5) are listed as skipped with
the reason; the tool exits non-zero only when no readable trace was found.

This module is the command line and `make_table` / `render`, the one entry point of every preset (the campaign's
report calls them too). The work is in runs.py (traces -> one runs DataFrame: `load_runs`), cells.py (counting
rules, experiments, cell statistics), presets.py (the paper's layouts and values), table.py (the Table model and
its Markdown, LaTeX and CSV writers), render.py (the flat table and Tables 1-7), large_batch.py and lr_sweep.py.
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd

from . import algorithms, communication, large_batch, lr_sweep
from .cells import experiments, parse_where, where
from .presets import PRESETS, build_preset
from .render import flat_table, preset_table
from .runs import load_runs
from .table import Table, write

OTHER_PRESETS = ("large_batch", "lr_sweep", "algorithms", "communication")


def make_table(df: pd.DataFrame, preset: str | None = None, expected: int | None = None, digits: int = 2,
               paper: bool = False, wanted: dict | None = None, options: dict | None = None) -> Table:
    """The Table of a runs frame (`runs.load_runs`): the flat table of every experiment (preset None), one of the
    paper's Tables 1-7 ("table1" ... "table7"; `paper`: the paper's values beside each cell and the departures
    from the paper at the foot), "large_batch" or "lr_sweep". `expected`: seeds per cell; `wanted`: keep the
    experiments whose identity has these KEY=VALUE; `options`: Tables 6/7 (phase1_epochs, later_epochs)."""
    exps = where(experiments(df), wanted or {})
    metric = df.attrs.get("metric", "test_acc_avg")
    if preset == "large_batch":
        return large_batch.table(large_batch.build(exps, expected), df, digits)
    if preset == "algorithms":  # analysis/algorithms.py
        return algorithms.table(algorithms.build(exps, expected), df, digits)
    if preset == "communication":  # analysis/communication.py: accuracy, mean Xi, bytes vs All-Reduce
        return communication.table(communication.build(exps, expected), df, digits)
    if preset == "lr_sweep":
        return lr_sweep.table(lr_sweep.build(exps, expected), df, digits, metric, exps)
    if preset:
        tab = build_preset(preset, exps, expected, options)
        return preset_table(tab, df, exps, digits, paper, metric, PRESETS[preset].dec_phase)
    return flat_table(df, exps, expected, digits, metric)


def render(df: pd.DataFrame, preset: str | None = None, fmt: str = "md", **kw) -> str:
    """`make_table(df, preset, **kw)` written as Markdown, LaTeX or CSV."""
    return write(make_table(df, preset, **kw), fmt)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="tools/tables.py",
        description="Mean ± std over seeds of a final metric for every experiment found in a directory of "
                    "traces, or laid out as one of the paper's Tables 1-7.")
    ap.add_argument("paths", nargs="+", help="directories searched recursively for *.h5 traces (or trace files)")
    ap.add_argument("--preset", choices=sorted(PRESETS) + list(OTHER_PRESETS),
                    help="lay out the paper's table (rows, columns, headers); large_batch: C-SGD vs D-SGD, "
                         "accuracy, lambda_max and mean Xi per cell (hpc_dsgd/analysis/large_batch.py); lr_sweep: "
                         "accuracy per base_lr of each sweep, the best marked (hpc_dsgd/analysis/lr_sweep.py)")
    ap.add_argument("--format", choices=("md", "latex", "csv"), default="md", help="output format (default md)")
    ap.add_argument("--metric", default="test_acc_avg",
                    help="/epoch/ column taken at the last evaluation row (default test_acc_avg)")
    ap.add_argument("--seeds", type=int, default=None,
                    help="seeds expected per cell; a cell with fewer says how many it has")
    ap.add_argument("--paper", action="store_true", help="print the paper's value beside each cell (presets)")
    ap.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                    help="keep experiments whose config KEY equals VALUE (JSON or bare string); repeatable")
    ap.add_argument("--ignore-key", action="append", default=[], metavar="KEY",
                    help="a further config key that does not identify an experiment; repeatable")
    ap.add_argument("--phase1-epochs", type=int, nargs=3, metavar=("E1", "E2", "E3"),
                    help="Tables 6/7: phase-1 lengths to match (default 150 200 250)")
    ap.add_argument("--later-epochs", type=int, default=150,
                    help="Tables 6/7: epochs of phases 2+3 together, split equally (default 150)")
    ap.add_argument("--digits", type=int, default=2, help="decimals shown (default 2)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.paper and (not args.preset or args.preset in OTHER_PRESETS):
        print("hpc_dsgd: error: --paper needs --preset tableN: the paper's values belong to Kong et al.'s tables "
              "(Zhu et al. give their large-batch results as a figure)", file=sys.stderr)
        return 2
    try:
        wanted = parse_where(args.where)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    df = load_runs(args.paths[0] if len(args.paths) == 1 else args.paths, args.metric, frozenset(args.ignore_key))
    skipped = df.attrs["skipped"]
    if df.empty:
        for path, reason in skipped:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        print(f"no readable trace under {' '.join(args.paths)} ({len(skipped)} skipped)", file=sys.stderr)
        return 1
    opt = {"later_epochs": args.later_epochs}
    if args.phase1_epochs:
        opt["phase1_epochs"] = tuple(args.phase1_epochs)
    print(render(df, args.preset, args.format, expected=args.seeds, digits=args.digits, paper=args.paper,
                 wanted=wanted, options=opt))
    if args.format == "csv" and skipped:
        for path, reason in skipped:
            print(f"skipped {path}: {reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

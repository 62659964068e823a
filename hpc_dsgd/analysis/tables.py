"""Tables from a directory of traces: mean +- std over seeds per experiment, and the paper's Tables 1-7.

    python tools/tables.py runs/                         # every experiment found, Markdown
    python tools/tables.py runs/ --preset table2 --paper # the paper's Table 2 layout, paper values beside
    python tools/tables.py runs/ --format latex --seeds 3 --metric test_acc_avg

An experiment (a "group") is every identifying config key of a run (`config_json`) except those that
cannot change a result (seed, name, output and data paths, device, threads, flush interval; see
`NON_IDENTIFYING`). The metric of a run is the chosen /epoch/ column at its last evaluation row
(default test_acc_avg, the averaged model's test top-1 accuracy in percent, as in the paper's tables).

Nothing is silently averaged in (STYLE.md practice 7): only finished runs (status "finished") count;
a seed is counted once per experiment (a second run of the same seed is a duplicate, listed, and the
newest finished copy counts); unfinished ("running" left behind: still running or crashed) and failed
runs are shown in the cell ("92.10 ± 0.20 (2/3 seeds, 1 unfinished)") and listed below the table.
Std is the sample std over seeds (ddof=1); a cell with one seed shows no std ("n=1").
Traces that cannot be read (no schema_version, a newer schema, not HDF5) are listed as skipped with
the reason; the tool exits non-zero only when no readable trace was found.

This module is the command line. The work is in runs.py (traces, identity, grouping and counting; the
DataFrame API load_runs / load_trace), presets.py (the paper's layouts and values), render.py (Markdown,
LaTeX, CSV) and the large_batch / lr_sweep presets; the names other code imports from here are re-exported.
"""
from __future__ import annotations

import argparse
import sys

from . import communication, large_batch, lr_sweep
# The public names of the analysis as they were when this module held all of it (campaign.py, tests and
# notebooks import them from here): loading and grouping (runs), presets and paper values (presets), renderers
# (render). `load_runs` here is the list form (a RunSet); `runs.load_runs` is the DataFrame form.
from .presets import (CIFAR_FRACTIONS, FACTOR_LABEL, IMAGENET_FRACTIONS, PAPER_VALUES, PRESETS, XI, Cell,  # noqa: F401
                      Layout, Preset, PresetTable, build_preset, phase_epochs, phase_levels)
from .render import (_ambiguity_lines, _control_lines, _emit_notes, _list_keys, _md_row, _notes_for,  # noqa: F401
                     _skipped_lines, _tex, render_groups, render_preset)
from .runs import (CAP_HIT, EMPTY, MAIN_KEYS, NEVER_BOUND, NON_IDENTIFYING, NON_IDENTIFYING_SUFFIXES,  # noqa: F401
                   CellStats, Group, Run, RunSet, Skipped, _equal, _group_order, control_notes, filter_groups,
                   find_traces, fmt_value, group_runs, identity, is_identifying, parse_where, read_runs, read_summary,
                   seeds_cell)

load_runs = read_runs


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="tools/tables.py",
        description="Mean ± std over seeds of a final metric for every experiment found in a directory of "
                    "traces, or laid out as one of the paper's Tables 1-7.")
    ap.add_argument("paths", nargs="+", help="directories searched recursively for *.h5 traces (or trace files)")
    ap.add_argument("--preset", choices=sorted(PRESETS) + ["large_batch", "lr_sweep", "communication"],
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
    if args.paper and (not args.preset or args.preset in ("large_batch", "lr_sweep", "communication")):
        print("hpc_dsgd: error: --paper needs --preset tableN: the paper's values belong to Kong et al.'s tables "
              "(Zhu et al. give their large-batch results as a figure)", file=sys.stderr)
        return 2
    try:
        where = parse_where(args.where)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    runset = load_runs(args.paths[0] if len(args.paths) == 1 else args.paths, args.metric)
    if not runset.runs:
        for s in runset.skipped:
            print(f"skipped {s.path}: {s.reason}", file=sys.stderr)
        print(f"no readable trace under {' '.join(args.paths)} ({len(runset.skipped)} skipped)", file=sys.stderr)
        return 1
    groups = filter_groups(group_runs(runset.runs, frozenset(args.ignore_key)), where)
    if args.preset == "large_batch":
        text = large_batch.render(large_batch.build(groups, args.seeds), args.format, args.digits, runset)
    elif args.preset == "communication":  # analysis/communication.py: accuracy, mean Xi, bytes vs All-Reduce
        text = communication.render(communication.build(groups, args.seeds), args.format, args.digits, runset)
    elif args.preset == "lr_sweep":
        text = lr_sweep.render(lr_sweep.build(groups, args.seeds), args.format, args.digits, args.metric, runset, groups)
    elif args.preset:
        opt = {"later_epochs": args.later_epochs}
        if args.phase1_epochs:
            opt["phase1_epochs"] = tuple(args.phase1_epochs)
        tab = build_preset(args.preset, groups, args.seeds, opt)
        text = render_preset(tab, args.format, args.digits, args.paper, args.metric, runset)
    else:
        text = render_groups(groups, args.format, args.digits, args.seeds, args.metric, runset)
    print(text)
    if args.format == "csv" and runset.skipped:
        for s in runset.skipped:
            print(f"skipped {s.path}: {s.reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

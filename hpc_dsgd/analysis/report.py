"""A campaign's report: tables (Markdown, LaTeX, CSV) and figures (PNG) of a plan's runs, with index.md.

`report(plan, out_dir)` takes a campaign plan (hpc_dsgd.campaign.plan.Plan, or anything with its fields: path,
report, seeds, tables, and runs each with name, config, seed, trace, cfg); it imports nothing of the campaign.
A run not there yet is a missing cell (the tables count only finished runs).

    python -m hpc_dsgd campaign report configs/campaigns/table2.toml [--out DIR]
"""
from __future__ import annotations

import os
import time

from ..fileio import atomic_write_text

OTHER_TABLES = {"large_batch": "Large batch: C-SGD vs D-SGD (analysis/large_batch.py)",
                "lr_sweep": "Learning-rate sweeps, the best rate of each marked (analysis/lr_sweep.py)",
                "algorithms": "Algorithms: accuracy, mean Ξ per phase, bytes per iteration (analysis/algorithms.py)",
                "communication": "Communication modes: accuracy, mean Ξ, bytes relative to All-Reduce (analysis/communication.py)"}


class ReportError(ValueError):
    """A report that cannot be written (an unknown preset): one line."""


def plan_presets(plan) -> list[str]:
    """The presets of tables.py that a run of the plan would fill (a cell or a baseline)."""
    from .presets import filled_presets
    from .runs import identity

    return filled_presets([identity(r.cfg) for r in plan.runs])

# A table preset's own figure, drawn beside the generic ones when the plan asks for that table: name -> (file, title)
PRESET_FIGURES = {"algorithms": ("algorithms_xi.png", "Consensus distance Ξ of each method"),
                  "communication": ("accuracy_vs_bytes.png", "Test accuracy of the averaged model against the bytes sent")}
REPORT_FIGURES = (("fig1_consensus", "consensus.png", "Consensus distance Ξ over epochs (Figure 1)"),
                  ("fig2_learning_curves", "learning_curves.png", "Training loss, training and test accuracy (Figure 2)"),
                  ("fig3_learning_curves", "translation.png", "Multi30k: training loss, Ξ, validation perplexity (Figure 3)"))


def report(plan, out_dir: str | None = None) -> int:
    """Tables (Markdown, LaTeX, CSV) and figures (PNG) of the plan's runs into the report directory, with
    index.md; a run not there yet is a missing cell (tables.py counts only finished runs)."""
    from . import figures
    from .presets import PRESETS
    from .runs import load_runs
    from .tables import render

    out = out_dir or plan.report
    os.makedirs(out, exist_ok=True)
    have = [r for r in plan.runs if os.path.isfile(r.trace)]
    traces = [r.trace for r in have]
    runs = load_runs(traces)
    expected = len(plan.seeds)
    tables = plan.tables if plan.tables is not None else plan_presets(plan)
    bad = [t for t in tables if t not in PRESETS and t not in OTHER_TABLES]
    if bad:
        raise ReportError(f"plan {plan.path!r}: tables = {bad}: unknown preset; choose from "
                            f"{', '.join(list(PRESETS) + list(OTHER_TABLES))}")
    index = [f"# Report of `{plan.path}`", "",
             f"{len(traces)} of {len(plan.runs)} runs have a trace; "
             f"{int((runs.status == 'finished').sum())} finished (only finished runs count). "
             f"Written {time.strftime('%Y-%m-%d %H:%M:%S')}.", "", "## Tables", ""]
    for name in tables + ["experiments"]:
        links = []
        for fmt, ext in (("md", "md"), ("latex", "tex"), ("csv", "csv")):
            text = render(runs, None if name == "experiments" else name, fmt, expected=expected, paper=name in PRESETS)
            fname = f"{name}.{ext}"
            atomic_write_text(os.path.join(out, fname), text + "\n")
            links.append(f"[{ext}]({fname})")
        title = (PRESETS[name].layout.title if name in PRESETS
                 else OTHER_TABLES.get(name, "Every experiment of the plan"))
        index.append(f"- {title}: " + " · ".join(links))
    index += ["", "## Figures", ""]
    first = [r for r in have if r.seed == plan.seeds[0]]  # the figures show the first seed: one line per experiment
    if first:
        from ..workloads.spec import report_figures

        figs = [(fname, title, getattr(figures, fig), trs) for fig, fname, title in REPORT_FIGURES
                if (trs := [r.trace for r in first if fig in report_figures(r.cfg.get("dataset"))])]
        from . import algorithms, communication

        draw = {"algorithms": algorithms.figure, "communication": communication.accuracy_vs_bytes}
        figs += [(*PRESET_FIGURES[name], draw[name], [r.trace for r in first]) for name in tables if name in draw]
        for fname, title, fn, trs in figs:
            fn(trs, os.path.join(out, fname))
            index += [f"### {title}", "", f"![{title}]({fname})", ""]
        if len(plan.seeds) > 1:
            index.append(f"(seed {plan.seeds[0]} of each experiment; the tables average every seed)")
    else:
        index.append("No run of the first seed has a trace yet.")
    missing = [r for r in plan.runs if not os.path.isfile(r.trace)]
    if missing:
        index += ["", "## Runs without a trace", ""] + [f"- {r.name} ({r.config})" for r in missing]
    atomic_write_text(os.path.join(out, "index.md"), "\n".join(index) + "\n")
    print(f"hpc_dsgd: campaign: report of {len(traces)}/{len(plan.runs)} runs in {out}/index.md "
          f"({', '.join(tables + ['experiments'])}; figures)", flush=True)
    return 0

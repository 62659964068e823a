"""Offline analysis: the paper's tables and figures from a directory of HDF5 traces (no MPI, no training).

- `runs`: traces to DataFrames (pandas) -- `load_runs(dir)` (every trace read once: one row per run with its
  experiment, seed, status, counted, identity keys, final metrics, lambda_max, mean Xi, control notes),
  `load_trace(path)` (one DataFrame per trace group, the config in `df.attrs`), `summarize`.
- `cells`: the counting rules (`count_runs`), `experiments(df)`, `CellStats`.
- `presets`: the paper's Tables 1-7 (layouts, which experiment fills each cell, the paper's values).
- `table`: the one `Table` model and its Markdown, LaTeX and CSV writers; `render`: the flat table and Tables 1-7;
  `large_batch`, `lr_sweep`: two more presets; `departures`: where the reproduction departs from the paper.
- `tables`: `make_table(df, preset)` / `tables.render(df, preset, fmt)` and the command line
  (`python tools/tables.py DIR [--preset tableN] [--paper] [--format md|latex|csv]`).
- `figures`: Figures 1-4 and the Xi-vs-Theta check of Lemma A.1 (matplotlib, Agg backend)
  (`python tools/figures.py fig1|fig2|fig3|theta-xi|fig4 ...`).
- `gossip_sim`: the gossip-only consensus simulation of Figure 4 (pure numpy).

Submodules are imported on first use, so `python -m hpc_dsgd.analysis.tables` runs cleanly and importing
this package does not pull in matplotlib.
"""
import importlib

_EXPORTS = {
    "simulate_consensus": "gossip_sim", "simulate_all": "gossip_sim",
    "load_runs": "runs", "load_trace": "runs", "summarize": "runs", "experiments": "cells",
    "make_table": "tables", "build_preset": "presets", "phase_levels": "presets",
    "PRESETS": "presets", "PAPER_VALUES": "presets", "DEPARTURES": "departures",
    "fig1_consensus": "figures", "fig2_learning_curves": "figures", "theta_vs_xi": "figures",
    "fig4_gossip": "figures",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

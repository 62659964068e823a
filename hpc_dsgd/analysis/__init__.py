"""Offline analysis: the paper's tables and figures from a directory of HDF5 traces (no MPI, no training).

- `runs`: traces to DataFrames (pandas) -- `load_trace(path)` (one DataFrame per trace group, the config in
  `df.attrs`), `load_runs(dir)` (one row per run: experiment, seed, status, counted, identity keys, final
  metrics), `summarize` -- and the counting rules of every table (`read_runs`, `group_runs`, `CellStats`).
- `presets`: the paper's Tables 1-7 (layouts, which experiment fills each cell, the paper's values).
- `render`: Markdown, LaTeX and CSV from a DataFrame, and the tables' notes.
- `tables`: the command line (`python tools/tables.py DIR [--preset tableN] [--paper] [--format md|latex|csv]`);
  it re-exports the names above that other code imports from it. `large_batch`, `lr_sweep`: two more presets.
- `figures`: Figures 1-4 and the Xi-vs-Theta check of Lemma A.1 (matplotlib, Agg backend)
  (`python tools/figures.py fig1|fig2|fig3|theta-xi|fig4 ...`).
- `gossip_sim`: the gossip-only consensus simulation of Figure 4 (pure numpy).

Submodules are imported on first use, so `python -m hpc_dsgd.analysis.tables` runs cleanly and importing
this package does not pull in matplotlib.
"""
import importlib

_EXPORTS = {
    "simulate_consensus": "gossip_sim", "simulate_all": "gossip_sim",
    "load_runs": "runs", "load_trace": "runs", "summarize": "runs",
    "group_runs": "tables", "build_preset": "tables", "render_preset": "tables",
    "render_groups": "tables", "phase_levels": "tables", "PRESETS": "tables", "PAPER_VALUES": "tables",
    "fig1_consensus": "figures", "fig2_learning_curves": "figures", "theta_vs_xi": "figures",
    "fig4_gossip": "figures",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

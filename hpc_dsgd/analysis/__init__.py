"""Offline analysis: the paper's tables and figures from a directory of HDF5 traces (no MPI, no training).

- `tables`: mean +- std over seeds per experiment, presets laying out the paper's Tables 1-7
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
    "load_runs": "tables", "group_runs": "tables", "build_preset": "tables", "render_preset": "tables",
    "render_groups": "tables", "phase_levels": "tables", "PRESETS": "tables", "PAPER_VALUES": "tables",
    "fig1_consensus": "figures", "fig2_learning_curves": "figures", "theta_vs_xi": "figures",
    "fig4_gossip": "figures",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

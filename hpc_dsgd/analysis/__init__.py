"""Offline analysis: the paper's tables and figures from a directory of HDF5 traces (no MPI, no training).

- `tables`: mean +- std over seeds per experiment, presets laying out the paper's Tables 1-7.
- `figures`: Figures 1, 2, 4 and the Xi-vs-Theta check of Lemma A.1 (matplotlib, Agg backend).
- `gossip_sim`: the gossip-only consensus simulation of Figure 4 (pure numpy).
"""
from .gossip_sim import simulate_all, simulate_consensus
from .tables import (
    PAPER_VALUES,
    PRESETS,
    CellStats,
    Group,
    Run,
    group_runs,
    load_runs,
    phase_levels,
)

__all__ = [
    "PAPER_VALUES", "PRESETS", "CellStats", "Group", "Run", "group_runs", "load_runs", "phase_levels",
    "simulate_all", "simulate_consensus",
]

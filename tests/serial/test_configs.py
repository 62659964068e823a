"""Claims about the shipped configs: every file in configs/ is a valid run description, and the
paper-table files land in the cells of the table tool's presets that the paper puts them in."""
import glob
import os
import tomllib

import pytest

from hpc_dsgd.analysis.tables import PRESETS
from hpc_dsgd.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = sorted(f for f in glob.glob(os.path.join(ROOT, "configs", "**", "*.toml"), recursive=True)
               if os.sep + "campaigns" + os.sep not in f)  # campaign plans: tests/serial/test_campaign.py


def rel(path):
    return os.path.relpath(path, os.path.join(ROOT, "configs"))


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_every_config_is_valid(path):
    cfg = load_config(path, ranks=1, check_files=False)  # data dir and reference traces live elsewhere
    assert cfg.n % 1 == 0 and len(cfg.policies) == len(cfg.decay_fractions) + 1


def _cells(preset, cfg):
    pre = PRESETS[preset]
    return [(r, c) for r in range(len(pre.layout.rows)) for c in range(len(pre.layout.columns))
            if pre.cell(cfg, r, c, {})]


@pytest.mark.parametrize("table, pattern, expect", [
    ("table1", "table1/ring_n32.toml", ("n=32", "D-SGD (ring)")),
    ("table1", "table1/complete_n64.toml", ("n=64", "AllReduce (complete)")),
    ("table2", "table2/n32_dec1_quarter.toml", ("n=32", ("dec-phase-1", "1/4 Ξ_max"))),
    ("table2", "table2/n64_dec3_xi_max.toml", ("n=64", ("dec-phase-3", "Ξ_max"))),
    ("table4", "table4/n32_dec2_half.toml", ("n=32", ("dec-phase-2", "1/2 Ξ_max"))),
    ("table5", "table5/p1_eighth_p2_half.toml", ("1/8 Ξ_max", "1/2 Ξ_max")),
    ("table6", "table6/e200_quarter.toml", ("1/4 Ξ_max", ("training epochs at phase-1", "200"))),
    ("table7", "table7/e250_zero.toml", ("250", "0 Ξ_max")),
])
def test_paper_configs_fill_the_papers_cells(table, pattern, expect):
    cfg = load_config(os.path.join(ROOT, "configs", pattern), ranks=1, check_files=False).to_dict()
    lay = PRESETS[table].layout
    cells = _cells(table, cfg)
    assert len(cells) == 1, cells
    r, c = cells[0]
    row, col = expect
    assert lay.rows[r] == row
    group, label = lay.columns[c]
    assert (label if isinstance(col, str) else (group, label)) == col


def _raw_toml(path):
    """A config file's keys as TOML gives them, `base` files first (no Config fields, no validation)."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    base = data.pop("base", None)
    return {**(_raw_toml(os.path.join(os.path.dirname(path), base)) if base else {}), **data}


@pytest.mark.parametrize("stem, topology, policies, factors, reference", [
    ("complete", "complete", ["allreduce"], [1.0], None),
    ("ring", "ring", ["gossip"], [1.0], None),
    ("ring_target_quarter", "ring", ["target"], [0.25], "runs/figure3_ring/trace.h5"),
    ("exponential", "exponential", ["gossip"], [1.0], None),
])
def test_figure3_configs(stem, topology, policies, factors, reference):
    """Figure 3 (Transformer on Multi30k, n = 32): the four runs, one phase each, on the Multi30k recipe."""
    raw = _raw_toml(os.path.join(ROOT, "configs", "figure3", f"{stem}.toml"))
    assert raw["name"] == f"figure3_{stem}" and raw["n"] == 32
    assert (raw["topology"], raw["policies"], raw["target_factors"]) == (topology, policies, factors)
    assert raw.get("reference_trace") == reference
    assert (raw["dataset"], raw["model"], raw["optimizer"], raw["decay_fractions"]) == (
        "multi30k", "transformer", "adam", [])

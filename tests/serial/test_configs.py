"""Claims about the shipped configs: every file in configs/ is a valid run description, and the
paper-table files land in the cells of the table tool's presets that the paper puts them in."""
import glob
import importlib.util
import os
import tomllib

import pytest

from hpc_dsgd.analysis.tables import PRESETS
from hpc_dsgd.compat import BRANCH_MUST_MATCH
from hpc_dsgd.config import DEFAULTS, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Run descriptions; not the learning-rate file (configs/tuned_lr.toml) or campaign plans (configs/campaigns/).
FILES = sorted(f for f in glob.glob(os.path.join(ROOT, "configs", "**", "*.toml"), recursive=True)
               if os.path.basename(f) != "tuned_lr.toml" and os.sep + "campaigns" + os.sep not in f)


def rel(path):
    return os.path.relpath(path, os.path.join(ROOT, "configs"))


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_every_config_is_valid(path):
    cfg = load_config(path, ranks=1)  # values only: data dir and reference traces live elsewhere
    assert len(cfg.policies) == len(cfg.decay_fractions) + 1
    assert load_config(path, ranks=cfg.n).replicas_per_rank(cfg.n) == 1  # the paper's layout: one replica per rank


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
    cfg = load_config(os.path.join(ROOT, "configs", pattern), ranks=1).to_dict()
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
    ("centralized", "complete", ["csgd"], [1.0], None),  # data-parallel Adam (gradient averaging)
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


# -- the experiment protocol: references per experiment, branch parents, one place for learning rates --------

def _generator():
    spec = importlib.util.spec_from_file_location("make_paper_configs", os.path.join(ROOT, "tools", "make_paper_configs.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _by_name():
    out = {}
    for path in FILES:
        raw = {**DEFAULTS, **_raw_toml(path)}
        out[f'{raw["out_dir"]}/{raw["name"]}'] = out[raw["name"]] = raw
    return out


def test_generator_reproduces_the_shipped_configs_byte_for_byte(tmp_path):
    """Edit the generator (or configs/tuned_lr.toml), not the files: rerunning it reproduces every generated file."""
    written = _generator().main(["--out", str(tmp_path)])
    assert len(written) > 150
    for rel_path in written:
        with open(tmp_path / rel_path, "rb") as a, open(os.path.join(ROOT, "configs", rel_path), "rb") as b:
            assert a.read() == b.read(), rel_path


def _run_of(trace_path):
    assert trace_path.endswith("/trace.h5"), trace_path
    return trace_path[:-len("/trace.h5")]


def test_every_target_is_measured_against_the_uncontrolled_run_of_its_own_experiment():
    """The project's reading of Kong et al. Sec. 4.2 (docs/protocol.md): phase k's target is a factor times phase
    k's Xi_max in the uncontrolled run of the same experiment: same n, seed, schedule, recipe, plain gossip in phase
    k and, in the earlier phases, what the controlled run does there (All-Reduce for dec-phase-k), so both start
    phase k alike. One exception, the paper's: Table 7's 150-epoch row reads Table 2's ring baseline, which the
    paper reuses as its (150, Xi_max) cell, at the ring's own fine-tuned rate."""
    runs = _by_name()
    checked = 0
    for name, cfg in runs.items():
        if "/" in name:
            continue
        for k, pol in enumerate(cfg["policies"], 1):
            if pol != "target":
                continue
            ref_path = cfg["reference_traces"][k - 1] if cfg["reference_traces"] else cfg["reference_trace"]
            ref = runs[_run_of(ref_path)]
            assert ref["policies"][k - 1] == "gossip", (name, k, ref["name"])
            reused = name.startswith("table7_e150_") and ref["name"] == "table1_ring_n32"
            for key in ("n", "seed", "topology", "dataset", "model", "width", "epochs", "decay_fractions",
                        "batch_size", "base_lr", "momentum", "nesterov"):
                assert ref[key] == cfg[key] or reused and key == "base_lr", (name, k, key)
            # earlier phases as the controlled run's, so phase k starts from the same kind of state (Table 5's
            # phase-2 targets use Table 2's dec-phase-2 Xi_max, the paper's phase-2 Xi_max)
            if not name.startswith("table5"):
                assert ref["policies"][:k - 1] == cfg["policies"][:k - 1], (name, k, ref["name"])
            checked += 1
    assert checked > 60


def test_branches_start_from_a_centralized_prefix_of_the_same_recipe():
    runs = _by_name()
    branched = [c for name, c in runs.items() if c["branch_from"] and "/" not in name]
    assert branched
    for cfg in branched:
        parent_name, _, alias = cfg["branch_from"].partition("/checkpoints/")
        parent, k = runs[parent_name], int(alias.removeprefix("phase-"))
        assert set(parent["policies"]) == {"allreduce"} and cfg["policies"][:k] == ["allreduce"] * k, cfg["name"]
        for key in BRANCH_MUST_MATCH:
            assert parent[key] == cfg[key], (cfg["name"], key)


def test_learning_rates_come_from_one_file_and_sweeps_cover_each_choice():
    with open(os.path.join(ROOT, "configs", "tuned_lr.toml"), "rb") as f:
        tuned = tomllib.load(f)
    runs = _by_name()
    assert runs["table1_ring_n32"]["base_lr"] == tuned["cifar10_ring"]["n32"]
    assert runs["table2_n64_dec2_half"]["base_lr"] == tuned["cifar10"]["n64"]
    assert runs["table4_n32_dec1_half"]["base_lr"] == tuned["cifar10_sgd"]["n32"]
    assert runs["table3_n16_dec4_quarter"]["base_lr"] == tuned["imagenet32"]["n16"]
    sweeps = {}
    for name, cfg in runs.items():
        if name.startswith("lr_sweep_") and "/" not in name:
            sweeps.setdefault(name.rsplit("_lr", 1)[0], []).append(cfg["base_lr"])
    for recipe, sec in tuned.items():
        for key in sec:
            if key.startswith("n"):
                grid = sorted(sweeps[f"lr_sweep_{recipe}_{key}"])
                assert len(grid) >= 4 and grid[0] < sec[key] < grid[-1], (recipe, key, grid)

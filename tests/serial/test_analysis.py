"""Offline tools: tables and figures from traces written by the real TraceWriter, the Figure 4
gossip simulation, and the topology report. No MPI, no training."""
from __future__ import annotations

import json
import math
import re
import zlib

import h5py
import numpy as np
import pytest

from hpc_dsgd import topology_report
from hpc_dsgd.analysis import figures, presets, runs, tables
from hpc_dsgd.analysis.cells import CellStats, experiments
from hpc_dsgd.analysis.gossip_sim import simulate_consensus
from hpc_dsgd.config import Config
from hpc_dsgd.topology import Topology
from hpc_dsgd.trace import TraceError, TraceWriter

EPOCHS = 8


def config(**over) -> dict:
    """A run's config as a trace stores it: Config fields plus the consensus-control keys."""
    cfg = Config().to_dict()
    cfg.update(n=32, topology="ring", dataset="digits", epochs=float(EPOCHS), decay_fractions=[0.5, 0.75],
               policies=["gossip", "gossip", "gossip"], target_factors=[1.0, 1.0, 1.0], control_signal="xi",
               max_gossip_steps=100)
    cfg.update(over)
    return cfg


def write_trace(path, cfg: dict, final_acc: float, status: str = "finished", epochs: int = EPOCHS,
                p: float = 0.0254555) -> str:
    """A small but complete trace: /iter/ with Xi (NaN on unmeasured iterations) and Theta, /epoch/, /phase/."""
    rng = np.random.default_rng(zlib.crc32(f"{path}{final_acc}".encode()))
    w = TraceWriter(str(path), {"config_json": json.dumps(cfg, sort_keys=True), "n": cfg["n"],
                                "topology": cfg["topology"], "p": p, "spectral_gap": 1 - math.sqrt(1 - p),
                                "iters_per_epoch": 10, "total_iters": 10 * epochs})
    it = 0
    for e in range(epochs):
        phase = 1 + sum(e >= a * cfg["epochs"] for a in cfg["decay_fractions"])
        for _ in range(10):
            theta = 0.05 * math.exp(-it / 40) * (1 + 0.1 * rng.random())
            xi = (1.0 / p) * theta * rng.uniform(0.2, 1.0) if it % 2 == 0 else math.nan  # <= (2/p) theta
            w.append("iter", it=it, epoch=(it + 1) / 10, phase=phase, lr=0.1, loss=2.0 * math.exp(-it / 30),
                     acc=min(99.0, 10 + it), gossip_steps=1, bytes_sent=1000, time=0.01 * it, xi=xi, theta=theta,
                     phi=1.0, phi_ema=1.0, target=math.nan, hit_cap=0)
            it += 1
        w.append("epoch", epoch=e + 1, it=it, train_loss=2.0 / (e + 1), train_acc=50 + 5 * e,
                 test_acc_avg=final_acc - (epochs - 1 - e) * 1.0, test_loss_avg=1.0 / (e + 1),
                 test_acc_local_mean=final_acc - 1, test_acc_local_std=0.5, images_per_s=1000.0,
                 elapsed=float(e + 1))
        w.flush()
    if status != "running":
        for k in (1, 2, 3):
            w.append("phase", phase=k, first_it=0, last_it=0, xi_max=0.1 / k, gossip_steps=10, bytes_sent=100,
                     cap_hits=0)
        w.set_attrs(status=status, finished="2024-01-01T00:00:00")
    return str(path)


DEC1 = dict(policies=["target", "allreduce", "allreduce"])  # dec-phase-1 with a target factor
ACC = {  # (experiment, seed) -> final test accuracy
    ("ar", 0): 92.5, ("ar", 1): 92.9, ("ar", 2): 93.1,
    ("ring", 0): 91.0, ("ring", 1): 91.6, ("ring", 2): 91.2,
    ("half", 0): 92.0, ("half", 1): 92.4,
    ("d1max", 0): 91.5, ("d1max", 1): 91.9, ("d1max", 2): 91.7,
}
CFGS = {
    "ar": config(policies=["allreduce"] * 3),
    "ring": config(),
    "half": config(target_factors=[0.5, 1.0, 1.0], **DEC1),
    "d1max": config(policies=["gossip", "allreduce", "allreduce"]),
}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for (exp, seed), acc in ACC.items():
        write_trace(root / exp / f"s{seed}" / "trace.h5", dict(CFGS[exp], seed=seed, name=f"{exp}-s{seed}"), acc)
    # unfinished third seed of "half" (crashed or still running): shown, never averaged in
    write_trace(root / "half" / "s2" / "trace.h5", dict(CFGS["half"], seed=2, name="half-s2"), 99.0,
                status="running", epochs=3)
    # a second run of ring seed 1 (duplicate): listed, counted once
    write_trace(root / "ring" / "s1-again" / "trace.h5", dict(CFGS["ring"], seed=1, name="ring-s1b"), 91.6)
    # a trace from a newer schema, and a file with no schema_version: skipped with the reason
    bad = write_trace(root / "future" / "trace.h5", dict(CFGS["ring"], seed=7), 50.0)
    with h5py.File(bad, "a") as f:
        f.attrs["schema_version"] = 99
    with h5py.File(root / "foreign.h5", "w") as f:
        f.create_dataset("x", data=[1, 2, 3])
    return root


def _group(exps, exp):
    want = runs.identity(CFGS[exp])
    (g,) = [g for g in exps if g.ident == want]
    return g


def test_means_stds_counts_and_flags(runs_dir):
    df = runs.load_runs(runs_dir)
    assert len(df) == len(ACC) + 2
    skipped = {p.split("/")[-2] if p.endswith("trace.h5") else p.split("/")[-1]: reason
               for p, reason in df.attrs["skipped"]}
    assert set(skipped) == {"future", "foreign.h5"}
    assert "schema_version 99" in skipped["future"] and "future/trace.h5" in skipped["future"]
    assert "no schema_version" in skipped["foreign.h5"]

    groups = experiments(df)
    assert len(groups) == 4  # seed and name do not split an experiment
    for exp in CFGS:
        st = _group(groups, exp).stats()
        vals = [v for (e, s), v in sorted(ACC.items()) if e == exp]
        assert st.count == len(vals)
        assert st.mean == pytest.approx(np.mean(vals), abs=1e-9)
        assert st.std == pytest.approx(np.std(vals, ddof=1), abs=1e-9)

    ring = _group(groups, "ring").stats()
    assert ring.duplicates == 1 and ring.seeds == [0, 1, 2] and ring.count == 3
    assert "1 duplicate" in ring.text()

    half = _group(groups, "half").stats()
    assert (half.count, half.expected, half.unfinished) == (2, 3, 1)
    assert half.text() == (f"{np.mean([92.0, 92.4]):.2f} ± {np.std([92.0, 92.4], ddof=1):.2f} "
                           "(2/3 seeds, 1 unfinished)")
    half_runs = _group(groups, "half").runs
    unfinished = half_runs[~half_runs.counted]
    assert len(unfinished) == 1 and "unfinished" in unfinished.note.iloc[0] and unfinished.status.iloc[0] == "running"

    ar = _group(groups, "ar").stats(expected=5)  # --seeds 5
    assert ar.text().endswith("(3/5 seeds)")
    ar3 = _group(groups, "ar").stats(expected=3)
    assert "(" not in ar3.text() and "±" in ar3.text()


def test_single_seed_shows_no_std():
    st = CellStats(values=[91.234], seeds=[0], expected=1)
    assert st.text() == "91.23 (n=1)" and math.isnan(st.std)
    assert CellStats(values=[], seeds=[], expected=0).text() == "—"


def test_cli_flat_table_and_formats(runs_dir, capsys):
    assert tables.main([str(runs_dir)]) == 0
    out = capsys.readouterr().out
    assert "Skipped files" in out and "schema_version 99" in out
    assert "Runs not counted" in out and "unfinished" in out and "duplicate of seed 1" in out
    assert "(2/3 seeds, 1 unfinished)" in out

    assert tables.main([str(runs_dir), "--format", "csv", "--where", "dataset=digits"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    head = lines[0].split(",")
    assert "mean" in head and "std" in head and len(lines) == 1 + 4

    assert tables.main([str(runs_dir), "--format", "latex"]) == 0
    out = capsys.readouterr().out
    assert r"\begin{tabular}" in out and r"\pm" in out and "% Skipped files" in out


def test_no_readable_trace_exits_nonzero(tmp_path, capsys):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.attrs["schema_version"] = 99
    assert tables.main([str(tmp_path)]) != 0
    assert "schema_version 99" in capsys.readouterr().err


def test_table2_preset_layout_and_cells(runs_dir, capsys):
    lay = presets.PRESETS["table2"].layout
    assert lay.rows == ["n=32", "n=64"]
    assert lay.corner == "# nodes \\ target Ξ"
    assert [g for g, _ in lay.groups] == ["dec-phase-1", "dec-phase-2", "dec-phase-3"]
    assert all(cols == ["Ξ_max", "1/2 Ξ_max", "1/4 Ξ_max"] for _, cols in lay.groups)
    assert len(presets.PAPER_VALUES["table2"]["cells"][0]) == 9
    assert presets.PAPER_VALUES["table2"]["cells"][0][0] == (91.78, 0.35)
    assert presets.PAPER_VALUES["table2"]["cells"][1][8] == (92.60, 0.10)

    groups = experiments(runs.load_runs(runs_dir))
    tab = presets.build_preset("table2", groups)
    d1max, d1half = tab.cells[0][0], tab.cells[0][1]
    assert d1max.stats.mean == pytest.approx(np.mean([91.5, 91.9, 91.7]))
    assert d1half.stats.count == 2 and d1half.stats.unfinished == 1
    assert tab.cells[0][2].stats is None and tab.cells[1][0].stats is None  # no such runs: "—"
    (ar_label, ar_cells), _ = tab.baselines
    assert ar_label == "All-Reduce" and ar_cells[0].stats.mean == pytest.approx(np.mean([92.5, 92.9, 93.1]))

    assert tables.main([str(runs_dir), "--preset", "table2", "--paper"]) == 0
    out = capsys.readouterr().out
    assert "| # nodes \\ target Ξ | dec-phase-1: Ξ_max | dec-phase-1: 1/2 Ξ_max |" in out
    assert "| n=32 |" in out and "| n=64 | — [paper 90.31 ± 0.12] |" in out
    assert "[paper 91.78 ± 0.35]" in out and "(2/3 seeds, 1 unfinished)" in out

    assert tables.main([str(runs_dir), "--preset", "table2", "--format", "latex"]) == 0
    out = capsys.readouterr().out
    assert r"\multicolumn{3}{c}{dec-phase-1}" in out and r"$1/2 \Xi_{\max}$" in out and "$n=64$" in out


def test_other_presets_have_the_papers_layout(runs_dir):
    P = presets.PRESETS
    assert P["table1"].layout.columns == [("", "AllReduce (complete)"), ("", "D-SGD (ring)")]
    assert P["table1"].layout.rows == ["n=16", "n=32", "n=64"]
    assert [g for g, _ in P["table3"].layout.groups] == [f"dec-phase-{k}" for k in (1, 2, 3, 4)]
    assert [g for g, _ in P["table4"].layout.groups] == ["dec-phase-1", "dec-phase-2"]
    assert P["table5"].layout.rows == ["1/2 Ξ_max", "1/4 Ξ_max", "1/8 Ξ_max"]
    assert P["table6"].layout.groups == [("training epochs at phase-1", ["150", "200", "250"])]
    assert P["table7"].layout.rows == ["150", "200", "250"]
    assert P["table7"].layout.columns[-1][1] == "0 Ξ_max"
    for name, pre in P.items():  # every cell has the paper's value
        cells = presets.PAPER_VALUES[name]["cells"]
        assert [len(r) for r in cells] == [len(pre.layout.columns)] * len(pre.layout.rows), name
    groups = experiments(runs.load_runs(runs_dir))
    t1 = presets.build_preset("table1", groups)
    assert t1.cells[1][0].stats.mean == pytest.approx(np.mean([92.5, 92.9, 93.1]))
    assert t1.cells[1][1].stats.mean == pytest.approx(np.mean([91.0, 91.6, 91.2]))
    # Table 7 with scaled-down epochs: phase 1 of 4 epochs, phases 2+3 of 4 epochs together
    t7 = presets.build_preset("table7", groups, options={"phase1_epochs": (4, 5, 6), "later_epochs": 4})
    assert t7.layout.rows == ["4", "5", "6"]
    assert t7.cells[0][0].stats.mean == pytest.approx(np.mean([91.0, 91.6, 91.2]))  # plain ring = Xi_max
    assert t7.cells[0][4].stats is None  # 0 Xi_max: allreduce in phase 1, gossip after: not run


def _png_shape(path):
    import matplotlib.image as mpimg

    return mpimg.imread(path).shape


def test_figures_write_pngs_of_the_expected_size(runs_dir, tmp_path):
    wide = (int(figures.SIZE_WIDE[1] * figures.DPI), int(figures.SIZE_WIDE[0] * figures.DPI))
    one = (int(figures.SIZE_ONE[1] * figures.DPI), int(figures.SIZE_ONE[0] * figures.DPI))
    ring = sorted(str(p) for p in (runs_dir / "ring").rglob("*.h5"))
    out = figures.fig1_consensus(ring, str(tmp_path / "f1.png"))
    assert _png_shape(out)[:2] == one
    out = figures.fig2_learning_curves([str(runs_dir / "ring"), str(runs_dir / "half")], str(tmp_path / "f2.png"))
    assert _png_shape(out)[:2] == wide
    out = figures.theta_vs_xi(ring[0], str(tmp_path / "tx.png"))
    assert _png_shape(out)[:2] == one
    out = figures.fig4_gossip(str(tmp_path / "f4.png"), n=16, steps=20, seed=1)
    assert _png_shape(out)[:2] == one
    assert figures.main(["fig4", "--n", "8", "--steps", "5", "-o", str(tmp_path / "cli4.png")]) == 0
    assert figures.main(["fig1", str(runs_dir / "half"), "-o", str(tmp_path / "cli1.png")]) == 0
    for name in ("f1", "f2", "tx", "f4", "cli4", "cli1"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


def write_mt_trace(path, topology: str, bleu: float | None, epochs: int = 4) -> str:
    """A one-phase Multi30k trace: epoch columns train_loss, val_ppl_avg (and bleu_avg, NaN until the last
    epoch, unless bleu is None), iter column xi (NaN on unmeasured iterations)."""
    cfg = config(name=f"figure3_{topology}", topology=topology, dataset="multi30k", model="transformer",
                 decay_fractions=[], policies=["gossip"], target_factors=[1.0], epochs=float(epochs))
    w = TraceWriter(str(path), {"config_json": json.dumps(cfg, sort_keys=True), "n": 32, "topology": topology,
                                "iters_per_epoch": 10, "total_iters": 10 * epochs})
    for it in range(10 * epochs):
        w.append("iter", it=it, epoch=(it + 1) / 10, loss=9.0 * math.exp(-it / 30),
                 xi=0.3 * math.exp(-it / 20) if it % 3 == 0 else math.nan)
    for e in range(epochs):
        extra = {} if bleu is None else {"bleu_avg": bleu if e == epochs - 1 else math.nan}
        w.append("epoch", epoch=e + 1, it=10 * (e + 1), train_loss=6.0 / (e + 1), val_ppl_avg=40.0 / (e + 1) + 5,
                 **extra)
    w.set_attrs(status="finished")
    w.flush()
    return str(path)


def test_fig3_learning_curves_with_bleu_in_the_legend(tmp_path, monkeypatch):
    wide = (int(figures.SIZE_WIDE[1] * figures.DPI), int(figures.SIZE_WIDE[0] * figures.DPI))
    runs = [write_mt_trace(tmp_path / f"{topo}.h5", topo, bleu)  # exponential: no bleu_avg column, still drawn
            for topo, bleu in (("ring", 27.34), ("complete", 28.96), ("exponential", None))]
    seen = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, out, size: (seen.append(fig), save(fig, out, size))[1])
    out = figures.fig3_learning_curves(runs, str(tmp_path / "f3.png"))
    assert _png_shape(out)[:2] == wide
    (a, b, c) = seen[0].axes
    assert [len(line.get_xdata()) for line in a.get_lines()] == [4, 4, 4]
    assert [len(line.get_xdata()) for line in b.get_lines()] == [14, 14, 14]  # xi measured every third iteration
    assert b.get_yscale() == "log" and c.get_yscale() == "linear"
    legend = [t.get_text() for t in c.get_legend().get_texts()]
    assert legend[0].endswith(", BLEU 27.3") and legend[1].endswith(", BLEU 29.0")
    assert legend[2].startswith("figure3_exponential") and "BLEU" not in legend[2]
    assert figures.main(["fig3", str(tmp_path), "-o", str(tmp_path / "cli3.png")]) == 0
    assert _png_shape(str(tmp_path / "cli3.png"))[:2] == wide
    assert (tmp_path / "cli3.png").stat().st_size > 1000


def test_keys_nothing_reads_neither_label_nor_split_an_experiment(tmp_path, capsys):
    """An Adam/Transformer run's row shows no momentum or width, and two runs differing only in them are one
    experiment; an SGD run shows momentum and no Adam or Transformer keys; a trace written before the
    optimizer key existed groups with its SGD twin (a missing key is its default)."""
    mt = dict(dataset="multi30k", model="transformer", optimizer="adam", lr_schedule="inverse_sqrt",
              decay_fractions=[], policies=["gossip"], target_factors=[1.0])
    write_trace(tmp_path / "mt0.h5", config(seed=0, momentum=0.9, width=1.0, **mt), 30.0, epochs=2)
    write_trace(tmp_path / "mt1.h5", config(seed=1, momentum=0.5, width=3.0, nesterov=False, **mt), 32.0, epochs=2)
    old = config(seed=1)
    for k in ("optimizer", "adam_betas", "adam_eps", "lr_schedule", "d_model", "dropout"):
        old.pop(k)
    write_trace(tmp_path / "img0.h5", config(seed=0), 90.0)
    write_trace(tmp_path / "img1.h5", old, 92.0)
    groups = experiments(runs.load_runs(str(tmp_path)))
    assert sorted(len(g.runs) for g in groups) == [2, 2]
    adam, = [g for g in groups if g.ident["optimizer"] == "adam"]
    sgd, = [g for g in groups if g.ident["optimizer"] == "sgd"]
    assert not {"momentum", "nesterov", "width", "base_lr", "warmup_lr"} & set(adam.ident)
    assert {"adam_betas", "d_model", "dropout", "warmup_steps"} <= set(adam.ident)
    assert {"momentum", "width", "base_lr"} <= set(sgd.ident)
    assert not {"adam_betas", "adam_eps", "d_model", "dropout", "label_smoothing", "warmup_steps"} & set(sgd.ident)
    assert tables.main([str(tmp_path / "mt0.h5"), str(tmp_path / "mt1.h5")]) == 0
    head = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| dataset"))
    assert "momentum" not in head and "width" not in head, head


@pytest.mark.parametrize("name", ["ring", "torus", "exponential"])
def test_gossip_simulation_contracts_at_rate_p(name):
    """Assumption 1 for a fixed W: Xi_k <= (1 - p)^(k/2) Xi_0."""
    n, steps = 32, 60
    xi = simulate_consensus(name, n, steps, d=3, seed=5)
    p = Topology(name, n).p()
    assert xi.shape == (steps + 1,) and xi[0] > 1.0  # x_i ~ U[0, 10]
    k = np.arange(steps + 1)
    assert np.all(xi <= (1 - p) ** (k / 2) * xi[0] + 1e-9)
    assert xi[-1] < xi[0]


@pytest.mark.parametrize("name", ["one_peer_exponential", "random_matching"])
def test_gossip_simulation_time_varying_reaches_consensus(name):
    xi = simulate_consensus(name, 32, 40, seed=2)
    assert np.all(np.diff(xi) <= 1e-12) and xi[-1] < 1e-2 * xi[0]


def test_topology_cli_prints_p_of_the_ring(capsys):
    n = 16
    W = np.zeros((n, n))
    for i in range(n):
        for j in (i - 1, i, i + 1):
            W[i, j % n] = 1 / 3
    lam = np.sort(np.abs(np.linalg.eigvalsh(W)))[::-1]
    rho = 1 - lam[1]
    p = 1 - (1 - rho) ** 2
    assert topology_report.main(["ring", "--n", str(n)]) == 0
    out = capsys.readouterr().out
    printed = float(re.search(r"^p = ([0-9.eE+-]+)", out, re.M).group(1))
    assert printed == pytest.approx(p, rel=1e-5)
    assert float(re.search(r"spectral gap rho = ([0-9.eE+-]+)", out).group(1)) == pytest.approx(rho, rel=1e-5)
    assert "  0: 1, 15" in out and "W (rows" in out

    assert topology_report.main(["--table", "--n", "16", "31"]) == 0
    out = capsys.readouterr().out
    ring_row = next(line for line in out.splitlines() if line.startswith("| ring |"))
    assert float(ring_row.split("|")[3]) == pytest.approx(p, rel=1e-5)
    assert "torus, n=31" in out and "no such factorisation" in out


def test_ambiguous_cell_is_shown_and_where_resolves_it(tmp_path, capsys):
    """Two experiments fit Table 1's All-Reduce n=32 cell (All-Reduce policy; gossip on the complete graph)."""
    for seed in (0, 1):
        write_trace(tmp_path / f"ar{seed}.h5", config(policies=["allreduce"] * 3, seed=seed), 92.0 + seed)
        write_trace(tmp_path / f"cg{seed}.h5", config(topology="complete", seed=seed), 93.0 + seed)
    assert tables.main([str(tmp_path), "--preset", "table1"]) == 0
    out = capsys.readouterr().out
    assert "| n=32 | ambiguous: 2 experiments |" in out and "differing in policies, topology" in out
    assert tables.main([str(tmp_path), "--preset", "table1", "--where", "topology=complete"]) == 0
    out = capsys.readouterr().out
    assert f"| n=32 | {93.5:.2f} ± {np.std([93.0, 94.0], ddof=1):.2f} |" in out


def test_figure_legend_names_n_once():
    """Figure 1's legend said `ring n=8 n=8`: the topology's description already carries n."""
    from types import SimpleNamespace

    from hpc_dsgd.analysis.figures import _label

    cfg = {"name": "quickstart", "seed": 0, "policies": ["gossip", "target"], "target_factors": [1, 0.5], "n": 8}
    tr = SimpleNamespace(config=cfg, attrs={"topology": "ring n=8", "n": 8, "status": "finished"}, path="t.h5")
    assert _label(tr) == "quickstart s0: ring n=8 [gossip, target(0.5)]"
    tr.attrs = {"topology": "ring", "n": 8, "status": "running"}  # a description without n gets it once
    assert _label(tr) == "quickstart s0: ring n=8 [gossip, target(0.5)] (running)"


def test_lr_sweep_preset_picks_the_best_mean_over_seeds(tmp_path):
    """The lr_sweep preset: one row per sweep, one column per base_lr, the best by mean over seeds
    marked and named; fabricated traces with known accuracies, where the best single seed is not the best mean."""
    from hpc_dsgd.analysis import lr_sweep
    from hpc_dsgd.analysis.table import write

    acc = {0.05: (90.0, 90.4), 0.1: (91.0, 91.4), 0.2: (92.5, 89.5), 0.4: (85.0, 86.0)}  # 0.1 best mean (91.2)
    for lr, vals in acc.items():
        for seed, a in enumerate(vals):
            write_trace(tmp_path / f"ar_lr{lr}_s{seed}.h5", config(policies=["allreduce"] * 3, base_lr=lr, seed=seed), a)
    write_trace(tmp_path / "ring_lr0.1.h5", config(base_lr=0.1), 88.0)
    write_trace(tmp_path / "ring_lr0.2.h5", config(base_lr=0.2), 89.0)
    groups = experiments(runs.load_runs(str(tmp_path)))
    sweeps = lr_sweep.build(groups, expected=2)
    best = {tuple(s.ident["policies"]): s.best for s in sweeps}
    assert best == {("allreduce",) * 3: 0.1, ("gossip",) * 3: 0.2}
    ar = next(s for s in sweeps if s.ident["policies"][0] == "allreduce")
    assert ar.cells[0.1].mean == pytest.approx(91.2) and ar.cells[0.1].seeds == [0, 1]
    md = write(lr_sweep.table(sweeps), "md")
    row = next(line for line in md.splitlines() if line.startswith("| digits") and "allreduce" in line)
    assert "**91.20 ± 0.28**" in row and row.rstrip(" |").endswith("0.1")
    assert "89.00 (1/2 seeds)" in md and "**89.00 (1/2 seeds)**" in md  # the ring's best, with its seed count
    assert r"\textbf{91.20 $\pm$" not in write(lr_sweep.table(sweeps), "latex")  # LaTeX uses \pm inside math
    assert r"\textbf{$91.20 \pm 0.28$}" in write(lr_sweep.table(sweeps), "latex")
    csv_rows = [line.split(",") for line in write(lr_sweep.table(sweeps), "csv").splitlines() if line[0] != "#"]
    assert sum(r[-2] == "1" for r in csv_rows[1:]) == 2
    out = tables.main([str(tmp_path), "--preset", "lr_sweep", "--seeds", "2"])
    assert out == 0


def test_seeds_column_counts_and_names_seeds_and_stopped_is_not_failed(tmp_path, capsys):
    """The flat table's seeds column says how many seeds count and which ('2 (3,5)'), never a bare seed value
    that reads as a count; a run stopped by max_iterations (trace status 'stopped') is 'stopped', not 'failed'."""
    for seed, status in ((3, "finished"), (5, "finished"), (8, "stopped")):
        write_trace(tmp_path / f"s{seed}" / "trace.h5", config(seed=seed), 90.0 + seed, status=status)
    write_trace(tmp_path / "one" / "trace.h5", config(seed=7, topology="complete"), 93.0)
    assert tables.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    ring = next(line for line in out.splitlines() if "| ring" in line)
    complete = next(line for line in out.splitlines() if "| complete" in line)
    assert "| 2 (3,5) |" in ring and "(2/3 seeds, 1 stopped)" in ring and "failed" not in out, out
    assert "| 1 (7) |" in complete
    assert "stopped (max_iterations or a signal; resume it to finish)" in out


def test_load_runs_frame_counts_like_the_tables(runs_dir):
    """The notebook API: load_runs gives one row per readable run with its experiment, seed, status,
    whether it counts, identity keys and final metrics; summarize's mean and sample std (pandas) are the tables'."""
    df = runs.load_runs(runs_dir)
    assert len(df) == len(ACC) + 2 and df.experiment.nunique() == 4
    assert sorted(p for p, _ in df.attrs["skipped"])[0].endswith("foreign.h5")
    assert {"policies", "n", "topology", "test_acc_avg", "train_loss", "counted", "note"} <= set(df.columns)
    assert int(df.counted.sum()) == len(ACC)  # the duplicate and the unfinished run do not count
    half = df[df.policies == ("target", "allreduce", "allreduce")]
    assert sorted(half.status) == ["finished", "finished", "running"] and not half[~half.counted].note.iloc[0] == ""
    summary = runs.summarize(df)
    assert list(summary["count"]) == [3, 3, 3, 2]
    groups = experiments(runs.load_runs(runs_dir))
    for (_, row), g in zip(summary.iterrows(), groups):
        st = g.stats()
        assert tuple(g.ident["policies"]) == row.policies and row["count"] == st.count
        assert row["mean"] == pytest.approx(st.mean, rel=1e-12) and row["std"] == pytest.approx(st.std, rel=1e-12)
        vals = [v for (e, s), v in ACC.items() if runs.identity(CFGS[e]) == g.ident]
        assert row["std"] == pytest.approx(np.std(vals, ddof=1), abs=1e-12)


def test_load_trace_gives_a_dataframe_per_group_with_the_config(runs_dir):
    from hpc_dsgd.analysis import load_trace

    tr = load_trace(str(runs_dir / "half" / "s0" / "trace.h5"))
    assert set(tr) == {"iter", "epoch", "phase", "sharpness"} and tr["sharpness"].empty
    assert len(tr["iter"]) == 10 * EPOCHS and len(tr["epoch"]) == EPOCHS and len(tr["phase"]) == 3
    assert tr["epoch"].test_acc_avg.iloc[-1] == 92.0 and tr["iter"].xi.isna().sum() == 5 * EPOCHS
    for df in tr.values():
        assert df.attrs["config"]["policies"] == DEC1["policies"] and df.attrs["config"]["seed"] == 0
        assert df.attrs["trace_attrs"]["status"] == "finished"
    with pytest.raises(TraceError, match="schema_version 99"):
        load_trace(str(runs_dir / "future" / "trace.h5"))


def test_analysis_modules_have_one_job_and_no_cycle():
    """runs, presets and render never import the command line (tables) nor the presets that build on them;
    the training path does not import pandas."""
    import ast
    import os
    import subprocess
    import sys

    here = os.path.dirname(tables.__file__)
    for mod in ("runs", "cells", "table", "presets", "render", "large_batch", "lr_sweep"):
        tree = ast.parse(open(os.path.join(here, f"{mod}.py")).read())
        imported = {a.name.split(".")[0] if n.module is None else n.module for n in ast.walk(tree)
                    if isinstance(n, ast.ImportFrom) for a in n.names}
        assert not {"tables"} & imported and "large_batch" not in imported and "lr_sweep" not in imported, mod
    code = "import sys, hpc_dsgd.train, hpc_dsgd.trace, hpc_dsgd.checkpoint; assert 'pandas' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

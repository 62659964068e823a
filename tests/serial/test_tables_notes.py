"""Tables that never drop a run nor crash (issue 26) and that say what a reproduction rests on (issue 25): symlinked
run directories followed once (loops detected), unreadable directories and traces with a stored config of the
wrong shape listed as skipped while every other run tabulates, sweep verdicts on finished runs only, the untuned
line, "extend the grid", the all-ring run's alternative reference, the departures footer of `--paper`, and no torch
in `tools/tables.py`. Traces are fabricated (small: a few epochs, one flush), the expected values computed here.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np

from hpc_dsgd.analysis import tables
from hpc_dsgd.config import Config
from hpc_dsgd.trace import TraceWriter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCHS, IPE = 8, 10  # phases 1-3: epochs 0-4, 4-6, 6-8


def config(**over) -> dict:
    cfg = Config().to_dict()
    cfg.update(n=32, topology="ring", dataset="digits", epochs=float(EPOCHS), decay_fractions=[0.5, 0.75],
               policies=["gossip", "gossip", "gossip"], target_factors=[1.0, 1.0, 1.0], control_signal="xi")
    cfg.update(over)
    return cfg


def write(path, cfg: dict, acc: float, status: str = "finished", xi=None, target=None, raw_config=None) -> str:
    """One trace: /iter/ (xi given per iteration, or none), /epoch/ (test_acc_avg ends at `acc`), /phase/
    (`target`: per phase, NaN where none)."""
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    w = TraceWriter(str(path), {"config_json": raw_config if raw_config is not None else json.dumps(cfg)})
    xi = np.full(EPOCHS * IPE, np.nan) if xi is None else xi
    for it in range(EPOCHS * IPE):
        e = it / IPE
        w.append("iter", it=it, epoch=(it + 1) / IPE, phase=1 + (e >= 4) + (e >= 6), xi=float(xi[it]))
    for e in range(EPOCHS):
        w.append("epoch", epoch=e + 1, it=(e + 1) * IPE, test_acc_avg=acc - (EPOCHS - 1 - e) * 0.5)
    if status != "running":
        for k in (1, 2, 3):
            w.append("phase", phase=k, xi_max=0.1, cap_hits=0, bound_iterations=5, iterations=40 if k == 1 else 20,
                     target=math.nan if target is None else target[k - 1], pre_control_max=0.1)
    w.flush()
    w.set_attrs(status=status, finished="2024-01-01T00:00:00")
    return str(path)


def run_cli(argv, capsys):
    rc = tables.main([str(a) for a in argv])
    got = capsys.readouterr()
    return rc, got.out, got.err


# ------------------------------------------------------------------------------------------------
# Issue 26: tables that never drop or crash
# ------------------------------------------------------------------------------------------------
def test_symlinked_run_directories_are_followed_once_and_loops_detected(tmp_path, capsys):
    scratch, proj = tmp_path / "scratch", tmp_path / "project"
    write(scratch / "ar" / "s0" / "trace.h5", config(policies=["allreduce"] * 3, seed=0), 92.0)
    write(scratch / "ar" / "s1" / "trace.h5", config(policies=["allreduce"] * 3, seed=1), 93.0)
    write(proj / "ring" / "s0" / "trace.h5", config(seed=0), 90.0)
    os.symlink(scratch / "ar", proj / "ar")  # runs on scratch linked into the project folder
    os.symlink(scratch / "ar", proj / "ar-again")  # the same real directory twice: counted once
    os.symlink(proj, proj / "ring" / "loop")  # a loop
    rc, out, err = run_cli([proj], capsys)
    assert rc == 0, err
    ar = next(line for line in out.splitlines() if "[allreduce,allreduce,allreduce]" in line)
    assert "| 2 (0,1) | 92.50 ± 0.71 |" in ar and "duplicate" not in out, out
    assert "| 1 (0) |" in next(line for line in out.splitlines() if "[gossip,gossip,gossip]" in line)
    assert "loop" in out and "Skipped" in out  # the loop is named, not walked forever


def test_unreadable_directory_is_listed_as_skipped(tmp_path, capsys, monkeypatch):
    write(tmp_path / "ok" / "trace.h5", config(seed=0), 90.0)
    write(tmp_path / "locked" / "trace.h5", config(seed=1), 91.0)
    real = os.scandir

    def scandir(path="."):  # a directory this user may not read (root ignores chmod, so simulate it)
        if os.path.basename(os.fspath(path)) == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    rc, out, err = run_cli([tmp_path], capsys)
    assert rc == 0
    assert "Skipped" in out and "locked" in out and "Permission denied" in out, out


BAD = [{"seed": "abc"}, {"seed": None}, {"seed": [1]}, {"policies": "gossip"}, {"policies": [1, 2, 3]},
       {"target_factors": "half"}, {"n": 3.5}]


def test_a_stored_config_of_the_wrong_shape_is_skipped_and_the_rest_tabulates(tmp_path, capsys):
    for seed in (0, 1):
        write(tmp_path / f"good{seed}.h5", config(seed=seed), 90.0 + seed)
    for i, bad in enumerate(BAD):
        write(tmp_path / f"bad{i}.h5", config(**bad), 50.0)
    rc, out, err = run_cli([tmp_path], capsys)
    assert rc == 0 and "Traceback" not in err, err
    for i, bad in enumerate(BAD):
        key = next(iter(bad))
        line = next(ln for ln in out.splitlines() if f"bad{i}.h5" in ln)
        assert f"'{key}'" in line and ln_count(out, f"bad{i}.h5") == 1, out
    assert "| 2 (0,1) | 90.50 ± 0.71 |" in out
    for preset in ("table1", "table2", "lr_sweep", "large_batch"):
        rc, out, err = run_cli([tmp_path, "--preset", preset], capsys)
        assert rc == 0 and all(f"bad{i}.h5" in out for i in range(len(BAD))), (preset, err)


def ln_count(text, what):
    return sum(what in ln for ln in text.splitlines())


def test_sweep_verdict_rests_on_finished_runs_and_says_what_is_not(tmp_path, capsys):
    for lr, acc in ((0.05, 90.0), (0.1, 91.0), (0.2, 90.5)):
        write(tmp_path / f"lr{lr}.h5", config(base_lr=lr), acc)
    write(tmp_path / "lr0.2-s1.h5", config(base_lr=0.2, seed=1), 99.0, status="running")  # best if counted
    rc, out, _ = run_cli([tmp_path, "--preset", "lr_sweep"], capsys)
    assert rc == 0
    row = next(line for line in out.splitlines() if line.startswith("| digits"))
    assert row.rstrip(" |").endswith("0.1")
    note = next(line for line in out.splitlines() if "not finished" in line)
    assert "base_lr=0.2" in note and "1 unfinished" in note, out


# ------------------------------------------------------------------------------------------------
# Issue 25: untuned rates, grids that do not bracket, the alternative reference, the departures
# ------------------------------------------------------------------------------------------------
def test_untuned_rates_are_named_in_every_format_and_tuned_ones_say_nothing(tmp_path, capsys):
    for seed in (0, 1):
        write(tmp_path / f"ar{seed}.h5", config(policies=["allreduce"] * 3, seed=seed,
                                              lr_origin="tuned: lr_sweep 0123abcd"), 92.0 + seed)
        write(tmp_path / f"ring{seed}.h5", config(seed=seed, lr_origin="untuned: a guess"), 90.0 + seed)
    write(tmp_path / "old.h5", {k: v for k, v in config(seed=0, n=16).items() if k != "lr_origin"}, 91.0)
    for argv, fmt in (([], "md"), (["--preset", "table1", "--paper"], "md"), (["--preset", "table1"], "latex"),
                      (["--preset", "table1"], "csv"), (["--preset", "lr_sweep"], "csv")):
        rc, out, _ = run_cli([tmp_path, *argv, "--format", fmt], capsys)
        lines = [ln for ln in out.splitlines() if "untuned" in ln]
        assert rc == 0 and len(lines) == 1, (argv, fmt, out)
        assert "1 cell" in lines[0] and "2 runs" in lines[0], lines
        if fmt == "csv":
            assert lines[0].startswith("# ")
    for seed in (0, 1):
        os.remove(tmp_path / f"ring{seed}.h5")
    for fmt in ("md", "csv"):
        rc, out, _ = run_cli([tmp_path, "--preset", "table1", "--format", fmt], capsys)
        assert "untuned" not in out


def test_a_best_rate_at_the_grids_edge_asks_to_extend_the_grid(tmp_path, capsys):
    for lr, acc in ((0.05, 89.0), (0.1, 90.0), (0.2, 91.0)):  # best at the top of the grid
        write(tmp_path / f"ar{lr}.h5", config(policies=["allreduce"] * 3, base_lr=lr), acc)
    for lr, acc in ((0.05, 89.0), (0.1, 91.0), (0.2, 90.0)):  # bracketed
        write(tmp_path / f"ring{lr}.h5", config(base_lr=lr), acc)
    for fmt in ("md", "latex", "csv"):
        rc, out, _ = run_cli([tmp_path, "--preset", "lr_sweep", "--format", fmt], capsys)
        flagged = [ln for ln in out.splitlines() if "extend the grid" in ln]
        assert rc == 0 and len(flagged) == 1, out
        assert "allreduce" in flagged[0] and "0.2" in flagged[0] and "largest" in flagged[0]


def test_dec_phase_target_cells_give_the_all_ring_runs_alternative_reference(tmp_path, capsys):
    rng = np.random.default_rng(3)
    dec2 = dict(policies=["allreduce", "target", "allreduce"], target_factors=[1.0, 0.5, 1.0])
    ring_max = []
    for seed in (0, 1):
        xi = rng.uniform(0.01, 0.05, EPOCHS * IPE)
        xi[40:42] = 0.9  # the post-decay carry-over at the start of phase 2: left out (E = 10 % of 2 epochs)
        xi[::3] = np.nan  # unmeasured iterations
        write(tmp_path / f"ring{seed}.h5", config(seed=seed), 90.0, xi=xi)
        epoch = (np.arange(EPOCHS * IPE) + 1) / IPE
        ring_max.append(np.nanmax(np.where((epoch > 4 + 0.1 * 2) & (epoch <= 6), xi, np.nan)))
        write(tmp_path / f"dec2max{seed}.h5", config(seed=seed, policies=["allreduce", "gossip", "allreduce"]), 91.0)
        write(tmp_path / f"dec2half{seed}.h5", config(seed=seed, **dec2), 92.0, target=[math.nan, 0.02, math.nan])
    for fmt in ("md", "latex"):
        rc, out, _ = run_cli([tmp_path, "--preset", "table2", "--format", fmt], capsys)
        lines = [ln for ln in out.splitlines() if "all-ring" in ln and "n=32" in ln]
        assert rc == 0 and len(lines) == 1, out
        assert "dec-phase-2" in lines[0] and "1/2" in lines[0]
        assert f"{np.mean(ring_max):.4g}" in lines[0] and "0.04" in lines[0], lines[0]  # 0.02 / 0.5 used
        assert "E = 10 %" in out
    for seed in (0, 1):
        os.remove(tmp_path / f"ring{seed}.h5")
    rc, out, _ = run_cli([tmp_path, "--preset", "table2"], capsys)
    assert "all-ring" not in out


def test_paper_tables_end_with_the_departures_and_others_do_not(tmp_path, capsys):
    from hpc_dsgd.analysis.departures import DEPARTURES

    write(tmp_path / "ar.h5", config(policies=["allreduce"] * 3), 92.0)
    assert len(DEPARTURES) >= 8 and any("seed-004" in d for d in DEPARTURES)
    for fmt, prefix in (("md", "- "), ("latex", "%   ")):
        rc, out, _ = run_cli([tmp_path, "--preset", "table1", "--paper", "--format", fmt], capsys)
        tail = out.splitlines()[-len(DEPARTURES) - 1:]
        assert "Departures from the paper" in tail[0] and tail[1:] == [prefix + d for d in DEPARTURES], tail
        rc, out, _ = run_cli([tmp_path, "--preset", "table1", "--format", fmt], capsys)
        assert "Departures" not in out


def test_tools_tables_on_traces_imports_no_torch(tmp_path):
    write(tmp_path / "ar.h5", config(policies=["allreduce"] * 3), 92.0)
    code = ("import runpy, sys\nsys.argv = ['tools/tables.py', sys.argv[1], '--preset', 'table2']\n"
            "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as e:\n    assert not e.code\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.splitlines()[-1] == "False", out

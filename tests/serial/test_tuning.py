"""Tuned learning rates without hand editing (issue 25 items 1-2, issue 26 item 7): `campaign report SWEEP
--write-tuned` on a fabricated finished sweep writes configs/tuned_lr.toml and regenerates the configs, changing
only what rests on the tuned rates; a best rate at the grid's edge, an unfinished point and a bad learning-rate
file are refused with one line and change no file; campaign run/report say "untuned" when a run rests on an
untuned rate. Plus the campaign plans' reuse of one run across tables (item 7)."""
import json
import os
import shutil
import tomllib

import pytest

from hpc_dsgd import paper_configs as gen
from hpc_dsgd.__main__ import main
from hpc_dsgd.campaign import load_plan
from hpc_dsgd.campaign.cli import untuned_note
from hpc_dsgd.campaign.disk import classify
from hpc_dsgd.campaign.state import State
from hpc_dsgd.trace import TraceWriter
from hpc_dsgd.tuning import write_tuned

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAN = """configs = ["configs/lr_sweep/cifar10_sgd_ring_n32_*.toml"]
seeds = [100, 101]
report = "reports/sweep"
tables = []
"""


def snapshot(root):
    out = {}
    for d, _, files in os.walk(root / "configs"):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def peak_at(best):
    return lambda lr, seed: 90.0 - abs(lr - best) - 0.01 * seed


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Launch directories holding a copy of configs/, the sweep plan of [cifar10_sgd_ring] n32 (7 rates x seeds
    100, 101) and a finished trace per run (its config as the campaign resolves it): best rate 2 or 4 (the edge)."""
    out = {}
    for best in (2.0, 4.0):
        root = tmp_path_factory.mktemp(f"sweep{best:g}")
        shutil.copytree(os.path.join(ROOT, "configs"), root / "configs")
        (root / "plan.toml").write_text(PLAN)
        cwd = os.getcwd()
        os.chdir(root)
        try:
            for r in load_plan("plan.toml").runs:
                w = TraceWriter(r.trace, {"config_json": json.dumps(r.cfg, sort_keys=True), "n": 32, "total_iters": 10})
                w.append("epoch", epoch=1.0, it=10, test_acc_avg=peak_at(best)(r.cfg["base_lr"], r.seed))
                w.flush()
                w.set_attrs(status="finished", finished="2026-12-02T00:00:00")
        finally:
            os.chdir(cwd)
        out[best] = root
    return out


def tree(sweeps, best, tmp_path):
    shutil.copytree(sweeps[best], tmp_path / "t")
    return tmp_path / "t"


def run_cli(root, monkeypatch, capsys, *args):
    monkeypatch.chdir(root)
    rc = main(["campaign", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_write_tuned_writes_the_file_and_regenerates_only_what_rests_on_it(sweeps, tmp_path, monkeypatch, capsys):
    root = tree(sweeps, 2.0, tmp_path)
    before = snapshot(root)
    monkeypatch.chdir(root)  # (the CLI runs the same, then the report: its figures cost seconds, not drawn here)
    assert write_tuned(load_plan("plan.toml")) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "cifar10_sgd_ring" in out
    with open(root / "configs" / "tuned_lr.toml", "rb") as f:
        tuned = tomllib.load(f)
    sec = tuned["cifar10_sgd_ring"]
    assert sec["tuned"] is True and sec["n32"] == 2.0 and sec["n64"] == 1.0 and sec["sweep"] == "plan.toml"
    assert sec["identity"].startswith("sha256:") and sec["seeds"] == [100, 101]
    with open(os.path.join(ROOT, "configs", "tuned_lr.toml"), "rb") as f:
        shipped = tomllib.load(f)
    assert {k: v for k, v in tuned.items() if k != "cifar10_sgd_ring"} == \
        {k: v for k, v in shipped.items() if k != "cifar10_sgd_ring"}
    after = snapshot(root)
    changed = sorted(p for p in after if after[p] != before.get(p))
    assert changed == ["configs/table4/ref_sgd_n32.toml", "configs/table4/ref_sgd_n64.toml", "configs/tuned_lr.toml"]
    text = after["configs/table4/ref_sgd_n32.toml"].decode()
    assert "base_lr = 2.0\n" in text and f'lr_origin = "tuned: plan.toml {sec["identity"]}"' in text
    # the regenerated files are the generator's output from the new file, byte for byte
    again = gen.main(["--out", str(tmp_path / "again"), "--tuned", str(root / "configs" / "tuned_lr.toml")])
    for rel in again:
        assert (tmp_path / "again" / rel).read_bytes() == after[f"configs/{rel}"], rel
    # the tuned config does not say untuned; an untuned one does (campaign report and run print the line)
    (root / "t4.toml").write_text('configs = ["configs/table4/ref_sgd_n32.toml"]\ntables = []\nreport = "r"\n')
    rc, out, _ = run_cli(root, monkeypatch, capsys, "report", "t4.toml")
    assert rc == 0 and "untuned" not in out
    (root / "t4.toml").write_text('configs = ["configs/table4/ref_sgd_n32.toml", "configs/table4/allreduce_sgd_n32.toml"]'
                                  '\ntables = []\nreport = "r"\n')
    rc, out, _ = run_cli(root, monkeypatch, capsys, "report", "t4.toml")
    assert rc == 0 and [ln for ln in out.splitlines() if "untuned" in ln] == [untuned_note(load_plan("t4.toml").runs)]
    assert "1 of 2 runs rest on an untuned learning rate" in out


@pytest.mark.parametrize("case, want", [
    ("edge", "at the grid's edge: [cifar10_sgd_ring] n32 best 4"),
    ("unfinished", "1 of 14 sweep runs not finished: lr_sweep_cifar10_sgd_ring_n32_lr0.5-s101"),
    ("table_seeds", "seeds [0], which the table plans use too"),
    ("bad_file", "[cifar10] n32 = nan: need a finite positive learning rate"),
])
def test_write_tuned_refuses_with_one_line_and_changes_nothing(sweeps, tmp_path, monkeypatch, capsys, case, want):
    root = tree(sweeps, 4.0 if case == "edge" else 2.0, tmp_path)
    if case == "table_seeds":
        (root / "plan.toml").write_text(PLAN.replace("[100, 101]", "[0, 101]"))
    if case == "unfinished":
        os.remove(root / "runs" / "lr_sweep" / "lr_sweep_cifar10_sgd_ring_n32_lr0.5-s101" / "trace.h5")
    if case == "bad_file":
        p = root / "configs" / "tuned_lr.toml"
        p.write_text(p.read_text().replace("n32 = 0.1", "n32 = nan", 1))
    before = snapshot(root)
    rc, _, err = run_cli(root, monkeypatch, capsys, "report", "plan.toml", "--write-tuned")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and err.startswith("hpc_dsgd: error: "), err
    assert want in err, err
    assert snapshot(root) == before and not (root / "reports").exists()


@pytest.mark.parametrize("edit, want", [
    (("n32 = 0.1", "n32 = nan", 1), "[cifar10] n32 = nan: need a finite positive"),
    (("n32 = 0.1", "n32 = -0.1", 1), "[cifar10] n32 = -0.1: need a finite positive"),
    (("n32 = 0.1", 'n32 = "0.1"', 1), "[cifar10] n32 = '0.1': need a finite positive"),
    (("n64 = 1.0\n", "", 1), "[cifar10_sgd] n64 is missing"),
    (("[imagenet32]", "[imagenet_32]", 1), "unknown section(s) imagenet_32"),
    (("tuned = false\nn16", "tuned = 1\nn16", 1), "[cifar10] tuned = 1: need true or false"),
    (("tuned = false\nn16", "tuned = true\nn16", 1), "[cifar10] tuned = true needs sweep"),
    (("n32 = 0.1", "n32 = 0.05", 1), "below the plain-SGD grid's lowest point 0.0625"),
])
def test_generator_checks_every_entry_before_writing(tmp_path, capsys, edit, want):
    with open(os.path.join(ROOT, "configs", "tuned_lr.toml")) as f:
        text = f.read()
    assert edit[0] in text
    bad = tmp_path / "tuned.toml"
    bad.write_text(text.replace(*edit))
    out = tmp_path / "out"
    assert gen.cli(["--out", str(out), "--tuned", str(bad)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and want in err, err
    assert not out.exists()  # nothing written


def test_untuned_rate_is_in_every_generated_config_until_tuned():
    """Every table config names where its rate comes from; the shipped file is all starting guesses."""
    with open(os.path.join(ROOT, "configs", "tuned_lr.toml"), "rb") as f:
        tuned = gen.check_tuned(tomllib.load(f))
    assert not any(sec["tuned"] for sec in tuned.values())
    files = gen.Writer("", tuned)
    gen.generate(files)
    for rel, text in files.files.items():
        if not rel.startswith("lr_sweep/"):
            assert 'lr_origin = "untuned: ' in text, rel
        else:  # sweep points: their own rate, held-out samples
            assert "lr_origin" not in text and "validation_split = " in text, rel


def test_extending_a_grid_adds_runs_and_leaves_the_finished_points_alone(monkeypatch):
    """A best rate at the edge: add grid points; the old points' files (and so their runs) stay as they are."""
    with open(os.path.join(ROOT, "configs", "tuned_lr.toml"), "rb") as f:
        tuned = gen.check_tuned(tomllib.load(f))
    old = gen.Writer("", tuned)
    gen.generate(old)
    monkeypatch.setitem(gen.RECIPES["cifar10_sgd"][1], "grid", [0.03125, *gen.SGD_GRID, 8.0])
    new = gen.Writer("", tuned)
    gen.generate(new)
    added = sorted(set(new.files) - set(old.files))
    assert added == [f"lr_sweep/cifar10_sgd_n{n}_lr{v}.toml" for n in (32, 64) for v in ("0.03125", "8")]
    assert all(new.files[p] == text for p, text in old.files.items())


# -- one run, several tables (issue 25 item 7) ---------------------------------------------------------
SHARED = ("table1", "table2", "table5", "table6", "table7")


def test_plans_share_the_runs_the_paper_reuses_and_a_second_plan_finds_them_finished(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = f'out_dir="{tmp_path}"'
    plans = {p: load_plan(f"configs/campaigns/{p}.toml", [out]) for p in SHARED}
    # one plan listing a config twice (two tables' globs, another spelling) runs it once
    (tmp_path / "both.toml").write_text('configs = ["configs/table2/n32_dec1_*.toml", "./configs/table6/../table2/'
                                        'n32_dec1_xi_max.toml", "configs/table6/*.toml"]\nseeds = [0, 1]\n')
    both = load_plan(str(tmp_path / "both.toml"), [out])
    assert sorted(r.name for r in both.runs if r.name.startswith("table2_n32_dec1_xi_max")) == \
        ["table2_n32_dec1_xi_max", "table2_n32_dec1_xi_max-s1"] and len(both.runs) == 2 * (5 + 6)
    # a run directory is one config file, whichever plan lists it
    where = {}
    for plan in plans.values():
        for r in plan.runs:
            assert where.setdefault(r.run_dir, r.config) == r.config, r.run_dir
    t6 = {r.name for r in plans["table6"].runs}
    t7 = {r.name for r in plans["table7"].runs}
    assert {"table2_n32_dec1_xi_max", "table2_n32_dec1_half-s2"} <= t6 & {r.name for r in plans["table2"].runs}
    assert "table1_ring_n32-s1" in t7 & {r.name for r in plans["table1"].runs}
    assert not any(n.startswith(("table6_e150", "table7_e150_xi_max")) for n in t6 | t7)
    # one experiment (the tables' identity) is one run directory per seed across every plan
    from hpc_dsgd.analysis.runs import identity

    seen = {}
    for plan in plans.values():
        for r in plan.runs:
            key = (json.dumps(identity(r.cfg), sort_keys=True), r.cfg["seed"])
            assert seen.setdefault(key, r.run_dir) == r.run_dir, (r.name, seen[key])
    # the presets read each shared run without "ambiguous": one experiment per cell
    from hpc_dsgd.analysis.presets import PRESETS

    idents = [json.loads(k) for k in sorted({k for k, _ in seen})]
    for name in SHARED:
        pre = PRESETS[name]
        rows, cols = range(len(pre.layout.rows)), range(len(pre.layout.columns))
        cells = [[i for i in idents if pre.cell(i, r, c, {})] for r in rows for c in cols]
        cells += [[i for i in idents if f(i, r, {})] for _, f in pre.baselines for r in rows]
        assert all(len(c) <= 1 for c in cells), name
        assert sum(len(c) == 1 for c in cells) >= 3, name
    # Table 2's campaign finished the dec-phase-1 Xi_max run: Table 6's plan finds it finished, not to run again
    r2 = plans["table2"].by_name()["table2_n32_dec1_xi_max"]
    w = TraceWriter(r2.trace, {"config_json": json.dumps(r2.cfg, sort_keys=True), "n": 32, "total_iters": 10})
    w.set_attrs(status="finished")
    kinds = classify(plans["table6"], State(str(tmp_path / "campaign-table6.json")).data["runs"], None)
    assert kinds["table2_n32_dec1_xi_max"][0] == "finished"
    assert kinds["table2_n32_dec1_half"] == ("ready", "")  # its reference is there: ready, not pending

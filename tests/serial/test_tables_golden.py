"""Golden outputs of tools/tables.py: every table path (the flat table, presets table1 ... table7 with
and without --paper, large_batch, lr_sweep) in Markdown, LaTeX and CSV, with its notes (ambiguous cells, control
that did not act, runs not counted, skipped files), stderr and exit code, on fabricated traces: those of
test_analysis.py and test_large_batch.py, plus target runs whose control never bound or hit the cap. The
outputs must stay byte-identical to tests/golden/tables/*.txt.

The traces are written under a temporary directory with relative paths (the working directory is changed to
it), so the paths printed in the notes and the per-trace random columns do not depend on where it lies; the
files' mtimes are set in writing order. Regenerate the golden files (only when a change of output is meant):

    GOLDEN_UPDATE=1 python -m pytest tests/serial/test_tables_golden.py
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import zlib

import h5py
import numpy as np
import pytest

from hpc_dsgd.analysis import tables
from hpc_dsgd.config import Config
from hpc_dsgd.trace import TraceWriter

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "golden", "tables")
EPOCHS = 8
_MTIME = [1_700_000_000]


def _stamp(path) -> None:
    """Files' modification times in writing order (the newest copy of a duplicate seed counts)."""
    _MTIME[0] += 10
    os.utime(path, (_MTIME[0], _MTIME[0]))


def config(**over) -> dict:
    cfg = Config().to_dict()
    cfg.update(n=32, topology="ring", dataset="digits", epochs=float(EPOCHS), decay_fractions=[0.5, 0.75],
               policies=["gossip", "gossip", "gossip"], target_factors=[1.0, 1.0, 1.0], control_signal="xi",
               max_gossip_steps=100)
    cfg.update(over)
    return cfg


def write_trace(path, cfg: dict, final_acc: float, status: str = "finished", epochs: int = EPOCHS,
                p: float = 0.0254555, control: dict | None = None) -> str:
    """test_analysis.write_trace; `control` adds the /phase/ columns of consensus control (per phase 1..3:
    bound_iterations, cap_hits, iterations, target, pre_control_max)."""
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(f"{path}{final_acc}".encode()))
    w = TraceWriter(str(path), {"config_json": json.dumps(cfg, sort_keys=True), "n": cfg["n"],
                                "topology": cfg["topology"], "p": p, "spectral_gap": 1 - math.sqrt(1 - p),
                                "iters_per_epoch": 10, "total_iters": 10 * epochs})
    it = 0
    for e in range(epochs):
        phase = 1 + sum(e >= a * cfg["epochs"] for a in cfg["decay_fractions"])
        for _ in range(10):
            theta = 0.05 * math.exp(-it / 40) * (1 + 0.1 * rng.random())
            xi = (1.0 / p) * theta * rng.uniform(0.2, 1.0) if it % 2 == 0 else math.nan
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
            extra = {} if control is None else {c: v[k - 1] for c, v in control.items()}
            w.append("phase", phase=k, first_it=0, last_it=0, xi_max=0.1 / k, gossip_steps=10, bytes_sent=100,
                     **({"cap_hits": 0} | extra))
        w.set_attrs(status=status, finished="2024-01-01T00:00:00")
    _stamp(path)
    return str(path)


DEC1 = dict(policies=["target", "allreduce", "allreduce"])
ACC = {("ar", 0): 92.5, ("ar", 1): 92.9, ("ar", 2): 93.1,
       ("ring", 0): 91.0, ("ring", 1): 91.6, ("ring", 2): 91.2,
       ("half", 0): 92.0, ("half", 1): 92.4,
       ("d1max", 0): 91.5, ("d1max", 1): 91.9, ("d1max", 2): 91.7}
CFGS = {"ar": config(policies=["allreduce"] * 3), "ring": config(),
        "half": config(target_factors=[0.5, 1.0, 1.0], **DEC1),
        "d1max": config(policies=["gossip", "allreduce", "allreduce"])}


def analysis_runs(root: str) -> None:
    """test_analysis.runs_dir: four experiments, an unfinished seed, a duplicate, two unreadable files."""
    for (exp, seed), acc in ACC.items():
        write_trace(f"{root}/{exp}/s{seed}/trace.h5", dict(CFGS[exp], seed=seed, name=f"{exp}-s{seed}"), acc)
    write_trace(f"{root}/half/s2/trace.h5", dict(CFGS["half"], seed=2, name="half-s2"), 99.0, status="running",
                epochs=3)
    write_trace(f"{root}/ring/s1-again/trace.h5", dict(CFGS["ring"], seed=1, name="ring-s1b"), 91.6)
    bad = write_trace(f"{root}/future/trace.h5", dict(CFGS["ring"], seed=7), 50.0)
    with h5py.File(bad, "a") as f:
        f.attrs["schema_version"] = 99
    with h5py.File(f"{root}/foreign.h5", "w") as f:
        f.create_dataset("x", data=[1, 2, 3])


def control_runs(root: str) -> None:
    """Dec-phase-1 targets (Table 2's 1/2 and 1/4 Xi_max cells): one whose target never bound, one that hit
    the cap, a failed run and a stopped one; a duplicate whose value differs."""
    never = dict(bound_iterations=[0, 0, 0], cap_hits=[0, 0, 0], iterations=[40, 20, 20],
                 target=[0.0125, math.nan, math.nan], pre_control_max=[0.0101, 0.02, 0.01])
    capped = dict(bound_iterations=[35, 0, 0], cap_hits=[4, 0, 0], iterations=[40, 20, 20],
                  target=[0.003, math.nan, math.nan], pre_control_max=[0.031, 0.02, 0.01])
    for seed in (0, 1):
        write_trace(f"{root}/never/s{seed}.h5", config(target_factors=[0.5, 1.0, 1.0], seed=seed, **DEC1),
                    92.0 + 0.3 * seed, control=never)
        write_trace(f"{root}/capped/s{seed}.h5", config(target_factors=[0.25, 1.0, 1.0], seed=seed, **DEC1),
                    92.6 + 0.1 * seed, control=capped)
    write_trace(f"{root}/capped/s2.h5", config(target_factors=[0.25, 1.0, 1.0], seed=2, **DEC1), 10.0,
                status="failed", control=capped)
    write_trace(f"{root}/never/s2.h5", config(target_factors=[0.5, 1.0, 1.0], seed=2, **DEC1), 91.0,
                status="stopped", control=never)
    write_trace(f"{root}/never/s0-again.h5", config(target_factors=[0.5, 1.0, 1.0], seed=0, **DEC1), 92.05,
                control=never)
    write_trace(f"{root}/ar/s0.h5", config(policies=["allreduce"] * 3, seed=0), 92.9)


def lr_runs(root: str) -> None:
    """test_analysis.test_lr_sweep_preset_picks_the_best_mean_over_seeds."""
    acc = {0.05: (90.0, 90.4), 0.1: (91.0, 91.4), 0.2: (92.5, 89.5), 0.4: (85.0, 86.0)}
    for lr, vals in acc.items():
        for seed, a in enumerate(vals):
            write_trace(f"{root}/ar_lr{lr}_s{seed}.h5", config(policies=["allreduce"] * 3, base_lr=lr, seed=seed), a)
    write_trace(f"{root}/ring_lr0.1.h5", config(base_lr=0.1), 88.0)
    write_trace(f"{root}/ring_lr0.2.h5", config(base_lr=0.2), 89.0)


def misc_runs(root: str) -> None:
    """test_analysis's ambiguous cell, stopped seed and inapplicable-key traces."""
    for seed in (0, 1):
        write_trace(f"{root}/ambiguous/ar{seed}.h5", config(policies=["allreduce"] * 3, seed=seed), 92.0 + seed)
        write_trace(f"{root}/ambiguous/cg{seed}.h5", config(topology="complete", seed=seed), 93.0 + seed)
    for seed, status in ((3, "finished"), (5, "finished"), (8, "stopped")):
        write_trace(f"{root}/stopped/s{seed}/trace.h5", config(seed=seed), 90.0 + seed, status=status)
    write_trace(f"{root}/stopped/one/trace.h5", config(seed=7, topology="complete"), 93.0)
    mt = dict(dataset="multi30k", model="transformer", optimizer="adam", lr_schedule="inverse_sqrt",
              decay_fractions=[], policies=["gossip"], target_factors=[1.0])
    write_trace(f"{root}/keys/mt0.h5", config(seed=0, momentum=0.9, width=1.0, **mt), 30.0, epochs=2)
    write_trace(f"{root}/keys/mt1.h5", config(seed=1, momentum=0.5, width=3.0, nesterov=False, **mt), 32.0, epochs=2)
    old = config(seed=1)
    for k in ("optimizer", "adam_betas", "adam_eps", "lr_schedule", "d_model", "dropout"):
        old.pop(k)
    write_trace(f"{root}/keys/img0.h5", config(seed=0), 90.0)
    write_trace(f"{root}/keys/img1.h5", old, 92.0)


def large_batch_runs(root: str) -> None:
    """test_large_batch.test_large_batch_preset_means_and_stds."""
    os.makedirs(root, exist_ok=True)

    def write(path, batch, method, seed, acc, lam, xis, status="finished"):
        cfg = Config().to_dict()
        cfg.update(n=16, dataset="digits", batch_size=batch, seed=seed, sharpness_every=seed + 1,
                   policies=["csgd"] * 3 if method == "csgd" else ["gossip"] * 3,
                   topology="ring" if method == "csgd" else method)
        w = TraceWriter(str(path), {"config_json": json.dumps(cfg)})
        for i, x in enumerate(xis):
            w.append("iter", it=i, xi=x)
        w.append("epoch", epoch=1.0, it=len(xis) - 1, test_acc_avg=acc)
        for r, lm in ((-1, lam * 2), (0, lam * 3), (-1, lam), (0, lam * 5)):
            w.append("sharpness", epoch=1.0, it=len(xis) - 1, replica=r, lambda_max=lm)
        w.flush()
        w.set_attrs(status=status, finished="2024-01-01T00:00:00")
        _stamp(path)

    rng = np.random.default_rng(0)
    for batch in (8, 32):
        for method in ("csgd", "ring", "exponential"):
            for seed in range(3):
                acc, lam = float(rng.uniform(50, 90)), float(rng.uniform(1, 100))
                xis = [0.0] * 4 if method == "csgd" else [float(v) for v in rng.uniform(0.1, 2.0, 6)]
                write(f"{root}/b{batch}_{method}_s{seed}.h5", batch, method, seed, acc, lam, xis + [math.nan])
    write(f"{root}/b8_ring_s9.h5", 8, "ring", 9, 1.0, 1.0, [1.0], status="running")


PRESETS = ["table1", "table2", "table3", "table4", "table5", "table6", "table7"]
FORMATS = ("md", "latex", "csv")


def every_table(path: str, extra=()) -> list[list[str]]:
    """The flat table, every preset (tableN also with --paper), large_batch and lr_sweep, in every format."""
    out = []
    for fmt in FORMATS:
        f = ["--format", fmt, *extra]
        out.append([path, *f])
        for p in PRESETS:
            out += [[path, "--preset", p, *f], [path, "--preset", p, "--paper", *f]]
        out += [[path, "--preset", "large_batch", *f], [path, "--preset", "lr_sweep", *f]]
    return out


CASES = {
    "analysis": every_table("analysis") + every_table("analysis", ["--seeds", "3"]) + [
        ["analysis", "--preset", "table7", "--phase1-epochs", "4", "5", "6", "--later-epochs", "4", "--format", fmt]
        for fmt in FORMATS] + [
        ["analysis", "--preset", "table6", "--phase1-epochs", "4", "5", "6", "--later-epochs", "4", "--paper"],
        ["analysis", "--where", "dataset=digits", "--format", "csv"],
        ["analysis", "--where", "policies=[\"allreduce\",\"allreduce\",\"allreduce\"]", "--digits", "3"],
        ["analysis", "--ignore-key", "policies", "--ignore-key", "target_factors"],
        ["analysis", "--metric", "train_acc", "--preset", "table2", "--paper"],
        ["analysis/ring", "analysis/ar", "--preset", "table1"],
        ["analysis", "--paper"], ["analysis", "--preset", "lr_sweep", "--paper"], ["analysis", "--where", "oops"],
        ["nothing"]],
    "control": every_table("control") + [["control/never/s0.h5", "control/capped", "--format", fmt]
                                         for fmt in FORMATS],
    "large_batch": every_table("large_batch") + [["large_batch", "--preset", "large_batch", "--seeds", "3",
                                                  "--format", fmt] for fmt in FORMATS],
    "lr_sweep": every_table("lr_sweep") + [["lr_sweep", "--preset", "lr_sweep", "--seeds", "2", "--format", fmt]
                                           for fmt in FORMATS],
    "misc": [[d, *p, "--format", fmt] for fmt in FORMATS for d, p in (
        ("misc/ambiguous", []), ("misc/ambiguous", ["--preset", "table1", "--paper"]),
        ("misc/ambiguous", ["--preset", "table1", "--where", "topology=complete"]),
        ("misc/stopped", []), ("misc/stopped", ["--preset", "table1"]), ("misc/keys", []))]
    + [["misc/keys/mt0.h5", "misc/keys/mt1.h5"]],
}


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        analysis_runs("analysis")
        control_runs("control")
        lr_runs("lr_sweep")
        misc_runs("misc")
        large_batch_runs("large_batch")
        os.makedirs("nothing")
        with h5py.File("nothing/x.h5", "w") as f:
            f.attrs["schema_version"] = 99
        _stamp("nothing/x.h5")
    finally:
        os.chdir(cwd)
    return root


def transcript(argvs) -> str:
    """Each command line's exit code, stdout and stderr, one after the other."""
    parts = []
    for argv in argvs:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = tables.main(argv)
            except SystemExit as e:  # argparse
                rc = f"SystemExit {e.code}"
        parts.append(f"==== tables.py {' '.join(argv)}\n---- exit {rc}\n---- stdout\n{out.getvalue()}"
                     f"---- stderr\n{err.getvalue()}")
    return "".join(parts)


@pytest.mark.parametrize("name", sorted(CASES))
def test_tables_are_byte_identical_to_the_golden_files(name, traces, monkeypatch):
    monkeypatch.chdir(traces)
    got = transcript(CASES[name])
    path = os.path.join(GOLDEN, f"{name}.txt")
    if os.environ.get("GOLDEN_UPDATE") == "1":
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(got)
    with open(path, encoding="utf-8", newline="") as f:
        want = f.read()
    if got != want:
        import difflib

        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "golden", "now", n=2))
        pytest.fail(f"{name}: output differs from {path}:\n{diff[:6000]}")

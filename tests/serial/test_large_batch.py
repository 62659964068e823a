"""Claims about the large-batch study's table and configs: the `large_batch` preset of tools/tables.py
reports, per (data set, n, local batch, method), the final test accuracy, the averaged model's last
lambda_max and the mean measured Xi as mean ± sample std over the counted seeds (computed here
independently with numpy from the values written); the shipped configs land in their cells."""
import glob
import json
import math
import os

import numpy as np
import pytest

from hpc_dsgd.analysis import large_batch, tables
from hpc_dsgd.config import Config, load_config
from hpc_dsgd.trace import TraceWriter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write(path, batch, method, seed, acc, lam, xis, status="finished"):
    cfg = Config().to_dict()
    cfg.update(n=16, dataset="digits", batch_size=batch, seed=seed, sharpness_every=seed + 1,  # a measurement key
               policies=["csgd"] * 3 if method == "csgd" else ["gossip"] * 3,
               topology="ring" if method == "csgd" else method)
    w = TraceWriter(str(path), {"config_json": json.dumps(cfg)})
    for i, x in enumerate(xis):
        w.append("iter", it=i, xi=x)
    w.append("epoch", epoch=1.0, it=len(xis) - 1, test_acc_avg=acc)
    for r, lm in ((-1, lam * 2), (0, lam * 3), (-1, lam), (0, lam * 5)):  # the last averaged-model row counts
        w.append("sharpness", epoch=1.0, it=len(xis) - 1, replica=r, lambda_max=lm)
    w.flush()
    w.set_attrs(status=status, finished="2024-01-01T00:00:00")


def test_large_batch_preset_means_and_stds(tmp_path, capsys):
    rng = np.random.default_rng(0)
    want = {}
    for batch in (8, 32):
        for method in ("csgd", "ring", "exponential"):
            vals = []
            for seed in range(3):
                acc, lam = float(rng.uniform(50, 90)), float(rng.uniform(1, 100))
                xis = [0.0] * 4 if method == "csgd" else [float(v) for v in rng.uniform(0.1, 2.0, 6)]
                xis_w = xis + [math.nan]  # an unmeasured iteration
                write(tmp_path / f"b{batch}_{method}_s{seed}.h5", batch, method, seed, acc, lam, xis_w)
                vals.append((acc, lam, float(np.mean(xis))))
            want[(batch, method)] = np.array(vals)
    # an unfinished run is not counted
    write(tmp_path / "b8_ring_s9.h5", 8, "ring", 9, 1.0, 1.0, [1.0], status="running")
    assert tables.main([str(tmp_path), "--preset", "large_batch", "--format", "csv", "--seeds", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    head = lines[0].split(",")
    rows = [dict(zip(head, ln.split(","))) for ln in lines[1:]]
    assert [(r["batch_size"], r["method"]) for r in rows] == [
        ("8", "C-SGD"), ("8", "D-SGD ring"), ("8", "D-SGD exponential"),
        ("32", "C-SGD"), ("32", "D-SGD ring"), ("32", "D-SGD exponential")]
    for r in rows:
        v = want[(int(r["batch_size"]), {"C-SGD": "csgd", "D-SGD ring": "ring", "D-SGD exponential": "exponential"}[r["method"]])]
        for j, k in enumerate(("acc", "lambda_max", "xi")):
            assert float(r[f"{k}_mean"]) == pytest.approx(v[:, j].mean(), rel=1e-8, abs=1e-9)
            if r["method"] != "C-SGD" or k != "xi":
                assert float(r[f"{k}_std"]) == pytest.approx(v[:, j].std(ddof=1), rel=1e-8, abs=1e-9)
        assert r["n_seeds"] == "3" and r["seeds"] == "0 1 2"
    assert float(rows[0]["xi_mean"]) == 0.0  # C-SGD: replicas identical
    assert tables.main([str(tmp_path), "--preset", "large_batch"]) == 0
    md = capsys.readouterr().out
    assert "| digits | 16 | 32 (512) | D-SGD ring |" in md and "unfinished" in md and "b8_ring_s9.h5" in md
    assert tables.main([str(tmp_path), "--preset", "large_batch", "--paper"]) == 2
    assert capsys.readouterr().err.startswith("hpc_dsgd: error: --paper")


FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "large_batch", "*_b*_*.toml")))


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_large_batch_configs_fill_their_cells(path):
    cfg = load_config(path, ranks=4)
    stem = os.path.basename(path)[:-5]
    data, b, m = stem.split("_")
    assert cfg.n == 16 and cfg.batch_size == int(b[1:]) and cfg.sharpness_every > 0
    assert cfg.dataset == {"cifar": "cifar10", "digits": "digits"}[data]
    assert large_batch.method_of(cfg.to_dict()) == {"csgd": "C-SGD", "ring": "D-SGD ring", "exp": "D-SGD exponential"}[m]
    assert cfg.peak_lr() == pytest.approx(cfg.base_lr * 16 * cfg.batch_size / cfg.base_batch)  # linear scaling
    if data == "cifar":
        assert cfg.model == "resnet20" and cfg.width == 1.0 and cfg.batch_size in (64, 512)


def test_sweep_table_runs_every_cifar_cell_with_three_seeds():
    rows = [ln.split("\t") for ln in open(os.path.join(ROOT, "slurm", "sweep_large_batch.tsv")).read().splitlines()]
    assert rows[0] == ["config", "seed", "n", "overrides"]
    cells = {}
    for config, seed, n, over in rows[1:]:
        assert os.path.isfile(os.path.join(ROOT, config)) and n == "16" and over == "-"
        cells.setdefault(config, set()).add(int(seed))
    assert len(cells) == 6 and all(s == {0, 1, 2} for s in cells.values())

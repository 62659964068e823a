"""The CPU side of tools/gpu_check.sh (hpc_dsgd/gpucheck.py): reading the bench's JSON as the bench writes it,
the Table 2 projection against the iterations written out by hand, the time budget, the summaries. The GPU
steps themselves need a GPU (not run here)."""
import json
import math

import pytest

from hpc_dsgd import gpucheck
from hpc_dsgd.bench import main as bench_main


def test_reads_the_json_the_bench_writes(tmp_path):
    path = tmp_path / "b.json"
    assert bench_main(["--device", "cpu", "--rounds", "2", "--replicas-per-rank", "2", "--model", "small_cnn",
                       "--width", "0.25", "--batch-size", "4", "--json", str(path)]) == 0
    b = gpucheck.read_bench(str(path))
    assert set(b["ms"]) >= {"local", "theta", "allreduce", "xi"} and all(v > 0 for v in b["ms"].values())
    assert b["parts_ms"]["gossip step"] > 0 and b["n"] == 2 and b["batch_size"] == 4
    assert b["samples_per_s"]["local"] == pytest.approx(2 * 4 / (b["ms"]["local"] / 1e3), rel=1e-6)


def test_bench_plan_covers_three_workloads_two_precisions_both_determinisms():
    plan = gpucheck.bench_plan()
    names = [n for n, _ in plan]
    assert len(names) == len(set(names)) == 1 + 3 * 4 and names[0] == gpucheck.PROJECTION_BENCH
    for wl in gpucheck.WORKLOADS:
        for prec in ("tf32", "bf16"):
            for det in ("det", "fast"):
                argv = dict(plan)[f"{wl}_{prec}_{det}"]
                assert argv[argv.index("--precision") + 1] == prec and "32" == argv[argv.index("--replicas-per-rank") + 1]
                assert argv[argv.index("--deterministic") + 1] == ("true" if det == "det" else "false")


def test_projection_of_table2_from_iterations_written_out():
    """CIFAR-10, n = 32 x batch 32: 50000 // 1024 = 48 iterations per epoch, 300 epochs = 14400, decays at
    7200 and 10800. dec-phase-1: 7200 gossip/target + 7200 All-Reduce; dec-phase-2 branches after phase 1:
    3600 + 3600; dec-phase-3 after phase 2: 3600 gossip/target. Three cells each, three seeds."""
    xi, ar, step = 100.0, 50.0, 10.0  # ms
    bench = {"ms": {"xi": xi, "allreduce": ar, "theta": 80.0, "local": 60.0}, "parts_ms": {"gossip step": step}}
    got = gpucheck.project(bench, gpucheck.TABLE2)
    per_cell = {1: 7200 * xi + 7200 * ar, 2: 3600 * xi + 3600 * ar, 3: 3600 * xi}
    want = 3 * 3 * sum(per_cell.values()) / 1e3
    assert got["runs"] == 27 and got["hours"] == pytest.approx(want / 3600)
    rows = {r["config"]: r for r in got["per_config"]}
    assert rows["table2/n32_dec2_half.toml"]["iterations_per_phase"] == [0, 3600, 3600]
    assert rows["table2/n32_dec3_xi_max.toml"]["iterations_per_phase"] == [0, 0, 3600]
    # three gossip steps per controlled iteration: two extra steps in each 1/2 and 1/4 cell's target phase
    three = gpucheck.project(bench, gpucheck.TABLE2, target_steps=3.0)
    extra = 3 * 2 * 2 * step * (7200 + 3600 + 3600) / 1e3
    assert three["hours"] == pytest.approx((want + extra) / 3600)
    base = gpucheck.project(bench, gpucheck.TABLE2_BASELINES)
    assert base["runs"] == 6 and base["hours"] == pytest.approx(3 * 14400 * (ar + xi) / 1e3 / 3600)


def test_budget_failures_and_summaries(tmp_path):
    s = gpucheck.Sitting(str(tmp_path), budget_s=100.0)
    s.step("fine", lambda: {"x": 1}, 1)
    s.step("broken", lambda: 1 / 0, 1)
    s.budget = 0.0
    s.step("late", lambda: {"x": 2}, 5)
    assert s.steps["fine"]["status"] == "ok" and s.steps["fine"]["x"] == 1
    assert s.steps["broken"]["status"] == "failed" and "ZeroDivisionError" in s.steps["broken"]["error"]
    assert s.steps["late"]["status"] == "skipped" and "time budget" in s.steps["late"]["why"]
    bench = {"ms": {"xi": 100.0, "allreduce": 50.0, "theta": 80.0, "local": 60.0}, "parts_ms": {"gossip step": 10.0},
             "samples_per_s": {"local": 17066.7, "theta": 12800.0}, "samples": "images"}
    s.steps["bench:" + gpucheck.PROJECTION_BENCH] = {"status": "ok", **bench}
    s.steps["projection"] = {"status": "ok", "table2": gpucheck.project(bench, gpucheck.TABLE2),
                             "baselines": gpucheck.project(bench, gpucheck.TABLE2_BASELINES)}
    md = gpucheck.markdown({"device": "cpu", "budget_s": 100, "used_s": 1, "steps": s.steps})
    assert "| broken | failed | ZeroDivisionError" in md and "| late | skipped |" in md
    assert "17,067 images" in md and f"Table 2, n = 32: 27 runs, projected {17820 / 3600:.1f} GPU hours" in md
    json.dumps(s.steps, default=str)  # the JSON summary can hold every step


def test_without_a_gpu_it_says_so_in_both_summaries(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpucheck.main(["--out", str(tmp_path)]) == 1
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["steps"]["cuda"] == {"status": "failed", "error": "no CUDA device visible"}
    assert "no CUDA device visible" in (tmp_path / "gpu_check.md").read_text()
    assert math.isfinite(res["used_s"])

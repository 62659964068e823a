"""The benchmark command as a user runs it: `mpiexec -n 4 python -m hpc_dsgd bench ... --json FILE` on the
CPU writes, per mode, ms per iteration and images/s, and the run's description, all with the right types."""
from __future__ import annotations

import json
import math

from test_cli import launch


def test_bench_json_under_mpiexec(tmp_path):
    out = tmp_path / "bench.json"
    p, _ = launch(["bench", "--replicas-per-rank", "2", "--rounds", "1", "--width", "0.25", "--batch-size", "4",
                "--compare-loop", "--json", str(out)], ranks=4, timeout=240)
    assert p.returncode == 0, p.stderr
    j = json.loads(out.read_text())
    assert set(j["modes"]) == {"premade", "local", "gossip", "theta", "allreduce", "xi", "loop_local"}
    for m, v in j["modes"].items():
        assert set(v) == {"ms_per_iteration", "images_per_s"}
        assert all(isinstance(x, float) and math.isfinite(x) and x > 0 for x in v.values()), (m, v)
        # images/s counts every replica's batch: ranks x k x batch per iteration
        assert math.isclose(v["images_per_s"], 4 * 2 * 4 / (v["ms_per_iteration"] / 1e3), rel_tol=1e-9)
    assert j["ranks"] == 4 and j["replicas_per_rank"] == 2 and j["n"] == 8 and isinstance(j["replicas_per_rank"], int)
    assert j["exec"] == "grouped" and j["precision"] == "fp32" and j["deterministic"] is True
    assert j["device"] == "cpu" and j["cuda_aware_mpi"] is False and j["cuda_graph"] is False
    assert all(isinstance(x, float) for x in j["parts_ms"].values())
    assert "batched/loop local step" in p.stdout

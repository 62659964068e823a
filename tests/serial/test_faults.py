"""Claims about failures of whole jobs (real mpiexec, real signals, real kill -9):
- kill -9 of the whole job during a checkpoint write: the trace still opens with h5py and holds every
  flushed iteration, and `--resume auto` resumes from the previous good checkpoint and finishes;
- the requeue signal (SIGUSR1, as `#SBATCH --signal` sends it) leads to a checkpoint and exit code 75,
  and the job then resumes to the end."""
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

from hpc_dsgd.checkpoint import list_checkpoints
from hpc_dsgd.signals import REQUEUE_EXIT_CODE
from hpc_dsgd.trace import read_trace

from test_cli import MPIEXEC, QUICK, ROOT  # noqa: E402 (tests/serial is on sys.path under pytest)
from test_fault_suite import rank_pids, trace_rows  # noqa: E402

IPE = 1437 // (8 * 16)  # quickstart: 8 replicas x batch 16


def train(tmp, extra=(), env=None, ranks=4):
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "hpc_dsgd", "train", QUICK, "--set", f"out_dir={tmp}",
           "--set", "width=0.25", "--set", "epochs=4", "--set", "warmup_epochs=1", "--set", "checkpoint_minutes=0",
           "--resume", "auto", *extra]
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: a kill -9 of the job spares pytest


def test_kill_9_during_checkpoint_then_resume_auto(tmp_path):
    phase2_end = 3 * IPE  # decay at 3/4 of 4 epochs: the phase-2 checkpoint is at iteration 3 * IPE
    p = train(tmp_path, env={"HPC_DSGD_INJECT_FAULT": f"rank=0,it={phase2_end},at=checkpoint,kind=kill"})
    out, err = p.communicate(timeout=240)
    assert p.returncode != 0, out + err
    run_dir = tmp_path / "quickstart"
    assert (run_dir / "checkpoints" / f"ckpt-{phase2_end:09d}.tmp").is_dir()  # the killed, incomplete one
    assert [os.path.basename(c) for c in list_checkpoints(str(run_dir))] == [f"ckpt-{2 * IPE:09d}"]
    with h5py.File(run_dir / "trace.h5", "r") as f:  # readable after kill -9, every flushed iteration there
        its = f["iter/it"][()]
        assert f.attrs["status"] == "running"
    np.testing.assert_array_equal(its, np.arange(phase2_end))  # flushed right before the checkpoint began
    p = train(tmp_path)
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, err
    assert f"resume from {run_dir}/checkpoints/ckpt-{2 * IPE:09d}" in out
    tr = read_trace(str(run_dir / "trace.h5"))
    np.testing.assert_array_equal(tr.iter["it"], np.arange(4 * IPE))  # no duplicated or missing iteration
    assert tr.attrs["status"] == "finished"


def test_requeue_signal_checkpoints_and_exits_75(tmp_path):
    p = train(tmp_path, extra=["--set", "epochs=30"])
    trace = tmp_path / "quickstart" / "trace.h5"
    deadline = time.monotonic() + 120
    while not (trace.exists() and trace_rows(trace) >= IPE):
        assert time.monotonic() < deadline and p.poll() is None, "the run did not start"
        time.sleep(0.5)
    pids = rank_pids(str(tmp_path))
    assert len(pids) == 4
    for pid in pids:  # as srun delivers `#SBATCH --signal=USR1@...`: to every task
        os.kill(pid, signal.SIGUSR1)
    out, err = p.communicate(timeout=120)
    assert p.returncode == REQUEUE_EXIT_CODE, err
    assert "stop requested by signal SIGUSR1" in out
    ckpts = list_checkpoints(str(tmp_path / "quickstart"))
    assert ckpts
    stopped_at = int(ckpts[0].rsplit("-", 1)[1])
    tr = read_trace(str(trace))
    assert tr.attrs["status"] == "stopped"
    np.testing.assert_array_equal(tr.iter["it"], np.arange(stopped_at))
    p = train(tmp_path, extra=["--set", "epochs=30", "--set", f"max_iterations={stopped_at + 3}"])
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    np.testing.assert_array_equal(read_trace(str(trace)).iter["it"], np.arange(stopped_at + 3))

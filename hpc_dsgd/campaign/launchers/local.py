"""The local launcher: each run is `mpiexec -n R python -m hpc_dsgd train CONFIG --resume auto --set ...` (one
process for R = 1), in its own session, its output appended to RUN_DIR/campaign.log; up to --parallel at once.
An attempt's outcome is its exit code (the driver's); its error line is read from its own part of the log.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from ...signals import REQUEUE_EXIT_CODE
from ..disk import Job, attempt_error
from ..plan import CampaignError, Plan, Run
from . import Options


def mpiexec() -> str:
    return shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")


@dataclass
class _Attempt:
    run: Run
    proc: subprocess.Popen
    log: object  # the open log file
    offset: int  # where this attempt's output begins in the log


class LocalLauncher:
    name = "local"
    label = "process"
    chains = False  # a run starts once its dependencies finished
    waits = True

    def __init__(self, plan: Plan, options: Options):
        self.plan, self.ranks, self.capacity = plan, options.ranks, options.parallel
        self.attempts: dict[str, _Attempt] = {}
        self.signalled: set[int] = set()

    def check(self) -> None:
        if self.ranks > 1 and not os.path.isfile(mpiexec()):
            raise CampaignError(f"--ranks {self.ranks}: no mpiexec on PATH nor beside {sys.executable}; install an "
                                f"MPI (README, Set up) or use --ranks 1 (one process holding all n replicas)")

    def poll(self, runs_state: dict) -> dict[str, Job]:
        return {}  # a run of an earlier launcher still going holds its run lock (the driver sees it running)

    def command(self, run: Run, argv: list[str]) -> list[str]:
        cmd = [sys.executable, "-m", "hpc_dsgd", "train", argv[0], "--resume", "auto", *argv[1:]]
        return [mpiexec(), "-n", str(self.ranks), *cmd] if self.ranks > 1 else cmd

    def submit(self, run: Run, argv: list[str], after: list[str]) -> str:
        cmd = self.command(run, argv)
        os.makedirs(run.run_dir, exist_ok=True)
        log = open(run.log, "a")
        log.write(f"== hpc_dsgd campaign {self.plan.path} {time.strftime('%Y-%m-%dT%H:%M:%S')} on "
                  f"{socket.gethostname()}: {shlex.join(cmd)}\n")
        log.flush()
        offset = log.tell()
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            log.close()
            raise CampaignError(f"run {run.name}: cannot start {cmd[0]}: {e.strerror or e}") from None
        self.attempts[run.name] = _Attempt(run, proc, log, offset)
        return str(proc.pid)

    def wait(self, seconds: float) -> dict[str, Job]:
        deadline = time.monotonic() + seconds
        while True:
            ended = {}
            for name, a in list(self.attempts.items()):
                rc = a.proc.poll()
                if rc is None:
                    continue
                a.log.close()
                del self.attempts[name]
                # stopped by our SIGTERM before its handler was installed: no fault of its own, resumes
                stopped = a.proc.pid in self.signalled and rc not in (0, REQUEUE_EXIT_CODE)
                ended[name] = Job(str(a.proc.pid), False, f"exit {rc}", rc=None if stopped else rc,
                                  error=attempt_error(a.run.log, a.offset), cancelled=stopped)
            if ended or time.monotonic() >= deadline or not self.attempts:
                return ended
            time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))

    def cancel(self) -> None:
        for a in self.attempts.values():
            if a.proc.pid not in self.signalled:
                self.signalled.add(a.proc.pid)
                try:
                    os.kill(a.proc.pid, signal.SIGTERM)  # mpiexec forwards it to every rank; one process gets it
                except ProcessLookupError:
                    pass

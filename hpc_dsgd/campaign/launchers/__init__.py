"""Launchers: how a campaign's runs are started. One small interface (`Launcher`), one driver loop (driver.py).

A launcher submits a run after its dependencies (`submit`), says what became of the runs' jobs (`poll` for the
job ids in the state file, `wait` for the attempts it started), and stops what it started (`cancel`). The driver
decides everything else (order, retries, blocked runs, what an exit code means). Adding a launcher is one module
with a class like LocalLauncher plus one line in LAUNCHERS (or `register` from a test).
"""
from __future__ import annotations

import importlib
import os
import signal
import subprocess
from dataclasses import dataclass, field
from typing import Protocol

from ..disk import Job
from ..plan import CampaignError, Plan, Run

# name -> "module:Class" (imported when chosen, so that `campaign status` imports only the launcher it reads)
LAUNCHERS: dict[str, str | type] = {
    "local": "hpc_dsgd.campaign.launchers.local:LocalLauncher",
    "slurm": "hpc_dsgd.campaign.launchers.slurm:SlurmLauncher",
}


class ControllerError(CampaignError):
    """The launcher's controller did not answer, or answered what cannot be read: nothing is submitted."""


class SubmitUncertain(ControllerError):
    """A submission that may or may not have queued the run (the tool timed out or answered garbage)."""


@dataclass
class Options:
    """What the command line tells a launcher."""

    ranks: int = 1  # MPI ranks per run
    parallel: int = 1  # runs at once (local)
    sbatch_args: list[str] = field(default_factory=list)  # --sbatch-arg, after the plan's [slurm] table


class Launcher(Protocol):
    name: str  # as in `--launcher NAME` and in the state file
    label: str  # how its jobs are named in status lines ("SLURM job 101 PENDING (Priority)")
    chains: bool  # submit() takes the job ids to start after: the launcher holds the order (SLURM's afterok)
    waits: bool  # the driver stays until every run it started ended (local); else it submits and returns
    capacity: int  # runs started at once

    def check(self) -> None:
        """CampaignError (one line) if this launcher cannot run here (no mpiexec, no sbatch)."""

    def poll(self, runs_state: dict) -> dict[str, Job]:
        """Run name -> the job of its last attempt, for the job ids the state file holds. ControllerError when
        the controller does not answer: then nothing may be submitted."""

    def submit(self, run: Run, argv: list[str], after: list[str]) -> str:
        """Start (or queue) `train` for `run` with `argv` (CONFIG --set ...), after the jobs `after`; its job id.
        CampaignError: not submitted; SubmitUncertain: perhaps submitted."""

    def wait(self, seconds: float) -> dict[str, Job]:
        """Wait up to `seconds`; the attempts (started by this launcher) that ended since the last call."""

    def cancel(self) -> None:
        """Stop every attempt this launcher started, through its checkpoint (SIGTERM: exit 75)."""


def register(name: str, cls: type) -> None:
    """Add a launcher (tests, plug-ins): `campaign run --launcher NAME` then uses it."""
    LAUNCHERS[name] = cls


def get(name: str, plan: Plan, options: Options) -> Launcher:
    entry = LAUNCHERS.get(name)
    if entry is None:
        raise CampaignError(f"--launcher {name}: unknown launcher; choose one of {', '.join(LAUNCHERS)}")
    if isinstance(entry, str):
        module, cls = entry.split(":")
        entry = getattr(importlib.import_module(module), cls)
    return entry(plan, options)


def call(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of an outside tool, bounded: subprocess.TimeoutExpired after `timeout` seconds
    (its whole process group killed); a missing program is exit 127."""
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             text=True, errors="replace", start_new_session=True, env=env)
    except OSError as e:
        return 127, "", f"{cmd[0]}: {e.strerror or e}"
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.communicate()
        raise
    return p.returncode, out, err


def tool_timeout(default: float = 60.0) -> float:
    """Seconds an outside tool (sbatch, squeue, sacct) may take: HPC_DSGD_TOOL_TIMEOUT, else `default`."""
    raw = os.environ.get("HPC_DSGD_TOOL_TIMEOUT", "")
    try:
        t = float(raw) if raw else default
    except ValueError:
        raise CampaignError(f"HPC_DSGD_TOOL_TIMEOUT={raw!r}: need a number of seconds") from None
    if not t > 0:
        raise CampaignError(f"HPC_DSGD_TOOL_TIMEOUT={raw!r}: need a positive number of seconds")
    return t

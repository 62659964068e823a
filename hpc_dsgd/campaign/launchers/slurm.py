"""The SLURM launcher: one `sbatch --parsable --dependency=afterok:<ids> slurm/run.sbatch CONFIG --set ...` per run
not finished and not queued, in dependency order; job ids in the state file.

Every call to sbatch, squeue and sacct is bounded (HPC_DSGD_TOOL_TIMEOUT seconds, default 60). A job's state comes
from `squeue -t all` (queued, running, and recently ended jobs with their state), then `sacct` where accounting
answers, and from the run's own exit record (RUN_DIR/exit.json, written by run.sbatch: the run's exit code and
its last error line) where it does not. squeue failing, hanging or answering what cannot be parsed is
ControllerError: nothing is submitted, since a job id in the state file may still be queued. An sbatch that
times out or answers no job id may have queued the run: the state notes it, and the next pass looks for a job of
that name before submitting again.

Options: the plan's [slurm] table (partition, account, time, gpus_per_task, cpus_per_task, args) and
`--sbatch-arg` (repeatable, last), passed to sbatch; the job runs this interpreter (sys.executable).
"""
from __future__ import annotations

import getpass
import os
import re
import shlex
import subprocess
import sys

from ..disk import Job, read_exit_record
from ..plan import EXIT_RECORD, CampaignError, Plan, Run
from . import ControllerError, Options, SubmitUncertain, call, tool_timeout

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SBATCH_SCRIPT = os.path.join(ROOT, "slurm", "run.sbatch")
# States of a job that will not run any more (squeue -t all shows them for MinJobAge after the end; sacct always).
SLURM_ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
               "PREEMPTED", "REVOKED"}
JOB_ID = re.compile(r"^[0-9]+(_[0-9]+)?$")
STATE_WORD = re.compile(r"^[A-Z_]+$")
JOB_PREFIX = "hpc_dsgd-"


def _one(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "no output")[:300]


class SlurmLauncher:
    name = "slurm"
    label = "SLURM"
    chains = True  # afterok: SLURM starts a run when its dependencies completed
    waits = False
    capacity = 1 << 30

    def __init__(self, plan: Plan, options: Options):
        self.plan, self.ranks = plan, options.ranks
        self.sbatch_args = list(options.sbatch_args)
        self.timeout = tool_timeout()
        self.submitted: list[str] = []

    def check(self) -> None:
        if not os.path.isfile(SBATCH_SCRIPT):
            raise CampaignError(f"{SBATCH_SCRIPT} is missing: the SLURM launcher submits it")

    # -- states ----------------------------------------------------------------------------------
    def _tool(self, cmd: list[str]) -> tuple[int, str, str]:
        try:
            return call(cmd, self.timeout)
        except subprocess.TimeoutExpired:
            return -1, "", f"no answer within {self.timeout:g} s (HPC_DSGD_TOOL_TIMEOUT)"

    def squeue(self) -> dict[str, tuple[str, str, str]]:
        """Job id -> (state, reason, name) of this user's jobs, recently ended ones included; ControllerError."""
        cmd = ["squeue", "-h", "-t", "all", "-u", getpass.getuser(), "-o", "%i %T %r %j"]
        rc, out, err = self._tool(cmd)
        if rc != 0:
            raise ControllerError(f"SLURM controller not answering: `{shlex.join(cmd)}` "
                                  f"{'exited ' + str(rc) if rc > 0 else 'failed'}: {_one(err or out)}")
        jobs = {}
        for ln in out.splitlines():
            parts = ln.split(None, 3)
            if not parts:
                continue
            if len(parts) < 2 or not JOB_ID.match(parts[0]) or not STATE_WORD.match(parts[1]):
                raise ControllerError(f"SLURM controller not answering: `{shlex.join(cmd)}` answered a line that is "
                                      f"not 'JOBID STATE ...': {ln.strip()[:120]!r}")
            jobs[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "", parts[3] if len(parts) > 3 else "")
        return jobs

    def sacct(self, ids: list[str]) -> dict[str, tuple[str, int | None]]:
        """Job id -> (state, exit code) from accounting; {} where accounting does not answer (disabled: common)."""
        if not ids:
            return {}
        rc, out, _ = self._tool(["sacct", "-n", "-P", "-X", "-o", "JobID,State,ExitCode", "-j", ",".join(ids)])
        if rc != 0:
            return {}
        got = {}
        for ln in out.splitlines():
            parts = ln.strip().split("|")
            if len(parts) < 2 or not JOB_ID.match(parts[0]) or not parts[1].split() \
                    or not STATE_WORD.match(parts[1].split()[0]):
                return {}  # not what sacct says: no answer, rather than a wrong one
            code = None
            if len(parts) > 2 and re.match(r"^\d+:\d+$", parts[2]):
                code = int(parts[2].split(":")[0])
            got[parts[0]] = (parts[1].split()[0], code)
        return got

    def poll(self, runs_state: dict) -> dict[str, Job]:
        ids = {n: st["job_id"] for n, st in runs_state.items() if st.get("job_id")}
        uncertain = [n for n, st in runs_state.items() if st.get("submit_uncertain")]
        if not ids and not uncertain:
            return {}
        queue = self.squeue()
        out: dict[str, Job] = {}
        for n in uncertain:  # an sbatch that did not answer: is a job of that name queued?
            named = [j for j, (s, _, name) in queue.items() if name == JOB_PREFIX + n and s not in SLURM_ENDED]
            runs_state[n].pop("submit_uncertain", None)
            if named:
                runs_state[n]["job_id"] = ids[n] = sorted(named, key=lambda j: int(j.split("_")[0]))[-1]
        gone = [j for n, j in ids.items() if j not in queue or queue[j][0] in SLURM_ENDED]
        acct = self.sacct(gone)
        runs = self.plan.by_name()
        for n, j in ids.items():
            state, reason, _ = queue.get(j, ("", "", ""))
            if state and state not in SLURM_ENDED:
                out[n] = Job(j, True, state, reason)
                continue
            state = acct.get(j, (state, None))[0] or state
            rec = read_exit_record(runs[n]) if n in runs else None
            rec = rec if rec and rec["job_id"] == j else None
            if rec:  # the run's own exit code
                rc = rec["rc"]
            else:  # a job cancelled, timed out, killed: no exit code of the run's own (accounting's FAILED has one)
                rc = 0 if state == "COMPLETED" else acct.get(j, ("", None))[1] if state == "FAILED" else None
            error = rec["error"] if rec and rec["error"] else (
                f"SLURM job {j} {state or 'gone'}" + (f" (exit {rc})" if rc is not None else "")
                + ("" if rec or state else f": no accounting and no exit record ({EXIT_RECORD})"))
            out[n] = Job(j, False, state or "ended", reason, rc=rc, error=error,
                         cancelled=rc is None and state == "CANCELLED")
        return out

    # -- submission ------------------------------------------------------------------------------
    def options(self) -> list[str]:
        """sbatch options of the plan's [slurm] table, then --sbatch-arg."""
        s = self.plan.slurm
        out = [f"--{k}={s[k]}" for k in ("partition", "account", "time") if k in s]
        for k in ("gpus_per_task", "cpus_per_task"):
            if s.get(k):  # 0 or absent: not asked for
                out.append(f"--{k.replace('_', '-')}={s[k]}")
        return out + list(s.get("args", [])) + self.sbatch_args

    def submit(self, run: Run, argv: list[str], after: list[str]) -> str:
        cmd = ["sbatch", "--parsable", f"--job-name={JOB_PREFIX}{run.name}", f"--output={run.run_dir}/slurm-%j.out",
               "--kill-on-invalid-dep=yes", "--export=ALL"]
        if after:
            cmd.append("--dependency=afterok:" + ":".join(after))
        cmd += ["--nodes=1", f"--ntasks-per-node={self.ranks}", *self.options(), os.path.relpath(SBATCH_SCRIPT), *argv]
        os.makedirs(run.run_dir, exist_ok=True)
        env = dict(os.environ, HPC_DSGD_PYTHON=sys.executable, HPC_DSGD_RUN_DIR=run.run_dir)
        try:
            rc, out, err = call(cmd, self.timeout, env)
        except subprocess.TimeoutExpired:
            raise SubmitUncertain(f"sbatch for run {run.name} did not answer within {self.timeout:g} s "
                                  f"(HPC_DSGD_TOOL_TIMEOUT): it may have queued the job; the next `campaign run` "
                                  f"looks for a job named {JOB_PREFIX}{run.name} first") from None
        job = out.strip().split(";")[0]
        if rc != 0:
            raise CampaignError(f"sbatch for run {run.name} failed (exit {rc}): {_one(err or out)}; command: "
                                f"{shlex.join(cmd)}")
        if not JOB_ID.match(job):
            raise SubmitUncertain(f"sbatch for run {run.name} answered no job id ({_one(out + err)!r}): it may have "
                                  f"queued the job; the next `campaign run` looks for a job named "
                                  f"{JOB_PREFIX}{run.name} first")
        self.submitted.append(job)
        return job

    def log_of(self, run: Run, job: str) -> str:
        return f"{run.run_dir}/slurm-{job}.out"

    def wait(self, seconds: float) -> dict[str, Job]:
        return {}  # the driver does not wait for SLURM: the queue holds the order

    def cancel(self) -> None:
        if self.submitted:
            self._tool(["scancel", *self.submitted])

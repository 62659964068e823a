"""What a run's directory says, and what each run of a plan is now: finished, running, queued, failed, blocked ...

The facts, in this order: the trace's `status` attribute (finished, with the plan's config: done), the run lock
(held by a live owner: running; liveness is runlock.RunLock.is_stale, heartbeat age and pid), the launcher's
answer about the run's last attempt (a `Job`: still queued, or ended with an exit code), and what the state file
recorded of earlier attempts. An attempt's outcome comes from its exit code alone (0, REQUEUE_EXIT_CODE = stopped
through its checkpoint, LOCKED_EXIT_CODE = the directory was in use, anything else = failed); its error line is
only shown, never matched. Imports no torch.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..config import DEFAULTS, SAME_RUN_EXCEPT
from ..fileio import FileFormatError, read_json_bounded
from ..runlock import LOCKED_EXIT_CODE, RunLock
from ..signals import REQUEUE_EXIT_CODE
from .plan import Plan, Run, norm, phase_alias, resolve_phase_checkpoint, split_dep
from .traces import trace_progress

# Keys that may differ between a finished run and the plan without making it another run.
EXIT_RECORD_MAX_BYTES = 1 << 16
ERROR_MAX_CHARS = 500  # an error line as shown and stored


@dataclass
class Job:
    """A launcher's answer about the last attempt of a run (the job id the state file holds)."""

    id: str
    active: bool  # queued or running: it will still run (do not submit again)
    state: str = ""  # the launcher's word: PENDING, RUNNING, FAILED, CANCELLED, exited ...
    reason: str = ""  # why it waits (SLURM's pending reason)
    rc: int | None = None  # the attempt's exit code, once it ended and where it is known
    error: str = ""  # the attempt's own last error line
    cancelled: bool = False  # ended without an exit code of its own (cancelled: by its failed dependency, a user)

    def describe(self, launcher: str) -> str:
        why = f" ({self.reason})" if self.reason and self.reason not in ("None", "(null)") else ""
        return f"{launcher} job {self.id} {self.state}{why}".rstrip()


# ------------------------------------------------------------------------------------------------
# A run directory's files
# ------------------------------------------------------------------------------------------------
def saved_config(info: dict) -> dict:
    """The config a finished trace stores (its config_json), as a dict ({} if it is not one)."""
    try:
        cfg = json.loads(info["config_json"])
    except ValueError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def lock_owner(run_dir: str) -> dict | None:
    """The owner of RUN_DIR/run.lock while it is live (RunLock.is_stale: heartbeat age, pid, requeue)."""
    lock = RunLock(run_dir)
    if not os.path.isfile(lock.path):
        return None
    owner = lock.owner()
    return None if lock.is_stale(owner) else owner


def read_exit_record(r: Run) -> dict | None:
    """RUN_DIR/exit.json, the batch script's record of how its job ended: {job_id, restart, rc, error, time}, or
    None (absent, unreadable, wrong shape: then the record says nothing)."""
    try:
        rec = read_json_bounded(r.exit_record, EXIT_RECORD_MAX_BYTES, "exit record")
    except FileFormatError:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("job_id"), str) or not isinstance(rec.get("rc"), int) \
            or isinstance(rec.get("rc"), bool):
        return None
    rec["error"] = str(rec.get("error", ""))[:ERROR_MAX_CHARS]
    return rec


def config_diff(run: Run, saved: dict, resolve: bool = True) -> list[str]:
    """The keys in which a finished run's config (its trace's config_json) differs from the plan's. A branch_from
    alias RUN/checkpoints/phase-K is resolved to the checkpoint it names (the checkpoint module's resolver, which
    imports torch); resolve=False (status): it matches any checkpoint of RUN."""
    want = dict(run.cfg)
    if want.get("branch_from") and saved.get("branch_from") != want["branch_from"]:
        if resolve:
            want["branch_from"] = resolve_phase_checkpoint(want["branch_from"]) or want["branch_from"]
        elif phase_alias(want["branch_from"]) is not None and isinstance(saved.get("branch_from"), str) \
                and norm(split_dep(saved["branch_from"])[0]) == norm(split_dep(want["branch_from"])[0]):
            want["branch_from"] = saved["branch_from"]
    out = []
    for k in sorted(set(want) | set(saved)):
        if k in SAME_RUN_EXCEPT:
            continue
        a, b = saved.get(k, DEFAULTS.get(k)), want.get(k, DEFAULTS.get(k))
        if k == "branch_from" and isinstance(a, str) and isinstance(b, str) and a and b and norm(a) == norm(b):
            continue
        if a != b:
            out.append(f"{k}: finished={json.dumps(a)} plan={json.dumps(b)}")
    return out


def attempt_error(log: str, offset: int = 0) -> str:
    """The last error line of one attempt's output: the part of `log` from `offset` (where the attempt began).
    Only shown to the user: no outcome is decided from it. Lines of the launcher (srun:, mpiexec's) come last."""
    try:
        with open(log, "rb") as f:
            f.seek(max(offset, os.path.getsize(log) - (1 << 20)))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return pick_error(lines)


def pick_error(lines: list[str]) -> str:
    """hpc_dsgd's own `error:` line, else a Python exception's last line, else the last line not of the launcher."""
    own = [ln for ln in lines if not ln.startswith(("srun:", "slurmstepd:", "==", "[mpiexec", "mpiexec"))]
    for pick in (lambda ln: ln.startswith("hpc_dsgd: error"),
                 lambda ln: ln.split(":")[0].split(".")[-1].endswith(("Error", "Exception", "Interrupt")),
                 lambda ln: True):
        for ln in reversed(own or lines):
            if pick(ln):
                return ln[:ERROR_MAX_CHARS]
    return "(no output)"


# ------------------------------------------------------------------------------------------------
# An attempt's outcome, and each run's kind
# ------------------------------------------------------------------------------------------------
def outcome(job: Job, waiting_on: list[str]) -> tuple[str, str]:
    """(status, error) of an ended attempt: from its exit code only. status: stopped | elsewhere | blocked | failed.
    An attempt that ended without an exit code of its own while a dependency was not finished is blocked by it
    (SLURM cancels a dependent whose parent failed): not a failure of its own."""
    if job.rc is None and waiting_on:
        return "blocked", f"by {', '.join(waiting_on)}"
    if job.rc == 0 or job.rc == REQUEUE_EXIT_CODE or job.rc is None and job.cancelled:
        return "stopped", ""  # checkpointed on request, ended early (max_iterations) or cancelled: resumes
    if job.rc == LOCKED_EXIT_CODE:
        return "elsewhere", "its run directory was in use by another run"
    return "failed", job.error or (f"exit {job.rc}" if job.rc is not None else f"{job.state}, no exit record")


def settle(r: Run, st: dict, job: Job | None, waiting_on: list[str]) -> str | None:
    """Record the outcome of the run's ended attempt in its state entry, once per attempt (a failure is counted
    once). Returns the outcome when it was recorded now."""
    if job is None or job.active or st.get("settled") == job.id:
        return None
    status, error = outcome(job, waiting_on)
    st.update(settled=job.id, status=status, rc=job.rc, error=error)
    if status == "failed":
        st["failures"] = st.get("failures", 0) + 1
    return status


def hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s // 60 % 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def metric(info: dict | None) -> str:
    if info and "metric" in info:
        return f"{info['metric'][0]} {info['metric'][1]:.2f}"
    return "no evaluation"


def classify(plan: Plan, runs_state: dict, jobs: dict[str, Job] | None, launcher: str = "",
             unanswered: str = "") -> dict[str, tuple[str, str]]:
    """Per run (kind, detail): finished | changed | running | queued | blocked | failed | stopped | unknown |
    pending | ready. `jobs`: the launcher's answer per run name; ended attempts are settled into `runs_state`
    (the state file's runs) on the way. `unanswered`: the controller did not answer (why): a run with a job that
    is not settled is unknown."""
    out: dict[str, tuple[str, str]] = {}
    for r in plan.runs:  # dependency order: a run's dependencies are classified before it
        info, st = trace_progress(r.trace), runs_state.setdefault(r.name, {"attempts": 0, "failures": 0})
        owner = lock_owner(r.run_dir)
        job = (jobs or {}).get(r.name)
        waiting = [d for d in r.deps if out[d][0] != "finished"]
        if info and info["status"] == "finished":
            diff = config_diff(r, saved_config(info), resolve=plan.validated)
            out[r.name] = ("changed", "; ".join(diff)) if diff else ("finished", metric(info))
            continue
        if owner is not None:
            prog = ""
            if info and info.get("total"):
                prog = f"iteration {info['it']}/{info['total']}" + (
                    f", ETA {hms(info['eta'])}" if "eta" in info else "")
            where = f"pid {owner.get('pid')} on {owner.get('host')}" + (
                f", SLURM job {owner['slurm_job_id']}" if owner.get("slurm_job_id") else "")
            out[r.name] = ("running", ", ".join(x for x in (prog, where) if x))
            continue
        if job is not None and job.active:
            if job.reason == "DependencyNeverSatisfied" and waiting:
                out[r.name] = ("blocked", f"by {', '.join(waiting)} ({job.describe(launcher)})")
            else:
                out[r.name] = ("queued", job.describe(launcher))
            continue
        if unanswered and st.get("job_id") and st.get("settled") != st.get("job_id"):
            out[r.name] = ("unknown", f"{launcher} job {st['job_id']}: controller not answering ({unanswered})")
            continue
        settle(r, st, job, waiting)
        status = st.get("status")
        if status == "failed":
            log = st.get("log", r.log)
            out[r.name] = ("failed", f"{st.get('error') or 'exit ' + str(st.get('rc'))} (log {log}; "
                                     f"{st.get('failures', 0)} failure(s))")
        elif status == "blocked" and waiting:
            out[r.name] = ("blocked", f"by {', '.join(waiting)}")
        elif info is not None:
            out[r.name] = ("stopped", f"at iteration {info['it']}/{info['total']}, resumes from its checkpoint")
        else:
            out[r.name] = ("pending", f"on {', '.join(waiting)}") if waiting else ("ready", "")
    return out


def totals(kinds: dict) -> str:
    order = ("finished", "running", "queued", "stopped", "ready", "pending", "blocked", "failed", "changed", "unknown")
    c = {k: sum(1 for v, _ in kinds.values() if v == k) for k in order}
    return f"{len(kinds)} runs: " + ", ".join(f"{c[k]} {k}" for k in order if c[k])

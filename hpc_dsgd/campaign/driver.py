"""One driver loop for every launcher: what to start, when, how often; and `status`.

`run`: the state file and the launcher's answer (poll) first: if the controller does not answer, nothing is
submitted. Then every run not finished, not running, not queued and not failed more than --retries times is
submitted as soon as it may: a launcher that chains (SLURM) gets the job ids of its dependencies, the others get a
run whose dependencies finished. A launcher that waits (local) is polled until everything it started ended; an
attempt's outcome is its exit code (disk.outcome): finished, stopped (resumes), in use elsewhere, blocked by a
dependency, or failed (counted, retried). SIGINT/SIGTERM stop the runs through their checkpoint (exit 75).
"""
from __future__ import annotations

import json
import os
import signal
import time

from ..signals import REQUEUE_EXIT_CODE
from .disk import classify, hms, metric, settle, totals, trace_progress
from .launchers import ControllerError, Launcher, SubmitUncertain
from .plan import CampaignError, Plan, Run, phase_alias, resolve_phase_checkpoint
from .state import State

POLL_S = 0.2  # how often a waiting driver looks at its runs


def say(msg: str) -> None:
    print(f"hpc_dsgd: campaign: {msg}", flush=True)


def train_argv(r: Run, branch: str | None = None) -> list[str]:
    """CONFIG --set ... for `train` (the launcher adds the rest); `branch`: the concrete phase checkpoint."""
    sets = [s for s in r.sets if not (branch and s.startswith("branch_from="))]
    if branch:
        sets.append(f"branch_from={json.dumps(branch)}")
    return [r.config] + [x for s in sets for x in ("--set", s)]


def _refuse_changed(plan: Plan, kinds: dict, rerun: list[str]) -> None:
    names = plan.by_name()
    bad = [n for n in rerun if n not in names]
    if bad:
        raise CampaignError(f"--rerun {', '.join(bad)}: not a run of plan {plan.path!r} (its runs: "
                            f"{', '.join(names)})")
    changed = [f"{n} ({d})" for n, (k, d) in kinds.items() if k == "changed" and n not in rerun]
    if changed:
        raise CampaignError(f"finished run(s) whose config changed since: {'; '.join(changed)}; keep the old "
                            f"config, or rerun with --rerun NAME (the old run directory is moved aside)")


def _move_aside(plan: Plan, state: State, rerun: list[str], kinds: dict) -> None:
    for n in rerun:
        r = plan.by_name()[n]
        if kinds[n][0] in ("running", "queued"):
            raise CampaignError(f"--rerun {n}: the run is {kinds[n][0]} ({kinds[n][1]}); stop it first")
        if os.path.isdir(r.run_dir):
            aside = f"{r.run_dir}.old-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(r.run_dir, aside)
            say(f"--rerun {n}: moved {r.run_dir} to {aside}")
        state.runs[n] = {"attempts": 0, "failures": 0}
        kinds[n] = ("ready", "")


def run(plan: Plan, launcher: Launcher, retries: int, rerun: list[str]) -> int:
    launcher.check()
    state = State(plan.state_path)
    jobs = launcher.poll(state.runs)  # ControllerError: one line, nothing submitted
    kinds = classify(plan, state.runs, jobs, launcher.label)
    _refuse_changed(plan, kinds, rerun)
    _move_aside(plan, state, rerun, kinds)
    state.data.update(plan=plan.path, launcher=launcher.name)
    state.save()  # the outcomes of ended attempts, settled by classify
    names = plan.by_name()
    done = {n for n, (k, _) in kinds.items() if k == "finished"}
    active = {n: state.run(n).get("job_id", "") for n, (k, _) in kinds.items() if k in ("running", "queued")}
    failed = {n for n, (k, _) in kinds.items() if k == "failed" and state.run(n).get("failures", 0) > retries}
    elsewhere, blocked, mine = set(), set(), set()
    for n, (k, d) in kinds.items():
        if k == "finished":
            say(f"{n}: finished ({d})")
        elif k in ("running", "queued"):
            say(f"{n}: {k} ({d}), not started again")
        elif n in failed:
            say(f"{n}: failed {state.run(n)['failures']} time(s), more than --retries {retries}: left alone "
                f"(--rerun {n} tries again); {d}")
    todo = [r for r in plan.runs if r.name not in done | set(active) | failed]
    needed_by = {r.name: sum(r.name in o.deps for o in plan.runs) for r in plan.runs}  # references first
    stop = {"signal": None}

    def on_signal(signum, frame):
        if stop["signal"] is None:
            stop["signal"] = signal.Signals(signum).name
            say(f"{stop['signal']}: stopping {len(mine)} running run(s) through their checkpoint (SIGTERM); the "
                f"next `campaign run` resumes them")
        launcher.cancel()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if launcher.waits else {}
    submitted = 0
    try:
        while True:
            # who may go now: dependencies finished, or (a chaining launcher) queued with a job id
            for r in list(todo):
                if any(d in failed | blocked | elsewhere for d in r.deps):
                    todo.remove(r)
                    blocked.add(r.name)
                    bad = [d for d in r.deps if d in failed | blocked | elsewhere]
                    say(f"{r.name}: blocked by {', '.join(bad)}: left alone")
            while stop["signal"] is None and len(mine) < launcher.capacity:
                ready = [r for r in todo if all(d in done or launcher.chains and active.get(d) for d in r.deps)]
                if not ready:
                    break
                r = ready[0] if launcher.chains else max(ready, key=lambda r: needed_by[r.name])  # refs first
                todo.remove(r)
                if _submit(plan, launcher, state, r, done, active):
                    mine.add(r.name)
                    submitted += 1
                else:
                    failed.add(r.name)
            if not launcher.waits:
                break
            if not mine and (stop["signal"] or not [r for r in todo if all(d in done for d in r.deps)]):
                break
            if stop["signal"] is not None:
                launcher.cancel()  # (a run started while the signal arrived)
            for n, job in launcher.wait(POLL_S).items():
                mine.discard(n)
                active.pop(n, None)
                _ended(names[n], state, job, retries, stop["signal"], done, failed, elsewhere, todo)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    state.save()
    if not launcher.waits:
        for r in todo:
            say(f"{r.name}: not submitted, its dependency "
                f"{', '.join(d for d in r.deps if d not in done and not active.get(d))} is not queued")
        say(f"{submitted} job(s) submitted, {len(active) - submitted} already queued, {len(done)} finished, "
            f"{len(failed)} failed; state {plan.state_path}")
        return 1 if failed else 0
    kinds = classify(plan, state.runs, {}, launcher.label)
    say(totals(kinds))
    if stop["signal"] is not None:
        return REQUEUE_EXIT_CODE
    return 0 if all(k == "finished" for k, _ in kinds.values()) else 1


def _submit(plan: Plan, launcher: Launcher, state: State, r: Run, done: set, active: dict) -> bool:
    """Submit one run (False: it cannot start, said why); the state notes the attempt, or a doubtful submission."""
    branch = None
    if r.cfg.get("branch_from") and phase_alias(r.cfg["branch_from"]) is not None and all(d in done for d in r.deps):
        branch = resolve_phase_checkpoint(r.cfg["branch_from"])  # the parent finished: the concrete checkpoint
        if branch is None:  # (else train resolves the alias when it starts)
            say(f"{r.name}: {r.cfg['branch_from']} has no phase checkpoint (its run finished without it?)")
            return False
    after = [active[d] for d in r.deps if d not in done]
    st, resumes = state.run(r.name), os.path.isfile(r.trace)
    try:
        job = launcher.submit(r, train_argv(r, branch), after)
    except SubmitUncertain:
        st["submit_uncertain"] = True
        state.save()
        raise
    except CampaignError:
        state.save()
        raise
    st.update(job_id=job, status="queued" if launcher.chains else "running", attempts=st.get("attempts", 0) + 1,
              log=getattr(launcher, "log_of", lambda r, job: r.log)(r, job), config=r.config, run_dir=r.run_dir,
              submitted=time.strftime("%Y-%m-%dT%H:%M:%S"))
    st.pop("settled", None)
    active[r.name] = job
    state.save()
    waits = [f"{d}={active[d]}" for d in r.deps if d not in done]
    if launcher.chains:
        say(f"submitted {r.name}: job {job}" + (f" (after {', '.join(waits)})" if waits else ""))
    else:
        say(f"started {r.name} ({r.config}" + (f", seed {r.seed}" if r.seed is not None else "")
            + f", {plan.ranks} rank(s)" + (", resuming" if resumes else "") + f"), log {r.log}")
    return True


def _ended(r: Run, state: State, job, retries: int, stopping, done: set, failed: set, elsewhere: set,
           todo: list) -> None:
    """The outcome of an attempt this driver waited for, from its exit code; recorded, said, retried."""
    st = state.run(r.name)
    st.update(ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
    info = trace_progress(r.trace)
    wall = ""
    if st.get("submitted"):
        t0 = time.mktime(time.strptime(st["submitted"], "%Y-%m-%dT%H:%M:%S"))
        wall = f" after {hms(max(time.time() - t0, 0))}"
    if job.rc == 0 and info and info["status"] == "finished":
        st.update(status="finished", settled=job.id, rc=0)
        done.add(r.name)
        say(f"finished {r.name}{wall}: {metric(info)}")
    else:
        status = settle(r, st, job, [])
        if status == "stopped":
            say(f"stopped {r.name}{wall} (" + ("checkpointed" if job.rc is not None else "stopped during its start")
                + "; resumes next time)")
        elif status == "elsewhere":
            elsewhere.add(r.name)
            say(f"{r.name}: running in another process (exit {job.rc}: {job.error})")
        else:
            again = st["failures"] <= retries and stopping is None
            say(f"failed {r.name}{wall} (exit {job.rc}): {st['error']}; "
                + (f"retry {st['failures']} of {retries}" if again else f"log {st.get('log', r.log)}"))
            if again:
                todo.insert(0, r)
            else:
                failed.add(r.name)
    state.save()


def status(plan: Plan, launcher: Launcher | None) -> int:
    """One line per run and the totals; exit 1 when the launcher's controller does not answer."""
    state = State(plan.state_path)
    jobs, unanswered = {}, ""
    if launcher is not None:
        try:
            jobs = launcher.poll(state.runs)
        except ControllerError as e:
            unanswered = str(e)
            say(unanswered)
    kinds = classify(plan, state.runs, jobs, launcher.label if launcher else "", unanswered and "see above")
    width = max(len(r.name) for r in plan.runs)
    for r in plan.runs:
        k, d = kinds[r.name]
        print(f"{r.name:{width}s}  {k:8s}  {d}".rstrip())
    print(totals(kinds))
    return 1 if unanswered else 0

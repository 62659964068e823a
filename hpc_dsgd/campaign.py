"""Campaigns: the runs of a paper table as one dependency graph, run locally or queued on SLURM, resumable.

    python -m hpc_dsgd campaign run configs/campaigns/table2.toml [--launcher local|slurm] [--ranks R] [--parallel J]
    python -m hpc_dsgd campaign status configs/campaigns/table2.toml
    python -m hpc_dsgd campaign report configs/campaigns/table2.toml

A plan is a small TOML file, its paths relative to the launch directory (the repository root, as configs'):

    configs = ["configs/table1/ring_n32.toml", "configs/table2/*.toml"]   # files or globs (** recursive)
    seeds = [0, 1, 2]        # one run per config and seed; seed 0 keeps the config's name, seed s gets <name>-s<s>
    ranks = 1                # MPI ranks per run (--ranks wins); 1 = one process holding all n replicas
    report = "reports/table2"
    tables = ["table2"]      # optional: the presets to render (default: every preset a run of the plan fills)
    [set]                    # overrides for every run (as --set; `campaign run PLAN --set K=V` adds more)
    epochs = 300

The graph comes from the runs' own keys: `reference_trace`, every entry of `reference_traces` and
`branch_from` name a run directory (RUN_DIR/trace.h5, RUN_DIR/checkpoints/ckpt-<it>, or the alias
RUN_DIR/checkpoints/phase-K: the phase-end checkpoint of phase K). A directory that is a run of the
plan, under its config's own out_dir or the overridden one, makes an edge; each seed's instance
depends on the same seed's instance of its dependency, and the path is rewritten to where that
instance runs (so `--set out_dir=...` moves the dependencies with the runs). A dependency outside
the plan must already be finished on disk. Unknown plan keys, a glob matching nothing, a bad config,
a missing dependency, two runs with one run directory and a cycle are refused before anything starts.

State: RUN_PARENT/campaign-<plan stem>.json (the runs' common out_dir), rewritten atomically after
every event: per run its config, attempts, failures, last exit code, log, SLURM job id. The truth
about a run is on disk, though: its trace's `status` attribute (finished, with the same resolved
config: skipped), its run.lock (held by a live process: "running", never started twice), its
checkpoints (`--resume auto` continues a stopped or killed run). A finished run whose config
changed is refused, naming the keys, unless `--rerun NAME` (the old run directory is moved aside,
nothing is deleted). A failed run is started again up to --retries times (counted across
invocations; --rerun NAME resets the count).

Local launcher: each run is `mpiexec -n R python -m hpc_dsgd train CONFIG --resume auto --set ...`
(or one process for R = 1) in its own session, output appended to RUN_DIR/campaign.log; up to
--parallel runs at once, each as soon as its dependencies finished. SIGINT/SIGTERM to the launcher
become SIGTERM to every running run (mpiexec forwards it to the ranks), which checkpoint and exit 75;
the launcher then exits 75 and the next `campaign run` resumes them. SLURM launcher: one
`sbatch --parsable --dependency=afterok:<ids> slurm/run.sbatch CONFIG --set ...` per run not
finished and not queued (squeue, then sacct, say which), in dependency order, job ids in the state.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field

from .config import DEFAULTS, FIELDS, ConfigError, _read_toml, from_dict, parse_override

PLAN_KEYS = ("configs", "seeds", "set", "ranks", "report", "tables")
OTHER_TABLES = {"large_batch": "Large batch: C-SGD vs D-SGD (analysis/large_batch.py)",
                "communication": "Communication modes: accuracy, Xi, bytes vs All-Reduce (analysis/communication.py)",
                "lr_sweep": "Learning-rate sweeps, the best rate of each marked (analysis/lr_sweep.py)"}
DEP_KEYS = ("reference_trace", "reference_traces", "branch_from")
# Keys that may differ between a finished run and the plan without making it another run.
SAME_RUN_EXCEPT = ("name", "out_dir", "data_dir", "device", "torch_threads", "trace_flush_seconds",
                   "checkpoint_minutes", "keep_checkpoints")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SBATCH_SCRIPT = os.path.join(ROOT, "slurm", "run.sbatch")
SLURM_ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "PREEMPTED"}
REQUEUE_EXIT_CODE = 75  # hpc_dsgd.signals.REQUEUE_EXIT_CODE (not imported: that would not change, and costs nothing)
LOCK_REFUSAL = "is in use by another run"  # preflight.RunLock's refusal, as train prints it


class CampaignError(ValueError):
    """A plan that cannot run; the message names the plan, run or key and what would be right."""


@dataclass
class Run:
    """One run of a plan: a config file at one seed."""

    name: str
    config: str  # the config file
    seed: int | None  # None: the config's own seed (a plan without `seeds`)
    run_dir: str  # out_dir/name, as the run sees it (relative to the launch directory)
    sets: list[str]  # --set items for train: the plan's, the command line's, seed, name, rewritten dependencies
    cfg: dict  # the resolved config (Config.to_dict())
    deps: list[str] = field(default_factory=list)  # names of the plan's runs this one needs
    external: list[str] = field(default_factory=list)  # dependencies outside the plan (finished on disk)

    @property
    def trace(self) -> str:
        return os.path.join(self.run_dir, "trace.h5")

    @property
    def log(self) -> str:
        return os.path.join(self.run_dir, "campaign.log")


@dataclass
class Plan:
    path: str
    runs: list[Run]  # in dependency order (a stable topological order of the plan's order)
    seeds: list
    ranks: int
    report: str
    tables: list[str] | None
    state_path: str

    def by_name(self) -> dict[str, Run]:
        return {r.name: r for r in self.runs}


# ------------------------------------------------------------------------------------------------
# Plans and the graph
# ------------------------------------------------------------------------------------------------
def _norm(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def _toml_value(v) -> str:
    return json.dumps(v)  # JSON scalars, strings and arrays are valid TOML values (config.to_toml does the same)


def _dep_paths(raw: dict) -> list[tuple[str, int | None, str]]:
    """(key, index in reference_traces or None, path) of every non-empty dependency path of a config."""
    out = []
    for key in DEP_KEYS:
        v = raw.get(key)
        if isinstance(v, list):
            out += [(key, i, p) for i, p in enumerate(v) if isinstance(p, str) and p]
        elif isinstance(v, str) and v:
            out.append((key, None, v))
    return out


def split_dep(path: str) -> tuple[str, str]:
    """(run directory, rest): RUN/trace.h5 -> (RUN, 'trace.h5'); RUN/checkpoints/X -> (RUN, 'checkpoints/X')."""
    parts = os.path.normpath(path).split(os.sep)
    if "checkpoints" in parts[1:]:
        i = len(parts) - 1 - parts[::-1].index("checkpoints")
        return os.sep.join(parts[:i]) or ".", os.sep.join(parts[i:])
    return os.path.dirname(path) or ".", os.path.basename(path)


def phase_alias(path: str) -> int | None:
    """K of RUN/checkpoints/phase-K, else None."""
    base = os.path.basename(os.path.normpath(path))
    if base.startswith("phase-") and base[6:].isdigit() and os.path.basename(os.path.dirname(os.path.normpath(path))) \
            == "checkpoints":
        return int(base[6:])
    return None


def resolve_phase_checkpoint(path: str) -> str | None:
    """The concrete checkpoint of RUN/checkpoints/phase-K: the one whose manifest says kind phase, phase K
    (phase-end checkpoints are kept forever); the path itself if it is not an alias; None if not there."""
    k = phase_alias(path)
    if k is None:
        return path
    from .checkpoint import MANIFEST, list_checkpoints

    for ck in list_checkpoints(split_dep(path)[0]):
        try:
            with open(os.path.join(ck, MANIFEST)) as f:
                m = json.load(f)
        except (OSError, ValueError):
            continue
        if m.get("kind") == "phase" and int(m.get("phase", -1)) == k:
            return ck
    return None


def load_plan(path: str, overrides: list[str] = (), ranks: int | None = None) -> Plan:
    """Read a plan, expand its configs x seeds, resolve every run's config and the dependency graph.
    CampaignError (one line) for anything that cannot run, before anything is started."""
    if not os.path.isfile(path):
        raise CampaignError(f"plan {path!r} does not exist")
    try:
        with open(path, "rb") as f:
            plan = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise CampaignError(f"plan {path!r} is not valid TOML: {e}") from None
    unknown = sorted(set(plan) - set(PLAN_KEYS))
    if unknown:
        raise CampaignError(f"plan {path!r}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(PLAN_KEYS)}")
    patterns = plan.get("configs")
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) for p in patterns):
        raise CampaignError(f"plan {path!r}: configs = {patterns!r}: need a list of config files or globs, "
                            f"e.g. configs = [\"configs/table2/*.toml\"]")
    files: list[str] = []
    for pat in patterns:
        found = sorted(glob.glob(pat, recursive=True)) if glob.has_magic(pat) else [pat] if os.path.isfile(pat) else []
        if not found:
            raise CampaignError(f"plan {path!r}: configs entry {pat!r} matches no file (paths are relative to the "
                                f"launch directory, {os.getcwd()}: run from the repository root)")
        files += [f for f in found if f not in files]
    seeds = plan.get("seeds", [None])
    if not isinstance(seeds, list) or not seeds or not all(s is None or isinstance(s, int) and s >= 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise CampaignError(f"plan {path!r}: seeds = {seeds!r}: need a list of distinct seeds >= 0, e.g. [0, 1, 2]")
    ranks = ranks if ranks is not None else plan.get("ranks", 1)
    if not isinstance(ranks, int) or ranks < 1:
        raise CampaignError(f"ranks={ranks!r}: need a positive number of MPI ranks per run")
    sets = plan.get("set", {})
    if not isinstance(sets, dict):
        raise CampaignError(f"plan {path!r}: set must be a table of config keys ([set] epochs = 10)")
    items = [f"{k}={_toml_value(v)}" for k, v in sets.items()] + list(overrides)
    parsed = []
    for text in items:
        try:
            k, v = parse_override(text)
        except ConfigError as e:
            raise CampaignError(str(e)) from None
        if k not in FIELDS:
            raise CampaignError(f"--set {text!r}: unknown config key {k!r}; known keys: {', '.join(FIELDS)}")
        if k in ("name", "seed") or k == "branch_from" or k.startswith("reference_trace"):
            raise CampaignError(f"--set {text!r}: {k} differs per run; set it in the config files "
                                f"(seeds come from the plan's `seeds`)")
        parsed.append((k, v, text))

    # 1. every instance, with its config before dependency rewriting
    raw_of, orig_dir, runs, where = {}, {}, [], {}
    for cf in files:
        try:
            raw = _read_toml(cf)
        except ConfigError as e:
            raise CampaignError(f"plan {path!r}: {e}") from None
        raw_of[cf] = raw
        orig_dir[cf] = _norm(os.path.join(raw.get("out_dir", DEFAULTS["out_dir"]), raw.get("name", DEFAULTS["name"])))
        for s in seeds:
            data = dict(raw)
            for k, v, _ in parsed:
                data[k] = v
            base = data.get("name", DEFAULTS["name"])
            name = base if s in (None, 0) else f"{base}-s{s}"
            extra = [text for _, _, text in parsed]
            if s is not None:
                data["seed"], data["name"] = s, name
                extra += [f"seed={s}", f"name={_toml_value(name)}"]
            run_dir = os.path.join(data.get("out_dir", DEFAULTS["out_dir"]), name)
            r = Run(name, cf, s, os.path.normpath(run_dir), extra, data)
            other = where.get(_norm(run_dir))
            if other is not None:
                raise CampaignError(f"plan {path!r}: run name {name!r} twice: {other.config} and {cf} (seed "
                                    f"{s if s is not None else data.get('seed', 0)}) would both write {run_dir}; "
                                    f"give one of them another name")
            where[_norm(run_dir)] = r
            runs.append(r)
    inst = {(r.config, r.seed): r for r in runs}
    by_dir = {}  # a run directory as a config names it (its own out_dir, or the overridden one) -> config file
    for cf in files:
        by_dir.setdefault(orig_dir[cf], cf)
        first = inst[(cf, seeds[0])]
        if seeds[0] in (None, 0):
            by_dir.setdefault(_norm(first.run_dir), cf)

    # 2. dependencies: rewrite to the same seed's instance, or check that they are finished on disk
    for r in runs:
        raw = r.cfg
        for key, idx, p in _dep_paths(raw):
            d, rest = split_dep(p)
            cf = by_dir.get(_norm(d))
            if cf is not None:
                dep = inst[(cf, r.seed)]
                if dep is r:
                    raise CampaignError(f"plan {path!r}: run {r.name} ({r.config}) names itself in {key} = {p!r}")
                new = os.path.join(dep.run_dir, rest)
                if dep.name not in r.deps:
                    r.deps.append(dep.name)
                if idx is None:
                    raw[key] = new
                else:
                    raw[key] = list(raw[key])
                    raw[key][idx] = new
            else:
                why = _external_missing(p)
                if why:
                    raise CampaignError(f"plan {path!r}: run {r.name} ({r.config}) needs {key} = {p!r}, which is "
                                        f"neither a run of the plan nor finished on disk ({why}): add its config "
                                        f"to the plan's configs, or run it first")
                r.external.append(p)
        for key in DEP_KEYS:
            if key in raw and raw[key] != raw_of[r.config].get(key):
                r.sets.append(f"{key}={_toml_value(raw[key])}")
        try:
            r.cfg = from_dict(raw, ranks, check_files=False).to_dict()
        except ConfigError as e:
            raise CampaignError(f"plan {path!r}: run {r.name} ({r.config}): {e}") from None

    ordered = _toposort(path, runs)
    parents = sorted({os.path.dirname(r.run_dir) or "." for r in runs})
    try:
        common = os.path.commonpath(parents)
    except ValueError:  # absolute and relative out_dirs mixed
        common = os.path.commonpath([_norm(p) for p in parents])
    stem = os.path.splitext(os.path.basename(path))[0]
    tables = plan.get("tables")
    if tables is not None and (not isinstance(tables, list) or not all(isinstance(t, str) for t in tables)):
        raise CampaignError(f"plan {path!r}: tables = {tables!r}: need a list of preset names, e.g. [\"table2\"]")
    return Plan(path, ordered, seeds, ranks, str(plan.get("report", os.path.join("reports", stem))), tables,
                os.path.join(common or ".", f"campaign-{stem}.json"))


def _external_missing(p: str) -> str | None:
    """Why a dependency outside the plan cannot be used yet (None: it is there)."""
    d, rest = split_dep(p)
    if rest.startswith("checkpoints"):
        concrete = resolve_phase_checkpoint(p)
        return None if concrete and os.path.isdir(concrete) else f"no checkpoint {p}"
    status = trace_status(p)
    return None if status == "finished" else f"trace {p}: " + (f"status {status}" if status else "absent")


def _toposort(path: str, runs: list[Run]) -> list[Run]:
    """Kahn's algorithm, stable in the plan's order; a cycle is named."""
    names = {r.name: r for r in runs}
    indeg = {r.name: len(r.deps) for r in runs}
    users = {r.name: [] for r in runs}
    for r in runs:
        for d in r.deps:
            users[d].append(r.name)
    out, ready = [], [r.name for r in runs if not r.deps]
    while ready:
        n = ready.pop(0)
        out.append(names[n])
        for u in users[n]:
            indeg[u] -= 1
            if indeg[u] == 0:
                ready.append(u)
                ready.sort(key=lambda x: runs.index(names[x]))
    if len(out) < len(runs):
        left = [r for r in runs if indeg[r.name] > 0]
        cyc, seen, n = [], set(), left[0].name
        while n not in seen:  # follow unresolved dependencies until one repeats
            seen.add(n)
            cyc.append(n)
            n = next(d for d in names[n].deps if indeg[d] > 0)
        cyc = cyc[cyc.index(n):] + [n]
        raise CampaignError(f"plan {path!r}: dependency cycle {' -> '.join(cyc)} (through reference_trace / "
                            f"branch_from): no order can run these")
    return out


# ------------------------------------------------------------------------------------------------
# What is on disk
# ------------------------------------------------------------------------------------------------
def trace_status(path: str) -> str | None:
    """The trace's status attribute (None: no trace). Read through trace._open, which waits while the
    writer holds HDF5's file lock, so a running run's flush is never disturbed (the writer waits likewise)."""
    info = trace_progress(path)
    return info.get("status") if info else None


def trace_progress(path: str) -> dict | None:
    """status, config_json, iteration done, total_iters, ETA seconds and the last evaluation's metric, or None."""
    if not os.path.isfile(path):
        return None
    import numpy as np

    from .trace import _open

    try:
        with _open(path, "r", wait=10.0) as f:
            a = f.attrs
            out = {"status": _s(a.get("status", "unknown")), "config_json": _s(a.get("config_json", "{}")),
                   "total": int(a.get("total_iters", 0) or 0)}
            it = f["iter/it"] if "iter" in f and "it" in f["iter"] else None
            out["it"] = int(it[it.shape[0] - 1]) + 1 if it is not None and it.shape[0] else 0
            ep = f["epoch"] if "epoch" in f else {}
            for m in ("test_acc_avg", "bleu_avg"):
                if m in ep and ep[m].shape[0]:
                    col = np.asarray(ep[m][()], dtype=float)
                    col = col[np.isfinite(col)]
                    if col.size:
                        out["metric"] = (m, float(col[-1]))
                        break
            if "elapsed" in ep and "it" in ep and ep["it"].shape[0]:
                el, eit = float(ep["elapsed"][-1]), int(ep["it"][-1]) + 1
                if eit > 0 and out["total"]:
                    out["eta"] = el / eit * max(out["total"] - out["it"], 0)
    except OSError as e:
        return {"status": "unreadable", "error": str(e), "it": 0, "total": 0, "config_json": "{}"}
    return out


def _s(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def lock_owner(run_dir: str) -> dict | None:
    """The owner of RUN_DIR/run.lock if a live process holds it (preflight.RunLock's own staleness rule)."""
    from .preflight import RunLock

    lock = RunLock(run_dir)
    if not os.path.isfile(lock.path):
        return None
    owner = lock._owner()
    return None if lock._stale(owner) else owner


def config_diff(run: Run, saved: dict) -> list[str]:
    """The keys in which a finished run's config (its trace's config_json) differs from the plan's."""
    want = dict(run.cfg)
    if want.get("branch_from"):
        want["branch_from"] = resolve_phase_checkpoint(want["branch_from"]) or want["branch_from"]
    out = []
    for k in sorted(set(want) | set(saved)):
        if k in SAME_RUN_EXCEPT:
            continue
        a, b = saved.get(k, DEFAULTS.get(k)), want.get(k, DEFAULTS.get(k))
        if k == "branch_from" and a and b and _norm(a) == _norm(b):
            continue
        if a != b:
            out.append(f"{k}: finished={json.dumps(a)} plan={json.dumps(b)}")
    return out


def last_error(log: str) -> str:
    """The last line of a log that says error (a Python exception's last line, hpc_dsgd: error: ...)."""
    try:
        with open(log, errors="replace") as f:
            lines = [ln.strip() for ln in f.read().splitlines()[-200:] if ln.strip()]
    except OSError:
        return "(no log)"
    for ln in reversed(lines):
        low = ln.lower()
        if "error" in low or "exception" in low or "killed" in low or "abort" in low:
            return ln
    return lines[-1] if lines else "(empty log)"


class State:
    """The campaign's JSON state file, rewritten atomically (temporary file, fsync, rename)."""

    def __init__(self, path: str):
        self.path = path
        self.data = {"runs": {}}
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    self.data = json.load(f)
            except (OSError, ValueError):
                os.replace(path, path + ".unreadable")  # kept for a post-mortem; the disk holds the truth
        self.data.setdefault("runs", {})

    def run(self, name: str) -> dict:
        return self.data["runs"].setdefault(name, {"attempts": 0, "failures": 0})

    def save(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s // 60 % 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _metric(info: dict | None) -> str:
    if info and "metric" in info:
        return f"{info['metric'][0]} {info['metric'][1]:.2f}"
    return "no evaluation"


def classify(plan: Plan, state: State, slurm: dict | None = None) -> dict[str, tuple[str, str]]:
    """Per run (kind, detail): finished | changed | running | queued | failed | stopped | pending | ready."""
    out: dict[str, tuple[str, str]] = {}
    for r in plan.runs:
        info, st = trace_progress(r.trace), state.data["runs"].get(r.name, {})
        owner = lock_owner(r.run_dir)
        if info and info["status"] == "finished":
            diff = config_diff(r, json.loads(info["config_json"]))
            out[r.name] = ("changed", "; ".join(diff)) if diff else ("finished", _metric(info))
        elif owner is not None:
            prog = ""
            if info and info.get("total"):
                prog = f"iteration {info['it']}/{info['total']}" + (
                    f", ETA {_hms(info['eta'])}" if "eta" in info else "")
            where = f"pid {owner.get('pid')} on {owner.get('host')}" + (
                f", SLURM job {owner['slurm_job_id']}" if owner.get("slurm_job_id") else "")
            out[r.name] = ("running", ", ".join(x for x in (prog, where) if x))
        elif slurm is not None and st.get("job_id") and slurm.get(st["job_id"], "") in SLURM_ACTIVE:
            out[r.name] = ("queued", f"SLURM job {st['job_id']} {slurm[st['job_id']]}")
        elif st.get("status") == "failed":
            log = st.get("log", r.log)
            out[r.name] = ("failed", f"{last_error(log)} (log {log})")
        elif info is not None:
            out[r.name] = ("stopped", f"at iteration {info['it']}/{info['total']}, resumes from its checkpoint")
        else:
            out[r.name] = ("pending", "")
    for r in plan.runs:  # pending on which dependency
        if out[r.name][0] == "pending":
            waiting = [d for d in r.deps if out[d][0] != "finished"]
            out[r.name] = ("pending", f"on {', '.join(waiting)}") if waiting else ("ready", "")
    return out


# ------------------------------------------------------------------------------------------------
# Local launcher
# ------------------------------------------------------------------------------------------------
def _mpiexec() -> str:
    return shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")


def train_command(plan: Plan, r: Run, ranks: int, branch: str | None = None) -> list[str]:
    sets = [s for s in r.sets if not (branch and s.startswith("branch_from="))]
    if branch:
        sets.append(f"branch_from={_toml_value(branch)}")
    cmd = [sys.executable, "-m", "hpc_dsgd", "train", r.config, "--resume", "auto"]
    for s in sets:
        cmd += ["--set", s]
    return ([_mpiexec(), "-n", str(ranks)] + cmd) if ranks > 1 else cmd


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
        if kinds[n][0] == "running":
            raise CampaignError(f"--rerun {n}: the run is running ({kinds[n][1]}); stop it first")
        if os.path.isdir(r.run_dir):
            aside = f"{r.run_dir}.old-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(r.run_dir, aside)
            print(f"hpc_dsgd: campaign: --rerun {n}: moved {r.run_dir} to {aside}", flush=True)
        state.data["runs"][n] = {"attempts": 0, "failures": 0}
        kinds[n] = ("ready", "")


def run_local(plan: Plan, ranks: int, parallel: int, retries: int, rerun: list[str]) -> int:
    if ranks > 1 and not os.path.isfile(_mpiexec()):
        raise CampaignError(f"--ranks {ranks}: no mpiexec on PATH nor beside {sys.executable}; install an MPI "
                            f"(README, Set up) or use --ranks 1 (one process holding all n replicas)")
    state = State(plan.state_path)
    kinds = classify(plan, state)
    _refuse_changed(plan, kinds, rerun)
    _move_aside(plan, state, rerun, kinds)
    names = plan.by_name()
    done = {n for n, (k, _) in kinds.items() if k == "finished"}
    elsewhere = {n for n, (k, _) in kinds.items() if k == "running"}
    failed = {n for n in names if kinds[n][0] == "failed" and state.run(n)["failures"] > retries}
    todo = [r for r in plan.runs if r.name not in done | elsewhere | failed]
    for n in sorted(done):
        print(f"hpc_dsgd: campaign: {n}: finished ({kinds[n][1]}), skipped", flush=True)
    for n in sorted(elsewhere):
        print(f"hpc_dsgd: campaign: {n}: running ({kinds[n][1]}), not started again", flush=True)
    for n in sorted(failed):
        print(f"hpc_dsgd: campaign: {n}: failed {state.run(n)['failures']} time(s), more than --retries {retries}: "
              f"left alone (--rerun {n} tries again); {kinds[n][1]}", flush=True)
    state.data.update(plan=plan.path, launcher="local")
    state.save()

    stop = {"signal": None}
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    signalled: set[int] = set()

    def forward():
        for p, _, _ in list(running.values()):
            if p.pid not in signalled:
                signalled.add(p.pid)
                try:
                    os.kill(p.pid, signal.SIGTERM)  # mpiexec forwards it to every rank; one process gets it itself
                except ProcessLookupError:
                    pass

    def on_signal(signum, frame):
        if stop["signal"] is None:
            stop["signal"] = signal.Signals(signum).name
            print(f"hpc_dsgd: campaign: {stop['signal']}: stopping {len(running)} running run(s) through their "
                  f"checkpoint (SIGTERM); the next `campaign run` resumes them", flush=True)
        forward()

    needed_by = {r.name: sum(r.name in o.deps for o in plan.runs) for r in plan.runs}  # references first
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    blocked: set[str] = set()
    try:
        while True:
            for n, (p, t0, logf) in list(running.items()):
                rc = p.poll()
                if rc is None:
                    continue
                logf.close()
                del running[n]
                r, wall = names[n], time.monotonic() - t0
                st = state.run(n)
                st.update(rc=rc, wall_s=round(wall, 1), ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
                info = trace_progress(r.trace)
                if rc == 0 and info and info["status"] == "finished":
                    st["status"] = "finished"
                    done.add(n)
                    print(f"hpc_dsgd: campaign: finished {n} in {_hms(wall)}: {_metric(info)}", flush=True)
                elif rc == REQUEUE_EXIT_CODE or stop["signal"] is not None:  # (killed before its handler: no fault)
                    st["status"] = "stopped"
                    print(f"hpc_dsgd: campaign: stopped {n} after {_hms(wall)} ("
                          + ("checkpointed" if rc == REQUEUE_EXIT_CODE else f"exit {rc}, during its start")
                          + "; resumes next time)", flush=True)
                elif rc == 2 and LOCK_REFUSAL in _tail(r.log):
                    st["status"] = "running elsewhere"
                    elsewhere.add(n)
                    print(f"hpc_dsgd: campaign: {n}: running in another process ({last_error(r.log)})", flush=True)
                else:
                    st["status"], st["failures"] = "failed", st.get("failures", 0) + 1
                    again = st["failures"] <= retries and stop["signal"] is None
                    print(f"hpc_dsgd: campaign: failed {n} after {_hms(wall)} (exit {rc}): {last_error(r.log)}; "
                          + (f"retry {st['failures']} of {retries}" if again else f"log {r.log}"), flush=True)
                    if again:
                        todo.insert(0, r)
                    else:
                        failed.add(n)
                state.save()
            if stop["signal"] is not None:
                if not running:
                    break
                forward()  # a run started while the signal arrived
                time.sleep(0.2)
                continue
            # blocked: a dependency failed for good or runs elsewhere (this launcher does not wait for others)
            for r in list(todo):
                if any(d in failed | blocked | elsewhere for d in r.deps):
                    todo.remove(r)
                    blocked.add(r.name)
            ready = sorted((r for r in todo if all(d in done for d in r.deps)), key=lambda r: -needed_by[r.name])
            while ready and len(running) < parallel:
                r = ready.pop(0)
                todo.remove(r)
                branch = None
                if r.cfg.get("branch_from") and phase_alias(r.cfg["branch_from"]) is not None:
                    branch = resolve_phase_checkpoint(r.cfg["branch_from"])
                    if branch is None:
                        print(f"hpc_dsgd: campaign: {r.name}: {r.cfg['branch_from']} has no phase checkpoint "
                              f"(its run finished without it?)", flush=True)
                        failed.add(r.name)
                        continue
                cmd = train_command(plan, r, ranks, branch)
                os.makedirs(r.run_dir, exist_ok=True)
                logf = open(r.log, "a")
                logf.write(f"== hpc_dsgd campaign {plan.path} {time.strftime('%Y-%m-%dT%H:%M:%S')} on "
                           f"{socket.gethostname()}: {shlex.join(cmd)}\n")
                logf.flush()
                p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
                running[r.name] = (p, time.monotonic(), logf)
                st = state.run(r.name)
                st.update(status="running", attempts=st.get("attempts", 0) + 1, pid=p.pid, log=r.log,
                          config=r.config, run_dir=r.run_dir, started=time.strftime("%Y-%m-%dT%H:%M:%S"))
                state.save()
                resumes = os.path.isfile(r.trace)
                print(f"hpc_dsgd: campaign: started {r.name} ({r.config}"
                      + (f", seed {r.seed}" if r.seed is not None else "") + f", {ranks} rank(s)"
                      + (", resuming" if resumes else "") + f"), log {r.log}", flush=True)
            if not running and not [r for r in todo if all(d in done for d in r.deps)]:
                break
            time.sleep(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    kinds = classify(plan, state)
    counts = _totals(kinds)
    print(f"hpc_dsgd: campaign: {counts}", flush=True)
    if stop["signal"] is not None:
        return REQUEUE_EXIT_CODE
    return 0 if all(k == "finished" for k, _ in kinds.values()) else 1


def _tail(log: str, n: int = 4000) -> str:
    try:
        with open(log, errors="replace") as f:
            f.seek(max(os.path.getsize(log) - n, 0))
            return f.read()
    except OSError:
        return ""


def _totals(kinds: dict) -> str:
    order = ("finished", "running", "queued", "stopped", "ready", "pending", "failed", "changed")
    c = {k: sum(1 for v, _ in kinds.values() if v == k) for k in order}
    return f"{len(kinds)} runs: " + ", ".join(f"{c[k]} {k}" for k in order if c[k])


# ------------------------------------------------------------------------------------------------
# SLURM launcher
# ------------------------------------------------------------------------------------------------
def slurm_states(ids: list[str]) -> dict[str, str]:
    """Job id -> state: squeue for queued and running jobs, sacct for the ones squeue no longer lists."""
    ids = [i for i in ids if i]
    out: dict[str, str] = {}
    if not ids:
        return out
    if shutil.which("squeue"):
        p = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(ids)], capture_output=True, text=True)
        for ln in p.stdout.splitlines():
            parts = ln.split()
            if len(parts) >= 2:
                out[parts[0]] = parts[1].upper()
    rest = [i for i in ids if i not in out]
    if rest and shutil.which("sacct"):
        p = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(rest)],
                           capture_output=True, text=True)
        for ln in p.stdout.splitlines():
            parts = ln.split("|")
            if len(parts) >= 2 and parts[0] in rest:
                out[parts[0]] = parts[1].split()[0].upper() if parts[1].split() else "UNKNOWN"
    return out


def run_slurm(plan: Plan, ranks: int, retries: int, rerun: list[str]) -> int:
    state = State(plan.state_path)
    jobs = slurm_states([state.data["runs"].get(r.name, {}).get("job_id", "") for r in plan.runs])
    kinds = classify(plan, state, jobs)
    _refuse_changed(plan, kinds, rerun)
    _move_aside(plan, state, rerun, kinds)
    if not os.path.isfile(SBATCH_SCRIPT):
        raise CampaignError(f"{SBATCH_SCRIPT} is missing: the SLURM launcher submits it")
    state.data.update(plan=plan.path, launcher="slurm")
    active: dict[str, str] = {}  # run -> job id it waits for (queued now, or submitted in this pass)
    submitted = failed = 0
    for r in plan.runs:
        kind, detail = kinds[r.name]
        st = state.run(r.name)
        if kind == "finished":
            print(f"hpc_dsgd: campaign: {r.name}: finished ({detail})", flush=True)
            continue
        if kind in ("running", "queued"):
            if st.get("job_id"):
                active[r.name] = st["job_id"]
            print(f"hpc_dsgd: campaign: {r.name}: {kind} ({detail}), not submitted again", flush=True)
            continue
        ended = jobs.get(st.get("job_id", ""), "")
        if st.get("job_id") and ended and ended != "COMPLETED" and st.get("status") != "failed":
            st["failures"] = st.get("failures", 0) + 1  # the job ended without finishing the run (counted once)
            st["status"] = "failed"
        if st.get("failures", 0) > retries:
            failed += 1
            print(f"hpc_dsgd: campaign: {r.name}: failed {st['failures']} time(s) (last: SLURM job "
                  f"{st.get('job_id')} {ended or '?'}), more than --retries {retries}: not submitted "
                  f"(--rerun {r.name} tries again)", flush=True)
            continue
        waiting = [r2 for r2 in r.deps if kinds[r2][0] != "finished"]
        missing = [d for d in waiting if d not in active]
        if missing:
            print(f"hpc_dsgd: campaign: {r.name}: not submitted, its dependency {', '.join(missing)} is not "
                  f"queued", flush=True)
            continue
        cmd = ["sbatch", "--parsable", f"--job-name=hpc_dsgd-{r.name}", f"--output={r.run_dir}/slurm-%j.out",
               "--kill-on-invalid-dep=yes"]
        if waiting:
            cmd.append("--dependency=afterok:" + ":".join(active[d] for d in waiting))
        cmd += ["--nodes=1", f"--ntasks-per-node={ranks}"]
        sets = list(r.sets)
        if r.cfg.get("branch_from") and phase_alias(r.cfg["branch_from"]) is not None:
            concrete = resolve_phase_checkpoint(r.cfg["branch_from"])
            if concrete:  # the parent is done: the concrete path; else train resolves the alias when it starts
                sets = [s for s in sets if not s.startswith("branch_from=")] + [f"branch_from={_toml_value(concrete)}"]
        cmd += [os.path.relpath(SBATCH_SCRIPT), r.config] + [x for s in sets for x in ("--set", s)]
        os.makedirs(r.run_dir, exist_ok=True)
        p = subprocess.run(cmd, capture_output=True, text=True)
        job = p.stdout.strip().split(";")[0]
        if p.returncode != 0 or not job.isdigit():
            state.save()
            raise CampaignError(f"sbatch for run {r.name} failed (exit {p.returncode}): "
                                f"{(p.stderr or p.stdout).strip() or 'no output'}; command: {shlex.join(cmd)}")
        st.update(job_id=job, status="queued", attempts=st.get("attempts", 0) + 1, log=f"{r.run_dir}/slurm-{job}.out",
                  config=r.config, run_dir=r.run_dir, submitted=time.strftime("%Y-%m-%dT%H:%M:%S"))
        active[r.name] = job
        submitted += 1
        state.save()
        print(f"hpc_dsgd: campaign: submitted {r.name}: job {job}"
              + (f" (after {', '.join(f'{d}={active[d]}' for d in waiting)})" if waiting else ""), flush=True)
    state.save()
    print(f"hpc_dsgd: campaign: {submitted} job(s) submitted, {len(active) - submitted} already queued, "
          f"{sum(1 for k, _ in kinds.values() if k == 'finished')} finished, {failed} failed; state {plan.state_path}",
          flush=True)
    return 0 if not failed else 1


# ------------------------------------------------------------------------------------------------
# Status and report
# ------------------------------------------------------------------------------------------------
def status(plan: Plan) -> int:
    state = State(plan.state_path)
    jobs = None
    if state.data.get("launcher") == "slurm":
        jobs = slurm_states([state.data["runs"].get(r.name, {}).get("job_id", "") for r in plan.runs])
    kinds = classify(plan, state, jobs)
    width = max(len(r.name) for r in plan.runs)
    for r in plan.runs:
        k, d = kinds[r.name]
        print(f"{r.name:{width}s}  {k:8s}  {d}".rstrip())
    print(_totals(kinds))
    return 0


def _plan_presets(plan: Plan) -> list[str]:
    """The presets of tables.py that a run of the plan would fill (a cell or a baseline)."""
    from .analysis.tables import PRESETS, Group, build_preset, identity

    groups = [Group(str(i), identity(r.cfg)) for i, r in enumerate(plan.runs)]
    out = []
    for name in PRESETS:
        tab = build_preset(name, groups)
        if any(c.groups for row in tab.cells for c in row) or any(c.groups for _, cs in tab.baselines for c in cs):
            out.append(name)
    return out


def report(plan: Plan, out_dir: str | None = None) -> int:
    """Tables (Markdown, LaTeX, CSV) and figures (PNG) of the plan's runs into the report directory, with
    index.md; a run not there yet is a missing cell (tables.py counts only finished runs)."""
    from .analysis import figures
    from .analysis.tables import PRESETS, RunSet, build_preset, group_runs, load_runs, render_groups, render_preset

    out = out_dir or plan.report
    os.makedirs(out, exist_ok=True)
    have = [r for r in plan.runs if os.path.isfile(r.trace)]
    traces = [r.trace for r in have]
    runset = load_runs(traces) if traces else RunSet([], [])
    groups = group_runs(runset.runs)
    expected = len(plan.seeds)
    tables = plan.tables if plan.tables is not None else _plan_presets(plan)
    bad = [t for t in tables if t not in PRESETS and t not in OTHER_TABLES]
    if bad:
        raise CampaignError(f"plan {plan.path!r}: tables = {bad}: unknown preset; choose from "
                            f"{', '.join(list(PRESETS) + list(OTHER_TABLES))}")
    index = [f"# Report of `{plan.path}`", "",
             f"{len(traces)} of {len(plan.runs)} runs have a trace; "
             f"{sum(1 for r in runset.runs if r.finished)} finished (only finished runs count). "
             f"Written {time.strftime('%Y-%m-%d %H:%M:%S')}.", "", "## Tables", ""]
    for name in tables + ["experiments"]:
        links = []
        for fmt, ext in (("md", "md"), ("latex", "tex"), ("csv", "csv")):
            if name == "experiments":
                text = render_groups(groups, fmt, 2, expected, runset=runset)
            elif name == "large_batch":
                from .analysis import large_batch

                text = large_batch.render(large_batch.build(groups, expected), fmt, 2, runset)
            elif name == "communication":
                from .analysis import communication

                text = communication.render(communication.build(groups, expected), fmt, 2, runset)
            elif name == "lr_sweep":
                from .analysis import lr_sweep

                text = lr_sweep.render(lr_sweep.build(groups, expected), fmt, 2, "test_acc_avg", runset, groups)
            else:
                text = render_preset(build_preset(name, groups, expected), fmt, 2, paper=True, runset=runset)
            fname = f"{name}.{ext}"
            with open(os.path.join(out, fname), "w") as f:
                f.write(text + "\n")
            links.append(f"[{ext}]({fname})")
        title = PRESETS[name].layout.title if name in PRESETS else OTHER_TABLES.get(name, "Every experiment of the plan")
        index.append(f"- {title}: " + " · ".join(links))
    index += ["", "## Figures", ""]
    first = [r for r in have if r.seed == plan.seeds[0]]  # the figures show the first seed: one line per experiment
    if first:
        translation = [r.trace for r in first if r.cfg.get("dataset") == "multi30k"]
        images = [r.trace for r in first if r.cfg.get("dataset") != "multi30k"]
        figs = []
        if images:
            figs += [("consensus.png", "Consensus distance Ξ over epochs (Figure 1)", figures.fig1_consensus, images),
                     ("learning_curves.png", "Training loss, training and test accuracy (Figure 2)",
                      figures.fig2_learning_curves, images)]
        if translation:
            figs.append(("translation.png", "Multi30k: training loss, Ξ, validation perplexity (Figure 3)",
                         figures.fig3_learning_curves, translation))
        if "communication" in tables and images:
            from .analysis.communication import accuracy_vs_bytes

            figs.append(("accuracy_vs_bytes.png", "Test accuracy against bytes sent", accuracy_vs_bytes, images))
        for fname, title, fn, trs in figs:
            fn(trs, os.path.join(out, fname))
            index += [f"### {title}", "", f"![{title}]({fname})", ""]
        if len(plan.seeds) > 1:
            index.append(f"(seed {plan.seeds[0]} of each experiment; the tables average every seed)")
    else:
        index.append("No run of the first seed has a trace yet.")
    missing = [r for r in plan.runs if not os.path.isfile(r.trace)]
    if missing:
        index += ["", "## Runs without a trace", ""] + [f"- {r.name} ({r.config})" for r in missing]
    with open(os.path.join(out, "index.md"), "w") as f:
        f.write("\n".join(index) + "\n")
    print(f"hpc_dsgd: campaign: report of {len(traces)}/{len(plan.runs)} runs in {out}/index.md "
          f"({', '.join(tables + ['experiments'])}; figures)", flush=True)
    return 0


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m hpc_dsgd campaign",
                                 description="Run the dependent runs of a plan (configs x seeds) in order, locally "
                                             "or on SLURM, resumably; show their status; write the report.")
    sub = ap.add_subparsers(dest="action", required=True)
    for name, hlp in (("run", "start (or resume) every run not finished, in dependency order"),
                      ("status", "one line per run: finished, running (iteration, ETA), pending on what, failed"),
                      ("report", "tables (md, tex, csv) and figures (png) with index.md into the report directory")):
        p = sub.add_parser(name, help=hlp)
        p.add_argument("plan", help="plan TOML file (configs/campaigns/)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key of every run (TOML value syntax), repeatable")
        p.add_argument("--ranks", type=int, default=None,
                       help="MPI ranks per run (default: the plan's `ranks`, else 1: one process holding all n "
                            "replicas, the fastest on one GPU)")
        if name == "run":
            p.add_argument("--launcher", choices=("local", "slurm"), default="local")
            p.add_argument("--parallel", type=int, default=1, metavar="J",
                           help="local: J independent runs at once (CPU cores or GPUs permitting)")
            p.add_argument("--resume", choices=("auto",), default="auto",
                           help="runs always continue from their newest intact checkpoint (the only mode)")
            p.add_argument("--rerun", action="append", default=[], metavar="NAME",
                           help="run NAME again from scratch (its old directory is moved aside); repeatable")
            p.add_argument("--retries", type=int, default=2, help="start a failed run again up to N times (default 2)")
        if name == "report":
            p.add_argument("--out", default=None, help="report directory (default: the plan's `report`)")
    return ap


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "parallel", 1) < 1:
            raise CampaignError(f"--parallel {args.parallel}: need at least 1 run at a time")
        if getattr(args, "retries", 0) < 0:
            raise CampaignError(f"--retries {args.retries}: need N >= 0 (0 = a failed run is not started again)")
        plan = load_plan(args.plan, args.overrides, args.ranks)
        if args.action == "status":
            return status(plan)
        if args.action == "report":
            return report(plan, args.out)
        if args.launcher == "slurm":
            return run_slurm(plan, plan.ranks, args.retries, args.rerun)
        return run_local(plan, plan.ranks, args.parallel, args.retries, args.rerun)
    except (CampaignError, OSError) as e:
        print(f"hpc_dsgd: error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return 2

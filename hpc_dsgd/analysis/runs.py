"""Runs from traces: reading HDF5 traces, a run's identity (the config keys that name its experiment), grouping
runs into experiments with the counting rules of every table, and per-experiment statistics.

Nothing is silently averaged in (STYLE.md practice 7): only finished runs (status "finished") count;
a seed is counted once per experiment (a second run of the same seed is a duplicate, listed, and the
newest finished copy counts); unfinished ("running" left behind: still running or crashed) and failed
runs are shown in the cell ("92.10 ± 0.20 (2/3 seeds, 1 unfinished)") and listed below the table.
Std is the sample std over seeds (ddof=1); a cell with one seed shows no std ("n=1").
Traces that cannot be read (no schema_version, a newer schema, not HDF5) are listed as skipped with
the reason.

The notebook API is two DataFrames (pandas): `load_trace(path)` gives one DataFrame per trace group (iter,
epoch, phase, sharpness), each with the run's config in `df.attrs["config"]`; `load_runs(dir)` gives one row
per run with its experiment (`experiment`, a number shared by its seeds), seed, status, whether it counts
(`counted`) and why not (`note`), its identity keys and the last value of every /epoch/ column; `summarize`
gives mean, sample std and count per experiment. The tables use the same rules in list form: `read_runs` (a
RunSet of Run), `group_runs` (Groups of runs, partitioned by pandas), `Group.stats` (CellStats).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import pandas as pd

from ..config import DEFAULTS, inapplicable_keys
from ..trace import GROUPS, TraceError, parse_config, read_trace


# Config keys that do not identify an experiment: changing them cannot change a result (or they are
# per-run bookkeeping such as paths). Keys ending in one of NON_IDENTIFYING_SUFFIXES are also ignored.
NON_IDENTIFYING = frozenset({
    "seed", "name", "out_dir", "data_dir", "device", "torch_threads", "trace_flush_seconds",
    "reference", "reference_trace", "reference_traces", "reference_run", "resume", "resume_from", "branch_from",
    "sharpness_every", "sharpness_samples", "sharpness_method", "sharpness_tol", "sharpness_max_hvps",
    "sharpness_trace_probes", "sharpness_replica",  # measurements only: the trajectory is the same
    "lr_origin",  # where base_lr came from (a note): the same rate, tuned or not, is one experiment
})
NON_IDENTIFYING_SUFFIXES = ("_dir", "_path", "_file", "_trace", "_checkpoint")
# Keys shown first in a table (the paper's terms), then any other key that differs between experiments.
MAIN_KEYS = ("dataset", "model", "n", "topology", "momentum", "epochs", "policies", "target_factors")


def is_identifying(key: str, ignore: frozenset | set = frozenset()) -> bool:
    return not (key in NON_IDENTIFYING or key in ignore or key.endswith(NON_IDENTIFYING_SUFFIXES))


def identity(config: dict, ignore: frozenset | set = frozenset()) -> dict:
    """The keys that identify a run's experiment. A key its trace predates takes its default (the run behaved
    as the default, as resume and branch assume), so older and newer traces of one experiment group together;
    keys nothing reads under the rest of the config (momentum for Adam, width for the Transformer, ...:
    `config.inapplicable_keys`) are left out, so they neither label nor split an experiment."""
    full = {**DEFAULTS, **config}
    skip = inapplicable_keys(full)
    return {k: v for k, v in sorted(full.items()) if k not in skip and is_identifying(k, ignore)}



# ------------------------------------------------------------------------------------------------
# Reading runs
# ------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One trace, reduced to what the tables need."""

    path: str
    config: dict
    status: str  # finished | running (unfinished or crashed) | failed | unknown
    seed: int
    value: float  # the metric at the last evaluation; NaN if the run has none
    last_epoch: float  # epoch of the last evaluation row (NaN if none)
    stamp: str  # finished (or created) time, to pick the newest copy of a duplicate seed
    counted: bool = False  # set by group_runs: this run's value enters its experiment's mean
    note: str = ""  # set by group_runs: why it is not counted
    control: list = field(default_factory=list)  # [(kind, text)] for its target phases (control_notes)
    final: dict = field(default_factory=dict)  # the last value of every /epoch/ column (NaN where none)

    @property
    def finished(self) -> bool:
        return self.status == "finished"


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class RunSet:
    runs: list[Run]
    skipped: list[Skipped]
    root: str = "."

    def rel(self, path: str) -> str:
        try:
            return os.path.relpath(path, self.root)
        except ValueError:
            return path

    def frame(self, ignore: frozenset | set = frozenset()) -> pd.DataFrame:
        """One row per run (see `load_runs`); marks the counted runs as `group_runs` does."""
        return runs_frame(self, ignore)


def find_traces(paths) -> list[str]:
    """Every `*.h5` under the given directories (recursively), plus the given files, sorted."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames.sort()
                out.extend(os.path.join(dirpath, f) for f in filenames if f.endswith(".h5"))
        else:
            out.append(p)
    return sorted(dict.fromkeys(out))


def read_summary(path: str) -> tuple[dict, dict, dict]:
    """(attrs, /epoch/ columns, /phase/ columns) of one trace without loading /iter/ (which can be large).

    Refuses the same files as `trace.read_trace`, with its messages (TraceError naming file and field)."""
    tr = read_trace(path, groups=("epoch", "phase"))
    return tr.attrs, tr.epoch, tr.phase


def load_trace(path: str, groups=GROUPS) -> dict[str, pd.DataFrame]:
    """One DataFrame per trace group (iter, epoch, phase, sharpness; empty where the trace has none), one
    column per dataset. Each carries in `df.attrs`: "config" (the run's config), "trace_attrs" (the file's
    attributes: status, p, created, ...) and "path". Refuses what `trace.read_trace` refuses (TraceError)."""
    tr = read_trace(path, groups=tuple(groups))
    cfg = parse_config(path, tr.attrs)
    out = {}
    for g in groups:
        df = pd.DataFrame(getattr(tr, g) or {})
        df.attrs = {"config": cfg, "trace_attrs": dict(tr.attrs), "path": path}
        out[g] = df
    return out


def read_runs(paths, metric: str = "test_acc_avg") -> RunSet:
    """Read every trace under `paths` (directories are searched recursively for *.h5)."""
    files = find_traces(paths)
    runs, skipped = [], []
    for path in files:
        try:
            attrs, epoch, phase = read_summary(path)
            cfg = parse_config(path, attrs)
        except (TraceError, OSError, KeyError) as e:
            skipped.append(Skipped(path, str(e)))
            continue
        col = epoch.get(metric)
        value = float(col[-1]) if col is not None and len(col) else math.nan
        ep = epoch.get("epoch")
        last_epoch = float(ep[-1]) if ep is not None and len(ep) else math.nan
        stamp = str(attrs.get("finished") or attrs.get("created") or "")
        final = {k: float(v[-1]) if len(v) else math.nan for k, v in epoch.items()}
        runs.append(Run(path=path, config=cfg, status=str(attrs.get("status", "unknown")),
                        seed=int(cfg.get("seed", 0)), value=value, last_epoch=last_epoch,
                        stamp=f"{stamp}|{os.path.getmtime(path):020.6f}", control=control_notes(cfg, phase),
                        final=final))
    root = os.fspath(paths) if isinstance(paths, (str, os.PathLike)) and os.path.isdir(paths) else "."
    return RunSet(runs, skipped, root)


NEVER_BOUND, CAP_HIT = "target never bound", "cap hit"


def control_notes(cfg: dict, phase: dict) -> list[tuple[str, str]]:
    """Did each target phase's control act? From the trace's /phase/ rows (bound_iterations: iterations in
    which the target made gossip more than once; cap_hits). A target that never bound left the run plain
    D-SGD in that phase: its cell equals the Xi_max cell, and the tables say so. Traces that predate the
    bound_iterations column say nothing here."""
    out = []
    pols = cfg.get("policies") or []
    if "bound_iterations" not in phase or "phase" not in phase:
        return out
    for j, k in enumerate(phase["phase"]):
        k = int(k)
        if not (1 <= k <= len(pols)) or pols[k - 1] != "target":
            continue
        bound, caps = int(phase["bound_iterations"][j]), int(phase.get("cap_hits", [0] * (j + 1))[j])
        its = int(phase["iterations"][j]) if "iterations" in phase else -1
        pre, tgt = float(phase.get("pre_control_max", [math.nan] * (j + 1))[j]), float(phase["target"][j]) \
            if "target" in phase else math.nan
        if bound == 0:
            out.append((NEVER_BOUND, f"phase {k}: {NEVER_BOUND} (same as Ξ_max): one gossip step always met the "
                                     f"target {tgt:.4g} (largest distance it left {pre:.4g}, {its} iterations)"))
        if caps:
            out.append((CAP_HIT, f"phase {k}: {CAP_HIT} in {caps} of {its} iterations (max_gossip_steps="
                                 f"{cfg.get('max_gossip_steps', DEFAULTS['max_gossip_steps'])}): the target was not met there"))
    return out


# ------------------------------------------------------------------------------------------------
# Grouping and statistics
# ------------------------------------------------------------------------------------------------
@dataclass
class CellStats:
    """Mean +- sample std over the counted seeds of one experiment, with what was not counted."""

    values: list[float]
    seeds: list[int]  # counted seeds, in order
    expected: int  # seeds asked for (--seeds), else every seed seen in the experiment
    unfinished: int = 0  # seeds with no finished run, newest copy still "running" (or crashed)
    failed: int = 0  # seeds with no finished run, newest copy "failed" (or an unknown status)
    stopped: int = 0  # seeds with no finished run, newest copy "stopped" (max_iterations or a signal): not a failure
    duplicates: int = 0  # extra runs of an already-present seed
    no_metric: int = 0  # finished runs without the metric (no evaluation row)
    control: tuple = ()  # NEVER_BOUND / CAP_HIT when a counted run's control did not act as asked

    @property
    def count(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(pd.Series(self.values, dtype="float64").mean()) if self.values else math.nan

    @property
    def std(self) -> float:
        return float(pd.Series(self.values, dtype="float64").std(ddof=1)) if len(self.values) >= 2 else math.nan

    def annotations(self) -> list[str]:
        notes = []
        if self.count < self.expected:
            notes.append(f"{self.count}/{self.expected} seeds")
        elif self.count > self.expected:
            notes.append(f"{self.count} seeds, {self.expected} asked")
        elif self.count == 1:
            notes.append("n=1")
        for k, what in ((self.unfinished, "unfinished"), (self.stopped, "stopped"), (self.failed, "failed"),
                        (self.no_metric, "without metric"), (self.duplicates, "duplicate")):
            if k:
                notes.append(f"{k} {what}" + ("s" if what == "duplicate" and k > 1 else ""))
        return notes + list(self.control)

    def text(self, digits: int = 2, fmt: str = "md") -> str:
        """'92.10 ± 0.20', '92.10 (n=1)', '92.10 ± 0.20 (2/3 seeds, 1 unfinished)', or '—'."""
        tex = fmt == "latex"
        pm = r" \pm " if tex else " ± "
        if self.count >= 2:
            core = f"{self.mean:.{digits}f}{pm}{self.std:.{digits}f}"
        elif self.count == 1:
            core = f"{self.mean:.{digits}f}"
        else:
            core = None
        notes = self.annotations()
        if core is None and not (self.unfinished or self.stopped or self.failed or self.no_metric):
            return EMPTY[fmt]
        if tex:
            core = f"${core}$" if core else EMPTY[fmt]
            return core + (r" {\footnotesize (" + ", ".join(notes) + ")}" if notes else "")
        return (core or EMPTY[fmt]) + (f" ({', '.join(notes)})" if notes else "")


EMPTY = {"md": "—", "latex": "---", "csv": ""}


def seeds_cell(seeds: list[int], fmt: str) -> str:
    """How many seeds count and which: '3 (0,1,2)', '1 (7)'; never a bare seed that reads like a count."""
    return f"{len(seeds)} ({','.join(map(str, seeds))})" if seeds else EMPTY[fmt]


@dataclass
class Group:
    """One experiment: its identifying config and every run of it."""

    key: str
    ident: dict
    runs: list[Run] = field(default_factory=list)

    def stats(self, expected: int | None = None) -> CellStats:
        by_seed: dict[int, list[Run]] = {}
        for r in self.runs:
            by_seed.setdefault(r.seed, []).append(r)
        counted = [r for r in self.runs if r.counted]
        counted.sort(key=lambda r: r.seed)
        st = CellStats(values=[r.value for r in counted], seeds=[r.seed for r in counted],
                       expected=expected if expected is not None else len(by_seed),
                       control=tuple(k for k in (NEVER_BOUND, CAP_HIT) if any(k == c[0] for r in counted
                                                                             for c in r.control)))
        for seed, rs in by_seed.items():
            st.duplicates += len(rs) - 1
            if any(r.counted for r in rs):
                continue
            if any(r.finished for r in rs):
                st.no_metric += 1
                continue
            newest = max(rs, key=lambda r: r.stamp)
            if newest.status == "running":
                st.unfinished += 1
            elif newest.status == "stopped":
                st.stopped += 1
            else:
                st.failed += 1
        return st

    def label(self, keys=None) -> str:
        keys = keys or [k for k in MAIN_KEYS if k in self.ident]
        return ", ".join(f"{k}={fmt_value(self.ident.get(k))}" for k in keys)


def fmt_value(v) -> str:
    if isinstance(v, list):
        return "[" + ",".join(fmt_value(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:g}"
    return "" if v is None else str(v)


def group_runs(runs: list[Run], ignore=frozenset()) -> list[Group]:
    """Group runs by identifying config; mark per seed the one run that counts (newest finished copy
    with the metric) and say of every other run why it does not count."""
    idents = [identity(r.config, ignore) for r in runs]
    df = pd.DataFrame({"key": [json.dumps(i, sort_keys=True) for i in idents], "seed": [r.seed for r in runs]},
                      index=pd.RangeIndex(len(runs)))
    groups: dict[str, Group] = {}
    for key, sub in df.groupby("key", sort=False):
        g = groups[key] = Group(key, idents[sub.index[0]], [runs[i] for i in sub.index])
        for seed, by_seed in sub.groupby("seed", sort=False):
            rs = [runs[i] for i in by_seed.index]
            ok = [r for r in rs if r.finished and not math.isnan(r.value)]
            best = max(ok, key=lambda r: r.stamp) if ok else None
            for r in rs:
                r.counted = r is best
                if r.counted:
                    continue
                if best is not None:
                    r.note = f"duplicate of seed {seed} ({r.status}); the newest finished copy counts"
                    if r.finished and not math.isnan(r.value) and r.value != best.value:
                        r.note += f" (values differ: {r.value:g} here, {best.value:g} counted)"
                elif len(rs) > 1 and r is not max(rs, key=lambda q: q.stamp):
                    r.note = f"duplicate of seed {seed} ({r.status}); no copy finished"
                elif r.finished:
                    r.note = "finished but has no value of the metric (no evaluation row)"
                elif r.status == "running":
                    r.note = f"unfinished (status 'running': still running or crashed; last evaluation " \
                             f"at epoch {r.last_epoch:g} of {fmt_value(r.config.get('epochs'))})"
                elif r.status == "stopped":
                    r.note = f"stopped (max_iterations or a signal; resume it to finish) after epoch " \
                             f"{r.last_epoch:g} of {fmt_value(r.config.get('epochs'))}: not counted"
                else:
                    r.note = f"status {r.status!r}: not counted"
    return sorted(groups.values(), key=_group_order)


def _group_order(g: Group):
    return tuple(json.dumps(g.ident.get(k), sort_keys=True) for k in MAIN_KEYS) + (g.key,)


def parse_where(items) -> dict:
    """['key=value', ...] -> {key: value}; the value in JSON (numbers, lists, true) or a bare string."""
    out = {}
    for text in items or ():
        if "=" not in text:
            raise ValueError(f"--where {text!r}: expected key=value")
        k, raw = text.split("=", 1)
        try:
            out[k.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[k.strip()] = raw
    return out


def _equal(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def filter_groups(groups: list[Group], where: dict) -> list[Group]:
    return [g for g in groups if all(_equal(g.ident.get(k), v) for k, v in where.items())]


RUN_COLUMNS = ("experiment", "path", "seed", "status", "counted", "note", "last_epoch")


def runs_frame(runset: RunSet, ignore: frozenset | set = frozenset()) -> pd.DataFrame:
    """The DataFrame of `load_runs` from a RunSet (groups its runs, marking which count)."""
    groups = group_runs(runset.runs, ignore)
    keys = sorted({k for g in groups for k in g.ident} - set(RUN_COLUMNS), key=lambda k: (k not in MAIN_KEYS, k))
    rows, metrics = [], {}
    for e, g in enumerate(groups):
        for r in g.runs:
            row = dict(zip(RUN_COLUMNS, (e, r.path, r.seed, r.status, r.counted, r.note, r.last_epoch)))
            row.update({k: tuple(v) if isinstance(v, list) else v for k, v in g.ident.items() if k in keys})
            for k, v in r.final.items():
                name = metrics.setdefault(k, f"final_{k}" if k in keys or k in RUN_COLUMNS else k)
                row[name] = v
            rows.append(row)
    df = pd.DataFrame(rows, columns=list(RUN_COLUMNS) + keys + list(metrics.values()))
    df.attrs = {"keys": keys, "metrics": metrics, "experiments": [g.key for g in groups],
                "skipped": [(s.path, s.reason) for s in runset.skipped], "root": runset.root}
    return df


def load_runs(paths, metric: str = "test_acc_avg", ignore: frozenset | set = frozenset()) -> pd.DataFrame:
    """Every trace under `paths` as one row per run: `experiment` (0, 1, ...: runs with the same identifying
    config are seeds of one experiment; numbered in the flat table's order), `path`, `seed`, `status`,
    `counted` (this run enters its experiment's mean: the newest finished copy of its seed with `metric`),
    `note` (why not), `last_epoch`, the identity keys (lists as tuples) and the last value of every /epoch/
    column (named as in the trace, `final_<name>` where a name is taken). `df.attrs`: "keys" (identity
    columns), "metrics" (/epoch/ column -> frame column), "experiments" (each experiment's identity as JSON),
    "skipped" ([(path, reason)] of unreadable traces), "root".

        df = load_runs("runs/")
        df[df.counted].groupby("experiment").test_acc_avg.agg(["mean", "std", "count"])  # std: ddof=1
    """
    return read_runs(paths, metric).frame(ignore)


def summarize(df: pd.DataFrame, metric: str = "test_acc_avg") -> pd.DataFrame:
    """One row per experiment of a `load_runs` frame: its identity keys, then mean, sample std (ddof=1) and
    count of `metric` over its counted runs (the numbers of the tables' cells; NaN std for one seed)."""
    col = df.attrs.get("metrics", {}).get(metric, metric)
    if col not in df.columns:  # no run has that /epoch/ column: every count is 0
        df = df.assign(**{col: float("nan")})
    stats = df.loc[df.counted.astype(bool)].groupby("experiment", sort=False)[col].agg(["mean", "std", "count"])
    ident = df.drop_duplicates("experiment").set_index("experiment")[df.attrs.get("keys", [])]
    out = ident.join(stats)
    out["count"] = out["count"].fillna(0).astype(int)
    return out

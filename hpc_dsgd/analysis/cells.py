"""The counting rules of every table, on the runs DataFrame of `runs.load_runs` (pandas, nothing mutated):
which run counts for its seed (`count_runs`), an experiment and its runs (`Experiment`, `experiments`), and the
statistics of one cell (`CellStats`: mean ± sample std over the counted seeds, with what was not counted).

Nothing is silently averaged in (STYLE.md practice 7): only finished runs (status "finished") count; a seed is
counted once per experiment (a second run of the same seed is a duplicate, listed, and the newest finished copy
counts); unfinished ("running" left behind: still running or crashed), stopped and failed runs are shown in the
cell ("92.10 ± 0.20 (2/3 seeds, 1 unfinished)") and listed below the table. Std is the sample std over seeds
(ddof=1); a cell with one seed shows no std ("n=1").
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

NEVER_BOUND, CAP_HIT = "target never bound", "cap hit"
EMPTY = {"md": "—", "latex": "---", "csv": ""}
# Keys shown first in a table (the paper's terms), then any other key that differs between experiments.
MAIN_KEYS = ("dataset", "model", "n", "topology", "momentum", "epochs", "policies", "target_factors")


def fmt_value(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(fmt_value(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:g}"
    return "" if v is None else str(v)


def seeds_cell(seeds: list[int], fmt: str) -> str:
    """How many seeds count and which: '3 (0,1,2)', '1 (7)'; never a bare seed that reads like a count."""
    return f"{len(seeds)} ({','.join(map(str, seeds))})" if seeds else EMPTY[fmt]


# ------------------------------------------------------------------------------------------------
# Which run counts
# ------------------------------------------------------------------------------------------------
def count_runs(df: pd.DataFrame) -> pd.DataFrame:
    """`counted` and `note` for a frame with columns key (the experiment's identity as JSON), seed, status,
    value, stamp, last_epoch, config: per (key, seed) the newest finished copy with a value counts; every other
    run says why not. Returns a new frame (the input is left as it is)."""
    ok = ((df.status == "finished") & df.value.notna()).to_numpy()
    grp = df.assign(ok_stamp=np.where(ok, df.stamp, "")).groupby(["key", "seed"], sort=False)
    best, newest, size = grp.ok_stamp.idxmax(), grp.stamp.idxmax(), grp.stamp.transform("size")
    best = best[ok[best.to_numpy()]] if len(best) else best  # the first of equal stamps, in reading order
    counted = df.index.isin(best.to_numpy())
    notes = [""] * len(df)
    best_of, newest_of = best.to_dict(), newest.to_dict()
    for j in np.flatnonzero(~counted):
        r = df.iloc[j]
        b = best_of.get((r.key, r.seed))
        epochs = fmt_value(r.config.get("epochs"))
        if b is not None:
            bv = df.value[b]
            n = f"duplicate of seed {r.seed} ({r.status}); the newest finished copy counts"
            if ok[j] and r.value != bv:
                n += f" (values differ: {r.value:g} here, {bv:g} counted)"
        elif size.iat[j] > 1 and newest_of[(r.key, r.seed)] != df.index[j]:
            n = f"duplicate of seed {r.seed} ({r.status}); no copy finished"
        elif r.status == "finished":
            n = "finished but has no value of the metric (no evaluation row)"
        elif r.status == "running":
            n = f"unfinished (status 'running': still running or crashed; last evaluation at epoch " \
                f"{r.last_epoch:g} of {epochs})"
        elif r.status == "stopped":
            n = f"stopped (max_iterations or a signal; resume it to finish) after epoch {r.last_epoch:g} of " \
                f"{epochs}: not counted"
        else:
            n = f"status {r.status!r}: not counted"
        notes[j] = n
    return df.assign(counted=counted, note=notes)


# ------------------------------------------------------------------------------------------------
# Cell statistics
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

    @property
    def not_finished(self) -> list[str]:
        """'1 unfinished', '2 stopped', '1 failed': seeds without a finished run."""
        return [f"{k} {what}" for k, what in ((self.unfinished, "unfinished"), (self.stopped, "stopped"),
                                              (self.failed, "failed")) if k]

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


def cell_stats(runs: pd.DataFrame, expected: int | None = None, column: str = "value") -> CellStats:
    """The statistics of one experiment's runs (rows of the runs frame): `column` over the counted runs, in
    seed order; per seed without a counted run, why (no metric, or the newest copy's status)."""
    seed, counted, status, stamp = (runs[c].tolist() for c in ("seed", "counted", "status", "stamp"))
    values = runs[column].tolist()
    order = sorted((s, j) for j, s in enumerate(seed) if counted[j])
    kinds = {k for j in range(len(seed)) if counted[j] for k, _ in runs.control.iat[j]}
    st = CellStats(values=[float(values[j]) for _, j in order], seeds=[int(s) for s, _ in order],
                   expected=expected if expected is not None else len(set(seed)),
                   control=tuple(k for k in (NEVER_BOUND, CAP_HIT) if k in kinds))
    by_seed: dict = {}
    for j, s in enumerate(seed):
        by_seed.setdefault(s, []).append(j)
    for js in by_seed.values():
        st.duplicates += len(js) - 1
        if any(counted[j] for j in js):
            continue
        if any(status[j] == "finished" for j in js):
            st.no_metric += 1
            continue
        newest = status[max(js, key=lambda j: stamp[j])]  # the first of equal stamps
        if newest == "running":
            st.unfinished += 1
        elif newest == "stopped":
            st.stopped += 1
        else:
            st.failed += 1
    return st


# ------------------------------------------------------------------------------------------------
# Experiments
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Experiment:
    """One experiment of a runs frame: its number, identity (config keys) and its runs (rows of the frame)."""

    number: int
    key: str  # the identity as JSON
    ident: dict
    runs: pd.DataFrame  # its rows of the runs frame (the run columns: no identity keys, no metrics)
    counted: pd.DataFrame  # the runs that count

    def stats(self, expected: int | None = None, column: str = "value") -> CellStats:
        return cell_stats(self.runs, expected, column)

    def label(self, keys=None) -> str:
        keys = keys or [k for k in MAIN_KEYS if k in self.ident]
        return ", ".join(f"{k}={fmt_value(self.ident.get(k))}" for k in keys)


def experiments(df: pd.DataFrame) -> list[Experiment]:
    """The experiments of a `load_runs` frame, in its order (MAIN_KEYS first). Their runs carry no `attrs`
    (pandas copies a frame's attrs at every operation on it)."""
    cols = [c for c in RUN_FRAME_COLUMNS if c in df.columns]
    plain = df[cols]
    plain.attrs = {}
    return [Experiment(int(e), sub.key.iat[0], sub.ident.iat[0], sub, sub[sub.counted.to_numpy()])
            for e, sub in plain.groupby("experiment")]


# The run columns of the runs frame an Experiment carries (runs.RUN_COLUMNS + runs.EXTRA_COLUMNS).
RUN_FRAME_COLUMNS = ("experiment", "path", "seed", "status", "counted", "note", "last_epoch", "value", "stamp",
                     "lr_origin", "lambda_max", "xi_mean", "control", "targets", "xi_late", "config", "ident", "key")


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


def equal(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def where(exps: list[Experiment], wanted: dict) -> list[Experiment]:
    """The experiments whose identity has every KEY=VALUE of `wanted`."""
    return [e for e in exps if all(equal(e.ident.get(k), v) for k, v in wanted.items())]


def list_keys(idents: list[dict]) -> list[str]:
    """MAIN_KEYS present, then every other identifying key that differs between the experiments."""
    keys = [k for k in MAIN_KEYS if any(k in i for i in idents)]
    others = sorted({k for i in idents for k in i} - set(keys))
    return keys + [k for k in others if any(not equal(i.get(k), idents[0].get(k)) for i in idents)]


def finite_stats(values, seeds, expected) -> CellStats:
    """CellStats of the finite values (a run without the measurement leaves it out), with their seeds."""
    keep = [(s, v) for s, v in zip(seeds, values) if math.isfinite(v)]
    return CellStats(values=[v for _, v in keep], seeds=[s for s, _ in keep], expected=expected)

"""Runs from traces: every trace read once into one runs DataFrame (`load_runs`), a run's identity (the config
keys that name its experiment), and one trace as DataFrames (`load_trace`).

The notebook API is this module's `load_runs(dir)`: one row per readable run with its experiment (`experiment`,
a number shared by its seeds), seed, status, whether it counts (`counted`) and why not (`note`), its identity
keys, the last value of every /epoch/ column, and what the tables read besides (lambda_max, mean Xi, the
consensus control's notes, the learning rate's origin); `summarize` gives mean, sample std and count per
experiment; `cells.experiments(df)` the experiments with their runs; `load_trace(path)` one DataFrame per trace
group. The counting rules are in cells.py.

What cannot be read is listed, never dropped (`df.attrs["skipped"]`): a trace that is not HDF5 or of a newer
schema, a stored config of the wrong shape (one line naming file and key), a directory that cannot be read, a
symlink loop. Symlinked run directories are followed, each real directory and file read once.
"""
from __future__ import annotations

import json
import math
import os
import typing

import numpy as np
import pandas as pd

from ..config import DEFAULTS, NOT_IDENTITY, Config, inapplicable_keys
from ..trace import GROUPS, TraceError, parse_config, read_trace
from .cells import CAP_HIT, MAIN_KEYS, NEVER_BOUND, RUN_FRAME_COLUMNS, count_runs

# Config keys that do not identify an experiment: the config's keys whose role says so (config.NOT_IDENTITY: the
# seed, paths, resources, measurements, other runs' files, where the learning rate came from), and keys of older
# configs that named inputs. Keys ending in one of NON_IDENTIFYING_SUFFIXES are also ignored.
NON_IDENTIFYING = frozenset(NOT_IDENTITY) | {"reference", "reference_run", "resume", "resume_from", "lr_origin"}
NON_IDENTIFYING_SUFFIXES = ("_dir", "_path", "_file", "_trace", "_checkpoint")
# The alternative reference reading (all-ring run's phase-k maximum) leaves out the first LATE_FRACTION of a phase.
LATE_FRACTION = 0.1
ITER_COLUMNS = ("xi", "epoch", "phase")  # the /iter/ columns the tables read (mean Xi, phase maxima)
CIFAR_FRACTIONS = (0.5, 0.75)  # paper Sec. 4.2: lr /10 at 1/2 and 3/4 of the samples (CIFAR)


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


def phase_epochs(cfg: dict) -> list[int]:
    """Length of every phase in epochs: round(fraction x epochs) boundaries."""
    T = float(cfg.get("epochs", 300))
    edges = [0] + [round(a * T) for a in cfg.get("decay_fractions", list(CIFAR_FRACTIONS))] + [round(T)]
    return [edges[i + 1] - edges[i] for i in range(len(edges) - 1)]


# ------------------------------------------------------------------------------------------------
# Finding traces
# ------------------------------------------------------------------------------------------------
def walk_traces(paths) -> tuple[list[str], list[tuple[str, str]]]:
    """(every `*.h5` under the given directories plus the given files, sorted; [(path, reason)] of what was not
    walked). Symlinked directories and files are followed; each real directory is walked once and each real file
    read once (the first name in walking order counts); a link back to a directory being walked is a loop;
    a directory that cannot be listed is named with the reason."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files, skipped, seen_dirs, seen_files = [], [], {}, {}

    def walk(d: str, ancestors: tuple) -> None:
        real = os.path.realpath(d)
        if real in ancestors:
            skipped.append((d, f"symlink loop: {d} leads back to {real}, which is being walked; not followed"))
            return
        if real in seen_dirs:
            skipped.append((d, f"the same directory as {seen_dirs[real]} (a symlink): its traces are read once"))
            return
        seen_dirs[real] = d
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            skipped.append((d, f"directory cannot be read ({e})"))
            return
        for e in entries:
            try:
                is_dir, is_file = e.is_dir(), e.is_file()
            except OSError as err:
                skipped.append((e.path, f"cannot be read ({err})"))
                continue
            if is_dir:
                walk(e.path, ancestors + (real,))
            elif is_file and e.name.endswith(".h5"):
                files.append(e.path)

    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            walk(p, ())
        else:
            files.append(p)
    out = []
    for f in sorted(dict.fromkeys(files)):
        real = os.path.realpath(f)
        if real in seen_files and os.path.exists(f):
            continue  # the same file through a second name (a linked directory walked once already covers most)
        seen_files[real] = f
        out.append(f)
    return out, skipped


def find_traces(paths) -> list[str]:
    """Every `*.h5` under the given directories (recursively, symlinks followed once), plus the given files."""
    return walk_traces(paths)[0]


# ------------------------------------------------------------------------------------------------
# Reading one run
# ------------------------------------------------------------------------------------------------
_HINTS = typing.get_type_hints(Config)
_KIND = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _fits(typ, v) -> bool:
    if typ is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if typ is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, typ)


def check_config(path: str, cfg: dict) -> None:
    """Every config key the trace stores that Config knows must have Config's type (a list where a list is
    expected, of the right items; ints accepted for floats); `lr_origin` a string. TraceError naming file and
    key otherwise, so that one bad trace is skipped with its reason and every other run still tabulates."""
    for k, v in cfg.items():
        hint = _HINTS.get(k, str if k == "lr_origin" else None)
        if hint is None:
            continue
        if typing.get_origin(hint) is list:
            (item,) = typing.get_args(hint)
            ok = isinstance(v, list) and all(_fits(item, x) or (item is float and x is None) for x in v)
            want = f"a list of {item.__name__} values"
        else:
            ok, want = _fits(hint, v), _KIND[hint]
        if not ok:
            raise TraceError(f"trace {path!r}: stored config key {k!r} is {json.dumps(v)} "
                             f"({type(v).__name__}), expected {want}")


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


def _last(col) -> float:
    return float(col[-1]) if col is not None and len(col) else math.nan


def _extras(cfg: dict, it: dict, phase: dict, sharpness: dict) -> dict:
    """What the presets read besides the metric: lambda_max of the averaged model at the last /sharpness row,
    the mean of /iter/xi over measured iterations, per phase the target the trace recorded (/phase/target) and
    the maximum of Xi after the first LATE_FRACTION of the phase (the alternative reference reading)."""
    lam = math.nan
    if sharpness and "lambda_max" in sharpness and "replica" in sharpness:
        sel = np.flatnonzero(np.asarray(sharpness["replica"]) < 0)
        lam = float(sharpness["lambda_max"][sel[-1]]) if len(sel) else math.nan
    xi = np.asarray(it.get("xi", []), dtype=float)
    fin = xi[np.isfinite(xi)]
    targets = {}
    if "phase" in phase and "target" in phase:
        targets = {int(k): float(t) for k, t in zip(phase["phase"], phase["target"]) if math.isfinite(t)}
    late = {}
    if len(xi) and "phase" in it and "epoch" in it:
        lengths = phase_epochs({**DEFAULTS, **cfg})
        ph, ep = np.asarray(it["phase"]), np.asarray(it["epoch"], dtype=float)
        for k, length in enumerate(lengths, 1):
            start = sum(lengths[:k - 1])
            sel = (ph == k) & (ep > start + LATE_FRACTION * length) & np.isfinite(xi)
            if sel.any():
                late[k] = float(xi[sel].max())
    return dict(lambda_max=lam, xi_mean=float(fin.mean()) if len(fin) else math.nan, targets=targets, xi_late=late)


def read_run(path: str, metric: str = "test_acc_avg") -> dict:
    """One trace as the record of one row of the runs frame (before grouping). TraceError naming the file
    and the field or key when the trace or its stored config cannot be used."""
    tr = read_trace(path, columns={"iter": ITER_COLUMNS})  # /iter/: only what the tables use of its bulk
    cfg = parse_config(path, tr.attrs)
    check_config(path, cfg)
    epoch = tr.epoch
    stamp = str(tr.attrs.get("finished") or tr.attrs.get("created") or "")
    return dict(path=path, config=cfg, status=str(tr.attrs.get("status", "unknown")), seed=int(cfg.get("seed", 0)),
                value=_last(epoch.get(metric)), last_epoch=_last(epoch.get("epoch")),
                stamp=f"{stamp}|{os.path.getmtime(path):020.6f}", control=control_notes(cfg, tr.phase),
                lr_origin=str(cfg.get("lr_origin", "")),
                final={k: _last(v) for k, v in epoch.items()}, **_extras(cfg, tr.iter, tr.phase, tr.sharpness))


# ------------------------------------------------------------------------------------------------
# The runs frame
# ------------------------------------------------------------------------------------------------
RUN_COLUMNS = RUN_FRAME_COLUMNS[:7]  # experiment, path, seed, status, counted, note, last_epoch
EXTRA_COLUMNS = RUN_FRAME_COLUMNS[7:]  # what the tables read besides (not identity keys, not metrics): read_run


def _order(ident: dict) -> tuple:
    return tuple(json.dumps(ident.get(k), sort_keys=True) for k in MAIN_KEYS)


def runs_frame(records: list[dict], skipped=(), root: str = ".", ignore: frozenset | set = frozenset(),
               metric: str = "test_acc_avg") -> pd.DataFrame:
    """The frame of `load_runs` from run records (`read_run`'s dicts; `final`, the extras and `control` may be
    left out): grouped into experiments by identity, numbered in the tables' order, counted (cells.count_runs)."""
    recs = []
    for r in records:
        ident = identity(r["config"], ignore)
        recs.append({"final": {}, "control": [], "lr_origin": str(r["config"].get("lr_origin", "")),
                     "lambda_max": math.nan, "xi_mean": math.nan, **r, "targets": r.get("targets") or {},
                     "xi_late": r.get("xi_late") or {}, "ident": ident, "key": json.dumps(ident, sort_keys=True)})
    # experiments numbered in the tables' order (MAIN_KEYS, then the identity's JSON); rows in that order,
    # in reading order within an experiment
    first = {}
    for r in recs:
        first.setdefault(r["key"], r["ident"])
    order = sorted((_order(i), k) for k, i in first.items())
    number = {k: e for e, (_, k) in enumerate(order)}
    recs.sort(key=lambda r: number[r["key"]])
    keys = sorted({k for i in first.values() for k in i} - set(RUN_COLUMNS) - set(EXTRA_COLUMNS),
                  key=lambda k: (k not in MAIN_KEYS, k))
    metrics = {}
    for r in recs:
        for k in r["final"]:
            metrics.setdefault(k, f"final_{k}" if k in keys or k in RUN_COLUMNS or k in EXTRA_COLUMNS else k)
    nan = math.nan
    cols = {"experiment": [number[r["key"]] for r in recs], "counted": False, "note": ""}
    cols.update({c: [r[c] for r in recs] for c in ("path", "seed", "status")})
    cols["last_epoch"] = np.array([r["last_epoch"] for r in recs], dtype=float)
    cols.update({k: [(lambda v: tuple(v) if isinstance(v, list) else v)(r["ident"].get(k, nan)) for r in recs]
                 for k in keys})
    cols.update({name: [r["final"].get(k, nan) for r in recs] for k, name in metrics.items()})
    cols.update({c: np.array([r[c] for r in recs], dtype=float) for c in ("value", "lambda_max", "xi_mean")})
    cols.update({c: [r[c] for r in recs] for c in EXTRA_COLUMNS if c not in cols})
    base = pd.DataFrame({c: cols[c] for c in list(RUN_COLUMNS) + keys + list(metrics.values()) + list(EXTRA_COLUMNS)},
                        index=pd.RangeIndex(len(recs)))
    df = count_runs(base)
    df.attrs = {"keys": keys, "metrics": metrics, "experiments": [k for _, k in order],
                "skipped": sorted(skipped), "root": root, "metric": metric}
    return df


def load_runs(paths, metric: str = "test_acc_avg", ignore: frozenset | set = frozenset()) -> pd.DataFrame:
    """Every trace under `paths` (directories searched recursively for *.h5, symlinks followed once), each read
    once, as one row per run: `experiment` (0, 1, ...: runs with the same identifying config are seeds of one
    experiment; numbered in the flat table's order), `path`, `seed`, `status`, `counted` (this run enters its
    experiment's mean: the newest finished copy of its seed with `metric`), `note` (why not), `last_epoch`, the
    identity keys (lists as tuples), the last value of every /epoch/ column (named as in the trace, `final_<name>`
    where a name is taken), then `value` (the metric), `stamp`, `lr_origin`, `lambda_max` (averaged model, last
    sharpness row), `xi_mean` (mean Xi over measured iterations), `control` (notes of target phases), `targets`
    ({phase: target}), `xi_late` ({phase: max Xi after the first 10 % of the phase}), `config`, `ident`, `key`.
    `df.attrs`: "keys" (identity columns), "metrics" (/epoch/ column -> frame column), "experiments" (each
    experiment's identity as JSON), "skipped" ([(path, reason)] of what could not be read), "root", "metric".

        df = load_runs("runs/")
        df[df.counted].groupby("experiment").test_acc_avg.agg(["mean", "std", "count"])  # std: ddof=1
    """
    files, skipped = walk_traces(paths)
    records = []
    for path in files:
        try:
            records.append(read_run(path, metric))
        except (TraceError, OSError, KeyError) as e:
            skipped.append((path, str(e)))
    root = os.fspath(paths) if isinstance(paths, (str, os.PathLike)) and os.path.isdir(paths) else "."
    return runs_frame(records, skipped, root, ignore, metric)


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


def rel(df: pd.DataFrame, path: str) -> str:
    """A path as the tables print it: relative to the directory given to load_runs."""
    try:
        return os.path.relpath(path, df.attrs.get("root", "."))
    except ValueError:
        return path

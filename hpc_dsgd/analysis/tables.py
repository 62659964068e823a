"""Tables from a directory of traces: mean +- std over seeds per experiment, and the paper's Tables 1-7.

    python tools/tables.py runs/                         # every experiment found, Markdown
    python tools/tables.py runs/ --preset table2 --paper # the paper's Table 2 layout, paper values beside
    python tools/tables.py runs/ --format latex --seeds 3 --metric test_acc_avg

An experiment (a "group") is every identifying config key of a run (`config_json`) except those that
cannot change a result (seed, name, output and data paths, device, threads, flush interval; see
`NON_IDENTIFYING`). The metric of a run is the chosen /epoch/ column at its last evaluation row
(default test_acc_avg, the averaged model's test top-1 accuracy in percent, as in the paper's tables).

Nothing is silently averaged in (STYLE.md practice 7): only finished runs (status "finished") count;
a seed is counted once per experiment (a second run of the same seed is a duplicate, listed, and the
newest finished copy counts); unfinished ("running" left behind: still running or crashed) and failed
runs are shown in the cell ("92.10 ± 0.20 (2/3 seeds, 1 unfinished)") and listed below the table.
Std is the sample std over seeds (ddof=1); a cell with one seed shows no std ("n=1").
Traces that cannot be read (no schema_version, a newer schema, not HDF5) are listed as skipped with
the reason; the tool exits non-zero only when no readable trace was found.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..config import DEFAULTS, inapplicable_keys
from ..trace import TraceError, parse_config, read_trace

# Config keys that do not identify an experiment: changing them cannot change a result (or they are
# per-run bookkeeping such as paths). Keys ending in one of NON_IDENTIFYING_SUFFIXES are also ignored.
NON_IDENTIFYING = frozenset({
    "seed", "name", "out_dir", "data_dir", "device", "torch_threads", "trace_flush_seconds",
    "reference", "reference_trace", "reference_traces", "reference_run", "resume", "resume_from", "branch_from",
    "sharpness_every", "sharpness_samples", "sharpness_method", "sharpness_tol", "sharpness_max_hvps",
    "sharpness_trace_probes", "sharpness_replica",  # measurements only: the trajectory is the same
})
NON_IDENTIFYING_SUFFIXES = ("_dir", "_path", "_file", "_trace", "_checkpoint")
# Keys shown first in a table (the paper's terms), then any other key that differs between experiments.
MAIN_KEYS = ("dataset", "model", "n", "topology", "momentum", "epochs", "policies", "target_factors")

CIFAR_FRACTIONS = (0.5, 0.75)  # paper Sec. 4.2: lr /10 at 1/2 and 3/4 of the samples (CIFAR)
IMAGENET_FRACTIONS = (1 / 3, 2 / 3, 8 / 9)  # ... and at 1/3, 2/3, 8/9 (ImageNet-32)


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


def load_runs(paths, metric: str = "test_acc_avg") -> RunSet:
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
        runs.append(Run(path=path, config=cfg, status=str(attrs.get("status", "unknown")),
                        seed=int(cfg.get("seed", 0)), value=value, last_epoch=last_epoch,
                        stamp=f"{stamp}|{os.path.getmtime(path):020.6f}", control=control_notes(cfg, phase)))
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
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) >= 2 else math.nan

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
    groups: dict[str, Group] = {}
    for r in runs:
        ident = identity(r.config, ignore)
        key = json.dumps(ident, sort_keys=True)
        groups.setdefault(key, Group(key, ident)).runs.append(r)
    for g in groups.values():
        by_seed: dict[int, list[Run]] = {}
        for r in g.runs:
            by_seed.setdefault(r.seed, []).append(r)
        for seed, rs in by_seed.items():
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


# ------------------------------------------------------------------------------------------------
# The paper's experiments in terms of config keys
# ------------------------------------------------------------------------------------------------
def phase_levels(cfg: dict) -> list:
    """Per phase: 0.0 = exact averaging (allreduce, or any gossip on the complete graph),
    1.0 = plain D-SGD (policy gossip, or target with factor 1: the paper's 'Xi_max' column),
    f = target factor x Xi_max; 'adaptive:f' for adaptive targets (no paper table uses them here)."""
    fr = cfg.get("decay_fractions", list(CIFAR_FRACTIONS))
    pols = cfg.get("policies") or ["gossip"] * (len(fr) + 1)
    facs = cfg.get("target_factors") or []
    exact = cfg.get("topology") == "complete"
    out = []
    for k, pol in enumerate(pols):
        f = float(facs[k]) if k < len(facs) and facs[k] is not None else 1.0
        if pol == "allreduce" or exact:
            out.append(0.0)
        elif pol == "gossip":
            out.append(1.0)
        elif pol == "target":
            out.append(f)
        else:
            out.append(f"{pol}:{f:g}")
    return out


def phase_epochs(cfg: dict) -> list[int]:
    """Length of every phase in epochs: round(fraction x epochs) boundaries."""
    T = float(cfg.get("epochs", 300))
    edges = [0] + [round(a * T) for a in cfg.get("decay_fractions", list(CIFAR_FRACTIONS))] + [round(T)]
    return [edges[i + 1] - edges[i] for i in range(len(edges) - 1)]


def _levels_are(cfg, want) -> bool:
    lv = phase_levels(cfg)
    if len(lv) != len(want) or any(isinstance(x, str) for x in lv):
        return False
    if not all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(lv, want)):
        return False
    controlled = any(p == "target" and not math.isclose(x, 1.0) for p, x in zip(cfg.get("policies", []), lv))
    if controlled and cfg.get("control_signal", "xi") != "xi":
        return False  # the paper's Tables 1-7 control the exact Xi (Theta control is its Tables 8-9)
    return all(x == 0.0 for x in want) or cfg.get("topology") == "ring"


def _base(cfg, imagenet=False, momentum=True, fractions=True) -> bool:
    if (cfg.get("dataset") == "imagenet32") != imagenet:
        return False
    if (float(cfg.get("momentum", 0.9)) > 0) != momentum:
        return False
    if fractions:
        want = IMAGENET_FRACTIONS if imagenet else CIFAR_FRACTIONS
        return _equal_tol(cfg.get("decay_fractions", list(CIFAR_FRACTIONS)), want)
    return True


def _equal_tol(a, b, tol=1e-6) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


XI = "Ξ_max"
FACTOR_LABEL = {1.0: XI, 0.5: "1/2 " + XI, 0.25: "1/4 " + XI, 0.125: "1/8 " + XI, 0.0: "0 " + XI}


@dataclass
class Layout:
    """Exactly the paper's table: corner label, row labels, column groups (label, column labels)."""

    name: str  # "table2"
    title: str  # "Table 2"
    caption: str
    corner: str
    rows: list[str]
    groups: list[tuple[str, list[str]]]  # one group with label "" = a plain one-row header

    @property
    def columns(self) -> list[tuple[str, str]]:
        return [(g, c) for g, cols in self.groups for c in cols]


@dataclass
class Preset:
    layout: Layout
    cell: Callable  # (cfg, row index, column index, options) -> bool: does this experiment fill the cell
    baselines: list = field(default_factory=list)  # [(label, (cfg, row, options) -> bool, paper per row)]
    default_n: tuple = ()


def _dec_phase_preset(name, title, caption, corner, ns, nphases, shown_phases, imagenet, momentum):
    factors = (1.0, 0.5, 0.25)
    cols = [(k, f) for k in shown_phases for f in factors]

    def cell(cfg, r, c, opt):
        k, f = cols[c]
        want = [0.0] * nphases
        want[k] = f
        return _base(cfg, imagenet, momentum) and cfg.get("n") == ns[r] and _levels_are(cfg, want)

    layout = Layout(name, title, caption, corner, [f"n={n}" for n in ns],
                    [(f"dec-phase-{k + 1}", [FACTOR_LABEL[f] for f in factors]) for k in shown_phases])
    base = [
        ("All-Reduce", lambda cfg, r, o: _base(cfg, imagenet, momentum) and cfg.get("n") == ns[r]
         and _levels_are(cfg, [0.0] * nphases)),
        ("D-SGD (ring, w/o control)", lambda cfg, r, o: _base(cfg, imagenet, momentum) and cfg.get("n") == ns[r]
         and _levels_are(cfg, [1.0] * nphases)),
    ]
    return Preset(layout, cell, base)


def _prolonged(cfg, e1, opt) -> bool:
    """Tables 6-7: phase 1 lasts e1 epochs, phases 2 and 3 share `later` epochs equally (paper: 75 + 75)."""
    later = opt.get("later_epochs", 150)
    ep = phase_epochs(cfg)
    return len(ep) == 3 and ep[0] == e1 and ep[1] == ep[2] == round(later / 2)


def _prolonged_n32(cfg, e1, levels, opt) -> bool:
    """Tables 6-7 cell: CIFAR recipe, n = 32, phase 1 prolonged to e1 epochs, these phase levels."""
    return _base(cfg, fractions=False) and cfg.get("n") == 32 and _prolonged(cfg, e1, opt) and _levels_are(cfg, levels)


def _make_presets() -> dict[str, Preset]:
    P = {}
    # Table 1: All-Reduce vs D-SGD on a ring, n = 16, 32, 64.
    ns1 = (16, 32, 64)

    def t1(cfg, r, c, opt):
        want = [0.0] * 3 if c == 0 else [1.0] * 3
        return _base(cfg) and cfg.get("n") == ns1[r] and _levels_are(cfg, want)

    P["table1"] = Preset(Layout("table1", "Table 1",
                                "Significant generalization gap for decentralized training on a sparse ring "
                                "topology (ResNet-20 on CIFAR-10 with n in {16, 32, 64} workers). Test top-1 "
                                "accuracies averaged over three seeds with fine-tuned learning rates.",
                                "", [f"n={n}" for n in ns1], [("", ["AllReduce (complete)", "D-SGD (ring)"])]), t1)
    P["table2"] = _dec_phase_preset(
        "table2", "Table 2", "The impact of consensus distance of different phases on generalization performance "
        "(test top-1 accuracy) of training ResNet-20 on CIFAR-10 on ring.",
        "# nodes \\ target Ξ", (32, 64), 3, (0, 1, 2), False, True)
    P["table3"] = _dec_phase_preset(
        "table3", "Table 3", "The impact of different consensus distances on generalization for different phases "
        "of training ResNet-20-3 on ImageNet-32 on ring (paper: two seeds).",
        "# nodes \\ target Ξ", (16, 32), 4, (0, 1, 2, 3), True, True)
    P["table4"] = _dec_phase_preset(
        "table4", "Table 4", "The impact of consensus distance on generalization performance with vanilla SGD "
        "(without momentum) (test top-1 accuracy) of training ResNet-20 on CIFAR-10 on ring.",
        "# nodes \\ target Ξ", (32, 64), 3, (0, 1), False, False)

    # Table 5: phase-1 target (rows) x phase-2 target (columns), phase 3 All-Reduce, n = 32.
    f5r, f5c = (0.5, 0.25, 0.125), (1.0, 0.5, 0.25)

    def t5(cfg, r, c, opt):
        return _base(cfg) and cfg.get("n") == 32 and _levels_are(cfg, [f5r[r], f5c[c], 0.0])

    P["table5"] = Preset(Layout("table5", "Table 5",
                                "Quality propagation across training phases with different consensus distances on "
                                "ResNet-20 for CIFAR-10 (Ring with n = 32). In phase-1 and phase-2, the model "
                                "parameters reach inexact consensus of different target consensus distance Ξ, while "
                                "phase-3 performs All-Reduce on model parameters.",
                                "phase-1 \\ phase-2", [FACTOR_LABEL[f] for f in f5r],
                                [("", [FACTOR_LABEL[f] for f in f5c])]), t5)

    # Table 6: dec-phase-1 target (rows) x phase-1 epochs (columns), n = 32.
    f6 = (1.0, 0.5, 0.25)

    def t6(cfg, r, c, opt):
        e1 = opt.get("phase1_epochs", (150, 200, 250))[c]
        return _prolonged_n32(cfg, e1, [f6[r], 0.0, 0.0], opt)

    P["table6"] = Preset(Layout("table6", "Table 6",
                                "The impact of different numbers of training epochs (at phase-1) on generalization, "
                                "for training ResNet-20 on CIFAR-10 (dec-phase-1 with n = 32). The number of epochs "
                                "at phase-1 is chosen from {150, 200, 250}, while the other training setting is "
                                "identical to that of dec-phase-1 in Table 2.",
                                "target Ξ", [FACTOR_LABEL[f] for f in f6],
                                [("training epochs at phase-1", ["150", "200", "250"])]), t6)

    # Table 7: phase-1 epochs (rows) x phase-1 target (columns; 0 = All-Reduce), phases 2-3 gossip, n = 32.
    f7 = (1.0, 0.5, 0.25, 0.125, 0.0)

    def t7(cfg, r, c, opt):
        e1 = opt.get("phase1_epochs", (150, 200, 250))[r]
        return _prolonged_n32(cfg, e1, [f7[c], 1.0, 1.0], opt)

    P["table7"] = Preset(Layout("table7", "Table 7",
                                "The importance of phase-1 for training ResNet-20 on CIFAR-10 (n=32), in terms of "
                                "(1) target consensus distance and (2) the number of training epochs. In phase-2 and "
                                "phase-3, we perform decentralized training (w/o consensus distance control).",
                                "# of epochs \\ target Ξ", ["150", "200", "250"],
                                [("", [FACTOR_LABEL[f] for f in f7])]), t7)
    return P


PRESETS = _make_presets()


def _pv(text: str) -> list:
    """'91.78 0.35 | 92.36 0.21' -> [(91.78, 0.35), (92.36, 0.21)]."""
    return [tuple(float(x) for x in cell.split()) for cell in text.split("|")]


# The paper's own numbers (test top-1 %, mean, std), transcribed from Kong et al., ICML 2021, row-major in
# the layout above. "baselines" are the values quoted in the table captions, per row.
PAPER_VALUES = {
    "table1": {"source": "Kong et al. (ICML 2021), Table 1", "cells": [
        _pv("92.91 0.12 | 92.40 0.10"),
        _pv("92.82 0.27 | 91.81 0.09"),
        _pv("92.71 0.11 | 89.58 0.20")]},
    "table2": {"source": "Kong et al. (ICML 2021), Table 2", "cells": [
        _pv("91.78 0.35 | 92.36 0.21 | 92.74 0.10 | 93.04 0.01 | 92.99 0.30 | 92.87 0.11 | 92.60 0.00 | "
            "92.82 0.21 | 92.85 0.24"),
        _pv("90.31 0.12 | 92.18 0.07 | 92.45 0.17 | 93.14 0.04 | 92.94 0.10 | 92.79 0.07 | 92.23 0.12 | "
            "92.50 0.09 | 92.60 0.10")],
        "baselines": {"All-Reduce": _pv("92.82 0.27 | 92.71 0.11"),
                      "D-SGD (ring, w/o control)": _pv("91.74 0.15 | 89.87 0.12")}},
    "table3": {"source": "Kong et al. (ICML 2021), Table 3", "cells": [
        _pv("51.22 0.08 | 51.79 0.10 | 51.71 0.03 | 51.59 0.02 | 51.67 0.01 | 51.65 0.13 | 51.80 0.10 | "
            "51.81 0.13 | 51.81 0.04 | 51.72 0.02 | 51.76 0.01 | 51.74 0.06"),
        _pv("50.76 0.18 | 51.27 0.07 | 51.60 0.21 | 51.39 0.07 | 51.59 0.04 | 51.66 0.12 | 51.79 0.06 | "
            "51.73 0.10 | 51.77 0.10 | 51.70 0.02 | 51.71 0.02 | 51.70 0.02")],
        "baselines": {"All-Reduce": _pv("51.74 0.06 | 51.98 0.37"),
                      "D-SGD (ring, w/o control)": _pv("51.04 0.06 | 50.17 0.04")}},
    "table4": {"source": "Kong et al. (ICML 2021), Table 4", "cells": [
        _pv("90.51 0.05 | 90.74 0.14 | 90.88 0.37 | 90.64 0.18 | 90.55 0.19 | 90.57 0.17"),
        _pv("88.80 0.03 | 89.89 0.03 | 90.43 0.05 | 90.63 0.37 | 90.46 0.15 | 90.63 0.25")],
        "baselines": {"All-Reduce": _pv("90.64 0.19 | 90.58 0.26"),
                      "D-SGD (ring, w/o control)": _pv("90.30 0.14 | 88.92 0.23")}},
    "table5": {"source": "Kong et al. (ICML 2021), Table 5", "cells": [
        _pv("92.48 0.19 | 92.46 0.11 | 92.31 0.23"),
        _pv("92.73 0.11 | 92.66 0.08 | 92.69 0.19"),
        _pv("93.10 0.22 | 92.88 0.15 | 92.91 0.06")]},
    "table6": {"source": "Kong et al. (ICML 2021), Table 6", "cells": [
        _pv("91.78 0.35 | 91.91 0.19 | 92.04 0.14"),
        _pv("92.36 0.21 | 92.55 0.07 | 92.67 0.13"),
        _pv("92.74 0.10 | 92.91 0.15 | 92.84 0.20")]},
    "table7": {"source": "Kong et al. (ICML 2021), Table 7", "cells": [
        _pv("91.74 0.15 | 92.31 0.12 | 92.81 0.22 | 92.91 0.15 | 92.94 0.07"),
        _pv("91.81 0.22 | 92.88 0.20 | 93.00 0.18 | 93.01 0.10 | 92.90 0.17"),
        _pv("92.09 0.23 | 92.74 0.11 | 93.15 0.26 | 92.99 0.24 | 93.31 0.06")]},
}


# ------------------------------------------------------------------------------------------------
# Building and rendering
# ------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    groups: list[Group]  # every experiment matching the cell (more than one = ambiguous)
    stats: CellStats | None
    paper: tuple | None = None

    def text(self, digits=2, fmt="md", paper=False) -> str:
        if len(self.groups) > 1:
            t = f"ambiguous: {len(self.groups)} experiments" if fmt != "latex" else \
                rf"{{\footnotesize ambiguous: {len(self.groups)} experiments}}"
        else:
            t = self.stats.text(digits, fmt) if self.stats else EMPTY[fmt]
        if paper and self.paper:
            m, s = self.paper
            t += (rf" {{\scriptsize [paper ${m:.2f} \pm {s:.2f}$]}}" if fmt == "latex"
                  else f" [paper {m:.2f} ± {s:.2f}]")
        return t


@dataclass
class PresetTable:
    layout: Layout
    cells: list[list[Cell]]  # rows x columns
    baselines: list[tuple[str, list[Cell]]]
    source: str


def build_preset(name: str, groups: list[Group], expected: int | None = None, options: dict | None = None
                 ) -> PresetTable:
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} is unknown; choose one of {', '.join(PRESETS)}")
    pre, opt = PRESETS[name], dict(options or {})
    lay = pre.layout
    if "phase1_epochs" in opt and name in ("table6", "table7"):
        e1 = [str(e) for e in opt["phase1_epochs"]]
        if len(e1) != 3:
            raise ValueError(f"--phase1-epochs {' '.join(e1)}: Tables 6 and 7 need three values")
        lay = Layout(lay.name, lay.title, lay.caption, lay.corner, e1 if name == "table7" else lay.rows,
                     [(g, e1) for g, _ in lay.groups] if name == "table6" else lay.groups)
    pv = PAPER_VALUES[name]

    def cell_of(match, paper):
        gs = [g for g in groups if match(g.ident)]
        return Cell(gs, gs[0].stats(expected) if len(gs) == 1 else None, paper)

    cells = [[cell_of(lambda cfg, r=r, c=c: pre.cell(cfg, r, c, opt), pv["cells"][r][c])
              for c in range(len(lay.columns))] for r in range(len(lay.rows))]
    base = [(label, [cell_of(lambda cfg, r=r, f=f: f(cfg, r, opt), pv.get("baselines", {}).get(label, [None] * 9)[r])
                     for r in range(len(lay.rows))]) for label, f in pre.baselines]
    return PresetTable(lay, cells, base, pv["source"])


def _tex(label: str) -> str:
    """The paper's LaTeX for a label: 'n=32' -> '$n=32$', '1/2 Ξ_max' -> '$1/2 \\Xi_{\\max}$'."""
    import re

    s = label.replace("#", r"\#").replace(" \\ ", r" $\backslash$ ")
    s = re.sub(r"((?:\d+/\d+|0) )?Ξ_max", lambda m: "$" + (m.group(1) or "") + r"\Xi_{\max}$", s)
    s = s.replace("Ξ", r"$\Xi$")
    return re.sub(r"^n=(\d+)$", r"$n=\1$", s)


def _md_row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _notes_for(groups_shown: list[Group], runset: RunSet | None, fmt: str) -> list[str]:
    lines = []
    for g in groups_shown:
        for r in g.runs:
            if not r.counted:
                rel = runset.rel(r.path) if runset else r.path
                lines.append(f"{rel} (seed {r.seed}): {r.note}")
    return lines


def _control_lines(groups_shown: list[Group], runset: RunSet | None) -> list[str]:
    return [f"{runset.rel(r.path) if runset else r.path} (seed {r.seed}): {text}"
            for g in groups_shown for r in g.runs if r.counted for _, text in r.control]


def _skipped_lines(runset: RunSet | None) -> list[str]:
    return [f"{runset.rel(s.path)}: {s.reason}" for s in runset.skipped] if runset else []


def _emit_notes(out: list[str], title: str, lines: list[str], fmt: str) -> None:
    if not lines:
        return
    if fmt == "latex":
        out.append(f"% {title}:")
        out.extend(f"%   {ln}" for ln in lines)
    else:
        out.append("")
        out.append(f"{title}:")
        out.extend(f"- {ln}" for ln in lines)


def _ambiguity_lines(cells_with_labels) -> list[str]:
    lines = []
    for where, cell in cells_with_labels:
        if len(cell.groups) > 1:
            keys = sorted({k for g in cell.groups for k in set(g.ident) | set(cell.groups[0].ident)
                           if any(not _equal(g.ident.get(k), cell.groups[0].ident.get(k)) for g in cell.groups)})
            desc = "; ".join(", ".join(f"{k}={fmt_value(g.ident.get(k))}" for k in keys) for g in cell.groups)
            lines.append(f"{where}: {len(cell.groups)} experiments match, differing in {', '.join(keys)} ({desc}); "
                         f"narrow with --where KEY=VALUE")
    return lines


def render_preset(tab: PresetTable, fmt: str = "md", digits: int = 2, paper: bool = False,
                  metric: str = "test_acc_avg", runset: RunSet | None = None) -> str:
    lay = tab.layout
    cols = lay.columns
    shown = {g.key: g for row in tab.cells for c in row for g in c.groups}
    shown.update({g.key: g for _, cs in tab.baselines for c in cs for g in c.groups})
    datasets = sorted({str(g.ident.get("dataset")) for g in shown.values()})
    where_cells = [(f"{lay.rows[r]} / {(cols[c][0] + ' ' if cols[c][0] else '') + cols[c][1]}", tab.cells[r][c])
                   for r in range(len(lay.rows)) for c in range(len(cols))]
    where_cells += [(f"baseline {lab} {lay.rows[r]}", cs[r]) for lab, cs in tab.baselines for r in range(len(cs))]
    info = (f"metric: {metric} at the last evaluation, mean ± sample std over seeds"
            + (f"; datasets matched: {', '.join(datasets)}" if datasets else "; no matching runs")
            + (f"; [paper ...] = {tab.source}" if paper else ""))
    out: list[str] = []
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["table", "row", "column_group", "column", "mean", "std", "n_seeds", "n_expected", "seeds",
                    "unfinished", "failed", "duplicates", "without_metric", "experiments_matched", "text",
                    "paper_mean", "paper_std"])
        rows = [(lay.rows[r], cols[c][0], cols[c][1], tab.cells[r][c]) for r in range(len(lay.rows))
                for c in range(len(cols))]
        rows += [(lay.rows[r], "baseline", lab, cs[r]) for lab, cs in tab.baselines for r in range(len(cs))]
        for row, grp, col, cell in rows:
            st = cell.stats
            num = lambda x: "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(round(x, 10))
            w.writerow([lay.title, row, grp, col, num(st.mean) if st else "", num(st.std) if st else "",
                        st.count if st else 0, st.expected if st else 0,
                        " ".join(map(str, st.seeds)) if st else "", st.unfinished if st else 0,
                        st.failed if st else 0, st.duplicates if st else 0, st.no_metric if st else 0,
                        len(cell.groups), cell.text(digits, "md"),
                        cell.paper[0] if cell.paper else "", cell.paper[1] if cell.paper else ""])
        return buf.getvalue().rstrip("\n")
    if fmt == "md":
        out.append(f"**{lay.title}** {lay.caption}")
        out.append("")
        out.append(f"_{info}_")
        out.append("")
        heads = [f"{g}: {c}" if g else c for g, c in cols]
        out.append(_md_row([lay.corner] + heads))
        out.append(_md_row(["---"] * (len(cols) + 1)))
        for r, lab in enumerate(lay.rows):
            out.append(_md_row([lab] + [tab.cells[r][c].text(digits, "md", paper) for c in range(len(cols))]))
        if tab.baselines:
            out.append("")
            out.append("Baselines (quoted in the paper's caption):")
            for lab, cs in tab.baselines:
                out.append(f"- {lab}: " + "; ".join(f"{lay.rows[r]}: {cs[r].text(digits, 'md', paper)}"
                                                   for r in range(len(cs))))
    elif fmt == "latex":
        spec = "l" + "".join("c" * len(cs) for _, cs in lay.groups)
        caption = "".join("\\" + ch if ch in "{}#%&_" else ch for ch in lay.caption).replace("Ξ", r"$\Xi$")
        out += [f"% {info}", r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}",
                rf"\label{{tab:{lay.name}}}", r"\begin{tabular}{" + spec + "}", r"\toprule"]
        grouped = any(g for g, _ in lay.groups)
        if grouped:
            parts, rules, start = [_tex(lay.corner)], [], 2
            for g, cs in lay.groups:
                parts.append(rf"\multicolumn{{{len(cs)}}}{{c}}{{{_tex(g)}}}")
                rules.append(rf"\cmidrule(lr){{{start}-{start + len(cs) - 1}}}")
                start += len(cs)
            out.append(" & ".join(parts) + r" \\")
            out.append(" ".join(rules))
            out.append(" & ".join([""] + [_tex(c) for _, c in cols]) + r" \\")
        else:
            out.append(" & ".join([_tex(lay.corner)] + [_tex(c) for _, c in cols]) + r" \\")
        out.append(r"\midrule")
        for r, lab in enumerate(lay.rows):
            out.append(" & ".join([_tex(lab)] + [tab.cells[r][c].text(digits, "latex", paper)
                                                 for c in range(len(cols))]) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        for lab, cs in tab.baselines:
            out.append(f"% baseline {lab}: " + "; ".join(f"{lay.rows[r]}: {cs[r].text(digits, 'md', paper)}"
                                                         for r in range(len(cs))))
    else:
        raise ValueError(f"format {fmt!r}: choose md, latex or csv")
    _emit_notes(out, "Ambiguous cells", _ambiguity_lines(where_cells), fmt)
    _emit_notes(out, "Control that did not act as asked", _control_lines(list(shown.values()), runset), fmt)
    _emit_notes(out, "Runs not counted", _notes_for(list(shown.values()), runset, fmt), fmt)
    _emit_notes(out, "Skipped files", _skipped_lines(runset), fmt)
    return "\n".join(out)


def _list_keys(groups: list[Group]) -> list[str]:
    """MAIN_KEYS present, then every other identifying key that differs between the experiments."""
    keys = [k for k in MAIN_KEYS if any(k in g.ident for g in groups)]
    others = sorted({k for g in groups for k in g.ident} - set(keys))
    keys += [k for k in others if any(not _equal(g.ident.get(k), groups[0].ident.get(k)) for g in groups)]
    return keys


def render_groups(groups: list[Group], fmt: str = "md", digits: int = 2, expected: int | None = None,
                  metric: str = "test_acc_avg", runset: RunSet | None = None) -> str:
    """One row per experiment: its config keys, counted seeds, mean ± std with annotations."""
    out: list[str] = []
    if fmt == "csv":
        keys = sorted({k for g in groups for k in g.ident}, key=lambda k: (k not in MAIN_KEYS, k))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(keys + ["metric", "mean", "std", "n_seeds", "n_expected", "seeds", "unfinished", "failed",
                           "duplicates", "without_metric", "text"])
        for g in groups:
            st = g.stats(expected)
            num = lambda x: "" if math.isnan(x) else repr(round(x, 10))
            w.writerow([json.dumps(g.ident.get(k)) if isinstance(g.ident.get(k), list) else g.ident.get(k, "")
                        for k in keys] + [metric, num(st.mean), num(st.std), st.count, st.expected,
                                          " ".join(map(str, st.seeds)), st.unfinished, st.failed,
                                          st.duplicates, st.no_metric, st.text(digits, "md")])
        return buf.getvalue().rstrip("\n")
    keys = _list_keys(groups) if groups else list(MAIN_KEYS)
    head = keys + ["seeds", f"{metric} (mean ± std)"]
    rows = [[fmt_value(g.ident.get(k)) for k in keys]
            + [seeds_cell(g.stats(expected).seeds, fmt), g.stats(expected).text(digits, fmt)]
            for g in groups]
    info = f"{len(groups)} experiment(s); {metric} at the last evaluation, mean ± sample std over seeds"
    if fmt == "md":
        out += [f"_{info}_", "", _md_row(head), _md_row(["---"] * len(head))]
        out += [_md_row(r) for r in rows]
    elif fmt == "latex":
        esc = lambda s: str(s).replace("_", r"\_").replace("#", r"\#").replace("%", r"\%").replace("&", r"\&")
        out += [f"% {info}", r"\begin{tabular}{" + "l" * len(keys) + "lc}", r"\toprule",
                " & ".join(esc(h) for h in head[:-1]) + f" & {esc(metric)}" + r" \\", r"\midrule"]
        out += [" & ".join([esc(x) for x in r[:-1]] + [r[-1]]) + r" \\" for r in rows]
        out += [r"\bottomrule", r"\end{tabular}"]
    else:
        raise ValueError(f"format {fmt!r}: choose md, latex or csv")
    _emit_notes(out, "Control that did not act as asked", _control_lines(groups, runset), fmt)
    _emit_notes(out, "Runs not counted", _notes_for(groups, runset, fmt), fmt)
    _emit_notes(out, "Skipped files", _skipped_lines(runset), fmt)
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="tools/tables.py",
        description="Mean ± std over seeds of a final metric for every experiment found in a directory of "
                    "traces, or laid out as one of the paper's Tables 1-7.")
    ap.add_argument("paths", nargs="+", help="directories searched recursively for *.h5 traces (or trace files)")
    ap.add_argument("--preset", choices=sorted(PRESETS) + ["large_batch", "lr_sweep"],
                    help="lay out the paper's table (rows, columns, headers); large_batch: C-SGD vs D-SGD, "
                         "accuracy, lambda_max and mean Xi per cell (hpc_dsgd/analysis/large_batch.py); lr_sweep: "
                         "accuracy per base_lr of each sweep, the best marked (hpc_dsgd/analysis/lr_sweep.py)")
    ap.add_argument("--format", choices=("md", "latex", "csv"), default="md", help="output format (default md)")
    ap.add_argument("--metric", default="test_acc_avg",
                    help="/epoch/ column taken at the last evaluation row (default test_acc_avg)")
    ap.add_argument("--seeds", type=int, default=None,
                    help="seeds expected per cell; a cell with fewer says how many it has")
    ap.add_argument("--paper", action="store_true", help="print the paper's value beside each cell (presets)")
    ap.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                    help="keep experiments whose config KEY equals VALUE (JSON or bare string); repeatable")
    ap.add_argument("--ignore-key", action="append", default=[], metavar="KEY",
                    help="a further config key that does not identify an experiment; repeatable")
    ap.add_argument("--phase1-epochs", type=int, nargs=3, metavar=("E1", "E2", "E3"),
                    help="Tables 6/7: phase-1 lengths to match (default 150 200 250)")
    ap.add_argument("--later-epochs", type=int, default=150,
                    help="Tables 6/7: epochs of phases 2+3 together, split equally (default 150)")
    ap.add_argument("--digits", type=int, default=2, help="decimals shown (default 2)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.paper and (not args.preset or args.preset in ("large_batch", "lr_sweep")):
        print("hpc_dsgd: error: --paper needs --preset tableN: the paper's values belong to Kong et al.'s tables "
              "(Zhu et al. give their large-batch results as a figure)", file=sys.stderr)
        return 2
    try:
        where = parse_where(args.where)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    runset = load_runs(args.paths[0] if len(args.paths) == 1 else args.paths, args.metric)
    if not runset.runs:
        for s in runset.skipped:
            print(f"skipped {s.path}: {s.reason}", file=sys.stderr)
        print(f"no readable trace under {' '.join(args.paths)} ({len(runset.skipped)} skipped)", file=sys.stderr)
        return 1
    groups = filter_groups(group_runs(runset.runs, frozenset(args.ignore_key)), where)
    if args.preset == "large_batch":
        from . import large_batch

        text = large_batch.render(large_batch.build(groups, args.seeds), args.format, args.digits, runset)
    elif args.preset == "lr_sweep":
        from . import lr_sweep

        text = lr_sweep.render(lr_sweep.build(groups, args.seeds), args.format, args.digits, args.metric, runset, groups)
    elif args.preset:
        opt = {"later_epochs": args.later_epochs}
        if args.phase1_epochs:
            opt["phase1_epochs"] = tuple(args.phase1_epochs)
        tab = build_preset(args.preset, groups, args.seeds, opt)
        text = render_preset(tab, args.format, args.digits, args.paper, args.metric, runset)
    else:
        text = render_groups(groups, args.format, args.digits, args.seeds, args.metric, runset)
    print(text)
    if args.format == "csv" and runset.skipped:
        for s in runset.skipped:
            print(f"skipped {s.path}: {s.reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Learning-rate sweeps, as the paper tunes them (Kong et al. Sec. 4.2, footnote 3): the centralized
(All-Reduce) learning rate is tuned and every decentralized run of a table reuses it; Table 1 and Figure 2
also show a ring with its own fine-tuned rate; Table 4 (SGD without momentum) needs its own.

    python tools/tables.py runs/lr_sweep --preset lr_sweep [--seeds 3] [--format md|latex|csv]

One row per sweep (every identifying key but base_lr: data set, n, topology, policies, momentum, ...), one
column per base_lr, the cell the final test accuracy as mean ± sample std over the counted seeds (the
counting rules of every table: cells.py). The best learning rate of a row is the one with the
highest mean over its counted seeds (ties: the smaller rate); it is marked (**bold** / \\textbf) and named
in the last column. A best rate at the grid's edge (or a row of one rate) is flagged "extend the grid"; a
best among rates with runs not finished says which. Carry the choice into configs/tuned_lr.toml and rerun tools/make_paper_configs.py.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd

from .cells import EMPTY, MAIN_KEYS, CellStats, Experiment, fmt_value, list_keys
from .table import UNTUNED_TITLE, Table, frame, not_counted, num, skipped_lines, tex_escape, untuned_lines


@dataclass
class Sweep:
    ident: dict  # the experiment without base_lr
    cells: dict  # base_lr -> CellStats
    runs: dict | None = None  # base_lr -> the counted runs (rows of the runs frame)

    @property
    def best(self) -> float | None:
        """The rate with the highest mean over its counted (finished) seeds; ties: the smaller rate."""
        done = [(st.mean, -lr, lr) for lr, st in self.cells.items() if st.count]
        return max(done)[2] if done else None

    def label(self, keys) -> str:
        return ", ".join(f"{k}={fmt_value(self.ident.get(k))}" for k in keys)

    def edge(self) -> str | None:
        """Why the best rate does not bracket an optimum: at the grid's smallest or largest rate, or one rate."""
        b, lrs = self.best, sorted(self.cells)
        if b is None:
            return None
        if len(lrs) == 1:
            return f"best base_lr={fmt_value(b)} is the only rate of its grid: nothing brackets it; extend the grid"
        if b in (lrs[0], lrs[-1]):
            side = "smallest" if b == lrs[0] else "largest"
            return (f"best base_lr={fmt_value(b)} is the grid's {side} ({fmt_value(lrs[0])} to {fmt_value(lrs[-1])}): "
                    f"the optimum may lie beyond it; extend the grid")
        return None

    def not_finished(self) -> str | None:
        """The rates with seeds not finished, when the verdict (best) rests on the finished ones only."""
        rest = [f"base_lr={fmt_value(lr)} ({', '.join(st.not_finished)})" for lr, st in sorted(self.cells.items())
                if st.not_finished]
        if not rest:
            return None
        b = "no finished rate" if self.best is None else f"best base_lr={fmt_value(self.best)}"
        return f"{b} among finished runs only; not finished: {'; '.join(rest)}"


def build(exps: list[Experiment], expected: int | None = None) -> list[Sweep]:
    """One Sweep per experiment without base_lr (grouped by that identity), ordered by MAIN_KEYS."""
    rests = [{k: v for k, v in e.ident.items() if k != "base_lr"} for e in exps]
    df = pd.DataFrame({"sweep": [json.dumps(r, sort_keys=True) for r in rests],
                       "lr": [float(e.ident.get("base_lr", math.nan)) for e in exps]})
    sweeps = [Sweep(rests[sub.index[0]], {float(lr): exps[i].stats(expected) for i, lr in sub.lr.items()},
                    {float(lr): exps[i].counted for i, lr in sub.lr.items()})
              for _, sub in df.groupby("sweep", sort=False)]
    return sorted(sweeps, key=lambda s: tuple(json.dumps(s.ident.get(m)) for m in MAIN_KEYS))


def table(sweeps: list[Sweep], df: pd.DataFrame | None = None, digits: int = 2, metric: str = "test_acc_avg",
          exps: list[Experiment] | None = None) -> Table:
    lrs = sorted({lr for s in sweeps for lr in s.cells})
    keys = list_keys([s.ident for s in sweeps]) if sweeps else list(MAIN_KEYS)
    info = (f"{len(sweeps)} sweep(s); {metric} at the last evaluation, mean ± sample std over seeds; "
            "best = highest mean over the counted seeds")
    data = frame([[json.dumps(s.ident.get(k)) if isinstance(s.ident.get(k), list) else s.ident.get(k, "")
                   for k in keys] + [repr(lr), metric, num(st.mean), num(st.std), st.count, " ".join(map(str, st.seeds)),
                                     int(lr == s.best), st.text(digits, "md")]
                  for s in sweeps for lr, st in sorted(s.cells.items())],
                 keys + ["base_lr", "metric", "mean", "std", "n_seeds", "seeds", "best", "text"])

    def cell(s: Sweep, lr: float, fmt: str) -> str:
        st = s.cells.get(lr)
        if st is None:
            return EMPTY[fmt]
        t = st.text(digits, fmt)
        if lr == s.best:
            t = rf"\textbf{{{t}}}" if fmt == "latex" else f"**{t}**"
        return t

    head = keys + [f"base_lr={fmt_value(lr)}" for lr in lrs] + ["best base_lr"]
    rows = [[fmt_value(s.ident.get(k)) for k in keys] + [lambda f, s=s, lr=lr: cell(s, lr, f) for lr in lrs]
            + [fmt_value(s.best) if s.best is not None else (lambda f: EMPTY[f])] for s in sweeps]
    edge = [f"{s.label(keys)}: {s.edge()}" for s in sweeps if s.edge()]
    unfinished = [f"{s.label(keys)}: {s.not_finished()}" for s in sweeps if s.not_finished()]
    untuned = untuned_lines([r for s in sweeps for r in (s.runs or {}).values()])
    skipped = skipped_lines(df) if df is not None else []
    return Table(head, rows, data,
                 head={"md": ["**Learning-rate sweep** (the paper tunes the All-Reduce rate, a ring's fine-tuned rate "
                              "and plain SGD's)", "", f"_{info}_", ""], "latex": [f"% {info}"]},
                 spec="l" * len(keys) + "c" * (len(lrs) + 1), escape=tex_escape, escape_columns=tuple(keys),
                 notes=[("Runs not counted", not_counted(df, exps or []) if df is not None else []),
                        ("Skipped files", skipped), ("Best rates at the grid's edge", edge),
                        ("Verdicts on finished runs only", unfinished), (UNTUNED_TITLE, untuned)],
                 csv_notes=edge + unfinished + untuned)


def chosen(sweeps: list[Sweep]) -> list[tuple[dict, float | None, CellStats | None]]:
    """(sweep identity, best base_lr, its stats) per sweep: what goes into configs/tuned_lr.toml."""
    return [(s.ident, s.best, s.cells.get(s.best) if s.best is not None else None) for s in sweeps]

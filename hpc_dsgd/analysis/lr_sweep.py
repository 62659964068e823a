"""Learning-rate sweeps, as the paper tunes them (Kong et al. Sec. 4.2, footnote 3): the centralized
(All-Reduce) learning rate is tuned and every decentralized run of a table reuses it; Table 1 and Figure 2
also show a ring with its own fine-tuned rate; Table 4 (SGD without momentum) needs its own.

    python tools/tables.py runs/lr_sweep --preset lr_sweep [--seeds 3] [--format md|latex|csv]

One row per sweep (every identifying key but base_lr: data set, n, topology, policies, momentum, ...), one
column per base_lr, the cell the final test accuracy as mean ± sample std over the counted seeds (the
counting rules of every table: tables.group_runs). The best learning rate of a row is the one with the
highest mean over its counted seeds (ties: the smaller rate); it is marked (**bold** / \\textbf) and named
in the last column. Carry the choice into configs/tuned_lr.toml and rerun tools/make_paper_configs.py.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd

from .render import _emit_notes, _list_keys, _notes_for, _skipped_lines, csv_text, frame, latex_rows, markdown, num, tex_escape
from .runs import EMPTY, MAIN_KEYS, CellStats, Group, RunSet, fmt_value


@dataclass
class Sweep:
    ident: dict  # the experiment without base_lr
    cells: dict  # base_lr -> CellStats

    @property
    def best(self) -> float | None:
        done = [(st.mean, -lr, lr) for lr, st in self.cells.items() if st.count]
        return max(done)[2] if done else None


def build(groups: list[Group], expected: int | None = None) -> list[Sweep]:
    """One Sweep per experiment without base_lr (grouped by that identity), ordered by MAIN_KEYS."""
    rests = [{k: v for k, v in g.ident.items() if k != "base_lr"} for g in groups]
    df = pd.DataFrame({"sweep": [json.dumps(r, sort_keys=True) for r in rests],
                       "lr": [float(g.ident.get("base_lr", math.nan)) for g in groups]})
    sweeps = [Sweep(rests[sub.index[0]], {float(lr): groups[i].stats(expected) for i, lr in sub.lr.items()})
              for _, sub in df.groupby("sweep", sort=False)]
    return sorted(sweeps, key=lambda s: tuple(json.dumps(s.ident.get(m)) for m in MAIN_KEYS))


def render(sweeps: list[Sweep], fmt: str = "md", digits: int = 2, metric: str = "test_acc_avg",
           runset: RunSet | None = None, groups: list[Group] | None = None) -> str:
    lrs = sorted({lr for s in sweeps for lr in s.cells})
    keys = _list_keys([Group("", s.ident) for s in sweeps]) if sweeps else list(MAIN_KEYS)
    info = (f"{len(sweeps)} sweep(s); {metric} at the last evaluation, mean ± sample std over seeds; "
            "best = highest mean over the counted seeds")
    out: list[str] = []
    if fmt == "csv":
        body = [[json.dumps(s.ident.get(k)) if isinstance(s.ident.get(k), list) else s.ident.get(k, "") for k in keys]
                + [repr(lr), metric, num(st.mean), num(st.std), st.count, " ".join(map(str, st.seeds)),
                   int(lr == s.best), st.text(digits, "md")]
                for s in sweeps for lr, st in sorted(s.cells.items())]
        return csv_text(frame(body, keys + ["base_lr", "metric", "mean", "std", "n_seeds", "seeds", "best", "text"]))

    def cell(s: Sweep, lr: float) -> str:
        st = s.cells.get(lr)
        if st is None:
            return EMPTY[fmt]
        t = st.text(digits, fmt)
        if lr == s.best:
            t = rf"\textbf{{{t}}}" if fmt == "latex" else f"**{t}**"
        return t

    head = keys + [f"base_lr={fmt_value(lr)}" for lr in lrs] + ["best base_lr"]
    rows = [[fmt_value(s.ident.get(k)) for k in keys] + [cell(s, lr) for lr in lrs]
            + [fmt_value(s.best) if s.best is not None else EMPTY[fmt]] for s in sweeps]
    table = frame(rows, head)
    if fmt == "md":
        out += ["**Learning-rate sweep** (the paper tunes the All-Reduce rate, a ring's fine-tuned rate and "
                "plain SGD's)", "", f"_{info}_", ""] + markdown(table)
    elif fmt == "latex":
        out += [f"% {info}", r"\begin{tabular}{" + "l" * len(keys) + "c" * (len(lrs) + 1) + "}", r"\toprule",
                " & ".join(tex_escape(h) for h in head) + r" \\", r"\midrule"]
        out += latex_rows(table, tex_escape, keys)
        out += [r"\bottomrule", r"\end{tabular}"]
    else:
        raise ValueError(f"format {fmt!r}: choose md, latex or csv")
    _emit_notes(out, "Runs not counted", _notes_for(groups or [], runset, fmt), fmt)
    _emit_notes(out, "Skipped files", _skipped_lines(runset), fmt)
    return "\n".join(out)


def chosen(sweeps: list[Sweep]) -> list[tuple[dict, float | None, CellStats | None]]:
    """(sweep identity, best base_lr, its stats) per sweep: what goes into configs/tuned_lr.toml."""
    return [(s.ident, s.best, s.cells.get(s.best) if s.best is not None else None) for s in sweeps]

"""One table model and one writer per format. A `Table` is what every preset builds (the flat table of
experiments, the paper's Tables 1-7, large_batch, lr_sweep): its columns, its rows of cells, its data for CSV,
the lines around its grid, and its notes; `write(table, fmt)` turns it into Markdown, LaTeX or CSV.

Notes are (title, lines): Markdown writes them as a list under the table, LaTeX as comments after it. CSV is the
table's data only; the notes that change a verdict (untuned learning rates, a best rate at a grid's edge, a
verdict with runs not finished) follow it as `# ` comment lines (read it with `pandas.read_csv(f, comment="#")`).
The note builders every preset shares are here too: runs not counted, control that did not act, skipped files,
the untuned line, and the departures from the paper (departures.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from .departures import DEPARTURES
from .runs import rel

FORMATS = ("md", "latex", "csv")


@dataclass
class Table:
    """columns and rows (a cell is text, or a function of the format giving it); data: the CSV form; head and
    tail: lines before and after the grid per format ("md", "latex": after \\end{tabular}); LaTeX: the column
    spec, the header lines (None: the column names, escaped) and which columns' cells `escape` applies to (None:
    every column); notes: [(title, lines)]; csv_notes: verdict lines written after the CSV as comments."""

    columns: list[str]
    rows: list[list]
    data: pd.DataFrame
    head: dict = field(default_factory=dict)
    tail: dict = field(default_factory=dict)
    spec: str = ""
    tex_header: list[str] | None = None
    escape: Callable | None = None
    escape_columns: tuple | None = None
    empty_row: bool = False  # Markdown: one row of dashes when the table has no row
    notes: list[tuple[str, list[str]]] = field(default_factory=list)
    csv_notes: list[str] = field(default_factory=list)

    def cells(self, fmt: str) -> list[list[str]]:
        return [[c(fmt) if callable(c) else c for c in row] for row in self.rows]


EMPTY_CELL = {"md": "—", "latex": "---", "csv": ""}


def frame(rows, columns) -> pd.DataFrame:
    """A table's data: rows of values (kept as given: text, numbers, None) under `columns`."""
    return pd.DataFrame(list(rows), columns=list(columns), dtype=object)


def num(x) -> str:
    """A statistic for CSV: '' for none or NaN, else repr rounded to 10 decimals."""
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(round(x, 10))


def tex_escape(s) -> str:
    """Text for LaTeX: _ # % & escaped."""
    return str(s).replace("_", r"\_").replace("#", r"\#").replace("%", r"\%").replace("&", r"\&")


def _md_row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _notes(t: Table, fmt: str) -> list[str]:
    out = []
    for title, lines in t.notes:
        if not lines:
            continue
        if fmt == "latex":
            out += [f"% {title}:"] + [f"%   {ln}" for ln in lines]
        else:
            out += ["", f"{title}:"] + [f"- {ln}" for ln in lines]
    return out


def markdown(t: Table) -> str:
    body = [_md_row(t.columns), _md_row(["---"] * len(t.columns))] + [_md_row(r) for r in t.cells("md")]
    if t.empty_row and not t.rows:
        body.append(_md_row([EMPTY_CELL["md"]] * len(t.columns)))
    return "\n".join(t.head.get("md", []) + body + t.tail.get("md", []) + _notes(t, "md"))


def latex(t: Table) -> str:
    esc = set(t.columns if t.escape_columns is None else t.escape_columns) if t.escape else set()
    header = t.tex_header if t.tex_header is not None else \
        [" & ".join((t.escape or str)(h) for h in t.columns) + r" \\"]
    rows = [" & ".join(t.escape(x) if t.columns[j] in esc else str(x) for j, x in enumerate(r)) + r" \\"
            for r in t.cells("latex")]
    body = [r"\begin{tabular}{" + t.spec + "}", r"\toprule"] + header + [r"\midrule"] + rows + \
        [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(t.head.get("latex", []) + body + t.tail.get("latex", []) + _notes(t, "latex"))


def csv(t: Table) -> str:
    """CSV (header, then rows; minimal quoting, '\\n' line ends, no trailing newline; None written empty), then
    the verdict notes as '# ' lines."""
    text = t.data.to_csv(index=False, lineterminator="\n").rstrip("\n")
    return "\n".join([text] + [f"# {ln}" for ln in t.csv_notes])


WRITERS = {"md": markdown, "latex": latex, "csv": csv}


def write(t: Table, fmt: str) -> str:
    if fmt not in WRITERS:
        raise ValueError(f"format {fmt!r}: choose md, latex or csv")
    return WRITERS[fmt](t)


# ------------------------------------------------------------------------------------------------
# Notes every preset shares
# ------------------------------------------------------------------------------------------------
def not_counted(df: pd.DataFrame, exps) -> list[str]:
    return [f"{rel(df, path)} (seed {seed}): {note}" for e in exps
            for path, seed, note, counted in zip(e.runs.path, e.runs.seed, e.runs.note, e.runs.counted) if not counted]


def control_lines(df: pd.DataFrame, exps) -> list[str]:
    return [f"{rel(df, path)} (seed {seed}): {text}" for e in exps
            for path, seed, control, counted in zip(e.runs.path, e.runs.seed, e.runs.control, e.runs.counted)
            if counted for _, text in control]


def skipped_lines(df: pd.DataFrame) -> list[str]:
    return [f"{rel(df, p)}: {reason}" for p, reason in df.attrs.get("skipped", [])]


UNTUNED_TITLE = "Learning rates"


def untuned_lines(cells) -> list[str]:
    """One line when any cell rests on a run whose learning rate is an untuned guess (`lr_origin` starting with
    "untuned"): how many cells and runs, and the reasons given. `cells`: per cell the frame of its counted runs."""
    hit = [[(p, o) for p, o in zip(c.path, c.lr_origin) if o.startswith("untuned")] for c in cells]
    hit = [h for h in hit if h]
    if not hit:
        return []
    runs = dict(x for h in hit for x in h)
    why = sorted(set(runs.values()))
    shown = "; ".join(why[:3]) + (f"; and {len(why) - 3} more" if len(why) > 3 else "")
    return [f"{len(hit)} cell{'s' if len(hit) > 1 else ''} rest{'s' if len(hit) == 1 else ''} on {len(runs)} "
            f"run{'s' if len(runs) > 1 else ''} whose learning rate is untuned, a guess rather than the result of a "
            f"finished sweep ({shown}): run the sweep, then `campaign report ... --write-tuned`"]


def departure_notes() -> list[tuple[str, list[str]]]:
    return [("Departures from the paper", list(DEPARTURES))]

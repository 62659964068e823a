"""Rendering tables as Markdown, LaTeX or CSV, with the notes under them (ambiguous cells, control that did not
act as asked, runs not counted, skipped files).

A table's body is a DataFrame of cell texts (one column per table column); `markdown`, `latex_rows` and
`csv_text` write any such DataFrame. `render_groups` (one row per experiment) and `render_preset` (a paper
table) build theirs from grouped runs; large_batch and lr_sweep use the same writers and notes.
"""
from __future__ import annotations

import json
import math

import pandas as pd

from .presets import PresetTable
from .runs import MAIN_KEYS, Group, RunSet, _equal, fmt_value, seeds_cell


def _tex(label: str) -> str:
    """The paper's LaTeX for a label: 'n=32' -> '$n=32$', '1/2 Ξ_max' -> '$1/2 \\Xi_{\\max}$'."""
    import re

    s = label.replace("#", r"\#").replace(" \\ ", r" $\backslash$ ")
    s = re.sub(r"((?:\d+/\d+|0) )?Ξ_max", lambda m: "$" + (m.group(1) or "") + r"\Xi_{\max}$", s)
    s = s.replace("Ξ", r"$\Xi$")
    return re.sub(r"^n=(\d+)$", r"$n=\1$", s)


def _md_row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def frame(rows, columns) -> pd.DataFrame:
    """A table body: rows of cells (kept as given: text, numbers, None) under `columns`."""
    return pd.DataFrame(list(rows), columns=list(columns), dtype=object)


def markdown(df: pd.DataFrame) -> list[str]:
    """Markdown lines: the header (column names), the rule, one line per row; '|' in a cell is escaped."""
    return [_md_row(df.columns), _md_row(["---"] * df.shape[1])] + \
        [_md_row(r) for r in df.itertuples(index=False, name=None)]


def latex_rows(df: pd.DataFrame, escape=None, columns=()) -> list[str]:
    """LaTeX tabular lines, one per row: cells joined by ' & ', then ' \\\\'; `escape` is applied to the cells
    of `columns` (names; every column if none are given)."""
    esc = set(columns or df.columns) if escape else set()
    cols = list(df.columns)
    return [" & ".join(escape(x) if cols[j] in esc else str(x) for j, x in enumerate(r)) + r" \\"
            for r in df.itertuples(index=False, name=None)]


def csv_text(df: pd.DataFrame) -> str:
    """CSV (header, then rows; minimal quoting, '\\n' line ends, no trailing newline; None written empty)."""
    return df.to_csv(index=False, lineterminator="\n").rstrip("\n")


def num(x) -> str:
    """A statistic for CSV: '' for none or NaN, else repr rounded to 10 decimals."""
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(round(x, 10))


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
        rows = [(lay.rows[r], cols[c][0], cols[c][1], tab.cells[r][c]) for r in range(len(lay.rows))
                for c in range(len(cols))]
        rows += [(lay.rows[r], "baseline", lab, cs[r]) for lab, cs in tab.baselines for r in range(len(cs))]
        body = []
        for row, grp, col, cell in rows:
            st = cell.stats
            body.append([lay.title, row, grp, col, num(st.mean) if st else "", num(st.std) if st else "",
                         st.count if st else 0, st.expected if st else 0,
                         " ".join(map(str, st.seeds)) if st else "", st.unfinished if st else 0,
                         st.failed if st else 0, st.duplicates if st else 0, st.no_metric if st else 0,
                         len(cell.groups), cell.text(digits, "md"),
                         cell.paper[0] if cell.paper else "", cell.paper[1] if cell.paper else ""])
        return csv_text(frame(body, ["table", "row", "column_group", "column", "mean", "std", "n_seeds",
                                     "n_expected", "seeds", "unfinished", "failed", "duplicates", "without_metric",
                                     "experiments_matched", "text", "paper_mean", "paper_std"]))
    if fmt == "md":
        out.append(f"**{lay.title}** {lay.caption}")
        out.append("")
        out.append(f"_{info}_")
        out.append("")
        heads = [f"{g}: {c}" if g else c for g, c in cols]
        out += markdown(frame(([lab] + [tab.cells[r][c].text(digits, "md", paper) for c in range(len(cols))]
                               for r, lab in enumerate(lay.rows)), [lay.corner] + heads))
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
        out += latex_rows(frame(([_tex(lab)] + [tab.cells[r][c].text(digits, "latex", paper)
                                               for c in range(len(cols))] for r, lab in enumerate(lay.rows)),
                                range(len(cols) + 1)))
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


def tex_escape(s) -> str:
    """Text for LaTeX: _ # % & escaped."""
    return str(s).replace("_", r"\_").replace("#", r"\#").replace("%", r"\%").replace("&", r"\&")


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
        body = []
        for g in groups:
            st = g.stats(expected)
            body.append([json.dumps(g.ident.get(k)) if isinstance(g.ident.get(k), list) else g.ident.get(k, "")
                         for k in keys] + [metric, num(st.mean), num(st.std), st.count, st.expected,
                                           " ".join(map(str, st.seeds)), st.unfinished, st.failed,
                                           st.duplicates, st.no_metric, st.text(digits, "md")])
        return csv_text(frame(body, keys + ["metric", "mean", "std", "n_seeds", "n_expected", "seeds", "unfinished",
                                            "failed", "duplicates", "without_metric", "text"]))
    keys = _list_keys(groups) if groups else list(MAIN_KEYS)
    head = keys + ["seeds", f"{metric} (mean ± std)"]
    table = frame(([fmt_value(g.ident.get(k)) for k in keys]
                   + [seeds_cell(g.stats(expected).seeds, fmt), g.stats(expected).text(digits, fmt)]
                   for g in groups), head)
    info = f"{len(groups)} experiment(s); {metric} at the last evaluation, mean ± sample std over seeds"
    if fmt == "md":
        out += [f"_{info}_", ""] + markdown(table)
    elif fmt == "latex":
        out += [f"% {info}", r"\begin{tabular}{" + "l" * len(keys) + "lc}", r"\toprule",
                " & ".join(tex_escape(h) for h in head[:-1]) + f" & {tex_escape(metric)}" + r" \\", r"\midrule"]
        out += latex_rows(table, tex_escape, head[:-1])
        out += [r"\bottomrule", r"\end{tabular}"]
    else:
        raise ValueError(f"format {fmt!r}: choose md, latex or csv")
    _emit_notes(out, "Control that did not act as asked", _control_lines(groups, runset), fmt)
    _emit_notes(out, "Runs not counted", _notes_for(groups, runset, fmt), fmt)
    _emit_notes(out, "Skipped files", _skipped_lines(runset), fmt)
    return "\n".join(out)

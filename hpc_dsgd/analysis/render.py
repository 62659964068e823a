"""The flat table (one row per experiment) and the paper's Tables 1-7 as `Table`s (table.py writes them), with
their notes: ambiguous cells, control that did not act as asked, runs not counted, skipped files, untuned
learning rates, the all-ring run's alternative reference for dec-phase-k target cells, and under `--paper` the
departures from the paper."""
from __future__ import annotations

import json
import re

import pandas as pd

from .cells import MAIN_KEYS, Experiment, equal, fmt_value, list_keys, seeds_cell
from .presets import FACTOR_LABEL, PresetTable
from .runs import LATE_FRACTION
from .table import UNTUNED_TITLE, Table, control_lines, departure_notes, frame, not_counted, num, skipped_lines, tex_escape, untuned_lines


def _tex(label: str) -> str:
    """The paper's LaTeX for a label: 'n=32' -> '$n=32$', '1/2 Ξ_max' -> '$1/2 \\Xi_{\\max}$'."""
    s = label.replace("#", r"\#").replace(" \\ ", r" $\backslash$ ")
    s = re.sub(r"((?:\d+/\d+|0) )?Ξ_max", lambda m: "$" + (m.group(1) or "") + r"\Xi_{\max}$", s)
    s = s.replace("Ξ", r"$\Xi$")
    return re.sub(r"^n=(\d+)$", r"$n=\1$", s)


# ------------------------------------------------------------------------------------------------
# The flat table
# ------------------------------------------------------------------------------------------------
def flat_table(df: pd.DataFrame, exps: list[Experiment], expected: int | None = None, digits: int = 2,
               metric: str = "test_acc_avg") -> Table:
    """One row per experiment: its config keys, counted seeds, mean ± std with annotations."""
    stats = [e.stats(expected) for e in exps]
    keys_csv = sorted({k for e in exps for k in e.ident}, key=lambda k: (k not in MAIN_KEYS, k))
    data = frame(([json.dumps(e.ident.get(k)) if isinstance(e.ident.get(k), list) else e.ident.get(k, "")
                   for k in keys_csv] + [metric, num(st.mean), num(st.std), st.count, st.expected,
                                         " ".join(map(str, st.seeds)), st.unfinished, st.failed, st.duplicates,
                                         st.no_metric, st.text(digits, "md")] for e, st in zip(exps, stats)),
                 keys_csv + ["metric", "mean", "std", "n_seeds", "n_expected", "seeds", "unfinished", "failed",
                             "duplicates", "without_metric", "text"])
    keys = list_keys([e.ident for e in exps]) if exps else list(MAIN_KEYS)
    head = keys + ["seeds", f"{metric} (mean ± std)"]
    rows = [[fmt_value(e.ident.get(k)) for k in keys]
            + [lambda f, st=st: seeds_cell(st.seeds, f), lambda f, st=st: st.text(digits, f)]
            for e, st in zip(exps, stats)]
    info = f"{len(exps)} experiment(s); {metric} at the last evaluation, mean ± sample std over seeds"
    untuned = untuned_lines([e.counted for e in exps])
    return Table(head, rows, data, head={"md": [f"_{info}_", ""], "latex": [f"% {info}"]},
                 spec="l" * len(keys) + "lc", escape=tex_escape, escape_columns=tuple(head[:-1]),
                 tex_header=[" & ".join(tex_escape(h) for h in head[:-1]) + f" & {tex_escape(metric)}" + r" \\"],
                 notes=[("Control that did not act as asked", control_lines(df, exps)),
                        ("Runs not counted", not_counted(df, exps)), ("Skipped files", skipped_lines(df)),
                        (UNTUNED_TITLE, untuned)], csv_notes=untuned)


# ------------------------------------------------------------------------------------------------
# The paper's tables
# ------------------------------------------------------------------------------------------------
def ambiguity_lines(cells_with_labels) -> list[str]:
    lines = []
    for where, cell in cells_with_labels:
        if len(cell.exps) > 1:
            first = cell.exps[0].ident
            keys = sorted({k for e in cell.exps for k in set(e.ident) | set(first)
                           if any(not equal(x.ident.get(k), first.get(k)) for x in cell.exps)})
            desc = "; ".join(", ".join(f"{k}={fmt_value(e.ident.get(k))}" for k in keys) for e in cell.exps)
            lines.append(f"{where}: {len(cell.exps)} experiments match, differing in {', '.join(keys)} ({desc}); "
                         f"narrow with --where KEY=VALUE")
    return lines


CONTROL_KEYS = ("policies", "target_factors", "control_signal", "max_gossip_steps", "phi_ema_beta")
ALT_TITLE = (f"Alternative reference (the all-ring run, gossip in every phase, same experiment otherwise: its "
             f"phase-k maximum of Ξ after the first E = {LATE_FRACTION:.0%} of the phase's epochs)").replace("%", " %")


def _all_ring(exp: Experiment, exps: list[Experiment]) -> Experiment | None:
    """The all-ring run of a dec-phase-k experiment: gossip in every phase, every other identifying key equal."""
    rest = {k: v for k, v in exp.ident.items() if k not in CONTROL_KEYS}
    for e in exps:
        pols = e.ident.get("policies") or []
        if pols and all(p == "gossip" for p in pols) and len(pols) == len(exp.ident.get("policies") or []) and \
                {k: v for k, v in e.ident.items() if k not in CONTROL_KEYS} == rest:
            return e
    return None


def alternative_lines(tab: PresetTable, exps: list[Experiment], dec_phase) -> list[str]:
    """Per dec-phase-k target cell with a value, when the all-ring run is among the traces: the reference the
    cell's runs used (their /phase/ target over the factor, mean over seeds) and the all-ring run's phase-k
    maximum of Ξ after the first E epochs of the phase (mean over its counted seeds). A cell whose runs recorded
    no target (no /phase/target column) gives no line: there is nothing to compare."""
    lines = []
    lay = tab.layout
    for r, row in enumerate(tab.cells):
        for c, cell in enumerate(row):
            k, f = dec_phase[c]
            if f >= 1.0 or cell.runs is None or not len(cell.runs):
                continue
            ring = _all_ring(cell.exps[0], exps)
            late = [x.get(k) for x in ring.counted.xi_late] if ring is not None else []
            late = [x for x in late if x is not None]
            used = [t[k] / f for t in cell.runs.targets if k in t]
            if not late or not used:  # traces without /phase/target (fabricated ones) cannot compare the readings
                continue
            ref = f"{pd.Series(used).mean():.4g}"
            lines.append(f"{lay.rows[r]} / dec-phase-{k} {FACTOR_LABEL.get(f, f'{f:g} Ξ_max')}: reference Ξ_max used "
                         f"{ref} (the dec-phase-{k} experiment's uncontrolled run: the reading the configs use); the "
                         f"all-ring run's phase-{k} maximum after the first E of the phase: "
                         f"{pd.Series(late).mean():.4g} (the alternative reading; {len(late)} seed"
                         f"{'s' if len(late) > 1 else ''})")
    return lines


def preset_table(tab: PresetTable, df: pd.DataFrame, exps: list[Experiment], digits: int = 2, paper: bool = False,
                 metric: str = "test_acc_avg", dec_phase=None) -> Table:
    lay = tab.layout
    cols = lay.columns
    shown = {e.key: e for row in tab.cells for c in row for e in c.exps}
    shown.update({e.key: e for _, cs in tab.baselines for c in cs for e in c.exps})
    shown = list(shown.values())
    datasets = sorted({str(e.ident.get("dataset")) for e in shown})
    where_cells = [(f"{lay.rows[r]} / {(cols[c][0] + ' ' if cols[c][0] else '') + cols[c][1]}", tab.cells[r][c])
                   for r in range(len(lay.rows)) for c in range(len(cols))]
    where_cells += [(f"baseline {lab} {lay.rows[r]}", cs[r]) for lab, cs in tab.baselines for r in range(len(cs))]
    info = (f"metric: {metric} at the last evaluation, mean ± sample std over seeds"
            + (f"; datasets matched: {', '.join(datasets)}" if datasets else "; no matching runs")
            + (f"; [paper ...] = {tab.source}" if paper else ""))
    cells = [c for _, c in where_cells]
    # CSV: one row per cell
    body = []
    for row, grp, col, cell in [(lay.rows[r], cols[c][0], cols[c][1], tab.cells[r][c]) for r in range(len(lay.rows))
                                for c in range(len(cols))] + \
            [(lay.rows[r], "baseline", lab, cs[r]) for lab, cs in tab.baselines for r in range(len(cs))]:
        st = cell.stats
        body.append([lay.title, row, grp, col, num(st.mean) if st else "", num(st.std) if st else "",
                     st.count if st else 0, st.expected if st else 0, " ".join(map(str, st.seeds)) if st else "",
                     st.unfinished if st else 0, st.failed if st else 0, st.duplicates if st else 0,
                     st.no_metric if st else 0, len(cell.exps), cell.text(digits, "md"),
                     cell.paper[0] if cell.paper else "", cell.paper[1] if cell.paper else ""])
    data = frame(body, ["table", "row", "column_group", "column", "mean", "std", "n_seeds", "n_expected", "seeds",
                        "unfinished", "failed", "duplicates", "without_metric", "experiments_matched", "text",
                        "paper_mean", "paper_std"])
    heads = [f"{g}: {c}" if g else c for g, c in cols]
    rows = [[{"md": lab, "latex": _tex(lab)}.get] + [lambda f, cl=tab.cells[r][c]: cl.text(digits, f, paper)
                                                     for c in range(len(cols))] for r, lab in enumerate(lay.rows)]
    md_tail = []
    if tab.baselines:
        md_tail += ["", "Baselines (quoted in the paper's caption):"]
        md_tail += [f"- {lab}: " + "; ".join(f"{lay.rows[r]}: {cs[r].text(digits, 'md', paper)}"
                                            for r in range(len(cs))) for lab, cs in tab.baselines]
    spec = "l" + "".join("c" * len(cs) for _, cs in lay.groups)
    caption = "".join("\\" + ch if ch in "{}#%&_" else ch for ch in lay.caption).replace("Ξ", r"$\Xi$")
    if any(g for g, _ in lay.groups):
        parts, rules, start = [_tex(lay.corner)], [], 2
        for g, cs in lay.groups:
            parts.append(rf"\multicolumn{{{len(cs)}}}{{c}}{{{_tex(g)}}}")
            rules.append(rf"\cmidrule(lr){{{start}-{start + len(cs) - 1}}}")
            start += len(cs)
        header = [" & ".join(parts) + r" \\", " ".join(rules), " & ".join([""] + [_tex(c) for _, c in cols]) + r" \\"]
    else:
        header = [" & ".join([_tex(lay.corner)] + [_tex(c) for _, c in cols]) + r" \\"]
    untuned = untuned_lines([c.runs for c in cells if c.runs is not None])
    notes = [("Ambiguous cells", ambiguity_lines(where_cells)), ("Control that did not act as asked",
                                                                 control_lines(df, shown)),
             ("Runs not counted", not_counted(df, shown)), ("Skipped files", skipped_lines(df)),
             (UNTUNED_TITLE, untuned), (ALT_TITLE, alternative_lines(tab, exps, dec_phase) if dec_phase else [])]
    return Table([lay.corner] + heads, rows, data,
                 head={"md": [f"**{lay.title}** {lay.caption}", "", f"_{info}_", ""],
                       "latex": [f"% {info}", r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}",
                                 rf"\label{{tab:{lay.name}}}"]},
                 tail={"md": md_tail, "latex": [r"\end{table}"] + [
                     f"% baseline {lab}: " + "; ".join(f"{lay.rows[r]}: {cs[r].text(digits, 'md', paper)}"
                                                       for r in range(len(cs))) for lab, cs in tab.baselines]},
                 spec=spec, tex_header=header, notes=notes + (departure_notes() if paper else []),
                 csv_notes=untuned)

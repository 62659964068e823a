"""The large-batch study (Zhu et al., "Would decentralization hurt generalization?", Figure 1): C-SGD
against D-SGD on a ring and on the exponential graph, per (data set, n, local batch); per cell the final
test accuracy of the averaged model, lambda_max of the averaged model at the run's last sharpness
measurement, and the mean consensus distance Xi over the run's measured iterations, each as mean ±
sample std over the counted seeds (the same counting rules as every table: tables.group_runs).

    python tools/tables.py runs/ --preset large_batch [--seeds 3] [--format md|latex|csv]
"""
from __future__ import annotations

import math

import h5py
import numpy as np

from .render import _emit_notes, _md_row, _notes_for, _skipped_lines, csv_text, frame, markdown, num
from .runs import EMPTY, CellStats, Group, RunSet

METHODS = ("C-SGD", "D-SGD ring", "D-SGD exponential")


def method_of(cfg: dict) -> str | None:
    """C-SGD: csgd in every phase; D-SGD: plain gossip in every phase on a ring / the exponential graph."""
    pols = set(cfg.get("policies") or [])
    if pols == {"csgd"}:
        return "C-SGD"
    if pols == {"gossip"} and cfg.get("topology") in ("ring", "exponential"):
        return f"D-SGD {cfg['topology']}"
    return None


def run_extras(path: str) -> tuple[float, float]:
    """(lambda_max of the averaged model at the last /sharpness row, mean of /iter/xi over measured
    iterations); NaN where the trace has none."""
    lam, xi = math.nan, math.nan
    with h5py.File(path, "r") as f:
        sh = f.get("sharpness")
        if sh is not None and "lambda_max" in sh and "replica" in sh:
            rep, lm = sh["replica"][()], sh["lambda_max"][()]
            sel = np.flatnonzero(rep < 0)
            if len(sel):
                lam = float(lm[sel[-1]])
        it = f.get("iter")
        if it is not None and "xi" in it:
            x = it["xi"][()]
            x = x[np.isfinite(x)]
            xi = float(x.mean()) if len(x) else math.nan
    return lam, xi


def _stats(values, seeds, expected) -> CellStats:
    keep = [(s, v) for s, v in zip(seeds, values) if math.isfinite(v)]
    return CellStats(values=[v for _, v in keep], seeds=[s for s, _ in keep], expected=expected)


def build(groups: list[Group], expected: int | None = None) -> list[dict]:
    """One row per (dataset, n, batch_size, method) with a matching experiment."""
    cells: dict[tuple, list[Group]] = {}
    for g in groups:
        m = method_of(g.ident)
        if m is None:
            continue
        key = (str(g.ident.get("dataset")), int(g.ident.get("n", 0)), int(g.ident.get("batch_size", 0)), m)
        cells.setdefault(key, []).append(g)
    rows = []
    for key in sorted(cells, key=lambda k: (k[0], k[1], k[2], METHODS.index(k[3]))):
        gs = cells[key]
        row = dict(zip(("dataset", "n", "batch_size", "method"), key), groups=gs)
        if len(gs) == 1:
            g = gs[0]
            acc = g.stats(expected)
            counted = sorted((r for r in g.runs if r.counted), key=lambda r: r.seed)
            extras = [run_extras(r.path) for r in counted]
            seeds = [r.seed for r in counted]
            exp = acc.expected
            row.update(acc=acc, lam=_stats([e[0] for e in extras], seeds, exp),
                       xi=_stats([e[1] for e in extras], seeds, exp))
        rows.append(row)
    return rows


def render(rows: list[dict], fmt: str = "md", digits: int = 2, runset: RunSet | None = None) -> str:
    head = ["data set", "n", "local batch (global)", "method", "test acc. (%)", "lambda_max (avg. model)",
            "mean Xi", "seeds"]
    out: list[str] = []

    def cell(row, k, dg):
        if len(row["groups"]) > 1:
            return f"ambiguous: {len(row['groups'])} experiments"
        return row[k].text(dg, fmt)

    body = [[r["dataset"], str(r["n"]), f"{r['batch_size']} ({r['n'] * r['batch_size']})", r["method"],
             cell(r, "acc", digits), cell(r, "lam", 3), cell(r, "xi", 3),
             ",".join(map(str, r["acc"].seeds)) if "acc" in r else ""] for r in rows]
    info = ("Large-batch study (Zhu et al., Fig. 1): final test accuracy of the averaged model, lambda_max of the "
            "training-loss Hessian at the averaged model (last sharpness measurement), mean consensus distance "
            "Xi over the measured iterations; mean ± sample std over seeds")
    if fmt == "csv":
        table = []
        for r in rows:
            ok = "acc" in r
            stats = [x for k in ("acc", "lam", "xi") for x in (num(r[k].mean), num(r[k].std))] if ok else [""] * 6
            table.append([r["dataset"], r["n"], r["batch_size"], r["method"]] + stats
                         + [r["acc"].count if ok else 0, " ".join(map(str, r["acc"].seeds)) if ok else "",
                            len(r["groups"])])
        return csv_text(frame(table, ["dataset", "n", "batch_size", "method", "acc_mean", "acc_std",
                                      "lambda_max_mean", "lambda_max_std", "xi_mean", "xi_std", "n_seeds", "seeds",
                                      "experiments_matched"]))
    if fmt == "md":
        out += [f"_{info}_", ""] + markdown(frame(body, head))
        out += [] if body else [_md_row([EMPTY[fmt]] * len(head))]
    elif fmt == "latex":
        def esc(s) -> str:
            return str(s).replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$")

        out += [f"% {info}", r"\begin{tabular}{llllccc l}", r"\toprule",
                " & ".join(esc(h) for h in head).replace("lambda\\_max", r"$\lambda_{\max}$").replace("Xi", r"$\Xi$")
                + r" \\", r"\midrule"]
        out += [" & ".join(esc(x) for x in b) + r" \\" for b in body]
        out += [r"\bottomrule", r"\end{tabular}"]
    else:
        raise ValueError(f"format {fmt!r}: choose md, latex or csv")
    shown = [g for r in rows for g in r["groups"]]
    _emit_notes(out, "Runs not counted", _notes_for(shown, runset, fmt), fmt)
    _emit_notes(out, "Skipped files", _skipped_lines(runset), fmt)
    return "\n".join(out)

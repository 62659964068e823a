"""The large-batch study (Zhu et al., "Would decentralization hurt generalization?", Figure 1): C-SGD
against D-SGD on a ring and on the exponential graph, per (data set, n, local batch); per cell the final
test accuracy of the averaged model, lambda_max of the averaged model at the run's last sharpness
measurement, and the mean consensus distance Xi over the run's measured iterations, each as mean ±
sample std over the counted seeds (the same counting rules as every table: cells.py).

    python tools/tables.py runs/ --preset large_batch [--seeds 3] [--format md|latex|csv]
"""
from __future__ import annotations

import pandas as pd

from .cells import Experiment, finite_stats
from .table import UNTUNED_TITLE, Table, frame, not_counted, num, skipped_lines, untuned_lines

METHODS = ("C-SGD", "D-SGD ring", "D-SGD exponential")


def method_of(cfg: dict) -> str | None:
    """C-SGD: csgd in every phase; D-SGD: plain gossip in every phase on a ring / the exponential graph."""
    pols = set(cfg.get("policies") or [])
    if pols == {"csgd"}:
        return "C-SGD"
    if pols == {"gossip"} and cfg.get("topology") in ("ring", "exponential"):
        return f"D-SGD {cfg['topology']}"
    return None


def build(exps: list[Experiment], expected: int | None = None) -> list[dict]:
    """One row per (dataset, n, batch_size, method) with a matching experiment; lambda_max and mean Xi are the
    runs frame's columns (read with the trace, not again)."""
    cells: dict[tuple, list[Experiment]] = {}
    for e in exps:
        m = method_of(e.ident)
        if m is None:
            continue
        key = (str(e.ident.get("dataset")), int(e.ident.get("n", 0)), int(e.ident.get("batch_size", 0)), m)
        cells.setdefault(key, []).append(e)
    rows = []
    for key in sorted(cells, key=lambda k: (k[0], k[1], k[2], METHODS.index(k[3]))):
        es = cells[key]
        row = dict(zip(("dataset", "n", "batch_size", "method"), key), exps=es)
        if len(es) == 1:
            acc = es[0].stats(expected)
            counted = es[0].counted.sort_values("seed", kind="stable")
            seeds = [int(s) for s in counted.seed]
            row.update(acc=acc, lam=finite_stats(list(counted.lambda_max), seeds, acc.expected),
                       xi=finite_stats(list(counted.xi_mean), seeds, acc.expected), runs=counted)
        rows.append(row)
    return rows


def _esc(s) -> str:
    return str(s).replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$")


def table(rows: list[dict], df: pd.DataFrame, digits: int = 2) -> Table:
    head = ["data set", "n", "local batch (global)", "method", "test acc. (%)", "lambda_max (avg. model)",
            "mean Xi", "seeds"]

    def cell(row, k, dg):
        if len(row["exps"]) > 1:
            return f"ambiguous: {len(row['exps'])} experiments"
        return lambda f: row[k].text(dg, f)

    body = [[r["dataset"], str(r["n"]), f"{r['batch_size']} ({r['n'] * r['batch_size']})", r["method"],
             cell(r, "acc", digits), cell(r, "lam", 3), cell(r, "xi", 3),
             ",".join(map(str, r["acc"].seeds)) if "acc" in r else ""] for r in rows]
    info = ("Large-batch study (Zhu et al., Fig. 1): final test accuracy of the averaged model, lambda_max of the "
            "training-loss Hessian at the averaged model (last sharpness measurement), mean consensus distance "
            "Xi over the measured iterations; mean ± sample std over seeds")
    data = []
    for r in rows:
        ok = "acc" in r
        stats = [x for k in ("acc", "lam", "xi") for x in (num(r[k].mean), num(r[k].std))] if ok else [""] * 6
        data.append([r["dataset"], r["n"], r["batch_size"], r["method"]] + stats
                    + [r["acc"].count if ok else 0, " ".join(map(str, r["acc"].seeds)) if ok else "", len(r["exps"])])
    data = frame(data, ["dataset", "n", "batch_size", "method", "acc_mean", "acc_std", "lambda_max_mean",
                        "lambda_max_std", "xi_mean", "xi_std", "n_seeds", "seeds", "experiments_matched"])
    shown = [e for r in rows for e in r["exps"]]
    untuned = untuned_lines([r["runs"] for r in rows if "runs" in r])
    return Table(head, body, data, head={"md": [f"_{info}_", ""], "latex": [f"% {info}"]}, spec="llllccc l",
                 tex_header=[" & ".join(_esc(h) for h in head).replace("lambda\\_max", r"$\lambda_{\max}$")
                             .replace("Xi", r"$\Xi$") + r" \\"], escape=_esc, empty_row=True,
                 notes=[("Runs not counted", not_counted(df, shown)), ("Skipped files", skipped_lines(df)),
                        (UNTUNED_TITLE, untuned)], csv_notes=untuned)

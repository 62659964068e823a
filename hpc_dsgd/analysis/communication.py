"""The communication-modes table (issue 24, docs/communication.md): per experiment (a communication mode: All-Reduce,
D-SGD, CHOCO-SGD with an operator, hierarchical, overlapped, push-sum on a directed graph), the final test accuracy
of the averaged model, the mean consensus distance Xi over the measured iterations, and the bytes sent per iteration
relative to All-Reduce, each as mean ± sample std over the counted seeds (the counting rules of every table:
runs.group_runs); and a figure of the averaged model's test accuracy against the bytes sent so far.

    python tools/tables.py runs/communication --preset communication [--seeds 3] [--format md|latex|csv]
    python -m hpc_dsgd.analysis.communication runs/communication --figure comm.png

Bytes are what the trace's /iter/bytes_sent counts (the sum over ranks of the payload each rank sent: the
compressed messages for CHOCO-SGD, D float32 numbers per row a neighbour rank needs for gossip, plus one float64
push-sum weight per such row under push-sum). "All-Reduce" is the bytes this code counts for one exact average,
ranks x D x 8 (a float64 row per rank; D from the trace), so the ratio is comparable across runs of one plan; it is
not a model of a particular Allreduce algorithm's traffic.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import h5py
import numpy as np
import pandas as pd

from .cells import Experiment, finite_stats
from .table import UNTUNED_TITLE, Table, frame, not_counted, num, skipped_lines, untuned_lines

COLUMNS = ("test acc. (%)", "mean Xi", "bytes/iter ÷ All-Reduce")


def mode_label(cfg: dict) -> str | None:
    """The communication mode of a run: its row label (None: not a run this table compares)."""
    pols = set(cfg.get("policies") or [])
    if pols == {"allreduce"} or (cfg.get("topology") == "complete" and pols <= {"gossip", "allreduce"}):
        return "All-Reduce"
    if not pols <= {"gossip", "allreduce"} or "gossip" not in pols:
        return None
    comp = cfg.get("compression", "none")
    topo = cfg.get("topology", "ring")
    alg = cfg.get("algorithm", "dsgd")
    if alg == "push_sum":
        return f"push-sum, {topo}"
    if alg != "dsgd":
        return None  # another algorithm (gradient tracking, D2): the algorithms table's
    if comp != "none":
        what = {"topk": "top-{r:g} %", "randomk": "random-{r:g} %", "sign": "sign", "qsgd": "QSGD s={s}"}[comp]
        what = what.format(r=100 * float(cfg.get("compression_ratio", 0.01)), s=cfg.get("qsgd_levels", 16))
        return f"CHOCO {what} (γ={float(cfg.get('consensus_lr', 1.0)):g}), {topo}"
    if cfg.get("hierarchy", "none") == "node":
        rpn = cfg.get("ranks_per_node", 0)
        return f"hierarchical ({rpn or 'shared-memory'} rank{'s' if rpn != 1 else ''}/node), {topo} of nodes"
    if cfg.get("overlap", False):
        return f"D-SGD overlapped, {topo}"
    return f"D-SGD, {topo}"


def run_extras(path: str) -> tuple[float, float]:
    """(mean /iter/xi over measured iterations, mean bytes per iteration ÷ ranks x D x 8); NaN where absent."""
    with h5py.File(path, "r") as f:
        it = f.get("iter")
        if it is None or "bytes_sent" not in it:
            return math.nan, math.nan
        xi = it["xi"][()] if "xi" in it else np.array([])
        xi = xi[np.isfinite(xi)]
        b = it["bytes_sent"][()]
        ar = float(f.attrs.get("ranks", 1)) * float(f.attrs.get("row_length", 0)) * 8.0
    return (float(xi.mean()) if len(xi) else math.nan), (float(b.mean()) / ar if len(b) and ar > 0 else math.nan)


def build(exps: list[Experiment], expected: int | None = None) -> list[dict]:
    """One row per (dataset, n, mode) with a matching experiment; All-Reduce first, then by label."""
    cells: dict[tuple, list[Experiment]] = {}
    for e in exps:
        m = mode_label(e.ident)
        if m is not None:
            cells.setdefault((str(e.ident.get("dataset")), int(e.ident.get("n", 0)), m), []).append(e)
    rows = []
    for key in sorted(cells, key=lambda k: (k[0], k[1], k[2] != "All-Reduce", k[2])):
        es = cells[key]
        row = dict(zip(("dataset", "n", "mode"), key), exps=es)
        if len(es) == 1:
            acc = es[0].stats(expected)
            counted = es[0].counted.sort_values("seed", kind="stable")
            extras = [run_extras(p) for p in counted.path]
            seeds = [int(s) for s in counted.seed]
            row.update(acc=acc, runs=counted, xi=finite_stats([e[0] for e in extras], seeds, acc.expected),
                       bytes=finite_stats([e[1] for e in extras], seeds, acc.expected))
        rows.append(row)
    return rows


def _esc(s) -> str:
    return (str(s).replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$").replace("÷", "/")
            .replace("γ", r"$\gamma$"))


def table(rows: list[dict], df: pd.DataFrame, digits: int = 2) -> Table:
    head = ["data set", "n", "communication"] + list(COLUMNS) + ["seeds"]
    info = ("Communication modes: final test accuracy of the averaged model, mean consensus distance Xi over the "
            "measured iterations, bytes sent per iteration relative to All-Reduce (ranks x D x 8, as this code counts "
            "an exact average); mean ± sample std over seeds")

    def cell(row, k, dg):
        if len(row["exps"]) > 1:
            return f"ambiguous: {len(row['exps'])} experiments"
        return lambda f: row[k].text(dg, f)

    body = [[r["dataset"], str(r["n"]), r["mode"], cell(r, "acc", digits), cell(r, "xi", 3), cell(r, "bytes", 3),
             ",".join(map(str, r["acc"].seeds)) if "acc" in r else ""] for r in rows]
    data = []
    for r in rows:
        ok = "acc" in r
        stats = [x for k in ("acc", "xi", "bytes") for x in (num(r[k].mean), num(r[k].std))] if ok else [""] * 6
        data.append([r["dataset"], r["n"], r["mode"]] + stats
                    + [r["acc"].count if ok else 0, " ".join(map(str, r["acc"].seeds)) if ok else "", len(r["exps"])])
    data = frame(data, ["dataset", "n", "communication", "acc_mean", "acc_std", "xi_mean", "xi_std",
                        "bytes_rel_allreduce_mean", "bytes_rel_allreduce_std", "n_seeds", "seeds", "experiments_matched"])
    shown = [e for r in rows for e in r["exps"]]
    untuned = untuned_lines([r["runs"] for r in rows if "runs" in r])
    return Table(head, body, data, head={"md": [f"_{info}_", ""], "latex": [f"% {info}"]}, spec="lll ccc l",
                 tex_header=[" & ".join(_esc(h) for h in head).replace("Xi", r"$\Xi$") + r" \\"], escape=_esc,
                 empty_row=True, notes=[("Runs not counted", not_counted(df, shown)), ("Skipped files", skipped_lines(df)),
                                        (UNTUNED_TITLE, untuned)], csv_notes=untuned)


def accuracy_vs_bytes(traces: list[str], out_png: str) -> str:
    """One line per run: the averaged model's test accuracy at each evaluation against the bytes sent (all ranks)
    up to that iteration, log-scaled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.5))
    for path in traces:
        with h5py.File(path, "r") as f:
            cfg = json.loads(f.attrs["config_json"])
            label = mode_label(cfg)
            it, ep = f.get("iter"), f.get("epoch")
            if label is None or it is None or ep is None or "test_acc_avg" not in ep:
                continue
            cum = np.cumsum(it["bytes_sent"][()].astype(np.float64))
            rows = np.minimum(ep["it"][()].astype(np.int64) - int(it["it"][0]), len(cum) - 1)
            ax.plot(np.maximum(cum[rows], 1.0), ep["test_acc_avg"][()], marker=".", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("bytes sent (all ranks)")
    ax.set_ylabel("test accuracy of the averaged model (%)")
    ax.set_title("Accuracy against communication")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def main(argv=None) -> int:
    from .cells import experiments
    from .runs import find_traces, load_runs
    from .table import write

    ap = argparse.ArgumentParser(prog="python -m hpc_dsgd.analysis.communication", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="directories searched for traces")
    ap.add_argument("--format", choices=("md", "latex", "csv"), default="md")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--figure", default="", help="also draw accuracy against bytes sent into this PNG")
    args = ap.parse_args(argv)
    df = load_runs(args.paths)
    print(write(table(build(experiments(df), args.seeds), df), args.format))
    if args.figure:
        print(accuracy_vs_bytes(find_traces(args.paths), args.figure))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `algorithms` table and figure (docs/algorithms.md): the field's algorithms on the same loop, each with
its consensus distance measured.

Per experiment (one row per data partition x method: algorithm, momentum kind, gossip_every, lazy mixing), as
mean ± sample std over the counted seeds (the counting rules of every table: tables.group_runs):
  - the final test accuracy of the averaged model (/epoch/test_acc_avg at the last evaluation);
  - the mean consensus distance Xi of each phase, over the iterations where Xi was measured (/iter/xi);
  - the bytes per iteration (/iter/bytes_sent, summed over the ranks, averaged over all iterations: the local
    iterations of gossip_every > 1 count as 0, and a tracker's gossip counts).
The figure: Xi over epochs, one line per experiment (first seed), one panel per partition.

    python tools/tables.py runs/ --preset algorithms [--seeds 3] [--format md|latex|csv]
    python -m hpc_dsgd.analysis.algorithms runs/ -o xi.png        # the figure
"""
from __future__ import annotations

import argparse
import math
import sys

import h5py
import numpy as np
import pandas as pd

from .cells import Experiment, finite_stats
from .table import EMPTY_CELL, UNTUNED_TITLE, Table, frame, not_counted, num, skipped_lines, untuned_lines

NAMES = {"dsgd": "D-SGD", "gradient_tracking": "gradient tracking", "d2": "D²", "push_sum": "push-sum"}


def method_of(cfg: dict) -> str:
    """'D-SGD', 'D-SGD + quasi-global momentum', 'D-SGD, H = 4', 'D² (lazy W)', ..."""
    alg = str(cfg.get("algorithm", "dsgd"))
    out = NAMES.get(alg, alg)
    if cfg.get("momentum_kind", "local") == "quasi_global":
        out += " + quasi-global momentum"
    if int(cfg.get("gossip_every", 1)) > 1:
        out += f", H = {int(cfg['gossip_every'])}"
    if cfg.get("lazy_mixing"):
        out += " (lazy W)"
    pols = cfg.get("policies") or []
    if pols and set(pols) != {"gossip"}:
        out += f" [{', '.join(pols)}]"
    return out


def partition_of(cfg: dict) -> str:
    p = str(cfg.get("partition", "iid"))
    alpha = cfg.get("dirichlet_alpha")
    if p == "dirichlet":
        return f"Dirichlet α = {alpha:g}" if isinstance(alpha, (int, float)) else "Dirichlet"
    if p == "shards":
        return f"shards ({cfg.get('shards_per_replica', '?')} per replica)"
    return p


def run_extras(path: str) -> tuple[list[float], float]:
    """(mean Xi of phase 1, 2, ... over its measured iterations, mean bytes_sent per iteration)."""
    with h5py.File(path, "r") as f:
        it = f.get("iter")
        if it is None or "xi" not in it or "phase" not in it:
            return [], math.nan
        xi, ph = it["xi"][()], it["phase"][()]
        by = it["bytes_sent"][()] if "bytes_sent" in it else np.array([])
    means = []
    for k in range(1, int(ph.max()) + 1 if len(ph) else 1):
        x = xi[(ph == k) & np.isfinite(xi)]
        means.append(float(x.mean()) if len(x) else math.nan)
    return means, float(by.mean()) if len(by) else math.nan


def build(exps: list[Experiment], expected: int | None = None) -> list[dict]:
    """One row per (partition, method); several experiments in one row are shown as ambiguous."""
    cells: dict[tuple, list[Experiment]] = {}
    for e in exps:
        cells.setdefault((partition_of(e.ident), method_of(e.ident)), []).append(e)
    rows = []
    for key in sorted(cells, key=lambda k: (k[0] != "iid", k[0], k[1])):
        es = cells[key]
        row = dict(partition=key[0], method=key[1], exps=es, phases=0)
        if len(es) == 1:
            acc = es[0].stats(expected)
            counted = es[0].counted.sort_values("seed", kind="stable")
            extras = [run_extras(p) for p in counted.path]
            seeds = [int(s) for s in counted.seed]
            nph = max((len(e[0]) for e in extras), default=0)
            row.update(acc=acc, phases=nph, runs=counted, bytes=finite_stats([e[1] for e in extras], seeds, acc.expected),
                       xi=[finite_stats([e[0][k] if k < len(e[0]) else math.nan for e in extras], seeds, acc.expected)
                           for k in range(nph)])
        rows.append(row)
    return rows


def _esc(s) -> str:
    return str(s).replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$")


def table(rows: list[dict], df: pd.DataFrame, digits: int = 2) -> Table:
    nph = max((r["phases"] for r in rows), default=0)
    head = (["data partition", "method", "test acc. (%)"] + [f"mean Xi phase {k + 1}" for k in range(nph)]
            + ["bytes / iteration", "seeds"])

    def cell(row, st, dg):
        if len(row["exps"]) > 1:
            return f"ambiguous: {len(row['exps'])} experiments"
        return (lambda f: st.text(dg, f)) if st is not None else (lambda f: EMPTY_CELL[f])

    def bytes_text(row):
        if len(row["exps"]) > 1 or "bytes" not in row or not row["bytes"].count:
            return lambda f: EMPTY_CELL[f]
        return f"{row['bytes'].mean:,.0f}"

    body = [[r["partition"], r["method"], cell(r, r.get("acc"), digits)]
            + [cell(r, r["xi"][k] if "xi" in r and k < len(r["xi"]) else None, 4) for k in range(nph)]
            + [bytes_text(r), ",".join(map(str, r["acc"].seeds)) if "acc" in r else ""] for r in rows]
    info = ("Algorithms (docs/algorithms.md): final test accuracy of the averaged model, mean consensus distance "
            "Xi per phase over its measured iterations, bytes sent per iteration (all ranks); mean ± sample std "
            "over seeds")
    data = []
    for r in rows:
        ok = "acc" in r
        stats = [num(r["acc"].mean), num(r["acc"].std)] if ok else ["", ""]
        xs = [num(r["xi"][k].mean) if ok and k < len(r["xi"]) else "" for k in range(nph)]
        data.append([r["partition"], r["method"]] + stats + xs
                    + [num(r["bytes"].mean) if ok else "", r["acc"].count if ok else 0,
                       " ".join(map(str, r["acc"].seeds)) if ok else "", len(r["exps"])])
    data = frame(data, ["partition", "method", "acc_mean", "acc_std"] + [f"xi_phase{k + 1}_mean" for k in range(nph)]
                 + ["bytes_per_iteration", "n_seeds", "seeds", "experiments_matched"])
    shown = [e for r in rows for e in r["exps"]]
    untuned = untuned_lines([r["runs"] for r in rows if "runs" in r])
    return Table(head, body, data, head={"md": [f"_{info}_", ""], "latex": [f"% {info}"]},
                 spec="ll" + "c" * (len(head) - 3) + "l",
                 tex_header=[" & ".join(_esc(h) for h in head).replace("Xi", r"$\Xi$") + r" \\"], escape=_esc,
                 empty_row=True, notes=[("Runs not counted", not_counted(df, shown)), ("Skipped files", skipped_lines(df)),
                                        (UNTUNED_TITLE, untuned)], csv_notes=untuned)


def figure(traces, out_png: str) -> str:
    """Xi over epochs, one line per trace (labelled by its method), one panel per data partition."""
    from .figures import DPI, _iter_epochs, _load, _phase_boundaries, plt

    trs = _load(traces)
    parts = sorted({partition_of(tr.config) for tr in trs}, key=lambda p: (p != "iid", p)) or ["iid"]
    fig, axes = plt.subplots(1, len(parts), squeeze=False)
    for ax, part in zip(axes[0], parts):
        bounds = set()
        for tr in trs:
            if partition_of(tr.config) != part:
                continue
            xi = np.asarray(tr.iter.get("xi", []), dtype=float)
            ep = _iter_epochs(tr)[: len(xi)]
            ok = np.isfinite(xi) & (xi > 0)
            ax.plot(ep[ok], xi[ok], lw=0.8, label=method_of(tr.config))
            bounds.update(round(b, 6) for b in _phase_boundaries(tr))
        for b in sorted(bounds):
            ax.axvline(b, color="grey", ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(r"consensus distance $\Xi_t$")
        ax.set_title(part)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.set_size_inches(6.0 * len(parts), 4.5)
    fig.tight_layout()
    fig.savefig(out_png, dpi=DPI)
    plt.close(fig)
    return out_png


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpc_dsgd.analysis.algorithms",
                                 description="Xi over epochs per algorithm (one panel per data partition)")
    ap.add_argument("paths", nargs="+", help="trace files or directories (searched for *.h5)")
    ap.add_argument("-o", "--out", default="algorithms_xi.png")
    args = ap.parse_args(argv)
    print(figure(args.paths, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-run, per-phase summary of consensus control: what was targeted, whether the target bound (iterations
in which it made gossip more than once, and the largest distance one plain gossip step left), what was
reached, how many gossip steps the loop used and how many Lemma 3.4 planned (from p), cap hits, final accuracy.

    python tools/control_summary.py runs/demo_control [--phase 2]
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from ..trace import TraceError, read_trace
from .runs import find_traces


def _fmt(v: float, d: int = 4) -> str:
    return "—" if not math.isfinite(v) else f"{v:.{d}f}"

def summarize(path: str) -> list[dict]:
    tr = read_trace(path)
    it = tr.iter
    rows = []
    pols = tr.config.get("policies", [])
    for k in sorted(set(int(x) for x in it.get("phase", []))):
        m = it["phase"] == k
        xi = it["xi"][m]
        planned = it.get("planned_steps", np.full(len(m), -1))[m]
        pre = it.get("pre_control", np.full(len(m), np.nan))[m]
        targeted = np.isfinite(it["target"][m])
        rows.append(dict(run=tr.config.get("name"), phase=k, policy=pols[k - 1] if k <= len(pols) else "?",
                         target=float(np.nanmean(it["target"][m])) if np.isfinite(it["target"][m]).any() else math.nan,
                         xi_max=float(np.nanmax(xi)) if np.isfinite(xi).any() else math.nan,
                         xi_mean=float(np.nanmean(xi)) if np.isfinite(xi).any() else math.nan,
                         steps=float(it["gossip_steps"][m].mean()),
                         bound=int((targeted & (it["gossip_steps"][m] > 1)).sum()) if targeted.any() else -1,
                         pre_max=float(np.nanmax(pre)) if np.isfinite(pre).any() else math.nan,
                         planned=float(planned[planned >= 0].mean()) if (planned >= 0).any() else math.nan,
                         cap_hits=int(it["hit_cap"][m].sum()), iters=int(m.sum()),
                         test_acc=float(tr.epoch["test_acc_avg"][-1]) if len(tr.epoch.get("test_acc_avg", [])) else math.nan,
                         status=tr.attrs.get("status")))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="tools/control_summary.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="trace files or directories searched for *.h5")
    ap.add_argument("--phase", type=int, default=None, help="show only this phase (1-based)")
    args = ap.parse_args(argv)
    paths = find_traces(args.paths)
    if not paths:
        print(f"no traces under {' '.join(args.paths)}", file=sys.stderr)
        return 1
    hdr = ("| run | phase | policy | target Ξ | Ξ after 1 step (max) | iterations bound | Ξ max | Ξ mean | gossip steps/it "
           "| Lemma 3.4 plan/it | cap hits | iters | final test acc |")
    print(hdr)
    print("|" + "---|" * hdr.count(" | ") + "---|")
    for path in paths:
        try:
            for r in summarize(path):
                if args.phase is not None and r["phase"] != args.phase:
                    continue
                print(f"| {r['run']} | {r['phase']} | {r['policy']} | {_fmt(r['target'])} | {_fmt(r['pre_max'])} | "
                      f"{'—' if r['bound'] < 0 else r['bound']} | {_fmt(r['xi_max'])} | "
                      f"{_fmt(r['xi_mean'])} | {r['steps']:.2f} | {_fmt(r['planned'], 2)} | {r['cap_hits']} | {r['iters']} | "
                      f"{_fmt(r['test_acc'], 2)}{'' if r['status'] == 'finished' else ' (' + str(r['status']) + ')'} |")
        except TraceError as e:
            print(f"skipped: {e}", file=sys.stderr)
    return 0

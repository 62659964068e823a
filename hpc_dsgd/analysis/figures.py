"""The paper's figures from traces (matplotlib, Agg backend: no display needed).

    python tools/figures.py fig1 runs/ring32/ -o fig1.png           # Xi over epochs, phase boundaries
    python tools/figures.py fig2 runs/dec1/ runs/ring/ -o fig2.png  # training loss / train acc / test acc
    python tools/figures.py fig3 runs/figure3_* -o fig3.png         # Multi30k: training loss / Xi / val ppl, BLEU
    python tools/figures.py theta-xi runs/x/trace.h5 -o thxi.png    # measured Xi vs Theta, Xi = (2/p) Theta
    python tools/figures.py fig4 --n 32 --steps 60 -o fig4.png      # gossip-only simulation (Sec. 5)
    python tools/figures.py surface CKPT [CKPT ...] -o s1d.png --contour s2d.png   # loss-surface slices
    python tools/figures.py partition runs/x/ -o labels.png         # label distribution over the replicas
                                                                    # (a trace, run directory or TOML config)

Every figure is written at a fixed pixel size (figsize x dpi, no tight bbox), so scripts and tests can
rely on it. Arguments that take traces accept trace files and directories (searched for *.h5).
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from ..trace import Trace, TraceError, read_trace
from .gossip_sim import FIG4_TOPOLOGIES, simulate_all
from .runs import find_traces

matplotlib.use("Agg")  # files only, never a display (pyplot switches backends on this call since matplotlib 3.3)

DPI = 100
SIZE_WIDE = (12.0, 4.0)  # inches: three panels (Figures 2 and 3)
SIZE_ONE = (6.0, 4.5)  # inches: one panel


def _load(traces) -> list[Trace]:
    """Trace objects from Trace objects, trace paths or directories (unreadable files are reported)."""
    if isinstance(traces, (str, os.PathLike, Trace)):
        traces = [traces]
    out = []
    for t in traces:
        if isinstance(t, Trace):
            out.append(t)
            continue
        for path in find_traces([t]):
            try:
                out.append(read_trace(path))
            except TraceError as e:
                print(f"skipped {path}: {e}", file=sys.stderr)
    if not out:
        raise TraceError(f"no readable trace in {[os.fspath(t) if not isinstance(t, Trace) else t.path for t in traces]}")
    return out


def _label(tr: Trace) -> str:
    try:
        cfg = tr.config
    except (KeyError, ValueError):
        return os.path.basename(tr.path)
    pol = cfg.get("policies", [])
    fac = cfg.get("target_factors") or []
    parts = []
    for k, p in enumerate(pol):
        parts.append(f"{p}({fac[k]:g})" if p in ("target", "adaptive") and k < len(fac) else p)
    status = tr.attrs.get("status", "?")
    topo = str(tr.attrs.get("topology", cfg.get("topology", "?")))  # Topology.describe(): "ring n=8"
    n = f"n={tr.attrs.get('n', cfg.get('n', '?'))}"
    where = topo if n in topo.split() else f"{topo} {n}"  # n once, whether or not the topology names it
    return (f"{cfg.get('name', os.path.basename(tr.path))} s{cfg.get('seed', 0)}: {where} "
            f"[{', '.join(parts)}]" + ("" if status == "finished" else f" ({status})"))


def _iter_epochs(tr: Trace) -> np.ndarray:
    """Epoch position of every /iter/ row (the `epoch` column, else it / iters_per_epoch)."""
    if "epoch" in tr.iter:
        return np.asarray(tr.iter["epoch"], dtype=float)
    ipe = float(tr.attrs.get("iters_per_epoch", 1) or 1)
    return np.asarray(tr.iter.get("it", []), dtype=float) / ipe


def _phase_boundaries(tr: Trace) -> list[float]:
    """Epochs at which the learning rate decays (phase k+1 starts), from the config."""
    try:
        cfg = tr.config
    except (KeyError, ValueError):
        return []
    T = float(cfg.get("epochs", 0) or 0)
    return [a * T for a in cfg.get("decay_fractions", [])]


def _save(fig, out_png: str, size) -> str:
    fig.set_size_inches(*size)
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=DPI)  # fixed pixel size: size x DPI (no bbox_inches="tight")
    plt.close(fig)
    return out_png


def _finish_one(fig, ax, out_png: str, xlabel: str, ylabel: str, title: str | None, legend_size: int) -> str:
    """Labels, legend, grid and save of a one-panel figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_png, SIZE_ONE)


def fig1_consensus(traces, out_png: str) -> str:
    """Figure 1: consensus distance Xi over epochs (iterations where Xi was measured), one line per run,
    with the learning-rate decays (phase boundaries) as dashed vertical lines."""
    trs = _load(traces)
    fig, ax = plt.subplots(figsize=SIZE_ONE)
    bounds, positive, has_data = set(), True, False
    for tr in trs:
        xi = np.asarray(tr.iter.get("xi", []), dtype=float)
        ep = _iter_epochs(tr)[: len(xi)]
        ok = np.isfinite(xi)
        if ok.any():
            ax.plot(ep[ok], xi[ok], lw=1, label=_label(tr))
            positive &= bool((xi[ok] > 0).all())
            has_data = True
        else:
            ax.plot([], [], label=_label(tr) + " (no Xi measured)")
        bounds.update(round(b, 6) for b in _phase_boundaries(tr))
    for k, b in enumerate(sorted(bounds)):
        ax.axvline(b, color="grey", ls="--", lw=0.8, label="lr decay (phase boundary)" if k == 0 else None)
    if positive and has_data:
        ax.set_yscale("log")
    return _finish_one(fig, ax, out_png, "epoch", r"consensus distance $\Xi_t$",
                       r"Evolution of the consensus distance $\Xi$", 6)


def _panel_row(trs, panels, out_png: str, labels=None) -> str:
    """One row of panels (SIZE_WIDE), one line per run and panel. A panel is (group, column, name, log):
    the column of the trace's `epoch` or `iter` group over epochs (unmeasured NaN points left out), on a
    log scale if `log` and every plotted value is positive. The legend (`labels`, default _label) is in
    the last panel."""
    fig, axes = plt.subplots(1, len(panels), figsize=SIZE_WIDE)
    for tr, lab in zip(trs, labels or [_label(tr) for tr in trs]):
        for ax, (group, col, _, _) in zip(axes, panels):
            x = _iter_epochs(tr) if group == "iter" else np.asarray(tr.epoch.get("epoch", []), dtype=float)
            y = np.asarray(getattr(tr, group).get(col, []), dtype=float)
            m = min(len(x), len(y))
            ok = np.isfinite(y[:m])
            ax.plot(x[:m][ok], y[:m][ok], lw=1, label=lab)
    for ax, (_, _, name, log), tag in zip(axes, panels, "abcdef"):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(f"({tag}) {name}")
        ax.grid(alpha=0.3)
        ys = [np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()]
        if log and any(y.size for y in ys) and all((y > 0).all() for y in ys):
            ax.set_yscale("log")
    axes[-1].legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, out_png, SIZE_WIDE)


def fig2_learning_curves(traces, out_png: str) -> str:
    """Figure 2: (a) training loss, (b) training accuracy, (c) test accuracy of the averaged model, per
    epoch, one line per run."""
    return _panel_row(_load(traces), (("epoch", "train_loss", "training loss", True),
                                      ("epoch", "train_acc", "training accuracy (%)", False),
                                      ("epoch", "test_acc_avg", "test accuracy (%)", False)), out_png)


def fig3_learning_curves(traces, out_png: str) -> str:
    """Figure 3: learning curves of the Transformer on Multi30k: (a) training loss per epoch, (b) consensus
    distance Xi over epochs, (c) validation perplexity of the averaged model per epoch; one line per run,
    its legend label with the run's final test BLEU (last finite `bleu_avg`) where the trace has one."""
    trs = _load(traces)
    labels = []
    for tr in trs:
        bleu = np.asarray(tr.epoch.get("bleu_avg", []), dtype=float)
        bleu = bleu[np.isfinite(bleu)]
        labels.append(_label(tr) + (f", BLEU {bleu[-1]:.1f}" if bleu.size else ""))
    return _panel_row(trs, (("epoch", "train_loss", "training loss", True),
                            ("iter", "xi", r"consensus distance $\Xi_t$", True),
                            ("epoch", "val_ppl_avg", "validation perplexity", False)), out_png, labels)


def theta_vs_xi(trace, out_png: str) -> str:
    """Measured Xi against the estimator Theta on the same iterations, with the Lemma A.1 bound
    Xi = (2/p) Theta (p from the trace's attributes): every point should lie below the line.
    Theta is computed from the gossip step at the iterate before communication, so the Xi of that same
    iterate (`xi_pre`) is plotted; traces without it fall back to `xi` (after communication)."""
    (tr,) = _load(trace)[:1]
    xi = np.asarray(tr.iter.get("xi_pre", tr.iter.get("xi", [])), dtype=float)
    th = np.asarray(tr.iter.get("theta", []), dtype=float)
    m = min(len(xi), len(th))
    xi, th = xi[:m], th[:m]
    ok = np.isfinite(xi) & np.isfinite(th)
    p = float(tr.attrs.get("p", math.nan))
    fig, ax = plt.subplots(figsize=SIZE_ONE)
    ax.scatter(th[ok], xi[ok], s=4, alpha=0.5, label=f"measured ({int(ok.sum())} iterations)")
    if ok.any() and np.isfinite(p) and p > 0:
        hi = float(th[ok].max()) or 1.0
        lo = float(th[ok][th[ok] > 0].min()) if (th[ok] > 0).any() else hi / 10
        t = np.geomspace(lo, hi, 50) if lo > 0 else np.linspace(0, hi, 50)
        ax.plot(t, 2.0 / p * t, "k--", lw=1, label=rf"$\Xi = (2/p)\,\Theta$, p={p:.4g} (Lemma A.1)")
        above = int((xi[ok] > 2.0 / p * th[ok] * (1 + 1e-6)).sum())
        ax.set_title(f"Xi vs Theta: {above} of {int(ok.sum())} points above the bound")
        if (th[ok] > 0).all() and (xi[ok] > 0).all():
            ax.set_xscale("log")
            ax.set_yscale("log")
    else:
        ax.set_title("Xi vs Theta" + ("" if ok.any() else ": no iteration with both measured"))
    return _finish_one(fig, ax, out_png, r"$\Theta_t$", r"$\Xi_t$", None, 7)


def fig4_gossip(out_png: str, n: int = 32, steps: int = 50, seed: int = 0, d: int = 1,
                topologies=FIG4_TOPOLOGIES) -> str:
    """Figure 4: consensus distance against the number of gossip steps, x_i ~ U[0, 10], per topology."""
    curves = simulate_all(n, steps, d, seed, tuple(topologies))
    fig, ax = plt.subplots(figsize=SIZE_ONE)
    floor = 1e-16 * max((float(xi[0]) for xi in curves.values()), default=1.0)  # float64 round-off level
    for name, xi in curves.items():
        exact = bool((xi <= floor).any())  # e.g. one-peer exponential at n = 2^k: exact after log2(n) steps
        ax.plot(np.arange(len(xi)), np.maximum(xi, floor), lw=1.2,
                label=name.replace("_", " ") + (" (exact consensus, clipped)" if exact else ""))
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor / 2)
    return _finish_one(fig, ax, out_png, "number of gossip steps", r"consensus distance $\Xi$",
                       f"Gossip averaging, n={n}, " + r"$x_i \sim U[0, 10]$", 8)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tools/figures.py", description="The paper's figures from traces.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, hlp in (("fig1", "Figure 1: Xi over epochs with phase boundaries"),
                      ("fig2", "Figure 2: training loss, training accuracy, test accuracy"),
                      ("fig3", "Figure 3 (Multi30k): training loss, Xi, validation perplexity; final BLEU")):
        p = sub.add_parser(name, help=hlp)
        p.add_argument("traces", nargs="+", help="trace files or directories (searched for *.h5)")
        p.add_argument("-o", "--out", required=True, help="output PNG")
    p = sub.add_parser("theta-xi", help="measured Xi vs Theta with the Lemma A.1 line Xi = (2/p) Theta")
    p.add_argument("trace", help="one trace file")
    p.add_argument("-o", "--out", required=True, help="output PNG")
    p = sub.add_parser("fig4", help="Figure 4: gossip-only consensus simulation per topology")
    p.add_argument("--n", type=int, default=32, help="replicas (default 32)")
    p.add_argument("--steps", type=int, default=50, help="gossip steps (default 50)")
    p.add_argument("--seed", type=int, default=0, help="initial values and matchings (default 0)")
    p.add_argument("--d", type=int, default=1, help="dimension of each x_i (default 1)")
    p.add_argument("--topologies", nargs="+", default=list(FIG4_TOPOLOGIES), help="topologies to simulate")
    p.add_argument("-o", "--out", required=True, help="output PNG")
    p = sub.add_parser("partition", help="every replica's label histogram (docs/partitions.md)")
    p.add_argument("source", help="a trace file, a run directory, or a TOML config (computed before any run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="with a config: override a key, repeatable (--set partition=dirichlet)")
    p.add_argument("-o", "--out", required=True, help="output PNG")
    p = sub.add_parser("surface", help="loss-surface slices (Li et al. 2018) around checkpoints' averaged models")
    p.add_argument("checkpoints", nargs="+", help="checkpoint directories (one curve / contour panel each)")
    p.add_argument("--samples", type=int, default=500, help="training images (fixed, seeded subset; default 500)")
    p.add_argument("--steps", type=int, default=21, help="points per axis (default 21)")
    p.add_argument("--span", type=float, default=1.0, help="alpha from -span to span (default 1)")
    p.add_argument("--seed", type=int, default=0, help="direction and subset seed (default 0)")
    p.add_argument("--data-dir", default=None, help="override the runs' data_dir")
    p.add_argument("--contour", default=None, help="also write the 2-D contour PNG here")
    p.add_argument("-o", "--out", required=True, help="output PNG of the 1-D curves")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "fig1":
            out = fig1_consensus(args.traces, args.out)
        elif args.cmd == "fig2":
            out = fig2_learning_curves(args.traces, args.out)
        elif args.cmd == "fig3":
            out = fig3_learning_curves(args.traces, args.out)
        elif args.cmd == "theta-xi":
            out = theta_vs_xi(args.trace, args.out)
        elif args.cmd == "partition":
            from .partitions import label_distribution

            out = label_distribution(args.source, args.out, args.overrides)
        elif args.cmd == "surface":
            from ..checkpoint import CheckpointError
            from .surface import surface_figures

            try:
                out = " and ".join(surface_figures(args.checkpoints, args.out, args.contour, args.samples, args.steps,
                                                   args.span, args.seed, args.data_dir))
            except CheckpointError as e:
                raise ValueError(str(e)) from None
        else:
            out = fig4_gossip(args.out, n=args.n, steps=args.steps, seed=args.seed, d=args.d,
                              topologies=args.topologies)
    except (TraceError, ValueError) as e:
        print(f"hpc_dsgd: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m hpc_dsgd topology`: what a topology looks like and how well it mixes (numpy only, no MPI).

    python -m hpc_dsgd topology ring --n 16                 # neighbours, W (n <= 16), spectral gap, p
    python -m hpc_dsgd topology torus --n 32 --shape 4 8
    python -m hpc_dsgd topology random_matching --n 8 --seed 3 --steps 2
    python -m hpc_dsgd topology --table --n 16 32 64        # rho and p of every topology (cf. paper Table 10)

Also runnable as `python -m hpc_dsgd.topology_report ...`. p is the mixing parameter of Assumption 1:
p = 1 - (1 - rho)^2 with rho the spectral gap (1 - |lambda_2| for a symmetric W). For time-varying
graphs p is per gossip step in expectation (random matching: estimated from sampled matchings;
one-peer exponential: from the product of one full cycle, also shown as p_cycle).
Directed graphs (push-sum, column-stochastic P_t, x <- P_t x): directed_exponential is SGP's one-peer graph,
doubly stochastic (its p is one_peer_exponential's); directed_random is not doubly stochastic, so p does not
apply: the report gives push-sum's measured per-step contraction of z = x / w instead.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from .topology import DIRECTED, ONE_PEER_CYCLE, TOPOLOGIES, Topology, TopologyError, exponential_hops

W_PRINT_MAX_N = 16  # W is printed only up to this n


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _steps_to_show(topo: Topology, steps: int | None) -> list[int]:
    if not topo.time_varying:
        return [0]
    if steps is not None:
        return list(range(max(1, steps)))
    return list(range(topo.period)) if topo.period else [0, 1, 2]


def describe(topo: Topology, steps: int | None = None) -> str:
    """Neighbours of every replica, W (n <= 16), spectral gap and p, as text."""
    n = topo.n
    out = [f"topology {topo.describe()}" + (f" (seed {topo.seed})" if topo.period is None else "")]
    if topo.time_varying:
        per = f"cycles through {topo.period} matrices" if topo.period else (
            "a new random matching every step" if topo.name == "random_matching" else
            "a new random out-peer per replica every step")
        out.append(f"time-varying: W_t changes with the gossip step t ({per})")
    if topo.name in DIRECTED:
        out.append("directed (push-sum, algorithm = \"push_sum\"): column-stochastic P_t, sender j keeps 1/2 and "
                   "sends 1/2 to one out-peer; x <- P_t x, w <- P_t w, z = x / w")
        out.append("doubly stochastic: every P_t is circulant, the same matrices as one_peer_exponential; push-sum "
                   "weights stay exactly 1" if topo.doubly_stochastic else
                   "not doubly stochastic: columns sum to 1, rows to (1 + in-degree)/2 (in-degrees vary)")
    else:
        out.append("fixed: the same W at every gossip step")
    for t in _steps_to_show(topo, steps):
        W = topo.W(t)
        symmetric = bool(np.allclose(W, W.T))
        if topo.time_varying:
            extra = f" (hop 2^{t % topo.period} = {exponential_hops(n)[t % topo.period]})" \
                if topo.name in ONE_PEER_CYCLE and n > 1 else ""
            out.append(f"step t={t}{extra}:")
        out.append("neighbours (j != i with w_ij > 0)" + ("" if symmetric else ": receives from / sends to") + ":")
        for i in range(n):
            recv = [int(j) for j in np.flatnonzero(W[i]) if j != i]
            if symmetric:
                out.append(f"  {i}: {', '.join(map(str, recv)) or '(none)'}")
            else:
                send = [int(j) for j in np.flatnonzero(W[:, i]) if j != i]
                out.append(f"  {i}: from {', '.join(map(str, recv)) or '(none)'}; to {', '.join(map(str, send)) or '(none)'}")
        if n <= W_PRINT_MAX_N:
            out.append(f"W{'_' + str(t) if topo.time_varying else ''} "
                       "(rows: receiving replica i, columns: j; x_i <- sum_j w_ij x_j):")
            out.append(np.array2string(W, precision=4, suppress_small=True, max_line_width=220))
        else:
            out.append(f"W not printed: n={n} > {W_PRINT_MAX_N} ("
                       f"{'doubly' if topo.doubly_stochastic else 'column'} stochastic, {int((W > 0).sum())} nonzeros)")
    if not topo.doubly_stochastic:
        r = topo.push_sum_contraction()
        out.append("p (Assumption 1) does not apply: it bounds ||W X - Xbar|| for a doubly stochastic W, and this "
                   "W_t is column-stochastic only (x <- W x does not keep the average of the rows; push-sum's "
                   "z = x / w does)")
        out.append(f"push-sum contraction r = {_fmt(r)} per step (measured: ||Z_t - Xbar_0|| ~ r^t ||X_0 - Xbar_0|| "
                   f"from random X_0 over 60 steps, 4 draws; 1 - r^2 = {_fmt(1 - r * r)})")
        return "\n".join(out)
    p = topo.p()
    out.append(f"spectral gap rho = {_fmt(topo.spectral_gap())}")
    out.append(f"p = {_fmt(p)}  (Assumption 1: p = 1 - (1 - rho)^2"
               + ("; expected contraction per step, estimated from sampled matchings" if topo.name == "random_matching"
                  else "; per step, expected over a uniformly drawn step of its cycle"
                  if topo.name in ONE_PEER_CYCLE else "") + ")")
    if topo.name in ONE_PEER_CYCLE:
        out.append(f"p_cycle = {_fmt(topo.p_cycle())}  (product of the {topo.period} matrices of one cycle)")
    return "\n".join(out)


def table(ns: list[int], seed: int = 0, fmt: str = "md") -> str:
    """Spectral gap rho and p of every topology at each n (cf. the paper's Table 10); an entry that
    cannot be built says why below the table."""
    head = ["topology"] + [f"{h} (n={n})" for n in ns for h in ("rho", "p")]
    rows, notes = [], []
    for name in TOPOLOGIES:
        row = [name]
        for n in ns:
            try:
                topo = Topology(name, n, seed=seed)
                row += ([_fmt(topo.spectral_gap()), _fmt(topo.p())] if topo.doubly_stochastic
                        else ["n/a (push-sum)", f"n/a, r = {_fmt(topo.push_sum_contraction())}"])
            except TopologyError as e:
                notes.append(f"[{len(notes) + 1}] {name}, n={n}: {e}")
                row += [f"n/a [{len(notes)}]", f"n/a [{len(notes)}]"]
        rows.append(row)
    if fmt == "csv":
        lines = [",".join(head)] + [",".join(r) for r in rows]
    else:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    lines.append("rho: spectral gap; p = 1 - (1 - rho)^2 (Assumption 1). Time-varying graphs: p per step in "
                 f"expectation (random_matching estimated from sampled matchings, seed {seed}; "
                 "one_peer_exponential expected over a uniformly drawn step of its cycle; a full cycle averages exactly "
                 "for n a power of two; directed_exponential is one_peer_exponential's mixing). directed_random is not doubly "
                 "stochastic: p does not apply; r is push-sum's measured per-step contraction of z = x / w.")
    lines += notes
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m hpc_dsgd topology",
                                 description="Show a topology (neighbours, W, spectral gap, p) or a table of "
                                             "spectral gaps and p for every topology.")
    ap.add_argument("name", nargs="?", choices=TOPOLOGIES, help="topology to show")
    ap.add_argument("--n", type=int, nargs="+", help="replicas (--table: several, default 16 32 64)")
    ap.add_argument("--seed", type=int, default=0, help="random graphs' seed: random_matching, directed_random (default 0)")
    ap.add_argument("--shape", type=int, nargs=2, metavar=("A", "B"), help="torus sides, A*B = n")
    ap.add_argument("--steps", type=int, help="time-varying graphs: how many W_t to show")
    ap.add_argument("--table", action="store_true", help="rho and p of every topology at each --n")
    ap.add_argument("--format", choices=("md", "csv"), default="md", help="--table output format")
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.table:
        if args.name:
            ap.error("give either a topology NAME or --table, not both")
        print(table(args.n or [16, 32, 64], args.seed, args.format))
        return 0
    if not args.name:
        ap.error("give a topology NAME (one of " + ", ".join(TOPOLOGIES) + ") or --table")
    if not args.n:
        ap.error(f"{args.name} needs --n N (the number of replicas)")
    status = 0
    for k, n in enumerate(args.n):
        try:
            topo = Topology(args.name, n, seed=args.seed, shape=tuple(args.shape) if args.shape else None)
        except TopologyError as e:
            print(f"hpc_dsgd: error: {e}", file=sys.stderr)
            status = 2
            continue
        if k:
            print()
        print(describe(topo, args.steps))
    return status


if __name__ == "__main__":
    sys.exit(main())

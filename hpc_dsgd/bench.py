"""Benchmark: what communication and consensus measurement cost next to the local step.

    mpiexec -n 4 python -m hpc_dsgd bench                 # ResNet-20, local batch 32, 1 replica per rank
    python -m hpc_dsgd bench --replicas-per-rank 4 --device cuda

Times, in one run and interleaved round by round (so drift hits every mode alike), the median of:
  local       forward/backward/SGD step of the rank's replicas alone
  gossip      local + one gossip step + the per-iteration scalar Allreduce (plain D-SGD)
  theta       gossip, also computing Theta (paper Sec. 5) in the gossip step and sending it in the
              same scalar Allreduce
  allreduce   local + exact averaging of the parameters (Allreduce of D numbers)
  xi          gossip + the exact consensus distance Xi (Allreduce of d numbers) every iteration
Data: random CIFAR-shaped images (3 x 32 x 32), so no data set is needed. Ratios are to `local`.
The communication parts are also timed alone (no local step, many repetitions), since on a CPU
their cost is smaller than the noise of the step; Theta's extra cost (gossip step with Theta and its
scalar Allreduce, minus the plain gossip step) is reported as a percentage of a gossip iteration.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from mpi4py import MPI

from .comm import Gossiper, allreduce_scalars, make_world
from .config import Config
from .consensus import xi_sq_local
from .data import ImageData
from .replica import Replicas
from .topology import Topology

MODES = ("local", "gossip", "theta", "allreduce", "xi")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpc_dsgd bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas-per-rank", type=int, default=1, help="replicas on each rank (default 1)")
    ap.add_argument("--batch-size", type=int, default=32, help="local mini-batch per replica (paper: 32)")
    ap.add_argument("--width", type=float, default=1.0, help="ResNet-20 width factor")
    ap.add_argument("--topology", default="ring")
    ap.add_argument("--rounds", type=int, default=20, help="timed rounds (after 3 warm-up rounds)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per rank")
    ap.add_argument("--json", default="", help="also write the figures to this JSON file (rank 0)")
    args = ap.parse_args(argv)

    comm = MPI.COMM_WORLD
    torch.set_num_threads(args.threads)
    k = args.replicas_per_rank
    world = make_world(comm, k, args.device)
    n = world.n
    cfg = Config(n=n, width=args.width, batch_size=args.batch_size, device=args.device, topology=args.topology)
    g = torch.Generator().manual_seed(0)
    N = n * args.batch_size * 4
    x = torch.randint(0, 256, (N, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (N,), generator=g)
    data = ImageData("random", x, y, x[:64], y[:64], (0.5,) * 3, (0.25,) * 3, 10).to(world.device)
    reps = Replicas(cfg, world, 10)
    gossiper = Gossiper(world, Topology(args.topology, n), reps.D)
    d, s = reps.d, 0
    sync = (lambda: torch.cuda.synchronize(world.device)) if world.device.type == "cuda" else (lambda: None)

    def one(mode: str, b: int) -> None:
        nonlocal s
        loss, correct, gsq = reps.local_step(data, 0, b % 4, 0.01)
        if mode == "local":
            sync()
            return
        theta, xi = 0.0, 0.0
        if mode == "allreduce":
            gossiper.allreduce_average(reps.X)
        else:
            _, th = gossiper.step(reps.X, s, theta_cols=d if mode == "theta" else None)
            s += 1
            theta = float(th.sum()) if th is not None else 0.0
        if mode == "xi":
            xi = xi_sq_local(world, reps.P)
        allreduce_scalars(comm, [loss, correct, gsq, theta, xi])
        sync()

    times = {m: [] for m in MODES}
    for r in range(args.rounds + 3):
        for m in MODES:
            comm.Barrier()
            t0 = time.perf_counter()
            one(m, r)
            dt = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)  # an iteration ends when every rank is done
            if r >= 3:
                times[m].append(dt)
    med = {m: statistics.median(v) for m, v in times.items()}

    # The communication parts alone, timed directly (no local step, so CPU noise of the step does not
    # hide them): one gossip step, the same computing Theta, the Allreduce average, the exact Xi.
    parts = {"gossip step": [], "gossip step + theta": [], "allreduce average": [], "xi measurement": []}
    for r in range(args.rounds * 5 + 5):
        for name in parts:
            comm.Barrier()
            t0 = time.perf_counter()
            if name == "allreduce average":
                gossiper.allreduce_average(reps.X)
            elif name == "xi measurement":
                allreduce_scalars(comm, [xi_sq_local(world, reps.P)])
            else:
                _, th = gossiper.step(reps.X, s, theta_cols=d if name.endswith("theta") else None)
                s += 1
                if th is not None:
                    allreduce_scalars(comm, [float(th.sum())])  # Theta's one scalar Allreduce
            sync()
            dt = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
            if r >= 5:
                parts[name].append(dt)
    part = {k: statistics.median(v) for k, v in parts.items()}
    theta_extra = max(part["gossip step + theta"] - part["gossip step"], 0.0)
    kind = gossiper.kind
    gossiper.free()

    if world.rank == 0:
        print(f"bench: resnet20 width {args.width} (d={d}), local batch {args.batch_size}, {world.ranks} ranks x {k} "
              f"replicas, {args.topology} (gossip via {kind}), device {world.device}, "
              f"{args.rounds} rounds, median per iteration")
        print(f"{'mode':<11}{'ms/iter':>10}{'x local':>10}")
        for m in MODES:
            print(f"{m:<11}{1e3 * med[m]:>10.2f}{med[m] / med['local']:>10.3f}")
        print("communication parts alone (median ms; % of the local step):")
        for k, v in part.items():
            print(f"  {k:<22}{1e3 * v:>9.3f} ms {100.0 * v / med['local']:>8.3f} %")
        pct = 100.0 * theta_extra / med["gossip"]
        print(f"Theta extra cost: {1e3 * theta_extra:.3f} ms per iteration = {pct:.3f} % of a gossip iteration "
              f"(requirement: < 2 %)")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"ms": {m: 1e3 * v for m, v in med.items()},
                           "parts_ms": {k: 1e3 * v for k, v in part.items()}, "theta_extra_ms": 1e3 * theta_extra,
                           "theta_pct_of_gossip_iteration": pct, "ranks": world.ranks, "replicas_per_rank": k,
                           "device": str(world.device), "topology": args.topology, "d": d}, f, indent=1)
    return 0

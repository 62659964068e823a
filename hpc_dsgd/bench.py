"""Benchmark: images/s of D-SGD iterations, and what communication and consensus measurement cost.

    mpiexec -n 4 python -m hpc_dsgd bench                          # ResNet-20, local batch 32, 1 replica per rank
    python -m hpc_dsgd bench --replicas-per-rank 32 --device cuda  # n = 32 on one GPU, one process
    mpiexec -n 4 python -m hpc_dsgd bench --replicas-per-rank 8 --device cuda --json out.json

Times, in one run and interleaved round by round (so drift hits every mode alike), the median of:
  premade     forward/backward/SGD step of the rank's replicas on fixed, pre-made batches (no data pipeline)
  local       the same with the device data pipeline (gather, crop, flip, normalise for all k replicas)
  gossip      local + one gossip step + the per-iteration scalar Allreduce (plain D-SGD)
  theta       gossip, also computing Theta (paper Sec. 5) in the gossip step and sending it in the
              same scalar Allreduce: the D-SGD iteration the training loop runs
  allreduce   local + exact averaging of the parameters (Allreduce of D numbers)
  xi          theta + the exact consensus distance Xi (Allreduce of d numbers) every iteration
  loop_local  with --compare-loop: the local step of replica_exec = loop (one replica after another),
              timed in the same rounds, for the batched/loop ratio
images/s counts every replica's mini-batch: ranks x k x batch / (ms per iteration). Data: random
CIFAR-shaped uint8 images (3 x 32 x 32) in device memory, so no data set is needed. The
communication parts are also timed alone (no local step), since on a CPU their cost is smaller than
the noise of the step; Theta's extra cost is reported as a percentage of a gossip iteration.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from mpi4py import MPI

from .comm import Gossiper, allreduce_scalars, make_world
from .config import PRECISIONS, Config
from .consensus import xi_sq_local
from .data import ImageData
from .execution import EXECS
from .replica import Replicas
from .topology import Topology

MODES = ("premade", "local", "gossip", "theta", "allreduce", "xi")


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpc_dsgd bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas-per-rank", type=int, default=1, help="replicas on each rank (default 1)")
    ap.add_argument("--batch-size", type=int, default=32, help="local mini-batch per replica (paper: 32)")
    ap.add_argument("--model", default="resnet20", help="model (default resnet20)")
    ap.add_argument("--width", type=float, default=1.0, help="model width factor")
    ap.add_argument("--topology", default="ring")
    ap.add_argument("--exec", dest="exec_", default="batched", choices=EXECS, help="replica execution (default batched)")
    ap.add_argument("--precision", default="fp32", choices=PRECISIONS)
    ap.add_argument("--deterministic", type=_bool, default=True, help="deterministic CUDA kernels (default true)")
    ap.add_argument("--cuda-graph", type=_bool, default=True, help="capture the local step on CUDA (default true)")
    ap.add_argument("--compare-loop", action="store_true", help="also time the loop execution's local step")
    ap.add_argument("--rounds", type=int, default=20, help="timed rounds (after 3 warm-up rounds)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per rank")
    ap.add_argument("--json", default="", help="also write the figures to this JSON file (rank 0)")
    args = ap.parse_args(argv)
    if args.replicas_per_rank < 1 or args.batch_size < 1 or args.rounds < 1:
        ap.error("--replicas-per-rank, --batch-size and --rounds must be >= 1")

    comm = MPI.COMM_WORLD
    torch.set_num_threads(args.threads)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    k = args.replicas_per_rank
    world = make_world(comm, k, args.device)
    from .train import set_determinism

    set_determinism(world.device, args.deterministic)
    n, B = world.n, args.batch_size
    cfg = Config(n=n, model=args.model, width=args.width, batch_size=B, device=args.device, topology=args.topology,
                 replica_exec=args.exec_, precision=args.precision, deterministic=args.deterministic,
                 cuda_graph=args.cuda_graph)
    g = torch.Generator().manual_seed(0)
    N = n * B * 4
    x = torch.randint(0, 256, (N, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (N,), generator=g)
    data = ImageData("random", x, y, x[:64], y[:64], (0.5,) * 3, (0.25,) * 3, 10).to(world.device)
    reps = Replicas(cfg, world, data)  # the data pipeline on the device
    pre = Replicas(cfg, world, data)  # the same step on fixed batches
    pre.premade = (torch.randn(k, B, 3, 32, 32, generator=g).to(world.device), y[:k * B].view(k, B).to(world.device))
    modes = MODES + (("loop_local",) if args.compare_loop else ())
    loop = Replicas(Config(**{**cfg.to_dict(), "replica_exec": "loop"}), world, data) if args.compare_loop else None
    gossiper = Gossiper(world, Topology(args.topology, n), reps.D, capture=bool(reps.capture))
    d, s = reps.d, 0
    sync = (lambda: torch.cuda.synchronize(world.device)) if world.device.type == "cuda" else (lambda: None)

    def one(mode: str, r: int) -> None:
        nonlocal s
        if mode in ("premade", "loop_local"):
            (pre if mode == "premade" else loop).local_step(r, 0, r % 4, 0.01)
            sync()
            return
        loss, correct, _, gsq = reps.local_step(r, 0, r % 4, 0.01)
        if mode == "local":
            sync()
            return
        theta, xi = 0.0, 0.0
        if mode == "allreduce":
            gossiper.allreduce_average(reps.X)
        else:
            _, th = gossiper.step(reps.X, s, theta_cols=d if mode in ("theta", "xi") else None)
            s += 1
            theta = float(th.sum()) if th is not None else 0.0
        if mode == "xi":
            xi = xi_sq_local(world, reps.P)
        allreduce_scalars(comm, [loss, correct, gsq, theta, xi])
        sync()

    times = {m: [] for m in modes}
    for r in range(args.rounds + 3):
        for m in modes:
            comm.Barrier()
            t0 = time.perf_counter()
            one(m, r)
            dt = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)  # an iteration ends when every rank is done
            if r >= 3:
                times[m].append(dt)
    med = {m: statistics.median(v) for m, v in times.items()}
    imgs = {m: n * B / v for m, v in med.items()}

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
    part = {name: statistics.median(v) for name, v in parts.items()}
    theta_extra = max(part["gossip step + theta"] - part["gossip step"], 0.0)
    kind = gossiper.kind
    gossiper.free()

    if world.rank == 0:
        dev = str(world.device) + (f" ({torch.cuda.get_device_name(world.device)})" if world.device.type == "cuda" else "")
        print(f"bench: {args.model} width {args.width} (d={d}), local batch {B}, {world.ranks} ranks x {k} replicas "
              f"(n={n}), {args.topology} (gossip via {kind}), exec {reps.exec.name}, {args.precision}, "
              f"deterministic {args.deterministic}, CUDA graph {reps.capture}, device {dev}, "
              f"{args.rounds} rounds, median per iteration")
        print(f"{'mode':<11}{'ms/iter':>10}{'images/s':>12}{'x local':>10}")
        for m in modes:
            print(f"{m:<11}{1e3 * med[m]:>10.2f}{imgs[m]:>12.0f}{med[m] / med['local']:>10.3f}")
        print("communication parts alone (median ms; % of the local step):")
        for name, v in part.items():
            print(f"  {name:<22}{1e3 * v:>9.3f} ms {100.0 * v / med['local']:>8.3f} %")
        if loop is not None:
            print(f"batched/loop local step: {med['loop_local'] / med['local']:.2f}x faster "
                  f"({reps.exec.name} {1e3 * med['local']:.1f} ms, loop {1e3 * med['loop_local']:.1f} ms)")
        pct = 100.0 * theta_extra / med["gossip"]
        print(f"Theta extra cost: {1e3 * theta_extra:.3f} ms per iteration = {pct:.3f} % of a gossip iteration")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"modes": {m: {"ms_per_iteration": 1e3 * med[m], "images_per_s": imgs[m]} for m in modes},
                           "parts_ms": {name: 1e3 * v for name, v in part.items()},
                           "theta_extra_ms": 1e3 * theta_extra, "theta_pct_of_gossip_iteration": pct,
                           "ranks": world.ranks, "replicas_per_rank": k, "n": n, "batch_size": B,
                           "exec": reps.exec.name, "precision": args.precision, "deterministic": args.deterministic,
                           "cuda_graph": bool(reps.capture), "device": dev, "cuda_aware_mpi": world.cuda_aware,
                           "topology": args.topology, "gossip_comm": kind, "model": args.model, "d": d}, f, indent=1)
    return 0

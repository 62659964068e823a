"""Benchmark: samples/s of D-SGD iterations, and what communication and consensus measurement cost.

    mpiexec -n 4 python -m hpc_dsgd bench                          # ResNet-20, local batch 32, 1 replica per rank
    python -m hpc_dsgd bench --replicas-per-rank 32 --device cuda  # n = 32 on one GPU, one process
    mpiexec -n 4 python -m hpc_dsgd bench --replicas-per-rank 8 --device cuda --json out.json
    python -m hpc_dsgd bench --workload translation --replicas-per-rank 32 --device cuda   # Multi30k Transformer

Times, in one run and interleaved round by round (so drift hits every mode alike), the median of:
  premade     forward/backward/optimizer step of the rank's replicas on fixed, pre-made batches (no data pipeline)
  local       the same with the device data pipeline (images: gather, crop, flip, normalise for all k
              replicas; sentences: gather and pad to the iteration's longest sentence among all n replicas)
  gossip      local + one gossip step + the per-iteration scalar Allreduce (plain D-SGD)
  theta       gossip, also computing Theta (paper Sec. 5) in the gossip step and sending it in the
              same scalar Allreduce: the D-SGD iteration the training loop runs
  allreduce   local + exact averaging of the parameters (Allreduce of D numbers)
  xi          theta + the exact consensus distance Xi (Allreduce of d numbers) every iteration
  overlap     gossip with overlap = true (modes.OverlapGossiper): the iteration completes the exchange the
              previous iteration started (untimed, just before: its local step and the start of its exchange),
              applies that correction and starts its own; ms/iter minus gossip's is what the overlap hides.
              On CPU MPICH moves a large message only inside MPI calls unless MPIR_CVAR_ASYNC_PROGRESS=1
  loop_local  with --compare-loop: the local step of replica_exec = loop (one replica after another),
              timed in the same rounds, for the batched/loop ratio
samples/s counts every replica's mini-batch: ranks x k x batch / (ms per iteration); the samples are
images (--workload image) or sentence pairs (--workload translation). No data set is needed:
  image        ResNet-20 (--model, --width), SGD with Nesterov momentum, on random CIFAR-shaped uint8
               images (3 x 32 x 32) in device memory; local batch 32 by default (the paper's).
  translation  the Translation workload itself (workloads/translation.py: the paper's Multi30k
               Transformer, Adam (0.9, 0.98, 1e-9) at the inverse-square-root schedule's peak learning
               rate, label smoothing 0.1, counter-based dropout, the padding of its batches) on random
               subword-id sentence pairs with Multi30k-like lengths: log-normal, mean 13 (source) and
               14 (target) subwords, spread 0.35 (so the longest of 2,048 is about 40), each + <eos>;
               sizes from the config defaults (d_model 256, 4 heads, 3 + 3 layers, d_ff 1024, vocabulary
               8000; --d-model, --layers, --d-ff, --vocab change them); local batch 64 sentences by
               default (the paper's). Not capturable: the padded length changes from iteration to
               iteration, so no CUDA graph.
Each mode's spread is printed beside its median: the middle half of its rounds (25th to 75th
percentile). Under mpiexec on shared CPUs it is often wider than the gap between two modes; modes whose
spreads overlap are listed as not distinguishable by the run (so theta timed below gossip is noise,
not a result). The JSON file (--json) has, per mode, ms_per_iteration (the median), ms_p25 and ms_p75,
samples_per_s and the same figure under the workload's own name (images_per_s or sentences_per_s). The
communication parts are also timed alone (no local step), since on a CPU their cost is smaller than the
noise of the step; Theta's extra cost is reported as a percentage of a gossip iteration.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import torch
from mpi4py import MPI

from .comm import Gossiper, allreduce_scalars, make_world
from .config import PRECISIONS, Config, ConfigError, validate
from .consensus import xi_sq_local
from .data import ImageData
from .data.multi30k import Multi30k, ParallelText
from .execution import EXECS
from .modes import OverlapGossiper
from .replica import Replicas, set_precision
from .schedule import inverse_sqrt_lr, scaled_warmup_steps
from .topology import Topology
from .train import set_determinism
from .workloads import ImageClassification, Translation, Workload

MODES = ("premade", "local", "gossip", "theta", "allreduce", "xi", "overlap")
WORKLOADS = ("image", "translation")
DEFAULT_BATCH = {"image": 32, "translation": 64}  # the paper's local mini-batches (images, sentences)
SRC_MEAN, TGT_MEAN, LEN_SPREAD = 13.0, 14.0, 0.35  # synthetic sentence lengths (subwords): log-normal mean, sigma


class IdTokenizer:
    """A tokenizer whose "text" is already subword ids: the ids of the specials as SubwordTokenizer's
    (<pad> = 0, <bos> = 1, <eos> = 2), a vocabulary size, and encode_batch passing id lists through, so
    Translation encodes, pads and batches a synthetic corpus with its own code."""

    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def encode_batch(self, texts) -> list[list[int]]:
        return [list(t) for t in texts]


def synthetic_pairs(count: int, vocab_size: int, max_len: int, g: torch.Generator) -> ParallelText:
    """`count` pairs of random subword-id sentences (ids 3 .. vocab_size - 1, no specials) with
    Multi30k-like lengths: log-normal with mean SRC_MEAN (source) and TGT_MEAN (target) subwords and
    sigma LEN_SPREAD, rounded, in 1 .. max_len."""
    def sentences(mean: float) -> list[list[int]]:
        mu = math.log(mean) - LEN_SPREAD ** 2 / 2  # so that the mean length is `mean`
        lengths = torch.exp(mu + LEN_SPREAD * torch.randn(count, generator=g, dtype=torch.float64))
        lengths = lengths.round().clamp(1, max_len).long()
        ids = torch.randint(3, vocab_size, (count, int(lengths.max())), generator=g)
        return [row[:int(L)] for row, L in zip(ids.tolist(), lengths)]

    return ParallelText(sentences(SRC_MEAN), sentences(TGT_MEAN))


def synthetic_translation(cfg: Config, num_train: int, device, seed: int = 0) -> Translation:
    """The Translation workload (model, Adam, batches, padding, dropout keys, label-smoothed loss: its own
    code) on `num_train` random sentence pairs, plus 16 each for validation and test; no files."""
    g = torch.Generator().manual_seed(seed)
    pairs = [synthetic_pairs(m, cfg.vocab_size, cfg.max_len, g) for m in (num_train, 16, 16)]
    return Translation(cfg, Multi30k(*pairs), IdTokenizer(cfg.vocab_size), device)


def translation_config(args, n: int, B: int) -> Config:
    """The paper's Multi30k recipe (configs/multi30k_transformer.toml) at the bench's sizes and execution."""
    return Config(n=n, dataset="multi30k", model="transformer", batch_size=B, device=args.device,
                  topology=args.topology, replica_exec=args.exec_, precision=args.precision,
                  deterministic=args.deterministic, cuda_graph=args.cuda_graph, vocab_size=args.vocab,
                  d_model=args.d_model, heads=args.heads, layers=args.layers, d_ff=args.d_ff,
                  optimizer="adam", adam_betas=[0.9, 0.98], adam_eps=1e-9, lr_schedule="inverse_sqrt",
                  warmup_epochs=0.0, decay_fractions=[], policies=["gossip"], weight_decay=0.0)


def _quartiles(v: list[float]) -> tuple[float, float]:
    """25th and 75th percentile of v (inclusive method; both the value itself for one round)."""
    if len(v) < 2:
        return v[0], v[0]
    q = statistics.quantiles(v, n=4, method="inclusive")
    return q[0], q[2]


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpc_dsgd bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", default="image", choices=WORKLOADS,
                    help="image: ResNet-20 on random images; translation: the Multi30k Transformer on random "
                         "sentences (default %(default)s)")
    ap.add_argument("--replicas-per-rank", type=int, default=1, help="replicas on each rank (default %(default)s)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="local mini-batch per replica (default: the paper's, 32 images or 64 sentences)")
    ap.add_argument("--model", default=None, help="image model, resnet20 or small_cnn (default resnet20; "
                    "translation: transformer)")
    ap.add_argument("--width", type=float, default=1.0, help="image model width factor (default %(default)s)")
    ap.add_argument("--classes", type=int, default=10,
                    help="image classes (default %(default)s, CIFAR-10; 1000 with --width 3 --batch-size 64: an "
                         "ImageNet-32 iteration)")
    ap.add_argument("--vocab", type=int, default=Config.vocab_size, help="translation: vocabulary size (default %(default)s)")
    ap.add_argument("--d-model", type=int, default=Config.d_model, help="translation: Transformer width (default %(default)s)")
    ap.add_argument("--heads", type=int, default=Config.heads, help="translation: attention heads (default %(default)s)")
    ap.add_argument("--layers", type=int, default=Config.layers,
                    help="translation: encoder and decoder layers each (default %(default)s)")
    ap.add_argument("--d-ff", type=int, default=Config.d_ff, help="translation: feed-forward width (default %(default)s)")
    ap.add_argument("--topology", default="ring", help="gossip topology over the n = ranks x replicas-per-rank "
                    "replicas (as the config key; default %(default)s)")
    ap.add_argument("--exec", dest="exec_", default="batched", choices=EXECS,
                    help="replica execution (default %(default)s: grouped for images, vmap for the Transformer)")
    ap.add_argument("--precision", default="fp32", choices=PRECISIONS, help="compute precision (default %(default)s)")
    ap.add_argument("--deterministic", type=_bool, default=True, help="deterministic CUDA kernels (default true)")
    ap.add_argument("--cuda-graph", type=_bool, default=True, help="capture the local step on CUDA (default true)")
    ap.add_argument("--compare-loop", action="store_true",
                    help="also time the loop execution's local step (default: off)")
    ap.add_argument("--rounds", type=int, default=20, help="timed rounds, after 3 warm-up rounds (default %(default)s)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="auto: cuda where torch sees a GPU, else cpu (default %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per rank (default %(default)s)")
    ap.add_argument("--json", default="", help="also write the figures to this JSON file on rank 0 (default: none)")
    args = ap.parse_args(argv)
    translation = args.workload == "translation"
    if args.batch_size is None:
        args.batch_size = DEFAULT_BATCH[args.workload]
    if args.model is None:
        args.model = "transformer" if translation else "resnet20"
    if args.replicas_per_rank < 1 or args.batch_size < 1 or args.rounds < 1:
        ap.error("--replicas-per-rank, --batch-size and --rounds must be >= 1")
    if translation and args.model != "transformer":
        ap.error(f"--model {args.model}: --workload translation benchmarks the transformer")
    if not translation and args.model == "transformer":
        ap.error("--model transformer: use --workload translation")

    comm = MPI.COMM_WORLD
    torch.set_num_threads(args.threads)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    k = args.replicas_per_rank
    world = make_world(comm, k, args.device)
    set_determinism(world.device, args.deterministic)
    n, B = world.n, args.batch_size
    g = torch.Generator().manual_seed(0)
    N = n * B * 4  # four mini-batches per replica's shard (batch index r % 4 at round r)
    if translation:
        cfg = translation_config(args, n, B)
        try:
            validate(cfg, world.ranks)
        except ConfigError as e:
            ap.error(str(e))
        wl: Workload = synthetic_translation(cfg, N, world.device)
        warm = scaled_warmup_steps(n, B, cfg.warmup_steps)
        lr = inverse_sqrt_lr(warm, cfg.d_model, warm, cfg.lr_scale)  # the schedule's peak
    else:
        cfg = Config(n=n, model=args.model, width=args.width, batch_size=B, device=args.device, topology=args.topology,
                     replica_exec=args.exec_, precision=args.precision, deterministic=args.deterministic,
                     cuda_graph=args.cuda_graph)
        x = torch.randint(0, 256, (N, 3, 32, 32), dtype=torch.uint8, generator=g)
        y = torch.randint(0, args.classes, (N,), generator=g)
        data = ImageData("random", x, y, x[:64], y[:64], (0.5,) * 3, (0.25,) * 3, args.classes).to(world.device)
        wl = ImageClassification(cfg, data, world.device)
        lr = 0.01
    set_precision(cfg.precision)
    torch.manual_seed(cfg.seed)  # every block starts from the same initial model, as a run's replicas do
    reps = Replicas(cfg, world, wl)  # the data pipeline on the device
    torch.manual_seed(cfg.seed)
    pre = Replicas(cfg, world, wl)  # the same step on fixed batches
    if translation:  # iteration 0's batches, padded as the workload pads them
        pre.set_inputs(0, 0, 0, lr)
        with torch.no_grad():
            pre.premade = pre.wl.batch(pre, pre.batch_indices(pre.b_dev))
    else:
        pre.premade = (torch.randn(k, B, 3, 32, 32, generator=g).to(world.device), y[:k * B].view(k, B).to(world.device))
    samples = reps.wl.samples  # "images" or "sentences"
    modes = MODES + (("loop_local",) if args.compare_loop else ())
    if args.compare_loop:
        torch.manual_seed(cfg.seed)
    loop = Replicas(Config(**{**cfg.to_dict(), "replica_exec": "loop"}), world, wl) if args.compare_loop else None
    gossiper = Gossiper(world, Topology(args.topology, n), reps.D, capture=bool(reps.capture))
    overlapped = None if args.topology == "complete" else OverlapGossiper(world, Topology(args.topology, n), reps.D)
    if overlapped is None:
        modes = tuple(m for m in modes if m != "overlap")
    d, s = reps.d, 0
    sync = (lambda: torch.cuda.synchronize(world.device)) if world.device.type == "cuda" else (lambda: None)

    def one(mode: str, r: int) -> None:
        nonlocal s
        if mode in ("premade", "loop_local"):
            (pre if mode == "premade" else loop).local_step(r, 0, r % 4, lr)
            sync()
            return
        loss, correct, _, gsq = reps.local_step(r, 0, r % 4, lr)
        if mode == "local":
            sync()
            return
        theta, xi = 0.0, 0.0
        if mode == "overlap":
            overlapped.step(reps.X, s)
            s += 1
        elif mode == "allreduce":
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
            if m == "overlap":  # the previous iteration, untimed: its exchange is in flight when timing starts
                reps.local_step(r, 0, r % 4, lr)
                overlapped.step(reps.X, s)
                s += 1
                sync()
            t0 = time.perf_counter()
            one(m, r)
            dt = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)  # an iteration ends when every rank is done
            if r >= 3:
                times[m].append(dt)
    med = {m: statistics.median(v) for m, v in times.items()}
    spread = {m: _quartiles(v) for m, v in times.items()}  # (25th, 75th percentile) of the rounds
    per_s = {m: n * B / v for m, v in med.items()}  # samples (images or sentences) per second

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
    if overlapped is not None:
        overlapped.free()

    if world.rank == 0:
        dev = str(world.device) + (f" ({torch.cuda.get_device_name(world.device)})" if world.device.type == "cuda" else "")
        if translation:
            model = (f"transformer d_model {cfg.d_model}, {cfg.heads} heads, {cfg.layers}+{cfg.layers} layers, "
                     f"d_ff {cfg.d_ff}, vocab {cfg.vocab_size}, Adam (d={d}), local batch {B} sentences "
                     f"(synthetic, mean length {SRC_MEAN:g}/{TGT_MEAN:g} subwords)")
        else:
            model = f"{args.model} width {args.width}, {args.classes} classes (d={d}), local batch {B} images"
        print(f"bench: workload {args.workload}, {model}, {world.ranks} ranks x {k} replicas "
              f"(n={n}), {args.topology} (gossip via {kind}), exec {reps.exec.name}, {args.precision}, "
              f"deterministic {args.deterministic}, CUDA graph {reps.capture}, device {dev}, "
              f"{args.rounds} rounds, median per iteration")
        print(f"{'mode':<11}{'ms/iter':>10}{'spread (p25-p75)':>21}{samples + '/s':>13}{'x local':>10}")
        for m in modes:
            lo, hi = spread[m]
            rng = f"{1e3 * lo:.2f}-{1e3 * hi:.2f} ms"
            print(f"{m:<11}{1e3 * med[m]:>10.2f}{rng:>21}{per_s[m]:>13.0f}{med[m] / med['local']:>10.3f}")
        same = [f"{a} ~ {b}" for i, a in enumerate(modes) for b in modes[i + 1:]
                if spread[a][0] <= spread[b][1] and spread[b][0] <= spread[a][1]]
        print(f"spread: the middle half of {args.rounds} rounds" + (
            f" ({world.ranks} ranks: each round's time is the slowest rank's)" if world.ranks > 1 else "") +
            (f"; overlapping, so not distinguishable by this run: {', '.join(same)}" if same else
             "; no two modes overlap"))
        print("communication parts alone (median ms; % of the local step):")
        for name, v in part.items():
            print(f"  {name:<22}{1e3 * v:>9.3f} ms {100.0 * v / med['local']:>8.3f} %")
        if loop is not None:
            print(f"batched/loop local step: {med['loop_local'] / med['local']:.2f}x faster "
                  f"({reps.exec.name} {1e3 * med['local']:.1f} ms, loop {1e3 * med['loop_local']:.1f} ms)")
        if "overlap" in med:
            hidden = med["gossip"] - med["overlap"]
            print(f"overlap: {1e3 * med['overlap']:.2f} ms per iteration against gossip's {1e3 * med['gossip']:.2f} ms: "
                  f"{1e3 * hidden:.2f} ms hidden ({100.0 * hidden / max(part['gossip step'], 1e-12):.0f} % of a gossip "
                  f"step's {1e3 * part['gossip step']:.2f} ms)")
        pct = 100.0 * theta_extra / med["gossip"]
        print(f"Theta extra cost: {1e3 * theta_extra:.3f} ms per iteration = {pct:.3f} % of a gossip iteration")
        if args.json:
            with open(args.json, "w") as f:
                extra = {"vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "heads": cfg.heads, "layers": cfg.layers,
                         "d_ff": cfg.d_ff, "dropout": cfg.dropout, "optimizer": cfg.optimizer} if translation else \
                    {"width": args.width, "classes": args.classes, "optimizer": cfg.optimizer}
                json.dump({"modes": {m: {"ms_per_iteration": 1e3 * med[m], "ms_p25": 1e3 * spread[m][0],
                                         "ms_p75": 1e3 * spread[m][1], f"{samples}_per_s": per_s[m],
                                         "samples_per_s": per_s[m]} for m in modes},
                           "parts_ms": {name: 1e3 * v for name, v in part.items()},
                           "theta_extra_ms": 1e3 * theta_extra, "theta_pct_of_gossip_iteration": pct,
                           "ranks": world.ranks, "replicas_per_rank": k, "n": n, "batch_size": B,
                           "exec": reps.exec.name, "precision": args.precision, "deterministic": args.deterministic,
                           "cuda_graph": bool(reps.capture), "device": dev, "cuda_aware_mpi": world.cuda_aware,
                           "topology": args.topology, "gossip_comm": kind, "workload": args.workload,
                           "samples": samples, "model": args.model, "d": d, **extra}, f, indent=1)
    return 0

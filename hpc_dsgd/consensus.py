"""Consensus quantities and the per-phase communication policies.

Definitions (paper Sec. 3.2 and 5), P = this rank's (k, d) parameter rows of the n x d matrix:
  Xi_t^2    = (1/n) sum_i ||xbar - x_i||^2                (consensus distance; Allreduce of d numbers)
  Theta_t^2 = (1/n) sum_i ||(W X)_i - x_i||^2             (estimator; from the gossip step, one scalar)
  phi_t^2   = (1/n) sum_i ||g_i||^2                       (mean squared local gradient norm, Prop. 3.3)
  Xi_t <= (2/p) Theta_t                                   (Lemma A.1)

A policy is an object the training loop asks, once per iteration, to communicate:
  allreduce  exact averaging (W = 11^T/n), Xi = 0 afterwards;
  gossip     one gossip step (plain D-SGD);
  target     repeat gossip until the controlled distance <= factor x Xi_max (Xi_max: the reference
             run's maximum Xi in this phase, read from its trace);
  adaptive   repeat gossip until the controlled distance <= factor x EMA(phi) (EMA over the phase);
  csgd       centralized (data-parallel) mini-batch SGD: the loop asks `policy.grad_hook(ctx)` for a
             callable that replaces every replica's gradient by the average over all n replicas (one
             Allreduce of d numbers, before weight decay and momentum), so parameters and momenta
             stay identical; communicate() then only averages the BN running statistics. Unlike
             `allreduce` (parameter averaging after local momentum steps, Kong et al.), no state drifts.
The controlled distance is the exact Xi of the current iterate (control_signal = "xi", research
mode, one Allreduce of d numbers per gossip step), or the Theta bound (control_signal = "theta",
practical mode of Sec. 5, one scalar Allreduce per gossip step): after a step from X to W X,
Xi(W X) <= sqrt(1-p) Xi(X) <= sqrt(1-p) (2/p) Theta(X) for a fixed W (Assumption 1 + Lemma A.1);
for time-varying W it holds in expectation. Control always does the one D-SGD step, then repeats
while above target, at most max_gossip_steps in all; an iteration that stops at the cap above
target is counted (hit_cap).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .comm import Gossiper, World, allreduce_scalars, average_rows, global_mean
from .config import DEFAULTS, REFERENCE_MUST_MATCH, inapplicable_keys, reference_for_phase
from .topology import gossip_steps_needed
from .trace import TraceError, read_trace

NAN = float("nan")


def xi_sq_local(world: World, P: torch.Tensor) -> float:
    """This rank's share of n * Xi^2: sum over local rows of ||xbar - x_i||^2 (xbar: one Allreduce)."""
    xbar = global_mean(world, P)
    return float((P.to(torch.float64) - xbar).pow(2).sum())


def consensus_distance(world: World, P: torch.Tensor) -> float:
    """Xi_t (not squared) of the parameters P (k, d), the same value on every rank."""
    (s,) = allreduce_scalars(world.comm, [xi_sq_local(world, P)])
    return math.sqrt(max(s, 0.0) / world.n)


@dataclass
class CommResult:
    """What one iteration's communication did (bytes and theta: this rank's share)."""

    steps: int  # gossip steps (an Allreduce average counts as 1)
    bytes_sent: int  # payload bytes this rank sent
    theta_sq_local: float  # sum over local rows of theta_i^2 of the first step (pre-communication X)
    target: float = NAN  # the distance the policy aimed for
    controlled: float = NAN  # the controlled distance after communication (Xi or the Theta bound)
    xi: float = NAN  # exact Xi after communication, when the policy measured it
    planned: int = -1  # gossip steps Lemma 3.4 predicts for the target (-1: not applicable)
    hit_cap: bool = False
    first: float = NAN  # control policies: the controlled distance after the first gossip step, i.e. what plain
    #                     gossip would have left; the target bound this iteration iff it made more than one step


@dataclass
class Context:
    """What a policy may use: the world, the gossiper, the step counter, p and this iteration's phi."""

    world: World
    gossiper: Gossiper
    counter: "GossipCounter"
    p: float
    phi: float = NAN  # sqrt(mean ||g_i||^2) of this iteration (only computed when a policy needs it)
    phi_ema: float = NAN
    ema_phase: int = 0  # the phase the EMA belongs to
    opt_state: list = None  # the local optimizer state blocks (k, d) (momentum); csgd averages them on entry
    algorithm: object = None  # the run's algorithms.Algorithm (train.iteration asks it for the local step)


class Policy:
    name = "policy"
    needs_phi = False

    def grad_hook(self, ctx: Context):
        """A callable modifying the (k, d) gradient block in place before the optimizer update, or None."""
        return None

    def communicate(self, X: torch.Tensor, d: int, ctx: Context) -> CommResult:  # pragma: no cover
        raise NotImplementedError


class AllreducePolicy(Policy):
    name = "allreduce"

    def communicate(self, X, d, ctx):
        sent, theta = ctx.gossiper.allreduce_average(X, theta_cols=d)
        return CommResult(1, sent, float(theta.sum()))


class GossipPolicy(Policy):
    name = "gossip"

    def communicate(self, X, d, ctx):
        sent, theta = ctx.gossiper.step(X, ctx.counter.next(), theta_cols=d)
        return CommResult(1, sent, float(theta.sum()))


class CsgdPolicy(Policy):
    """Centralized SGD (C-SGD, data-parallel): gradients averaged by one Allreduce before the update.

    Entering the phase (its first iteration, and after a resume, where it is a no-op) the parameters,
    BN buffers and optimizer state are averaged once, so a csgd phase that follows a gossip phase
    starts from the averaged model and momentum; from then on the replicas stay bitwise identical.
    The first iteration's gradients are those of the replicas' own points (as in every policy here:
    local step, then communication)."""

    name = "csgd"

    def __init__(self):
        self.entered = False

    def grad_hook(self, ctx):
        return lambda G: average_rows(ctx.world, G)

    def communicate(self, X, d, ctx):
        D = X.shape[1]
        if not self.entered:  # make replicas and their optimizer state identical (exact mean)
            for S in [X] + list(ctx.opt_state or []):
                S.copy_(global_mean(ctx.world, S).to(S.dtype).expand_as(S))
            self.entered = True
            extra = sum(S.shape[1] for S in ctx.opt_state or []) + d
        else:  # parameters are identical already; average the BN running statistics
            if D > d:
                X[:, d:].copy_(global_mean(ctx.world, X[:, d:]).to(X.dtype).expand_as(X[:, d:]))
            extra = 0
        return CommResult(1, (d + D - d + extra) * 8, 0.0)


class ControlPolicy(Policy):
    """Repeated gossip until the controlled distance is at or under the target (Sec. 3.3, 4.2)."""

    def __init__(self, factor: float, signal: str, max_steps: int):
        self.factor, self.signal, self.max_steps = factor, signal, max_steps

    def target(self, ctx: Context) -> float:  # pragma: no cover
        raise NotImplementedError

    def communicate(self, X, d, ctx):
        world, g = ctx.world, ctx.gossiper
        target = self.target(ctx)
        P = X[:, :d]
        if self.signal == "xi":
            xi0 = consensus_distance(world, P)
            planned = gossip_steps_needed(ctx.p, xi0, target)
        sent, theta = g.step(X, ctx.counter.next(), theta_cols=d)
        theta_first = float(theta.sum())
        steps, total, first = 1, sent, NAN
        while True:
            if self.signal == "xi":
                controlled = consensus_distance(world, P)
            else:  # only scalars cross the network to decide
                (th,) = allreduce_scalars(world.comm, [float(theta.sum())])
                controlled = math.sqrt(max(1.0 - ctx.p, 0.0)) * (2.0 / ctx.p) * math.sqrt(max(th, 0.0) / world.n)
                if steps == 1:
                    planned = 1 + gossip_steps_needed(ctx.p, controlled, target)
            if steps == 1:
                first = controlled
            if controlled <= target or steps >= self.max_steps:
                break
            sent, theta = g.step(X, ctx.counter.next(), theta_cols=d)
            steps, total = steps + 1, total + sent
        return CommResult(steps, total, theta_first, target=target, controlled=controlled,
                          xi=controlled if self.signal == "xi" else NAN,
                          planned=max(int(planned), 1) if math.isfinite(planned) else -1,
                          hit_cap=controlled > target, first=first)


class TargetPolicy(ControlPolicy):
    """target = factor x Xi_max of this phase in the reference (uncontrolled) run."""

    name = "target"

    def __init__(self, factor: float, xi_max: float, signal: str, max_steps: int):
        super().__init__(factor, signal, max_steps)
        self.xi_max = xi_max

    def target(self, ctx):
        return self.factor * self.xi_max


class AdaptivePolicy(ControlPolicy):
    """target = factor x EMA(phi), the EMA accumulated during the current phase (App. E.3.1)."""

    name = "adaptive"
    needs_phi = True

    def target(self, ctx):
        return self.factor * ctx.phi_ema


class GossipCounter:
    """Index s of the next gossip step: time-varying graphs use W_s, so repeated gossip within one
    iteration walks through the one-peer exponential hops. Checkpointed with the run."""

    def __init__(self, s: int = 0):
        self.s = s

    def next(self) -> int:
        s = self.s
        self.s += 1
        return s


# What a reference run must share with the controlled run for its Xi_max to be this experiment's (config.Role
# reference): the seed, the problem (n, data, model), the optimisation (optimizer, rates and schedule, momentum,
# Nesterov, weight decay) and the graph; keys nothing reads under the controlled run's config are not compared.


def reference_xi_max(cfg) -> dict[int, float]:
    """Xi_max of every target phase k, from phase k of that phase's reference trace (config.reference_for_phase).

    The paper (Sec. 4.2): a phase's target is a factor times the maximum consensus distance of *the current
    phase* in normal (uncontrolled) decentralized training. Which run that is, the paper leaves open (docs/
    protocol.md); the checks here hold for either reading: the reference must be the same experiment (n,
    topology, data, model, schedule) and must have run plain gossip in phase k, and measured Xi there. The
    shipped configs' reading (the project's choice, not a rule the paper states): for a dec-phase-k run the
    reference is the dec-phase-k Xi_max run (All-Reduce elsewhere), whose phase k starts from
    consensus as the controlled run's does; an all-gossip run is accepted too, but its phase-k maximum carries
    the previous phase's distance, so the target may never bind: the trace's /phase/ rows say so (bound_its).
    A value read from it is used only if it makes sense: a finite Xi_max >= 0 of a complete phase k."""
    out, traces = {}, {}
    unread = inapplicable_keys(cfg.to_dict())
    for k, pol in enumerate(cfg.policies, start=1):
        if pol != "target":
            continue
        path = reference_for_phase(cfg, k)
        if path not in traces:
            traces[path] = read_trace(path)
        tr = traces[path]
        ref = tr.config
        diffs = [f"{key}: reference={ref.get(key, DEFAULTS[key])!r} this run={getattr(cfg, key)!r}"
                 for key in REFERENCE_MUST_MATCH if key not in unread and ref.get(key, DEFAULTS[key]) != getattr(cfg, key)]
        if diffs:
            raise TraceError(f"reference_trace {path!r} (phase {k}) is from a different experiment: " + "; ".join(diffs))
        ref_pol = ref.get("policies", [])
        found = ref_pol[k - 1] if len(ref_pol) >= k else "<none>"
        if found != "gossip":
            raise TraceError(f"reference_trace {path!r} ran policy {found!r} in phase {k}: the target of phase {k} needs "
                             f"the Xi_max of plain gossip there (the uncontrolled dec-phase-{k} run of this experiment)")
        ph, xm = tr.phase.get("phase"), tr.phase.get("xi_max")
        if ph is None or xm is None:
            raise TraceError(f"reference_trace {path!r} has no per-phase xi_max (was it run with measure_every > 0?)")
        complete = tr.phase.get("complete", [1] * len(ph))
        got = [float(b) for a, b, c in zip(ph, xm, complete) if a == k and c == 1]
        if not got or ref.get("measure_every", DEFAULTS["measure_every"]) == 0:
            raise TraceError(f"reference_trace {path!r} has no Xi_max for phase {k}: its run must have gossiped and "
                             "measured Xi (measure_every > 0) through that phase, to its end")
        if not (math.isfinite(got[-1]) and got[-1] >= 0):
            raise TraceError(f"reference_trace {path!r}: /phase/xi_max of phase {k} is {got[-1]!r}: a maximum consensus "
                             "distance is a finite number >= 0 (a damaged trace, or not a trace of hpc_dsgd); use the "
                             f"trace of the uncontrolled dec-phase-{k} run of this experiment")
        out[k] = got[-1]
    return out


def make_policies(cfg, xi_max: dict[int, float] | None = None) -> list[Policy]:
    """One policy object per phase, from cfg.policies / cfg.target_factors."""
    out: list[Policy] = []
    for k, name in enumerate(cfg.policies, start=1):
        factor = cfg.target_factors[k - 1] if cfg.target_factors else 1.0
        if name == "allreduce":
            out.append(AllreducePolicy())
        elif name == "gossip":
            out.append(GossipPolicy())
        elif name == "csgd":
            out.append(CsgdPolicy())
        elif name == "target":
            out.append(TargetPolicy(factor, (xi_max or {})[k], cfg.control_signal, cfg.max_gossip_steps))
        else:
            out.append(AdaptivePolicy(factor, cfg.control_signal, cfg.max_gossip_steps))
    return out

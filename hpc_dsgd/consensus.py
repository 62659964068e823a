"""Consensus quantities and the per-phase communication policies.

Definitions (paper Sec. 3.2 and 5), X = this rank's (k, d) parameter rows of the n x d matrix:
  Xi_t^2    = (1/n) sum_i ||xbar - x_i||^2                (consensus distance; Allreduce of d numbers)
  Theta_t^2 = (1/n) sum_i ||(W X)_i - x_i||^2             (estimator; from the gossip step, one scalar)
  phi_t^2   = (1/n) sum_i ||g_i||^2                       (mean squared local gradient norm, Prop. 3.3)
  Xi_t <= (2/p) Theta_t                                   (Lemma A.1)

A policy is an object the training loop asks to communicate once per iteration (STYLE.md 3):
`communicate(X, d, t)` mixes X in place and returns what it did (gossip steps, bytes, Theta of
the first step). Policies: allreduce (exact averaging), gossip (one step: plain D-SGD).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .comm import Gossiper, World, allreduce_scalars, global_mean


def xi_sq_local(world: World, P: torch.Tensor) -> float:
    """This rank's share of n * Xi^2: sum over local rows of ||xbar - x_i||^2 (xbar: one Allreduce)."""
    xbar = global_mean(world, P)
    return float((P.to(torch.float64) - xbar).pow(2).sum())


def consensus_distance(world: World, P: torch.Tensor) -> float:
    """Xi_t (not squared) of the parameters P (k, d) on every rank."""
    (s,) = allreduce_scalars(world.comm, [xi_sq_local(world, P)])
    return math.sqrt(max(s, 0.0) / world.n)


@dataclass
class CommResult:
    """What one iteration's communication did on this rank."""

    steps: int  # gossip steps (0 for none, 1 for an Allreduce average)
    bytes_sent: int  # payload bytes this rank sent
    theta_sq_local: float  # sum over local rows of theta_i^2 of the first step (NaN if none)


class Policy:
    name = "policy"

    def communicate(self, X: torch.Tensor, d: int, t: int) -> CommResult:  # pragma: no cover
        raise NotImplementedError


class AllreducePolicy(Policy):
    """Exact averaging of every replica (W = 11^T/n) each iteration: Xi = 0 afterwards."""

    name = "allreduce"

    def __init__(self, gossiper: Gossiper):
        self.g = gossiper

    def communicate(self, X, d, t):
        sent, theta = self.g.allreduce_average(X, theta_cols=d)
        return CommResult(1, sent, float(theta.sum()))


class GossipPolicy(Policy):
    """Plain D-SGD: one gossip step X <- W_s X per iteration (s counts gossip steps)."""

    name = "gossip"

    def __init__(self, gossiper: Gossiper, counter: "GossipCounter"):
        self.g, self.counter = gossiper, counter

    def communicate(self, X, d, t):
        sent, theta = self.g.step(X, self.counter.next(), theta_cols=d)
        return CommResult(1, sent, float(theta.sum()))


class GossipCounter:
    """Index s of the next gossip step: time-varying graphs use W_s, so repeated gossip within one
    iteration walks through the one-peer exponential hops. Checkpointed with the run."""

    def __init__(self, s: int = 0):
        self.s = s

    def next(self) -> int:
        s = self.s
        self.s += 1
        return s


def make_policies(cfg, gossiper: Gossiper, counter: GossipCounter) -> list[Policy]:
    out: list[Policy] = []
    for name in cfg.policies:
        out.append(AllreducePolicy(gossiper) if name == "allreduce" else GossipPolicy(gossiper, counter))
    return out

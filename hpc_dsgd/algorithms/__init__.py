"""Algorithms on the D-SGD loop: one module each, one registry line each (docs/algorithms.md).

An algorithm (base.Algorithm) says, around train.iteration's unchanged shape (local step, the phase's
communication, one scalar Allreduce):
  - its extra per-replica state: companion (k, d) blocks in `state` (checkpointed beside X and the optimizer
    state, under their names, and resumed bitwise);
  - where the gradient is taken and what the optimizer sees (grad_hook: e.g. the tracker y instead of g);
  - which vector(s) are gossiped (prepare(): e.g. D2's 2 x_t - x_(t-1) + ...; gossiper(): a companion such as
    the tracker, or push-sum's weights, gossiped with the same W_t, its bytes counted in bytes_sent);
  - which config combinations it refuses (check(cfg): one line, or None).
The loop's `gossip_every` (H local steps, then the phase's communication) and the momentum kind
(optim.py) apply to every algorithm the check admits.
"""
from __future__ import annotations

from .. import algorithm_checks
from .base import Algorithm
from .d2 import D2
from .dsgd import DSGD
from .gradient_tracking import GradientTracking
from .push_sum import PushSum

ALGORITHMS: dict[str, type[Algorithm]] = {
    "dsgd": DSGD,
    "gradient_tracking": GradientTracking,
    "d2": D2,
    "push_sum": PushSum,
}


def check_config(cfg) -> str | None:
    """algorithm_checks.check_config (torch-free, what config.validate runs)."""
    return algorithm_checks.check_config(cfg)


def make_algorithm(cfg, world, reps, topology, gossiper) -> Algorithm:
    return ALGORITHMS[cfg.algorithm](cfg, world, reps, topology, gossiper)

"""The algorithm seam: what an algorithm changes in the D-SGD iteration, and the checks common to all.

train.iteration asks its algorithm for the iteration's two halves:
  local_step(t, ...)   the optimizer's begin(); begin(); the replicas' local step with the gradient hook
                       grad_hook(policy's hook) (the optimizer sees what the hook leaves in G); prepare():
                       the vector to gossip into X's parameter columns;
  communicate(t, ...)  on a communication iteration ((t + 1) % gossip_every == 0) the phase's policy
                       communicates X through self.gossip (which may gossip companions with it, under the
                       same W_s, and count their bytes); on the others nothing crosses the network (W = I:
                       gossip_steps = 0, bytes_sent = 0, theta = 0); then the optimizer's finish().
Companion state: `self.state`, (k, d) blocks, registered as reps.companions, so that checkpoints hold them
beside X and the optimizer's blocks (Replicas.state_blocks) and a resume restores them.
"""
from __future__ import annotations

import torch

from ..consensus import CommResult, Context

CONTROL = ("target", "adaptive")


class Algorithm:
    name = "dsgd"

    def __init__(self, cfg, world, reps, topology, gossiper):
        self.cfg, self.world, self.reps, self.topology = cfg, world, reps, topology
        self.state: dict[str, torch.Tensor] = {}  # companion (k, d) blocks, checkpointed under these names
        self.gossip = gossiper  # what the policies gossip X through (ctx.gossiper)
        reps.companions = self.state

    @classmethod
    def check(cls, cfg) -> str | None:
        """One line saying why this config cannot run this algorithm, or None."""
        return None

    def companion(self, name: str, init: torch.Tensor | None = None) -> torch.Tensor:
        """A new (k, d) companion block (zeros, or a copy of init)."""
        reps = self.reps
        S = init.clone() if init is not None else torch.zeros(reps.k, reps.d, dtype=reps.X.dtype, device=reps.device)
        self.state[name] = S
        return S

    # -- the iteration's halves ------------------------------------------------------------------
    def grad_hook(self, policy_hook):
        return policy_hook

    def begin(self) -> None:
        """Before the local step."""

    def prepare(self) -> None:
        """After the local step: the vector to gossip into reps.X."""

    def communicates(self, t: int) -> bool:
        return (t + 1) % self.cfg.gossip_every == 0

    def local_step(self, t: int, ipe: int, lr: float, policy, ctx: Context) -> tuple[float, float, float, float]:
        reps = self.reps
        reps.opt.begin(reps.P)
        self.begin()
        stats = reps.local_step(t, t // ipe, t % ipe, lr, grad_hook=self.grad_hook(policy.grad_hook(ctx)))
        self.prepare()
        return stats

    def communicate(self, t: int, lr: float, policy, ctx: Context) -> CommResult:
        reps = self.reps
        res = policy.communicate(reps.X, reps.d, ctx) if self.communicates(t) else CommResult(0, 0, 0.0)
        reps.opt.finish(reps.P, lr)
        return res


class WithCompanion:
    """The gossiper the policies see when a companion (k, d) block Y travels with X: every X <- W_s X (or exact
    average) also does Y <- W_s Y with the same W_s, through a second Gossiper of row length d; the bytes
    returned are both messages'. theta stays X's."""

    def __init__(self, main, world, topology, Y: torch.Tensor):
        from ..comm import Gossiper

        self.main, self.Y = main, Y
        self.co = Gossiper(world, topology, Y.shape[1], dtype=main.dtype, capture=main.capture)

    def step(self, X, t, theta_cols=None):
        sent, theta = self.main.step(X, t, theta_cols)
        sent_y, _ = self.co.step(self.Y, t)
        return sent + sent_y, theta

    def allreduce_average(self, X, theta_cols=None):
        sent, theta = self.main.allreduce_average(X, theta_cols)
        sent_y, _ = self.co.allreduce_average(self.Y)
        return sent + sent_y, theta

    def __getattr__(self, name):
        return getattr(self.main, name)

    def free(self) -> None:
        self.co.free()
        self.main.free()

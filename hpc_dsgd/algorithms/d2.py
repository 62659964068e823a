"""D^2 (Tang, Lian, Yan, Zhang, Liu, ICML 2018, Alg. 1; exact diffusion):
    x^(t+1) = W (2 x^t - x^(t-1) - lr_t g^t + lr_(t-1) g^(t-1)),   x^(-1) = x^0, g^(-1) = 0,
written with the local optimizer's update u^t = x^(t+1/2) - x^t (= -lr_t g^t for plain SGD):
    z^t = x^(t+1/2) + (x^t - x^(t-1)) - u^(t-1),   x^(t+1) = W z^t.
Companions: Xprev (x^(t-1)) and Uprev (u^(t-1)), local. It needs a fixed symmetric W with lambda_min(W) > -1/3
(Tang et al.'s Assumption 1): config time refuses anything else (lazy_mixing = true moves the spectrum into
[0, 1])."""
from __future__ import annotations

from .base import CONTROL, Algorithm

FIXED_SYMMETRIC = ("ring", "torus", "complete")


class D2(Algorithm):
    name = "d2"

    def __init__(self, cfg, world, reps, topology, gossiper):
        super().__init__(cfg, world, reps, topology, gossiper)
        self.Xprev = self.companion("Xprev", reps.P)  # x^(-1) = x^0
        self.Uprev = self.companion("Uprev")
        self._xt = None

    @classmethod
    def check(cls, cfg):
        from ..topology import Topology

        if "csgd" in cfg.policies:
            return ("algorithm='d2' with a csgd phase: csgd averages gradients, D2 mixes iterates; use allreduce there")
        if any(p in CONTROL for p in cfg.policies):
            return (f"algorithm='d2' with policies={cfg.policies}: target/adaptive repeat gossip, so the mixing "
                    "matrix (W^m) changes each iteration, and D2 (Tang et al. 2018) is defined for one fixed W; "
                    "use gossip or allreduce")
        if cfg.gossip_every != 1:
            return (f"algorithm='d2' with gossip_every={cfg.gossip_every}: local steps make the mixing matrix "
                    "alternate between I and W, and D2 is defined for one fixed W; use gossip_every = 1")
        if cfg.optimizer != "sgd":
            return f"algorithm='d2' with optimizer={cfg.optimizer!r}: D2 corrects SGD updates; use optimizer='sgd'"
        if cfg.topology not in FIXED_SYMMETRIC:
            return (f"algorithm='d2' with topology={cfg.topology!r}: D2 needs one fixed symmetric W; use one of "
                    f"{', '.join(FIXED_SYMMETRIC)}")
        topo = Topology(cfg.topology, cfg.n, seed=cfg.seed, shape=tuple(cfg.torus_shape) if cfg.torus_shape else None,
                        lazy=cfg.lazy_mixing)
        lam = topo.lambda_min()
        if lam <= -1.0 / 3.0 + 1e-9:
            return (f"algorithm='d2' on {topo.describe()}: the smallest eigenvalue of W is {lam:.4f}, D2 needs it "
                    f"above -1/3 (Tang et al. 2018); set lazy_mixing = true (W -> (I+W)/2, smallest eigenvalue "
                    f"{(1 + lam) / 2:.4f})")
        return None

    def begin(self):
        self._xt = self.reps.P.clone()  # x^t

    def prepare(self):
        P, xt = self.reps.P, self._xt
        u = P - xt  # u^t
        P.add_(xt - self.Xprev).sub_(self.Uprev)  # z^t = x^(t+1/2) + (x^t - x^(t-1)) - u^(t-1)
        self.Xprev.copy_(xt)
        self.Uprev.copy_(u)
        self._xt = None

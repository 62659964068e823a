"""D^2 (Tang, Lian, Yan, Zhang, Liu, ICML 2018, Alg. 1; exact diffusion):
    x^(t+1) = W (2 x^t - x^(t-1) - lr_t g^t + lr_(t-1) g^(t-1)),   x^(-1) = x^0, g^(-1) = 0,
written with the local optimizer's update u^t = x^(t+1/2) - x^t (= -lr_t g^t for plain SGD):
    z^t = x^(t+1/2) + (x^t - x^(t-1)) - u^(t-1),   x^(t+1) = W z^t.
Companions: Xprev (x^(t-1)) and Uprev (u^(t-1)), local. It needs a fixed symmetric W with lambda_min(W) > -1/3
(Tang et al.'s Assumption 1): config time refuses anything else (lazy_mixing = true moves the spectrum into
[0, 1])."""
from __future__ import annotations

from .. import algorithm_checks
from .base import Algorithm


class D2(Algorithm):
    name = "d2"

    def __init__(self, cfg, world, reps, topology, gossiper):
        super().__init__(cfg, world, reps, topology, gossiper)
        self.Xprev = self.companion("Xprev", reps.P)  # x^(-1) = x^0
        self.Uprev = self.companion("Uprev")
        self._xt = None

    check = staticmethod(algorithm_checks.check_d2)

    def begin(self):
        self._xt = self.reps.P.clone()  # x^t

    def prepare(self):
        P, xt = self.reps.P, self._xt
        u = P - xt  # u^t
        P.add_(xt - self.Xprev).sub_(self.Uprev)  # z^t = x^(t+1/2) + (x^t - x^(t-1)) - u^(t-1)
        self.Xprev.copy_(xt)
        self.Uprev.copy_(u)
        self._xt = None

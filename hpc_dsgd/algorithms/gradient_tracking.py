"""Gradient tracking, the adapt-then-combine form (DIGing/ATC of Nedic, Olshevsky, Shi 2017 and Xu et al. 2015;
docs/algorithms.md):
    y_i^(t+1/2) = y_i^t + g_i^t - g_i^(t-1)          (y^0 = 0, g^(-1) = 0: y^(1/2) = g^0)
    x_i^(t+1/2) = x_i^t - lr y_i^(t+1/2)             (the local optimizer's step on y instead of g)
    x^(t+1) = W_t x^(t+1/2),  y^(t+1) = W_t y^(t+1/2)  (the same W_t: both gossiped by the phase's policy)
Companions: Y (the tracker y, gossiped: its bytes count in bytes_sent) and Gprev (g^(t-1), local).
Since every W_t is doubly stochastic, mean_i y_i = mean_i g_i at every step: the tracker follows the
global gradient, which removes D-SGD's data-heterogeneity bias."""
from __future__ import annotations

from .. import algorithm_checks
from .base import Algorithm, WithCompanion


class GradientTracking(Algorithm):
    name = "gradient_tracking"

    def __init__(self, cfg, world, reps, topology, gossiper):
        super().__init__(cfg, world, reps, topology, gossiper)
        self.Y, self.Gprev = self.companion("Y"), self.companion("Gprev")
        self.gossip = WithCompanion(gossiper, world, topology, self.Y)

    check = staticmethod(algorithm_checks.check_gradient_tracking)

    def grad_hook(self, policy_hook):
        Y, Gprev = self.Y, self.Gprev

        def track(G):  # G: this iteration's mini-batch gradients g^t (k, d); the optimizer then steps on y
            Y.add_(G).sub_(Gprev)
            Gprev.copy_(G)
            G.copy_(Y)
        return track

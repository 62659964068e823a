"""Push-sum on directed, time-varying graphs: Stochastic Gradient Push (Assran, Loizou, Ballas, Rabbat, ICML 2019,
Alg. 1; docs/algorithms.md). With P_t the column-stochastic mixing of gossip step t (topology.py: x <- P_t x,
e.g. directed_exponential, directed_random; any doubly stochastic W also qualifies) and u_i^t the local
optimizer's update computed from the gradient taken at the de-biased parameters z_i^t = x_i^t / w_i^t:
    x_i^(t+1/2) = x_i^t + u_i^t                 (= x_i^t - lr g_i(z_i^t) for plain SGD)
    x^(t+1) = P_t x^(t+1/2),   w^(t+1) = P_t w^t,   z^(t+1) = x^(t+1) / w^(t+1)      (w^0 = 1, x^0 = z^0)
and on a local iteration (gossip_every > 1) P_t = I: x^(t+1) = x^(t+1/2), w^(t+1) = w^t.

X holds z (so the evaluation, Xi, Theta and the checkpoints' X are z's); x exists inside an iteration only.
Since x^t = w^t z^t, the half step is formed from z, the optimizer's output z' = z^t + u^t (reps.P after the
local step) and w, exactly as the code computes it (float64 w; the float32 rows are rounded once per line):
    x^(t+1/2) = z' + (w^t - 1) z^t              (parameter columns; the batch-norm running statistics b, which
    b_x = w^t b                                   ride in X's other columns, are push-summed as z-quantities too)
    X <- x^(t+1/2) / w^t                        (= z^(t+1/2), what Xi_pre measures; on a local iteration z^(t+1))
    communication:  X <- P_t x^(t+1/2),  w <- P_t w,  X <- X / w
Theta_i^2 = ||z_i^(t+1) - z_i^(t+1/2)||^2 (the change of z the gossip made). On a doubly stochastic W every w
stays exactly 1 when its rows sum to 1 in floating point (directed_exponential, one_peer_exponential: 1/2 + 1/2;
the ring: 1/3 three times), and then every line above is D-SGD's bitwise (tests/serial/test_push_sum.py).
Companion: `push_sum_w` (k, 1) float64, gossiped with X under the same P_t (its 8 bytes per row sent count
in bytes_sent), checkpointed and resumed with X. The snapshot z^t and x^(t+1/2) live within one iteration only.
"""
from __future__ import annotations

import torch

from .. import algorithm_checks
from .base import Algorithm


class PushSumGossip:
    """The gossiper the policies see under push-sum: step() / allreduce_average() mix x^(t+1/2) (held in `xh`,
    set by PushSum.prepare) and w with the same P_t (a second Gossiper of row length 1, float64), then leave
    z = x / w in X; theta is z's change. A second call in one iteration mixes x^(t+1) again (xh follows)."""

    def __init__(self, main, world, topology, w: torch.Tensor, xh: torch.Tensor):
        from ..comm import Gossiper

        self.main, self.w, self.xh = main, w, xh
        self.co = Gossiper(world, topology, 1, dtype=torch.float64)

    def _mix(self, X, theta_cols, mix_x, mix_w):
        zh = X[:, :theta_cols].clone() if theta_cols is not None else None
        X.copy_(self.xh)
        sent, _ = mix_x(X)
        sent_w, _ = mix_w(self.w)
        self.xh.copy_(X)
        X.div_(self.w)
        theta = None if zh is None else (X[:, :theta_cols] - zh).pow(2).sum(dim=1, dtype=torch.float64)
        return sent + sent_w, theta

    def step(self, X, t, theta_cols=None):
        return self._mix(X, theta_cols, lambda A: self.main.step(A, t), lambda w: self.co.step(w, t))

    def allreduce_average(self, X, theta_cols=None):
        return self._mix(X, theta_cols, self.main.allreduce_average, self.co.allreduce_average)

    def __getattr__(self, name):
        return getattr(self.main, name)

    def free(self) -> None:
        self.co.free()
        self.main.free()


class PushSum(Algorithm):
    name = "push_sum"

    def __init__(self, cfg, world, reps, topology, gossiper):
        super().__init__(cfg, world, reps, topology, gossiper)
        self.w = torch.ones(reps.k, 1, dtype=torch.float64, device=reps.device)
        self.state["push_sum_w"] = self.w
        self.gossip = PushSumGossip(gossiper, world, topology, self.w, torch.empty_like(reps.X))
        self._zt = torch.empty_like(reps.P)  # z^t of the current iteration (a buffer: no allocation per iteration)

    check = staticmethod(algorithm_checks.check_push_sum)

    def begin(self):
        self._zt.copy_(self.reps.P)  # z^t

    def prepare(self):
        reps, w, xh = self.reps, self.w, self.gossip.xh
        d = reps.d
        xh.copy_(reps.X)  # z' (parameters) and the buffers b
        xh[:, :d].add_((w - 1.0) * self._zt)  # x^(t+1/2) = z' + (w^t - 1) z^t
        xh[:, d:].mul_(w)  # b_x = w^t b
        reps.X.copy_(xh).div_(w)  # z^(t+1/2)

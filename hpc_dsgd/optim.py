"""Local optimizers on a rank's (k, d) parameter block: one update for all k replicas at once.

Each optimizer's state is a dict of (k, d) blocks, row j belonging to local replica j. The state stays on
its replica: it is never gossiped (only X is), it is checkpointed per replica under its names ("M", "V"),
and the C-SGD policy averages it once on entry (consensus.py). Both follow torch.optim's arithmetic
step for step, so a single-process simulation with one torch.optim optimizer per replica is the reference
(tests/mpi/test_dsgd.py, tests/mpi/test_translation.py):

  sgd   torch.optim.SGD(momentum, dampening=0, nesterov, weight_decay): state M (momentum buffer). The
        learning rate is read from a device tensor, so the step can be captured once in a CUDA graph;
  adam  torch.optim.Adam(betas, eps, weight_decay) without amsgrad: state M (exp_avg) and V (exp_avg_sq);
        the step count is the iteration t + 1 (every replica steps at every iteration), so it needs no
        state of its own and a resumed or branched run continues the bias correction exactly.
  sgd with momentum_kind = "quasi_global" (Lin et al., ICML 2021, Alg. 1; docs/algorithms.md): the same step
        with the buffer M holding the quasi-global momentum m^, which finish() updates after the
        communication from the replica's displacement over the whole iteration (local step + gossip):
        d = (x_t - x_(t+1)) / lr,  m^ <- beta m^ + (1 - beta) d.

begin(P) is called before the local step and finish(P, lr) after the iteration's communication (no-ops
for the local optimizers).
"""
from __future__ import annotations

import torch

from .algorithm_checks import MOMENTUM_KINDS  # noqa: F401 - re-exported: the momentum kinds, named once
from .config import OPTIMIZERS  # the config values of optimizer (declared there)

NORM_LAYERS = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm)


def decay_mask(model: torch.nn.Module) -> torch.Tensor:
    """(d,) 1 for a parameter that takes weight decay, 0 for a normalisation layer's scale and shift, in
    model.parameters() order (the column order of X). With weight_decay_bn = false the optimizer decays only
    the 1 columns: torch.optim with two parameter groups, the norm layers' at weight_decay 0."""
    norm = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    return torch.cat([torch.full((p.numel(),), 0.0 if id(p) in norm else 1.0) for p in model.parameters()])


def _decay(opt, P: torch.Tensor, G: torch.Tensor) -> None:
    """G += wd * P, on every column or (wd_row set) only where the mask is 1."""
    if opt.wd_row is not None:
        G.addcmul_(P, opt.wd_row)
    elif opt.wd:
        G.add_(P, alpha=opt.wd)


class LocalSGD:
    names = ("M",)
    capturable = True  # reads the learning rate from a device tensor

    def __init__(self, cfg, k: int, d: int, device):
        self.momentum, self.nesterov, self.wd = cfg.momentum, cfg.nesterov, cfg.weight_decay
        self.wd_row = None  # (1, d) wd x decay_mask when weight_decay_bn is false (Replicas sets it)
        self.state = {"M": torch.zeros(k, d, device=device)}

    def step(self, P: torch.Tensor, G: torch.Tensor, neg_lr: torch.Tensor, lr: float, t: int) -> None:
        """P -= lr * update(G); G is overwritten. neg_lr: -lr as a 0-dim device tensor."""
        M = self.state["M"]
        _decay(self, P, G)
        if self.momentum:
            M.mul_(self.momentum).add_(G)  # buf = mu buf + g (first step: buf = g, as M starts at 0)
            if self.nesterov:
                G.add_(M, alpha=self.momentum)  # g + mu buf
            else:
                G.copy_(M)
        P.addcmul_(G, neg_lr)

    def begin(self, P: torch.Tensor) -> None:
        pass

    def finish(self, P: torch.Tensor, lr: float) -> None:
        pass


class QuasiGlobalSGD(LocalSGD):
    """SGD whose momentum buffer is the quasi-global momentum m^ (Lin et al. 2021, Alg. 1, mu = beta):
      m_i = beta m^_i + g_i;  x_i^(t+1/2) = x_i^t - lr m_i (Nesterov: - lr (g_i + beta m_i));
      x^(t+1) = W x^(t+1/2) (the phase's communication);  d_i = (x_i^t - x_i^(t+1)) / lr;
      m^_i <- beta m^_i + (1 - beta) d_i.
    The state is still one (k, d) block "M" (= m^ between iterations): checkpoints hold m^."""

    capturable = True

    def begin(self, P: torch.Tensor) -> None:
        self._x0, self._m0 = P.clone(), self.state["M"].clone()  # x_t and m^_(t-1) (the step overwrites M)

    def finish(self, P: torch.Tensor, lr: float) -> None:
        d = (self._x0 - P).div_(lr)
        self.state["M"].copy_(self._m0.mul_(self.momentum).add_(d, alpha=1.0 - self.momentum))
        self._x0 = self._m0 = None


class LocalAdam:
    names = ("M", "V")
    capturable = False  # the bias corrections are host floats of the step count

    def __init__(self, cfg, k: int, d: int, device):
        (self.b1, self.b2), self.eps, self.wd = cfg.adam_betas, cfg.adam_eps, cfg.weight_decay
        self.wd_row = None
        self.state = {"M": torch.zeros(k, d, device=device), "V": torch.zeros(k, d, device=device)}

    def step(self, P: torch.Tensor, G: torch.Tensor, neg_lr: torch.Tensor, lr: float, t: int) -> None:
        M, V = self.state["M"], self.state["V"]
        _decay(self, P, G)
        M.lerp_(G, 1.0 - self.b1)
        V.mul_(self.b2).addcmul_(G, G, value=1.0 - self.b2)
        step = t + 1
        bc1, bc2 = 1.0 - self.b1 ** step, 1.0 - self.b2 ** step
        denom = (V.sqrt() / bc2 ** 0.5).add_(self.eps)
        P.addcdiv_(M, denom, value=-lr / bc1)

    def begin(self, P: torch.Tensor) -> None:
        pass

    def finish(self, P: torch.Tensor, lr: float) -> None:
        pass



def make_optimizer(cfg, k: int, d: int, device):
    if cfg.optimizer == "adam":
        return LocalAdam(cfg, k, d, device)
    if cfg.optimizer == "sgd":
        return QuasiGlobalSGD(cfg, k, d, device) if cfg.momentum_kind == "quasi_global" else LocalSGD(cfg, k, d, device)
    raise ValueError(f"optimizer={cfg.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")

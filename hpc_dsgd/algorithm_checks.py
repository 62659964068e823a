"""The algorithms' config checks, torch-free (config.validate runs them before any work; the algorithm modules
in algorithms/ name theirs in CHECKS). One line saying why a combination cannot run, or None.
"""
from __future__ import annotations

from .topology import NOT_DOUBLY_STOCHASTIC, Topology

MOMENTUM_KINDS = ("local", "quasi_global")
CONTROL = ("target", "adaptive")
FIXED_SYMMETRIC = ("ring", "torus", "complete")
ALGORITHM_NAMES = ("dsgd", "gradient_tracking", "d2", "push_sum")


def check_common(cfg) -> str | None:
    """gossip_every, momentum_kind and a column-stochastic-only topology, for every algorithm."""
    csgd = "csgd" in cfg.policies
    if cfg.topology in NOT_DOUBLY_STOCHASTIC and cfg.algorithm != "push_sum":
        return (f"topology={cfg.topology!r} with algorithm={cfg.algorithm!r}: its mixing is column-stochastic, not "
                "doubly stochastic, so x <- W x drifts from the average (replicas with more in-neighbours weigh "
                "more); use algorithm='push_sum', which de-biases it (z = x / w)")
    if cfg.gossip_every < 1:
        return f"gossip_every={cfg.gossip_every}: need >= 1 (1 = communicate every iteration, H = every H-th)"
    if cfg.gossip_every > 1 and csgd:
        return (f"gossip_every={cfg.gossip_every} with a csgd phase: csgd averages the gradients at every "
                "iteration (centralized SGD has no local steps); use allreduce (local SGD) or gossip there")
    if cfg.momentum_kind not in MOMENTUM_KINDS:
        return f"momentum_kind={cfg.momentum_kind!r}: choose one of {', '.join(MOMENTUM_KINDS)}"
    if cfg.momentum_kind == "quasi_global":
        if cfg.optimizer != "sgd" or cfg.momentum <= 0:
            return (f"momentum_kind='quasi_global' needs optimizer='sgd' with momentum > 0 (got optimizer="
                    f"{cfg.optimizer!r}, momentum={cfg.momentum}): it is a heavy-ball/Nesterov buffer "
                    "(Lin et al. 2021)")
        if cfg.algorithm != "dsgd":
            return (f"momentum_kind='quasi_global' with algorithm={cfg.algorithm!r}: quasi-global momentum is "
                    "defined on D-SGD (Lin et al. 2021, Alg. 1); use algorithm='dsgd' or momentum_kind='local'")
        if csgd:
            return ("momentum_kind='quasi_global' with a csgd phase: csgd keeps one global momentum (the replicas "
                    "are identical), there is no local drift to correct; use momentum_kind='local'")
    return None


def check_gradient_tracking(cfg) -> str | None:
    if "csgd" in cfg.policies:
        return ("algorithm='gradient_tracking' with a csgd phase: csgd averages the gradients exactly, so every "
                "tracker would be the mean gradient and there is nothing to track; use allreduce there, or dsgd")
    if cfg.optimizer != "sgd":
        return (f"algorithm='gradient_tracking' with optimizer={cfg.optimizer!r}: the tracker replaces the "
                "gradient of an SGD step (DIGing); use optimizer='sgd'")
    return None


def check_d2(cfg) -> str | None:
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


def check_push_sum(cfg) -> str | None:
    if "csgd" in cfg.policies:
        return ("algorithm='push_sum' with a csgd phase: csgd averages the gradients, the replicas stay identical "
                "and there is no push-sum weight to de-bias; use allreduce or gossip there")
    if any(p in CONTROL for p in cfg.policies):
        return (f"algorithm='push_sum' with policies={cfg.policies}: target/adaptive plan gossip rounds with p of "
                "Assumption 1 and the Theta bound, both for a doubly stochastic W; push-sum's column-stochastic "
                "P_t and z = x / w are not covered (on a doubly stochastic topology push_sum is dsgd: use "
                "algorithm='dsgd' there); use gossip or allreduce")
    return None


CHECKS = {"dsgd": lambda cfg: None, "gradient_tracking": check_gradient_tracking, "d2": check_d2,
          "push_sum": check_push_sum}


def check_config(cfg) -> str | None:
    """The one-line reason this config's algorithm settings cannot run, or None (config.validate raises it)."""
    if cfg.algorithm not in CHECKS:
        return f"algorithm={cfg.algorithm!r}: choose one of {', '.join(CHECKS)}"
    return check_common(cfg) or CHECKS[cfg.algorithm](cfg)

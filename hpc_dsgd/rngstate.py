"""A process's global random-number states (torch CPU and CUDA, numpy, Python) as plain data: captured into
every checkpoint's rank file, checked before use, restored on a resume with the same ranks x k layout.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def capture_rank_state() -> dict:
    """This process's global RNG states as plain data: torch (CPU and every CUDA device in use) as
    uint8 tensors, numpy's MT19937 and Python's Mersenne Twister as integer lists."""
    alg, key, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"algorithm": str(alg), "key": [int(x) for x in key], "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "random": {"version": int(version), "internal": [int(x) for x in internal], "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def check_rank_state(state) -> None:
    """ValueError unless `state` has the structure capture_rank_state produces (checked before use)."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"rank_state: {what}")

    need(isinstance(state, dict) and {"torch", "numpy", "random"} <= set(state), "needs keys torch, numpy, random")
    t = state["torch"]
    need(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1 and t.numel() == torch.get_rng_state().numel(),
         "torch: needs the uint8 state tensor of torch.get_rng_state()")
    npst = state["numpy"]
    need(isinstance(npst, dict) and npst.get("algorithm") == "MT19937" and isinstance(npst.get("key"), list)
         and len(npst["key"]) == 624 and all(isinstance(x, int) and 0 <= x < 2 ** 32 for x in npst["key"])
         and isinstance(npst.get("pos"), int) and isinstance(npst.get("has_gauss"), int)
         and isinstance(npst.get("cached_gaussian"), (int, float)), "numpy: needs an MT19937 state (624 keys, pos, ...)")
    r = state["random"]
    need(isinstance(r, dict) and isinstance(r.get("version"), int) and isinstance(r.get("internal"), list)
         and len(r["internal"]) == 625 and all(isinstance(x, int) and 0 <= x < 2 ** 32 for x in r["internal"])
         and (r.get("gauss_next") is None or isinstance(r["gauss_next"], float)),
         "random: needs Python's Mersenne Twister state (625 integers)")
    cuda = state.get("cuda", [])
    need(isinstance(cuda, list) and all(isinstance(c, torch.Tensor) and c.dtype == torch.uint8 for c in cuda),
         "cuda: needs a list of uint8 state tensors")


def restore_rank_state(state: dict) -> None:
    """Inverse of capture_rank_state (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["algorithm"], np.array(n["key"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    r = state["random"]
    random.setstate((r["version"], tuple(r["internal"]), r["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

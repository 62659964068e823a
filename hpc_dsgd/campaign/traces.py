"""A run's trace as the campaign reads it: status, progress, ETA, last metric (h5py and numpy, no torch)."""
from __future__ import annotations

import os


def trace_status(path: str) -> str | None:
    """The trace's status attribute (None: no trace)."""
    info = trace_progress(path)
    return info.get("status") if info else None


def trace_progress(path: str) -> dict | None:
    """status, config_json, iteration done, total_iters, ETA seconds and the last evaluation's metric, or None.
    The trace is opened through trace.open_for_reading, which waits while the writer holds HDF5's file lock."""
    if not os.path.isfile(path):
        return None
    import numpy as np

    from ..trace import open_for_reading

    try:
        with open_for_reading(path, wait=10.0) as f:
            a = f.attrs
            out = {"status": _s(a.get("status", "unknown")), "config_json": _s(a.get("config_json", "{}")),
                   "total": int(a.get("total_iters", 0) or 0)}
            it = f["iter/it"] if "iter" in f and "it" in f["iter"] else None
            out["it"] = int(it[it.shape[0] - 1]) + 1 if it is not None and it.shape[0] else 0
            ep = f["epoch"] if "epoch" in f else {}
            for m in ("test_acc_avg", "bleu_avg"):
                if m in ep and ep[m].shape[0]:
                    col = np.asarray(ep[m][()], dtype=float)
                    col = col[np.isfinite(col)]
                    if col.size:
                        out["metric"] = (m, float(col[-1]))
                        break
            if "elapsed" in ep and "it" in ep and ep["it"].shape[0]:
                el, eit = float(ep["elapsed"][-1]), int(ep["it"][-1]) + 1
                if eit > 0 and out["total"]:
                    out["eta"] = el / eit * max(out["total"] - out["it"], 0)
    except (OSError, ValueError, TypeError, KeyError) as e:
        return {"status": "unreadable", "error": str(e), "it": 0, "total": 0, "config_json": "{}"}
    return out


def _s(v):
    return v.decode() if isinstance(v, bytes) else str(v)

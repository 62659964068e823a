"""Fault injection for the failure-handling tests: HPC_DSGD_INJECT_FAULT="rank=R,it=T[,at=POINT][,kind=K]".

POINT: "iteration" (default; start of iteration T), "checkpoint" (inside the checkpoint of
iteration T, after the rank files and before the manifest), "checkpoint_write" (rank R's file of
that checkpoint written but not yet fsynced and renamed) or "trace_write" (rank 0, in the middle of
writing the new copy of the trace whose flush brings it to T iteration rows). K: "raise" (default; a RuntimeError on
rank R), "kill" (SIGKILL to the whole process group: kill -9 of the whole job, as a node failure or
the scheduler would), "kill_self" (SIGKILL to rank R alone) or "enospc" (OSError ENOSPC, as a full
disk gives). Unset in production: the check is one dictionary lookup.
"""
from __future__ import annotations

import errno
import os
import signal


def fault_point(point: str, rank: int, it: int) -> None:
    spec = os.environ.get("HPC_DSGD_INJECT_FAULT")
    if not spec:
        return
    kv = dict(item.split("=", 1) for item in spec.split(","))
    if kv.get("at", "iteration") != point or int(kv["rank"]) != rank or int(kv["it"]) != it:
        return
    kind = kv.get("kind", "raise")
    if kind == "kill":
        os.killpg(os.getpgrp(), signal.SIGKILL)
    if kind == "kill_self":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected on rank {rank} at iteration {it})")
    raise RuntimeError(f"injected fault on rank {rank} at iteration {it} (HPC_DSGD_INJECT_FAULT)")

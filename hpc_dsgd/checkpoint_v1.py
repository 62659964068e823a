"""Format 1 -> format 2: the one-off upgrader of the earlier checkpoint format.

Format 1 stored each rank's state as a Python pickle (torch.save of dicts, tuples, tensors and the numpy RNG's
uint32 key array); checkpoint.py refuses it with the command that calls this module:
`python -m hpc_dsgd checkpoint upgrade PATH`. Nothing else in the package reads format 1. The upgrader reads
the old files with torch's restricted unpickler (torch.load(weights_only=True)), allowing beyond tensors and
containers only what format 1 held: numpy arrays (ndarray, dtype, uint32, the array reconstructor). A file
holding any other class or call is refused naming the file, and nothing in it runs.
"""
from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import torch

from .checkpoint import (
    FORMAT_VERSION,
    MANIFEST,
    CheckpointError,
    check_file,
    check_manifest,
    rank_payload,
    read_manifest,
    regular_file,
    verify_checkpoint,
    write_rank_file,
)
from .fileio import atomic_write_bytes, fsync_dir


def _numpy_array_globals() -> list:
    """What unpickling a numpy array needs (np.random.get_state()'s key), and nothing else."""
    core = getattr(np, "_core", None) or np.core
    return [np.ndarray, np.dtype, core.multiarray._reconstruct, type(np.dtype(np.uint32))]


def _load_v1(path: str, fname: str) -> dict:
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            p = torch.load(regular_file(path, fname, "rank file"), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # UnpicklingError naming the refused global, or a damaged file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path}: {fname} is not format-1 plain data ({first[:200]}); "
                              f"refused, nothing in it ran, the original is unchanged") from None
    if not isinstance(p, dict) or p.get("format") != 1:
        raise CheckpointError(f"checkpoint {path}: {fname} is not a format-1 rank file (a dict with format 1)")
    return p


def _plain_rank_state_v1(state: dict) -> dict:
    """A format-1 rank_state (numpy/random tuples) as plain data."""
    out = {"torch": state["torch"]}
    alg, key, pos, has_gauss, cached = state["numpy"]
    out["numpy"] = {"algorithm": str(alg), "key": [int(x) for x in key], "pos": int(pos),
                    "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    version, internal, gauss_next = state["random"]
    out["random"] = {"version": int(version), "internal": [int(x) for x in internal], "gauss_next": gauss_next}
    if "cuda" in state:
        out["cuda"] = list(state["cuda"])
    return out


def upgrade_checkpoint(path: str) -> str:
    """Convert a format-1 checkpoint (pickled rank files) to format 2 in place; returns the backup path.

    Reads the old files with the restricted unpickler (_load_v1: tensors, containers, numpy arrays).
    Checks every file's checksum first; writes the new checkpoint into PATH.upgrade.tmp, then renames
    PATH -> PATH.format1 (kept, ignored by readers) and PATH.upgrade.tmp -> PATH. The converted
    checkpoint holds the same tensors and states, so a run resumes from it bitwise as before."""
    path = os.path.normpath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path}: no such directory")
    old = read_manifest(path, formats=(1, FORMAT_VERSION))
    if old["format"] == FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format {FORMAT_VERSION} already: nothing to upgrade")
    backup, tmp = path + ".format1", path + ".upgrade.tmp"
    if os.path.lexists(backup):
        raise CheckpointError(f"checkpoint {path}: {backup} exists; move it away first")
    if os.path.lexists(tmp) and not (os.path.isdir(tmp) and not os.path.islink(tmp)):
        raise CheckpointError(f"checkpoint {path}: {tmp} exists and is not a directory of ours; move it away first")
    made = False
    try:
        for fname, entry in sorted(old["files"].items()):
            check_file(path, fname, entry)
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)  # the leftover of an interrupted upgrade (checked above: a real directory)
        os.makedirs(tmp)
        made = True
        files = {}
        for fname in sorted(old["files"]):
            p = _load_v1(path, fname)
            ids = [int(i) for i in p["replica_ids"]]
            payload = rank_payload(int(p["iteration"]), ids, p["tensors"], p["replica_state"],
                                    _plain_rank_state_v1(p["rank_state"]))
            files[fname] = dict(write_rank_file(os.path.join(tmp, fname), payload), replica_ids=ids)
        manifest = dict(old, format=FORMAT_VERSION, files=files, upgraded_from_format=1,
                        upgraded=time.strftime("%Y-%m-%dT%H:%M:%S"))
        check_manifest(path, manifest)
        text = json.dumps(manifest, indent=1, sort_keys=True).encode()
        atomic_write_bytes(os.path.join(tmp, MANIFEST), text)
        os.rename(path, backup)
        os.rename(tmp, path)
        fsync_dir(os.path.dirname(path) or ".")
    except CheckpointError:
        if made:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as e:  # whatever the old files hold (any exception type): the original stays as it was
        if made:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"checkpoint {path}: upgrade failed ({type(e).__name__}: {e}); "
                              f"the original is unchanged") from None
    verify_checkpoint(path)
    return backup

"""Phase and periodic checkpoints: atomic, checksummed, loadable on any ranks x k split.

Layout (FORMAT_VERSION 1):
  RUN_DIR/checkpoints/ckpt-{it:09d}/
    rank{r:05d}.pt   one per saving rank (torch.save of a dict):
                       replica_ids   global ids of the rows in this file, e.g. [4, 5]
                       tensors       name -> (k, ...) CPU tensor, row j = replica replica_ids[j] ("X", "M")
                       replica_state list of k picklable dicts, one per replica (augmentation RNG, ...)
                       rank_state    this rank's RNG states (torch, numpy, random, cuda if present)
    manifest.json    written LAST by rank 0: format, iteration, kind (phase|periodic), phase, created,
                     ranks, n, tensors (per-replica shape and dtype), the caller's `meta` (config_json,
                     topology, code revision, trace position, control state ...), and for every rank
                     file its sha256, size and replica ids.

Atomicity: every rank writes its file into ckpt-XXX.tmp/ under a temporary name, flushes, fsyncs
and renames it; after an agreement (every rank reports success or its error, so no rank waits
forever) rank 0 writes the manifest the same way, fsyncs the directory, renames ckpt-XXX.tmp ->
ckpt-XXX and fsyncs checkpoints/. A directory named ckpt-XXX therefore always holds a complete
checkpoint (unless damaged later, which the checksums catch); ckpt-XXX.tmp and ckpt-XXX.trash are
leftovers that readers ignore and the next successful save removes. Nothing touches an older
checkpoint before the new one is complete. On network file systems the directory fsyncs are best
effort (Lustre and NFS commit metadata operations on the server).

Retention: "phase" checkpoints are kept always; of the "periodic" ones the newest `keep_last` (by
iteration) are kept and older ones are deleted by rank 0 after the new checkpoint is complete
(renamed to .trash first, so a half-deleted directory never looks like a checkpoint). A checkpoint
saved at an iteration that already has one replaces it (one checkpoint per iteration: save "phase"
when a phase end and a periodic save coincide).

Loading is per replica: a rank reads only the files holding its global replica ids, so a
checkpoint written by 4 ranks x 1 replica loads on 2 ranks x 2 and vice versa. The RNG streams
of the trajectory are per replica (replica_state); the per-rank RNG states (rank_state) are
restored only when the layout is the same, since they have no meaning for another split.

Files are pickles (RNG states are Python and numpy objects): load only checkpoints you trust.
"""
from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import random
import re
import shutil
import time
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .faults import fault_point

FORMAT_VERSION = 1
KINDS = ("phase", "periodic")
CKPT_SUBDIR = "checkpoints"
MANIFEST = "manifest.json"
_NAME_RE = re.compile(r"^ckpt-(\d{9})$")
_LEFTOVER_RE = re.compile(r"^ckpt-\d{9}\.(tmp|trash)$")
_CHUNK = 1 << 20

# Config keys that may change when a run resumes (run control, paths, local resources); every
# other key must agree with the checkpoint. Entries are fnmatch patterns.
RESUME_MUST_MATCH_EXCEPT = ("name", "out_dir", "data_dir", "max_iterations", "trace_flush_seconds",
                            "device", "torch_threads", "checkpoint_*", "keep_checkpoints", "resume",
                            "sharpness_*")  # sharpness: measurements only, the trajectory is the same
# Config keys a branch (a new run started from another run's phase checkpoint) must share with it:
# the model, the data, the optimisation schedule and the trajectory's randomness; the consensus
# policies, their targets and the topology they gossip over are what a branch changes (a dec-phase-2
# ring run branches from a phase-1 checkpoint of an All-Reduce run on the complete graph).
BRANCH_MUST_MATCH = ("model", "width", "dataset", "n", "seed", "epochs", "batch_size", "base_lr",
                     "base_batch", "warmup_epochs", "warmup_lr", "decay_fractions", "decay_factor",
                     "momentum", "nesterov", "weight_decay")


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or used; the message names the path and the failing file."""


# -- paths -------------------------------------------------------------------------------------
def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CKPT_SUBDIR)


def checkpoint_path(run_dir: str, it: int) -> str:
    return os.path.join(checkpoint_dir(run_dir), f"ckpt-{it:09d}")


def rank_file(r: int) -> str:
    return f"rank{r:05d}.pt"


def list_checkpoints(run_dir: str) -> list[str]:
    """Complete-looking checkpoint directories of a run, newest (highest iteration) first.
    Leftover ckpt-XXX.tmp / .trash directories are not listed. Nothing is verified here."""
    d = checkpoint_dir(run_dir)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), name) for name in names
             if (m := _NAME_RE.match(name)) and os.path.isdir(os.path.join(d, name))]
    return [os.path.join(d, name) for _, name in sorted(found, reverse=True)]


# -- low-level I/O -----------------------------------------------------------------------------
class _HashingWriter:
    """File wrapper for torch.save: sha256 and size of exactly the bytes written."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems refuse fsync on directories
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def _atomic_write(path: str, write) -> tuple[str, int]:
    """write(fileobj) into path+'.part', flush, fsync, rename to path. Returns (sha256, size)."""
    part = path + ".part"
    with open(part, "wb") as f:
        w = _HashingWriter(f)
        write(w)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, path)
    return w.sha.hexdigest(), w.size


def _sha256(path: str) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _cpu_compact(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor owning exactly its elements (torch.save of a view would save the whole storage)."""
    t = t.detach().to("cpu")
    if not t.is_contiguous() or t.storage_offset() != 0 or t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.contiguous().clone()
    return t


def _agree(comm, error: str | None, what: str) -> None:
    """Collective: every rank learns whether any rank failed, and all raise the same error."""
    errors = comm.allgather(error)
    bad = [(r, e) for r, e in enumerate(errors) if e]
    if bad:
        r, e = bad[0]
        more = f" (and {len(bad) - 1} more rank(s))" if len(bad) > 1 else ""
        raise CheckpointError(f"{what} failed on rank {r}{more}: {e}")


# -- RNG state of a process --------------------------------------------------------------------
def capture_rank_state() -> dict:
    """This process's global RNG states: torch (CPU and every CUDA device in use), numpy, random."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rank_state(state: dict) -> None:
    """Inverse of capture_rank_state (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- save ----------------------------------------------------------------------------------------
def save_checkpoint(comm, run_dir: str, it: int, kind: str, phase: int, tensors: dict[str, torch.Tensor],
                    replica_ids: Sequence[int], replica_state: Sequence[dict], meta: dict,
                    keep_last: int = 3) -> str:
    """Collective over `comm`: write checkpoint ckpt-{it:09d} of the run and return its path (every rank).

    tensors: name -> (k, ...) tensor whose row j belongs to global replica replica_ids[j] (any device;
    saved on the CPU). replica_state: k picklable dicts. meta: JSON-serialisable run description
    (rank 0's copy goes into the manifest). keep_last: periodic checkpoints kept (<= 0: all).
    A failure on any rank raises CheckpointError on every rank; the previous checkpoints stay intact.
    """
    rank = comm.Get_rank()
    final = checkpoint_path(run_dir, it)
    tmp = final + ".tmp"
    ids = [int(i) for i in replica_ids]

    # 1. arguments (every rank) and the temporary directory (rank 0)
    error, meta_json = None, None
    try:
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}: choose one of {', '.join(KINDS)}")
        if it < 0:
            raise ValueError(f"it={it}: need a non-negative iteration")
        if len(replica_state) != len(ids):
            raise ValueError(f"{len(replica_state)} replica_state entries for {len(ids)} replica ids")
        for name, t in tensors.items():
            if t.dim() < 1 or t.shape[0] != len(ids):
                raise ValueError(f"tensor {name!r} has shape {tuple(t.shape)}: need ({len(ids)}, ...) rows, "
                                 f"one per replica id")
        if rank == 0:
            meta_json = json.dumps(meta, sort_keys=True)  # refuse non-JSON meta before any file is written
            if os.path.isdir(tmp):
                shutil.rmtree(tmp)  # leftover of an interrupted save of this same iteration
            os.makedirs(tmp)
    except Exception as e:  # noqa: BLE001 - reported on every rank by _agree
        error = f"{type(e).__name__}: {e}"
    _agree(comm, error, f"checkpoint {final}: preparing")

    # 2. every rank writes its own file
    fname = rank_file(rank)
    info, error = None, None
    try:
        payload = {"format": FORMAT_VERSION, "iteration": it, "replica_ids": ids,
                   "tensors": {name: _cpu_compact(t) for name, t in tensors.items()},
                   "replica_state": list(replica_state), "rank_state": capture_rank_state()}
        sha, size = _atomic_write(os.path.join(tmp, fname), lambda f: torch.save(payload, f))
        _fsync_dir(tmp)
        info = {"sha256": sha, "size": size, "replica_ids": ids,
                "tensors": {name: {"shape": list(t.shape[1:]), "dtype": str(t.dtype).replace("torch.", "")}
                            for name, t in tensors.items()}}
    except Exception as e:  # noqa: BLE001
        error = f"writing {os.path.join(tmp, fname)}: {type(e).__name__}: {e}"
    infos = comm.gather(info, root=0)
    _agree(comm, error, f"checkpoint {final}: writing rank files")

    # 3. rank 0: manifest last, then the rename that makes the checkpoint exist
    error = None
    fault_point("checkpoint", rank, it)
    if rank == 0:
        try:
            files = {rank_file(r): {k: v for k, v in inf.items() if k != "tensors"} for r, inf in enumerate(infos)}
            all_ids = sorted(i for inf in infos for i in inf["replica_ids"])
            manifest = {"format": FORMAT_VERSION, "iteration": it, "kind": kind, "phase": phase,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "ranks": len(infos), "n": len(all_ids),
                        "tensors": infos[0]["tensors"], "meta": json.loads(meta_json), "files": files}
            if all_ids != list(range(len(all_ids))):
                raise ValueError(f"the ranks' replica ids are not 0..n-1 exactly once: {all_ids}")
            text = json.dumps(manifest, indent=1, sort_keys=True).encode()
            _atomic_write(os.path.join(tmp, MANIFEST), lambda f: f.write(text))
            _fsync_dir(tmp)
            trash = final + ".trash"
            if os.path.isdir(final):  # one checkpoint per iteration: the new one replaces the old
                if os.path.isdir(trash):
                    shutil.rmtree(trash)
                os.rename(final, trash)
            os.rename(tmp, final)
            _fsync_dir(checkpoint_dir(run_dir))
        except Exception as e:  # noqa: BLE001
            error = f"{type(e).__name__}: {e}"
        if error is None:
            try:
                _retain_and_clean(run_dir, keep_last)
            except OSError:
                pass  # housekeeping only: the checkpoint is complete, the next save retries
    error = comm.bcast(error, root=0)
    if error:
        raise CheckpointError(f"checkpoint {final}: finishing on rank 0 failed: {error}")
    return final


def _retain_and_clean(run_dir: str, keep_last: int) -> None:
    """Rank 0, after a successful save: delete periodic checkpoints beyond the newest keep_last and
    leftover .tmp/.trash directories. Failures here never fail the save (the next save retries)."""
    d = checkpoint_dir(run_dir)
    doomed = []
    if keep_last > 0:
        periodic = []
        for path in list_checkpoints(run_dir):  # newest first
            try:
                if _read_manifest(path).get("kind") == "periodic":
                    periodic.append(path)
            except CheckpointError:
                pass  # unreadable: not ours to judge, left alone
        doomed = periodic[keep_last:]
    for path in doomed:
        try:
            os.rename(path, path + ".trash")  # never half-deleted under a checkpoint's name
        except OSError:
            pass
    for name in os.listdir(d):
        if _LEFTOVER_RE.match(name):
            shutil.rmtree(os.path.join(d, name), ignore_errors=True)
    _fsync_dir(d)


# -- verify, resolve ---------------------------------------------------------------------------
def _read_manifest(path: str) -> dict:
    mpath = os.path.join(path, MANIFEST)
    try:
        with open(mpath, "rb") as f:
            manifest = json.loads(f.read())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is missing (incomplete or not a checkpoint)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} cannot be parsed: {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is not a checkpoint manifest")
    if manifest.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} has format {manifest.get('format')!r}; "
                              f"this version reads format {FORMAT_VERSION}")
    return manifest


def _check_file(path: str, fname: str, entry: dict) -> None:
    fpath = os.path.join(path, fname)
    try:
        size = os.path.getsize(fpath)
    except OSError:
        raise CheckpointError(f"checkpoint {path}: rank file {fname} is missing") from None
    if size != entry["size"]:
        raise CheckpointError(f"checkpoint {path}: rank file {fname} has {size} bytes, the manifest says "
                              f"{entry['size']} (truncated or overwritten)")
    sha, _ = _sha256(fpath)
    if sha != entry["sha256"]:
        raise CheckpointError(f"checkpoint {path}: rank file {fname} fails its sha256 check (corrupted)")


def verify_checkpoint(path: str) -> dict:
    """The manifest of a complete, intact checkpoint; CheckpointError naming the path and the failing
    file otherwise (missing or unparseable manifest, missing or truncated rank file, checksum mismatch).
    Reads every rank file once (streaming sha256)."""
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path}: no such directory")
    manifest = _read_manifest(path)
    try:
        for fname, entry in sorted(manifest["files"].items()):
            _check_file(path, fname, entry)
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is malformed ({e!r})") from None
    return manifest


def resolve_resume(run_dir: str, spec: str) -> tuple[str | None, list[tuple[str, str]]]:
    """Which checkpoint to resume from: (path or None, [(skipped path, reason), ...]).

    spec "auto": the newest checkpoint of run_dir that verifies, skipping (and reporting) broken ones;
    (None, []) when the run has no checkpoint at all (a fresh start: `--resume auto` on a first launch).
    Checkpoints present but none intact: CheckpointError listing each one's reason.
    Any other spec is a checkpoint directory (or its name inside run_dir/checkpoints/), verified.
    """
    if spec == "auto":
        paths = list_checkpoints(run_dir)
        skipped = []
        for path in paths:
            try:
                verify_checkpoint(path)
                return path, skipped
            except CheckpointError as e:
                skipped.append((path, str(e)))
        if skipped:
            raise CheckpointError(f"run {run_dir}: none of its {len(skipped)} checkpoint(s) is intact:\n  "
                                  + "\n  ".join(reason for _, reason in skipped))
        return None, []
    path = spec
    if not os.path.isdir(path) and os.path.isdir(os.path.join(checkpoint_dir(run_dir), spec)):
        path = os.path.join(checkpoint_dir(run_dir), spec)
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {spec}: no such directory (nor {os.path.join(checkpoint_dir(run_dir), spec)}); "
                              f"use --resume auto or a ckpt-XXXXXXXXX directory")
    verify_checkpoint(path)
    return path, []


# -- load --------------------------------------------------------------------------------------
def load_checkpoint(path: str, replica_ids: Sequence[int], map_location: str | torch.device = "cpu",
                    verify: bool = True) -> tuple[dict, dict[str, torch.Tensor], list[dict], dict | None]:
    """Rows of the requested global replicas: (manifest, tensors, replica_state, rank_state).

    tensors: name -> (len(replica_ids), ...) tensor on map_location, row j = replica replica_ids[j].
    Reads only the rank files holding those replicas (each checked against its checksum if verify).
    rank_state is the saving rank's RNG state when that rank held exactly these replicas (same
    layout), else None: the trajectory's RNG streams are per replica (replica_state), a process's
    global RNG state has no meaning for another split."""
    manifest = _read_manifest(path)
    ids = [int(i) for i in replica_ids]
    where = {}  # global id -> (file, row)
    for fname, entry in manifest["files"].items():
        for row, i in enumerate(entry["replica_ids"]):
            where[i] = (fname, row)
    missing = [i for i in ids if i not in where]
    if missing:
        raise CheckpointError(f"checkpoint {path}: holds replicas 0..{manifest['n'] - 1}, not {missing} "
                              f"(the number of replicas n must agree)")
    needed = sorted({where[i][0] for i in ids})
    payloads = {}
    for fname in needed:
        if verify:
            _check_file(path, fname, manifest["files"][fname])
        try:
            payloads[fname] = torch.load(os.path.join(path, fname), map_location="cpu", mmap=True,
                                         weights_only=False)
        except Exception as e:  # noqa: BLE001 - a damaged file, whatever the unpickler raises
            raise CheckpointError(f"checkpoint {path}: rank file {fname} cannot be read: {e}") from None
    tensors = {}
    for name in manifest["tensors"]:
        rows = [payloads[where[i][0]]["tensors"][name][where[i][1]] for i in ids]
        tensors[name] = torch.stack(rows).to(map_location) if rows else torch.empty(0)
    replica_state = [payloads[where[i][0]]["replica_state"][where[i][1]] for i in ids]
    rank_state = None
    if len(needed) == 1 and manifest["files"][needed[0]]["replica_ids"] == ids:
        rank_state = payloads[needed[0]]["rank_state"]
    return manifest, tensors, replica_state, rank_state


# -- compatibility -----------------------------------------------------------------------------
def saved_config(saved_meta: dict) -> dict:
    """The config dict recorded in a manifest's meta (its "config_json" or "config"), else meta itself."""
    if "config_json" in saved_meta:
        return json.loads(saved_meta["config_json"])
    if isinstance(saved_meta.get("config"), dict):
        return saved_meta["config"]
    return saved_meta


def check_compatible(saved_meta: dict, cfg_dict: dict, keys: Iterable[str] | None = None,
                     exclude: Iterable[str] = ()) -> list[str]:
    """Differences "key: checkpoint=... config=..." between the checkpoint's config and cfg_dict, over
    `keys` (None: every key of either side) minus the fnmatch patterns in `exclude`. Empty = compatible.
    Resume: check_compatible(m["meta"], cfg.to_dict(), exclude=RESUME_MUST_MATCH_EXCEPT);
    branch: check_compatible(m["meta"], cfg.to_dict(), keys=BRANCH_MUST_MATCH)."""
    saved = saved_config(saved_meta)
    names = list(keys) if keys is not None else sorted(set(saved) | set(cfg_dict))
    patterns = list(exclude)
    absent = "<absent>"
    out = []
    for key in names:
        if any(fnmatch.fnmatchcase(key, p) for p in patterns):
            continue
        a, b = saved.get(key, absent), cfg_dict.get(key, absent)
        if a != b:
            out.append(f"{key}: checkpoint={json.dumps(a) if a is not absent else absent} "
                       f"config={json.dumps(b) if b is not absent else absent}")
    return out

"""Phase and periodic checkpoints: atomic, checksummed, loadable on any ranks x k split, plain data only.

Layout (FORMAT_VERSION 2):
  RUN_DIR/checkpoints/ckpt-{it:09d}/
    rank{r:05d}.pt   one per saving rank: torch.save of a flat dict str -> CPU tensor, nothing else,
                     read back with torch.load(weights_only=True), which refuses any pickled class:
                       "t.<name>"  (k, ...) tensor, row j = replica replica_ids[j] ("t.X", "t.M")
                       "b.<i>"     tensors referenced from the JSON document below ({"$tensor": "b.<i>"})
                       "json"      uint8 tensor: UTF-8 JSON {format, iteration, replica_ids,
                                   replica_state (k plain dicts, one per replica), rank_state (this
                                   rank's RNG states: torch/CUDA as uint8 tensors, numpy's and Python's
                                   as integer lists)}
    manifest.json    written LAST by rank 0: format, iteration, kind (phase|periodic), phase, created,
                     ranks, n, tensors (per-replica shape and dtype), the caller's `meta` (config_json,
                     topology, code revision, trace position, control state ...), and for every rank
                     file its sha256, size, replica ids and every key with its shape and dtype.

Plain data: replica_state and rank_state may hold only dicts with str keys, lists, str, int, float,
bool, None and tensors. Loading checks the checksum, then every key, shape and dtype of a rank file
against the manifest, then the JSON document's structure; anything else is a CheckpointError naming
the file. Loading never runs code from a file. Format 1 (pickled rank files, the earlier format)
is refused with the command that converts a checkpoint you trust: `python -m hpc_dsgd checkpoint
upgrade PATH` (checkpoint_v1.upgrade_checkpoint; the original is kept as PATH.format1).

Bounded, contained reading (every reader: verify, resume, branch, upgrade, sharpness, surfaces): a
file name from a manifest must be rank<5 digits>.pt; every file is lstat-checked to be a regular file
before it is opened (no symlink out, no FIFO or device that could hang or never end) and opened
O_NONBLOCK|O_NOFOLLOW; manifest.json is at most MANIFEST_MAX_BYTES and JSON_MAX_DEPTH deep, its fields
typed and in range (n <= MAX_REPLICAS, meta.loop, meta.config_json) and, for a training checkpoint, its
per-replica tensor sizes those of the run's model; every tensor of a rank file, inspected memory-mapped,
must be contiguous and own exactly its elements before anything is copied.

Atomicity: every rank writes its file into ckpt-XXX.tmp/ under a temporary name, flushes, fsyncs
and renames it; after an agreement (every rank reports success or its error, so no rank waits
forever) rank 0 writes the manifest the same way, fsyncs the directory, renames ckpt-XXX.tmp ->
ckpt-XXX and fsyncs checkpoints/. A directory named ckpt-XXX therefore always holds a complete
checkpoint (unless damaged later, which the checksums catch); ckpt-XXX.tmp and ckpt-XXX.trash are
leftovers that readers ignore and the next successful save removes. Nothing touches an older
checkpoint before the new one is complete (a full disk during a save leaves the previous ones as
they were). On network file systems the directory fsyncs are best effort (Lustre and NFS commit
metadata operations on the server).

Retention: "phase" checkpoints are kept always; of the "periodic" ones the newest `keep_last` (by
iteration) are kept and older ones are deleted by rank 0 after the new checkpoint is complete
(renamed to .trash first, so a half-deleted directory never looks like a checkpoint). A checkpoint
saved at an iteration that already has one replaces it (one checkpoint per iteration: save "phase"
when a phase end and a periodic save coincide).

Loading is per replica: a rank reads only the files holding its global replica ids, so a
checkpoint written by 4 ranks x 1 replica loads on 2 ranks x 2 and vice versa. The per-replica
state (replica_state) follows its replica; the per-rank RNG states (rank_state) are restored only
when the layout is the same, since they have no meaning for another split.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import pickle
import random
import re
import shutil
import stat
import time
from collections.abc import Sequence

import numpy as np
import torch

from .compat import saved_config  # noqa: F401 (re-export: analysis/surface.py reads it from here)
from .faults import fault_point
from .trace import fsync_dir

FORMAT_VERSION = 2  # 1: pickled rank files (refused; `python -m hpc_dsgd checkpoint upgrade`)
KINDS = ("phase", "periodic")
CKPT_SUBDIR = "checkpoints"
MANIFEST = "manifest.json"
_NAME_RE = re.compile(r"^ckpt-(\d{9})$")
_LEFTOVER_RE = re.compile(r"^ckpt-\d{9}\.(tmp|trash)$")
_CHUNK = 1 << 20
# Bounds on what a checkpoint's files may claim before anything is parsed or allocated.
MANIFEST_MAX_BYTES = 64 << 20  # a manifest of 2**20 rank files and a long meta stays far below
JSON_MAX_DEPTH = 64  # a manifest or rank document nests about 6 deep
MAX_REPLICAS = 1 << 20

class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the path and the failing file."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint that could not be written (full disk, I/O error, non-plain state); the previous
    checkpoints are untouched."""


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


_fsync_dir = fsync_dir  # trace.fsync_dir: one implementation for every durable rename


def _regular_file(path: str, fname: str, what: str) -> str:
    """path/fname after checking, with lstat and before any open, that fname is one plain name inside
    path and a regular file there (no symlink, FIFO or device, which could escape, hang or never end)."""
    if (not isinstance(fname, str) or fname in ("", ".", "..") or "/" in fname or "\0" in fname
            or fname != os.path.basename(fname)):
        raise CheckpointError(f"checkpoint {path}: {what} {fname!r} is not a plain file name inside the checkpoint")
    fpath, name = os.path.join(path, fname), f"{what} {fname}".strip()
    try:
        st = os.lstat(fpath)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: {name} is missing") from None
    except OSError as e:
        raise CheckpointError(f"checkpoint {path}: {name} cannot be read: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode) else \
            "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
        raise CheckpointError(f"checkpoint {path}: {name} is {kind}, not a regular file (refused unread)")
    return fpath


def _open_regular(fpath: str) -> int:
    """A read-only descriptor of fpath that cannot hang on a FIFO nor follow a symlink swapped in since
    the lstat; OSError unless it is a regular file."""
    fd = os.open(fpath, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", fpath)
    return fd


def _json_depth(data: bytes) -> int:
    """Nesting depth of a JSON text (strings skipped), in linear time without recursion."""
    a = np.frombuffer(re.sub(rb'"(?:[^"\\]|\\.)*"', b'""', data), dtype=np.uint8)
    step = (a == ord("[")).astype(np.int64) + (a == ord("{")) - (a == ord("]")) - (a == ord("}"))
    return int(np.cumsum(step).max()) if len(step) else 0


def _parse_json(data: bytes, max_depth: int = JSON_MAX_DEPTH):
    """json.loads of bounded nesting (ValueError beyond max_depth, not a RecursionError)."""
    depth = _json_depth(data)
    if depth > max_depth:
        raise ValueError(f"nested {depth} levels deep (at most {max_depth})")
    return json.loads(data)


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
    with os.fdopen(_open_regular(path), "rb") as f:
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


def _agree(comm, error: str | None, what: str, exc: type = CheckpointError) -> None:
    """Collective: every rank learns whether any rank failed, and all raise the same error."""
    errors = comm.allgather(error)
    bad = [(r, e) for r, e in enumerate(errors) if e]
    if bad:
        r, e = bad[0]
        more = f" (and {len(bad) - 1} more rank(s))" if len(bad) > 1 else ""
        raise exc(f"{what} failed on rank {r}{more}: {e}")


# -- plain data: JSON + tensors ------------------------------------------------------------------
_PLAIN = "dicts with str keys, lists, str, int, float, bool, None and torch tensors"
_KEY_RE = re.compile(r"^(t\.[A-Za-z0-9_]+|b\.\d+|json)$")
_DTYPES = {str(d).replace("torch.", ""): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64,
                                                    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                                                    torch.bool)}


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def to_plain(obj, blobs: dict[str, torch.Tensor], where: str = "state"):
    """obj as a JSON-able tree; each tensor moves into blobs under "b.<i>" and is replaced by
    {"$tensor": "b.<i>"}. Tuples become lists. Anything else is a TypeError naming where it was."""
    if isinstance(obj, torch.Tensor):
        if _dtype_name(obj) not in _DTYPES:
            raise TypeError(f"{where}: tensor dtype {obj.dtype} is not one a checkpoint stores")
        key = f"b.{len(blobs)}"
        blobs[key] = _cpu_compact(obj)
        return {"$tensor": key}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str) or k.startswith("$"):
                raise TypeError(f"{where}: key {k!r} is not a plain str key (nor may it start with '$')")
            out[k] = to_plain(v, blobs, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, blobs, f"{where}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    raise TypeError(f"{where}: {type(obj).__name__} is not plain data ({_PLAIN})")


def from_plain(obj, blobs: dict[str, torch.Tensor], where: str = "state"):
    """Inverse of to_plain; a reference to a tensor that is not there is a ValueError naming where."""
    if isinstance(obj, dict):
        if set(obj) == {"$tensor"}:
            key = obj["$tensor"]
            if not isinstance(key, str) or not key.startswith("b.") or key not in blobs:
                raise ValueError(f"{where} refers to tensor {key!r}, which the file does not hold")
            return blobs[key]
        return {k: from_plain(v, blobs, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_plain(v, blobs, f"{where}[{i}]") for i, v in enumerate(obj)]
    return obj


# -- RNG state of a process --------------------------------------------------------------------
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


# -- rank files ----------------------------------------------------------------------------------
def _rank_payload(it: int, ids: list[int], tensors: dict[str, torch.Tensor], replica_state: Sequence,
                  rank_state: dict) -> dict[str, torch.Tensor]:
    """The flat str -> tensor dict of one rank file (TypeError for anything that is not plain data)."""
    blobs: dict[str, torch.Tensor] = {}
    doc = {"format": FORMAT_VERSION, "iteration": it, "replica_ids": ids,
           "replica_state": to_plain(list(replica_state), blobs, "replica_state"),
           "rank_state": to_plain(rank_state, blobs, "rank_state")}
    text = json.dumps(doc, sort_keys=True, allow_nan=True).encode()
    payload = {f"t.{name}": _cpu_compact(t) for name, t in tensors.items()}
    payload.update(blobs)
    payload["json"] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    return payload


def _write_rank_file(path: str, payload: dict[str, torch.Tensor], after_write=None) -> dict:
    """Write one rank file atomically; its manifest entry (sha256, size, keys with shape and dtype)."""
    def write(f):
        torch.save(payload, f)
        if after_write is not None:
            after_write()
    sha, size = _atomic_write(path, write)
    return {"sha256": sha, "size": size,
            "keys": {k: {"shape": list(t.shape), "dtype": _dtype_name(t)} for k, t in sorted(payload.items())}}


def _read_rank_file(path: str, fname: str, entry: dict) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Load one rank file as plain data and check it against its manifest entry before any use:
    (raw tensors, JSON document, blobs). CheckpointError naming the file for anything unexpected."""
    fpath = _regular_file(path, fname, "rank file")

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path}: rank file {fname} {why}")

    try:
        raw = torch.load(fpath, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as e:  # a pickled class or call: refused, never executed
        first = str(e).strip().splitlines()
        detail = next((s for s in first if "Unsupported" in s or "global" in s.lower()), first[0] if first else "")
        raise bad(f"is not plain tensor data and was refused without running it ({detail.strip()[:200]})") from None
    except Exception as e:  # noqa: BLE001 - a damaged file, whatever the reader raises
        raise bad(f"cannot be read: {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()):
        raise bad("is not a flat dict of named tensors")
    keys = entry.get("keys")
    if not isinstance(keys, dict):
        raise bad("has no key list in the manifest")
    if set(raw) != set(keys):
        missing, extra = sorted(set(keys) - set(raw)), sorted(set(raw) - set(keys))
        raise bad(f"does not hold the keys the manifest lists (missing {missing}, unexpected {extra})")
    fsize, stored = os.path.getsize(fpath), 0
    for k, t in raw.items():
        want = keys[k]
        if not _KEY_RE.match(k) or list(t.shape) != want.get("shape") or _dtype_name(t) != want.get("dtype"):
            raise bad(f"key {k!r} is {_dtype_name(t)} {list(t.shape)}; the manifest says "
                      f"{want.get('dtype')} {want.get('shape')}")
        # Before any use (nothing is allocated yet: the storages are mapped from the file): each tensor
        # owns exactly its elements, laid out contiguously, so no stride or offset trick can make a
        # small file describe a huge tensor (a copy of it allocates what the file holds, no more).
        nbytes = t.numel() * t.element_size()
        if not t.is_contiguous() or t.storage_offset() != 0 or t.untyped_storage().nbytes() != nbytes:
            raise bad(f"key {k!r} is not a contiguous tensor owning its {t.numel()} elements (strides {list(t.stride())}, "
                      f"offset {t.storage_offset()}, storage {t.untyped_storage().nbytes()} bytes, needs {nbytes})")
        stored += nbytes
    if stored > fsize:
        raise bad(f"claims {stored} bytes of tensors in a file of {fsize} bytes")
    j = raw.get("json")
    if j is None or j.dtype != torch.uint8 or j.dim() != 1:
        raise bad("lacks its JSON document (key 'json', uint8)")
    try:
        doc = _parse_json(bytes(j.numpy()))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise bad(f"has a JSON document that cannot be parsed: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_VERSION:
        raise bad(f"has format {doc.get('format') if isinstance(doc, dict) else None!r}, expected {FORMAT_VERSION}")
    ids = entry.get("replica_ids")
    if doc.get("replica_ids") != ids:
        raise bad(f"holds replicas {doc.get('replica_ids')}, the manifest says {ids}")
    if not isinstance(doc.get("replica_state"), list) or len(doc["replica_state"]) != len(ids):
        raise bad(f"needs one replica_state entry per replica ({len(ids)})")
    blobs = {k: t.clone() for k, t in raw.items() if k.startswith("b.")}  # small: not views of the mapped file
    try:
        doc["replica_state"] = from_plain(doc["replica_state"], blobs, "replica_state")
        doc["rank_state"] = from_plain(doc.get("rank_state"), blobs, "rank_state")
        check_rank_state(doc["rank_state"])
    except ValueError as e:
        raise bad(f"is malformed: {e}") from None
    return raw, doc, blobs


# -- save ----------------------------------------------------------------------------------------
def save_checkpoint(comm, run_dir: str, it: int, kind: str, phase: int, tensors: dict[str, torch.Tensor],
                    replica_ids: Sequence[int], replica_state: Sequence[dict], meta: dict,
                    keep_last: int = 3) -> str:
    """Collective over `comm`: write checkpoint ckpt-{it:09d} of the run and return its path (every rank).

    tensors: name -> (k, ...) tensor whose row j belongs to global replica replica_ids[j] (any device;
    saved on the CPU). replica_state: k dicts of plain data (see to_plain). meta: JSON-serialisable run description
    (rank 0's copy goes into the manifest). keep_last: periodic checkpoints kept (<= 0: all).
    A failure on any rank (a full disk, non-plain state) raises CheckpointWriteError on every rank; the previous checkpoints stay intact.
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
    _agree(comm, error, f"checkpoint {final}: preparing", CheckpointWriteError)

    # 2. every rank writes its own file
    fname = rank_file(rank)
    info, error = None, None
    try:
        payload = _rank_payload(it, ids, tensors, replica_state, capture_rank_state())
        info = _write_rank_file(os.path.join(tmp, fname), payload,
                                after_write=lambda: fault_point("checkpoint_write", rank, it))
        _fsync_dir(tmp)
        info.update(replica_ids=ids, tensors={name: {"shape": list(t.shape[1:]), "dtype": _dtype_name(t)}
                                              for name, t in tensors.items()})
    except Exception as e:  # noqa: BLE001
        error = f"writing {os.path.join(tmp, fname)}: {type(e).__name__}: {e}"
    infos = comm.gather(info, root=0)
    _agree(comm, error, f"checkpoint {final}: writing rank files", CheckpointWriteError)

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
        raise CheckpointWriteError(f"checkpoint {final}: finishing on rank 0 failed: {error}")
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
def upgrade_hint(path: str) -> str:
    return (f"if you trust whoever wrote it, convert it once with `python -m hpc_dsgd checkpoint upgrade {path}` "
            f"(the original is kept as {path}.format1), then resume")


def _read_manifest(path: str, formats: tuple[int, ...] = (FORMAT_VERSION,)) -> dict:
    if not os.path.lexists(os.path.join(path, MANIFEST)):
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is missing (incomplete or not a checkpoint)")
    mpath = _regular_file(path, MANIFEST, "")
    try:
        with os.fdopen(_open_regular(mpath), "rb") as f:
            data = f.read(MANIFEST_MAX_BYTES + 1)
        if len(data) > MANIFEST_MAX_BYTES:
            raise ValueError(f"larger than {MANIFEST_MAX_BYTES >> 20} MiB")
        manifest = _parse_json(data)
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} cannot be parsed: {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is not a checkpoint manifest")
    for fname in manifest["files"]:  # every format: a name that could leave the directory is refused here
        if not re.match(r"^rank\d{5}\.pt$", fname):
            raise CheckpointError(f"checkpoint {path}: {MANIFEST} is malformed: file name {fname!r} "
                                  f"(rank files are named rank00000.pt, ... inside the checkpoint)")
    fmt = manifest.get("format")
    if fmt not in formats:
        if fmt == 1:
            raise CheckpointError(f"checkpoint {path} has format 1: its rank files are Python pickles, which can "
                                  f"run code when loaded, so this version refuses them; " + upgrade_hint(path))
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} has format {fmt!r}; "
                              f"this version reads format {FORMAT_VERSION}")
    if fmt == FORMAT_VERSION:
        _check_manifest(path, manifest)
    return manifest


def _check_manifest(path: str, m: dict) -> None:
    """Structure and internal consistency of a format-2 manifest (types, ids 0..n-1, row keys)."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CheckpointError(f"checkpoint {path}: {MANIFEST} is malformed: {what}")

    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    need(is_int(m.get("iteration")) and 0 <= m["iteration"] < 2 ** 62, f"iteration {m.get('iteration')!r} (an integer >= 0)")
    need(m.get("kind") in KINDS, f"kind {m.get('kind')!r}")
    need(is_int(m.get("phase")) and 0 <= m["phase"] < 2 ** 31, f"phase {m.get('phase')!r} (an integer >= 0)")
    need(is_int(m.get("n")) and 1 <= m["n"] <= MAX_REPLICAS, f"n {m.get('n')!r} (an integer 1..{MAX_REPLICAS})")
    need(len(m["files"]) >= 1 and (m.get("ranks") is None or m.get("ranks") == len(m["files"])),
         f"ranks {m.get('ranks')!r} for {len(m['files'])} rank file(s)")
    need(isinstance(m.get("meta"), dict), "meta")
    tens = m.get("tensors")
    need(isinstance(tens, dict) and all(isinstance(k, str) and re.match(r"^[A-Za-z0-9_]+$", k) and isinstance(v, dict)
                                        and v.get("dtype") in _DTYPES and isinstance(v.get("shape"), list)
                                        and len(v["shape"]) <= 8 and all(is_int(x) and 0 <= x < 2 ** 40 for x in v["shape"])
                                        for k, v in tens.items()),
         "tensors (name -> shape, dtype)")
    ids = []
    for fname, e in m["files"].items():
        need(re.match(r"^rank\d{5}\.pt$", fname) is not None and isinstance(e, dict), f"file name {fname!r}")
        need(isinstance(e.get("sha256"), str) and re.match(r"^[0-9a-f]{64}$", e["sha256"]) is not None
             and is_int(e.get("size")) and e["size"] >= 0 and isinstance(e.get("replica_ids"), list)
             and all(is_int(i) for i in e["replica_ids"]) and isinstance(e.get("keys"), dict),
             f"entry of {fname} (sha256, size, replica_ids, keys)")
        for name, spec in tens.items():
            want = {"shape": [len(e["replica_ids"])] + spec["shape"], "dtype": spec["dtype"]}
            need(e["keys"].get(f"t.{name}") == want, f"{fname}: key t.{name} should be {want}")
        for k, spec in e["keys"].items():
            need(isinstance(k, str) and _KEY_RE.match(k) is not None and isinstance(spec, dict)
                 and spec.get("dtype") in _DTYPES and isinstance(spec.get("shape"), list) and len(spec["shape"]) <= 9
                 and all(is_int(x) and 0 <= x < 2 ** 40 for x in spec["shape"]),
                 f"{fname}: key {k!r} (a known name, a dtype and a shape)")
        ids += e["replica_ids"]
        need(len(ids) <= m["n"], f"the files hold more than n={m['n']} replica ids")
    need(len(ids) == m["n"] and sorted(ids) == list(range(m["n"])),
         f"the files' replica ids are not 0..{m['n'] - 1} exactly once")
    _check_meta(path, m)


def _check_meta(path: str, m: dict) -> None:
    """The run description in meta, where present: config_json a JSON object whose n agrees with the
    manifest's (and, in a training checkpoint, one with meta.loop, whose model fits the tensor sizes);
    loop the loop state of train.py, typed and in range.
    A key absent here is the caller's to require (train.py refuses a manifest without meta.loop)."""
    meta = m["meta"]

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise CheckpointError(f"checkpoint {path}: {MANIFEST} is malformed: {key} must be {what}")

    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    is_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    fin = lambda v: is_num(v) and math.isfinite(v)  # noqa: E731
    if "config_json" in meta:
        cj = meta["config_json"]
        need(isinstance(cj, str), "meta.config_json", "a string holding the run's config as a JSON object")
        try:
            cfg = _parse_json(cj.encode("utf-8", "surrogatepass"))
        except (ValueError, RecursionError) as e:
            raise CheckpointError(f"checkpoint {path}: {MANIFEST} is malformed: meta.config_json is not JSON "
                                  f"({e})") from None
        need(isinstance(cfg, dict) and all(isinstance(k, str) for k in cfg), "meta.config_json",
             f"a JSON object (the run's config), not {type(cfg).__name__}")
        if "n" in cfg:
            need(cfg["n"] == m["n"], "meta.config_json's n", f"the manifest's n={m['n']}, not {cfg['n']!r}")
        if "loop" in meta:  # a training run's checkpoint (train.py): its tensors are the model's rows
            _check_sizes(path, m, cfg)
    if "loop" in meta:
        lp = meta["loop"]
        need(isinstance(lp, dict), "meta.loop", "an object")
        for key, ok, what in (  # the fields of observers.LOOP_KEYS (an unknown key: train.py refuses it, naming it)
                ("it", lambda v: is_int(v) and v == m["iteration"], f"the manifest's iteration {m['iteration']}"),
                ("gossip_s", lambda v: is_int(v) and 0 <= v < 2 ** 62, "an integer >= 0"),
                ("ema_phase", lambda v: is_int(v) and 0 <= v < 2 ** 31, "an integer >= 0"),
                ("phi_ema", is_num, "a number (NaN before the first measurement)"),
                ("t_train", lambda v: fin(v) and v >= 0, "a finite number >= 0"),
                ("acc", lambda v: isinstance(v, list) and len(v) == 3 and all(fin(x) for x in v), "3 finite numbers"),
                ("stats", lambda v: not v or isinstance(v, dict) and set(_LOOP_STATS) <= set(v)
                 and all(is_num(x) for x in v.values()), f"null or an object of numbers {list(_LOOP_STATS)}"),
                ("last", lambda v: v is None or isinstance(v, dict) and all(
                    x is None or isinstance(x, (int, float, str, bool)) for x in v.values()),
                 "null or an object of numbers"),
                ("trace_pos", lambda v: v is None or isinstance(v, dict) and all(
                    re.match(r"^[a-z_]+$", k) and is_int(x) and 0 <= x < 2 ** 62 for k, x in v.items()),
                 "null or an object trace group -> row count (an integer >= 0)"),
                ("xi_max", lambda v: v is None or isinstance(v, dict) and all(
                    isinstance(k, str) and k.lstrip("-").isdigit() and is_num(x) for k, x in v.items()),
                 "null or an object phase -> number"),
                ("trace_pending", lambda v: v is None or isinstance(v, dict) and all(
                    g in ("iter", "epoch", "phase", "sharpness") and isinstance(cols, dict) and all(
                        isinstance(c, str) and re.match(r"^[A-Za-z0-9_]+$", c) and isinstance(x, list) and all(
                            is_num(y) or y in (None, "nan", "inf", "-inf") for y in x)
                        for c, x in cols.items()) for g, cols in v.items()),
                 "null or an object trace group -> column -> list of values (rows a full disk kept out of the trace)")):
            if key in lp:
                need(ok(lp[key]), f"meta.loop.{key}", f"{what}, not {json.dumps(lp[key])[:80]}")


# train.PhaseStats.COLS and observers.LOOP_KEYS's fields, as _check_meta checks them (tests/serial/test_checkpoint.py
# fails if train.py changes either without this).
# The phase-statistics columns every checkpoint has; columns added later (bound_iterations, pre_control_max,
# target: issue 16) start at their defaults when a checkpoint predates them (train.PhaseStats).
_LOOP_STATS = ("xi_max", "xi_pre_max", "theta_max", "gossip_steps", "bytes_sent", "cap_hits", "iterations")
_LOOP_FIELDS = ("it", "gossip_s", "ema_phase", "phi_ema", "t_train", "acc", "stats", "last", "trace_pos", "xi_max",
                "trace_pending")


def _model_sizes(cfg: dict, vocab: int | None = None) -> tuple[int, int] | None:
    """(d, D) of the run's model: its trainable parameters d and d + float buffers D (a row of X), built
    on the meta device (nothing allocated); a translation model with `vocab` subwords (default: the
    config's vocab_size, an upper bound). None when this version cannot build the config's model."""
    from .config import DEFAULTS

    c = dict(DEFAULTS, **cfg)
    try:
        with torch.device("meta"):
            if c.get("dataset") == "multi30k":
                from .models.transformer import Seq2SeqTransformer

                model = Seq2SeqTransformer(int(vocab or c["vocab_size"]), 0, d_model=int(c["d_model"]),
                                           nhead=int(c["heads"]), num_layers=int(c["layers"]),
                                           dim_feedforward=int(c["d_ff"]))
            else:
                from .models import build_model

                classes = {"digits": 10, "cifar10": 10, "imagenet32": 1000}[c.get("dataset")]
                model = build_model(c["model"], classes, float(c["width"]))
    except Exception:  # noqa: BLE001 - a config this version cannot build: the sizes stay unchecked
        return None
    d = sum(p.numel() for p in model.parameters())
    return d, d + sum(b.numel() for b in model.buffers() if b.is_floating_point())


def _run_vocab(path: str) -> tuple[str, int | None]:
    """(path, vocabulary size) of the tokenizer of the run holding checkpoint `path` (RUN/tokenizer.json),
    None where it is absent or unreadable (the translation workload reports that itself)."""
    tpath = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), "tokenizer.json")
    try:
        if not stat.S_ISREG(os.lstat(tpath).st_mode) or os.lstat(tpath).st_size > MANIFEST_MAX_BYTES:
            return tpath, None
        from tokenizers import Tokenizer

        with os.fdopen(_open_regular(tpath), "rb") as f:
            return tpath, Tokenizer.from_str(f.read().decode("utf-8")).get_vocab_size()
    except Exception:  # noqa: BLE001 - absent or damaged: not this check's to report
        return tpath, None


# Per-replica tensors that are not d numbers (X holds D; the optimizer states and other companions d): the
# communication modes' state (modes.py): CHOCO's public copy x^ and the overlap's row in flight hold D, the
# overlap's pending gossip step one integer.
ROW_SIZES = {"choco_xhat": "D", "overlap_prev": "D", "overlap_pending": 1}


def _check_sizes(path: str, m: dict, cfg: dict) -> None:
    """Every per-replica tensor of the manifest against the run's model: X holds D numbers, each
    optimizer state d. Translation: the model of the run's tokenizer's vocabulary (exactly), or, without
    a readable tokenizer.json beside the run, of vocab_size (at most)."""
    translation = cfg.get("dataset") == "multi30k"
    tpath, vocab = _run_vocab(path) if translation else ("", None)
    sizes = _model_sizes(cfg, vocab)
    if sizes is None:
        return
    (d, D), exact = sizes, vocab is not None or not translation
    model = (f"transformer d_model {cfg.get('d_model')}, {cfg.get('layers')} layers, "
             + (f"the {vocab} subwords of {tpath}" if vocab else f"at most vocab_size={cfg.get('vocab_size')} subwords")
             if translation else f"{cfg.get('model')} width {cfg.get('width')}, {cfg.get('dataset')}")
    for name, spec in m["tensors"].items():
        numel, want = math.prod(spec["shape"]), {"X": D, **{k: D if v == "D" else v for k, v in ROW_SIZES.items()}}.get(name, d)
        if numel != want if exact else numel > want:
            raise CheckpointError(f"checkpoint {path}: {MANIFEST} is malformed: tensors.{name} has {numel} numbers per "
                                  f"replica; the run's model ({model}) has {'' if exact else 'at most '}{want}")


def _check_file(path: str, fname: str, entry: dict) -> None:
    fpath = _regular_file(path, fname, "rank file")
    size = os.lstat(fpath).st_size
    if size != entry["size"]:
        raise CheckpointError(f"checkpoint {path}: rank file {fname} has {size} bytes, the manifest says "
                              f"{entry['size']} (truncated or overwritten)")
    try:
        sha, _ = _sha256(fpath)
    except OSError as e:
        raise CheckpointError(f"checkpoint {path}: rank file {fname} cannot be read: {e.strerror}") from None
    if sha != entry["sha256"]:
        raise CheckpointError(f"checkpoint {path}: rank file {fname} fails its sha256 check (corrupted)")


def verify_checkpoint(path: str, deep: bool = True) -> dict:
    """The manifest of a complete, intact checkpoint; CheckpointError naming the path and the failing
    file otherwise (missing, unparseable or malformed manifest; missing or truncated rank file;
    checksum mismatch; with deep, a rank file that is not plain tensor data or whose keys, shapes,
    dtypes or JSON document disagree with the manifest). Never runs code from a file."""
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path}: no such directory")
    manifest = _read_manifest(path)
    for fname, entry in sorted(manifest["files"].items()):
        _check_file(path, fname, entry)
        if deep:
            _read_rank_file(path, fname, entry)
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
            raise CheckpointError(f"run {run_dir}: none of its {len(skipped)} checkpoint(s) is intact: "
                                  + "; ".join(reason for _, reason in skipped))
        return None, []
    path = spec
    if not os.path.isdir(path) and os.path.isdir(os.path.join(checkpoint_dir(run_dir), spec)):
        path = os.path.join(checkpoint_dir(run_dir), spec)
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {spec}: no such directory (nor {os.path.join(checkpoint_dir(run_dir), spec)}); "
                              f"use --resume auto or a ckpt-XXXXXXXXX directory")
    verify_checkpoint(path)
    return path, []


PHASE_ALIAS_RE = re.compile(r"^phase-([0-9]{1,6})$")


def resolve_branch(spec: str) -> str:
    """branch_from: a checkpoint directory, or RUN_DIR/checkpoints/phase-K, the checkpoint written at the end of
    phase K of that run (what the generated dec-phase-(K+1) configs name, since the iteration depends on the
    data set size). The alias needs the parent's phase-end checkpoint, read from its manifest (verified later)."""
    m = PHASE_ALIAS_RE.match(os.path.basename(os.path.normpath(spec)))
    if m is None or os.path.isdir(spec):
        return spec
    ckdir = os.path.dirname(os.path.normpath(spec))
    run_dir, phase = os.path.dirname(ckdir), int(m.group(1))
    for path in list_checkpoints(run_dir):
        try:
            man = _read_manifest(path)
        except CheckpointError:
            continue
        if man["kind"] == "phase" and man["phase"] == phase:
            return path
    raise CheckpointError(f"branch_from={spec!r}: run {run_dir!r} has no intact checkpoint at the end of phase {phase} "
                          "(has that run finished the phase?)")


# -- load --------------------------------------------------------------------------------------
def load_checkpoint(path: str, replica_ids: Sequence[int], map_location: str | torch.device = "cpu",
                    verify: bool = True) -> tuple[dict, dict[str, torch.Tensor], list[dict], dict | None]:
    """Rows of the requested global replicas: (manifest, tensors, replica_state, rank_state).

    tensors: name -> (len(replica_ids), ...) tensor on map_location, row j = replica replica_ids[j].
    Reads only the rank files holding those replicas (each checked against its checksum if verify,
    and always against the manifest's keys, shapes and dtypes before use; weights_only, no code runs).
    rank_state is the saving rank's RNG state when that rank held exactly these replicas (same
    layout), else None: a process's global RNG state has no meaning for another split."""
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
    raws, docs = {}, {}
    for fname in needed:
        if verify:
            _check_file(path, fname, manifest["files"][fname])
        raws[fname], docs[fname], _ = _read_rank_file(path, fname, manifest["files"][fname])
    tensors = {}
    for name in manifest["tensors"]:
        rows = [raws[where[i][0]][f"t.{name}"][where[i][1]] for i in ids]
        tensors[name] = torch.stack(rows).to(map_location) if rows else torch.empty(0)
    replica_state = [docs[where[i][0]]["replica_state"][where[i][1]] for i in ids]
    rank_state = None
    if len(needed) == 1 and manifest["files"][needed[0]]["replica_ids"] == ids:
        rank_state = docs[needed[0]]["rank_state"]
    return manifest, tensors, replica_state, rank_state


def load_checkpoint_collective(comm, path: str, replica_ids: Sequence[int],
                               map_location: str | torch.device = "cpu") -> tuple:
    """load_checkpoint on every rank of comm, agreed: a file that fails on one rank raises the same
    CheckpointError on every rank (nobody waits in a collective for a rank that gave up)."""
    out, error = None, None
    try:
        out = load_checkpoint(path, replica_ids, map_location)
    except CheckpointError as e:
        error = str(e)
    errors = comm.allgather(error)
    bad = [e for e in errors if e]
    if bad:
        raise CheckpointError(bad[0])
    return out

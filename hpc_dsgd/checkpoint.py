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

Plain data (plaindata.py): replica_state and rank_state (rngstate.py) hold only dicts with str keys, lists,
str, int, float, bool, None and tensors. Loading checks the checksum, then every key, shape and dtype of a rank
file against the manifest, then the JSON document's structure; anything else is a CheckpointError naming the
file. Loading never runs code from a file. Format 1 (pickled rank files) is refused with the command that
converts it: `python -m hpc_dsgd checkpoint upgrade PATH` (checkpoint_v1.py, restricted unpickler; the original is kept).

Bounded, contained reading (fileio): a file name from a manifest must be rank<5 digits>.pt; every file is
lstat-checked to be a regular file, then opened O_NONBLOCK|O_NOFOLLOW (no symlink out, no FIFO or device);
manifest.json is at most MANIFEST_MAX_BYTES and fileio.JSON_MAX_DEPTH deep, its fields typed and in range
(meta.loop is the training loop's to check: observers.check_loop); every tensor of a rank file, inspected
memory-mapped, must be contiguous and own exactly its elements before anything is copied.

Atomicity: every rank writes its file into ckpt-XXX.tmp/ (fileio.atomic_write: an exclusive temporary that
never follows a planted link, fsync, rename); after an agreement (every rank reports success or its error, so
no rank waits forever) rank 0 writes the manifest the same way, renames ckpt-XXX.tmp -> ckpt-XXX and fsyncs
checkpoints/. A directory named ckpt-XXX therefore always holds a complete checkpoint; .tmp and .trash
leftovers are ignored by readers and removed by the next save, and nothing touches an older checkpoint before
the new one is complete. Retention (_retain_and_clean): phase checkpoints are kept; of the periodic ones the
newest keep_last. One checkpoint per iteration (a save at an iteration that has one replaces it).

Loading is per replica: a rank reads only the files holding its global replica ids, so a
checkpoint written by 4 ranks x 1 replica loads on 2 ranks x 2 and vice versa. The per-replica
state (replica_state) follows its replica; the per-rank RNG states (rank_state) are restored only
when the layout is the same, since they have no meaning for another split.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import shutil
import stat
import time
from collections.abc import Sequence

import torch

from .faults import fault_point
from .fileio import atomic_write, atomic_write_bytes, fsync_dir, open_regular, parse_json_bounded
from .plaindata import DTYPES, cpu_compact, dtype_name, from_plain, to_plain
from .rngstate import capture_rank_state, check_rank_state
from .rundir import RunDir

FORMAT_VERSION = 2  # 1: pickled rank files (refused; `python -m hpc_dsgd checkpoint upgrade`)
KINDS = ("phase", "periodic")
CKPT_SUBDIR = RunDir.CHECKPOINTS
MANIFEST = "manifest.json"
_NAME_RE = re.compile(r"^ckpt-(\d{9})$")
_LEFTOVER_RE = re.compile(r"^ckpt-\d{9}\.(tmp|trash)$")
_KEY_RE = re.compile(r"^(t\.[A-Za-z0-9_]+|b\.\d+|json)$")  # the keys of a rank file
_CHUNK = 1 << 20
# Bounds on what a checkpoint's files may claim before anything is parsed or allocated.
MANIFEST_MAX_BYTES = 64 << 20  # a manifest of 2**20 rank files and a long meta stays far below
MAX_REPLICAS = 1 << 20  # (a manifest or rank document nests about 6 deep: fileio.JSON_MAX_DEPTH bounds it)

class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the path and the failing file."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint that could not be written (full disk, I/O error, non-plain state); the previous
    checkpoints are untouched."""


# -- paths -------------------------------------------------------------------------------------
def checkpoint_path(run_dir: str, it: int) -> str:
    return RunDir(run_dir).checkpoint(it)


def rank_file(r: int) -> str:
    return f"rank{r:05d}.pt"


def list_checkpoints(run_dir: str) -> list[str]:
    """Complete-looking checkpoint directories of a run, newest (highest iteration) first.
    Leftover ckpt-XXX.tmp / .trash directories are not listed. Nothing is verified here."""
    d = RunDir(run_dir).checkpoints
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), name) for name in names
             if (m := _NAME_RE.match(name)) and os.path.isdir(os.path.join(d, name))]
    return [os.path.join(d, name) for _, name in sorted(found, reverse=True)]


# -- low-level I/O (fileio: exclusive temporaries, bounded reads) ------------------------------
def regular_file(path: str, fname: str, what: str) -> str:
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


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with os.fdopen(open_regular(path), "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _agree(comm, error: str | None, what: str, exc: type = CheckpointError) -> None:
    """Collective: every rank learns whether any rank failed, and all raise the same error."""
    errors = comm.allgather(error)
    bad = [(r, e) for r, e in enumerate(errors) if e]
    if bad:
        r, e = bad[0]
        more = f" (and {len(bad) - 1} more rank(s))" if len(bad) > 1 else ""
        raise exc(f"{what} failed on rank {r}{more}: {e}")


# -- rank files ----------------------------------------------------------------------------------
def rank_payload(it: int, ids: list[int], tensors: dict[str, torch.Tensor], replica_state: Sequence,
                  rank_state: dict) -> dict[str, torch.Tensor]:
    """The flat str -> tensor dict of one rank file (TypeError for anything that is not plain data)."""
    blobs: dict[str, torch.Tensor] = {}
    doc = {"format": FORMAT_VERSION, "iteration": it, "replica_ids": ids,
           "replica_state": to_plain(list(replica_state), blobs, "replica_state"),
           "rank_state": to_plain(rank_state, blobs, "rank_state")}
    text = json.dumps(doc, sort_keys=True, allow_nan=True).encode()
    payload = {f"t.{name}": cpu_compact(t) for name, t in tensors.items()}
    payload.update(blobs)
    payload["json"] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    return payload


def write_rank_file(path: str, payload: dict[str, torch.Tensor], after_write=None) -> dict:
    """Write one rank file atomically (fileio.atomic_write: an exclusive temporary, fsync, rename, fsync of the
    directory); its manifest entry (sha256, size, keys with shape and dtype)."""
    def write(f):
        torch.save(payload, f)
        if after_write is not None:
            after_write()
    sha, size = atomic_write(path, write)
    return {"sha256": sha, "size": size,
            "keys": {k: {"shape": list(t.shape), "dtype": dtype_name(t)} for k, t in sorted(payload.items())}}


def read_rank_file(path: str, fname: str, entry: dict) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Load one rank file as plain data and check it against its manifest entry before any use:
    (raw tensors, JSON document, blobs). CheckpointError naming the file for anything unexpected."""
    fpath = regular_file(path, fname, "rank file")

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path}: rank file {fname} {why}")

    try:
        raw = torch.load(fpath, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as e:  # a pickled class or call: refused, never executed
        first = str(e).strip().splitlines()
        detail = next((s for s in first if "Unsupported" in s or "global" in s.lower()), first[0] if first else "")
        raise bad(f"is not plain tensor data and was refused without running it ({detail.strip()[:200]})") from None
    except Exception as e:  # a damaged file: whatever exception the reader raises
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
        if not _KEY_RE.match(k) or list(t.shape) != want.get("shape") or dtype_name(t) != want.get("dtype"):
            raise bad(f"key {k!r} is {dtype_name(t)} {list(t.shape)}; the manifest says "
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
        doc = parse_json_bounded(bytes(j.numpy()))
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
    A failure on any rank (a full disk, non-plain state) raises CheckpointWriteError on every rank; the previous
    checkpoints stay intact.
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
    except Exception as e:  # any failure: reported on every rank by _agree
        error = f"{type(e).__name__}: {e}"
    _agree(comm, error, f"checkpoint {final}: preparing", CheckpointWriteError)

    # 2. every rank writes its own file
    fname = rank_file(rank)
    info, error = None, None
    try:
        payload = rank_payload(it, ids, tensors, replica_state, capture_rank_state())
        info = write_rank_file(os.path.join(tmp, fname), payload,
                               after_write=lambda: fault_point("checkpoint_write", rank, it))
        info.update(replica_ids=ids, tensors={name: {"shape": list(t.shape[1:]), "dtype": dtype_name(t)}
                                              for name, t in tensors.items()})
    except Exception as e:  # any failure: reported on every rank by _agree
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
            atomic_write_bytes(os.path.join(tmp, MANIFEST), text)
            trash = final + ".trash"
            if os.path.isdir(final):  # one checkpoint per iteration: the new one replaces the old
                if os.path.isdir(trash):
                    shutil.rmtree(trash)
                os.rename(final, trash)
            os.rename(tmp, final)
            fsync_dir(RunDir(run_dir).checkpoints)
        except Exception as e:  # any failure: broadcast to every rank below
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
    """Rank 0, after a successful save: delete periodic checkpoints beyond the newest keep_last (renamed to
    .trash first, so a half-deleted directory never looks like a checkpoint) and leftover .tmp/.trash
    directories; phase checkpoints are kept always. Failures here never fail the save (the next save retries)."""
    d = RunDir(run_dir).checkpoints
    doomed = []
    if keep_last > 0:
        periodic = []
        for path in list_checkpoints(run_dir):  # newest first
            try:
                if read_manifest(path).get("kind") == "periodic":
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
    fsync_dir(d)


# -- verify -------------------------------------------------------------------------------------
def upgrade_hint(path: str) -> str:
    return (f"convert it once with `python -m hpc_dsgd checkpoint upgrade {path}` (restricted unpickler: tensors "
            f"and numpy arrays only; the original is kept as {path}.format1), then resume")


def read_manifest(path: str, formats: tuple[int, ...] = (FORMAT_VERSION,)) -> dict:
    if not os.path.lexists(os.path.join(path, MANIFEST)):
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is missing (incomplete or not a checkpoint)")
    mpath = regular_file(path, MANIFEST, "")
    try:
        with os.fdopen(open_regular(mpath), "rb") as f:
            data = f.read(MANIFEST_MAX_BYTES + 1)
        if len(data) > MANIFEST_MAX_BYTES:
            raise ValueError(f"larger than {MANIFEST_MAX_BYTES >> 20} MiB")
        manifest = parse_json_bounded(data)
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
        check_manifest(path, manifest)
    return manifest


def check_manifest(path: str, m: dict) -> None:
    """Structure and internal consistency of a format-2 manifest (types, ids 0..n-1, row keys)."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CheckpointError(f"checkpoint {path}: {MANIFEST} is malformed: {what}")

    is_int = _is_int
    need(is_int(m.get("iteration")) and 0 <= m["iteration"] < 2 ** 62, f"iteration {m.get('iteration')!r} (an integer >= 0)")
    need(m.get("kind") in KINDS, f"kind {m.get('kind')!r}")
    need(is_int(m.get("phase")) and 0 <= m["phase"] < 2 ** 31, f"phase {m.get('phase')!r} (an integer >= 0)")
    need(is_int(m.get("n")) and 1 <= m["n"] <= MAX_REPLICAS, f"n {m.get('n')!r} (an integer 1..{MAX_REPLICAS})")
    need(len(m["files"]) >= 1 and (m.get("ranks") is None or m.get("ranks") == len(m["files"])),
         f"ranks {m.get('ranks')!r} for {len(m['files'])} rank file(s)")
    need(isinstance(m.get("meta"), dict), "meta")
    tens = m.get("tensors")
    need(isinstance(tens, dict) and all(isinstance(k, str) and re.match(r"^[A-Za-z0-9_]+$", k) and isinstance(v, dict)
                                        and v.get("dtype") in DTYPES and isinstance(v.get("shape"), list)
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
                 and spec.get("dtype") in DTYPES and isinstance(spec.get("shape"), list) and len(spec["shape"]) <= 9
                 and all(is_int(x) and 0 <= x < 2 ** 40 for x in spec["shape"]),
                 f"{fname}: key {k!r} (a known name, a dtype and a shape)")
        ids += e["replica_ids"]
        need(len(ids) <= m["n"], f"the files hold more than n={m['n']} replica ids")
    need(len(ids) == m["n"] and sorted(ids) == list(range(m["n"])),
         f"the files' replica ids are not 0..{m['n'] - 1} exactly once")
    _check_meta(path, m)


def _check_meta(path: str, m: dict) -> None:
    """The run description in meta, where present: config_json a JSON object whose n agrees with the
    manifest's (and, in a training checkpoint, one with meta.loop, whose model fits the tensor sizes).
    meta.loop itself is the training loop's: each part of it is checked by its owner (observers.check_loop)."""
    meta = m["meta"]

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise CheckpointError(f"checkpoint {path}: {MANIFEST} is malformed: {key} must be {what}")

    if "config_json" in meta:
        cj = meta["config_json"]
        need(isinstance(cj, str), "meta.config_json", "a string holding the run's config as a JSON object")
        try:
            cfg = parse_json_bounded(cj.encode("utf-8", "surrogatepass"))
        except (ValueError, RecursionError) as e:
            raise CheckpointError(f"checkpoint {path}: {MANIFEST} is malformed: meta.config_json is not JSON "
                                  f"({e})") from None
        need(isinstance(cfg, dict) and all(isinstance(k, str) for k in cfg), "meta.config_json",
             f"a JSON object (the run's config), not {type(cfg).__name__}")
        if "n" in cfg:
            need(cfg["n"] == m["n"], "meta.config_json's n", f"the manifest's n={m['n']}, not {cfg['n']!r}")


# Per-replica tensors that are not d numbers (X holds D; the optimizer states and other companions d): the
# communication modes' state (modes.py): CHOCO's public copy x^ and the overlap's row in flight hold D, the
# overlap's pending gossip step one integer; push-sum's weight (algorithms/push_sum.py) one float64.
ROW_SIZES = {"choco_xhat": "D", "overlap_prev": "D", "overlap_pending": 1, "push_sum_w": 1}


def _check_sizes(path: str, m: dict, sizes) -> None:
    """Every per-replica tensor of a training checkpoint's manifest (one with meta.loop and meta.config_json)
    against the run's model as `sizes(config, path)` answers (compat.model_sizes asks the run's workload; None:
    unchecked): X holds D numbers per replica, each optimizer state d (at most, where the answer is a bound), the
    communication modes' blocks as ROW_SIZES says."""
    meta = m["meta"]
    if sizes is None or "loop" not in meta or "config_json" not in meta:
        return
    want = sizes(parse_json_bounded(meta["config_json"].encode("utf-8", "surrogatepass")), path)
    if want is None:
        return
    for name, spec in m["tensors"].items():
        rows = {"X": want.D, **{k: want.D if v == "D" else v for k, v in ROW_SIZES.items()}}
        numel, n = math.prod(spec["shape"]), rows.get(name, want.d)
        if numel != n if want.exact else numel > n:
            raise CheckpointError(f"checkpoint {path}: {MANIFEST} is malformed: tensors.{name} has {numel} numbers per "
                                  f"replica; the run's model ({want.what}) has {'' if want.exact else 'at most '}{n}")


def check_file(path: str, fname: str, entry: dict) -> None:
    fpath = regular_file(path, fname, "rank file")
    size = os.lstat(fpath).st_size
    if size != entry["size"]:
        raise CheckpointError(f"checkpoint {path}: rank file {fname} has {size} bytes, the manifest says "
                              f"{entry['size']} (truncated or overwritten)")
    try:
        sha = _sha256(fpath)
    except OSError as e:
        raise CheckpointError(f"checkpoint {path}: rank file {fname} cannot be read: {e.strerror}") from None
    if sha != entry["sha256"]:
        raise CheckpointError(f"checkpoint {path}: rank file {fname} fails its sha256 check (corrupted)")


def verify_checkpoint(path: str, deep: bool = True, sizes=None) -> dict:
    """The manifest of a complete, intact checkpoint; CheckpointError naming the path and the failing
    file otherwise (missing, unparseable or malformed manifest; missing or truncated rank file;
    checksum mismatch; with deep, a rank file that is not plain tensor data or whose keys, shapes,
    dtypes or JSON document disagree with the manifest). Never runs code from a file."""
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path}: no such directory")
    manifest = read_manifest(path)
    _check_sizes(path, manifest, sizes)
    for fname, entry in sorted(manifest["files"].items()):
        check_file(path, fname, entry)
        if deep:
            read_rank_file(path, fname, entry)
    return manifest


# -- load --------------------------------------------------------------------------------------
def load_checkpoint(path: str, replica_ids: Sequence[int], map_location: str | torch.device = "cpu",
                    verify: bool = True) -> tuple[dict, dict[str, torch.Tensor], list[dict], dict | None]:
    """Rows of the requested global replicas: (manifest, tensors, replica_state, rank_state).

    tensors: name -> (len(replica_ids), ...) tensor on map_location, row j = replica replica_ids[j].
    Reads only the rank files holding those replicas (each checked against its checksum if verify,
    and always against the manifest's keys, shapes and dtypes before use; weights_only, no code runs).
    rank_state is the saving rank's RNG state when that rank held exactly these replicas (same
    layout), else None: a process's global RNG state has no meaning for another split."""
    manifest = read_manifest(path)
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
            check_file(path, fname, manifest["files"][fname])
        raws[fname], docs[fname], _ = read_rank_file(path, fname, manifest["files"][fname])
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

"""HDF5 trace: one file per run, written by rank 0 as the run goes.

Schema (SCHEMA_VERSION 1):
  /                attrs: schema_version, status (running|finished|stopped: max_iterations or a signal), config_json, config_toml,
                   n, ranks, replicas_per_rank, topology, p, spectral_gap, iters_per_epoch,
                   total_iters, phase_bounds (P x 2), versions_json, code_revision, created, finished
  /iter/<col>      one row per iteration, 1-D chunked extendable datasets: it, epoch, phase, lr,
                   loss, acc, predictions (images or target tokens: acc is correct / predictions),
                   gossip_steps, bytes_sent, time (+ the consensus columns that came later)
  /epoch/<col>     one row per evaluation: epoch, it, train_loss, train_acc, elapsed, and the workload's
                   columns: image classification test_acc_avg, test_loss_avg, test_acc_local_mean,
                   test_acc_local_std, images_per_s; translation val_loss_avg, val_nll_avg, val_ppl_avg,
                   bleu_avg, val_ppl_local_mean, val_ppl_local_std, sentences_per_s (attr `workload`)
  /phase/<col>     one row per finished phase: phase, first_it, last_it, gossip_steps, bytes_sent, ...
  /partition/label_histogram, /partition/sizes   (n, classes) and (n,): every replica's training labels
                   (image workloads; attrs partition, eval_set: docs/partitions.md)
  /sharpness/<col> one row per model per measurement (sharpness_every): epoch, it, replica (-1 = the
                   averaged model), lambda_max, converged, tol_reached, tol, hvps, method (0 lanczos,
                   1 power), trace, trace_stderr, trace_probes, samples, loss, acc, seconds
                   (absent from traces written before it existed: read back as an empty group)

A column that first appears after rows exist is back-filled with NaN (floats) or -1 (ints), so
later writers add columns without a schema change.

Durability: rows are buffered and written by `flush()` as a whole new file, never in place. The
writer loads trace.h5 into memory (HDF5's core driver: no file lock, no write to the file), appends
the rows there, writes the image to an exclusive temporary (.trace.h5.tmp-PID-RANDOM), fsyncs it, renames it
over trace.h5 and fsyncs the directory. trace.h5 is therefore always a complete file that some flush committed: kill -9, a node
crash or a full disk at any moment loses at most the rows since the last flush, and HDF5 itself never
meets a failing write (a full disk is a plain ENOSPC from os.write, reported as TraceWriteError naming
the file system and the space needed; the rows stay buffered). A flush returns only when the rows are
durable, so a checkpoint written after it never records rows the disk does not hold. The cost is one
copy of the file per flush (README: about 0.17 s at 100k rows).
"""
from __future__ import annotations

import errno
import json
import math
import os
import time
from dataclasses import dataclass

import h5py
import numpy as np

from .faults import fault_point
from .fileio import atomic_write

SCHEMA_VERSION = 1
GROUPS = ("iter", "epoch", "phase", "sharpness")
INFLATE_LIMIT = 64  # read_trace refuses columns holding more than this many times the file's bytes (+16 MiB)


class TraceError(ValueError):
    """A trace that cannot be read (missing, not HDF5, wrong schema); the message names the file."""


class TraceWriteError(RuntimeError):
    """A flush that could not be made durable (full disk, I/O error); trace.h5 holds the previous flush."""


def _fill(dtype: np.dtype):
    return np.nan if np.issubdtype(dtype, np.floating) else -1


LOCK_WAIT_S = 60.0  # how long a reader waits for HDF5's file lock (held by another reader or an old writer)


def open_h5(path: str, mode: str, wait: float = LOCK_WAIT_S) -> h5py.File:
    """h5py.File(path, mode), waiting while another process holds HDF5's file lock; other errors at once."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return h5py.File(path, mode)
        except OSError as e:  # BlockingIOError: "unable to lock file, errno = 11"
            # only HDF5's lock error waits: a truncated file's message ("... sblock->base_addr ...") also holds "lock"
            if "unable to lock file" not in str(e).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def open_for_reading(path: str, wait: float = LOCK_WAIT_S) -> h5py.File:
    """A trace opened read-only, waiting while its writer holds HDF5's file lock (status readers use this)."""
    return open_h5(path, "r", wait)


def mount_of(path: str) -> str:
    """'the file system mounted at M (type)' holding path."""
    p = os.path.realpath(path)
    while not os.path.ismount(p):
        p = os.path.dirname(p)
    kind = ""
    try:
        with open("/proc/self/mounts") as f:
            kind = next((ln.split()[2] for ln in f if ln.split()[1:2] == [p]), "")
    except OSError:
        pass
    return f"the file system mounted at {p}" + (f" ({kind})" if kind else "")


def _mib(b: int) -> str:
    return f"{b / 2**20:.1f} MiB"


def _plain(v):
    """A buffered value as JSON-safe plain data (non-finite floats as strings, numpy scalars as Python)."""
    v = v.item() if isinstance(v, np.generic) else v
    return repr(v) if isinstance(v, float) and not math.isfinite(v) else v


def _unplain(v):
    return float(v) if isinstance(v, str) and v in ("nan", "inf", "-inf") else v


class TraceWriter:
    """Buffered, append-only writer; create once on rank 0, then append rows and flush. Each flush writes
    a new file and renames it into place (module docstring); readers are never blocked nor block it."""

    def __init__(self, path: str, attrs: dict, mode: str = "w", arrays: dict | None = None):
        """mode 'w': a new trace with these attributes and `arrays` ({"group/name": numpy array}: datasets
        besides the rows, such as partition/label_histogram); 'a': continue an existing one."""
        self.path = path
        self._rows: dict[str, dict[str, list]] = {g: {} for g in GROUPS}
        self._last_flush = time.monotonic()
        self._disk: dict[str, int] = dict.fromkeys(GROUPS, 0)
        if mode == "w":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._commit(self._edit(lambda f: self._init(f, attrs, arrays or {}), new=True))  # whole or not at all
        else:
            self._commit(self._edit(lambda f: None), write=False)

    @staticmethod
    def _init(f, attrs: dict, arrays: dict) -> None:
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["status"] = "running"
        f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        for k, v in attrs.items():
            f.attrs[k] = v
        for k, v in arrays.items():
            f.create_dataset(k, data=np.asarray(v))
        for g in GROUPS:
            f.create_group(g)

    def append(self, group: str, **columns) -> None:
        """Add one row to `group`; every column of the group should be given each time."""
        buf = self._rows[group]
        nrows = max((len(v) for v in buf.values()), default=0)
        for k, v in columns.items():
            col = buf.setdefault(k, [None] * nrows)
            col.append(v)
        for col in buf.values():  # a column missing from this row
            if len(col) < nrows + 1:
                col.append(None)

    def due(self, seconds: float) -> bool:
        return time.monotonic() - self._last_flush >= seconds

    def pending(self) -> dict:
        """The buffered rows as plain JSON data (a checkpoint keeps them when a flush failed)."""
        return {g: {k: [_plain(v) for v in col] for k, col in buf.items()} for g, buf in self._rows.items() if buf}

    def add_pending(self, rows: dict) -> None:
        """Buffer rows saved by pending() (a resume writes them with its first flush)."""
        for g, cols in rows.items():
            n = max((len(c) for c in cols.values()), default=0)
            for j in range(n):
                self.append(g, **{k: _unplain(c[j]) for k, c in cols.items() if j < len(c)})

    def flush(self) -> None:
        if any(self._rows[g] for g in GROUPS):
            self._commit(self._edit(self._append_rows))
            for g in GROUPS:
                self._rows[g].clear()
        self._last_flush = time.monotonic()

    def _append_rows(self, f) -> None:
        for g in GROUPS:
            buf = self._rows[g]
            if not buf:
                continue
            grp = f.require_group(g)  # an older trace resumed by this version gains the group
            old = _group_len(grp)
            add = len(next(iter(buf.values())))
            for k, col in buf.items():
                vals = [np.nan if v is None else v for v in col]
                arr = np.asarray(vals)
                if arr.dtype == object or arr.dtype.kind == "b":
                    arr = arr.astype(np.float64)
                if k not in grp:
                    ds = grp.create_dataset(k, shape=(old,), maxshape=(None,), dtype=arr.dtype, chunks=(4096,))
                    if old:
                        ds[:] = _fill(arr.dtype)
                ds = grp[k]
                if arr.dtype.kind in "iu" and any(v is None for v in col):
                    arr = np.asarray([_fill(ds.dtype) if v is None else v for v in col], dtype=ds.dtype)
                ds.resize((old + add,))
                ds[old:] = arr.astype(ds.dtype)
            for k in grp:  # a column absent from these rows keeps its length in step
                if k not in buf:
                    ds = grp[k]
                    ds.resize((old + add,))
                    ds[old:] = _fill(ds.dtype)

    def set_attrs(self, **attrs) -> None:
        """Write the buffered rows and these attributes in one commit."""
        def edit(f):
            self._append_rows(f)
            for k, v in attrs.items():
                f.attrs[k] = v
        self._commit(self._edit(edit))
        for g in GROUPS:
            self._rows[g].clear()

    def rows(self) -> dict[str, int]:
        """Rows on disk per group (call after flush): the trace position a checkpoint records."""
        return dict(self._disk)

    def truncate(self, group: str, length: int) -> None:
        """Drop rows past `length` (a resumed run continues from its checkpoint's position)."""
        def edit(f):
            for ds in (f[group].values() if group in f else ()):
                if ds.shape[0] > length:
                    ds.resize((length,))
        self._commit(self._edit(edit))

    def _edit(self, fn, new: bool = False) -> tuple[bytes, dict]:
        """Apply fn to an in-memory copy of the trace: (the new file's bytes, rows per group)."""
        try:
            f = h5py.File(self.path, "w" if new else "r+", driver="core", backing_store=False, locking=False)
        except OSError as e:
            raise TraceError(f"trace {self.path!r} is not a readable HDF5 file ({e})") from None
        with f:
            fn(f)
            f.flush()
            rows = {g: _group_len(f[g]) if g in f else 0 for g in GROUPS}
            return f.id.get_file_image(), rows

    def _commit(self, edited: tuple[bytes, dict], write: bool = True) -> None:
        """Write the image to an exclusive temporary beside PATH (fileio.atomic_write: never through a planted
        link), fsync, rename over PATH, fsync the directory."""
        image, rows = edited
        if write:
            d = os.path.dirname(os.path.abspath(self.path))

            def chunks(f) -> None:
                view = memoryview(image)
                while view:
                    f.write(view[:1 << 24])
                    view = view[1 << 24:]
                    fault_point("trace_write", 0, rows["iter"])  # mid-write: kill or ENOSPC

            try:
                st = os.statvfs(d)
                if st.f_bavail * st.f_frsize < len(image):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                atomic_write(self.path, chunks)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    st = os.statvfs(d)
                    raise TraceWriteError(
                        f"trace {self.path}: {mount_of(d)} is full (or over quota): this flush needs "
                        f"{_mib(len(image))} free ({len(image)} bytes: the new copy is written beside the old one), "
                        f"{_mib(st.f_bavail * st.f_frsize)} are free; trace.h5 still holds the "
                        f"{self._disk['iter']} iteration rows of the previous flush") from None
                raise TraceWriteError(f"trace {self.path}: cannot write a temporary copy in {d} "
                                      f"({e.strerror or e})") from None
        self._disk = rows


def _group_len(grp: h5py.Group) -> int:
    return max((ds.shape[0] for ds in grp.values()), default=0)


@dataclass
class Trace:
    """A trace read back: attributes and one dict of numpy columns per group."""

    path: str
    attrs: dict
    iter: dict
    epoch: dict
    phase: dict
    sharpness: dict = None  # {} for traces written before /sharpness existed

    @property
    def config(self) -> dict:
        """The run's config (attribute config_json, a JSON object); TraceError naming file and field if not."""
        return parse_config(self.path, self.attrs)


def parse_config(path: str, attrs: dict) -> dict:
    if "config_json" not in attrs:
        raise TraceError(f"trace {path!r} has no config_json attribute: not the trace of an hpc_dsgd run")
    raw = attrs["config_json"]
    try:
        cfg = json.loads(raw) if isinstance(raw, str) else None
    except ValueError as e:
        raise TraceError(f"trace {path!r}: attribute config_json is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise TraceError(f"trace {path!r}: attribute config_json must be a JSON object of config keys, "
                         f"got {type(cfg).__name__ if isinstance(raw, str) else type(raw).__name__}")
    return cfg


def _attr(path: str, f: h5py.File, k: str):
    try:
        v = f.attrs[k]
    except Exception as e:  # h5py raises OSError, TypeError, ValueError (and more) for odd attribute types
        raise TraceError(f"trace {path!r}: attribute {k!r} cannot be read ({e})") from None
    v = v.decode(errors="replace") if isinstance(v, bytes) else v
    return v.item() if isinstance(v, np.generic) else v


def read_trace(path: str, groups: tuple = GROUPS, columns: dict | None = None) -> Trace:
    """Read a trace (only `groups`; the others come back empty; `columns` {group: names}: only those columns of
    a group, the tables' way to read /iter/ without its bulk). Every defect is one TraceError naming the
    file and the field: not a regular HDF5 file, schema_version missing or newer, config_json not a JSON
    object, a group or column that is not a plain 1-D numeric dataset of the file itself (external and
    dangling links refused, nothing outside the file is followed), columns of unequal length, or columns
    that would take more than INFLATE_LIMIT times the file's size in memory."""
    if not os.path.exists(path):
        raise TraceError(f"trace {path!r} does not exist")
    if not os.path.isfile(path):
        raise TraceError(f"trace {path!r} is not a regular file")
    size = os.path.getsize(path)
    try:
        f = open_h5(path, "r")
    except OSError as e:
        raise TraceError(f"trace {path!r} is not a readable HDF5 file ({e})") from None
    with f:
        ver = _attr(path, f, "schema_version") if "schema_version" in f.attrs else None
        if ver is None:
            raise TraceError(f"trace {path!r} has no schema_version attribute: not an hpc_dsgd trace")
        if not isinstance(ver, (int, np.integer)) or isinstance(ver, bool) or ver < 1:
            raise TraceError(f"trace {path!r}: attribute schema_version is {ver!r}, not a version number >= 1")
        if int(ver) > SCHEMA_VERSION:
            raise TraceError(f"trace {path!r} has schema_version {int(ver)}; this hpc_dsgd reads versions "
                             f"<= {SCHEMA_VERSION}: upgrade hpc_dsgd to read it")
        attrs = {k: _attr(path, f, k) for k in f.attrs}
        if "config_json" in attrs:
            parse_config(path, attrs)
        budget = INFLATE_LIMIT * size + 16 * 2**20
        out = {g: {} for g in GROUPS}
        for g in groups:
            link = f.get(g, getlink=True)
            if link is None:
                continue
            if not isinstance(link, h5py.HardLink) or not isinstance(f[g], h5py.Group):
                raise TraceError(f"trace {path!r}: /{g} is not a group of the file itself")
            lens = set()
            for k in f[g]:
                if columns and g in columns and k not in columns[g]:
                    continue
                where = f"trace {path!r}: column /{g}/{k}"
                if not isinstance(f[g].get(k, getlink=True), h5py.HardLink):
                    raise TraceError(f"{where} is a link (external or dangling), not data of the file itself")
                ds = f[g][k]
                if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or ds.dtype.kind not in "iufb":
                    raise TraceError(f"{where} must be a 1-D numeric dataset, got "
                                     + (f"{ds.ndim}-D {ds.dtype}" if isinstance(ds, h5py.Dataset) else "a group"))
                budget -= ds.size * ds.dtype.itemsize
                if budget < 0:
                    raise TraceError(f"{where} has {ds.size} rows: more than a file of {size} bytes can hold")
                lens.add(ds.shape[0])
                try:
                    out[g][k] = ds[()]
                except OSError as e:
                    raise TraceError(f"{where} cannot be read ({e})") from None
            if len(lens) > 1:
                raise TraceError(f"trace {path!r}: the columns of /{g} have unequal lengths {sorted(lens)}")
    return Trace(path=path, attrs=attrs, **out)

"""HDF5 trace: one file per run, written by rank 0 as the run goes.

Schema (SCHEMA_VERSION 1):
  /                attrs: schema_version, status (running|finished|failed), config_json, config_toml,
                   n, ranks, replicas_per_rank, topology, p, spectral_gap, iters_per_epoch,
                   total_iters, phase_bounds (P x 2), versions_json, code_revision, created, finished
  /iter/<col>      one row per iteration, 1-D chunked extendable datasets: it, epoch, phase, lr,
                   loss, acc, predictions (images or target tokens: acc is correct / predictions),
                   gossip_steps, bytes_sent, time (+ the consensus columns of later issues)
  /epoch/<col>     one row per evaluation: epoch, it, train_loss, train_acc, elapsed, and the workload's
                   columns: image classification test_acc_avg, test_loss_avg, test_acc_local_mean,
                   test_acc_local_std, images_per_s; translation val_loss_avg, val_nll_avg, val_ppl_avg,
                   bleu_avg, val_ppl_local_mean, val_ppl_local_std, sentences_per_s (attr `workload`)
  /phase/<col>     one row per finished phase: phase, first_it, last_it, gossip_steps, bytes_sent, ...
  /sharpness/<col> one row per model per measurement (sharpness_every): epoch, it, replica (-1 = the
                   averaged model), lambda_max, converged, tol_reached, tol, hvps, method (0 lanczos,
                   1 power), trace, trace_stderr, trace_probes, samples, loss, acc, seconds
                   (absent from traces written before it existed: read back as an empty group)

A column that first appears after rows exist is back-filled with NaN (floats) or -1 (ints), so
writers of later issues add columns without a schema change. Rows are buffered and appended by
`flush()`, which opens the file, appends, flushes and closes it: between flushes the file on disk
is closed and consistent, so a crash loses at most the rows since the last flush.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import h5py
import numpy as np

SCHEMA_VERSION = 1
GROUPS = ("iter", "epoch", "phase", "sharpness")


class TraceError(ValueError):
    """A trace that cannot be read (missing, not HDF5, wrong schema); the message names the file."""


def _fill(dtype: np.dtype):
    return np.nan if np.issubdtype(dtype, np.floating) else -1


LOCK_WAIT_S = 60.0  # how long the writer waits for a reader (h5ls, a table tool) to let go of the file


def _open(path: str, mode: str, wait: float = LOCK_WAIT_S) -> h5py.File:
    """h5py.File(path, mode), waiting while another process holds HDF5's file lock (a reader of the
    trace during training must not crash the run); other errors at once."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return h5py.File(path, mode)
        except OSError as e:  # BlockingIOError: "unable to lock file, errno = 11"
            if "lock" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class TraceWriter:
    """Buffered, append-only writer; create once on rank 0, then append rows and flush. The file is
    opened per flush; a process reading it meanwhile delays a flush (up to LOCK_WAIT_S), never fails it."""

    def __init__(self, path: str, attrs: dict, mode: str = "w"):
        self.path = path
        self._rows: dict[str, dict[str, list]] = {g: {} for g in GROUPS}
        self._last_flush = time.monotonic()
        if mode == "w":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            tmp = path + ".tmp"
            with h5py.File(tmp, "w") as f:
                f.attrs["schema_version"] = SCHEMA_VERSION
                f.attrs["status"] = "running"
                f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
                for k, v in attrs.items():
                    f.attrs[k] = v
                for g in GROUPS:
                    f.create_group(g)
            os.replace(tmp, path)  # the trace appears whole or not at all

    def append(self, group: str, **columns) -> None:
        """Add one row to `group`; every column of the group should be given each time."""
        buf = self._rows[group]
        nrows = max((len(v) for v in buf.values()), default=0)
        for k, v in columns.items():
            col = buf.setdefault(k, [None] * nrows)
            col.append(v)
        for k, col in buf.items():  # a column missing from this row
            if len(col) < nrows + 1:
                col.append(None)

    def due(self, seconds: float) -> bool:
        return time.monotonic() - self._last_flush >= seconds

    def flush(self) -> None:
        if not any(self._rows[g] for g in GROUPS):
            return
        with _open(self.path, "a") as f:
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
                buf.clear()
            f.flush()
        self._last_flush = time.monotonic()

    def set_attrs(self, **attrs) -> None:
        self.flush()
        with _open(self.path, "a") as f:
            for k, v in attrs.items():
                f.attrs[k] = v

    def rows(self) -> dict[str, int]:
        """Rows on disk per group (call after flush): the trace position a checkpoint records."""
        with _open(self.path, "r") as f:
            return {g: _group_len(f[g]) if g in f else 0 for g in GROUPS}

    def truncate(self, group: str, length: int) -> None:
        """Drop rows past `length` (a resumed run continues from its checkpoint's position)."""
        with _open(self.path, "a") as f:
            for ds in (f[group].values() if group in f else ()):
                if ds.shape[0] > length:
                    ds.resize((length,))


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
        return json.loads(self.attrs["config_json"])


def read_trace(path: str) -> Trace:
    if not os.path.isfile(path):
        raise TraceError(f"trace {path!r} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise TraceError(f"trace {path!r} is not a readable HDF5 file ({e})") from None
    with f:
        ver = f.attrs.get("schema_version")
        if ver is None:
            raise TraceError(f"trace {path!r} has no schema_version attribute: not an hpc_dsgd trace")
        if int(ver) > SCHEMA_VERSION:
            raise TraceError(f"trace {path!r} has schema_version {int(ver)}; this hpc_dsgd reads versions "
                             f"<= {SCHEMA_VERSION}: upgrade hpc_dsgd to read it")
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        groups = {g: {k: ds[()] for k, ds in f[g].items()} if g in f else {} for g in GROUPS}
    return Trace(path=path, attrs=attrs, **groups)

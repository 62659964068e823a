"""Claims about the HDF5 trace writer: rows land as written, late columns are back-filled, a resumed
run truncates to its checkpoint's position, newer schemas are refused, and a writer killed with
kill -9 at a random moment (mid-flush included) leaves a file plain h5py opens, holding a
consistent prefix of the rows."""
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from hpc_dsgd.trace import TraceError, TraceWriteError, TraceWriter, read_trace


def _temporaries(path) -> list:
    """fileio.atomic_write's temporaries of `path` left in its directory (none after a failed write)."""
    d, base = os.path.split(str(path))
    return [f for f in os.listdir(d) if f.startswith(f".{base}.tmp-")]


def test_rows_columns_backfill_truncate(tmp_path):
    path = str(tmp_path / "t.h5")
    w = TraceWriter(path, {"n": 4, "config_json": "{}"})
    for t in range(5):
        w.append("iter", it=t, loss=1.0 / (t + 1))
    w.flush()
    for t in range(5, 8):
        w.append("iter", it=t, loss=0.1, xi=0.5)  # a column that appears later
    w.flush()
    tr = read_trace(path)
    np.testing.assert_array_equal(tr.iter["it"], np.arange(8))
    assert np.isnan(tr.iter["xi"][:5]).all() and (tr.iter["xi"][5:] == 0.5).all()
    assert w.rows()["iter"] == 8
    w.truncate("iter", 6)
    assert len(read_trace(path).iter["xi"]) == 6
    assert tr.attrs["status"] == "running" and tr.attrs["n"] == 4


def test_newer_schema_and_non_trace_refused(tmp_path):
    path = str(tmp_path / "new.h5")
    with h5py.File(path, "w") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(TraceError, match="schema_version 99"):
        read_trace(path)
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(TraceError, match="not a readable HDF5 file"):
        read_trace(str(tmp_path / "x.h5"))


WRITER = r"""
import sys
from hpc_dsgd.trace import TraceWriter
w = TraceWriter(sys.argv[1], {"n": 1})
t = 0
print("ready", flush=True)
while True:
    for _ in range(50):
        w.append("iter", it=t, loss=0.5, xi=0.1, theta=0.2, phi=1.0, phase=1, bytes_sent=10)
        t += 1
    w.flush()  # flush after flush: most kills land inside one
"""


def test_kill_9_at_random_moments_leaves_a_readable_consistent_trace(tmp_path):
    rng = random.Random(7)
    for trial in range(6):
        path = str(tmp_path / f"k{trial}.h5")
        p = subprocess.Popen([sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.3 + rng.random())
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        with h5py.File(path, "r") as f:
            its = f["iter/it"][()] if "it" in f["iter"] else np.zeros(0)
            assert all(ds.shape == its.shape for ds in f["iter"].values())
            np.testing.assert_array_equal(its, np.arange(len(its)))


def test_a_reader_holding_the_trace_neither_blocks_nor_sees_a_half_flush(tmp_path):
    """Another process reading the trace (h5ls, a table tool, a test polling it) holds HDF5's file lock on
    the file it opened; a flush writes a new file and renames it into place, so it neither waits for the
    reader nor changes what the reader sees, and the next open sees every row."""
    path = str(tmp_path / "t.h5")
    w = TraceWriter(path, {"n": 1})
    w.append("iter", it=0, loss=1.0)
    w.flush()
    holder = subprocess.Popen([sys.executable, "-c", f"import h5py, sys; f = h5py.File({path!r}, 'r'); "
                               "print('open', flush=True); sys.stdin.readline(); print(f['iter/it'][()].tolist())"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "open"
    t0 = time.monotonic()
    w.append("iter", it=1, loss=0.5)
    w.flush()
    assert time.monotonic() - t0 < 5
    out, _ = holder.communicate("go\n", timeout=30)
    assert out.strip() == "[0]"  # the reader's file is the one it opened
    assert list(read_trace(path).iter["it"]) == [0, 1]


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


ROW = dict(loss=0.25, xi=float("nan"), theta=float("inf"), phase=2, bytes_sent=10)


def test_full_disk_injected_keeps_the_file_and_the_rows(tmp_path, monkeypatch):
    """ENOSPC in the middle of writing the new copy (HPC_DSGD_INJECT_FAULT at=trace_write): TraceWriteError
    naming the trace, the file system and the bytes needed; trace.h5 byte for byte the previous flush; no
    temporary left; the rows stay buffered and the next flush, with space again, writes them once."""
    path = str(tmp_path / "t.h5")
    w = TraceWriter(path, {"n": 1})
    for t in range(3):
        w.append("iter", it=t, **ROW)
    w.flush()
    before = sha(path)
    for t in range(3, 6):
        w.append("iter", it=t, **ROW)
    monkeypatch.setenv("HPC_DSGD_INJECT_FAULT", "rank=0,it=6,at=trace_write,kind=enospc")
    with pytest.raises(TraceWriteError) as e:
        w.flush()
    msg = str(e.value)
    assert path in msg and "file system mounted at" in msg and "bytes" in msg and "3 iteration rows" in msg
    assert sha(path) == before and not _temporaries(path) and w.rows()["iter"] == 3
    monkeypatch.delenv("HPC_DSGD_INJECT_FAULT")
    w.flush()
    np.testing.assert_array_equal(read_trace(path).iter["it"], np.arange(6))


def test_pending_rows_survive_json_exactly(tmp_path):
    """The rows a checkpoint keeps after a failed flush (pending(): plain JSON) are written back identical:
    NaN, inf, ints, a column missing from some rows."""
    a, b = str(tmp_path / "a.h5"), str(tmp_path / "b.h5")
    wa, wb = TraceWriter(a, {"n": 1}), TraceWriter(b, {"n": 1})
    for t in range(4):
        extra = {"late": 0.5} if t >= 2 else {}
        wa.append("iter", it=t, **ROW, **extra)
    wa.append("epoch", epoch=1.0, test_acc_avg=float("-inf"))
    wb.add_pending(json.loads(json.dumps(wa.pending(), allow_nan=False)))
    wa.flush()
    wb.flush()
    ta, tb = read_trace(a), read_trace(b)
    for g in ("iter", "epoch"):
        assert getattr(ta, g).keys() == getattr(tb, g).keys()
        for k, v in getattr(ta, g).items():
            np.testing.assert_array_equal(v, getattr(tb, g)[k])
            assert v.dtype == getattr(tb, g)[k].dtype


def test_full_tmpfs_loses_no_flushed_row(tmp_path):
    """A real full file system (a 2 MiB tmpfs; needs root): flushes fail with TraceWriteError once the disk is
    full, trace.h5 stays readable holding exactly the rows of the last good flush, and after space is freed the
    buffered rows are written. (The segfault this replaces came from HDF5 writing to a full disk in place.)"""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        path = str(mnt / "trace.h5")
        w = TraceWriter(path, {"n": 1})
        flushed, t = 0, 0
        with open(mnt / "filler", "wb") as f:
            f.write(b"x" * (1200 << 10))
        with pytest.raises(TraceWriteError, match=f"file system mounted at {mnt} \\(tmpfs\\) is full"):
            while t < 200_000:
                for _ in range(2000):
                    w.append("iter", it=t, loss=1.0, xi=0.5)
                    t += 1
                w.flush()
                flushed = t
        assert flushed > 0
        np.testing.assert_array_equal(read_trace(path).iter["it"], np.arange(flushed))
        assert not _temporaries(path)
        os.remove(mnt / "filler")
        w.flush()
        np.testing.assert_array_equal(read_trace(path).iter["it"], np.arange(t))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _malformed(tmp, kind) -> str:
    """A small trace with one defect."""
    p = str(tmp / f"{kind}.h5")
    with h5py.File(p, "w") as f:
        f.attrs["schema_version"] = "one" if kind == "schema-string" else 1
        if kind != "no-config":
            f.attrs["config_json"] = {"config-not-json": "{n: 8", "config-list": "[1, 2]"}.get(kind, '{"n": 8}')
        if kind == "group-is-dataset":
            f["epoch"] = np.zeros(2)
            return p
        g = f.create_group("epoch")  # the group tables read too
        g["it"] = np.arange(4)
        if kind == "2d-column":
            g["loss"] = np.zeros((4, 3))
        elif kind == "dangling-link":
            g["loss"] = h5py.ExternalLink(str(tmp / "gone.h5"), "/x")
        elif kind == "external-link":
            with h5py.File(tmp / "other.h5", "w") as o:
                o["x"] = np.zeros(4)
            g["loss"] = h5py.ExternalLink(str(tmp / "other.h5"), "/x")
        elif kind == "string-column":
            g["loss"] = np.array([b"a", b"b", b"c", b"d"])
        elif kind == "unequal":
            g["loss"] = np.zeros(3)
        elif kind == "inflated":
            g.create_dataset("loss", shape=(10**9,), dtype="f8", chunks=(4096,))  # nothing stored: reads as 8 GB
    return p


MALFORMED = {"no-config": "config_json", "config-not-json": "config_json is not valid JSON",
             "config-list": "config_json must be a JSON object", "schema-string": "schema_version",
             "2d-column": "/epoch/loss must be a 1-D numeric dataset", "dangling-link": "/epoch/loss is a link",
             "external-link": "/epoch/loss is a link", "string-column": "/epoch/loss must be a 1-D numeric",
             "unequal": "/epoch have unequal lengths", "group-is-dataset": "/epoch is not a group",
             "inflated": "/epoch/loss has 1000000000 rows"}


@pytest.mark.parametrize("kind", MALFORMED)
def test_malformed_traces_one_error_naming_file_and_field(tmp_path, kind):
    """Every defect is one TraceError naming the file and the field, from read_trace (or, for a trace
    without config_json, from its .config that reference traces and tables read), never a KeyError,
    JSONDecodeError, OSError or an 8 GB allocation; the tables' reader refuses it alike."""
    from hpc_dsgd.analysis.runs import load_runs

    p = _malformed(tmp_path, kind)
    with pytest.raises(TraceError) as e:
        _ = read_trace(p).config
    assert p in str(e.value) and MALFORMED[kind] in str(e.value), str(e.value)
    runs = load_runs([p])
    reason = runs.attrs["skipped"][0][1]
    assert runs.empty and p in reason and MALFORMED[kind] in reason


def test_a_truncated_trace_fails_at_once_without_waiting_for_a_lock(tmp_path, monkeypatch):
    """Only HDF5's "unable to lock file" waits (up to LOCK_WAIT_S): a truncated file, whose error text holds
    "sblock" (a "lock" substring), was waited on for 60 s by every reader before it failed."""
    import hpc_dsgd.trace as trace_mod

    path = str(tmp_path / "t.h5")
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(100_000)
    os.truncate(path, os.path.getsize(path) // 2)
    naps = []
    monkeypatch.setattr(trace_mod.time, "sleep", naps.append)
    with pytest.raises(TraceError, match="not a readable HDF5 file"):
        read_trace(path)
    assert naps == []

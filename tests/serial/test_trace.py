"""Claims about the HDF5 trace writer: rows land as written, late columns are back-filled, a resumed
run truncates to its checkpoint's position, newer schemas are refused, and a writer killed with
kill -9 at a random moment (mid-flush included) leaves a file plain h5py opens, holding a
consistent prefix of the rows."""
import os
import random
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from hpc_dsgd.trace import TraceError, TraceWriter, read_trace


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


def test_a_reader_holding_the_trace_delays_a_flush_never_fails_it(tmp_path):
    """Another process reading the trace (h5ls, a table tool, a test polling it) holds HDF5's file
    lock; the writer's next flush waits for it instead of crashing the run."""
    import subprocess
    import sys
    import time

    from hpc_dsgd.trace import TraceWriter, read_trace

    path = str(tmp_path / "t.h5")
    w = TraceWriter(path, {"n": 1})
    w.append("iter", it=0, loss=1.0)
    w.flush()
    holder = subprocess.Popen([sys.executable, "-c", f"import h5py, time; f = h5py.File({path!r}, 'r'); "
                               "print('open', flush=True); time.sleep(2)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "open"
    t0 = time.monotonic()
    w.append("iter", it=1, loss=0.5)
    w.flush()  # blocked by the reader's lock until it exits
    holder.wait()
    assert time.monotonic() - t0 > 0.5
    assert list(read_trace(path).iter["it"]) == [0, 1]

"""fileio: atomic writes never write through a planted link; bounded reads refuse links, FIFOs and big files;
RunLock staleness from the heartbeat's age whatever the pid names."""
import json
import os
import socket
import time

import pytest

from hpc_dsgd.fileio import FileFormatError, atomic_write_bytes, read_bounded, read_json_bounded
from hpc_dsgd.runlock import LOCK_NAME, LOCK_STALE_S, RunLock


def test_atomic_write_never_writes_through_a_planted_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "run" / "trace.h5"
    target.parent.mkdir()
    for name in ("trace.h5.tmp", "trace.h5.part", ".trace.h5.tmp"):  # the names older writers used, and ours
        os.symlink(victim, target.parent / name)
    atomic_write_bytes(str(target), b"new")
    assert target.read_bytes() == b"new" and victim.read_bytes() == b"precious"
    os.symlink(victim, tmp_path / "run" / "link")  # a link at the target itself is replaced, not followed
    atomic_write_bytes(str(tmp_path / "run" / "link"), b"x")
    assert victim.read_bytes() == b"precious" and not os.path.islink(tmp_path / "run" / "link")
    left = [f for f in os.listdir(target.parent) if ".tmp-" in f]
    assert left == []


def test_bounded_reader_refuses_links_fifos_and_oversized_files(tmp_path):
    (tmp_path / "big").write_bytes(b"x" * 100)
    with pytest.raises(FileFormatError, match="100 bytes"):
        read_bounded(str(tmp_path / "big"), 99)
    os.symlink(tmp_path / "big", tmp_path / "link")
    with pytest.raises(FileFormatError, match="symbolic link"):
        read_bounded(str(tmp_path / "link"), 1000)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(FileFormatError, match="not a regular file"):
        read_bounded(str(tmp_path / "fifo"), 1000)
    (tmp_path / "deep.json").write_text("[" * 100 + "]" * 100)
    with pytest.raises(FileFormatError, match="nested 100 levels"):
        read_json_bounded(str(tmp_path / "deep.json"), 1000)


def test_a_lock_whose_heartbeat_is_old_is_stale_even_if_its_pid_is_alive(tmp_path):
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": "long ago"}))
    rl = RunLock(str(tmp_path))
    assert not rl.is_stale(rl.owner())  # a live pid with a fresh heartbeat holds the lock
    old = time.time() - LOCK_STALE_S - 60
    os.utime(lock, (old, old))  # the pid is alive (it is this test), but nobody touched the lock for > LOCK_STALE_S
    assert rl.is_stale(rl.owner())

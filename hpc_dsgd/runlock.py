"""RUN_DIR/run.lock: one process writes a run directory at a time.

The lock is a JSON file {host, pid, slurm_job_id, slurm_restart, started} created exclusively (O_EXCL) by the
one process that writes the run (rank 0); its mtime is the heartbeat, touched every LOCK_HEARTBEAT_S by a
daemon thread. `RunLock.owner()` and `RunLock.is_stale(owner)` are the public reading of a lock (the campaign's
status uses them); `acquire()`/`release()` (or `with RunLock(d):`) hold one.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time

from .config import ConfigError
from .rundir import RunDir

LOCK_NAME = RunDir.LOCK  # RUN_DIR/run.lock: JSON {host, pid, slurm_job_id, started}; mtime = heartbeat
LOCK_HEARTBEAT_S = 30.0  # the owner touches its lock this often
LOCK_STALE_S = 600.0  # a lock not touched for this long belongs to a dead job (any host)
LOCKED_EXIT_CODE = 73  # `train`'s exit code when the run directory is in use by another live run (EX_CANTCREAT)


class RunLockError(ConfigError):
    """The run directory is in use by another live run (train exits LOCKED_EXIT_CODE)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """RUN_DIR/run.lock, created exclusively (O_EXCL) by the one process that writes the run (rank 0).

    A lock is stale, and taken over, when it was not touched for LOCK_STALE_S (a live owner touches it every
    LOCK_HEARTBEAT_S from a daemon thread, so its owner is dead whatever its pid now names), when its owner ran on
    this host and its pid is gone (kill -9, a crash), or when it was an earlier incarnation of this requeued SLURM
    job (same SLURM_JOB_ID, another SLURM_RESTART_COUNT). Otherwise RunLockError names
    the owner. release() removes the lock, and the run directory if the lock was all it held."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.path = RunDir(run_dir).lock
        self.taken_over: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created = ""  # the outermost directory acquire() created, removed by release() if empty

    def owner(self) -> dict:
        """The lock file's JSON ({} when absent or unreadable)."""
        return self._read(self.path)

    @staticmethod
    def _read(path: str) -> dict:
        try:
            with open(path) as f:
                owner = json.load(f)
            return owner if isinstance(owner, dict) else {}
        except (OSError, ValueError):
            return {}

    def heartbeat_age(self) -> float | None:
        """Seconds since the owner last touched the lock; None when there is no lock."""
        try:
            return time.time() - os.path.getmtime(self.path)
        except OSError:
            return None

    def is_stale(self, owner: dict) -> bool:
        """True when the lock's owner is gone: its heartbeat is older than LOCK_STALE_S (whatever its pid: a pid
        is reused by unrelated processes), its pid on this host is gone (kill -9, a crash), or it was an earlier
        incarnation of this requeued SLURM job."""
        age = self.heartbeat_age()
        if age is None or age > LOCK_STALE_S:
            return True
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            return not _alive(owner["pid"])
        job, restart = os.environ.get("SLURM_JOB_ID", ""), os.environ.get("SLURM_RESTART_COUNT", "0")
        return bool(job) and owner.get("slurm_job_id") == job and owner.get("slurm_restart") != restart

    def acquire(self) -> RunLock:
        top = os.path.abspath(self.run_dir)
        while not os.path.exists(os.path.dirname(top)):  # the outermost directory this lock creates
            top = os.path.dirname(top)
        if not os.path.isdir(self.run_dir):
            os.makedirs(self.run_dir, exist_ok=True)
            self._created = top
        me = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
              "slurm_restart": os.environ.get("SLURM_RESTART_COUNT", "0"),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                if not self.is_stale(owner):
                    job = f", SLURM job {owner['slurm_job_id']}" if owner.get("slurm_job_id") else ""
                    raise RunLockError(
                        f"run directory {self.run_dir!r} is in use by another run (host {owner.get('host', '?')}, "
                        f"pid {owner.get('pid', '?')}{job}, since {owner.get('started', '?')}; lock {self.path}): "
                        f"two runs never write one directory. Wait for it, give this run another name "
                        f"(--set name=...), or delete {self.path} if that process is gone") from None
                self.taken_over = owner
                aside = self.path + f".stale-{os.getpid()}"
                try:
                    os.replace(self.path, aside)
                except FileNotFoundError:
                    continue  # another starter took it over first: the next O_EXCL decides
                if self._read(aside) != owner:  # a fresh lock taken in between: give it back, lose the race
                    os.replace(aside, self.path)
                    continue
                os.remove(aside)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._thread = threading.Thread(target=self._heartbeat, name="hpc_dsgd-run-lock", daemon=True)
            self._thread.start()
            return self
        raise RunLockError(f"run directory {self.run_dir!r}: could not take the lock {self.path}")

    def _heartbeat(self) -> None:
        while not self._stop.wait(LOCK_HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        try:
            os.remove(self.path)
        except OSError:
            pass
        d = os.path.abspath(self.run_dir)
        while self._created and d.startswith(self._created):  # only if the lock was all it held
            try:
                os.rmdir(d)  # (a run refused before any work leaves nothing behind)
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    raise
                break
            d = os.path.dirname(d)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

"""Checks before any work: the inputs a config names, the launch, the device, the data size, and one run per
run directory.

Each check returns or raises one message naming the value and what would be right; the command
line prints it as `hpc_dsgd: error: ...` and exits 2 on every rank, before anything is written.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import tempfile
import threading
import time

import torch

from .checkpoint import CheckpointError, resolve_branch
from .config import ConfigError
from .data import check_dataset, load_dataset, make_partition
from .data.partition import check_data_keys
from .data.imagenet32 import prepare_imagenet32
from .data.multi30k import load_multi30k

# Environment variables through which launchers announce how many tasks they started, in the order
# they are consulted (srun sets SLURM_STEP_NUM_TASKS for the step, SLURM_NTASKS for the job; Hydra
# and srun --mpi=pmi2 set PMI_SIZE; Open MPI's mpirun sets OMPI_COMM_WORLD_SIZE; MVAPICH MV2_...).
LAUNCHER_SIZE_VARS = ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE",
                      "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")

# Training images per data set, to refuse batch_size x n larger than an epoch before loading the data.
# ImageNet-32 and Multi30k are counted from the files (train_size), which the config check has read.
TRAIN_SIZES = {"digits": 1437, "cifar10": 50_000}


def check_inputs(cfg) -> None:
    """What the config names outside itself, after config.validate has checked its values (load_config and
    from_dict call both): every target phase's reference trace (matching experiment, plain gossip, measured),
    the branch_from checkpoint, the data directory. ConfigError naming the key and the path otherwise."""
    if "target" in cfg.policies:
        # consensus imports comm, which initialises MPI: `python -m hpc_dsgd check` (run before srun) stays
        # MPI-free unless a target phase needs its reference.
        from .consensus import reference_xi_max

        reference_xi_max(cfg)  # every target phase's reference: matching experiment, plain gossip, measured
    if cfg.branch_from:
        try:
            branch = resolve_branch(cfg.branch_from)
        except CheckpointError as e:
            raise ConfigError(str(e)) from None
        if not os.path.isdir(branch):
            raise ConfigError(f"branch_from={cfg.branch_from!r} is not a checkpoint directory "
                              "(RUN_DIR/checkpoints/ckpt-<iteration>, or RUN_DIR/checkpoints/phase-K: the end of phase K)")
    check_dataset(cfg.dataset, cfg.data_dir or None)


def train_size(cfg) -> int | None:
    """Training samples of cfg's data set: the fixed sizes, else from the ImageNet-32 cache's manifest or
    the Multi30k training file (DataError if they cannot be read); None where the config has no data_dir."""
    if cfg.dataset in TRAIN_SIZES:
        return TRAIN_SIZES[cfg.dataset]
    if not cfg.data_dir:
        return None
    if cfg.dataset == "imagenet32":
        return int(prepare_imagenet32(cfg.data_dir)[1]["arrays"]["train_y"]["shape"][0])
    if cfg.dataset == "multi30k":
        return len(load_multi30k(cfg.data_dir).train)
    return None


def check_data_size(cfg) -> None:
    """ConfigError unless an epoch of cfg's data set has at least one iteration of n x batch_size samples (after
    the validation split's held-out part), and the partition keys fit the training set's size."""
    size = train_size(cfg)
    if size is not None:
        check_data_keys(cfg, size)
    if size is not None and size // (cfg.n * cfg.batch_size) < 1:
        what = "sentence pairs" if cfg.dataset == "multi30k" else "images"
        raise ConfigError(f"batch_size={cfg.batch_size} x n={cfg.n} = {cfg.n * cfg.batch_size} exceeds the {size} "
                          f"training {what} of {cfg.dataset}" + (f" in {cfg.data_dir}" if cfg.data_dir else "") +
                          f": an epoch would have no iteration; use batch_size <= {max(size // cfg.n, 1)} for "
                          f"n={cfg.n}, or a smaller n")


def partition_summary(cfg) -> list[str]:
    """The check command's lines on the data each replica reads: for a non-iid partition or a validation split
    of an image data set, the partition's sizes and classes per replica (loads the training labels; a replica
    with fewer samples than a batch is refused, PartitionError, as train refuses it); else nothing."""
    if cfg.dataset == "multi30k":
        return ["validation: multi30k's own validation set (val.en/.de) replaces the test set"] \
            if cfg.validation_split > 0 else []
    if cfg.partition == "iid" and cfg.validation_split == 0:
        return []
    data = load_dataset(cfg.dataset, cfg.data_dir or None)
    part, held = make_partition(cfg, data.train_y.numpy(), data.num_classes)
    out = [part.summary()]
    if held is not None:
        out.append(f"validation: {len(held)} of {len(data.train_y)} training samples held out "
                   f"(validation_split={cfg.validation_split:g}); evaluations use them instead of the test set")
    return out


LOCK_NAME = "run.lock"  # RUN_DIR/run.lock: JSON {host, pid, slurm_job_id, started}; mtime = heartbeat
LOCK_HEARTBEAT_S = 30.0  # the owner touches its lock this often
LOCK_STALE_S = 600.0  # a lock not touched for this long belongs to a dead job (any host)


class LaunchError(ConfigError):
    """Launched in a way that cannot form the intended MPI world."""


class RunLockError(ConfigError):
    """The run directory is in use by another live run."""


def launch_error(world_size: int, env: dict | None = None) -> str | None:
    """The launcher started several tasks but MPI formed a world of 1: every task would run alone
    (srun's MPI plugin does not match the MPI library). None when the launch looks right."""
    if world_size != 1:
        return None
    env = os.environ if env is None else env
    for var in LAUNCHER_SIZE_VARS:
        try:
            tasks = int(env.get(var, "") or 0)
        except ValueError:
            continue
        if tasks > 1:
            return (f"the launcher started {tasks} tasks ({var}={tasks}) but MPI sees a world of 1 process: each "
                    f"task would run alone and all would write the same run directory. The launcher's MPI "
                    f"plugin does not match this MPI library: under SLURM use `srun --mpi=pmi2 ...` (MPICH; "
                    f"Open MPI: --mpi=pmix; `srun --mpi=list` shows your site's plugins), or start the job with "
                    f"this MPI's mpiexec; for a deliberate single process, unset {var}")
    return None


def check_run(cfg, ranks: int) -> None:
    """What the config alone cannot tell: the device on this node, an epoch with at least one
    iteration, a writable out_dir. ConfigError naming the key otherwise."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device='cuda' but torch sees no CUDA device on {socket.gethostname()} "
                          f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}): "
                          f"use device='auto' or 'cpu', or run on a GPU node")
    check_data_size(cfg)
    if cfg.dataset == "cifar10" and cfg.data_dir:
        _check_cifar10_md5(cfg.data_dir)
    check_out_dir(cfg.out_dir, cfg.name)


def check_out_dir(out_dir: str, name: str) -> None:
    """The run directory out_dir/name can be created and written: ConfigError naming out_dir and the reason
    (a file in the way, a read-only file system, no permission, a full disk) otherwise. Probes by creating and
    removing an empty directory where the run directory would be created."""
    run_dir = os.path.abspath(os.path.join(out_dir, name))
    parent = run_dir
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        what = ("a dangling symbolic link" if os.path.islink(parent) and not os.path.exists(parent)
                else "a file" if os.path.isfile(parent) else "not a directory")
        raise ConfigError(f"out_dir={out_dir!r}: {parent} is {what}, in the way of the run directory {run_dir}: "
                          f"choose another out_dir (or name), or move it away")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".hpc_dsgd-probe-", dir=parent))
    except OSError as e:
        reason = {errno.EACCES: "permission denied for this user", errno.EPERM: "operation not permitted",
                  errno.EROFS: "a read-only file system", errno.ENOSPC: "no space left on the device",
                  errno.EDQUOT: "the disk quota is exceeded"}.get(e.errno, (e.strerror or str(e)).lower())
        raise ConfigError(f"out_dir={out_dir!r}: the run directory {run_dir} cannot be created in {parent}: "
                          f"{reason}; choose another out_dir") from None


def _check_cifar10_md5(root: str) -> None:
    """torchvision's MD5 of every official CIFAR-10 file, before any work (the loader checks again)."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    folder = os.path.join(os.path.abspath(os.path.expanduser(root)), CIFAR10.base_folder)
    for fname, md5 in CIFAR10.train_list + CIFAR10.test_list:
        fpath = os.path.join(folder, fname)
        if os.path.isfile(fpath) and not check_integrity(fpath, md5):
            raise ConfigError(f"data_dir={root!r}: {fpath} fails its MD5 check (corrupt, truncated or not the official "
                              f"CIFAR-10 file): copy cifar-10-batches-py/ again from a download by "
                              f"torchvision.datasets.CIFAR10(DIR, download=True)")


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

    A lock is stale, and taken over, when its owner ran on this host and its pid is gone (kill -9,
    a crash), when it was an earlier incarnation of this requeued SLURM job (same SLURM_JOB_ID,
    another SLURM_RESTART_COUNT), or when it was not touched for LOCK_STALE_S (an owner on another host that died: a
    live owner touches it every LOCK_HEARTBEAT_S from a daemon thread). Otherwise RunLockError names
    the owner. release() removes the lock, and the run directory if the lock was all it held."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.taken_over: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created = ""  # the outermost directory acquire() created, removed by release() if empty

    def _owner(self) -> dict:
        return self._read(self.path)

    @staticmethod
    def _read(path: str) -> dict:
        try:
            with open(path) as f:
                owner = json.load(f)
            return owner if isinstance(owner, dict) else {}
        except (OSError, ValueError):
            return {}

    def _stale(self, owner: dict) -> bool:
        try:
            age = time.time() - os.path.getmtime(self.path)
        except OSError:
            return True
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            return not _alive(owner["pid"])
        job, restart = os.environ.get("SLURM_JOB_ID", ""), os.environ.get("SLURM_RESTART_COUNT", "0")
        if job and owner.get("slurm_job_id") == job and owner.get("slurm_restart") != restart:
            return True  # an earlier incarnation of this requeued job: gone for sure
        return age > LOCK_STALE_S

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
                owner = self._owner()
                if not self._stale(owner):
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

"""Checks before any work: the inputs a config names, the launch, the device, the data size, and one run per
run directory.

Each check returns or raises one message naming the value and what would be right; the command
line prints it as `hpc_dsgd: error: ...` and exits 2 on every rank, before anything is written.
"""
from __future__ import annotations

import errno
import os
import socket
import tempfile
from dataclasses import dataclass, field

import torch

from .checkpoint import CheckpointError
from .config import ConfigError
from .data import check_dataset, load_dataset, make_partition
from .data.partition import check_data_keys
from .resume import resolve_branch
from .workloads.spec import spec_of

# Environment variables through which launchers announce how many tasks they started, in the order
# they are consulted (srun sets SLURM_STEP_NUM_TASKS for the step, SLURM_NTASKS for the job; Hydra
# and srun --mpi=pmi2 set PMI_SIZE; Open MPI's mpirun sets OMPI_COMM_WORLD_SIZE; MVAPICH MV2_...).
LAUNCHER_SIZE_VARS = ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE",
                      "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")


@dataclass
class Inputs:
    """What check_inputs found: one line per thing it checked, and whether the data set is ready (False: a
    cache is still to be built by the first run, so the data's size is not known yet)."""

    checked: list[str] = field(default_factory=list)
    data_ready: bool = True


def check_inputs(cfg, prepare_data: bool = True) -> Inputs:
    """What the config names outside itself, after config.load_config/from_dict validated its values (the
    commands that need it call it: train, check, sharpness, surfaces): every target phase's reference trace
    (matching experiment, plain gossip, measured), the branch_from checkpoint, the data directory. ConfigError
    (or DataError) naming the key and the path otherwise. prepare_data=False (the `check` command) builds and
    writes nothing: a data cache not built yet is reported as such, left to the first run."""
    out = Inputs()
    if "target" in cfg.policies:
        # consensus imports comm, which initialises MPI: `python -m hpc_dsgd check` (run before srun) stays
        # MPI-free unless a target phase needs its reference.
        from .consensus import reference_xi_max

        xi_max = reference_xi_max(cfg)  # every target phase's reference: matching experiment, plain gossip, measured
        out.checked.append("reference Xi_max per target phase: " + ", ".join(f"phase {k}: {v:.4g}"
                                                                          for k, v in sorted(xi_max.items())))
    if cfg.branch_from:
        try:
            branch = resolve_branch(cfg.branch_from)
        except CheckpointError as e:
            raise ConfigError(str(e)) from None
        if not os.path.isdir(branch):
            raise ConfigError(f"branch_from={cfg.branch_from!r} is not a checkpoint directory "
                              "(RUN_DIR/checkpoints/ckpt-<iteration>, or RUN_DIR/checkpoints/phase-K: the end of phase K)")
        out.checked.append(f"branch_from: {branch} (its checksums are verified when the run starts)")
    pending = check_dataset(cfg.dataset, cfg.data_dir or None, prepare=prepare_data)
    out.checked.append(f"data: {cfg.dataset}" + (f" in {cfg.data_dir}" if cfg.data_dir else "")
                       + (f" (files present; {pending})" if pending else " ready"))
    out.data_ready = pending is None
    return out


def train_size(cfg) -> int | None:
    """Training samples of cfg's data set, as its workload counts them (workloads.spec: fixed, or from the files;
    DataError if they cannot be read); None where the config has no data_dir to count from."""
    return spec_of(cfg.dataset).count_train(cfg)


def check_data_size(cfg) -> None:
    """ConfigError unless an epoch of cfg's data set has at least one iteration of n x batch_size samples (after
    the validation split's held-out part), and the partition keys fit the training set's size."""
    size = train_size(cfg)
    if size is not None and size // (cfg.n * cfg.batch_size) < 1:
        raise ConfigError(f"batch_size={cfg.batch_size} x n={cfg.n} = {cfg.n * cfg.batch_size} exceeds the {size} "
                          f"training {spec_of(cfg.dataset).samples} of {cfg.dataset}"
                          + (f" in {cfg.data_dir}" if cfg.data_dir else "") +
                          f": an epoch would have no iteration; use batch_size <= {max(size // cfg.n, 1)} for "
                          f"n={cfg.n}, or a smaller n")
    if size is not None:
        check_data_keys(cfg, size)


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
    try:
        spec_of(cfg.dataset).check_integrity(cfg)  # CIFAR-10: every file's MD5
    except ValueError as e:
        raise ConfigError(str(e)) from None
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



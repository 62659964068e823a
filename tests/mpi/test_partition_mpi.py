"""Claim: a non-iid (Dirichlet) partition with a validation split trains the same trajectory on any split:
n = 4 replicas on the world's R ranks (R x 4/R) end bitwise where one process holding all 4 (1 x 4) ends, with
replica_exec = "loop" (docs/partitions.md; tests/serial/test_partition.py checks the index maps themselves)."""
import time

import numpy as np
from mpi4py import MPI

from hpc_dsgd.config import from_dict
from hpc_dsgd.train import run

QUIET = dict(log=lambda *a, **k: None)


def cfg(tmp, name, ranks, partition):
    return from_dict(dict(name=name, out_dir=tmp, n=4, dataset="digits", model="small_cnn", batch_size=8, epochs=0.2,
                          warmup_epochs=0.0, decay_fractions=[], policies=["gossip"], device="cpu",
                          checkpoint_minutes=0.0, local_eval_samples=16, replica_exec="loop", partition=partition,
                          dirichlet_alpha=0.1, shards_per_replica=2, validation_split=0.1, max_iterations=6), ranks)


def test_non_iid_trajectory_does_not_depend_on_the_split(tmp_path_factory, partition="dirichlet"):
    world = MPI.COMM_WORLD
    R = world.Get_size()
    tmp = world.bcast(str(tmp_path_factory.mktemp("split")) if world.Get_rank() == 0 else None)
    split = run(cfg(tmp, "split", R, partition), world, **QUIET)
    rows = world.gather(split.X.numpy(), root=0)
    if world.Get_rank() == 0:
        alone = run(cfg(tmp, "alone", 1, partition), MPI.COMM_SELF, **QUIET)
        np.testing.assert_array_equal(np.concatenate(rows), alone.X.numpy())
    done = world.Ibarrier()  # the others wait without spinning on the cores rank 0 computes on
    while not done.Test():
        time.sleep(0.01)

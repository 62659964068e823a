"""Claims about the algorithms on 4 ranks (docs/algorithms.md): for each algorithm, the splits 4 x 1, 2 x 2 and
1 x 4 (ranks x replicas, replica_exec = loop) give bitwise the same parameters, the companion gossip included,
and they equal the dense reference of the algorithm's equations (tests/alg_reference.py)."""
import math

import numpy as np
import pytest
from alg_reference import CASES, reference, small  # tests/alg_reference.py
from mpi4py import MPI

from hpc_dsgd.config import from_dict

from test_dsgd import results_per_split  # tests/mpi/test_dsgd.py

ITERS = 5


@pytest.mark.parametrize("case", ["gradient_tracking_nesterov", "d2", "quasi_global", "gossip_every_2"])
def test_rank_split_is_bitwise_and_equals_reference(tmp_path_factory, case):
    world = MPI.COMM_WORLD
    tmp = world.bcast(str(tmp_path_factory.mktemp("alg")) if world.Get_rank() == 0 else None)
    n = math.lcm(4, world.Get_size())
    results = results_per_split(tmp, lambda out, ranks: from_dict(small(out, n=n, max_iterations=ITERS, **CASES[case]),
                                                                  ranks=ranks))
    if world.Get_rank() == 0:
        first = results[world.Get_size()]
        for X in results.values():
            np.testing.assert_array_equal(first, X)
        np.testing.assert_allclose(first, reference(from_dict(small(tmp, n=n, max_iterations=ITERS, **CASES[case]),
                                                              ranks=1), ITERS), rtol=2e-4, atol=2e-5)

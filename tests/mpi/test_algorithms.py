"""Claims about the algorithms on 4 ranks (docs/algorithms.md): for each algorithm, the splits 4 x 1, 2 x 2 and
1 x 4 (ranks x replicas, replica_exec = loop) give bitwise the same parameters, the companion gossip included,
and they equal the dense reference of the algorithm's equations (tests/alg_reference.py); push-sum on the
directed random graph (12 iterations) counts the weights' float64 in bytes_sent."""
import math

import numpy as np
import pytest
from alg_reference import CASES, reference, small  # tests/alg_reference.py
from mpi4py import MPI

from hpc_dsgd.config import from_dict
from hpc_dsgd.topology import Topology
from hpc_dsgd.trace import read_trace

from test_dsgd import results_per_split  # tests/mpi/test_dsgd.py

ITERS = 5


@pytest.mark.parametrize("case", ["gradient_tracking_nesterov", "d2", "quasi_global", "gossip_every_2",
                                  "push_sum_random"])
def test_rank_split_is_bitwise_and_equals_reference(tmp_path_factory, case):
    world = MPI.COMM_WORLD
    tmp = world.bcast(str(tmp_path_factory.mktemp("alg")) if world.Get_rank() == 0 else None)
    n = math.lcm(4, world.Get_size())
    iters = 12 if case.startswith("push_sum") else ITERS
    results = results_per_split(tmp, lambda out, ranks: from_dict(small(out, n=n, max_iterations=iters, **CASES[case]),
                                                                  ranks=ranks))
    if world.Get_rank() == 0:
        first = results[world.Get_size()]
        for X in results.values():
            np.testing.assert_array_equal(first, X)
        np.testing.assert_allclose(first, reference(from_dict(small(tmp, n=n, max_iterations=iters, **CASES[case]),
                                                              ranks=1), iters), rtol=2e-4, atol=2e-5)
        if case.startswith("push_sum"):  # bytes_sent: per row a rank sends, D float32 of x and one float64 w
            it = read_trace(f"{tmp}/{world.Get_size()}/t/trace.h5")
            D, k, topo = int(it.attrs["row_length"]), n // world.Get_size(), Topology("directed_random", n, seed=0)
            rows = [sum(int((topo.W(s)[r * k:(r + 1) * k, q * k:(q + 1) * k] != 0).any(axis=0).sum())
                        for q in range(world.Get_size()) for r in range(world.Get_size()) if r != q)
                    for s in range(iters)]
            np.testing.assert_array_equal(it.iter["bytes_sent"], [m * (4 * D + 8) for m in rows])

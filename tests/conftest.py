"""Shared test set-up.

Under `mpiexec -n 4 python -m mpi4py -m pytest`, pytest catches a failed assert, so the other
ranks would wait in their next collective forever. As mpi4py's own suite does, a failure on any
rank prints its report and aborts COMM_WORLD, so the whole job ends non-zero within seconds.
Timeouts use pytest-timeout's thread method: a rank stuck inside an MPI call still dies, and the
process manager then tears the job down.
"""
import os
import shutil
import sys
import time

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)


# -- helpers the test files share (import them: `from conftest import ROOT, QUICK, ...`) --------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.path.join(ROOT, "configs", "quickstart.toml")
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")


def launcher_free_env(extra: dict | None = None) -> dict:
    """The test process's environment without any launcher's task count (CI may itself run under one), with
    OMP_NUM_THREADS=1: what a test's own `mpiexec` or `python -m hpc_dsgd` job starts with."""
    from hpc_dsgd.preflight import LAUNCHER_SIZE_VARS

    e = {k: v for k, v in os.environ.items() if k not in LAUNCHER_SIZE_VARS}
    e.update(OMP_NUM_THREADS="1", **(extra or {}))
    return e


def _world():
    if "mpi4py.MPI" not in sys.modules:
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD


RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")  # set by MPICH's, Open MPI's and PMIx launchers


@pytest.hookimpl(trylast=True)  # after the terminal plugin registered its reporter
def pytest_configure(config):
    """Under mpiexec only rank 0 prints pytest's dots and summary; the other ranks report failures only
    (pytest_runtest_makereport below writes a failing rank's report to stderr before aborting). The rank is
    read from the launcher's environment: MPI is not initialised yet at this point."""
    rank = next((int(os.environ[v]) for v in RANK_VARS if os.environ.get(v, "").isdigit()), 0)
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if rank > 0 and reporter is not None:
        config.pluginmanager.unregister(reporter)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    comm = _world()
    if report.failed and comm is not None and comm.Get_size() > 1:
        sys.stderr.write(f"\n[rank {comm.Get_rank()}] FAILED {item.nodeid} ({report.when}):\n{report.longreprtext}\n")
        sys.stderr.flush()
        from hpc_dsgd.__main__ import ABORT_GRACE_S

        time.sleep(ABORT_GRACE_S)  # let the launcher forward the report before it tears the job down
        comm.Abort(1)


@pytest.fixture
def comm():
    from mpi4py import MPI

    return MPI.COMM_WORLD


MPI_DIR = os.path.join(ROOT, "tests", "mpi")
MPI_RANKS = (2, 4)  # the README runs tests/mpi under `mpiexec -n 4`; 2 ranks also give every split they compare


def pytest_collection_modifyitems(session, config, items):
    """tests/mpi compares rank splits (4 x 1, 2 x 2, 1 x 4), resumes on another split and runs n = 4 replicas over
    the ranks: in one process, or on a rank count that does not divide 4, those tests could only skip, checking
    nothing. So they are not run at all there: the session stops before the first test with one line saying how."""
    if not any(str(item.path).startswith(MPI_DIR + os.sep) for item in items):
        return
    from mpi4py import MPI

    R = MPI.COMM_WORLD.Get_size()
    if R not in MPI_RANKS:
        pytest.exit(f"tests/mpi needs {' or '.join(map(str, MPI_RANKS))} MPI ranks, got {R}: run "
                    "`mpiexec -n 4 python -m mpi4py -m pytest -q tests/mpi`", returncode=4)

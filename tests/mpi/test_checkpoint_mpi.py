"""Claims about checkpoints written by several ranks (mpiexec -n 4 python -m mpi4py -m pytest; holds
for any rank count R, with N = lcm(4, R) replicas): a checkpoint written as ranks x k loads row for row on every
other split (4 x 1 <-> 2 x 2 <-> 1 x 4), the per-process RNG state only on the same layout; a
damaged rank file is named by verify and skipped by "auto" resume; a failure on one rank raises on
every rank (nobody hangs) and leaves the previous checkpoint intact; retention and leftovers."""
import math
import os

import pytest
import torch
from mpi4py import MPI

from hpc_dsgd.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint, verify_checkpoint
from hpc_dsgd.resume import resolve_resume
from hpc_dsgd.rngstate import restore_rank_state

N, D = math.lcm(4, MPI.COMM_WORLD.Get_size()), 29  # divisible by the world, its halves and by 1, 2, 4
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def world():
    return MPI.COMM_WORLD


def shared_tmp(comm, factory, name):
    return comm.bcast(str(factory.mktemp(name)) if comm.Get_rank() == 0 else None)


def row(i: int) -> torch.Tensor:
    return torch.arange(D, dtype=torch.float64) * (i + 1) + 0.5 * i


def block(comm) -> list[int]:
    k = N // comm.Get_size()
    return list(range(comm.Get_rank() * k, (comm.Get_rank() + 1) * k))


def save(comm, run_dir, it, kind="periodic", keep_last=3, replica_state=None):
    ids = block(comm)
    tensors = {"X": torch.stack([row(i) for i in ids]), "M": torch.stack([-row(i)[:3] for i in ids])}
    rs = replica_state if replica_state is not None else [{"i": i, "gen": torch.Generator().manual_seed(i).get_state()}
                                                        for i in ids]
    return save_checkpoint(comm, run_dir, it, kind, 1, tensors, ids, rs, {"ranks": comm.Get_size(), "it": it},
                           keep_last=keep_last)


def check_split(path, ranks, same_layout):
    """Load the checkpoint as `ranks` x N/ranks, every simulated rank's block."""
    k = N // ranks
    for r in range(ranks):
        ids = list(range(r * k, (r + 1) * k))
        _, t, rs, rank_state = load_checkpoint(path, ids)
        assert torch.equal(t["X"], torch.stack([row(i) for i in ids]))
        assert torch.equal(t["M"], torch.stack([-row(i)[:3] for i in ids]))
        assert [s["i"] for s in rs] == ids
        assert (rank_state is not None) == same_layout


def test_world_checkpoint_loads_on_every_split(world, tmp_path_factory):
    run_dir = shared_tmp(world, tmp_path_factory, "split")
    path = save(world, run_dir, 100)
    m = verify_checkpoint(path)
    assert (m["ranks"], m["n"], m["iteration"]) == (world.Get_size(), N, 100)
    assert sorted(m["files"]) == [f"rank{r:05d}.pt" for r in range(world.Get_size())]
    for ranks in (1, 2, 4):
        check_split(path, ranks, same_layout=ranks == world.Get_size())
    # the rank's own block, loaded as a sub-communicator of 2 (or fewer) ranks would hold it
    size = world.Get_size()
    sub = world.Split(world.Get_rank() // 2, world.Get_rank())
    k = N // sub.Get_size()
    ids = list(range(sub.Get_rank() * k, (sub.Get_rank() + 1) * k))
    _, t, _, rank_state = load_checkpoint(path, ids)
    assert torch.equal(t["X"], torch.stack([row(i) for i in ids]))
    assert (rank_state is not None) == (sub.Get_size() == size)
    sub.Free()


def test_sub_communicator_checkpoint_loads_on_world(world, tmp_path_factory):
    """Each half of the world writes its own checkpoint as 2 x 2 (or 1 x 4); the world reads it as 4 x 1."""
    tmp = shared_tmp(world, tmp_path_factory, "sub")
    color = world.Get_rank() // 2
    sub = world.Split(color, world.Get_rank())
    path = save(sub, os.path.join(tmp, f"half{color}"), 7, kind="phase")
    writers = sub.Get_size()
    sub.Free()
    world.Barrier()
    assert verify_checkpoint(path)["ranks"] == writers
    ids = block(world)
    _, t, rs, rank_state = load_checkpoint(path, ids)
    assert torch.equal(t["X"], torch.stack([row(i) for i in ids])) and [s["i"] for s in rs] == ids
    assert (rank_state is not None) == (world.Get_size() == writers)
    for ranks in (1, 2, 4):
        check_split(path, ranks, same_layout=ranks == writers)


def test_rank_state_restored_on_same_layout(world, tmp_path_factory):
    run_dir = shared_tmp(world, tmp_path_factory, "rng")
    torch.manual_seed(1000 + world.Get_rank())
    path = save(world, run_dir, 3)
    expected = torch.rand(5)
    torch.manual_seed(0)
    *_, rank_state = load_checkpoint(path, block(world))
    restore_rank_state(rank_state)
    assert torch.equal(torch.rand(5), expected)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_rank_file_is_named_and_auto_falls_back(world, tmp_path_factory, damage):
    run_dir = shared_tmp(world, tmp_path_factory, "damage")
    p10 = save(world, run_dir, 10)
    p20 = save(world, run_dir, 20)
    victim = f"rank{world.Get_size() - 1:05d}.pt"
    if world.Get_rank() == 0:
        f = os.path.join(p20, victim)
        with open(f, "r+b") as fh:
            if damage == "truncate":
                fh.truncate(os.path.getsize(f) // 2)
            else:
                fh.seek(os.path.getsize(f) // 3)
                b = fh.read(1)
                fh.seek(-1, os.SEEK_CUR)
                fh.write(bytes([b[0] ^ 0x01]))
    world.Barrier()
    with pytest.raises(CheckpointError, match="truncated" if damage == "truncate" else "sha256") as e:
        verify_checkpoint(p20)
    assert p20 in str(e.value) and victim in str(e.value)
    verify_checkpoint(p10)
    path, skipped = resolve_resume(run_dir, "auto")
    assert path == p10
    assert len(skipped) == 1 and skipped[0][0] == p20 and victim in skipped[0][1]
    world.Barrier()


def test_failure_on_one_rank_raises_everywhere(world, tmp_path_factory):
    run_dir = shared_tmp(world, tmp_path_factory, "fail")
    p1 = save(world, run_dir, 1)
    last = world.Get_size() - 1
    ids = block(world)
    bad = [{"f": (lambda: 0)} for _ in ids] if world.Get_rank() == last else None  # unpicklable on one rank
    with pytest.raises(CheckpointError, match=f"rank {last}") as e:
        save(world, run_dir, 2, replica_state=bad)
    assert "writing" in str(e.value)
    world.Barrier()
    assert list_checkpoints(run_dir) == [p1]
    assert resolve_resume(run_dir, "auto") == (p1, [])
    world.Barrier()


def test_leftover_tmp_ignored_and_retention(world, tmp_path_factory):
    run_dir = shared_tmp(world, tmp_path_factory, "keep")
    save(world, run_dir, 1, kind="phase")
    if world.Get_rank() == 0:
        os.makedirs(os.path.join(run_dir, "checkpoints", "ckpt-000000099.tmp"))
    world.Barrier()
    assert [os.path.basename(p) for p in list_checkpoints(run_dir)] == ["ckpt-000000001"]
    for it in (2, 3, 4, 5):
        save(world, run_dir, it, kind="periodic", keep_last=2)
    world.Barrier()
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == [
        "ckpt-000000001", "ckpt-000000004", "ckpt-000000005"]
    world.Barrier()

"""Claims about checkpoints on one process (COMM_SELF): a checkpoint of n replicas loads row for row
on any split; damage (truncation, a flipped byte, a missing or garbled manifest) is caught and the
message names the file; "auto" resume falls back to the newest intact checkpoint; leftovers of an
interrupted save are ignored and cleaned; retention keeps phase checkpoints and the newest K
periodic ones; a failed save leaves the previous checkpoints untouched; config differences are
listed key by key."""
import json
import os
import random

import numpy as np
import pytest
import torch
from mpi4py import MPI

from hpc_dsgd.checkpoint import (
    CheckpointError,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from hpc_dsgd.compat import BRANCH_MUST_MATCH, RESUME_MUST_MATCH_EXCEPT, check_compatible
from hpc_dsgd.config import Config
from hpc_dsgd.resume import resolve_resume
from hpc_dsgd.rngstate import capture_rank_state, restore_rank_state

N, D = 4, 37
SELF = MPI.COMM_SELF


def row(i: int) -> torch.Tensor:
    return torch.arange(D, dtype=torch.float32) + 1000.0 * i


def rstate(i: int) -> dict:
    g = torch.Generator().manual_seed(1000 + i)
    torch.rand(i + 1, generator=g)  # each replica's stream at a different position
    return {"gen": g.get_state(), "i": i}


def save(run_dir, it, kind="periodic", phase=1, ids=range(N), keep_last=3, meta=None, comm=SELF):
    ids = list(ids)
    tensors = {"X": torch.stack([row(i) for i in ids]), "M": -torch.stack([row(i)[:5] for i in ids])}
    meta = meta if meta is not None else {"config_json": Config(n=N).to_json(), "trace_rows": it + 1}
    return save_checkpoint(comm, str(run_dir), it, kind, phase, tensors, ids, [rstate(i) for i in ids], meta,
                           keep_last=keep_last)


def flip_byte(path, offset=None):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2 if offset is None else offset)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))


def test_roundtrip_on_every_split(tmp_path):
    path = save(tmp_path, 12, kind="phase", phase=2)
    assert path == checkpoint_path(str(tmp_path), 12) and path.endswith("checkpoints/ckpt-000000012")
    m = verify_checkpoint(path)
    assert (m["iteration"], m["kind"], m["phase"], m["n"], m["ranks"]) == (12, "phase", 2, N, 1)
    assert m["meta"]["trace_rows"] == 13 and json.loads(m["meta"]["config_json"])["n"] == N
    assert m["tensors"] == {"X": {"shape": [D], "dtype": "float32"}, "M": {"shape": [5], "dtype": "float32"}}
    assert m["files"]["rank00000.pt"]["size"] == os.path.getsize(os.path.join(path, "rank00000.pt"))
    for ranks in (1, 2, 4):  # load as ranks x (N / ranks)
        k = N // ranks
        for r in range(ranks):
            ids = list(range(r * k, (r + 1) * k))
            _, t, rs, rank_state = load_checkpoint(path, ids)
            assert torch.equal(t["X"], torch.stack([row(i) for i in ids]))
            assert torch.equal(t["M"], -torch.stack([row(i)[:5] for i in ids]))
            assert [s["i"] for s in rs] == ids
            for s, i in zip(rs, ids):  # each replica's augmentation stream continues where it was
                assert torch.equal(torch.rand(3, generator=_gen(s["gen"])), torch.rand(3, generator=_gen(rstate(i)["gen"])))
            assert (rank_state is not None) == (ranks == 1)  # RNG of the process only for the same layout


def _gen(state):
    g = torch.Generator()
    g.set_state(state)
    return g


def test_load_any_order_and_unknown_ids(tmp_path):
    path = save(tmp_path, 3)
    _, t, rs, rank_state = load_checkpoint(path, [3, 0])
    assert torch.equal(t["X"], torch.stack([row(3), row(0)])) and [s["i"] for s in rs] == [3, 0]
    assert rank_state is None
    with pytest.raises(CheckpointError, match=r"not \[4\]"):
        load_checkpoint(path, [0, 4])


def test_views_are_saved_compactly(tmp_path):
    big = torch.randn(N, 100_000)
    save_checkpoint(SELF, str(tmp_path), 0, "periodic", 1, {"P": big[:, :3]}, list(range(N)),
                    [{}] * N, {})
    path = checkpoint_path(str(tmp_path), 0)
    assert os.path.getsize(os.path.join(path, "rank00000.pt")) < 50_000  # not the 1.6 MB storage (~20 kB: rows, RNG states)
    _, t, _, _ = load_checkpoint(path, range(N))
    assert torch.equal(t["P"], big[:, :3])


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_rank_file_is_named(tmp_path, damage):
    path = save(tmp_path, 5)
    f = os.path.join(path, "rank00000.pt")
    if damage == "truncate":
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) - 10)
        reason = "truncated"
    elif damage == "flip":
        flip_byte(f)
        reason = "sha256"
    else:
        os.remove(f)
        reason = "missing"
    with pytest.raises(CheckpointError, match=reason) as e:
        verify_checkpoint(path)
    assert path in str(e.value) and "rank00000.pt" in str(e.value)
    with pytest.raises(CheckpointError, match="rank00000.pt"):
        load_checkpoint(path, [0])


@pytest.mark.parametrize("damage", ["missing", "garbled", "other_format"])
def test_bad_manifest_is_named(tmp_path, damage):
    path = save(tmp_path, 5)
    mf = os.path.join(path, "manifest.json")
    if damage == "missing":
        os.remove(mf)
    elif damage == "garbled":
        with open(mf, "r+b") as fh:
            fh.truncate(os.path.getsize(mf) // 2)
    else:
        m = json.load(open(mf))
        m["format"] = 99
        json.dump(m, open(mf, "w"))
    with pytest.raises(CheckpointError, match="manifest.json") as e:
        verify_checkpoint(path)
    assert path in str(e.value)


def test_auto_resume_falls_back_and_reports(tmp_path):
    assert resolve_resume(str(tmp_path), "auto") == (None, [])  # nothing yet: a fresh start
    p10 = save(tmp_path, 10)
    p20 = save(tmp_path, 20)
    assert list_checkpoints(str(tmp_path)) == [p20, p10]
    assert resolve_resume(str(tmp_path), "auto") == (p20, [])
    flip_byte(os.path.join(p20, "rank00000.pt"))
    path, skipped = resolve_resume(str(tmp_path), "auto")
    assert path == p10
    assert [p for p, _ in skipped] == [p20] and "rank00000.pt" in skipped[0][1]
    os.remove(os.path.join(p10, "manifest.json"))
    with pytest.raises(CheckpointError, match="none of its 2 checkpoint") as e:
        resolve_resume(str(tmp_path), "auto")
    assert p10 in str(e.value) and p20 in str(e.value)


def test_explicit_resume_path(tmp_path):
    p7 = save(tmp_path, 7)
    save(tmp_path, 8)
    assert resolve_resume(str(tmp_path), p7) == (p7, [])
    assert resolve_resume(str(tmp_path), "ckpt-000000007") == (p7, [])  # a name inside the run
    with pytest.raises(CheckpointError, match="no such directory"):
        resolve_resume(str(tmp_path), str(tmp_path / "nope"))
    flip_byte(os.path.join(p7, "rank00000.pt"))
    with pytest.raises(CheckpointError, match="rank00000.pt"):
        resolve_resume(str(tmp_path), p7)  # an explicit choice never falls back


def test_leftover_tmp_is_ignored_then_cleaned(tmp_path):
    p1 = save(tmp_path, 1)
    ckdir = os.path.dirname(p1)
    for leftover in ("ckpt-000000009.tmp", "ckpt-000000004.trash"):
        os.makedirs(os.path.join(ckdir, leftover))
        open(os.path.join(ckdir, leftover, "rank00000.pt"), "wb").write(b"half")
    assert list_checkpoints(str(tmp_path)) == [p1]
    assert resolve_resume(str(tmp_path), "auto") == (p1, [])
    p2 = save(tmp_path, 2)
    assert sorted(os.listdir(ckdir)) == ["ckpt-000000001", "ckpt-000000002"]
    verify_checkpoint(p1)
    verify_checkpoint(p2)


def test_retention_keeps_phase_and_last_k_periodic(tmp_path):
    kinds = {1: "periodic", 2: "periodic", 3: "phase", 4: "periodic", 5: "periodic", 6: "phase", 7: "periodic"}
    for it, kind in kinds.items():
        save(tmp_path, it, kind=kind, keep_last=2)
    names = sorted(os.listdir(os.path.join(tmp_path, "checkpoints")))
    assert names == ["ckpt-000000003", "ckpt-000000005", "ckpt-000000006", "ckpt-000000007"]
    save(tmp_path, 8, keep_last=0)  # 0 keeps every periodic one
    assert len(list_checkpoints(str(tmp_path))) == 5


def test_same_iteration_replaces(tmp_path):
    save(tmp_path, 4, meta={"v": 1})
    path = save(tmp_path, 4, kind="phase", meta={"v": 2})
    assert verify_checkpoint(path)["meta"] == {"v": 2} and verify_checkpoint(path)["kind"] == "phase"
    assert os.listdir(os.path.join(tmp_path, "checkpoints")) == ["ckpt-000000004"]


def test_failed_save_leaves_previous_intact(tmp_path):
    p1 = save(tmp_path, 1)
    with pytest.raises(CheckpointError, match="rank 0.*JSON"):
        save(tmp_path, 2, meta={"bad": object()})
    with pytest.raises(CheckpointError, match="replica_state|pickle|lambda"):
        save_checkpoint(SELF, str(tmp_path), 3, "periodic", 1, {"X": torch.zeros(1, 2)}, [0], [{"f": lambda: 0}], {})
    with pytest.raises(CheckpointError, match="shape"):
        save_checkpoint(SELF, str(tmp_path), 3, "periodic", 1, {"X": torch.zeros(2, 2)}, [0], [{}], {})
    with pytest.raises(CheckpointError, match="kind"):
        save(tmp_path, 3, kind="weekly")
    assert list_checkpoints(str(tmp_path)) == [p1]
    assert resolve_resume(str(tmp_path), "auto") == (p1, [])


def test_rank_state_roundtrip():
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    s = capture_rank_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rank_state(s)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_rank_state_restored_from_checkpoint(tmp_path):
    torch.manual_seed(11)
    path = save(tmp_path, 0)
    expected = torch.rand(4)
    torch.manual_seed(999)
    *_, rank_state = load_checkpoint(path, range(N))
    restore_rank_state(rank_state)
    assert torch.equal(torch.rand(4), expected)


def test_check_compatible_lists_exactly_the_differing_keys():
    saved = Config(n=16, seed=1, topology="ring", name="a", max_iterations=0)
    meta = {"config_json": saved.to_json(), "ranks": 4}
    same = Config(n=16, seed=1, topology="ring", name="b", out_dir="elsewhere", max_iterations=50,
                  trace_flush_seconds=5.0, device="cpu")
    assert check_compatible(meta, same.to_dict(), exclude=RESUME_MUST_MATCH_EXCEPT) == []
    other = Config(n=16, seed=2, topology="ring", name="a", base_lr=0.2, policies=["allreduce", "gossip", "gossip"])
    diffs = check_compatible(meta, other.to_dict(), exclude=RESUME_MUST_MATCH_EXCEPT)
    assert diffs == ["base_lr: checkpoint=0.1 config=0.2",
                     'policies: checkpoint=["gossip", "gossip", "gossip"] config=["allreduce", "gossip", "gossip"]',
                     "seed: checkpoint=1 config=2"]
    # a branch may change the policies, not the optimisation or the data
    assert check_compatible(meta, other.to_dict(), keys=BRANCH_MUST_MATCH) == ["seed: checkpoint=1 config=2",
                                                                                "base_lr: checkpoint=0.1 config=0.2"]
    # keys only one side knows are differences too; a config dict works as meta directly
    d = same.to_dict() | {"checkpoint_minutes": 30.0, "new_key": 1}
    assert check_compatible(saved.to_dict(), d, exclude=RESUME_MUST_MATCH_EXCEPT) == ["new_key: checkpoint=<absent> config=1"]
    # a checkpoint that predates a config key ran with that key's default: it matches the default only
    old = {k: v for k, v in saved.to_dict().items() if k not in ("optimizer", "vocab_size")}
    assert check_compatible(old, saved.to_dict(), exclude=RESUME_MUST_MATCH_EXCEPT) == []
    adam = Config(**{**saved.to_dict(), "optimizer": "adam"}).to_dict()
    assert check_compatible(old, adam, keys=BRANCH_MUST_MATCH) == ['optimizer: checkpoint=<absent> config="adam"']


def test_list_checkpoints_of_missing_run(tmp_path):
    assert list_checkpoints(str(tmp_path / "none")) == []


# -- plain data only (format 2) -------------------------------------------------------------------
def test_rank_files_are_plain_tensors_loadable_with_weights_only(tmp_path):
    """Every rank file is a flat dict of tensors that torch.load(weights_only=True) reads; the manifest
    lists each key with its shape and dtype; RNG states are uint8 tensors and integer lists."""
    path = save(tmp_path, 3)
    raw = torch.load(os.path.join(path, "rank00000.pt"), weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in raw.values())
    keys = verify_checkpoint(path)["files"]["rank00000.pt"]["keys"]
    assert {k: (v["shape"], v["dtype"]) for k, v in keys.items()} == {
        k: (list(t.shape), str(t.dtype).replace("torch.", "")) for k, t in raw.items()}
    doc = json.loads(bytes(raw["json"].numpy()).decode())
    assert len(doc["rank_state"]["numpy"]["key"]) == 624 and len(doc["rank_state"]["random"]["internal"]) == 625


def test_malicious_rank_file_never_runs(tmp_path):
    """A rank file holding a pickled call (checksums updated to match) is refused by verify and load,
    naming the file, and the call never runs."""
    from ckpt_tamper import RunsCommand, rewrite_rank_file

    path = save(tmp_path, 3)
    marker = tmp_path / "PWNED"
    rewrite_rank_file(path, "rank00000.pt", lambda d: dict(d, x=RunsCommand(f"touch {marker}")))
    for call in (lambda: verify_checkpoint(path), lambda: load_checkpoint(path, [0])):
        with pytest.raises(CheckpointError, match="rank00000.pt is not plain tensor data") as e:
            call()
        assert path in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("damage, reason", [
    (lambda d: {k: v for k, v in d.items() if k != "t.X"}, r"missing \['t.X'\]"),
    (lambda d: dict(d, **{"t.M": d["t.M"].double()}), "key 't.M' is float64"),
    (lambda d: dict(d, json=torch.frombuffer(bytearray(b'{"format": 2}'), dtype=torch.uint8)), "key 'json' is uint8"),
    (lambda d: [1, 2], "not a flat dict"),
])
def test_malformed_rank_file_is_a_checkpoint_error(tmp_path, damage, reason):
    """Keys, shapes and dtypes are checked against the manifest before use: never a KeyError."""
    from ckpt_tamper import rewrite_rank_file

    path = save(tmp_path, 3)
    rewrite_rank_file(path, "rank00000.pt", damage)
    with pytest.raises(CheckpointError, match=reason) as e:
        load_checkpoint(path, [0])
    assert "rank00000.pt" in str(e.value)


def test_format1_refused_then_upgraded_roundtrip(tmp_path):
    """A format-1 checkpoint is refused with the upgrade command; upgraded, it loads the same rows,
    replica states and process RNG state as before, and the original is kept aside."""
    from hpc_dsgd.checkpoint_v1 import upgrade_checkpoint

    from ckpt_tamper import to_format1

    torch.manual_seed(3)
    path = save(tmp_path, 6)
    _, t0, rs0, st0 = load_checkpoint(path, range(N))
    to_format1(path)
    with pytest.raises(CheckpointError, match=f"format 1.*checkpoint upgrade {path}"):
        verify_checkpoint(path)
    assert list_checkpoints(str(tmp_path)) == [path]  # still listed: refused when used, not hidden
    backup = upgrade_checkpoint(path)
    assert backup == path + ".format1" and os.path.isdir(backup) and list_checkpoints(str(tmp_path)) == [path]
    _, t1, rs1, st1 = load_checkpoint(path, range(N))
    assert all(torch.equal(t0[k], t1[k]) for k in t0)
    assert [s["i"] for s in rs1] == [s["i"] for s in rs0] and all(torch.equal(a["gen"], b["gen"]) for a, b in zip(rs0, rs1))
    restore_rank_state(st1)
    a = (torch.rand(2), np.random.rand(2), random.random())
    restore_rank_state(st0)
    assert torch.equal(a[0], torch.rand(2)) and np.array_equal(a[1], np.random.rand(2)) and a[2] == random.random()
    with pytest.raises(CheckpointError, match="format 2 already"):
        upgrade_checkpoint(path)


def test_format1_upgrade_refuses_a_pickled_call_without_running_it(tmp_path):
    """The upgrader reads format 1 with the restricted unpickler: a rank file holding a pickled call (checksums
    updated) is refused naming the file, the call never runs, and the original stays, still format 1."""
    from hpc_dsgd.checkpoint_v1 import upgrade_checkpoint

    from ckpt_tamper import RunsCommand, to_format1

    path = save(tmp_path, 3)
    marker = tmp_path / "PWNED"
    to_format1(path, extra={"x": RunsCommand(f"touch {marker}")})
    with pytest.raises(CheckpointError, match="rank00000.pt is not format-1 plain data") as e:
        upgrade_checkpoint(path)
    assert "nothing in it ran" in str(e.value) and not marker.exists()
    assert json.load(open(os.path.join(path, "manifest.json")))["format"] == 1
    assert not os.path.exists(path + ".format1") and not os.path.exists(path + ".upgrade.tmp")


def test_non_plain_state_is_refused_at_save(tmp_path):
    with pytest.raises(CheckpointError, match=r"replica_state\[0\]\['a'\]: ndarray is not plain data"):
        save_checkpoint(SELF, str(tmp_path), 1, "periodic", 1, {"X": torch.zeros(1, 2)}, [0], [{"a": np.zeros(2)}], {})
    assert list_checkpoints(str(tmp_path)) == []


BAD_LOOP = {"it": "abc", "gossip_s": -1, "ema_phase": 1.5, "phi_ema": "x", "stats": {"xi_max": 1.0}, "acc": [1, 2],
            "t_train": -1.0, "last": [1], "trace_pos": {"iter": -3}, "xi_max": {"one": 1.0},
            "trace_pending": {"bogus": {}}}


@pytest.mark.parametrize("key", sorted(BAD_LOOP))
def test_every_meta_loop_key_is_checked_by_its_one_owner(key):
    """meta.loop has one owner per key (LoopState or one observer, which names it in STATE_KEYS); a value of the
    wrong type or range is refused by observers.check_loop and by the owner's load_state_dict, naming the key."""
    import dataclasses

    from hpc_dsgd.observers import LOOP_KEYS, OBSERVERS, LoopState, check_loop

    owners = [o for o in OBSERVERS if key in o.STATE_KEYS] + ([LoopState] if key in {f.name for f in
                                                                                    dataclasses.fields(LoopState)} else [])
    assert set(BAD_LOOP) == set(LOOP_KEYS) and len(LOOP_KEYS) == len(set(LOOP_KEYS)) and len(owners) == 1
    with pytest.raises(ValueError, match=rf"^meta\.loop\.{key} must be "):
        check_loop({"loop": {key: BAD_LOOP[key]}}, 5)
    if owners[0] is not LoopState:  # the observer refuses it itself when it is given the state
        with pytest.raises(ValueError, match=rf"^meta\.loop\.{key} must be "):
            object.__new__(owners[0]).load_state_dict({key: BAD_LOOP[key]})


def test_meta_loop_checks_accept_a_real_run_state():
    from hpc_dsgd.observers import PhaseStats, check_loop

    good = {"it": 5, "gossip_s": 5, "ema_phase": 1, "phi_ema": float("nan"), "stats": PhaseStats().v,
            "acc": [1.0, 2.0, 3.0], "t_train": 0.5, "last": None, "trace_pos": {"iter": 5}, "xi_max": None,
            "trace_pending": None}
    assert set(PhaseStats.REQUIRED) <= set(PhaseStats.COLS)  # what every checkpoint has; newer columns default
    check_loop({"loop": good}, 5)
    check_loop({}, 5)  # no meta.loop: train refuses that itself, naming it
    with pytest.raises(ValueError, match="meta.loop must be an object"):
        check_loop({"loop": [1]}, 5)

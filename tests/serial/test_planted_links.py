"""Claim: no writer follows a link it did not create. A symbolic link planted (by another user of a shared
scratch file system) at any name a writer uses for its temporary file, or at the file it replaces, never has
its target written or created: checkpoint rank files and manifests, the run's config.toml, the ImageNet-32
cache (arrays, manifest, lock) and the tokenizer (trained, or copied on a branch). The trace is
tests/serial/test_fileio.py's.

The temporary names of the code before fileio were `PATH.part` (checkpoints), `PATH.tmp-HOST-PID-UUID8`
(ImageNet-32), `PATH.tmp-PID-UUID8` (tokenizer) and `PATH.tmp` (a branch's tokenizer); fileio's are
`.NAME.tmp-PID-HEX8`. `names` makes the random parts predictable (the first draw of each writer), so every
one of those names can be planted before the writer runs.
"""
from __future__ import annotations

import os
import secrets
import socket
import uuid

import pytest
import torch

from hpc_dsgd import checkpoint as ck
from hpc_dsgd.__main__ import main
from hpc_dsgd.data import imagenet32 as inet
from hpc_dsgd.data.multi30k import SubwordTokenizer, copy_tokenizer
from hpc_dsgd.rundir import RunDir

from conftest import QUICK
from test_imagenet32 import fabricate

FIXED = "deadbeef"


@pytest.fixture
def names(monkeypatch):
    """Every writer's first random name part is FIXED (then random again, so a writer that skips a planted
    name finds a free one)."""
    draws = iter(range(1 << 30))
    monkeypatch.setattr(secrets, "token_hex", lambda n=None, _t=secrets.token_hex: FIXED if next(draws) % 2 == 0
                        else _t(n))
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(FIXED + "0" * 24))


def plant(path, outside) -> list:
    """Links at every temporary name a writer of `path` used or uses, and at `path` itself when absent, each to
    its own file outside (holding 'victim') or to a name outside that does not exist yet."""
    d, base = os.path.split(str(path))
    pid, host = os.getpid(), socket.gethostname()
    tmps = [f"{path}.part", f"{path}.tmp", f"{path}.tmp-{host}-{pid}-{FIXED}", f"{path}.tmp-{pid}-{FIXED}",
            os.path.join(d, f".{base}.tmp-{pid}-{FIXED}")] + ([] if os.path.lexists(path) else [str(path)])
    out = []
    for i, t in enumerate(tmps):
        victim = outside / f"{base}-{i}"
        if i % 2 == 0:
            victim.write_text("victim")
        os.symlink(victim, t)
        out.append(victim)
    return out


def untouched(victims) -> bool:
    return all(v.read_text() == "victim" if i % 2 == 0 else not os.path.lexists(v) for i, v in enumerate(victims))


@pytest.fixture
def outside(tmp_path):
    d = tmp_path / "outside"
    d.mkdir()
    return d


def test_checkpoint_rank_file_and_manifest(tmp_path, outside, names):
    d = tmp_path / "ckpt-000000001.tmp"
    d.mkdir()
    payload = ck.rank_payload(1, [0], {"X": torch.arange(3.0)[None]}, [{}], {"torch": torch.get_rng_state()})
    victims = plant(d / "rank00000.pt", outside) + plant(d / ck.MANIFEST, outside)
    entry = ck.write_rank_file(str(d / "rank00000.pt"), payload)
    from hpc_dsgd.fileio import atomic_write_bytes  # the manifest's writer (checkpoint.save_checkpoint)

    atomic_write_bytes(str(d / ck.MANIFEST), b"{}")
    assert untouched(victims)
    assert not os.path.islink(d / "rank00000.pt") and os.path.getsize(d / "rank00000.pt") == entry["size"]
    assert (d / ck.MANIFEST).read_bytes() == b"{}"


def test_run_config_toml(tmp_path, outside, names, capsys):
    run = RunDir(str(tmp_path / "out" / "quickstart"))
    os.makedirs(run.path)
    victims = plant(run.config, outside)
    assert main(["train", QUICK, "--set", f"out_dir={tmp_path / 'out'}", "--set", "width=0.25", "--set", "n=2",
                 "--set", "batch_size=8", "--set", "max_iterations=1", "--set", "checkpoint_minutes=0"]) == 0
    assert untouched(victims)
    assert not os.path.islink(run.config) and "width = 0.25" in open(run.config).read()


def test_imagenet32_cache(tmp_path, outside, names, monkeypatch):
    monkeypatch.delenv(inet.CACHE_ENV, raising=False)
    root = tmp_path / "imagenet32"
    fabricate(root)
    cdir = inet.cache_dir(str(root))
    os.makedirs(cdir)
    victims = [v for a in inet.ARRAYS for v in plant(os.path.join(cdir, f"{a}.npy"), outside)]
    victims += plant(os.path.join(cdir, inet.CACHE_MANIFEST), outside)
    cdir_, man = inet.prepare_imagenet32(str(root))
    assert untouched(victims) and man["arrays"]["val_y"]["shape"] == [6]
    assert inet.cache_status(str(root))[1] is not None  # built, current, read back


def test_imagenet32_lock_link_is_refused(tmp_path, outside, monkeypatch):
    monkeypatch.delenv(inet.CACHE_ENV, raising=False)
    root = tmp_path / "imagenet32"
    fabricate(root)
    cdir = inet.cache_dir(str(root))
    os.makedirs(cdir)
    os.symlink(outside / "created", os.path.join(cdir, ".lock"))
    with pytest.raises(inet.DataError, match="cannot write the ImageNet-32 cache"):
        inet.prepare_imagenet32(str(root))
    assert os.listdir(outside) == []


def test_tokenizer_save_and_branch_copy(tmp_path, outside, names):
    from tokenizers import Tokenizer, models

    from hpc_dsgd.data.bpe import BOS, EOS, PAD

    tok = SubwordTokenizer(Tokenizer(models.BPE(vocab={PAD: 0, BOS: 1, EOS: 2, "a": 3}, merges=[])))
    run = RunDir(str(tmp_path / "parent"))
    os.makedirs(run.path)
    victims = plant(run.tokenizer, outside)
    tok.save(run.tokenizer)
    assert untouched(victims) and SubwordTokenizer.load(run.tokenizer).vocab_size == 4
    child = RunDir(str(tmp_path / "child"))
    os.makedirs(child.path)
    victims = plant(child.tokenizer, outside)
    copy_tokenizer(run.tokenizer, child.tokenizer)
    assert untouched(victims) and open(child.tokenizer).read() == open(run.tokenizer).read()

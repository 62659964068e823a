"""Test helpers that damage checkpoints the way an accident or an attacker would (tests only).

to_format1 writes a checkpoint exactly as hpc_dsgd's format 1 did (pickled rank files with numpy
and Python RNG tuples), optionally with an extra object in the pickle; rewrite_rank_file replaces
a rank file and updates the manifest's sha256 and size to match, as an attacker who can write the
directory would."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch

from hpc_dsgd import checkpoint as ck


class RunsCommand:
    """Unpickling this calls os.system(cmd): what a malicious checkpoint carries."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def _sha(path: str) -> tuple[str, int]:
    data = open(path, "rb").read()
    return hashlib.sha256(data).hexdigest(), len(data)


def _manifest(path: str) -> dict:
    with open(os.path.join(path, ck.MANIFEST)) as f:
        return json.load(f)


def _write_manifest(path: str, m: dict) -> None:
    with open(os.path.join(path, ck.MANIFEST), "w") as f:
        json.dump(m, f, indent=1, sort_keys=True)


def to_format1(path: str, extra: dict | None = None) -> None:
    """Rewrite the format-2 checkpoint at path in format 1, as the old save_checkpoint wrote it:
    torch.save({"format": 1, "iteration", "replica_ids", "tensors", "replica_state", "rank_state"})
    with rank_state["numpy"] = np.random.get_state() tuple and rank_state["random"] = random.getstate()."""
    m = _manifest(path)
    files = {}
    for fname, entry in m["files"].items():
        raw, doc, _ = ck.read_rank_file(path, fname, entry)
        rs = doc["rank_state"]
        n, r = rs["numpy"], rs["random"]
        rank_state = {"torch": rs["torch"],
                      "numpy": (n["algorithm"], np.array(n["key"], dtype=np.uint32), n["pos"], n["has_gauss"],
                                n["cached_gaussian"]),
                      "random": (r["version"], tuple(r["internal"]), r["gauss_next"])}
        payload = {"format": 1, "iteration": doc["iteration"], "replica_ids": doc["replica_ids"],
                   "tensors": {k[2:]: v.clone() for k, v in raw.items() if k.startswith("t.")},
                   "replica_state": doc["replica_state"], "rank_state": rank_state, **(extra or {})}
        fpath = os.path.join(path, fname)
        torch.save(payload, fpath)
        sha, size = _sha(fpath)
        files[fname] = {"sha256": sha, "size": size, "replica_ids": entry["replica_ids"]}
    m.update(format=1, files=files)
    _write_manifest(path, m)


def rewrite_rank_file(path: str, fname: str, mutate) -> None:
    """payload = mutate(dict of the file's tensors) is saved in place of the rank file (any object:
    torch.save pickles it); the manifest's sha256 and size are updated to match, its key list not."""
    fpath = os.path.join(path, fname)
    raw = dict(torch.load(fpath, weights_only=True))
    torch.save(mutate({k: v.clone() for k, v in raw.items()}), fpath)
    m = _manifest(path)
    m["files"][fname]["sha256"], m["files"][fname]["size"] = _sha(fpath)
    _write_manifest(path, m)


def edit_manifest(path: str, edit) -> None:
    m = _manifest(path)
    edit(m)
    _write_manifest(path, m)


def _set_entry(path: str, fname: str, m: dict) -> None:
    """The manifest entry of fname: sha256 and size of whatever the name now reaches (a symlink's target)."""
    fpath = os.path.join(path, fname)
    if os.path.isfile(fpath):
        m["files"][fname]["sha256"], m["files"][fname]["size"] = _sha(fpath)
    else:  # a device or FIFO: what an empty file would claim
        m["files"][fname]["sha256"], m["files"][fname]["size"] = hashlib.sha256(b"").hexdigest(), 0


def replace_with_symlink(path: str, fname: str, target: str) -> None:
    """fname becomes a symlink to target (/dev/zero, a file outside); the manifest agrees with the target."""
    fpath = os.path.join(path, fname)
    os.remove(fpath)
    os.symlink(target, fpath)
    edit_manifest(path, lambda m: _set_entry(path, fname, m))


def replace_with_fifo(path: str, fname: str) -> None:
    fpath = os.path.join(path, fname)
    os.remove(fpath)
    os.mkfifo(fpath)


def stride0_rank_files(path: str, width: int) -> None:
    """Every rank file's t.X becomes a stride-0 view of one float of shape (k, width), a few kB on disk
    however large width is; the manifest (tensors, keys, sha256, size) is rewritten to agree."""
    m = _manifest(path)
    for fname, e in m["files"].items():
        fpath = os.path.join(path, fname)
        raw = {k: v.clone() for k, v in torch.load(fpath, weights_only=True).items()}
        k = raw["t.X"].shape[0]
        raw["t.X"] = torch.zeros(1).as_strided((k, width), (0, 0))
        torch.save(raw, fpath)
        e["keys"]["t.X"]["shape"] = [k, width]
        e["sha256"], e["size"] = _sha(fpath)
    m["tensors"]["X"]["shape"] = [width]
    _write_manifest(path, m)


def rename_rank_file(path: str, fname: str, new: str) -> None:
    """Move fname to the manifest name `new` (resolved against path, wherever it leads), as an attacker
    who names a file outside the checkpoint would; the content and checksum stay the rank file's."""
    dst = os.path.normpath(os.path.join(path, new))
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.replace(os.path.join(path, fname), dst)
    edit_manifest(path, lambda m: m["files"].update({new: m["files"].pop(fname)}))

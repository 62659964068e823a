"""The fault suite: what hpc_dsgd promises for every bad input and every fault, one case per row.

Bad inputs (the CASES table; config values, data directories, reference traces, checkpoints, launch
and run directory) promise the same four things. One case of each kind runs as a real `mpiexec -n 2`
job (ranks=2; a single process where the case is about one); the others run the same command line
in the test process (python -m hpc_dsgd's main(), a world of one rank), which keeps the suite within
minutes on 2 cores:
  1. exit code 2, on every rank, before any work starts;
  2. exactly one line `hpc_dsgd: error: ...` on stderr, and no Python traceback;
  3. that line names the offending value or file (the case's needles) and what would be right;
  4. nothing already written is lost or changed: every file under the case's directory has the same
     sha256 afterwards, and no file was added.
The malicious checkpoints also promise that the command in the pickle did NOT run (its marker file
does not exist afterwards).

Faults during a run (the tests after the table) each state their promise in their docstring: kill -9
of one rank and of all ranks mid-iteration and mid-checkpoint, SIGTERM, a full disk during a
checkpoint write and during a trace write (injected, and a real full tmpfs where the suite runs as
root), the fsync order of trace and checkpoint, two runs on one run directory, stale locks, and a converted format-1 checkpoint
resuming bitwise like the original. kill -9 of the whole job during a checkpoint is a step of the kill -9
test; SIGUSR1 (the requeue signal) and SIGTERM are one test with the signal as its parameter."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable

import h5py
import numpy as np
import pytest
import torch

from hpc_dsgd.checkpoint import list_checkpoints, verify_checkpoint
from hpc_dsgd.preflight import LAUNCHER_SIZE_VARS
from hpc_dsgd.runlock import LOCK_NAME, LOCK_STALE_S, LOCKED_EXIT_CODE, RunLock, RunLockError
from hpc_dsgd.signals import REQUEUE_EXIT_CODE
from hpc_dsgd.trace import read_trace

from ckpt_tamper import (
    RunsCommand,
    edit_manifest,
    rename_rank_file,
    replace_with_fifo,
    replace_with_symlink,
    rewrite_rank_file,
    stride0_rank_files,
    to_format1,
)
from conftest import MPIEXEC, QUICK, ROOT, launcher_free_env
from multi30k_corpus import fabricate as fabricate_multi30k

RANKS = 2  # every multi-rank promise holds for 2 ranks; 2 keeps the suite inside its time on 2 cores
IPE = 1437 // (8 * 16)  # quickstart: 8 replicas x batch 16 -> 11 iterations per epoch
BASE_ITS = 5  # the base run stops here, before its first epoch end, with checkpoint ckpt-000000005
pytestmark = pytest.mark.timeout(300)


def cli(args: list[str], ranks: int = RANKS, env: dict | None = None, timeout: float = 180,
        popen: bool = False):
    cmd = ([MPIEXEC, "-n", str(ranks)] if ranks else []) + [sys.executable, "-m", "hpc_dsgd", *args]
    if popen:  # its own process group: a kill -9 of the job spares pytest
        return subprocess.Popen(cmd, cwd=ROOT, env=launcher_free_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    return subprocess.run(cmd, cwd=ROOT, env=launcher_free_env(env), capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)  # an injected kill of the job's process group spares pytest


def train_args(out, *extra) -> list[str]:
    return ["train", QUICK, "--set", f"out_dir={out}", "--set", "width=0.25", "--set", "max_iterations=7", *extra]


def snapshot(root) -> dict[str, str]:
    """relative path -> sha256 of every file under root (directories as 'dir', symlinks as their
    target, FIFOs and devices as their kind: never opened, a case may plant them)."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = ("-> " + os.readlink(p) if stat.S_ISLNK(st.st_mode) else "dir" if
                                             stat.S_ISDIR(st.st_mode) else hashlib.sha256(open(p, "rb").read()).hexdigest()
                                             if stat.S_ISREG(st.st_mode) else f"mode {st.st_mode:o}")
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A short real run to damage: 2 ranks x 4 replicas, stopped by max_iterations at iteration 5
    (before its first epoch end), one checkpoint ckpt-000000005 with two rank files."""
    out = tmp_path_factory.mktemp("base")
    p = cli(["train", QUICK, "--set", f"out_dir={out}", "--set", "width=0.25", "--set", f"max_iterations={BASE_ITS}"])
    assert p.returncode == 0, p.stderr
    run = out / "quickstart"
    assert [os.path.basename(c) for c in list_checkpoints(str(run))] == [f"ckpt-{BASE_ITS:09d}"]
    return run, p.stdout


def ckpt_of(run) -> str:
    return str(run / "checkpoints" / f"ckpt-{BASE_ITS:09d}")


# -- the table ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    id: str
    promise: str  # what the case shows, beyond the four promises of every row
    setup: Callable  # (tmp, base_run) -> (args, env, needles); may create files under tmp
    ranks: int | None = None  # mpiexec -n ranks; 0: one process without mpiexec; None: in the test process
    marker: bool = False  # a malicious case: tmp/PWNED must not exist afterwards


def cfg_case(id, promise, sets, needles, ranks=None):
    extra = [a for s in sets for a in ("--set", s)]
    return Case(id, promise, lambda tmp, run: (train_args(tmp / "out", *extra), {}, needles), ranks)


def with_run(tmp, run) -> str:
    """A copy of the base run under tmp/out/quickstart; its checkpoint's path."""
    dst = tmp / "out" / "quickstart"
    shutil.copytree(run, dst)
    return ckpt_of(dst)


def ckpt_case(id, promise, damage, needles, resume="auto", sets=(), marker=False, ranks=None):
    def setup(tmp, run):
        ck = with_run(tmp, run)
        damage(ck, tmp)
        spec = ck if resume == "path" else resume.format(tmp=tmp)
        args = train_args(tmp / "out", *[a for s in sets for a in ("--set", s)], "--resume", spec)
        return args, {}, [n.format(ck=ck, tmp=tmp) for n in needles]
    return Case(id, promise, setup, ranks, marker=marker)


def ckpt_cmd_case(id, promise, damage, needles, action="verify", target="{ck}", ranks=None, extra=()):
    """`python -m hpc_dsgd checkpoint ACTION TARGET` on a damaged copy of the base run's checkpoint
    (target "{run}": the run directory, "{ck}": the checkpoint); "sharpness": that command on it."""
    def setup(tmp, run):
        ck = with_run(tmp, run)
        damage(ck, tmp)
        t = target.format(ck=ck, run=tmp / "out" / "quickstart", tmp=tmp)
        args = ["sharpness", t, "--samples", "8", *extra] if action == "sharpness" else ["checkpoint", action, t]
        return args, {}, [n.format(ck=ck, tmp=tmp) for n in needles]
    return Case(id, promise, setup, ranks)


def deep_json(path, depth):
    with open(path, "w") as f:
        f.write('{"format": 2, "files": ' + "[" * depth + "]" * depth + "}")


def fifo_manifest_copy(tmp, run) -> str:
    ck = with_run(tmp, run)
    replace_with_fifo(ck, "manifest.json")
    return ck


def set_loop(key, value):
    return lambda m: m["meta"]["loop"].update({key: value})


MULTI30K = os.path.join(ROOT, "configs", "multi30k_transformer.toml")
TINY_TRANSFORMER = ["name=m30k", "n=4", "vocab_size=300", "d_model=32", "heads=2", "layers=1", "d_ff=64", "batch_size=4",
                    "checkpoint_minutes=0", "local_eval_samples=4", "warmup_steps=4"]


def multi30k_args(out, data_dir, *sets) -> list[str]:
    return ["train", MULTI30K, "--set", f"out_dir={out}", "--set", f"data_dir={data_dir}",
            *[a for s in (*TINY_TRANSFORMER, *sets) for a in ("--set", s)]]


def multi30k_case(id, promise, damage, sets, needles, ranks=None):
    """train on a fabricated Multi30k (48 training pairs) that damage(root) may change."""
    def setup(tmp, run):
        root = tmp / "multi30k"
        fabricate_multi30k(root)
        damage(root)
        return multi30k_args(tmp / "out", root, *sets), {}, [n.format(root=root) for n in needles]
    return Case(id, promise, setup, ranks)


def multi30k_only_train_en(tmp, run) -> list[str]:
    (tmp / "m30k").mkdir()
    (tmp / "m30k" / "train.en").write_text("A dog runs.\n", encoding="utf-8")
    return ["train", MULTI30K, "--set", f"out_dir={tmp / 'runs'}", "--set", f"data_dir={tmp / 'm30k'}", "--set", "n=4"]


def long_line(root):
    lines = (root / "train.de").read_text(encoding="utf-8").splitlines()
    lines[6] = "Wort" * 250_000  # one 1 MB "word"
    (root / "train.de").write_text("\n".join(lines) + "\n", encoding="utf-8")


def imagenet32_case(id, promise, damage, sets, needles, env=None, cached=False, ranks=None):
    """train (the quickstart at ImageNet-32) on a fabricated ImageNet-32 (40 training images, test_imagenet32's
    files) that damage(root, tmp) may change; cached: its cache built first (so the case adds no file)."""
    def setup(tmp, run):
        from hpc_dsgd.data.imagenet32 import prepare_imagenet32

        from test_imagenet32 import fabricate as fabricate_imagenet32

        root = tmp / "imagenet32"
        fabricate_imagenet32(root)
        if cached:
            prepare_imagenet32(str(root))
        damage(root, tmp)
        args = train_args(tmp / "out", "--set", "dataset=imagenet32", "--set", f"data_dir={root}",
                          *[a for s in sets for a in ("--set", s)])
        return args, {k: v.format(tmp=tmp) for k, v in (env or {}).items()}, [n.format(root=root, tmp=tmp) for n in needles]
    return Case(id, promise, setup, ranks)


class _NdarrayCall:
    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return (np.ndarray, self.args)


def zero_stride_batch(root, tmp):
    """A 200-byte batch whose 'data' is numpy.ndarray((200000, 3072), uint8, b'x', 0, (0, 0)): a zero-stride
    view of one byte, which passed the restricted unpickler and wrote a 616 MB cache."""
    import pickle

    blob = pickle.dumps({"data": _NdarrayCall((200_000, 3072), np.dtype("u1"), b"x", 0, (0, 0)), "labels": [1]}, 2)
    assert len(blob) < 300
    (root / "Imagenet32_train" / "train_data_batch_2").write_bytes(blob)


def truncate(path, by=100):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - by)


def flip(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))


def malicious(tmp) -> RunsCommand:
    return RunsCommand(f"touch {tmp / 'PWNED'}")


def fake_cifar(tmp, files=True) -> str:
    root = tmp / "cifar"
    (root / "cifar-10-batches-py").mkdir(parents=True)
    if files:
        for f in ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch", "batches.meta"]:
            (root / "cifar-10-batches-py" / f).write_bytes(b"not the official file")
    return str(root)


def file_case(id, promise, make, sets, needles, ranks=None):
    """make(tmp) -> a path put into the config as sets.format(path=...)."""
    def setup(tmp, run):
        path = make(tmp)
        extra = [a for s in sets for a in ("--set", s.format(path=path))]
        return train_args(tmp / "out", *extra), {}, [n.format(path=path) for n in needles]
    return Case(id, promise, setup, ranks)


def raw_case(id, promise, args_of, needles, ranks=None, env=None):
    def setup(tmp, run):
        path = args_of(tmp, run)
        return path, dict(env or {}), [n.format(tmp=tmp) for n in needles]
    return Case(id, promise, setup, ranks)


def other_experiment_trace(tmp, run):
    return str(run / "trace.h5")


def fabricated_reference(tmp, xi_max=0.5, **changes) -> str:
    """A finished trace of the quickstart experiment (every phase measured, Xi_max = xi_max), with `changes` to its
    config."""
    from hpc_dsgd.config import load_config
    from hpc_dsgd.trace import TraceWriter

    cfg = {**load_config(QUICK, ["width=0.25"]).to_dict(), **changes}
    path = str(tmp / "ref" / "trace.h5")
    w = TraceWriter(path, {"config_json": json.dumps(cfg)})
    for k in (1, 2, 3):
        w.append("phase", phase=k, first_it=0, last_it=0, complete=1, xi_max=xi_max)
    w.flush()
    w.set_attrs(status="finished")
    return path


def ref_case(id, promise, policies, changes, needles):
    return file_case(id, promise, lambda tmp: fabricated_reference(tmp, **changes),
                     [f"policies={json.dumps(policies)}", "reference_trace={path}"], ["{path}", *needles])


def lock_held_by_me(tmp, run):
    d = tmp / "out" / "quickstart"
    d.mkdir(parents=True)
    (d / LOCK_NAME).write_text(f'{{"host": "{socket.gethostname()}", "pid": {os.getpid()}, '
                               f'"slurm_job_id": "", "started": "2026-01-01T00:00:00"}}')
    return train_args(tmp / "out", "--resume", "auto")


def a_file(tmp):
    (tmp / "f").write_text("x")
    return str(tmp / "f")


def not_hdf5(tmp):
    p = tmp / "junk.h5"
    p.write_bytes(b"this is not HDF5\n" * 10)
    return str(p)


def config_file(text: bytes, name="c.toml", base=None):
    """A config file under tmp (written as bytes: encodings are part of the case) -> train args."""
    def args_of(tmp, run):
        (tmp / name).write_bytes(text)
        return ["train", str(tmp / name), "--set", f"out_dir={tmp / 'out'}"]
    return args_of


def trace_of(ck) -> str:
    return os.path.join(os.path.dirname(os.path.dirname(ck)), "trace.h5")


def shorten_trace(ck, tmp, rows=3):
    from hpc_dsgd.trace import TraceWriter

    TraceWriter(trace_of(ck), {}, mode="a").truncate("iter", rows)


def malformed_reference(kind):
    """A copy of the base run's trace with one defect, as a reference trace (file_case's make(tmp) needs the run:
    the base run's trace is found through the fixture-made copy in tmp/ref.h5 by the setup below)."""
    def setup(tmp, run):
        import h5py

        p = tmp / "ref.h5"
        shutil.copy(run / "trace.h5", p)
        with h5py.File(p, "a") as f:
            if kind == "no-config":
                del f.attrs["config_json"]
            elif kind == "config-list":
                f.attrs["config_json"] = "[1, 2]"
            elif kind == "2d-column":
                del f["iter/loss"]
                f["iter/loss"] = np.zeros((5, 3))
            else:
                del f["iter/loss"]
                f["iter/loss"] = h5py.ExternalLink(str(tmp / "gone.h5"), "/x")
        args = train_args(tmp / "out", "--set", 'policies=["target","gossip","gossip"]', "--set", f"reference_trace={p}")
        needle = {"no-config": "config_json", "config-list": "config_json must be a JSON object",
                  "2d-column": "/iter/loss must be a 1-D", "dangling": "/iter/loss is a link"}[kind]
        return args, {}, [str(p), needle]
    return setup


def bad_toml(tmp):
    p = tmp / "bad.toml"
    p.write_text("n = [1,\n")
    return ["train", str(p), "--set", f"out_dir={tmp / 'out'}"]


CASES = [
    # config values
    cfg_case("n-not-multiple-of-ranks", "n must split over the ranks", ["n=7"], ["n=7 replicas cannot be split over 2 MPI ranks"],
             ranks=RANKS),
    cfg_case("negative-lr", "a learning rate must be positive", ["base_lr=-0.1"], ["base_lr=-0.1", "positive"]),
    cfg_case("unknown-key", "a typo in a key is not ignored", ["bogus_key=1"], ["unknown config key(s) bogus_key"]),
    cfg_case("wrong-type", "a string where a number belongs", ['epochs="ten"'], ["epochs='ten': expected float"]),
    cfg_case("policy-count", "one policy per phase", ['policies=["gossip"]'], ["policies=['gossip']", "one policy per phase"]),
    cfg_case("unknown-policy", "policies are from a fixed list", ['policies=["gossip","sometimes","gossip"]'],
             ["policies[1]='sometimes'", "allreduce"]),
    cfg_case("torus-shape", "a torus must have n nodes", ["topology=torus", "torus_shape=[3,3]"],
             ["torus_shape=[3, 3] does not fit n=8", "[2, 4]"]),
    cfg_case("device-cuda-without-gpu", "device=cuda on a node without a GPU (was a RuntimeError traceback)",
             ["device=cuda"], ["device='cuda'", "no CUDA device", "'auto' or 'cpu'"], ranks=RANKS),
    cfg_case("batch-larger-than-data", "batch_size x n above the training set (was a ValueError after the start)",
             ["batch_size=200"], ["batch_size=200 x n=8 = 1600 exceeds the 1437", "batch_size <= 179"]),
    cfg_case("set-without-equals", "--set needs key=value", ["n"], ["--set 'n': expected key=value"]),
    cfg_case("torch-threads", "at least one thread", ["torch_threads=0"], ["torch_threads=0"]),
    cfg_case("decay-order", "decays in increasing order", ["decay_fractions=[0.75,0.5]"], ["decay_fractions=[0.75, 0.5]"]),
    cfg_case("warmup-too-long", "warm-up shorter than training", ["warmup_epochs=30"], ["warmup_epochs=30.0", "epochs=20.0"]),
    cfg_case("momentum", "momentum below 1", ["momentum=1.5"], ["momentum=1.5"]),
    cfg_case("target-without-reference", "a target needs a reference run", ['policies=["target","gossip","gossip"]'],
             ["phase 1 has no reference", "reference_trace"]),
    cfg_case("bad-name", "a run name is one path component", ["name=a/b"], ["name='a/b'"]),
    cfg_case("name-dotdot", "'..' would write into out_dir's parent", ["name=.."], ["name='..'", "one directory name"]),
    cfg_case("name-leading-dash", "a name read as an option", ["name=-rf"], ["name='-rf'", "leading '-'"]),
    cfg_case("name-nul", "a NUL in a name (named by key)", ['name="a\\u0000b"'], ["name='a\\x00b'", "NUL"]),
    cfg_case("unknown-key-suggests", "a typo gets the closest key, not a list of all", ["topolgy=ring"],
             ["topolgy (did you mean topology?)"]),
    cfg_case("epochs-inf", "non-finite values are refused, not run to NaN", ["epochs=inf"], ["epochs=inf", "finite"]),
    cfg_case("base-lr-inf", "an infinite learning rate", ["base_lr=inf"], ["base_lr=inf", "finite"]),
    cfg_case("weight-decay-inf", "an infinite weight decay", ["weight_decay=inf"], ["weight_decay=inf", "finite"]),
    cfg_case("momentum-nan", "NaN compares false with every bound", ["momentum=nan"], ["momentum=nan", "finite"]),
    cfg_case("seed-negative", "seeds are >= 0", ["seed=-5"], ["seed=-5", "0 <= seed"]),
    cfg_case("torus-prime-n", "a torus needs n = a*b with a, b >= 2 (n=7 is prime)", ["topology=torus", "n=7"],
             ["torus", "n=7 has no such factorisation", "topology 'ring'"]),
    cfg_case("lr-schedule-without-decays", "inverse_sqrt has no decays, so the default decay_fractions are refused",
             ["lr_schedule=inverse_sqrt"], ["lr_schedule inverse_sqrt has no decays", "decay_fractions = []"]),
    cfg_case("model-of-another-dataset", "the transformer is Multi30k's model, not the digits'", ["model=transformer"],
             ["model='transformer'", "transformer is the multi30k model"]),
    cfg_case("optimizer-unknown", "optimizers are from a fixed list", ["optimizer=adagrad"],
             ["optimizer='adagrad': choose one of sgd, adam"]),
    raw_case("config-base-self-dot", "a base that is the file itself through ./ (normalised before the loop check)",
             config_file(b'base = "./c.toml"\nn = 8\n'), ["{tmp}/c.toml", "base='./c.toml' loops back"]),
    raw_case("config-base-not-string", "base = 5", config_file(b"base = 5\n"), ["{tmp}/c.toml", "base=5"]),
    raw_case("config-not-utf8", "a config file in Latin-1 is named", config_file(b'name = "caf\xe9"\n'),
             ["{tmp}/c.toml", "not UTF-8"]),
    raw_case("config-file-key-named", "a bad value read from a file names the file and the key",
             config_file(b'epochs = inf\n'), ["{tmp}/c.toml", "epochs=inf"]),
    file_case("out-dir-file-in-the-way", "a file where out_dir's parent directory should be", a_file,
              ["out_dir={path}/runs"], ["out_dir='{path}/runs'", "{path} is a file, in the way"]),
    raw_case("config-file-missing", "the config file must exist",
             lambda tmp, run: ["train", str(tmp / "none.toml")], ["{tmp}/none.toml", "does not exist"]),
    raw_case("config-not-toml", "the config file must be TOML", lambda tmp, run: bad_toml(tmp),
             ["{tmp}/bad.toml", "not valid TOML"]),
    file_case("out-dir-is-a-file", "out_dir must be a directory", a_file,
              ["out_dir={path}"], ["out_dir='{path}' exists and is not a directory"]),
    # data directories
    file_case("cifar-dir-missing", "the data directory must exist, and the message says how to fill it",
              lambda tmp: str(tmp / "nope"), ["dataset=cifar10", "data_dir={path}"], ["{path} does not exist", "download=True"]),
    file_case("cifar-dir-empty", "every CIFAR-10 file must be there", lambda tmp: fake_cifar(tmp, files=False),
              ["dataset=cifar10", "data_dir={path}"], ["incomplete: missing data_batch_1"]),
    file_case("cifar-file-corrupt", "CIFAR-10 files pass their MD5 before any work", fake_cifar,
              ["dataset=cifar10", "data_dir={path}"], ["{path}/cifar-10-batches-py/data_batch_1 fails its MD5"], ranks=RANKS),
    # reference traces
    file_case("reference-missing", "the reference trace must exist", lambda tmp: str(tmp / "ref.h5"),
              ['policies=["target","gossip","gossip"]', "reference_trace={path}"], ["{path}", "does not exist"]),
    file_case("reference-not-hdf5", "the reference trace must be HDF5", not_hdf5,
              ['policies=["target","gossip","gossip"]', "reference_trace={path}"], ["{path}", "not a readable HDF5"],
              ranks=RANKS),
    Case("reference-other-experiment", "the reference run must be the same experiment",
         lambda tmp, run: (train_args(tmp / "out", "--set", 'policies=["target","gossip","gossip"]', "--set",
                                      f"reference_trace={run / 'trace.h5'}", "--set", "topology=complete"), {},
                           [f"{run / 'trace.h5'}", "different experiment", "topology"])),
    ref_case("reference-allreduce-in-target-phase", "Xi_max of a phase comes from plain gossip in that phase",
             ["allreduce", "target", "allreduce"], {"policies": ["allreduce", "allreduce", "allreduce"]},
             ["ran policy 'allreduce' in phase 2", "uncontrolled dec-phase-2 run"]),
    ref_case("reference-controlled-in-target-phase", "a controlled run is no reference for that phase",
             ["target", "allreduce", "allreduce"], {"policies": ["target", "allreduce", "allreduce"]},
             ["ran policy 'target' in phase 1"]),
    ref_case("reference-other-n-and-schedule", "the reference has the same n and schedule",
             ["target", "allreduce", "allreduce"], {"n": 16, "decay_fractions": [0.3, 0.6]},
             ["different experiment", "n: reference=16 this run=8", "decay_fractions"]),
    ref_case("reference-other-base-lr", "a reference of another learning rate is another experiment (was accepted, "
             "its Xi_max used)", ["target", "allreduce", "allreduce"], {"base_lr": 0.2},
             ["different experiment", "base_lr: reference=0.2 this run=0.1"]),
    ref_case("reference-other-momentum", "... and one of another momentum (was accepted)",
             ["target", "allreduce", "allreduce"], {"momentum": 0.5}, ["different experiment", "momentum: reference=0.5 this run=0.9"]),
    ref_case("reference-other-seed", "... and one of another seed: the dec-phase-k reference of the same seed",
             ["target", "allreduce", "allreduce"], {"seed": 3}, ["different experiment", "seed: reference=3 this run=0"]),
    ref_case("reference-xi-max-nan", "a NaN Xi_max read from the reference is named, not used (was: 'no Xi_max')",
             ["target", "allreduce", "allreduce"], {"xi_max": float("nan")}, ["/phase/xi_max of phase 1 is nan", "finite"]),
    ref_case("reference-xi-max-negative", "a negative Xi_max read from the reference is named (was used as the target)",
             ["target", "allreduce", "allreduce"], {"xi_max": -0.5}, ["/phase/xi_max of phase 1 is -0.5", ">= 0"]),
    Case("reference-without-xi-max", "the reference run must have measured the phase's Xi_max",
         lambda tmp, run: (train_args(tmp / "out", "--set", 'policies=["target","gossip","gossip"]', "--set",
                                      f"reference_trace={run / 'trace.h5'}"), {},
                           [f"{run / 'trace.h5'}", "no per-phase xi_max"])),
    Case("reference-no-config", "a reference trace without config_json", malformed_reference("no-config")),
    Case("reference-config-list", "config_json that is a JSON list", malformed_reference("config-list")),
    Case("reference-2d-column", "a 2-D column", malformed_reference("2d-column"), ranks=RANKS),
    Case("reference-dangling-link", "an external link to a missing file", malformed_reference("dangling")),
    # checkpoints
    ckpt_case("ckpt-truncated", "a truncated rank file is named",
              lambda ck, tmp: truncate(os.path.join(ck, "rank00001.pt")), ["{ck}", "rank00001.pt", "truncated"]),
    ckpt_case("ckpt-wrong-checksum", "a changed byte fails the checksum",
              lambda ck, tmp: flip(os.path.join(ck, "rank00001.pt")), ["{ck}", "rank00001.pt", "sha256"]),
    ckpt_case("ckpt-file-missing", "a missing rank file is named",
              lambda ck, tmp: os.remove(os.path.join(ck, "rank00001.pt")), ["{ck}", "rank00001.pt", "missing"]),
    ckpt_case("ckpt-manifest-missing", "a checkpoint without its manifest is not one",
              lambda ck, tmp: os.remove(os.path.join(ck, "manifest.json")), ["{ck}", "manifest.json is missing"]),
    ckpt_case("ckpt-malicious-format1", "a pickle that runs a command (old format, checksums updated) is refused "
              "before it is opened, with the command that converts it",
              lambda ck, tmp: to_format1(ck, extra={"x": malicious(tmp)}), ["{ck}", "format 1", "checkpoint upgrade"],
              resume="path", marker=True),
    ckpt_case("ckpt-malicious-claims-format2", "a pickle that runs a command in a rank file of the current format "
              "(checksums updated) is refused without running it",
              lambda ck, tmp: rewrite_rank_file(ck, "rank00001.pt", lambda d: dict(d, x=malicious(tmp))),
              ["{ck}", "rank00001.pt", "not plain tensor data", "refused without running it"], resume="path", marker=True,
              ranks=RANKS),
    ckpt_case("ckpt-missing-key", "a rank file without a key the manifest lists (was a KeyError)",
              lambda ck, tmp: rewrite_rank_file(ck, "rank00001.pt", lambda d: {k: v for k, v in d.items() if k != "t.M"}),
              ["{ck}", "rank00001.pt", "missing ['t.M']"]),
    ckpt_case("ckpt-wrong-shape", "a tensor of another shape than the manifest says",
              lambda ck, tmp: rewrite_rank_file(ck, "rank00001.pt", lambda d: dict(d, **{"t.X": d["t.X"][:, :100].clone()})),
              ["{ck}", "rank00001.pt", "key 't.X' is float32 [4, 100]"]),
    ckpt_case("ckpt-format1", "a benign checkpoint of the old pickle format: refused with the upgrade command",
              lambda ck, tmp: to_format1(ck), ["{ck}", "format 1", "python -m hpc_dsgd checkpoint upgrade {ck}"]),
    ckpt_case("ckpt-manifest-malformed", "a manifest whose replica ids do not cover n",
              lambda ck, tmp: edit_manifest(ck, lambda m: m.update(n=9)), ["{ck}", "manifest.json is malformed"]),
    ckpt_case("ckpt-manifest-loop-state", "a manifest without the loop state a resume needs (was a KeyError)",
              lambda ck, tmp: edit_manifest(ck, lambda m: m["meta"].pop("loop")), ["{ck}", "meta.loop"], resume="path"),
    ckpt_case("ckpt-other-n", "resuming with another number of replicas", lambda ck, tmp: None,
              ["cannot resume from {ck}", "n: checkpoint=8 config=16"], sets=["n=16"]),
    ckpt_case("ckpt-other-topology", "resuming on another topology", lambda ck, tmp: None,
              ["cannot resume from {ck}", 'topology: checkpoint="ring" config="complete"'], sets=["topology=complete"]),
    ckpt_case("trace-shorter-than-checkpoint", "a trace truncated to before its checkpoint's position: refused, "
              "never resumed with a gap", shorten_trace,
              ["cannot resume from {ck}", "/iter: 3 rows, the checkpoint records 5", "gap"], ranks=RANKS),
    ckpt_case("trace-unreadable", "a damaged trace with an intact checkpoint: one line, no OSError traceback",
              lambda ck, tmp: truncate(trace_of(ck), by=os.path.getsize(trace_of(ck)) // 2),
              ["cannot resume from {ck}", "not a readable HDF5 file"]),
    ckpt_case("trace-missing", "a checkpoint whose trace is gone", lambda ck, tmp: os.remove(trace_of(ck)),
              ["cannot resume from {ck}", "does not exist"]),
    ckpt_case("resume-path-missing", "an explicit checkpoint that is not there", lambda ck, tmp: None,
              ["{tmp}/nope", "no such directory"], resume="{tmp}/nope"),
    # checkpoint files that could escape, hang or exhaust (every reader: verify, upgrade, resume, branch, sharpness)
    ckpt_case("ckpt-rank-file-symlink-dev-zero", "a rank file symlinked to /dev/zero (manifest says 0 bytes) was read "
              "forever: refused unread", lambda ck, tmp: replace_with_symlink(ck, "rank00001.pt", "/dev/zero"),
              ["{ck}", "rank00001.pt is a symlink, not a regular file"]),
    ckpt_cmd_case("ckpt-rank-file-symlink-out", "a rank file symlinked to a file outside the checkpoint (checksum "
                  "matching) is refused", lambda ck, tmp: (shutil.copy(os.path.join(ck, "rank00000.pt"), tmp / "x.pt"),
                                                           replace_with_symlink(ck, "rank00000.pt", str(tmp / "x.pt"))),
                  ["{ck}", "rank00000.pt is a symlink"], target="{run}"),
    ckpt_case("ckpt-rank-file-fifo", "a rank file that is a FIFO never blocks a reader",
              lambda ck, tmp: replace_with_fifo(ck, "rank00001.pt"), ["{ck}", "rank00001.pt is a FIFO"], resume="path"),
    ckpt_case("ckpt-manifest-fifo", "a manifest.json that is a FIFO made --resume auto hang",
              lambda ck, tmp: replace_with_fifo(ck, "manifest.json"), ["{ck}", "manifest.json is a FIFO"], ranks=RANKS),
    ckpt_cmd_case("ckpt-manifest-fifo-verify", "... and checkpoint verify",
                  lambda ck, tmp: replace_with_fifo(ck, "manifest.json"), ["{ck}", "manifest.json is a FIFO"], ranks=0),
    ckpt_cmd_case("ckpt-manifest-fifo-sharpness", "... and the sharpness command",
                  lambda ck, tmp: replace_with_fifo(ck, "manifest.json"), ["{ck}", "manifest.json is a FIFO"],
                  action="sharpness"),
    ckpt_cmd_case("sharpness-cuda-without-gpu", "sharpness --device cuda on a node without a GPU (was a traceback)",
                  lambda ck, tmp: None, ["--device cuda", "no CUDA device", "--device cpu"], action="sharpness",
                  extra=("--device", "cuda")),
    ckpt_cmd_case("ckpt-rank-file-directory", "a rank file that is a directory",
                  lambda ck, tmp: (os.remove(os.path.join(ck, "rank00000.pt")), os.mkdir(os.path.join(ck, "rank00000.pt"))),
                  ["{ck}", "rank00000.pt is a directory"]),
    ckpt_cmd_case("ckpt-manifest-deep", "a manifest nested 200,000 deep (was a RecursionError)",
                  lambda ck, tmp: deep_json(os.path.join(ck, "manifest.json"), 200_000), ["{ck}", "nested 200001 levels deep"]),
    ckpt_case("ckpt-manifest-huge-n", "a manifest n of 1e12 (was a MemoryError)",
              lambda ck, tmp: edit_manifest(ck, lambda m: m.update(n=10 ** 12)), ["{ck}", "n 1000000000000", "1..1048576"]),
    ckpt_cmd_case("ckpt-stride0-huge", "rank files holding a stride-0 X of shape [4, 1e11] (a few kB; passed verify, "
                  "resume tried to allocate 3.2 TB), manifest rewritten to agree: sizes checked against the run's model",
                  lambda ck, tmp: stride0_rank_files(ck, 10 ** 11),
                  ["{ck}", "tensors.X has 100000000000 numbers per replica", "resnet20", "17926"], target="{run}"),
    ckpt_cmd_case("ckpt-stride0-no-config", "the same with the model's size matching and no config to check: the "
                  "tensor's strides and storage are checked before any use",
                  lambda ck, tmp: (stride0_rank_files(ck, 17926), edit_manifest(ck, lambda m: m["meta"].pop("config_json"))),
                  ["{ck}", "rank00000.pt", "key 't.X' is not a contiguous tensor", "strides [0, 0]"]),
    ckpt_case("ckpt-loop-it-string", "meta.loop.it of the wrong type (was a traceback)",
              lambda ck, tmp: edit_manifest(ck, set_loop("it", "abc")), ["{ck}", "meta.loop.it", "iteration 5", '"abc"'],
              resume="path"),
    ckpt_case("ckpt-loop-acc", "meta.loop.acc not 3 finite numbers",
              lambda ck, tmp: edit_manifest(ck, set_loop("acc", [1, 2])), ["{ck}", "meta.loop.acc", "3 finite numbers"]),
    ckpt_case("ckpt-loop-trace-pos", "meta.loop.trace_pos with a negative row count",
              lambda ck, tmp: edit_manifest(ck, set_loop("trace_pos", {"iter": -3})), ["{ck}", "meta.loop.trace_pos"]),
    ckpt_case("ckpt-config-json-not-json", "meta.config_json that is not JSON",
              lambda ck, tmp: edit_manifest(ck, lambda m: m["meta"].update(config_json="{n = 8")),
              ["{ck}", "meta.config_json is not JSON"], resume="path"),
    ckpt_cmd_case("ckpt-config-json-list", "meta.config_json a JSON list",
                  lambda ck, tmp: edit_manifest(ck, lambda m: m["meta"].update(config_json="[1, 2]")),
                  ["{ck}", "meta.config_json must be a JSON object", "not list"]),
    ckpt_case("ckpt-config-json-other-n", "meta.config_json's n disagreeing with the manifest's",
              lambda ck, tmp: edit_manifest(ck, lambda m: m["meta"].update(config_json=m["meta"]["config_json"].replace(
                  '"n": 8', '"n": 16'))), ["{ck}", "meta.config_json's n must be the manifest's n=8, not 16"]),
    ckpt_cmd_case("ckpt-upgrade-escape", "checkpoint upgrade of a manifest naming ../../../outside/victim.pt wrote "
                  "outside the checkpoint and left .upgrade.tmp behind: refused, nothing written",
                  lambda ck, tmp: (to_format1(ck), rename_rank_file(ck, "rank00001.pt", "../../../outside/victim.pt")),
                  ["{ck}", "file name '../../../outside/victim.pt'"], action="upgrade"),
    ckpt_cmd_case("ckpt-upgrade-escape-run-dir", "... also when upgrading a whole run directory",
                  lambda ck, tmp: (to_format1(ck), rename_rank_file(ck, "rank00001.pt", "../../../outside/victim.pt")),
                  ["{ck}", "file name '../../../outside/victim.pt'"], action="upgrade", target="{run}"),
    ckpt_cmd_case("ckpt-upgrade-plain-file", "checkpoint upgrade of a plain file (was a traceback)",
                  lambda ck, tmp: None, ["{ck}/rank00000.pt is not a directory"], action="upgrade", target="{ck}/rank00000.pt"),
    ckpt_cmd_case("ckpt-verify-missing", "checkpoint verify of a path that is not there",
                  lambda ck, tmp: None, ["{tmp}/nope does not exist"], target="{tmp}/nope"),
    Case("branch-from-fifo-manifest", "a branch from a checkpoint whose manifest is a FIFO", lambda tmp, run: (
        train_args(tmp / "out", "--set", "name=branch", "--set", f"branch_from={fifo_manifest_copy(tmp, run)}"), {},
        ["manifest.json is a FIFO"])),
    Case("branch-from-periodic", "a branch starts only from a phase checkpoint",
         lambda tmp, run: (train_args(tmp / "out", "--set", "name=branch", "--set", f"branch_from={ckpt_of(run)}"), {},
                           [ckpt_of(run), "branch from a phase checkpoint"])),
    Case("fresh-start-over-a-run", "a fresh start never overwrites an existing run",
         lambda tmp, run: (with_run(tmp, run) and train_args(tmp / "out"), {}, ["already holds a run", "--resume auto"])),
    # data files that could exhaust the job or stall its preparation
    imagenet32_case("imagenet32-zero-stride-pickle", "a 200-byte ImageNet-32 batch holding a zero-stride (200000, "
                    "3072) view (wrote a 616 MB cache): refused, nothing written", zero_stride_batch, [],
                    ["{root}/Imagenet32_train/train_data_batch_2", "numpy.ndarray(...) is not admitted"], ranks=RANKS),
    imagenet32_case("imagenet32-batch-larger-than-data", "batch_size x n above the ImageNet-32 training set (was a "
                    "traceback after the start)", lambda root, tmp: None, [],
                    ["batch_size=16 x n=8 = 128 exceeds the 40 training images of imagenet32", "batch_size <= 5"],
                    cached=True),
    imagenet32_case("imagenet32-cache-env-a-file", "HPC_DSGD_CACHE naming a file (was a traceback)",
                    lambda root, tmp: (tmp / "afile").write_text("x"), [],
                    ["HPC_DSGD_CACHE='{tmp}/afile' is not a directory"], env={"HPC_DSGD_CACHE": "{tmp}/afile"}),
    multi30k_case("multi30k-long-line", "one 1 MB line (stalled the tokenizer's training for hours): refused "
                  "with file and line", long_line, [], ["{root}/train.de, line 7: 1000000 characters"], ranks=RANKS),
    raw_case("multi30k-files-missing", "the paper's Multi30k recipe on a data directory holding only train.en: the "
             "five missing files named, with their layout and where to get them", multi30k_only_train_en,
             ["missing train.de, val.en, val.de, test_2016_flickr.en, test_2016_flickr.de", "plain or .gz",
              "data/task1/raw", "github.com/multi30k/dataset"]),
    multi30k_case("multi30k-batch-larger-than-data", "batch_size x n above the Multi30k training set (was a "
                  "traceback after the start)", lambda root: None, ["batch_size=16"],
                  ["batch_size=16 x n=4 = 64 exceeds the 48 training sentence pairs of multi30k", "batch_size <= 12"]),
    # launch and run directory
    raw_case("launch-slurm-singleton", "srun started 4 tasks but MPI formed worlds of 1 (plugin mismatch)",
             lambda tmp, run: train_args(tmp / "out"), ["SLURM_NTASKS=4", "srun --mpi=pmi2", "srun --mpi=list"],
             ranks=0, env={"SLURM_NTASKS": "4"}),
    raw_case("launch-openmpi-singleton", "the same for Open MPI's variable under a 1-process mpiexec",
             lambda tmp, run: train_args(tmp / "out"), ["OMPI_COMM_WORLD_SIZE=2", "world of 1"],
             ranks=1, env={"OMPI_COMM_WORLD_SIZE": "2"}),
    raw_case("run-dir-locked", "a run directory in use by a live process is refused, naming host and pid",
             lock_held_by_me, ["in use by another run", f"host {socket.gethostname()}", f"pid {os.getpid()}", LOCK_NAME],
             ranks=RANKS),
]


def in_process(args, env, monkeypatch, capsys) -> tuple[int, str]:
    """python -m hpc_dsgd ARGS inside the test process (one rank, COMM_WORLD of 1): (exit code, stderr)."""
    from hpc_dsgd.__main__ import main

    for var in LAUNCHER_SIZE_VARS:
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    rc = main(args)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.id + ("" if c.ranks is None else "-process" if c.ranks == 0
                                                     else f"-mpiexec{c.ranks}") for c in CASES])
def test_bad_input(case, base, tmp_path, monkeypatch, capsys):
    if case.id in ("device-cuda-without-gpu", "sharpness-cuda-without-gpu") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: device=cuda is valid here")
    run, _ = base
    args, env, needles = case.setup(tmp_path, run)
    before = snapshot(tmp_path)
    if case.ranks is None:
        rc, stderr = in_process(args, env, monkeypatch, capsys)
    else:
        p = cli(args, ranks=case.ranks, env=env)
        rc, stderr = p.returncode, p.stderr
    errors = [line for line in stderr.splitlines() if line.startswith("hpc_dsgd: error")]
    want_rc = LOCKED_EXIT_CODE if case.id == "run-dir-locked" else 2  # a directory in use has its own code
    assert rc == want_rc, f"{case.promise}: rc {rc}\n{stderr}"
    assert len(errors) == 1, stderr  # one message, not one per rank
    assert "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    assert snapshot(tmp_path) == before  # nothing written, nothing lost or changed
    if case.marker:
        assert not (tmp_path / "PWNED").exists(), "the command inside the checkpoint ran"
        for f in sorted((tmp_path / "out" / "quickstart" / "checkpoints").glob("*/rank*.pt")):
            try:  # the refused checkpoint is really malicious: a plain (unsafe) load runs its command
                torch.load(f, weights_only=False)
            except Exception:  # any: the payload ran while unpickling; what it returned may not load
                pass
        assert (tmp_path / "PWNED").exists(), "the case's checkpoint carries no live payload"


def test_out_dir_on_a_read_only_file_system(tmp_path, monkeypatch, capsys):
    """out_dir on a read-only file system (a read-only tmpfs; needs root): one line naming out_dir and the
    reason in words, exit 2, nothing written; not a raw errno, not a claim about another path."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        rc, err = in_process(train_args(ro / "runs"), {}, monkeypatch, capsys)
        errors = [line for line in err.splitlines() if line.startswith("hpc_dsgd: error")]
        assert rc == 2 and len(errors) == 1 and "Traceback" not in err, err
        assert f"out_dir='{ro}/runs'" in errors[0] and "read-only file system" in errors[0] and "Errno" not in errors[0]
        assert os.listdir(ro) == []
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_config_files_that_would_hang_or_recurse(tmp_path, monkeypatch, capsys):
    """A config file that is a FIFO (reading it would wait forever), and a base chain 40 files deep (was a
    RecursionError at about 1000): exit 2 within seconds, one line naming the file. (Not table rows: the
    table's snapshot reads every file, a FIFO included.)"""
    os.mkfifo(tmp_path / "fifo.toml")
    for i in range(40):
        (tmp_path / f"c{i}.toml").write_text(f'base = "c{i + 1}.toml"\n')
    (tmp_path / "c40.toml").write_text("n = 8\n")
    for cfg, needle in (("fifo.toml", "is not a regular file"), ("c0.toml", "a base chain of more than")):
        t0 = time.monotonic()
        rc, err = in_process(["train", str(tmp_path / cfg), "--set", f"out_dir={tmp_path / 'out'}"], {}, monkeypatch, capsys)
        errors = [line for line in err.splitlines() if line.startswith("hpc_dsgd: error")]
        assert rc == 2 and len(errors) == 1 and needle in errors[0] and str(tmp_path) in errors[0], err
        assert time.monotonic() - t0 < 30 and not (tmp_path / "out").exists()


def test_topology_command_errors_are_one_prefixed_line(capsys):
    """`python -m hpc_dsgd topology torus --n 7` is refused like every other command: exit 2, one line."""
    from hpc_dsgd.__main__ import main

    assert main(["topology", "torus", "--n", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hpc_dsgd: error: ") and "n=7" in err[0], err


def test_stop_before_first_epoch_end_prints_a_progress_line(base):
    """A run stopped by max_iterations before its first epoch end still prints a final progress line, over the
    run's epoch count (20), naming the iteration its checkpoint is named by; then a closing line with the
    checkpoint, the trace and the wall time."""
    _, out = base
    last = out.strip().splitlines()[-1]
    stop = out.strip().splitlines()[-2]
    assert stop.startswith(f"epoch {BASE_ITS / IPE:6.2f}/20 ") and f"stopped at iteration {BASE_ITS} of" in stop
    assert "loss" in stop and re.search(r" lr \d\.\d{3}e[+-]\d\d loss ", stop), stop  # lr in a fixed width
    assert last.startswith(f"hpc_dsgd: stopped at iteration {BASE_ITS} of 220, checkpoint ") and \
        last.endswith("s") and f"ckpt-{BASE_ITS:09d}; trace " in last and "wall time" in last


# -- faults during a run --------------------------------------------------------------------------
SHORT = ["--set", "epochs=2", "--set", "warmup_epochs=0.5", "--set", "trace_flush_seconds=0", "--set",
         "checkpoint_minutes=0", "--resume", "auto"]  # 22 iterations; phase checkpoints at 11, 17 and 22


def short_train(out, extra=(), env=None, popen=False):
    return cli(["train", QUICK, "--set", f"out_dir={out}", "--set", "width=0.25", *SHORT, *extra], env=env, popen=popen)


def trace_rows(path) -> int:
    try:
        return len(read_trace(str(path)).iter.get("it", []))
    except Exception:  # any: not there yet, or being written
        return 0


def rank_pids(marker: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if cmd and os.path.basename(cmd[0].decode()).startswith("python") and marker.encode() in b" ".join(cmd):
                pids.append(int(pid))
    return sorted(pids)


def wait_rows(p, trace, rows, limit=120):
    deadline = time.monotonic() + limit
    while trace_rows(trace) < rows:
        assert p.poll() is None, p.communicate()[1]
        assert time.monotonic() < deadline, "the run did not get there"
        time.sleep(0.2)


def resume_finishes(out) -> None:
    """--resume auto completes the run: every iteration in the trace exactly once."""
    p = short_train(out)
    assert p.returncode == 0, p.stderr
    tr = read_trace(str(out / "quickstart" / "trace.h5"))
    np.testing.assert_array_equal(tr.iter["it"], np.arange(2 * IPE))
    assert tr.attrs["status"] == "finished"


@pytest.mark.timeout(600)  # seven short jobs: 274 s on a loaded 2-core machine, near the module's 300 s
def test_kill_9_mid_iteration_and_mid_checkpoint_then_resume(tmp_path):
    """One run, four faults, each followed by `--resume auto`:
    1. kill -9 of ONE rank mid-iteration: the job ends non-zero within seconds (no hang);
    2. kill -9 of one rank while the ranks write the phase-2 checkpoint: the half-written checkpoint
       is never taken for one (only ckpt-...tmp is left) and the previous one is unchanged;
       then kill -9 of the WHOLE job during that checkpoint (after the rank files, before the manifest):
       the same, and the trace still opens with plain h5py and holds every iteration flushed before the
       checkpoint began (status "running");
    3. kill -9 of ALL ranks mid-iteration (the process group, as a node failure does);
    after each, --resume auto starts from the newest intact checkpoint, and the final trace holds
    every iteration exactly once. (Steps 2 are skipped on the rare run where step 1's kill lands after
    iteration 17.)"""
    run = tmp_path / "quickstart"
    ckdir, trace = run / "checkpoints", run / "trace.h5"
    p = short_train(tmp_path, popen=True)  # 1.
    wait_rows(p, trace, IPE + 1)
    pids = rank_pids(str(tmp_path))
    assert len(pids) == RANKS
    t0 = time.monotonic()
    os.kill(pids[-1], signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode != 0 and time.monotonic() - t0 < 30
    first = [os.path.basename(c) for c in list_checkpoints(str(run))]
    assert first[-1] == f"ckpt-{IPE:09d}"
    phase2 = 17  # phase-2 end of 22 iterations (decay at 3/4)
    if first == [f"ckpt-{IPE:09d}"]:  # 2. (unless the kill came after iteration 17)
        before = snapshot(ckdir / f"ckpt-{IPE:09d}")
        p = short_train(tmp_path, env={"HPC_DSGD_INJECT_FAULT": f"rank=1,it={phase2},at=checkpoint_write,kind=kill_self"})
        assert p.returncode != 0
        assert f"resume from {ckdir}/ckpt-{IPE:09d}" in p.stdout
        assert (ckdir / f"ckpt-{phase2:09d}.tmp").is_dir()
        assert [os.path.basename(c) for c in list_checkpoints(str(run))] == [f"ckpt-{IPE:09d}"]
        assert snapshot(ckdir / f"ckpt-{IPE:09d}") == before
        shutil.rmtree(ckdir / f"ckpt-{phase2:09d}.tmp")  # so that the next one is seen to be left by the next kill
        p = short_train(tmp_path, env={"HPC_DSGD_INJECT_FAULT": f"rank=0,it={phase2},at=checkpoint,kind=kill"})
        assert p.returncode != 0
        assert f"resume from {ckdir}/ckpt-{IPE:09d}" in p.stdout
        assert (ckdir / f"ckpt-{phase2:09d}.tmp").is_dir()  # the killed, incomplete one
        assert [os.path.basename(c) for c in list_checkpoints(str(run))] == [f"ckpt-{IPE:09d}"]
        assert snapshot(ckdir / f"ckpt-{IPE:09d}") == before
        with h5py.File(trace, "r") as f:  # readable after kill -9 of the job, every flushed iteration there
            assert f.attrs["status"] == "running"
            np.testing.assert_array_equal(f["iter/it"][()], np.arange(phase2))  # flushed right before the checkpoint
    p = short_train(tmp_path, env={"HPC_DSGD_INJECT_FAULT": f"rank=0,it={phase2 + 2},kind=kill"})  # 3.
    assert p.returncode != 0
    assert [os.path.basename(c) for c in list_checkpoints(str(run))][0] == f"ckpt-{phase2:09d}"
    verify_checkpoint(str(ckdir / f"ckpt-{phase2:09d}"))
    p = short_train(tmp_path)
    assert p.returncode == 0, p.stderr
    assert f"resume from {ckdir}/ckpt-{phase2:09d}" in p.stdout
    tr = read_trace(str(trace))
    np.testing.assert_array_equal(tr.iter["it"], np.arange(2 * IPE))
    assert tr.attrs["status"] == "finished"


def test_full_disk_during_checkpoint_keeps_the_previous_one(tmp_path):
    """A full disk (ENOSPC, injected into rank 1's write) during a checkpoint: every rank stops with
    one `hpc_dsgd: error:` line naming the checkpoint and the cause, exit 1, no traceback; the
    previous checkpoint is byte for byte unchanged and verifies, and --resume auto finishes from it."""
    second = 17
    p = short_train(tmp_path, env={"HPC_DSGD_INJECT_FAULT": f"rank=1,it={second},at=checkpoint_write,kind=enospc"})
    errors = [line for line in p.stderr.splitlines() if line.startswith("hpc_dsgd: error")]
    assert p.returncode == 1, p.stderr
    assert len(errors) == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"ckpt-{second:09d}" in errors[0] and "No space left on device" in errors[0] and "rank 1" in errors[0]
    run = tmp_path / "quickstart"
    prev = run / "checkpoints" / f"ckpt-{IPE:09d}"
    assert [os.path.basename(c) for c in list_checkpoints(str(run))] == [f"ckpt-{IPE:09d}"]
    before = snapshot(prev)
    verify_checkpoint(str(prev))
    resume_finishes(tmp_path)
    assert snapshot(prev) == before  # a phase checkpoint: kept, unchanged


def error_lines(p) -> list[str]:
    return [line for line in p.stderr.splitlines() if line.startswith("hpc_dsgd: error")]


def test_full_disk_during_trace_write_keeps_rows_checkpoints_and_resumes(tmp_path):
    """ENOSPC in the middle of the trace flush that would hold 8 iteration rows (injected): the run stops at the
    next iteration with a checkpoint that keeps the 2 rows the trace could not take, exit 1 and one error line
    naming the trace, the file system and the bytes needed; trace.h5 holds rows 0-6 and reads. --resume auto
    writes the kept rows and finishes: the trace equals an uninterrupted run's (every column, bitwise). A
    further --resume auto on the finished run says so and changes nothing (the trace's bytes included)."""
    run = tmp_path / "a" / "quickstart"
    p = short_train(tmp_path / "a", env={"HPC_DSGD_INJECT_FAULT": "rank=0,it=8,at=trace_write,kind=enospc"})
    errors = error_lines(p)
    assert p.returncode == 1 and len(errors) == 1 and "Traceback" not in p.stderr, p.stderr
    for needle in (str(run / "trace.h5"), "file system mounted at", "bytes", "ckpt-000000009", "--resume auto"):
        assert needle in errors[0], (needle, errors[0])
    np.testing.assert_array_equal(read_trace(str(run / "trace.h5")).iter["it"], np.arange(7))
    verify_checkpoint(str(run / "checkpoints" / "ckpt-000000009"))
    resume_finishes(tmp_path / "a")
    ref = short_train(tmp_path / "b")
    assert ref.returncode == 0, ref.stderr
    ta, tb = read_trace(str(run / "trace.h5")), read_trace(str(tmp_path / "b" / "quickstart" / "trace.h5"))
    for g in ("iter", "epoch", "phase"):
        assert getattr(ta, g).keys() == getattr(tb, g).keys()
        for k in getattr(ta, g):
            if k not in ("time", "elapsed", "images_per_s"):
                np.testing.assert_array_equal(getattr(ta, g)[k], getattr(tb, g)[k], err_msg=f"{g}/{k}")
    before = snapshot(run)
    p = short_train(tmp_path / "a")
    assert p.returncode == 0 and "run already finished at iteration 22" in p.stdout, p.stdout + p.stderr
    assert snapshot(run) == before


def test_full_tmpfs_during_a_run_then_resume(tmp_path):
    """A real full disk (a 24 MiB tmpfs as out_dir, filled up while the run writes its trace every iteration;
    needs root): exit 1 (no SIGSEGV), one error line naming the file system; trace.h5 reads and holds a prefix
    of the iterations at least as long as before the disk filled; after the space is freed, --resume auto
    finishes with every iteration exactly once."""
    fs = tmp_path / "fs"
    fs.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(fs)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        trace = fs / "quickstart" / "trace.h5"
        p = short_train(fs, ["--set", "epochs=4"], popen=True)  # 44 iterations: time to fill the disk mid-run
        wait_rows(p, trace, 3)
        seen = trace_rows(trace)
        with open(fs / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        out, err = p.communicate(timeout=120)
        errors = [line for line in err.splitlines() if line.startswith("hpc_dsgd: error")]
        assert p.returncode == 1 and len(errors) == 1 and "Traceback" not in err, (p.returncode, err)
        assert f"file system mounted at {fs} (tmpfs)" in errors[0] and "free" in errors[0], errors[0]
        its = read_trace(str(trace)).iter["it"]
        assert len(its) >= seen
        np.testing.assert_array_equal(its, np.arange(len(its)))
        os.remove(fs / "filler")
        p = short_train(fs, ["--set", "epochs=4"])
        assert p.returncode == 0, p.stderr
        tr = read_trace(str(trace))
        np.testing.assert_array_equal(tr.iter["it"], np.arange(4 * IPE))
        assert tr.attrs["status"] == "finished"
    finally:
        subprocess.run(["umount", "-l", str(fs)], check=True)


def test_trace_is_durable_before_the_checkpoint_that_records_it(tmp_path, monkeypatch):
    """The fsync order, observed: before every checkpoint directory is renamed into place, the trace holding
    the position it records was fsynced, renamed into place and its directory fsynced, with no trace write
    in between; the position recorded is the rows the trace then held."""
    from mpi4py import MPI

    from hpc_dsgd.config import load_config
    from hpc_dsgd.train import run

    events, real = [], {f: getattr(os, f) for f in ("fsync", "replace", "rename")}

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real["fsync"](fd)

    def move(kind):
        def f(a, b):
            events.append((kind, os.fspath(a), os.fspath(b)))
            real[kind](a, b)
        return f

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", move("replace"))
    monkeypatch.setattr(os, "rename", move("rename"))
    cfg = load_config(QUICK, [f"out_dir={tmp_path}", "n=2", "width=0.25", "epochs=2", "warmup_epochs=0.5",
                              "checkpoint_minutes=0", "trace_flush_seconds=1000", "max_iterations=100"])
    run(cfg, MPI.COMM_SELF, log=lambda *a, **k: None)
    monkeypatch.undo()
    rd = str(tmp_path / "quickstart")
    tr = os.path.join(rd, "trace.h5")
    commits = [i for i, e in enumerate(events) if e[0] == "rename" and e[1].endswith(".tmp")
               and os.path.basename(e[2]).startswith("ckpt-")]
    assert len(commits) >= 3  # the three phase ends
    tmp = os.path.join(rd, ".trace.h5.tmp-")  # fileio.atomic_write's exclusive temporary of trace.h5

    for i in commits:
        j = max(k for k in range(i) if events[k][0] == "replace" and events[k][1].startswith(tmp) and events[k][2] == tr)
        assert ("fsync", events[j][1]) in events[:j] and ("fsync", rd) in events[j:i], events[:i]
        assert not any(e[0] == "fsync" and e[1].startswith(tmp) for e in events[j:i])  # no later trace write
    for ck in list_checkpoints(rd):
        pos = json.load(open(os.path.join(ck, "manifest.json")))["meta"]["loop"]["trace_pos"]
        assert pos["iter"] == int(os.path.basename(ck).split("-")[1])


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["SIGUSR1", "SIGTERM"])
def test_stop_signal_checkpoints_exits_75_and_resumes(sig, tmp_path):
    """The requeue signal (SIGUSR1, as srun delivers `#SBATCH --signal=USR1@...`: to every task) and SIGTERM
    (preemption, scancel) to every rank: the ranks finish the iteration, write a checkpoint that verifies,
    mark the trace "stopped" with every iteration before the checkpoint, and exit 75 (EX_TEMPFAIL: the
    requeue code run.sbatch acts on); --resume auto then goes on from that checkpoint without a gap."""
    trace = tmp_path / "quickstart" / "trace.h5"
    p = short_train(tmp_path, popen=True)
    wait_rows(p, trace, 3)
    pids = rank_pids(str(tmp_path))
    assert len(pids) == RANKS
    for pid in pids:
        os.kill(pid, sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == REQUEUE_EXIT_CODE == getattr(os, "EX_TEMPFAIL", 75) == 75, err
    assert f"stop requested by signal {sig.name}" in out
    ckpts = list_checkpoints(str(tmp_path / "quickstart"))
    stopped = int(ckpts[0].rsplit("-", 1)[1])
    assert 3 <= stopped < 2 * IPE
    verify_checkpoint(ckpts[0])
    tr = read_trace(str(trace))
    assert tr.attrs["status"] == "stopped"
    np.testing.assert_array_equal(tr.iter["it"], np.arange(stopped))
    p = short_train(tmp_path, ["--set", f"max_iterations={stopped + 3}"])
    assert p.returncode == 0, p.stderr
    assert f"resume from {ckpts[0]}" in p.stdout
    np.testing.assert_array_equal(read_trace(str(trace)).iter["it"], np.arange(stopped + 3))


def test_two_runs_on_one_directory(tmp_path, monkeypatch, capsys):
    """A second run started on a run directory while the first is writing it is refused (exit 73,
    one line naming the lock's host and pid, nothing of the first run changed by it) and the first
    finishes unharmed. The second starts through the command line's main() in the test process, so
    it reaches the lock within the first's few seconds of training."""
    trace = tmp_path / "quickstart" / "trace.h5"
    first = short_train(tmp_path, popen=True)
    wait_rows(first, trace, 2)
    rc, err = in_process(["train", QUICK, "--set", f"out_dir={tmp_path}", "--set", "width=0.25", *SHORT], {},
                         monkeypatch, capsys)
    assert first.poll() is None, "the first run ended before the second reached the lock: no overlap tested"
    out, first_err = first.communicate(timeout=120)
    assert rc == LOCKED_EXIT_CODE, err
    errors = [line for line in err.splitlines() if line.startswith("hpc_dsgd: error")]
    assert len(errors) == 1 and "in use by another run" in errors[0], err
    assert f"host {socket.gethostname()}" in errors[0] and LOCK_NAME in errors[0]
    assert first.returncode == 0, first_err
    tr = read_trace(str(trace))
    np.testing.assert_array_equal(tr.iter["it"], np.arange(2 * IPE))
    assert tr.attrs["status"] == "finished"
    assert not (tmp_path / "quickstart" / LOCK_NAME).exists()  # released at the end


def write_lock(run_dir, **owner) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                 "slurm_job_id": "", "started": "2026-01-01T00:00:00", **owner}))


def test_run_lock_live_refused_stale_taken_over(tmp_path, monkeypatch):
    """The run-directory lock: a live owner on this host is refused (naming host, pid and the lock
    file, which stays as it was); a dead pid on this host, an earlier incarnation of this requeued
    SLURM job, and a lock not touched for LOCK_STALE_S (an owner on another host that died) are stale
    and taken over; release removes the lock, and the directory if the lock was all it held."""
    d = tmp_path / "run"
    write_lock(d)
    before = snapshot(d)
    with pytest.raises(RunLockError, match=f"pid {os.getpid()}.*{LOCK_NAME}"):
        RunLock(str(d)).acquire()
    assert snapshot(d) == before
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_lock(d, pid=dead.pid)
    lock = RunLock(str(d)).acquire()
    assert lock.taken_over["pid"] == dead.pid
    assert json.loads((d / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (d / LOCK_NAME).exists() and d.is_dir()  # the directory was there before: kept
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    write_lock(d, host="node-elsewhere", pid=1, slurm_job_id="4242", slurm_restart="0")
    RunLock(str(d)).acquire().release()  # the same job before its requeue
    write_lock(d, host="node-elsewhere", pid=1, slurm_job_id="99")
    with pytest.raises(RunLockError, match="host node-elsewhere"):
        RunLock(str(d)).acquire()  # another host, recently touched: cannot tell, so refused
    old = time.time() - LOCK_STALE_S - 5
    os.utime(d / LOCK_NAME, (old, old))
    RunLock(str(d)).acquire().release()  # no heartbeat for LOCK_STALE_S: its owner is gone
    fresh = tmp_path / "fresh"
    RunLock(str(fresh)).acquire().release()
    assert not fresh.exists()  # created for the lock alone, removed with it


def test_upgraded_format1_checkpoint_resumes_bitwise(tmp_path, base):
    """A checkpoint in the old pickle format, converted with `python -m hpc_dsgd checkpoint upgrade`,
    resumes bitwise like the original: same parameters, momentum and trace rows two iterations on."""
    run, _ = base
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(run, a / "quickstart")
    shutil.copytree(run, b / "quickstart")
    ck = ckpt_of(b / "quickstart")
    to_format1(ck)
    p = cli(["checkpoint", "upgrade", str(b / "quickstart")], ranks=0)
    assert p.returncode == 0, p.stderr
    assert "upgraded" in p.stdout and os.path.isdir(ck + ".format1")
    assert verify_checkpoint(ck)["upgraded_from_format"] == 1
    for out in (a, b):
        p = cli(train_args(out, "--resume", "auto"))
        assert p.returncode == 0, p.stderr
    last = "checkpoints/ckpt-000000007"
    for r in range(RANKS):
        fa = torch.load(a / "quickstart" / last / f"rank{r:05d}.pt", weights_only=True)
        fb = torch.load(b / "quickstart" / last / f"rank{r:05d}.pt", weights_only=True)
        for key in ("t.X", "t.M"):
            assert torch.equal(fa[key], fb[key]), key
    ta, tb = read_trace(str(a / "quickstart" / "trace.h5")), read_trace(str(b / "quickstart" / "trace.h5"))
    np.testing.assert_array_equal(ta.iter["loss"], tb.iter["loss"])
    np.testing.assert_array_equal(ta.iter["theta"], tb.iter["theta"])


@pytest.fixture(scope="module")
def multi30k_run(tmp_path_factory):
    """A fabricated Multi30k (multi30k/) and a 2-iteration run on it (out/m30k/, one process), to copy."""
    tmp = tmp_path_factory.mktemp("m30k")
    fabricate_multi30k(tmp / "multi30k")
    p = cli(multi30k_args(tmp / "out", tmp / "multi30k", "max_iterations=2"), ranks=0)
    assert p.returncode == 0, p.stderr
    return tmp


@pytest.mark.parametrize("tamper", ["garbled", "other-vocabulary"])
def test_tampered_tokenizer_on_resume_is_one_line(tamper, multi30k_run, tmp_path, monkeypatch, capsys):
    """A Multi30k run's tokenizer.json tampered with before --resume auto: one `hpc_dsgd: error:` line naming
    the file, exit 2, nothing changed. Garbled: with the tokenizer library's own reason (was a traceback),
    a real mpiexec job; a valid tokenizer of another vocabulary: the checkpoint's rows do not fit its model
    (was a traceback when the rows were copied), in the test process."""
    from hpc_dsgd.data.multi30k import SubwordTokenizer

    shutil.copytree(multi30k_run, tmp_path, dirs_exist_ok=True)
    root = tmp_path / "multi30k"
    tok = tmp_path / "out" / "m30k" / "tokenizer.json"
    if tamper == "garbled":
        tok.write_text(tok.read_text(encoding="utf-8").replace('"<pad>"', '"<pad', 1), encoding="utf-8")
        needle = f"tokenizer file {tok} is not a valid tokenizers JSON file ("
    else:
        other = SubwordTokenizer.train(["Ein Hund läuft.", "A dog runs."] * 3, 270, 1)
        assert other.vocab_size != SubwordTokenizer.load(str(tok)).vocab_size
        other.save(str(tok))
        needle = f"the {other.vocab_size} subwords of {tok}) has"
    before = snapshot(tmp_path)
    args = multi30k_args(tmp_path / "out", root, "max_iterations=4") + ["--resume", "auto"]
    if tamper == "garbled":
        p = cli(args)
        rc, stderr = p.returncode, p.stderr
    else:
        rc, stderr = in_process(args, {}, monkeypatch, capsys)
    errors = [line for line in stderr.splitlines() if line.startswith("hpc_dsgd: error")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert needle in errors[0], errors[0]
    assert snapshot(tmp_path) == before


def test_sigterm_during_tokenizer_training_stops_the_preparation(tmp_path):
    """SIGTERM to both ranks while rank 0 trains the Multi30k tokenizer (on a corpus that would take about a
    minute): every rank stops within seconds (the training runs in a child process that is killed), says
    what it stopped and exits 75 (requeue: nothing to checkpoint yet); no tokenizer.json, no child left."""
    import random

    root = tmp_path / "multi30k"
    fabricate_multi30k(root)
    rng = random.Random(0)
    for lang in ("en", "de"):  # 1500 lines of 2000 letters: slow to learn merges from, within the line limit
        (root / f"train.{lang}").write_text("".join("".join(rng.choice("abcdefghij") for _ in range(2000)) + "\n"
                                                    for _ in range(1500)), encoding="utf-8")
    p = cli(multi30k_args(tmp_path / "out", root, "vocab_size=8000", "batch_size=2"), popen=True)
    deadline = time.monotonic() + 120
    while True:  # until a rank has a bpe.py child
        ranks = rank_pids(str(tmp_path))
        kids = [pid for pid in rank_pids("bpe.py") if _ppid(pid) in ranks]
        if kids:
            break
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "the tokenizer's training did not start"
        time.sleep(0.1)
    t0 = time.monotonic()
    for pid in ranks:
        os.kill(pid, signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == REQUEUE_EXIT_CODE, (out, err)
    assert time.monotonic() - t0 < 15
    assert "stop requested by signal SIGTERM during training the Multi30k tokenizer" in out, out
    assert "Traceback" not in err, err
    assert not (tmp_path / "out" / "m30k" / "tokenizer.json").exists()
    assert not any(os.path.exists(f"/proc/{pid}") for pid in kids)


def _ppid(pid: int) -> int:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


@pytest.mark.parametrize("damage, needle", [
    (lambda ck: replace_with_fifo(ck, "manifest.json"), "manifest.json is a FIFO"),
    (lambda ck: replace_with_symlink(ck, "rank00001.pt", "/dev/zero"), "rank00001.pt is a symlink"),
    (lambda ck: stride0_rank_files(ck, 10 ** 11), "tensors.X has 100000000000 numbers per replica"),
])
def test_surface_refuses_a_damaged_checkpoint_with_one_line(damage, needle, base, tmp_path, capsys):
    """tools/figures.py surface reads checkpoints like every other reader: one line, exit 2, nothing written."""
    from hpc_dsgd.analysis import figures

    run, _ = base
    ck = with_run(tmp_path, run)
    damage(ck)
    before = snapshot(tmp_path)
    capsys.readouterr()
    t0 = time.monotonic()
    rc = figures.main(["surface", ck, "--steps", "2", "--samples", "8", "-o", str(tmp_path / "s.png")])
    err = capsys.readouterr().err
    assert rc == 2 and time.monotonic() - t0 < 60, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("hpc_dsgd: error: checkpoint " + ck) and needle in lines[0], err
    assert snapshot(tmp_path) == before

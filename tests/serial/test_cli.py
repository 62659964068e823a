"""Claims about the command line as a user runs it (real mpiexec, real processes):
bad config values are refused with one clear message and a non-zero exit on every rank, before any
training; an exception on one rank ends the whole job non-zero within seconds, never a hang."""
import os
import shutil
import subprocess
import sys
import time

import pytest

from hpc_dsgd.config import ConfigError, load_config
from hpc_dsgd.preflight import LAUNCHER_SIZE_VARS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = os.path.join(ROOT, "configs", "quickstart.toml")
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")


def launch(args, ranks=4, timeout=120, env=None):
    e = {k: v for k, v in os.environ.items() if k not in LAUNCHER_SIZE_VARS}  # CI may itself run under a launcher
    e.update(OMP_NUM_THREADS="1", **(env or {}))
    cmd = ([MPIEXEC, "-n", str(ranks)] if ranks else []) + [sys.executable, "-m", "hpc_dsgd"] + args
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e, cwd=ROOT)
    return p, time.monotonic() - t0


@pytest.mark.parametrize("override, needle", [
    ("n=6", "n=6 replicas cannot be split over 4 MPI ranks"),
    ("base_lr=-0.1", "base_lr=-0.1"),
    ("topology=torus", "torus"),  # n=8 works as 2x4; use a prime n below
    ("bogus_key=1", "unknown config key(s) bogus_key"),
    ("epochs=\"ten\"", "epochs='ten': expected float"),
    ("lr_schedule=inverse_sqrt", "lr_schedule inverse_sqrt has no decays"),
    ("model=transformer", "transformer is the multi30k model"),
    ("optimizer=adagrad", "optimizer='adagrad': choose one of sgd, adam"),
])
def test_bad_config_refused_on_every_rank(override, needle, tmp_path):
    extra = ["--set", "n=7"] if override == "topology=torus" else []
    p, dt = launch(["train", QUICK, "--set", f"out_dir={tmp_path}", "--set", override] + extra,
                   ranks=1 if extra else 4)
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr
    assert p.stderr.count("hpc_dsgd: error") == 1  # one message, not one per rank
    assert not os.listdir(tmp_path)  # nothing written: refused before any work


def test_missing_cifar_directory_says_where_files_go(tmp_path):
    p, _ = launch(["train", QUICK, "--set", "dataset=cifar10", "--set", f"data_dir={tmp_path}/nope"], ranks=4)
    assert p.returncode == 2
    assert f"{tmp_path}/nope" in p.stderr and "download=True" in p.stderr


def test_missing_multi30k_files_named_and_nothing_written(tmp_path):
    """The paper's Multi30k recipe with an empty data directory: one message naming the six files, their
    layout and where to get them; exit 2 before any work (no run directory, no tokenizer)."""
    (tmp_path / "m30k").mkdir()
    (tmp_path / "m30k" / "train.en").write_text("A dog runs.\n", encoding="utf-8")
    p, _ = launch(["train", os.path.join(ROOT, "configs", "multi30k_transformer.toml"), "--set", f"out_dir={tmp_path}/runs",
                   "--set", f"data_dir={tmp_path}/m30k", "--set", "n=4"], ranks=4)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("hpc_dsgd: error") == 1
    for needle in ("missing train.de, val.en, val.de, test_2016_flickr.en, test_2016_flickr.de", "plain or .gz",
                   "data/task1/raw", "github.com/multi30k/dataset"):
        assert needle in p.stderr, needle
    assert not os.path.exists(tmp_path / "runs")


def test_exception_on_one_rank_ends_the_job_quickly(tmp_path):
    p, dt = launch(["train", QUICK, "--set", f"out_dir={tmp_path}", "--set", "width=0.25"], ranks=4, timeout=150,
                   env={"HPC_DSGD_INJECT_FAULT": "rank=2,it=3"})
    assert p.returncode != 0
    assert "injected fault on rank 2 at iteration 3" in p.stderr, (p.returncode, p.stdout[-2000:], p.stderr)
    assert dt < 120  # aborted, not hanging in a collective


def test_help_lists_commands():
    p, _ = launch(["--help"], ranks=0)
    assert p.returncode == 0 and "train" in p.stdout and "topology" in p.stdout
    p, _ = launch(["train", "--help"], ranks=0)
    assert p.returncode == 0 and "--set" in p.stdout


def test_config_loader_refusals_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"n=10 replicas cannot be split over 4"):
        load_config(QUICK, ["n=10"], ranks=4)
    with pytest.raises(ConfigError, match=r"policies\[1\]='sometimes'"):
        load_config(QUICK, ['policies=["gossip","sometimes","gossip"]'])
    with pytest.raises(ConfigError, match=r"decay_fractions=\[0.75, 0.5\]"):
        load_config(QUICK, ["decay_fractions=[0.75,0.5]"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "none.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("n = [1,\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(bad))
    cfg = load_config(QUICK, ["n=16", "topology=exponential"], ranks=4)
    assert cfg.n == 16 and cfg.replicas_per_rank(4) == 4


def test_fresh_start_never_overwrites_a_run(tmp_path):
    args = ["train", QUICK, "--set", f"out_dir={tmp_path}", "--set", "width=0.25", "--set", "max_iterations=3"]
    p, _ = launch(args, ranks=2)
    assert p.returncode == 0, p.stderr
    trace = tmp_path / "quickstart" / "trace.h5"
    before = trace.read_bytes()
    p, _ = launch(args, ranks=2)  # the same run again without --resume
    assert p.returncode == 2
    assert "already holds a run" in p.stderr and "--resume auto" in p.stderr
    assert trace.read_bytes() == before  # nothing already written is lost


def test_quickstart_progress_line_has_the_readme_sample_format(tmp_path):
    """The README quotes the quickstart's last progress line: the code prints that format (numbers aside),
    so the sample cannot go stale in form (its figures are regenerated by hand, with the commit)."""
    import re

    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    sample = re.search(r"```\n(epoch [^\n]*)\n```", readme).group(1)
    p, _ = launch(["train", QUICK, "--set", f"out_dir={tmp_path}", "--set", "width=0.25", "--set", "epochs=1",
                   "--set", "warmup_epochs=0.5"], ranks=0)
    assert p.returncode == 0, p.stderr
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("epoch")][-1]
    shape = lambda ln: re.sub(r"\d+(\.\d+)?(e[+-]\d+)?", "N", " ".join(ln.split()))
    assert shape(line) == shape(sample), (line, sample)
    assert re.search(r" lr \d\.\d{3}e[+-]\d\d ", line)  # the fixed-width learning rate

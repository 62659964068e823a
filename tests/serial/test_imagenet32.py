"""Claims about ImageNet-32 (data files the tests write in the official format, no network):
the loader returns the official pixels and labels 0..999; reading a pickle never runs code from it;
the converted cache is reused, rebuilt when a source changes, and survives ranks starting at once;
missing or damaged files give one message and leave nothing behind; ResNet-20-3 has the parameter
count of its architecture; the Table 3 configs are valid and fill exactly the cells of the table3 preset;
and the unchanged training loop runs on it under mpiexec."""
from __future__ import annotations

import glob
import hashlib
import json
import multiprocessing as mp
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from hpc_dsgd.analysis.cells import experiments
from hpc_dsgd.analysis.presets import PRESETS, build_preset
from hpc_dsgd.analysis.runs import runs_frame
from hpc_dsgd.analysis.tables import render
from hpc_dsgd.config import load_config
from hpc_dsgd.data import DATASETS, DataError, check_dataset, epoch_permutation, load_dataset, replica_shard
from hpc_dsgd.data import imagenet32 as inet
from hpc_dsgd.models import build_model
from hpc_dsgd.preflight import check_inputs

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PER_BATCH = 4  # images per fabricated train batch file
N_VAL = 6


def _batch(rng, n, first_label=1):
    rows = rng.randint(0, 256, size=(n, 3072), dtype=np.uint8)  # R plane, G plane, B plane per row
    labels = [int(x) for x in rng.randint(1, 1001, size=n)]
    labels[0] = first_label
    return rows, labels


def _py2_pickle(rows: np.ndarray, labels: list[int]) -> bytes:
    """{'data': rows, 'labels': labels} as Python 2's cPickle writes it (protocol 2: byte strings as
    SHORT_BINSTRING/BINSTRING, numpy.core paths), assembled opcode by opcode; Python 3 cannot write this."""
    def s(b: bytes) -> bytes:  # SHORT_BINSTRING
        return b"U" + bytes([len(b)]) + b

    n = len(rows)
    arr = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b") + b"\x87R"
           + b"(K\x01K" + bytes([n]) + b"M\x00\x0c\x86"  # version 1, shape (n, 3072)
           + b"cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R(K\x03" + s(b"|")
           + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"  # dtype state
           + b"\x89T" + struct.pack("<I", rows.size) + rows.tobytes() + b"tb")  # not Fortran, raw bytes
    labs = b"](" + b"".join(b"M" + struct.pack("<H", x) for x in labels) + b"e"
    return b"\x80\x02}(" + s(b"data") + arr + s(b"labels") + labs + b"u."


def fabricate(root: Path, seed: int = 0, layout: str = "zips") -> dict:
    """Write the 11 official files (layout 'zips': Imagenet32_train/ and Imagenet32_val/ as the zips
    unpack; 'flat': all in root). Pickle protocols vary (2, 4, 5) like releases made by different
    Pythons, and batch 5 is a Python-2 pickle; labels are a list of ints, a numpy array in one file, and
    some files carry a 'mean'."""
    rng = np.random.RandomState(seed)
    tdir = root / "Imagenet32_train" if layout == "zips" else root
    vdir = root / "Imagenet32_val" if layout == "zips" else root
    tdir.mkdir(parents=True, exist_ok=True)
    vdir.mkdir(parents=True, exist_ok=True)
    rows, labels = [], []
    for k in range(1, 11):
        r, lab = _batch(rng, PER_BATCH, first_label=1 if k == 1 else 1000 if k == 2 else 500)
        obj = {"data": r, "labels": np.array(lab, dtype=np.int64) if k == 3 else lab}
        if k % 2:
            obj["mean"] = r.mean(axis=0)
        blob = _py2_pickle(r, lab) if k == 5 else pickle.dumps(obj, protocol=(2, 4, 5)[k % 3])
        (tdir / f"train_data_batch_{k}").write_bytes(blob)
        rows.append(r)
        labels += lab
    vr, vl = _batch(rng, N_VAL, first_label=7)
    (vdir / "val_data").write_bytes(pickle.dumps({"data": vr, "labels": vl}, protocol=2))
    return {"train_rows": np.concatenate(rows), "train_labels": np.array(labels), "val_rows": vr,
            "val_labels": np.array(vl), "val_path": vdir / "val_data", "train_dir": tdir}


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    monkeypatch.delenv(inet.CACHE_ENV, raising=False)
    return tmp_path / "imagenet32"


def test_loader_returns_official_pixels_and_labels_0_999(data_root):
    ref = fabricate(data_root)
    assert "imagenet32" in DATASETS
    d = load_dataset("imagenet32", str(data_root))
    assert d.name == "imagenet32" and d.num_classes == 1000
    assert d.train_x.shape == (40, 3, 32, 32) and d.train_x.dtype == torch.uint8
    assert d.test_x.shape == (N_VAL, 3, 32, 32) and d.test_y.dtype == torch.int64
    rows = ref["train_rows"]
    for i in (0, 5, 39):  # channel c of image i is row i's c-th 1024-byte plane, row-major 32x32
        for c in range(3):
            assert np.array_equal(d.train_x[i, c].numpy(), rows[i, c * 1024:(c + 1) * 1024].reshape(32, 32))
    assert np.array_equal(d.train_y.numpy(), ref["train_labels"] - 1)
    assert np.array_equal(d.test_x.reshape(N_VAL, -1).numpy(), ref["val_rows"])
    assert np.array_equal(d.test_y.numpy(), ref["val_labels"] - 1)
    assert int(d.train_y.min()) == 0 and int(d.train_y.max()) == 999  # files hold 1 and 1000
    px = rows.reshape(-1, 3, 1024).astype(np.float64) / 255.0  # per-channel statistics of the training set
    assert np.allclose(d.mean, px.mean(axis=(0, 2)), atol=1e-12)
    assert np.allclose(d.std, px.std(axis=(0, 2)), atol=1e-12)
    man = json.loads((data_root / "imagenet32_cache" / "manifest.json").read_text())
    assert man["sources"]["val_data"]["sha256"] == hashlib.sha256(ref["val_path"].read_bytes()).hexdigest()
    x = np.load(data_root / "imagenet32_cache" / "train_x.npy", mmap_mode="r")
    assert hashlib.sha256(np.ascontiguousarray(x).data).hexdigest() == man["arrays"]["train_x"]["sha256_data"]
    inet.verify_cache(str(data_root))


def test_flat_layout_and_cache_env(data_root, tmp_path, monkeypatch):
    fabricate(data_root, layout="flat")
    monkeypatch.setenv(inet.CACHE_ENV, str(tmp_path / "scratch"))
    d = load_dataset("imagenet32", str(data_root))
    assert d.train_x.shape[0] == 40
    assert (tmp_path / "scratch" / "imagenet32_cache" / "manifest.json").is_file()
    assert not (data_root / "imagenet32_cache").exists()


def test_partition_disjoint_and_covering_across_4_ranks(data_root):
    fabricate(data_root)
    d = load_dataset("imagenet32", str(data_root))
    N, n, ranks = len(d.train_y), 8, 4
    perm = epoch_permutation(N, epoch=2, seed=5)
    per_rank = [torch.cat([replica_shard(perm, n, i) for i in range(r * n // ranks, (r + 1) * n // ranks)])
                for r in range(ranks)]
    seen = torch.cat(per_rank)
    assert len(set(seen.tolist())) == len(seen) == (N // n) * n  # disjoint, every full shard covered
    assert set(seen.tolist()) <= set(range(N))


def test_cache_is_reused_then_rebuilt_when_a_source_changes(data_root, monkeypatch):
    ref = fabricate(data_root)
    load_dataset("imagenet32", str(data_root))
    man_path = data_root / "imagenet32_cache" / "manifest.json"
    st = os.stat(man_path)

    def no_build(*a, **k):
        raise AssertionError("the cache was rebuilt although no source changed")

    with monkeypatch.context() as m:
        m.setattr(inet, "_build_cache", no_build)
        load_dataset("imagenet32", str(data_root))
        os.utime(ref["val_path"], ns=(st.st_mtime_ns + 10**9, st.st_mtime_ns + 10**9))  # touched, same bytes
        d = load_dataset("imagenet32", str(data_root))
    assert int(d.test_y[0]) == 6
    assert json.loads(man_path.read_text())["sources"]["val_data"]["mtime_ns"] == st.st_mtime_ns + 10**9
    with monkeypatch.context() as m:  # the new mtime was recorded: no second hashing of the touched file
        m.setattr(inet, "_build_cache", no_build)
        m.setattr(inet, "_sha256_file", no_build)
        load_dataset("imagenet32", str(data_root))
    st = os.stat(man_path)
    # the val file now holds other labels (same size): the cache is rebuilt and the new labels appear
    rows = ref["val_rows"]
    new = [1000] * N_VAL
    ref["val_path"].write_bytes(pickle.dumps({"data": rows, "labels": new}, protocol=2))
    d = load_dataset("imagenet32", str(data_root))
    assert d.test_y.tolist() == [999] * N_VAL
    assert os.stat(man_path).st_ino != st.st_ino
    assert not glob.glob(str(data_root / "imagenet32_cache" / "*.tmp-*"))  # no temporary left behind
    man_path.write_text('{"format": 1, "sources": []}')  # a manifest of another shape: rebuilt, not trusted
    assert load_dataset("imagenet32", str(data_root)).test_y.tolist() == [999] * N_VAL
    assert "train_x" in json.loads(man_path.read_text())["arrays"]


def _prepare_at_once(root, barrier, no_lock, q):
    if no_lock:  # the fallback where flock is unavailable: unique temporaries + rename must still be safe
        import contextlib

        inet._node_lock = lambda cdir: contextlib.nullcontext()
    barrier.wait()
    try:
        cdir, man = inet.prepare_imagenet32(root)
        y = np.load(os.path.join(cdir, "train_y.npy"))
        q.put(("ok", y.tolist(), man["arrays"]["train_x"]["sha256_data"]))
    except Exception as e:  # reported to the test
        q.put(("error", repr(e), ""))


@pytest.mark.parametrize("no_lock", [False, True], ids=["flock", "no-flock"])
def test_ranks_starting_at_once_share_one_sound_cache(data_root, no_lock):
    ref = fabricate(data_root)
    ctx = mp.get_context("fork")
    k = 4
    barrier, q = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_prepare_at_once, args=(str(data_root), barrier, no_lock, q)) for _ in range(k)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(r[0] == "ok" for r in results), results
    assert all(r[1] == (ref["train_labels"] - 1).tolist() for r in results)
    assert len({r[2] for r in results}) == 1
    d = load_dataset("imagenet32", str(data_root))
    assert np.array_equal(d.train_x.reshape(40, -1).numpy(), ref["train_rows"])
    inet.verify_cache(str(data_root))
    assert not glob.glob(str(data_root / "imagenet32_cache" / "*.tmp-*"))


def test_missing_files_named_with_layout_and_source(data_root):
    ref = fabricate(data_root)
    (ref["train_dir"] / "train_data_batch_7").unlink()
    ref["val_path"].unlink()
    with pytest.raises(DataError) as e:
        check_dataset("imagenet32", str(data_root))
    msg = str(e.value)
    assert "missing train_data_batch_7, val_data" in msg and "image-net.org" in msg and "Imagenet32_val" in msg
    assert "\n" not in msg
    assert not (data_root / "imagenet32_cache").exists()
    with pytest.raises(DataError, match="needs data_dir"):
        check_dataset("imagenet32", None)
    with pytest.raises(DataError, match="does not exist"):
        check_dataset("imagenet32", str(data_root / "nope"))


@pytest.mark.parametrize("damage, needle", [
    ("truncate", "is damaged or not a pickle"),
    ("labels0", "labels range 0..1000, expected 1..1000"),
    ("shape", "'data' is uint8 (4, 1024), expected an N x 3072 uint8 array"),
    ("notdict", "expected a dict with 'data'"),
])
def test_damaged_file_named_and_nothing_written(data_root, damage, needle):
    ref = fabricate(data_root)
    path = ref["train_dir"] / "train_data_batch_4"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:5000])
    elif damage == "labels0":
        path.write_bytes(pickle.dumps({"data": ref["train_rows"][:4], "labels": [0, 1, 2, 1000]}))
    elif damage == "shape":
        path.write_bytes(pickle.dumps({"data": np.zeros((4, 1024), np.uint8), "labels": [1, 2, 3, 4]}))
    else:
        path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError) as e:
        load_dataset("imagenet32", str(data_root))
    assert str(path) in str(e.value) and needle in str(e.value), str(e.value)
    assert not (data_root / "imagenet32_cache").exists()  # nothing written


class _Evil:
    """An object whose unpickling would run a command (what pickle.load does with __reduce__)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running_its_code(data_root, tmp_path):
    ref = fabricate(data_root)
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"data": ref["train_rows"][:4], "labels": [1, 2, 3, 4], "mean": _Evil(marker)}, protocol=2)
    pickle.loads(evil)  # the plain unpickler runs the command: the file really is malicious
    assert marker.exists()
    marker.unlink()
    path = ref["train_dir"] / "train_data_batch_9"
    path.write_bytes(evil)
    with pytest.raises(DataError) as e:
        load_dataset("imagenet32", str(data_root))
    assert not marker.exists()  # the command did not run
    msg = str(e.value)
    assert str(path) in msg and "system" in msg and "refused without running it" in msg
    assert not (data_root / "imagenet32_cache").exists()
    # the other classic payloads are refused the same way
    for payload in (pickle.dumps(eval), b"cbuiltins\nexec\n(S'1'\ntR.", b"c_codecs\nencode\n(S'x'\nS'rot13'\ntR."):
        path.write_bytes(payload)
        with pytest.raises(DataError, match=str(path)):
            load_dataset("imagenet32", str(data_root))


def test_resnet20_3_parameter_count_for_1000_classes():
    """Counted from the architecture (3x3 convs without bias, BN weight+bias, 1x1 projection shortcut
    + BN where the shape changes, linear head), independently of the model code."""

    def count(width, classes):
        c = [16 * width, 32 * width, 64 * width]
        total = 3 * c[0] * 9 + 2 * c[0]  # stem conv + BN
        cin = c[0]
        for ch in c:
            for _ in range(3):
                total += cin * ch * 9 + ch * ch * 9 + 2 * (2 * ch)  # two convs, two BNs
                if cin != ch:
                    total += cin * ch + 2 * ch  # projection shortcut conv + BN
                cin = ch
        return total + c[2] * classes + classes

    assert count(1, 10) == 272_474  # ResNet-20 (README figure)
    want = count(3, 1000)
    # by hand: stem 1,392 + stage 1 124,992 + stage 2 462,144 + stage 3 1,845,888 + head 193,000
    assert want == 2_627_416
    model = build_model("resnet20", num_classes=1000, width=3.0)
    assert sum(p.numel() for p in model.parameters()) == want
    assert model.fc.out_features == 1000 and model.conv1.out_channels == 48
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 1000)


# ------------------------------------------------------------------------------------------------
# Table 3 configs
# ------------------------------------------------------------------------------------------------
T3 = sorted(glob.glob(os.path.join(ROOT, "configs", "table3", "*.toml")))


def test_table3_configs_fill_every_cell_and_baseline_exactly_once():
    pre = PRESETS["table3"]
    lay = pre.layout
    hits: dict = {}
    cfgs = {path: load_config(path, ranks=1) for path in T3}
    by_name = {c.name: c for c in cfgs.values()}
    for path, cfg in cfgs.items():
        assert (cfg.dataset, cfg.model, cfg.width, cfg.epochs, cfg.batch_size, cfg.warmup_epochs) == \
            ("imagenet32", "resnet20", 3.0, 90.0, 64, 5.0)
        assert np.allclose(cfg.decay_fractions, [1 / 3, 2 / 3, 8 / 9], atol=1e-12) and len(cfg.policies) == 4
        if "target" in cfg.policies:  # its reference: the shipped uncontrolled run of the same dec-phase-k, same n
            k = cfg.policies.index("target")
            ref = by_name[cfg.reference_trace.split("/")[1]]
            assert ref.n == cfg.n and ref.policies[k] == "gossip" and ref.policies[:k] == cfg.policies[:k]
        d = cfg.to_dict()
        where = [("cell", r, c) for r in range(len(lay.rows)) for c in range(len(lay.columns)) if pre.cell(d, r, c, {})]
        where += [("base", lab, r) for lab, f in pre.baselines for r in range(len(lay.rows)) if f(d, r, {})]
        assert len(where) == 1, (path, where)
        hits.setdefault(where[0], []).append(os.path.basename(path))
    assert len(hits) == 2 * 12 + 2 * 2  # 24 cells + All-Reduce and D-SGD baselines for n = 16, 32
    assert all(len(v) == 1 for v in hits.values()), hits
    # spot checks against the paper's headings
    cfg = load_config(os.path.join(ROOT, "configs", "table3", "n32_dec3_quarter.toml")).to_dict()
    (r, c), = [(r, c) for r in range(2) for c in range(12) if pre.cell(cfg, r, c, {})]
    assert lay.rows[r] == "n=32" and lay.columns[c] == ("dec-phase-3", "1/4 Ξ_max")


def test_table3_preset_renders_from_runs_of_these_configs():
    runs = []
    for i, path in enumerate(T3):
        cfg = load_config(path, ranks=1).to_dict()
        for seed in (0, 1):  # the paper: two seeds
            runs.append(dict(path=f"{path}.s{seed}", config={**cfg, "seed": seed}, status="finished", seed=seed,
                             value=50.0 + i / 100 + seed / 10, last_epoch=90.0, stamp=str(seed)))
    df = runs_frame(runs)
    tab = build_preset("table3", experiments(df), expected=2)
    assert all(c.stats is not None and c.stats.count == 2 for row in tab.cells for c in row)
    assert all(c.stats is not None and c.stats.count == 2 for _, cs in tab.baselines for c in cs)
    text = render(df, "table3", "md", paper=True)
    assert "ambiguous" not in text and "—" not in text and "[paper 51.22 ± 0.08]" in text


# ------------------------------------------------------------------------------------------------
# End to end through today's loop
# ------------------------------------------------------------------------------------------------
def _launch(args, ranks):
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    env.pop(inet.CACHE_ENV, None)
    return subprocess.run([mpiexec, "-n", str(ranks), sys.executable, "-m", "hpc_dsgd"] + args,
                          capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)


def test_check_command_builds_no_cache_and_says_what_it_checked(data_root, tmp_path, monkeypatch, capsys):
    """`python -m hpc_dsgd check` (the batch scripts' "seconds, not after the queue" check, run on a login node)
    on an ImageNet-32 config whose cache is not built: exit 0 in seconds, what it checked and that the first run
    builds the cache, and not one file created (the cache directory empty); with the cache built, it checks the
    epoch size from the cache's manifest."""
    import time

    from hpc_dsgd.__main__ import main

    fabricate(data_root)
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv(inet.CACHE_ENV, str(cache))
    before = sorted(p for p in glob.glob(str(tmp_path / "**"), recursive=True))
    args = ["check", os.path.join(ROOT, "configs", "quickstart.toml"), "--ranks", "2", "--set", "dataset=imagenet32",
            "--set", f"data_dir={data_root}", "--set", "n=4", "--set", "batch_size=4"]
    t0 = time.monotonic()
    assert main(args) == 0
    assert time.monotonic() - t0 < 30  # seconds (on a loaded 2-core machine): no unpickling, no cache
    out = capsys.readouterr().out
    assert "values valid; n=4 = 2 ranks x 2 replicas" in out and f"data: imagenet32 in {data_root}" in out
    assert "is not built yet: the first run builds it" in out and out.rstrip().endswith(": ok")
    assert sorted(glob.glob(str(tmp_path / "**"), recursive=True)) == before and os.listdir(cache) == []
    inet.prepare_imagenet32(str(data_root))
    assert main(args) == 0 and "imagenet32 in" in (out := capsys.readouterr().out) and " ready" in out
    assert "an epoch has at least one iteration of n x batch_size = 16" in out


@pytest.mark.slow
def test_training_loop_runs_imagenet32_and_config_check_refuses_damaged_files(data_root, tmp_path):
    ref = fabricate(data_root)
    base = ["train", os.path.join(ROOT, "configs", "quickstart.toml"), "--set", "dataset=imagenet32",
            "--set", f"data_dir={data_root}", "--set", "width=0.25", "--set", "n=4", "--set", "batch_size=4",
            "--set", "epochs=1", "--set", "warmup_epochs=0", "--set", "local_eval_samples=4",
            "--set", f"out_dir={tmp_path / 'runs'}"]
    p = _launch(base + ["--set", "name=ok"], ranks=2)  # both ranks prepare the cache at once, then train
    assert p.returncode == 0, p.stderr[-3000:]
    with h5py.File(tmp_path / "runs" / "ok" / "trace.h5", "r") as f:
        assert f.attrs["status"] == "finished"
        cfg = json.loads(f.attrs["config_json"])
        assert cfg["dataset"] == "imagenet32"
        assert len(f["epoch"]["test_acc_avg"]) >= 1 and np.all(np.isfinite(f["iter"]["loss"][()]))
        assert int(f.attrs["iters_per_epoch"]) == 40 // (4 * 4)
    ref["val_path"].write_bytes(b"\x80\x02}q\x00")  # a truncated pickle: refused by the input check that
    with pytest.raises(DataError) as e:  # every rank runs before any work (the CLI prints it as hpc_dsgd: error: ...)
        check_inputs(load_config(os.path.join(ROOT, "configs", "quickstart.toml"), [o for o in base[2:] if o != "--set"],
                                 ranks=1))
    assert str(e.value).startswith(f"ImageNet-32 file {ref['val_path']} is damaged or not a pickle")


class _NdarrayCall:
    """Pickles as a call numpy.ndarray(shape, dtype, buffer, offset, strides): a pickle may name the class."""

    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return (np.ndarray, self.args)


def test_array_tricks_in_a_pickle_are_refused_before_any_allocation(data_root):
    """A 200-byte batch whose 'data' is a zero-stride view of one byte, shape (200000, 3072) (it passed the
    restricted unpickler and wrote a 616 MB cache), and one that asks numpy.ndarray for 1 TB: refused,
    naming the file, nothing written; the checks behind the unpickler refuse a zero-stride array itself."""
    ref = fabricate(data_root)
    path = ref["train_dir"] / "train_data_batch_2"
    for call in [((200_000, 3072), np.dtype("u1"), b"x", 0, (0, 0)), ((10 ** 12,), np.dtype("u1"))]:
        blob = pickle.dumps({"data": _NdarrayCall(*call), "labels": [1]}, protocol=2)
        assert len(blob) < 300
        path.write_bytes(blob)
        with pytest.raises(DataError, match=f"{path}.*numpy.ndarray.*not admitted"):
            load_dataset("imagenet32", str(data_root))
        assert not (data_root / "imagenet32_cache").exists()
    zero = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (200_000, 3072), (0, 0))
    with pytest.raises(DataError, match=r"'data' is a uint8 \(200000, 3072\) array with strides \(0, 0\)"):
        inet._rows_labels({"data": zero, "labels": [1] * 200_000}, str(path))
    labels = np.lib.stride_tricks.as_strided(np.ones(1, np.int64), (4,), (0,))
    real = ref["train_dir"] / "train_data_batch_1"  # a file large enough for 4 real rows
    with pytest.raises(DataError, match=r"'labels' is a int64 \(4,\) array with strides \(0,\)"):
        inet._rows_labels({"data": np.zeros((4, 3072), np.uint8), "labels": labels}, str(real))


def test_damaged_cached_labels_are_rebuilt_or_refused(data_root, monkeypatch):
    """train_y.npy damaged in the cache (a label 5000, same size): its checksum no longer matches, so the
    cache is rebuilt from the sources and the labels are right again; if the manifest was made to agree
    (no checksum to catch it), the load refuses labels outside 0..999 with one line naming the file."""
    ref = fabricate(data_root)
    load_dataset("imagenet32", str(data_root))
    cdir = data_root / "imagenet32_cache"
    y = cdir / "train_y.npy"

    def damage():
        a = np.load(y)
        a[3] = 5000
        np.save(y, a)
        return a
    damage()
    d = load_dataset("imagenet32", str(data_root))
    assert np.array_equal(d.train_y.numpy(), ref["train_labels"] - 1)
    a = damage()
    man = json.loads((cdir / "manifest.json").read_text())
    man["arrays"]["train_y"]["sha256_data"] = hashlib.sha256(a.tobytes()).hexdigest()
    (cdir / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(DataError) as e:
        load_dataset("imagenet32", str(data_root))
    assert f"{y} holds labels 0..5000, expected 0..999" in str(e.value) and f"delete {cdir}" in str(e.value)


def test_cache_env_a_file_and_a_planted_manifest(data_root, tmp_path, monkeypatch):
    """HPC_DSGD_CACHE naming a file: one line naming the variable; a cache manifest that is a FIFO or nested
    200,000 deep is not trusted (no hang, no RecursionError): the cache is rebuilt."""
    fabricate(data_root)
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv(inet.CACHE_ENV, str(tmp_path / "afile"))
    with pytest.raises(DataError, match=f"HPC_DSGD_CACHE='{tmp_path / 'afile'}' is not a directory"):
        load_dataset("imagenet32", str(data_root))
    monkeypatch.delenv(inet.CACHE_ENV)
    load_dataset("imagenet32", str(data_root))
    man = data_root / "imagenet32_cache" / "manifest.json"
    for plant in (lambda: os.mkfifo(man), lambda: man.write_text("[" * 200_000 + "]" * 200_000)):
        man.unlink()
        plant()
        assert load_dataset("imagenet32", str(data_root)).train_x.shape == (40, 3, 32, 32)
        assert man.is_file() and json.loads(man.read_text())["format"] == inet.CACHE_FORMAT


def test_stop_signal_during_the_cache_build_leaves_nothing(data_root):
    """SIGTERM while the cache is built (a StopRequest installed, as the command line does before the
    config check): StopBeforeStart naming the step at the next source file, no cache directory left."""
    import signal

    from hpc_dsgd.signals import StopBeforeStart, StopRequest

    fabricate(data_root)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested()
        with pytest.raises(StopBeforeStart, match="SIGTERM during building the ImageNet-32 cache"):
            load_dataset("imagenet32", str(data_root))
    assert not (data_root / "imagenet32_cache").exists()


def test_labels_nested_through_the_pickle_memo_are_refused(data_root):
    """'labels' as a list of 1000 references to a list of 1000 references to [1] * 1000 (a few kB of pickle
    that numpy.asarray would expand into 8 GB), or a deeply nested key: refused naming the file."""
    ref = fabricate(data_root)
    inner = [1] * 1000
    mid = [inner] * 1000
    path = ref["train_dir"] / "train_data_batch_6"
    path.write_bytes(pickle.dumps({"data": ref["train_rows"][:4], "labels": [mid] * 1000}, protocol=2))
    assert path.stat().st_size < 50_000
    with pytest.raises(DataError, match=f"{path}: 'labels' is not a flat list or array of integers"):
        load_dataset("imagenet32", str(data_root))
    path.write_bytes(b"\x80\x02}" + b")" + b"\x85" * 100_000 + b"K\x01s.")  # {((((...)))): 1}, 100,000 deep
    with pytest.raises(DataError, match=f"{path} (holds|is damaged or not a pickle)"):
        load_dataset("imagenet32", str(data_root))
    assert not (data_root / "imagenet32_cache").exists()

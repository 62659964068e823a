"""ImageNet-32 (Chrabaszcz, Loshchilov & Hutter 2017) from its official pickle files, cached as .npy.

The official release (image-net.org, "Downsampled ImageNet 32x32") is ``Imagenet32_train.zip`` with
``train_data_batch_1`` ... ``train_data_batch_10`` and ``Imagenet32_val.zip`` with ``val_data``. Each is
a pickled dict: ``data`` is an (N, 3072) uint8 array whose row is the R, G and B 32x32 planes one after
another, ``labels`` are ints in 1..1000 (some releases add a ``mean`` image, unused here).

Reading:
- The pickles are read with `SafeUnpickler`: it admits only the numpy globals that rebuild an array, a
  dtype or a numpy scalar (and ``_codecs.encode`` restricted to latin-1, which protocol-2 pickles use for
  bytes) and refuses every other global with a DataError naming the file, so a data file can never run
  code (``pickle.load`` would call whatever the file names).
- On first use the ten train files and ``val_data`` are converted once into four memory-mappable .npy
  files (train/val images (N, 3, 32, 32) uint8, labels (N,) int64 in 0..999) plus ``manifest.json`` in
  ``<data_dir>/imagenet32_cache/`` (or ``$HPC_DSGD_CACHE/imagenet32_cache/``). The manifest holds each
  source file's size, mtime and SHA-256 and each array's shape and SHA-256. Every rank then maps the same
  files read-only (copy-on-write), so the ranks on a node share one copy in the page cache instead of
  unpickling 4 GB each. The cache is reused while every source file keeps its size and mtime (or, if
  only the mtime moved, its SHA-256), and rebuilt otherwise.
- Writes are atomic: the sources are unpickled one at a time and streamed into uniquely named temporary
  .npy files created exclusively (fileio.create_exclusive: a link planted at any name is never followed;
  memory: one source file at a time), which are fsync'ed and renamed into place only once every
  source has passed; the manifest is renamed last, so a reader never sees a partial cache. Builders on one node serialise
  on an ``flock`` of ``.lock`` (the others wait, then reuse the result); where the file system has no
  flock, the unique temporary names still keep concurrent builders from corrupting each other (the last
  rename wins, with identical content).
"""

from __future__ import annotations

import codecs
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import pickle
import reprlib
import struct
from contextlib import contextmanager

import numpy as np
import torch

from hpc_dsgd.data.base import DataError, ImageData
from hpc_dsgd.fileio import O_NOFOLLOW, atomic_write_text, create_exclusive, read_json_bounded
from hpc_dsgd.signals import StopBeforeStart, check_stop

IMAGENET32_TRAIN_FILES = tuple(f"train_data_batch_{k}" for k in range(1, 11))
IMAGENET32_VAL_FILE = "val_data"
IMAGENET32_FILES = IMAGENET32_TRAIN_FILES + (IMAGENET32_VAL_FILE,)
# the official zips unpack into these folders; the files may also lie directly in data_dir
IMAGENET32_SUBDIRS = ("", "Imagenet32_train", "Imagenet32_val")
IMAGENET32_CLASSES = 1000
CACHE_DIRNAME = "imagenet32_cache"
CACHE_ENV = "HPC_DSGD_CACHE"  # optional: a writable directory for the cache when data_dir is read-only
CACHE_FORMAT = 1
ARRAYS = ("train_x", "train_y", "val_x", "val_y")

HOW_TO_GET = (
    "Get Imagenet32_train.zip and Imagenet32_val.zip (the 'Downsampled ImageNet 32x32' python pickle "
    "release, Chrabaszcz et al. 2017) from https://image-net.org/download-images (login required) on a "
    "machine with internet access and unzip both into data_dir"
)


def _layout(root: str) -> str:
    return (f"expected {', '.join(IMAGENET32_TRAIN_FILES[:2])} ... {IMAGENET32_TRAIN_FILES[-1]} and "
            f"{IMAGENET32_VAL_FILE} in {root}/ (or in {root}/Imagenet32_train/ and {root}/Imagenet32_val/, as "
            "the official zips unpack)")


# ------------------------------------------------------------------------------------------------
# Restricted unpickling
# ------------------------------------------------------------------------------------------------
def _latin1_encode(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as protocol-2 pickles use it (a bytes object stored as latin-1 text); nothing else."""
    if not isinstance(obj, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode is admitted only for latin-1 text, not {encoding!r}")
    return codecs.encode(obj, "latin-1", errors)


def _plain_dtype(*args, **kwargs):
    """``numpy.dtype`` for plain (non-object) dtypes only."""
    dt = np.dtype(*args, **kwargs)
    if dt.hasobject:
        raise pickle.UnpicklingError(f"object dtype {dt} is not admitted")
    return dt


def _numpy_attr(names: tuple[str, ...], attr: str):
    """The first of ``names`` (numpy 2 moved numpy.core to numpy._core) that provides ``attr``."""
    import importlib

    for mod in names:
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy provides no {attr} in {names}")  # pragma: no cover


class _PickledArray(np.ndarray):
    """What a data file's ``numpy.ndarray`` global stands for: the class ``_reconstruct`` rebuilds an array
    as (its contents then come from the file's bytes), never a constructor a pickle may call itself:
    ``ndarray(shape, dtype, buffer, offset, strides)`` would make a huge zero-stride view of a few bytes,
    ``ndarray(shape)`` an allocation of any size. Arrays are checked and viewed as plain ndarrays after loading."""

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError("a call of numpy.ndarray(...) is not admitted (only arrays as numpy pickles them)")


_CORE = ("numpy._core.multiarray", "numpy.core.multiarray")
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")
# (module, name) -> the object handed to the unpickler. Everything else is refused.
_ADMITTED = {
    **{(m, "_reconstruct"): lambda: _numpy_attr(_CORE, "_reconstruct") for m in _CORE},  # ndarray.__reduce__
    **{(m, "scalar"): lambda: _numpy_attr(_CORE, "scalar") for m in _CORE},  # numpy scalars (e.g. int64 labels)
    **{(m, "_frombuffer"): lambda: _numpy_attr(_NUMERIC, "_frombuffer") for m in _NUMERIC},  # protocol 5 arrays
    ("numpy", "ndarray"): lambda: _PickledArray,
    ("numpy", "dtype"): lambda: _plain_dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` admits only the globals of `_ADMITTED` (numpy arrays, dtypes,
    scalars; builtin containers, ints, floats and strings need no global). ``persistent_load`` is refused."""

    def __init__(self, file, path: str) -> None:
        super().__init__(file, encoding="latin1")  # latin1: also reads Python-2 pickles of numpy arrays
        self.path = path

    def find_class(self, module: str, name: str):
        make = _ADMITTED.get((module, name))
        if make is None:
            raise DataError(f"ImageNet-32 file {self.path} refers to the Python global {module}.{name}, which a "
                            "data file has no reason to hold: refused without running it (only numpy arrays, "
                            "dtypes and scalars are admitted); the file is not an official ImageNet-32 file. "
                            + HOW_TO_GET)
        return make()

    def persistent_load(self, pid):
        raise DataError(f"ImageNet-32 file {self.path} uses pickle persistent ids: refused (not an official file)")


class _HashingReader(io.RawIOBase):
    """File wrapper that feeds every byte read through SHA-256 (one pass: hash and unpickle together)."""

    def __init__(self, f) -> None:
        self.f, self.h = f, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.f.readinto(b)
        self.h.update(memoryview(b)[:n])
        return n

    def finish(self) -> str:
        """Hash the rest of the file (bytes after the pickle's STOP) and return the hex digest."""
        while chunk := self.f.read(1 << 20):
            self.h.update(chunk)
        return self.h.hexdigest()


def safe_load(path: str) -> tuple[object, str]:
    """(object, sha256 of the file) of a pickle read with `SafeUnpickler`; DataError if it is not one."""
    with open(path, "rb") as raw:
        reader = _HashingReader(raw)
        try:
            obj = SafeUnpickler(io.BufferedReader(reader, 1 << 20), path).load()
        except DataError:
            raise
        except Exception as e:  # truncated, not a pickle, bad opcode, ...: all "damaged"
            raise DataError(f"ImageNet-32 file {path} is damaged or not a pickle ({type(e).__name__}: {e}). "
                            + HOW_TO_GET) from None
        digest = reader.finish()
    return obj, digest


def _stored_array(a, path: str, key: str, fsize: int):
    """`a` as a plain ndarray if it is one whose elements the file really holds: C-contiguous (no zero or
    overlapping strides) and no more bytes than the file has; anything else is returned unchanged."""
    if not isinstance(a, np.ndarray):
        return a
    if not a.flags.c_contiguous or a.nbytes > fsize:
        raise DataError(f"ImageNet-32 file {path}: {key!r} is a {a.dtype} {a.shape} array with strides {a.strides} "
                        f"({a.nbytes} bytes) in a file of {fsize} bytes: not an array the file holds (a contiguous "
                        f"N x 3072 uint8 array is expected); the file is not an official ImageNet-32 file. " + HOW_TO_GET)
    return a.view(np.ndarray)


def _rows_labels(obj, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Check one unpickled batch and return (N, 3, 32, 32) uint8 images and (N,) int64 labels in 0..999."""
    if not isinstance(obj, dict) or "data" not in obj or "labels" not in obj:
        keys = sorted(reprlib.repr(k) for k in list(obj)[:20]) if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"ImageNet-32 file {path} holds {keys}, expected a dict with 'data' (N x 3072 uint8) "
                        f"and 'labels' (1..1000). " + HOW_TO_GET)
    fsize = os.path.getsize(path)
    data = _stored_array(obj["data"], path, "data", fsize)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"ImageNet-32 file {path}: 'data' is {desc}, expected an N x 3072 uint8 array "
                        "(R, G, B 32x32 planes per row). " + HOW_TO_GET)
    raw = _stored_array(obj["labels"], path, "labels", fsize)
    if not isinstance(raw, (np.ndarray, list, tuple)) or (not isinstance(raw, np.ndarray) and not all(
            isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in raw)):  # a flat list: no nested
        raise DataError(f"ImageNet-32 file {path}: 'labels' is not a flat list or array of integers, expected "  # lists
                        f"{len(data)} integers in 1..1000. " + HOW_TO_GET)  # that numpy would expand to any size
    try:
        labels = np.asarray(raw, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        labels = np.zeros(0, dtype=np.int64) - 1
    if labels.shape != (len(data),):
        raise DataError(f"ImageNet-32 file {path}: 'labels' must be {len(data)} integers (one per image), got "
                        f"shape {labels.shape}. " + HOW_TO_GET)
    if len(labels) and (labels.min() < 1 or labels.max() > IMAGENET32_CLASSES):
        raise DataError(f"ImageNet-32 file {path}: labels range {labels.min()}..{labels.max()}, expected 1..1000. "
                        + HOW_TO_GET)
    return data.reshape(-1, 3, 32, 32), labels - 1


# ------------------------------------------------------------------------------------------------
# Files, cache, lock
# ------------------------------------------------------------------------------------------------
def imagenet32_files(root: str) -> dict[str, str]:
    """{official name: path} of the 11 files under ``root``; DataError naming what is missing."""
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise DataError(f"ImageNet-32 data_dir {root} does not exist: {_layout(root)}. {HOW_TO_GET}.")
    found, missing = {}, []
    for name in IMAGENET32_FILES:
        paths = [os.path.join(root, sub, name) for sub in IMAGENET32_SUBDIRS]
        hit = next((p for p in paths if os.path.isfile(p)), None)
        if hit is None:
            missing.append(name)
        else:
            found[name] = hit
    if missing:
        raise DataError(f"ImageNet-32 under {root} is incomplete: missing {', '.join(missing)}; {_layout(root)}. "
                        f"{HOW_TO_GET}.")
    return found


def cache_dir(root: str) -> str:
    """Where the converted arrays live: $HPC_DSGD_CACHE/imagenet32_cache if set, else beside the data."""
    env = os.environ.get(CACHE_ENV)
    if env and os.path.lexists(env) and not os.path.isdir(env):
        raise DataError(f"{CACHE_ENV}={env!r} is not a directory: set {CACHE_ENV} to a writable directory for "
                        f"the ImageNet-32 cache (e.g. node-local or scratch storage), or unset it to keep the cache "
                        f"beside the data")
    base = env or os.path.abspath(os.path.expanduser(root))
    return os.path.join(base, CACHE_DIRNAME)


def _stat(path: str) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


MANIFEST_MAX_BYTES = 1 << 20  # the cache's manifest is about 5 kB
CACHE_MANIFEST = "manifest.json"  # beside the arrays train_x.npy ... val_y.npy


def _read_manifest(cdir: str) -> dict | None:
    """The cache's manifest if it is a well-formed one of this format, else None (the cache is rebuilt). Read
    bounded (fileio.read_json_bounded): no FIFO, device or symlink is opened, so a planted one cannot make a
    reader wait or read forever."""
    try:
        man = read_json_bounded(os.path.join(cdir, CACHE_MANIFEST), MANIFEST_MAX_BYTES, "ImageNet-32 cache manifest")
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(man, dict) or man.get("format") != CACHE_FORMAT:
        return None
    arrays, fin = man.get("arrays"), lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ok = (isinstance(man.get("sources"), dict) and isinstance(arrays, dict) and set(arrays) == set(ARRAYS)
          and all(isinstance(r, dict) and isinstance(r.get("shape"), list) and all(isinstance(x, int) and x >= 0
                  for x in r["shape"]) and isinstance(r.get("bytes"), int) and isinstance(r.get("sha256_data"), str)
                  for r in arrays.values())
          and all(isinstance(man.get(k), list) and len(man[k]) == 3 and all(fin(v) and 0 <= v <= 1 for v in man[k])
                  for k in ("mean", "std")))
    return man if ok else None


def _cache_is_current(cdir: str, files: dict[str, str], man: dict | None) -> bool:
    """True if the manifest describes these source files and every array is present with its size."""
    try:
        return man is not None and _current(cdir, files, man)
    except (KeyError, TypeError, AttributeError):  # a manifest of another shape: rebuild
        return False


def _current(cdir: str, files: dict[str, str], man: dict) -> bool:
    if set(man["sources"]) != set(files):
        return False
    for name, path in files.items():
        rec, now = man["sources"][name], _stat(path)
        if rec["size"] != now["size"]:
            return False
        if rec["mtime_ns"] != now["mtime_ns"]:
            if _sha256_file(path) != rec["sha256"]:
                return False  # touched and changed
            rec["mtime_ns"] = now["mtime_ns"]  # touched, same bytes: keep the cache, remember the new mtime
            man["touched"] = True
    for a in ARRAYS:
        p = os.path.join(cdir, f"{a}.npy")
        if not os.path.isfile(p) or os.path.islink(p) or os.path.getsize(p) != man["arrays"][a]["bytes"]:
            return False
    for a in ("train_y", "val_y"):  # the labels are small (8 bytes an image): their checksum on every start
        if _label_digest(os.path.join(cdir, f"{a}.npy")) != man["arrays"][a]["sha256_data"]:
            return False  # damaged (labels out of range would index past the logits): rebuild
    return True


def _label_digest(path: str) -> str | None:
    """SHA-256 of a cached label array's elements (as _NpyWriter records it), None if it cannot be read."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


@contextmanager
def _node_lock(cdir: str):
    """Exclusive flock on cdir/.lock; a no-op where the file system does not support flock. A link planted
    at cdir/.lock is not followed (OSError ELOOP: the build stops, naming the cache directory)."""
    fd = os.open(os.path.join(cdir, ".lock"), os.O_RDWR | os.O_CREAT | O_NOFOLLOW, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # e.g. some parallel file systems mounted without flock
            if e.errno not in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL):
                raise
        yield
    finally:
        os.close(fd)  # releases the lock


class _NpyWriter:
    """Appends arrays to a .npy file as they come (no mapping, no copy of the whole array in memory) and
    writes the header, whose shape is known only at the end, into a fixed 128-byte slot (.npy format 1.0)."""

    HEADER = 128

    def __init__(self, path: str, dtype) -> None:
        """Writes into an exclusive temporary beside `path` (fileio.create_exclusive), renamed over it by the
        caller once every array is complete."""
        self.path, self.dtype = path, np.dtype(dtype)
        fd, self.tmp = create_exclusive(path)
        self.f = os.fdopen(fd, "wb")
        self.f.write(b"\0" * self.HEADER)
        self.h, self.n, self.item_shape = hashlib.sha256(), 0, ()

    def append(self, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a, dtype=self.dtype)
        self.f.write(a.data)
        self.h.update(a.data)
        self.n, self.item_shape = self.n + len(a), a.shape[1:]

    def close(self) -> dict:
        """Write the header, fsync, close; return the manifest record of the array."""
        shape = (self.n,) + tuple(self.item_shape)
        desc = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (np.lib.format.dtype_to_descr(self.dtype),
                                                                        shape)
        body = desc.ljust(self.HEADER - 10 - 1) + "\n"
        self.f.seek(0)
        self.f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1"))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        return {"shape": list(shape), "dtype": self.dtype.str, "sha256_data": self.h.hexdigest(),
                "bytes": os.path.getsize(self.tmp)}


def _build_cache(cdir: str, files: dict[str, str]) -> dict:
    """Unpickle the sources one at a time (restricted), stream them into uniquely named temporaries, and
    only when every file has passed rename the arrays into place, then the manifest. Returns the manifest.
    A damaged file stops the build with its DataError and the temporaries are removed: nothing is left."""
    keys = ARRAYS
    writers: dict[str, _NpyWriter] = {}
    try:
        for k in keys:
            writers[k] = _NpyWriter(os.path.join(cdir, f"{k}.npy"), np.uint8 if k.endswith("_x") else np.int64)
        sources = {}
        s1 = np.zeros(3, dtype=np.uint64)  # per-channel sum and sum of squares of the train pixels (exact)
        s2 = np.zeros(3, dtype=np.uint64)
        for name, path in files.items():  # train_data_batch_1..10, then val_data
            check_stop(f"building the ImageNet-32 cache {cdir} (nothing of it is kept)")
            before = _stat(path)
            obj, digest = safe_load(path)
            x, y = _rows_labels(obj, path)
            del obj
            split = "val" if name == IMAGENET32_VAL_FILE else "train"
            writers[f"{split}_x"].append(x)
            writers[f"{split}_y"].append(y)
            if split == "train":
                for j in range(0, len(x), 8192):  # bounded memory: 8192 images at a time
                    c = x[j:j + 8192]
                    s1 += c.sum(axis=(0, 2, 3), dtype=np.uint64)
                    v = c.astype(np.uint16)
                    np.multiply(v, v, out=v)  # 255^2 fits in uint16
                    s2 += v.sum(axis=(0, 2, 3), dtype=np.uint64)
            sources[name] = {**before, "sha256": digest}
            del x, y
        arrays = {k: writers[k].close() for k in keys}
        npix = max(arrays["train_x"]["shape"][0] * 32 * 32, 1)
        mean = s1.astype(np.float64) / npix
        std = np.sqrt(np.maximum(s2.astype(np.float64) / npix - mean ** 2, 0.0))
        for k in keys:
            os.replace(writers[k].tmp, writers[k].path)
        man = {"format": CACHE_FORMAT, "sources": sources, "arrays": arrays, "num_classes": IMAGENET32_CLASSES,
               "mean": [float(m) for m in mean / 255.0], "std": [float(sd) for sd in std / 255.0]}
        _write_manifest(cdir, man)
        return man
    finally:
        for w in writers.values():
            w.f.close()
            if os.path.lexists(w.tmp):
                os.unlink(w.tmp)


def _write_manifest(cdir: str, man: dict) -> None:
    """manifest.json, atomically (fileio: exclusive temporary, fsync, rename, fsync of the directory)."""
    atomic_write_text(os.path.join(cdir, CACHE_MANIFEST), json.dumps(man, indent=1, sort_keys=True))


def prepare_imagenet32(root: str) -> tuple[str, dict]:
    """Make sure the converted cache of ``root`` is current (build it if not); return (cache dir, manifest).

    Safe to call from every rank at once: builders serialise on a lock, the others then reuse the cache."""
    files = imagenet32_files(root)
    cdir = cache_dir(root)
    for _ in range(3):
        created = not os.path.isdir(cdir)
        try:
            os.makedirs(cdir, exist_ok=True)
            with _node_lock(cdir):
                man = _read_manifest(cdir)
                if not _cache_is_current(cdir, files, man):
                    man = _build_cache(cdir, files)
                elif man.pop("touched", False):
                    _write_manifest(cdir, man)  # so the next start need not re-hash the touched files
            break
        except FileNotFoundError:
            continue  # a peer that found the files damaged removed the fresh cache directory: try again
        except OSError as e:
            raise DataError(f"cannot write the ImageNet-32 cache in {cdir} ({e.strerror}): make data_dir writable "
                            f"or set {CACHE_ENV} to a writable directory (e.g. node-local or scratch storage)") from None
        except (DataError, StopBeforeStart):
            if created:  # damaged sources: leave nothing behind
                for leftover in (os.path.join(cdir, ".lock"), cdir):
                    try:
                        os.unlink(leftover) if leftover != cdir else os.rmdir(cdir)
                    except OSError:
                        pass
            raise
    else:
        raise DataError(f"the ImageNet-32 cache directory {cdir} keeps disappearing while it is being built")
    return cdir, man


def cache_status(root: str) -> tuple[str, dict | None]:
    """(cache directory, its manifest if the cache is current for the 11 files under ``root``, else None),
    reading only: nothing is built, locked or written. DataError if files are missing."""
    files = imagenet32_files(root)
    cdir = cache_dir(root)
    man = _read_manifest(cdir) if os.path.isdir(cdir) else None
    return cdir, man if _cache_is_current(cdir, files, man) else None


def check_imagenet32(root: str, build: bool = True) -> str | None:
    """Raise DataError (one message) unless the 11 official files are present and readable; converts them
    into the cache on first use (that is where damaged files are found). build=False writes nothing: the
    files must be there, and the cache, if not built yet, is left to the first run; then a line saying so
    is returned (None when the cache is ready)."""
    if build:
        prepare_imagenet32(root)
        return None
    cdir, man = cache_status(root)
    if man is not None:
        return None
    return (f"the ImageNet-32 cache {cdir} is not built yet: the first run builds it (minutes, several GB; "
            f"the files' contents are checked then)")


def load_imagenet32(root: str) -> ImageData:
    """ImageNet-32 as ImageData: train (1,281,167 for the official files) and val (50,000) as the test set,
    images (N, 3, 32, 32) uint8 mapped copy-on-write from the cache, labels int64 in 0..999."""
    cdir, man = prepare_imagenet32(root)
    t = {}
    for key in ARRAYS:
        path = os.path.join(cdir, f"{key}.npy")
        try:
            arr = np.load(path, mmap_mode="c", allow_pickle=False)  # private mapping: shared page cache
        except (OSError, ValueError) as e:
            raise DataError(f"ImageNet-32 cache file {path} cannot be read ({e}); delete {cdir} to rebuild it") from None
        rec = man["arrays"][key]
        if list(arr.shape) != rec["shape"] or arr.dtype.str != rec["dtype"]:
            raise DataError(f"ImageNet-32 cache file {path} is {arr.dtype} {arr.shape}, its manifest says "
                            f"{rec['dtype']} {rec['shape']}; delete {cdir} to rebuild it")
        if key.endswith("_y") and len(arr) and (arr.min() < 0 or arr.max() >= IMAGENET32_CLASSES):
            raise DataError(f"ImageNet-32 cache file {path} holds labels {arr.min()}..{arr.max()}, expected 0.."
                            f"{IMAGENET32_CLASSES - 1}: damaged; delete {cdir} to rebuild it")
        t[key] = torch.from_numpy(arr)
    return ImageData(name="imagenet32", train_x=t["train_x"], train_y=t["train_y"], test_x=t["val_x"],
                     test_y=t["val_y"], mean=tuple(man["mean"]), std=tuple(man["std"]),
                     num_classes=IMAGENET32_CLASSES)


def verify_cache(root: str) -> None:
    """Re-hash every cached array against its manifest (slow: reads the whole cache); DataError on mismatch."""
    cdir, man = prepare_imagenet32(root)
    for key, rec in man["arrays"].items():
        arr = np.load(os.path.join(cdir, f"{key}.npy"), mmap_mode="r", allow_pickle=False)
        if hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest() != rec["sha256_data"]:
            raise DataError(f"ImageNet-32 cache file {os.path.join(cdir, key)}.npy does not match its checksum; "
                            f"delete {cdir} to rebuild it")


def train_count(root: str) -> int:
    """Training images of the ImageNet-32 files under ``root``, from the cache's manifest (built if not current)."""
    return int(prepare_imagenet32(root)[1]["arrays"]["train_y"]["shape"][0])

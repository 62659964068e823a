"""File I/O every writer and reader shares: durable atomic writes that never follow a planted link, and bounded
reads that never hang, never follow a link and never read more than they allow.

Writes (`atomic_write` and its bytes/text/JSON forms): the new content goes into a temporary file with a unique
name in the target's directory, created with O_CREAT | O_EXCL | O_NOFOLLOW (so a link or file planted at any
name is never opened, let alone written through), then flush, fsync, rename over the target (a rename replaces
a link at the target itself, never its referent) and fsync of the directory. The temporary is removed on any
failure. Checkpoints, traces, the campaign state, the ImageNet-32 cache and the tokenizer all write this way.

Reads (`read_bounded`, `read_json_bounded`): O_NOFOLLOW | O_NONBLOCK (a FIFO cannot hang the reader), a regular
file only, at most `max_bytes`, JSON of bounded nesting. Errors are FileFormatError (a ValueError) with one line
naming the file.

Pure standard library: no torch, no numpy, no MPI.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import stat

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
JSON_MAX_DEPTH = 64  # nesting of any JSON file we read (manifests, state, stored configs)


class FileFormatError(ValueError):
    """A file that cannot be read as what it should be: the message names the file and what is wrong."""


def fsync_dir(path: str) -> None:
    """Make a rename in directory `path` durable. Some file systems refuse fsync on a directory, which is then
    not an error."""
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def create_exclusive(path: str, mode: int = 0o644) -> tuple[int, str]:
    """A new temporary file beside `path`: (descriptor open for writing, its name). The name is unique
    (`.NAME.tmp-PID-RANDOM`) and the file is created with O_EXCL | O_NOFOLLOW, so nothing that already exists
    (a planted link, another writer's temporary) is ever opened."""
    d, base = os.path.split(os.path.abspath(path))
    for _ in range(16):
        tmp = os.path.join(d, f".{base}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", path)


class _HashingWriter:
    """A binary file object that also hashes and counts what goes through it."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()


def atomic_write(path: str, write, mode: int = 0o644, sync_dir: bool = True) -> tuple[str, int]:
    """write(fileobj) into an exclusive temporary beside `path`, flush, fsync, rename over `path`, fsync the
    directory. Returns (sha256 hex, size) of what was written. On any error the temporary is removed and the
    previous `path` (if any) is untouched."""
    fd, tmp = create_exclusive(path, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            w = _HashingWriter(f)
            write(w)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    if sync_dir:
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    return w.sha.hexdigest(), w.size


def atomic_write_bytes(path: str, data: bytes, mode: int = 0o644) -> tuple[str, int]:
    return atomic_write(path, lambda f: f.write(data), mode)


def atomic_write_text(path: str, text: str, mode: int = 0o644) -> tuple[str, int]:
    return atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_json(path: str, obj, mode: int = 0o644) -> tuple[str, int]:
    return atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n", mode)


def open_regular(path: str) -> int:
    """A read-only descriptor of `path` that cannot hang on a FIFO nor follow a symlink; OSError (EINVAL)
    unless it is a regular file."""
    fd = os.open(path, os.O_RDONLY | O_NONBLOCK | O_NOFOLLOW)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", path)
    return fd


def read_bounded(path: str, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of regular file `path`, at most max_bytes; FileFormatError naming the file otherwise."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        raise FileFormatError(f"{what} {path} does not exist") from None
    except OSError as e:
        why = ("is a symbolic link (not followed)" if e.errno == errno.ELOOP else
               "is not a regular file" if e.errno == errno.EINVAL else f"cannot be read: {e.strerror or e}")
        raise FileFormatError(f"{what} {path} {why}") from None
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise FileFormatError(f"{what} {path} has {size} bytes, more than the {max_bytes} such a file can have")
        chunks, left = [], max_bytes + 1
        while left > 0:
            b = os.read(fd, min(left, 1 << 20))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise FileFormatError(f"{what} {path} grew beyond {max_bytes} bytes while being read")
        return data
    finally:
        os.close(fd)


def json_depth(data: bytes) -> int:
    """Nesting depth of a JSON text (strings skipped), in linear time without recursion."""
    depth = top = 0
    for c in re.sub(rb'[^\[\]{}]', b"", re.sub(rb'"(?:[^"\\]|\\.)*"', b'""', data)):
        if c in (0x5B, 0x7B):  # [ {
            depth += 1
            top = max(top, depth)
        elif c in (0x5D, 0x7D):  # ] }
            depth -= 1
    return top


def parse_json_bounded(data: bytes, max_depth: int = JSON_MAX_DEPTH):
    """json.loads of bounded nesting: ValueError beyond max_depth (never a RecursionError)."""
    depth = json_depth(data)
    if depth > max_depth:
        raise ValueError(f"nested {depth} levels deep (at most {max_depth})")
    return json.loads(data)


def read_json_bounded(path: str, max_bytes: int, what: str = "file", max_depth: int = JSON_MAX_DEPTH):
    """The JSON value in `path` (read_bounded, then parse_json_bounded); FileFormatError naming the file."""
    data = read_bounded(path, max_bytes, what)
    try:
        return parse_json_bounded(data, max_depth)
    except (ValueError, UnicodeDecodeError) as e:
        raise FileFormatError(f"{what} {path} is not valid JSON: {e}") from None

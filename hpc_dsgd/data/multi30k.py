"""Multi30k English-German (Elliott et al. 2016, task 1) from its official plain-text files, a subword
tokenizer trained on its training text, and padded batches.

Files (one sentence per line, UTF-8, line i of ``X.en`` translates to line i of ``X.de``; plain or gzipped):
``train.en/.de`` (29,000 pairs), ``val.en/.de`` (1,014), ``test_2016_flickr.en/.de`` (1,000), in
``data_dir/`` or ``data_dir/data/task1/raw/`` (the layout of https://github.com/multi30k/dataset, which
ships them as ``.gz``). Nothing is downloaded.

Tokenizer: byte-level BPE from the maintained Hugging Face ``tokenizers`` library, one vocabulary shared
by source and target (as Vaswani et al. 2017 share it for En-De, which is what lets the Transformer tie
its embeddings), trained on the training text of both languages only. Byte level means every string
round-trips exactly (no unknown token; German umlauts, any Unicode). It is saved as one JSON file beside
the run (``tokenizer.json``) and loaded from there on resume, with fixed ids for the specials:
``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2.
"""

from __future__ import annotations

import gzip
import os
import stat
import zlib
from dataclasses import dataclass

import torch

from hpc_dsgd.data.base import DataError
from hpc_dsgd.data.bpe import BOS, EOS, PAD
from hpc_dsgd.data.bpe import bpe as _bpe
from hpc_dsgd.fileio import atomic_write_bytes, atomic_write_text, read_bounded
from hpc_dsgd.rundir import RunDir
from hpc_dsgd.signals import check_stop, stop_watch_active

MULTI30K_SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}  # split -> file stem
MULTI30K_LANGS = ("en", "de")
MULTI30K_SUBDIRS = ("", os.path.join("data", "task1", "raw"))
HOW_TO_GET = ("get them from https://github.com/multi30k/dataset (data/task1/raw/: train, val and "
              "test_2016_flickr .en.gz/.de.gz) on a machine with internet access and copy them into data_dir")
DEFAULT_VOCAB = 8000  # joint BPE vocabulary; Multi30k's training text has about 10k word types per language
# Multi30k's longest sentence has about 300 characters; a line far longer (one 1 MB "word") would stall the
# BPE trainer for minutes to hours, so it is refused with its file and line number.
MAX_LINE_CHARS = 2000
MAX_FILE_BYTES = 64 << 20  # per file, after decompression (the official train.en is about 2 MB): no gzip bomb
TOKENIZER_MAX_BYTES = 64 << 20  # a tokenizer.json of 8000 subwords is about 0.5 MB


def _expected(root: str) -> str:
    names = [f"{stem}.{lang}" for stem in MULTI30K_SPLITS.values() for lang in MULTI30K_LANGS]
    return (f"expected {', '.join(names)} (each plain or .gz, one sentence per line, UTF-8) in {root}/ "
            f"or {os.path.join(root, MULTI30K_SUBDIRS[1])}/")


@dataclass
class ParallelText:
    """Aligned sentence pairs: ``src[i]`` translates to ``tgt[i]``."""

    src: list[str]
    tgt: list[str]

    def __len__(self) -> int:
        return len(self.src)


@dataclass
class Multi30k:
    train: ParallelText
    val: ParallelText
    test: ParallelText
    src_lang: str = "en"
    tgt_lang: str = "de"


def multi30k_files(root: str) -> dict[tuple[str, str], str]:
    """{(split, lang): path} of the six files; a plain file is preferred to its .gz. DataError if any is missing."""
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise DataError(f"Multi30k data_dir {root} does not exist: {_expected(root)}; {HOW_TO_GET}")
    found, missing = {}, []
    for split, stem in MULTI30K_SPLITS.items():
        for lang in MULTI30K_LANGS:
            cands = [os.path.join(root, sub, f"{stem}.{lang}{gz}") for sub in MULTI30K_SUBDIRS for gz in ("", ".gz")]
            hit = next((p for p in cands if os.path.isfile(p)), None)
            if hit is None:
                missing.append(f"{stem}.{lang}")
            else:
                found[(split, lang)] = hit
    if missing:
        raise DataError(f"Multi30k under {root} is incomplete: missing {', '.join(missing)}; {_expected(root)}; "
                        f"{HOW_TO_GET}")
    return found


def read_lines(path: str) -> list[str]:
    """The sentences of one file (plain or gzip): UTF-8, one per line, no blank line; DataError naming the file."""
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except (OSError, EOFError, zlib.error) as e:  # truncated or not gzip
        raise DataError(f"Multi30k file {path} cannot be read ({type(e).__name__}: {e}): damaged; {HOW_TO_GET}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise DataError(f"Multi30k file {path} holds more than {MAX_FILE_BYTES >> 20} MB of text (the official files "
                        f"hold about 2 MB); {HOW_TO_GET}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"Multi30k file {path}, line {line}: not UTF-8 ({e.reason}); the official files are UTF-8; "
                        f"{HOW_TO_GET}") from None
    lines = text.replace("\r\n", "\n").rstrip("\n").split("\n")
    if lines == [""]:
        raise DataError(f"Multi30k file {path} is empty; {HOW_TO_GET}")
    long = next((i for i, s in enumerate(lines, 1) if len(s) > MAX_LINE_CHARS), None)
    if long is not None:
        raise DataError(f"Multi30k file {path}, line {long}: {len(lines[long - 1])} characters, more than the "
                        f"{MAX_LINE_CHARS} a sentence may have (the official sentences have at most about 300); "
                        f"{HOW_TO_GET}")
    blank = next((i for i, s in enumerate(lines, 1) if not s.strip()), None)
    if blank is not None:
        raise DataError(f"Multi30k file {path}, line {blank}: blank line (one sentence per line expected; a blank "
                        f"line would misalign the translation pairs); {HOW_TO_GET}")
    return lines


def load_multi30k(root: str, src_lang: str = "en", tgt_lang: str = "de") -> Multi30k:
    """The three splits as aligned (source, target) sentence lists; DataError for missing or damaged files."""
    if {src_lang, tgt_lang} != set(MULTI30K_LANGS):
        raise DataError(f"Multi30k task 1 pairs en and de; got src_lang={src_lang!r}, tgt_lang={tgt_lang!r}")
    files = multi30k_files(root)
    out = {}
    for split in MULTI30K_SPLITS:
        src, tgt = read_lines(files[(split, src_lang)]), read_lines(files[(split, tgt_lang)])
        if len(src) != len(tgt):
            raise DataError(f"Multi30k {split} split is misaligned: {files[(split, src_lang)]} has {len(src)} lines, "
                            f"{files[(split, tgt_lang)]} has {len(tgt)}; line i of one must translate line i of the "
                            f"other; {HOW_TO_GET}")
        out[split] = ParallelText(src, tgt)
    return Multi30k(out["train"], out["val"], out["test"], src_lang, tgt_lang)


# ------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------
class SubwordTokenizer:
    """Byte-level BPE (Hugging Face ``tokenizers``) with ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2."""

    def __init__(self, tok) -> None:
        ids = [tok.token_to_id(s) for s in (PAD, BOS, EOS)]
        if ids != [0, 1, 2]:
            raise DataError(f"tokenizer has special token ids {dict(zip((PAD, BOS, EOS), ids))}, expected "
                            f"{PAD}=0, {BOS}=1, {EOS}=2")
        self.tok = tok
        self.pad_id, self.bos_id, self.eos_id = ids

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    @classmethod
    def train(cls, texts, vocab_size: int = DEFAULT_VOCAB, min_frequency: int = 2) -> "SubwordTokenizer":
        """Learn the merges from ``texts`` (an iterable of sentences; pass the training text of both languages).
        Under a StopRequest (a run's preparation) the training runs in a child process that a stop signal
        kills at once (StopBeforeStart); a native call in this process could not be interrupted."""
        from tokenizers import Tokenizer

        if vocab_size < 256 + 3:
            raise ValueError(f"vocab_size={vocab_size}: byte-level BPE needs at least 259 (256 bytes + 3 specials)")
        texts = list(texts)
        if stop_watch_active():
            return cls(Tokenizer.from_str(_bpe_in_child(texts, vocab_size, min_frequency)))
        return cls(_bpe(texts, vocab_size, min_frequency))

    def encode(self, text: str) -> list[int]:
        """Subword ids of one sentence, without specials."""
        return self.tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts)]

    def decode(self, ids) -> str:
        """Text of ``ids``: stops at the first ``<eos>``, drops ``<bos>`` and ``<pad>``."""
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        return self.tok.decode([i for i in ids if i not in (self.pad_id, self.bos_id)])

    def save(self, path: str) -> None:
        """Write the tokenizer as JSON, atomically (fileio: an exclusive temporary that never follows a planted
        link, fsync, rename)."""
        atomic_write_text(path, self.tok.to_str(pretty=True))

    @classmethod
    def load(cls, path: str) -> "SubwordTokenizer":
        from tokenizers import Tokenizer

        if not os.path.isfile(path):
            raise DataError(f"tokenizer file {path} does not exist")
        try:  # a regular file of bounded size (no FIFO or device), read once; JSON: vocabulary, merges, settings; no code
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(fd).st_mode) or os.fstat(fd).st_size > TOKENIZER_MAX_BYTES:
                    raise DataError(f"tokenizer file {path} is not a regular file of at most {TOKENIZER_MAX_BYTES >> 20} MB")
                text = f.read().decode("utf-8")
            tok = Tokenizer.from_str(text)
        except DataError:
            raise
        except OSError as e:
            raise DataError(f"tokenizer file {path} cannot be read ({e.strerror})") from None
        except Exception as e:  # tokenizers raises a plain Exception for a bad file; not UTF-8
            reason = " ".join(str(e).split())
            raise DataError(f"tokenizer file {path} is not a valid tokenizers JSON file ({reason})") from None
        return cls(tok)


def _bpe_in_child(texts: list[str], vocab_size: int, min_frequency: int) -> str:
    """_bpe in a child process (bpe.py run as a script: tokenizers only, no torch to import), polled for a
    stop request every 0.1 s (StopBeforeStart: the child is killed)."""
    import json
    import subprocess
    import sys

    what = "training the Multi30k tokenizer (nothing saved)"
    data = json.dumps({"texts": texts, "vocab_size": vocab_size, "min_frequency": min_frequency}).encode()
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpe.py")
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []  # not this directory's modules on sys.path
    p = subprocess.Popen([sys.executable, *safe_path, script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        first = True
        while True:
            try:
                out, err = p.communicate(data if first else None, timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                first = False
                check_stop(what)
        check_stop(what)  # the signal may have reached the child too
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    if p.returncode != 0:
        raise DataError(f"training the Multi30k tokenizer failed (exit {p.returncode}): "
                        f"{' '.join(err.decode(errors='replace').split()[-40:])}")
    return out.decode()


def copy_tokenizer(parent: str, path: str) -> None:
    """A branch's tokenizer: the parent run's file (a regular file of bounded size, not a link), written to
    `path` atomically (fileio). FileFormatError (a ValueError) naming the parent's file otherwise."""
    atomic_write_bytes(path, read_bounded(parent, TOKENIZER_MAX_BYTES, "tokenizer file"))


def tokenizer_for_run(run_dir: str, train: ParallelText, vocab_size: int = DEFAULT_VOCAB) -> SubwordTokenizer:
    """``run_dir/tokenizer.json`` if it exists (resume), else one trained on the training text of both
    languages and saved there. Call it on one rank, then let the others `SubwordTokenizer.load` the file."""
    path = RunDir(run_dir).tokenizer
    if os.path.isfile(path):
        return SubwordTokenizer.load(path)
    tok = SubwordTokenizer.train(train.src + train.tgt, vocab_size)
    os.makedirs(run_dir, exist_ok=True)
    tok.save(path)
    return tok


# ------------------------------------------------------------------------------------------------
# Encoded corpus and padded batches
# ------------------------------------------------------------------------------------------------
def pad_batch(seqs: list[list[int]], pad_id: int, length: int | None = None) -> torch.Tensor:
    """(B, T) int64, row i = seqs[i] followed by ``pad_id`` up to T = max length (or ``length``)."""
    T = max((len(s) for s in seqs), default=0) if length is None else length
    out = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s) > T:
            raise ValueError(f"sequence {i} has {len(s)} tokens, longer than the batch length {T}")
        out[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


@dataclass
class Batch:
    """One mini-batch of sentence pairs (teacher forcing)."""

    src: torch.Tensor  # (B, S) source ids + <eos>, padded
    tgt_in: torch.Tensor  # (B, T) <bos> + target ids, padded: the decoder input
    tgt_out: torch.Tensor  # (B, T) target ids + <eos>, padded: what the decoder must predict
    ntokens: int  # non-pad tokens of tgt_out

    def to(self, device) -> "Batch":
        return Batch(self.src.to(device), self.tgt_in.to(device), self.tgt_out.to(device), self.ntokens)


class EncodedPairs:
    """A split tokenized once: source and target id lists (truncated to ``max_len`` subwords each)."""

    def __init__(self, pairs: ParallelText, tok: SubwordTokenizer, max_len: int = 128) -> None:
        self.tok = tok
        self.src = [s[:max_len] for s in tok.encode_batch(pairs.src)]
        self.tgt = [t[:max_len] for t in tok.encode_batch(pairs.tgt)]

    def __len__(self) -> int:
        return len(self.src)

    def batch(self, indices) -> Batch:
        """The pairs at ``indices`` (e.g. a replica's shard of an epoch permutation) as one padded Batch."""
        t = self.tok
        idx = [int(i) for i in indices]
        src = [self.src[i] + [t.eos_id] for i in idx]
        tgt_in = [[t.bos_id] + self.tgt[i] for i in idx]
        tgt_out = [self.tgt[i] + [t.eos_id] for i in idx]
        return Batch(pad_batch(src, t.pad_id), pad_batch(tgt_in, t.pad_id), pad_batch(tgt_out, t.pad_id),
                     sum(len(s) for s in tgt_out))

    def batches(self, batch_size: int, indices=None):
        """Consecutive Batches of ``batch_size`` pairs over ``indices`` (default: all, in order)."""
        idx = list(range(len(self))) if indices is None else [int(i) for i in indices]
        for a in range(0, len(idx), batch_size):
            yield self.batch(idx[a:a + batch_size])


def train_count(root: str) -> int:
    """Training sentence pairs of the Multi30k files under ``root`` (read and checked as load_multi30k does)."""
    return len(load_multi30k(root).train)

"""A fabricated Multi30k in the official file format (for tests/serial and tests/mpi; no network)."""
from __future__ import annotations

import gzip
from pathlib import Path

SUBJ = [("A dog", "Ein Hund"), ("A man", "Ein Mann"), ("Two women", "Zwei Frauen"), ("A child", "Ein Kind"),
        ("A girl", "Ein Mädchen")]
VERB = [("runs", "läuft"), ("plays", "spielt"), ("sits", "sitzt"), ("jumps", "springt")]
PLACE = [("on the grass.", "auf dem Gras."), ("in the water.", "im Wasser."), ("near the street.", "an der Straße.")]


def corpus() -> list[tuple[str, str]]:
    """60 aligned English-German pairs, word-for-word translatable (a fabricated Multi30k)."""
    return [(f"{s} {v} {p}", f"{sd} {vd} {pd}") for s, sd in SUBJ for v, vd in VERB for p, pd in PLACE]


def fabricate(root: Path) -> dict:
    """train (48 pairs, plain) in root/; val (6, .gz) in root/; test_2016_flickr (6, .gz) in the
    repository layout data/task1/raw/, as https://github.com/multi30k/dataset ships it."""
    pairs = corpus()
    splits = {"train": pairs[:48], "val": pairs[48:54], "test_2016_flickr": pairs[54:]}
    raw = root / "data" / "task1" / "raw"
    raw.mkdir(parents=True)
    for stem, ps in splits.items():
        for j, lang in enumerate(("en", "de")):
            text = "\n".join(p[j] for p in ps) + "\n"
            if stem == "train":
                (root / f"{stem}.{lang}").write_text(text, encoding="utf-8")
            else:
                with gzip.open((raw if stem.startswith("test") else root) / f"{stem}.{lang}.gz", "wt",
                               encoding="utf-8") as f:
                    f.write(text)
    return splits

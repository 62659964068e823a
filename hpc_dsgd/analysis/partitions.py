"""The label distribution over the replicas (docs/partitions.md): read from a trace, or computed from a config.

    python tools/figures.py partition runs/x/trace.h5 -o labels.png     # the run's recorded histograms
    python tools/figures.py partition configs/x.toml -o labels.png      # before any run (loads the labels)

Up to 20 classes: one stacked bar per replica (its samples per class); more (ImageNet-32): a heat map of each
replica's class proportions. The title states the partition and its size summary.
"""
from __future__ import annotations

import os

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..trace import TraceError  # noqa: E402
from .runs import find_traces  # noqa: E402

STACK_MAX_CLASSES = 20  # more classes than this: a heat map instead of stacked bars
DPI = 100
SIZE = (8.0, 4.5)  # inches


def read_partition(path: str) -> tuple[np.ndarray, dict]:
    """(label histogram (n, classes), {partition, eval_set, dataset, n, ...}) from a trace file or run directory."""
    paths = find_traces([path])
    if not paths:
        raise TraceError(f"no trace in {path!r}")
    tpath = paths[0]
    try:
        with h5py.File(tpath, "r") as f:
            if "partition/label_histogram" not in f:
                raise TraceError(f"trace {tpath!r} holds no /partition/label_histogram: written before partitions "
                                 "existed, or by a workload without class labels")
            hist = np.asarray(f["partition/label_histogram"][()], dtype=np.int64)
            meta = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()
                    if k in ("partition", "eval_set", "n", "train_samples", "partition_draws")}
    except OSError as e:
        raise TraceError(f"trace {tpath!r} is not a readable HDF5 file ({e})") from None
    return hist, meta


def config_partition(path: str, overrides=()) -> tuple[np.ndarray, dict]:
    """(label histogram, meta) of the partition a config would train on (loads the data set's labels)."""
    from ..config import load_config
    from ..data import load_dataset, make_partition

    cfg = load_config(path, list(overrides), ranks=1)
    if cfg.dataset == "multi30k":
        raise ValueError(f"{path}: dataset multi30k has no class labels to draw")
    data = load_dataset(cfg.dataset, cfg.data_dir or None)
    part, _ = make_partition(cfg, data.train_y.numpy(), data.num_classes)
    return part.histogram(), {"partition": part.kind, "n": cfg.n, "train_samples": part.num_train,
                              "partition_draws": part.draws}


def label_distribution(source: str, out_png: str, overrides=()) -> str:
    """Draw every replica's label histogram: `source` is a trace, a run directory or a TOML config."""
    hist, meta = config_partition(source, overrides) if source.endswith(".toml") else read_partition(source)
    n, classes = hist.shape
    sizes = hist.sum(axis=1)
    present = (hist > 0).sum(axis=1)
    fig, ax = plt.subplots(figsize=SIZE)
    if classes <= STACK_MAX_CLASSES:
        cmap = plt.get_cmap("tab20" if classes > 10 else "tab10")
        bottom = np.zeros(n)
        for c in range(classes):
            ax.bar(np.arange(n), hist[:, c], bottom=bottom, color=cmap(c % cmap.N), width=0.85, label=str(c))
            bottom += hist[:, c]
        ax.set_ylabel("training samples")
        ax.legend(title="class", fontsize=7, ncol=2, loc="upper right")
    else:
        frac = hist / np.maximum(sizes[:, None], 1)
        im = ax.imshow(frac.T, aspect="auto", interpolation="nearest", cmap="viridis", origin="lower")
        fig.colorbar(im, ax=ax, label="fraction of the replica's samples")
        ax.set_ylabel("class")
    ax.set_xlabel("replica")
    ax.set_title(f"partition {meta.get('partition', '?')}, n={n}: samples per replica {sizes.min()}..{sizes.max()}, "
                 f"classes per replica {present.min()}..{present.max()} of {classes}", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=DPI)
    plt.close(fig)
    return out_png

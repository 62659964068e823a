"""Loss-surface slices around a checkpoint's averaged model (Li et al. 2018, "Visualizing the Loss
Landscape of Neural Nets"), as in Zhu et al.'s Figure 4 (D-SGD against C-SGD).

    python tools/figures.py surface runs/csgd/checkpoints/ckpt-X runs/ring/checkpoints/ckpt-Y \
        --samples 500 --steps 21 --span 1.0 -o surface1d.png --contour surface2d.png

f(a)    = L(theta + a d)            one direction  (training loss and accuracy, 1-D curve per run)
f(a, b) = L(theta + a d1 + b d2)    two directions (contour, one panel per run)

Directions are Gaussian, seeded, and FILTER-NORMALISED: for every weight tensor with more than one
dimension, each filter d[i] (slice along the output dimension) is rescaled to the norm of the
model's filter theta[i]; one-dimensional parameters (biases, BN scale and shift) get direction 0,
as in Li et al.'s `ignore='biasbn'`. BN runs in evaluation mode with the checkpoint's averaged
running statistics, on a fixed, seeded subset of training images without augmentation.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F


def filter_normalized_direction(model: torch.nn.Module, seed: int) -> torch.Tensor:
    """A flat (d,) direction over model.parameters(), filter-normalised to the model's filter norms."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for p in model.parameters():
        w = p.detach().to(torch.float64).cpu()
        if w.dim() <= 1:
            parts.append(torch.zeros_like(w).reshape(-1))
            continue
        d = torch.randn(w.shape, generator=g, dtype=torch.float64)
        wn = w.reshape(w.shape[0], -1).norm(dim=1)
        dn = d.reshape(d.shape[0], -1).norm(dim=1)
        d = d * (wn / dn.clamp_min(1e-30)).view(-1, *([1] * (w.dim() - 1)))
        parts.append(d.reshape(-1))
    return torch.cat(parts)


def _params_vector(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).to(torch.float64).cpu() for p in model.parameters()])


def _set_params(model, v: torch.Tensor) -> None:
    off = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(v[off:off + p.numel()].view_as(p).to(p.dtype))
            off += p.numel()


@torch.no_grad()
def loss_acc(model, batches) -> tuple[float, float]:
    """(mean cross-entropy, accuracy %) of `model` (evaluation mode) over the (x, y) batches."""
    model.eval()
    loss, correct, n = 0.0, 0, 0
    for x, y in batches:
        out = model(x)
        loss += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        n += len(y)
    return loss / n, 100.0 * correct / n


def slice_1d(model, direction: torch.Tensor, alphas, batches) -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy at theta + a d for every a; the model's parameters are restored afterwards."""
    theta = _params_vector(model)
    loss, acc = [], []
    try:
        for a in alphas:
            _set_params(model, theta + float(a) * direction)
            lv, av = loss_acc(model, batches)
            loss.append(lv)
            acc.append(av)
    finally:
        _set_params(model, theta)
    return np.asarray(loss), np.asarray(acc)


def slice_2d(model, d1: torch.Tensor, d2: torch.Tensor, alphas, betas, batches) -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy on the grid theta + a d1 + b d2, shape (len(betas), len(alphas))."""
    theta = _params_vector(model)
    loss = np.empty((len(betas), len(alphas)))
    acc = np.empty_like(loss)
    try:
        for i, b in enumerate(betas):
            for j, a in enumerate(alphas):
                _set_params(model, theta + float(a) * d1 + float(b) * d2)
                loss[i, j], acc[i, j] = loss_acc(model, batches)
    finally:
        _set_params(model, theta)
    return loss, acc


def averaged_model(checkpoint: str, data_dir: str | None = None):
    """(config, model holding the checkpoint's averaged row, data) in one process, on the CPU."""
    from ..checkpoint import load_checkpoint, verify_checkpoint
    from ..compat import model_sizes, saved_config
    from ..config import FIELDS, from_dict
    from ..data import load_dataset
    from ..models import build_model
    from ..preflight import check_inputs
    from ..sharpness import load_row
    from ..workloads.spec import sharpness_datasets, spec_of

    man = verify_checkpoint(checkpoint, sizes=model_sizes)
    cfg_d = {k: v for k, v in saved_config(man["meta"]).items() if k in FIELDS}
    if data_dir:
        cfg_d["data_dir"] = data_dir
    cfg = from_dict(cfg_d, ranks=1)
    check_inputs(cfg)  # the data (and what else the run named: references, branch_from)
    if not spec_of(cfg.dataset).supports_sharpness:  # the same measurement set-up as the sharpness study
        raise ValueError(f"{checkpoint} is a {cfg.dataset} ({spec_of(cfg.dataset).task}) run: loss surfaces are drawn "
                         f"for checkpoints of {', '.join(sharpness_datasets())}")
    data = load_dataset(cfg.dataset, cfg.data_dir or None)
    _, tensors, _, _ = load_checkpoint(checkpoint, list(range(cfg.n)), "cpu", verify=False)
    row = tensors["X"].to(torch.float64).mean(0)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.num_classes, cfg.width)
    return cfg, load_row(model, row.to(torch.float32)), data


def _label(cfg) -> str:
    pols = sorted(set(cfg.policies))
    how = "C-SGD" if pols == ["csgd"] else f"D-SGD {cfg.topology}" if pols == ["gossip"] else \
        f"{cfg.topology} {'/'.join(cfg.policies)}"
    return f"{how}, n={cfg.n} x b={cfg.batch_size}, seed {cfg.seed}"


def surface_figures(checkpoints: list[str], out_png: str, contour_png: str | None = None, samples: int = 500,
                    steps: int = 21, span: float = 1.0, seed: int = 0, data_dir: str | None = None) -> list[str]:
    """1-D slices of every checkpoint on one figure (loss and accuracy panels), optionally a 2-D contour
    per checkpoint; the same direction seed for every run (each direction normalised to its own model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..sharpness import CHUNK, sharpness_subset

    if steps < 2:
        raise ValueError(f"--steps {steps}: need >= 2 points per axis")
    if span <= 0:
        raise ValueError(f"--span {span}: need a positive half-width")
    alphas = np.linspace(-span, span, steps)
    runs = []
    for ck in checkpoints:
        cfg, model, data = averaged_model(ck, data_dir)
        if not 1 <= samples <= len(data.train_y):
            raise ValueError(f"--samples {samples}: need 1..{len(data.train_y)} (the training set size)")
        from ..data.augment import normalise

        idx = sharpness_subset(seed, len(data.train_y), samples)
        batches = [(normalise(data.train_x[idx[s:s + CHUNK]], data.mean, data.std),
                    data.train_y[idx[s:s + CHUNK]]) for s in range(0, len(idx), CHUNK)]
        d1 = filter_normalized_direction(model, seed)
        loss, acc = slice_1d(model, d1, alphas, batches)
        grid = None
        if contour_png:
            d2 = filter_normalized_direction(model, seed + 1)
            grid = slice_2d(model, d1, d2, alphas, alphas, batches)[0]
        runs.append((f"{cfg.name} {os.path.basename(os.path.normpath(ck))}: {_label(cfg)}", loss, acc, grid))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12.0, 4.5))
    for lab, loss, acc, _ in runs:
        a1.plot(alphas, loss, lw=1.3, label=lab)
        a2.plot(alphas, acc, lw=1.3, label=lab)
    a1.set_xlabel(r"$\alpha$ (filter-normalised direction)")
    a1.set_ylabel(f"training loss ({samples} images)")
    a2.set_xlabel(r"$\alpha$")
    a2.set_ylabel("training accuracy (%)")
    a1.legend(fontsize=7)
    fig.suptitle(f"Loss along one random direction around the averaged model (seed {seed})")
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    written = [out_png]
    if contour_png:
        plt.close(draw_contours(contour_png, alphas, [(lab, grid) for lab, _, _, grid in runs], samples, seed))
        written.append(contour_png)
    return written


def contour_levels(lo: float, hi: float, count: int = 16) -> np.ndarray:
    """`count` increasing levels from just above the minimum lo to hi, LOG-spaced in the height above lo
    (from (hi - lo) / 1000 up to hi - lo), so that the basin around the minimum gets as many contours as
    the walls; linear spacing puts them all on the walls. Evenly spaced if the slice is flat."""
    if not hi > lo:
        return np.array([lo, lo + 1.0])
    return lo + np.geomspace((hi - lo) * 1e-3, hi - lo, count)


def draw_contours(path: str, alphas: np.ndarray, runs: list[tuple[str, np.ndarray]], samples: int, seed: int):
    """One panel per run of the 2-D slice: filled contours at levels shared by every panel (contour_levels
    of the smallest and largest loss of all grids), one colorbar for all, every third line labelled with
    its loss (not the small innermost rings), the averaged model (0, 0) and each grid's minimum marked and
    given in the title (wrapped to the panel), no legend over the contours.
    Saved to path; returns the figure (the caller closes it)."""
    import textwrap

    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm

    lo = min(float(g.min()) for _, g in runs)
    hi = max(float(g.max()) for _, g in runs)
    levels = contour_levels(lo, hi)
    cmap = plt.get_cmap("viridis")
    norm = BoundaryNorm(np.concatenate(([lo], levels)), cmap.N, extend="neither")
    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs) + 1.2, 4.8), squeeze=False, layout="constrained")
    filled = None
    for ax, (lab, grid) in zip(axes[0], runs):
        filled = ax.contourf(alphas, alphas, grid, levels=np.concatenate(([lo], levels)), cmap=cmap, norm=norm)
        lines = ax.contour(alphas, alphas, grid, levels=levels, colors="white", linewidths=0.6)
        ax.clabel(lines, levels=levels[4::3], inline=True, inline_spacing=2, fmt="%.3g", fontsize=6)  # not the
        ax.plot([0], [0], marker="+", color="red", ms=9, mew=1.5, ls="none")  # small rings around the markers
        i, j = np.unravel_index(np.argmin(grid), grid.shape)
        ax.plot([alphas[j]], [alphas[i]], marker="x", color="orange", ms=6, mew=1.2, ls="none")
        ax.set_title("\n".join(textwrap.wrap(lab, 56) + [f"loss {grid[len(alphas) // 2, len(alphas) // 2]:.3g} at +, "
                                                         f"minimum {grid.min():.3g} at x ({alphas[j]:.2g}, {alphas[i]:.2g})"]),
                     fontsize=8)
        ax.set_xlabel(r"$\alpha$ (direction 1)")
        ax.set_ylabel(r"$\beta$ (direction 2)")
        ax.set_aspect("equal")
    cb = fig.colorbar(filled, ax=axes[0].tolist(), shrink=0.9, pad=0.02, ticks=levels[::3])
    cb.ax.set_yticklabels([f"{v:.3g}" for v in levels[::3]], fontsize=7)
    cb.set_label(f"training loss ({samples} images); levels log-spaced above the minimum {lo:.3g}", fontsize=8)
    fig.suptitle(f"Training loss on a 2-D slice around the averaged model + (filter-normalised directions, seed {seed})",
                 fontsize=9)
    fig.savefig(path, dpi=100)
    return fig

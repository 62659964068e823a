"""The paper's tables in terms of config keys: the layouts of Kong et al.'s Tables 1-7 (rows, columns, headers),
which experiment fills each cell, and the paper's own values; `build_preset` fills a layout from the experiments
of a runs frame (cells.experiments), `filled_presets` says which presets a list of configs would fill."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from .cells import EMPTY, CellStats, Experiment
from .runs import CIFAR_FRACTIONS, phase_epochs

IMAGENET_FRACTIONS = (1 / 3, 2 / 3, 8 / 9)  # ... and at 1/3, 2/3, 8/9 (ImageNet-32)


def phase_levels(cfg: dict) -> list:
    """Per phase: 0.0 = exact averaging (allreduce, or any gossip on the complete graph),
    1.0 = plain D-SGD (policy gossip, or target with factor 1: the paper's 'Xi_max' column),
    f = target factor x Xi_max; 'adaptive:f' for adaptive targets (no paper table uses them here)."""
    fr = cfg.get("decay_fractions", list(CIFAR_FRACTIONS))
    pols = cfg.get("policies") or ["gossip"] * (len(fr) + 1)
    facs = cfg.get("target_factors") or []
    exact = cfg.get("topology") == "complete"
    out = []
    for k, pol in enumerate(pols):
        f = float(facs[k]) if k < len(facs) and facs[k] is not None else 1.0
        if pol == "allreduce" or exact:
            out.append(0.0)
        elif pol == "gossip":
            out.append(1.0)
        elif pol == "target":
            out.append(f)
        else:
            out.append(f"{pol}:{f:g}")
    return out


def _levels_are(cfg, want) -> bool:
    lv = phase_levels(cfg)
    if len(lv) != len(want) or any(isinstance(x, str) for x in lv):
        return False
    if not all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(lv, want)):
        return False
    controlled = any(p == "target" and not math.isclose(x, 1.0) for p, x in zip(cfg.get("policies", []), lv))
    if controlled and cfg.get("control_signal", "xi") != "xi":
        return False  # the paper's Tables 1-7 control the exact Xi (Theta control is its Tables 8-9)
    return all(x == 0.0 for x in want) or cfg.get("topology") == "ring"


def _base(cfg, imagenet=False, momentum=True, fractions=True) -> bool:
    if (cfg.get("dataset") == "imagenet32") != imagenet:
        return False
    if (float(cfg.get("momentum", 0.9)) > 0) != momentum:
        return False
    if fractions:
        want = IMAGENET_FRACTIONS if imagenet else CIFAR_FRACTIONS
        return _equal_tol(cfg.get("decay_fractions", list(CIFAR_FRACTIONS)), want)
    return True


def _equal_tol(a, b, tol=1e-6) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


XI = "Ξ_max"
FACTOR_LABEL = {1.0: XI, 0.5: "1/2 " + XI, 0.25: "1/4 " + XI, 0.125: "1/8 " + XI, 0.0: "0 " + XI}


@dataclass
class Layout:
    """Exactly the paper's table: corner label, row labels, column groups (label, column labels)."""

    name: str  # "table2"
    title: str  # "Table 2"
    caption: str
    corner: str
    rows: list[str]
    groups: list[tuple[str, list[str]]]  # one group with label "" = a plain one-row header

    @property
    def columns(self) -> list[tuple[str, str]]:
        return [(g, c) for g, cols in self.groups for c in cols]


@dataclass
class Preset:
    layout: Layout
    cell: Callable  # (cfg, row index, column index, options) -> bool: does this experiment fill the cell
    baselines: list = field(default_factory=list)  # [(label, (cfg, row, options) -> bool, paper per row)]
    default_n: tuple = ()
    dec_phase: list | None = None  # dec-phase presets: per column (phase k, 1-based; target factor)


def _dec_phase_preset(name, title, caption, corner, ns, nphases, shown_phases, imagenet, momentum):
    factors = (1.0, 0.5, 0.25)
    cols = [(k, f) for k in shown_phases for f in factors]

    def cell(cfg, r, c, opt):
        k, f = cols[c]
        want = [0.0] * nphases
        want[k] = f
        return _base(cfg, imagenet, momentum) and cfg.get("n") == ns[r] and _levels_are(cfg, want)

    layout = Layout(name, title, caption, corner, [f"n={n}" for n in ns],
                    [(f"dec-phase-{k + 1}", [FACTOR_LABEL[f] for f in factors]) for k in shown_phases])
    base = [
        ("All-Reduce", lambda cfg, r, o: _base(cfg, imagenet, momentum) and cfg.get("n") == ns[r]
         and _levels_are(cfg, [0.0] * nphases)),
        ("D-SGD (ring, w/o control)", lambda cfg, r, o: _base(cfg, imagenet, momentum) and cfg.get("n") == ns[r]
         and _levels_are(cfg, [1.0] * nphases)),
    ]
    return Preset(layout, cell, base, dec_phase=[(k + 1, f) for k, f in cols])


def _prolonged(cfg, e1, opt) -> bool:
    """Tables 6-7: phase 1 lasts e1 epochs, phases 2 and 3 share `later` epochs equally (paper: 75 + 75)."""
    later = opt.get("later_epochs", 150)
    ep = phase_epochs(cfg)
    return len(ep) == 3 and ep[0] == e1 and ep[1] == ep[2] == round(later / 2)


def _prolonged_n32(cfg, e1, levels, opt) -> bool:
    """Tables 6-7 cell: CIFAR recipe, n = 32, phase 1 prolonged to e1 epochs, these phase levels."""
    return _base(cfg, fractions=False) and cfg.get("n") == 32 and _prolonged(cfg, e1, opt) and _levels_are(cfg, levels)


def _make_presets() -> dict[str, Preset]:
    P = {}
    # Table 1: All-Reduce vs D-SGD on a ring, n = 16, 32, 64.
    ns1 = (16, 32, 64)

    def t1(cfg, r, c, opt):
        want = [0.0] * 3 if c == 0 else [1.0] * 3
        return _base(cfg) and cfg.get("n") == ns1[r] and _levels_are(cfg, want)

    P["table1"] = Preset(Layout("table1", "Table 1",
                                "Significant generalization gap for decentralized training on a sparse ring "
                                "topology (ResNet-20 on CIFAR-10 with n in {16, 32, 64} workers). Test top-1 "
                                "accuracies averaged over three seeds with fine-tuned learning rates.",
                                "", [f"n={n}" for n in ns1], [("", ["AllReduce (complete)", "D-SGD (ring)"])]), t1)
    P["table2"] = _dec_phase_preset(
        "table2", "Table 2", "The impact of consensus distance of different phases on generalization performance "
        "(test top-1 accuracy) of training ResNet-20 on CIFAR-10 on ring.",
        "# nodes \\ target Ξ", (32, 64), 3, (0, 1, 2), False, True)
    P["table3"] = _dec_phase_preset(
        "table3", "Table 3", "The impact of different consensus distances on generalization for different phases "
        "of training ResNet-20-3 on ImageNet-32 on ring (paper: two seeds).",
        "# nodes \\ target Ξ", (16, 32), 4, (0, 1, 2, 3), True, True)
    P["table4"] = _dec_phase_preset(
        "table4", "Table 4", "The impact of consensus distance on generalization performance with vanilla SGD "
        "(without momentum) (test top-1 accuracy) of training ResNet-20 on CIFAR-10 on ring.",
        "# nodes \\ target Ξ", (32, 64), 3, (0, 1), False, False)

    # Table 5: phase-1 target (rows) x phase-2 target (columns), phase 3 All-Reduce, n = 32.
    f5r, f5c = (0.5, 0.25, 0.125), (1.0, 0.5, 0.25)

    def t5(cfg, r, c, opt):
        return _base(cfg) and cfg.get("n") == 32 and _levels_are(cfg, [f5r[r], f5c[c], 0.0])

    P["table5"] = Preset(Layout("table5", "Table 5",
                                "Quality propagation across training phases with different consensus distances on "
                                "ResNet-20 for CIFAR-10 (Ring with n = 32). In phase-1 and phase-2, the model "
                                "parameters reach inexact consensus of different target consensus distance Ξ, while "
                                "phase-3 performs All-Reduce on model parameters.",
                                "phase-1 \\ phase-2", [FACTOR_LABEL[f] for f in f5r],
                                [("", [FACTOR_LABEL[f] for f in f5c])]), t5)

    # Table 6: dec-phase-1 target (rows) x phase-1 epochs (columns), n = 32.
    f6 = (1.0, 0.5, 0.25)

    def t6(cfg, r, c, opt):
        e1 = opt.get("phase1_epochs", (150, 200, 250))[c]
        return _prolonged_n32(cfg, e1, [f6[r], 0.0, 0.0], opt)

    P["table6"] = Preset(Layout("table6", "Table 6",
                                "The impact of different numbers of training epochs (at phase-1) on generalization, "
                                "for training ResNet-20 on CIFAR-10 (dec-phase-1 with n = 32). The number of epochs "
                                "at phase-1 is chosen from {150, 200, 250}, while the other training setting is "
                                "identical to that of dec-phase-1 in Table 2.",
                                "target Ξ", [FACTOR_LABEL[f] for f in f6],
                                [("training epochs at phase-1", ["150", "200", "250"])]), t6)

    # Table 7: phase-1 epochs (rows) x phase-1 target (columns; 0 = All-Reduce), phases 2-3 gossip, n = 32.
    f7 = (1.0, 0.5, 0.25, 0.125, 0.0)

    def t7(cfg, r, c, opt):
        e1 = opt.get("phase1_epochs", (150, 200, 250))[r]
        return _prolonged_n32(cfg, e1, [f7[c], 1.0, 1.0], opt)

    P["table7"] = Preset(Layout("table7", "Table 7",
                                "The importance of phase-1 for training ResNet-20 on CIFAR-10 (n=32), in terms of "
                                "(1) target consensus distance and (2) the number of training epochs. In phase-2 and "
                                "phase-3, we perform decentralized training (w/o consensus distance control).",
                                "# of epochs \\ target Ξ", ["150", "200", "250"],
                                [("", [FACTOR_LABEL[f] for f in f7])]), t7)
    return P


PRESETS = _make_presets()


def _pv(text: str) -> list:
    """'91.78 0.35 | 92.36 0.21' -> [(91.78, 0.35), (92.36, 0.21)]."""
    return [tuple(float(x) for x in cell.split()) for cell in text.split("|")]


# The paper's own numbers (test top-1 %, mean, std), transcribed from Kong et al., ICML 2021, row-major in
# the layout above. "baselines" are the values quoted in the table captions, per row.
PAPER_VALUES = {
    "table1": {"source": "Kong et al. (ICML 2021), Table 1", "cells": [
        _pv("92.91 0.12 | 92.40 0.10"),
        _pv("92.82 0.27 | 91.81 0.09"),
        _pv("92.71 0.11 | 89.58 0.20")]},
    "table2": {"source": "Kong et al. (ICML 2021), Table 2", "cells": [
        _pv("91.78 0.35 | 92.36 0.21 | 92.74 0.10 | 93.04 0.01 | 92.99 0.30 | 92.87 0.11 | 92.60 0.00 | "
            "92.82 0.21 | 92.85 0.24"),
        _pv("90.31 0.12 | 92.18 0.07 | 92.45 0.17 | 93.14 0.04 | 92.94 0.10 | 92.79 0.07 | 92.23 0.12 | "
            "92.50 0.09 | 92.60 0.10")],
        "baselines": {"All-Reduce": _pv("92.82 0.27 | 92.71 0.11"),
                      "D-SGD (ring, w/o control)": _pv("91.74 0.15 | 89.87 0.12")}},
    "table3": {"source": "Kong et al. (ICML 2021), Table 3", "cells": [
        _pv("51.22 0.08 | 51.79 0.10 | 51.71 0.03 | 51.59 0.02 | 51.67 0.01 | 51.65 0.13 | 51.80 0.10 | "
            "51.81 0.13 | 51.81 0.04 | 51.72 0.02 | 51.76 0.01 | 51.74 0.06"),
        _pv("50.76 0.18 | 51.27 0.07 | 51.60 0.21 | 51.39 0.07 | 51.59 0.04 | 51.66 0.12 | 51.79 0.06 | "
            "51.73 0.10 | 51.77 0.10 | 51.70 0.02 | 51.71 0.02 | 51.70 0.02")],
        "baselines": {"All-Reduce": _pv("51.74 0.06 | 51.98 0.37"),
                      "D-SGD (ring, w/o control)": _pv("51.04 0.06 | 50.17 0.04")}},
    "table4": {"source": "Kong et al. (ICML 2021), Table 4", "cells": [
        _pv("90.51 0.05 | 90.74 0.14 | 90.88 0.37 | 90.64 0.18 | 90.55 0.19 | 90.57 0.17"),
        _pv("88.80 0.03 | 89.89 0.03 | 90.43 0.05 | 90.63 0.37 | 90.46 0.15 | 90.63 0.25")],
        "baselines": {"All-Reduce": _pv("90.64 0.19 | 90.58 0.26"),
                      "D-SGD (ring, w/o control)": _pv("90.30 0.14 | 88.92 0.23")}},
    "table5": {"source": "Kong et al. (ICML 2021), Table 5", "cells": [
        _pv("92.48 0.19 | 92.46 0.11 | 92.31 0.23"),
        _pv("92.73 0.11 | 92.66 0.08 | 92.69 0.19"),
        _pv("93.10 0.22 | 92.88 0.15 | 92.91 0.06")]},
    "table6": {"source": "Kong et al. (ICML 2021), Table 6", "cells": [
        _pv("91.78 0.35 | 91.91 0.19 | 92.04 0.14"),
        _pv("92.36 0.21 | 92.55 0.07 | 92.67 0.13"),
        _pv("92.74 0.10 | 92.91 0.15 | 92.84 0.20")]},
    "table7": {"source": "Kong et al. (ICML 2021), Table 7", "cells": [
        _pv("91.74 0.15 | 92.31 0.12 | 92.81 0.22 | 92.91 0.15 | 92.94 0.07"),
        _pv("91.81 0.22 | 92.88 0.20 | 93.00 0.18 | 93.01 0.10 | 92.90 0.17"),
        _pv("92.09 0.23 | 92.74 0.11 | 93.15 0.26 | 92.99 0.24 | 93.31 0.06")]},
}


@dataclass
class Cell:
    exps: list[Experiment]  # every experiment matching the cell (more than one = ambiguous)
    stats: CellStats | None
    paper: tuple | None = None

    @property
    def runs(self):
        """The counted runs the cell's value rests on (None when it shows no value)."""
        return self.exps[0].counted if len(self.exps) == 1 else None

    def text(self, digits=2, fmt="md", paper=False) -> str:
        if len(self.exps) > 1:
            t = f"ambiguous: {len(self.exps)} experiments" if fmt != "latex" else \
                rf"{{\footnotesize ambiguous: {len(self.exps)} experiments}}"
        else:
            t = self.stats.text(digits, fmt) if self.stats else EMPTY[fmt]
        if paper and self.paper:
            m, s = self.paper
            t += (rf" {{\scriptsize [paper ${m:.2f} \pm {s:.2f}$]}}" if fmt == "latex"
                  else f" [paper {m:.2f} ± {s:.2f}]")
        return t


@dataclass
class PresetTable:
    name: str
    layout: Layout
    cells: list[list[Cell]]  # rows x columns
    baselines: list[tuple[str, list[Cell]]]
    source: str


def build_preset(name: str, exps: list[Experiment], expected: int | None = None, options: dict | None = None
                 ) -> PresetTable:
    """The preset's cells filled from the experiments (cells.experiments of a runs frame)."""
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} is unknown; choose one of {', '.join(PRESETS)}")
    pre, opt = PRESETS[name], dict(options or {})
    lay = pre.layout
    if "phase1_epochs" in opt and name in ("table6", "table7"):
        e1 = [str(e) for e in opt["phase1_epochs"]]
        if len(e1) != 3:
            raise ValueError(f"--phase1-epochs {' '.join(e1)}: Tables 6 and 7 need three values")
        lay = Layout(lay.name, lay.title, lay.caption, lay.corner, e1 if name == "table7" else lay.rows,
                     [(g, e1) for g, _ in lay.groups] if name == "table6" else lay.groups)
    pv = PAPER_VALUES[name]

    def cell_of(match, paper):
        es = [e for e in exps if match(e.ident)]
        return Cell(es, es[0].stats(expected) if len(es) == 1 else None, paper)

    cells = [[cell_of(lambda cfg, r=r, c=c: pre.cell(cfg, r, c, opt), pv["cells"][r][c])
              for c in range(len(lay.columns))] for r in range(len(lay.rows))]
    base = [(label, [cell_of(lambda cfg, r=r, f=f: f(cfg, r, opt), pv.get("baselines", {}).get(label, [None] * 9)[r])
                     for r in range(len(lay.rows))]) for label, f in pre.baselines]
    return PresetTable(name, lay, cells, base, pv["source"])


def filled_presets(idents: list[dict]) -> list[str]:
    """The presets in which at least one of these experiments (identities, `runs.identity` of a config) fills a
    cell or a baseline: what a campaign's report shows when its plan names no tables."""
    out = []
    for name, pre in PRESETS.items():
        rows, cols = range(len(pre.layout.rows)), range(len(pre.layout.columns))
        if any(pre.cell(i, r, c, {}) for i in idents for r in rows for c in cols) or \
                any(f(i, r, {}) for i in idents for _, f in pre.baselines for r in rows):
            out.append(name)
    return out

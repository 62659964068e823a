"""The config files of the paper's Tables 1-7, Figure 3, the large-batch study and the learning-rate sweeps.

    python tools/make_paper_configs.py              # (re)writes configs/table{1..7}/, figure3/, lr_sweep/, ...
    python tools/make_paper_configs.py --out DIR    # the same tree under DIR (the tests compare it with configs/)

Every file inherits configs/cifar10_resnet20.toml, except Table 3's (configs/imagenet32_resnet20_3.toml), Figure
3's (configs/multi30k_transformer.toml) and the large-batch study's (configs/large_batch/cifar_common.toml).
Learning rates come from configs/tuned_lr.toml (one place). Each file records where its rate came from in the
config key `lr_origin` ("untuned: ..." for a starting guess, "tuned: <sweep plan> <identity>" for a rate that
`python -m hpc_dsgd campaign report <sweep plan> --write-tuned` chose), which the run's trace keeps.
The learning-rate file is checked in full before anything is written (every needed entry present, every rate a
finite positive number): on any problem, one line and no file changed.

The protocol, in the project's reading of Kong et al. Sec. 4.2 (docs/protocol.md quotes the sentence and names
the alternative reading): the target of phase k is a factor times the maximum consensus distance of phase k
in the uncontrolled run of the same experiment. For a dec-phase-k experiment (All-Reduce in every other phase)
that is the experiment's own "Xi_max" cell: plain gossip in phase k, All-Reduce elsewhere, so its phase k
starts from consensus, as the controlled runs' does. So every "f Xi_max" cell names the same n's, same
schedule's Xi_max run as reference_trace (Table 5, with targets in two phases, one per phase through
reference_traces). dec-phase-k runs with k >= 2 share their centralized prefix with the All-Reduce run of the
table: they branch from its checkpoint at the end of phase k-1 (branch_from = RUN/checkpoints/phase-<k-1>).
Runs the paper reuses across tables are one config here: Table 6's 150-epoch column is Table 2's n = 32
dec-phase-1 cells, Table 7's (150, Xi_max) cell is Table 2's ring baseline (configs/table1/ring_n32.toml), so a
campaign runs each once and every plan that lists it finds it finished.
Each file is seed 0; `python -m hpc_dsgd campaign run configs/campaigns/tableN.toml` runs a table's seeds.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
FRAC = {1.0: "xi_max", 0.5: "half", 0.25: "quarter", 0.125: "eighth", 0.0625: "sixteenth", 0.0: "zero"}
UNTUNED = "untuned: starting guess, see configs/tuned_lr.toml"
UNTUNED_NMT = "untuned: Vaswani et al.'s inverse_sqrt schedule at lr_scale 1, not swept"
AR3, G3 = ["allreduce"] * 3, ["gossip"] * 3
SGD = dict(momentum=0.0, nesterov=False)
INET = dict(base="imagenet32_resnet20_3.toml")
LB = dict(base="large_batch/cifar_common.toml")
# Warm-up of the large-batch study: 5 epochs at local batch 64 (global 1024: 245 iterations); 30 epochs at local
# batch 512 (global 8192: 183 iterations of 6 per epoch, 10 % of training; 5 epochs would be 30 iterations to a
# peak of 6.4 at base_lr 0.1, too short to be stable). Our choice: Zhu et al. print no recipe.
LB_WARMUP = {64: 5.0, 512: 30.0}
# the fraction of the training set a sweep holds out (validation_split): 5,000 CIFAR-10, 25,623 ImageNet-32 images
VALIDATION = {"cifar10": 0.1, "imagenet32": 0.02}
STD = [0.025, 0.05, 0.1, 0.2, 0.4]  # steps of 2 around the starting guess 0.1
# Plain SGD: the small-step equivalent of the momentum run is 0.1 / (1 - 0.9) = 1.0, but at large steps plain SGD
# is stable only for lr x lambda_max < 2 (Nesterov 0.9: about 1.36 / (1 - 0.9)), so the grid reaches down to the
# momentum run's raw rate (0.1) and below; check_tuned refuses a momentum rate below the grid's lowest point.
SGD_GRID = [0.0625, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0]


def _sweep(plan, what, ns, grid, topology, policies, data="cifar10", base="cifar10_resnet20.toml", **extra):
    return dict(plan=f"configs/campaigns/{plan}.toml", what=what, ns=ns, grid=grid, base=base,
                keys=dict(topology=topology, policies=policies, validation_split=VALIDATION[data], **extra))


# Sections of configs/tuned_lr.toml: what each rate serves, and the sweep that tunes it (its points are
# configs/lr_sweep/<section>_n<n>_lr<rate>.toml, run by the sweep's plan). A grid is fixed: extending it adds
# new files (new run names), and the finished points keep their names, so they are not run again.
RECIPES = {
    "cifar10": ("All-Reduce (complete), SGD + Nesterov 0.9: the centralized rate Tables 1 (complete), 2, 5, 6, 7 use",
                _sweep("lr_sweep", "All-Reduce", (16, 32, 64), STD, "complete", AR3)),
    "cifar10_ring": ("D-SGD on a ring, SGD + Nesterov 0.9, fine-tuned on its own: Table 1's ring row, the ring "
                     "baseline of Table 2's caption and Figure 2, Table 7's (150, Xi_max) cell",
                     _sweep("lr_sweep", "D-SGD ring", (16, 32, 64), STD, "ring", G3)),
    "cifar10_sgd": ("All-Reduce, plain SGD without momentum: Table 4",
                    _sweep("lr_sweep", "All-Reduce, plain SGD", (32, 64), SGD_GRID, "complete", AR3, **SGD)),
    "cifar10_sgd_ring": ("D-SGD on a ring, plain SGD, fine-tuned on its own: Table 4's \"fine-tuned normal "
                         "(w/o control)\" baseline",
                         _sweep("lr_sweep", "D-SGD ring, plain SGD", (32, 64), SGD_GRID, "ring", G3, **SGD)),
    "imagenet32": ("All-Reduce (complete), ImageNet-32 recipe (base_batch 256): Table 3",
                   _sweep("lr_sweep", "All-Reduce, ImageNet-32", (16, 32), STD, "complete", ["allreduce"] * 4,
                          "imagenet32", "imagenet32_resnet20_3.toml")),
    "cifar10_dec1": ("dec-phase-1 (ring in phase 1, All-Reduce after) swept on its own: footnote 3's \"learning "
                     "rate tuning on phase-1\" (the paper's Table 14); base_lr scales every phase; no table config "
                     "reads it yet",
                     _sweep("lr_sweep_dec1", "dec-phase-1 (ring, then All-Reduce)", (32,), STD, "ring",
                            ["gossip", "allreduce", "allreduce"])),
}
LB_METHODS = {"csgd": ("C-SGD", "complete", ["csgd"] * 3), "ring": ("D-SGD ring", "ring", G3),
              "exp": ("D-SGD exponential", "exponential", G3)}
for _b in (64, 512):
    for _m, (_what, _topo, _pols) in LB_METHODS.items():
        RECIPES[f"lb_b{_b}_{_m}"] = (
            f"Large-batch study, {_what}, n = 16 x local batch {_b} (global {16 * _b}): its own rate",
            _sweep("large_batch_sweep", f"large batch, {_what}, local batch {_b}", (16,), STD, _topo, _pols,
                   base=LB["base"], batch_size=_b, warmup_epochs=LB_WARMUP[_b], sharpness_every=0))
SECTION_KEYS = ("tuned", "sweep", "identity", "metric", "seeds")  # besides n<N>


class TunedError(ValueError):
    """A configs/tuned_lr.toml the generator cannot use; the message names the entry and what would be right."""


def sweep_points() -> list[dict]:
    """Every sweep point: recipe, n, lr, plan, path (relative to configs/), name."""
    out = []
    for recipe, (_, sw) in RECIPES.items():
        for n in sw["ns"]:
            for v in sw["grid"]:
                out.append(dict(recipe=recipe, n=n, lr=v, plan=sw["plan"], path=f"lr_sweep/{recipe}_n{n}_lr{v:g}.toml",
                                name=f"lr_sweep_{recipe}_n{n}_lr{v:g}"))
    return out


def _rate(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def check_tuned(tuned: dict, where: str = "configs/tuned_lr.toml") -> dict:
    """Every section and entry the configs need, each of the right type; the rates as floats. TunedError (one
    line naming the entry) on the first problem."""
    unknown = sorted(set(tuned) - set(RECIPES))
    if unknown:
        raise TunedError(f"{where}: unknown section(s) {', '.join(unknown)}; the sections are {', '.join(RECIPES)}")
    out = {}
    for recipe, (_, sw) in RECIPES.items():
        sec = tuned.get(recipe)
        if not isinstance(sec, dict):
            raise TunedError(f"{where}: section [{recipe}] is missing: it needs tuned = false|true and "
                             + ", ".join(f"n{n}" for n in sw["ns"]))
        need = {f"n{n}" for n in sw["ns"]}
        bad = sorted(set(sec) - need - set(SECTION_KEYS))
        if bad:
            raise TunedError(f"{where}: [{recipe}] unknown key(s) {', '.join(bad)}; known: "
                             f"{', '.join(sorted(need) + list(SECTION_KEYS))}")
        if not isinstance(sec.get("tuned"), bool):
            raise TunedError(f"{where}: [{recipe}] tuned = {sec.get('tuned')!r}: need true or false")
        for key in sorted(need, key=lambda k: int(k[1:])):
            if key not in sec:
                raise TunedError(f"{where}: [{recipe}] {key} is missing: need the base_lr for n = {key[1:]}")
            if not _rate(sec[key]):
                raise TunedError(f"{where}: [{recipe}] {key} = {sec[key]!r}: need a finite positive learning rate "
                                 f"(a number such as 0.1)")
        if sec["tuned"]:
            for key in ("sweep", "identity"):
                if not isinstance(sec.get(key), str) or not sec[key].strip():
                    raise TunedError(f"{where}: [{recipe}] tuned = true needs {key} = \"...\" (written by "
                                     f"campaign report {sw['plan']} --write-tuned)")
        out[recipe] = {**sec, **{k: float(sec[k]) for k in need}}
    for n in RECIPES["cifar10_sgd"][1]["ns"]:
        low, mom = min(SGD_GRID), out["cifar10"][f"n{n}"]
        if low > mom:
            raise TunedError(f"{where}: [cifar10] n{n} = {mom:g} is below the plain-SGD grid's lowest point {low:g}: "
                             "Table 4's grids must reach down to the momentum run's rate; extend SGD_GRID in "
                             "hpc_dsgd/paper_configs.py (new points are new runs, the finished ones stay)")
    return out


def lr_origin(sec: dict) -> str:
    return f"tuned: {sec['sweep']} {sec['identity']}" if sec.get("tuned") else UNTUNED


def fmt(v):
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    return repr(v)


def render_tuned(tuned: dict, notes: dict | None = None) -> str:
    """configs/tuned_lr.toml's text: the header, then per section its description, keys and (notes) comment
    lines such as each n's mean per rate."""
    lines = ["# The learning rates of the paper's tables, in one place: base_lr (per base_batch samples of global batch,",
             "# linear scaling rule) per recipe and n. tools/make_paper_configs.py writes them into the configs (key",
             "# base_lr) with where each came from (key lr_origin, kept in every run's trace). Never edit by hand:",
             "#   1. python -m hpc_dsgd campaign run configs/campaigns/lr_sweep.toml      (and lr_sweep_dec1.toml,",
             "#      large_batch_sweep.toml: seeds 100-102, each run holding out a validation_split fraction of the training set)",
             "#   2. python -m hpc_dsgd campaign report configs/campaigns/lr_sweep.toml --write-tuned",
             "#      picks each sweep's best mean over seeds on the held-out samples (refused at the grid's edge or",
             "#      with a point unfinished), rewrites this file (tuned = true, the sweep's identity) and the configs.",
             "# The paper tunes the centralized rate and reuses it for the decentralized runs (Sec. 4.2, footnote 3);",
             "# the ring baselines \"w/o control\" have their own fine-tuned rate; plain SGD (Table 4) needs its own.",
             "# tuned = false means the value is our starting guess, NOT a tuned rate: the paper does not print its",
             "# rates, and every table resting on one says \"untuned\"."]
    for recipe, (what, sw) in RECIPES.items():
        sec = tuned[recipe]
        lines += ["", f"[{recipe}]   # {what}"]
        for key in SECTION_KEYS:
            if key in sec:
                lines.append(f"{key} = {fmt(sec[key])}")
        for n in sw["ns"]:
            for note in (notes or {}).get(recipe, {}).get(n, []):
                lines.append(f"# {note}")
            lines.append(f"n{n} = {fmt(float(sec[f'n{n}']))}")
    return "\n".join(lines) + "\n"


class Writer:
    """Collects (path, text); nothing is written before everything is generated (write_all)."""

    def __init__(self, root: str, tuned: dict):
        self.root, self.tuned, self.files = root, tuned, {}

    @property
    def written(self) -> list[str]:
        return list(self.files)

    def lr(self, recipe: str, n: int) -> tuple[float, str, str]:
        sec = self.tuned[recipe]
        return (sec[f"n{n}"], f"base_lr: configs/tuned_lr.toml [{recipe}] n{n}"
                + ("" if sec.get("tuned") else " (untuned starting value: run the sweep)"), lr_origin(sec))

    def write(self, path, comment, base="cifar10_resnet20.toml", lr=None, **keys):
        depth = path.count("/")
        lines = [f"# {comment}", "# Generated by tools/make_paper_configs.py."]
        if lr is not None:
            lines.append(f"# {lr[1]}.")
        lines.append(f'base = "{"../" * depth}{base}"')
        if lr is not None:
            keys = {"base_lr": lr[0], "lr_origin": lr[2], **keys}
        for k, v in keys.items():
            lines.append(f"{k} = {fmt(v)}")
        assert path not in self.files, path
        self.files[path] = "\n".join(lines) + "\n"

    def write_all(self) -> None:
        for path, text in self.files.items():
            full = os.path.join(self.root, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w") as f:
                f.write(text)


def phase_plan(levels):
    """levels per phase: 0 = allreduce, 1 = gossip, f = target f x Xi_max."""
    pol = ["allreduce" if f == 0 else "gossip" if f == 1 else "target" for f in levels]
    return pol, [float(f) if p == "target" else 1.0 for p, f in zip(pol, levels)]


def trace_of(run):
    return f"runs/{run}/trace.h5"


def dec(levels, refs=None, parent=None, branch_phase=0, **extra):
    """A dec-phase run: policies per level; refs {phase k (1-based): reference run name} for every target phase;
    branch from `parent`'s checkpoint at the end of phase `branch_phase` (0 = train from scratch)."""
    pol, fac = phase_plan(levels)
    keys = dict(policies=pol, target_factors=fac)
    targets = [k for k, p in enumerate(pol, 1) if p == "target"]
    names = {(refs or {})[k] for k in targets}
    if len(names) == 1:
        keys["reference_trace"] = trace_of(names.pop())
    elif names:
        keys["reference_traces"] = [trace_of(refs[k]) if k in targets else "" for k in range(1, len(pol) + 1)]
    if branch_phase:
        keys["branch_from"] = f"runs/{parent}/checkpoints/phase-{branch_phase}"
    keys.update(extra)
    return keys


def dec_phase_table(w, table, n, nphases, phases, parent, recipe, label, factors=(1.0, 0.5, 0.25), **extra):
    """Cells dec-phase-k x factors of one n: the Xi_max run is the reference of the others."""
    lr = w.lr(recipe, n)
    for k in phases:
        xi_run = f"{table}_n{n}_dec{k}_xi_max"
        for f in factors:
            lv = [0.0] * nphases
            lv[k - 1] = f
            what = ("plain gossip in that phase (the reference of its controlled cells)" if f == 1.0 else
                    f"target {f:g} x Xi_max of {xi_run} (phase {k})")
            w.write(f"{table}/n{n}_dec{k}_{FRAC[f]}.toml", f"{label}: n={n}, dec-phase-{k}, {what}.",
                    lr=lr, name=f"{table}_n{n}_dec{k}_{FRAC[f]}", n=n,
                    **dec(lv, {k: xi_run}, parent, k - 1), **extra)


def generate(w: Writer) -> None:
    # Table 1: All-Reduce (complete; the centralized rate) and D-SGD on a ring (its own fine-tuned rate).
    for n in (16, 32, 64):
        w.write(f"table1/complete_n{n}.toml", f"Table 1, AllReduce (complete), n={n}: exact averaging every iteration "
                "(also the branch parent of Tables 2 and 5).", lr=w.lr("cifar10", n), name=f"table1_complete_n{n}",
                n=n, topology="complete", policies=AR3)
        w.write(f"table1/ring_n{n}.toml", f"Table 1, D-SGD (ring, fine-tuned lr), n={n}: one gossip step per "
                "iteration in every phase" + (" (also Table 2's ring baseline and Table 7's (150, Xi_max) cell)."
                                              if n == 32 else "."), lr=w.lr("cifar10_ring", n),
                name=f"table1_ring_n{n}", n=n, topology="ring", policies=G3)
    # Table 2: n = 32, 64; dec-phase-1..3; targets Xi_max, 1/2, 1/4; at n = 32 dec-phase-1 also 1/8 and 1/16
    # (the main text quotes 92.77 and 92.72 for them, the paper's Table 12).
    for n in (32, 64):
        dec_phase_table(w, "table2", n, 3, (1, 2, 3), f"table1_complete_n{n}", "cifar10", "Table 2")
    dec_phase_table(w, "table2", 32, 3, (1,), None, "cifar10", "Table 2 (main text, the paper's Table 12)",
                    factors=(0.125, 0.0625))
    # Table 3: ImageNet-32, ResNet-20-3, n = 16, 32; four phases; dec-phase-1..4. Baselines: All-Reduce (also
    # the branch parent) and a ring gossiping in every phase (D-SGD w/o control).
    for n in (16, 32):
        lr = w.lr("imagenet32", n)
        w.write(f"table3/ref_ring_n{n}.toml", f"Table 3 D-SGD baseline (w/o control): ImageNet-32, ring, n={n}, "
                "every phase gossip.", lr=lr, name=f"table3_ref_ring_n{n}", n=n, policies=["gossip"] * 4, **INET)
        w.write(f"table3/allreduce_n{n}.toml", f"Table 3 All-Reduce baseline and branch parent: ImageNet-32, n={n}, "
                "exact averaging in every phase.", lr=lr, name=f"table3_allreduce_n{n}", n=n,
                policies=["allreduce"] * 4, **INET)
        dec_phase_table(w, "table3", n, 4, (1, 2, 3, 4), f"table3_allreduce_n{n}", "imagenet32",
                        "Table 3: ImageNet-32", **INET)
    # Table 4: plain SGD (no momentum), its own rate; All-Reduce baseline and branch parent; the ring baseline
    # (w/o control) with its own fine-tuned rate, as the caption says.
    for n in (32, 64):
        lr = w.lr("cifar10_sgd", n)
        w.write(f"table4/allreduce_sgd_n{n}.toml", f"Table 4 All-Reduce baseline and branch parent: plain SGD, n={n}.",
                lr=lr, name=f"table4_allreduce_sgd_n{n}", n=n, topology="complete", policies=AR3, **SGD)
        w.write(f"table4/ref_sgd_n{n}.toml", f"Table 4 D-SGD baseline (w/o control, fine-tuned lr): plain SGD on a "
                f"ring, n={n}, every phase gossip.", lr=w.lr("cifar10_sgd_ring", n), name=f"table4_ref_sgd_n{n}", n=n,
                policies=G3, **SGD)
        dec_phase_table(w, "table4", n, 3, (1, 2), f"table4_allreduce_sgd_n{n}", "cifar10_sgd", "Table 4: plain SGD",
                        **SGD)
    # Table 5: n = 32, phase-1 target (1/2, 1/4, 1/8) x phase-2 target (Xi_max, 1/2, 1/4), phase 3 All-Reduce;
    # each phase's target against Table 2's uncontrolled run of that phase.
    lr = w.lr("cifar10", 32)
    for f1 in (0.5, 0.25, 0.125):
        for f2 in (1.0, 0.5, 0.25):
            w.write(f"table5/p1_{FRAC[f1]}_p2_{FRAC[f2]}.toml", f"Table 5: n=32, phase-1 {FRAC[f1]}, phase-2 {FRAC[f2]} "
                    "(targets against table2_n32_dec1_xi_max and table2_n32_dec2_xi_max).", lr=lr,
                    name=f"table5_p1_{FRAC[f1]}_p2_{FRAC[f2]}", n=32,
                    **dec([f1, f2, 0.0], {1: "table2_n32_dec1_xi_max", 2: "table2_n32_dec2_xi_max"}))
    # Tables 6 and 7: phase 1 prolonged to E1 epochs, phases 2 and 3 keep 75 epochs each; the target phase is
    # phase 1, against the row's own Xi_max run. E1 = 150 is the standard schedule: the paper reuses Table 2's
    # n = 32 dec-phase-1 cells as Table 6's 150 column and Table 2's ring baseline as Table 7's (150, Xi_max)
    # cell, and so do the plans here (configs/table2/n32_dec1_*.toml, configs/table1/ring_n32.toml): no files.
    for e1 in (150, 200, 250):
        ep = e1 + 150
        sched = dict(epochs=float(ep), decay_fractions=[e1 / ep, (e1 + 75) / ep])
        if e1 != 150:
            for f in (1.0, 0.5, 0.25):
                w.write(f"table6/e{e1}_{FRAC[f]}.toml", f"Table 6: n=32, phase 1 = {e1} epochs, dec-phase-1 target "
                        f"{FRAC[f]}.", lr=lr, name=f"table6_e{e1}_{FRAC[f]}", n=32, **sched,
                        **dec([f, 0.0, 0.0], {1: f"table6_e{e1}_xi_max"}))
        ref7 = "table1_ring_n32" if e1 == 150 else f"table7_e{e1}_xi_max"
        for f in (1.0, 0.5, 0.25, 0.125, 0.0):
            if e1 == 150 and f == 1.0:
                continue
            why = (" Reference: Table 2's ring baseline (the paper's 150 x Xi_max cell, at the ring's own rate)."
                   if e1 == 150 and f not in (0.0, 1.0) else "")
            w.write(f"table7/e{e1}_{FRAC[f]}.toml",
                    f"Table 7: n=32, phase 1 = {e1} epochs with target {FRAC[f]} (zero = allreduce), phases 2-3 gossip."
                    + why, lr=lr, name=f"table7_e{e1}_{FRAC[f]}", n=32, **sched, **dec([f, 1.0, 1.0], {1: ref7}))
    # Figure 3: Transformer on Multi30k, n = 32, one phase: the centralized baseline (data-parallel Adam: csgd
    # averages the gradients, so the replicas share one Adam state), ring, ring with target 1/4 Xi_max (reference:
    # the ring run, the uncontrolled run of that one phase), exponential graph.
    for stem, topo, pol, f, what in (
            ("centralized", "complete", "csgd", 1.0, "centralized: data-parallel Adam (csgd: gradients averaged, one "
             "Adam state), not parameter averaging after local Adam steps"),
            ("ring", "ring", "gossip", 1.0, "ring, plain gossip (the reference of ring_target_quarter)"),
            ("ring_target_quarter", "ring", "target", 0.25, "ring, target 1/4 Xi_max of figure3_ring"),
            ("exponential", "exponential", "gossip", 1.0, "exponential graph, plain gossip")):
        keys = dict(policies=[pol], target_factors=[f])
        if pol == "target":
            keys["reference_trace"] = trace_of("figure3_ring")
        w.write(f"figure3/{stem}.toml", f"Figure 3: Transformer on Multi30k, n=32, {what}.", name=f"figure3_{stem}",
                lr_origin=UNTUNED_NMT, n=32, topology=topo, **keys, base="multi30k_transformer.toml")
    # Large batch (Zhu et al. Figure 1): C-SGD, D-SGD ring, D-SGD exponential at local batch 64 and 512, n = 16,
    # each at its own rate (the sweeps below), warm-up LB_WARMUP.
    for b in (64, 512):
        for m, (what, topo, pols) in LB_METHODS.items():
            how = "gradients averaged by one Allreduce" if m == "csgd" else "one gossip step per iteration"
            keys = dict(name=f"lb_cifar_b{b}_{m}", batch_size=b)
            if m != "csgd":
                keys["topology"] = topo
            keys.update(policies=pols, warmup_epochs=LB_WARMUP[b])
            w.write(f"large_batch/cifar_b{b}_{m}.toml", f"Large batch, {what}: n = 16 x local batch {b} (global "
                    f"{16 * b}), {how}.", base=LB["base"], lr=w.lr(f"lb_b{b}_{m}", 16), **keys)
    # Learning-rate sweeps (out_dir runs/lr_sweep, seeds disjoint from the tables' in their plans): each point
    # holds out a validation_split fraction of the training set and is scored on it.
    for p in sweep_points():
        what, sw = RECIPES[p["recipe"]]
        w.write(p["path"], f"Learning-rate sweep [{p['recipe']}]: {sw['what']}, n={p['n']}, base_lr={p['lr']:g} "
                f"(one point of RECIPES[{p['recipe']!r}]'s grid; plan {sw['plan']}).", base=sw["base"], name=p["name"],
                out_dir="runs/lr_sweep", n=p["n"], base_lr=p["lr"], **sw["keys"])


def main(argv=None) -> list[str]:
    """Generate every file in memory from the checked learning-rate file, then write them; the relative paths.
    TunedError (nothing written) for a learning-rate file that does not hold what the configs need."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=CONFIGS, help="root to write into (default: configs/)")
    ap.add_argument("--tuned", default=os.path.join(CONFIGS, "tuned_lr.toml"), help="the learning-rate file")
    args = ap.parse_args(argv)
    try:
        with open(args.tuned, "rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise TunedError(f"{args.tuned}: {e}") from None
    return write_configs(args.out, check_tuned(raw, args.tuned))


def write_configs(root: str, tuned: dict) -> list[str]:
    w = Writer(root, tuned)
    generate(w)
    w.write_all()
    return w.written


def cli(argv=None) -> int:
    try:
        written = main(argv)
    except TunedError as e:
        print(f"hpc_dsgd: error: {e}", file=sys.stderr)
        return 2
    print(f"make_paper_configs: wrote {len(written)} files")
    return 0

"""Tuned learning rates from a finished sweep, in one command, without hand editing:

    python -m hpc_dsgd campaign report configs/campaigns/lr_sweep.toml --write-tuned

Every run of the plan must be a sweep point of hpc_dsgd/paper_configs.py (RECIPES: recipe, n, grid of base_lr)
and finished, with validation_split > 0 (it held out training samples and scored METRIC on them, so the choice
never sees the test set the tables report) and seeds disjoint from the table plans'. Per recipe and n the best
rate is the highest mean over the seeds (ties: the smaller rate, as the lr_sweep table); a best rate at either
end of its grid is refused ("extend the grid": new points are new runs, the finished ones are kept). Then
configs/tuned_lr.toml gets, for each recipe the sweep covers, tuned = true, the plan, the sweep's identity
(sha256 over every counted run's name, rate, seed, value and finish time), the metric, the seeds and the
rates, with each n's mean per rate as a comment; the other recipes are kept as they were; and every generated
config is rewritten from it (paper_configs: lr_origin = "tuned: <plan> <identity>"). Everything is checked
before anything is written: on a problem, one line `hpc_dsgd: error: ...`, exit status 2, no file changed.
Paths are relative to the launch directory (the repository root), as the plan's.
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import sys
import tomllib

from . import paper_configs as gen

METRIC = "test_acc_avg"  # with validation_split > 0 the run scores this column on its held-out training samples


class TuningError(ValueError):
    """A sweep that cannot give tuned rates (yet); the message names the runs and what would be right."""


def _table_seeds(root: str) -> set:
    seeds = set()
    for path in glob.glob(os.path.join(root, "configs", "campaigns", "table*.toml")):
        with open(path, "rb") as f:
            seeds |= {s for s in tomllib.load(f).get("seeds", [0]) if isinstance(s, int)}
    return seeds


def choose(plan, root: str = ".") -> tuple[dict, dict]:
    """(the new tuned_lr.toml content, notes per recipe and n) from the plan's finished sweep; TuningError."""
    from types import SimpleNamespace

    from .analysis.runs import read_run
    from .trace import TraceError

    cdir = os.path.join(root, "configs")
    points = {p["path"]: p for p in gen.sweep_points()}
    runs = []
    for r in plan.runs:
        rel = os.path.relpath(os.path.abspath(r.config), os.path.abspath(cdir)).replace(os.sep, "/")
        if rel not in points:
            raise TuningError(f"--write-tuned: run {r.name} ({r.config}) is not a learning-rate sweep point of "
                              f"hpc_dsgd/paper_configs.py (configs/lr_sweep/<recipe>_n<n>_lr<rate>.toml)")
        runs.append((r, points[rel]))
    covered = sorted({(p["recipe"], p["n"]) for _, p in runs})
    for recipe, n in covered:
        have = {p["lr"] for _, p in runs if (p["recipe"], p["n"]) == (recipe, n)}
        grid = gen.RECIPES[recipe][1]["grid"]
        if set(grid) - have:
            raise TuningError(f"--write-tuned: plan {plan.path!r} holds only {sorted(have)} of [{recipe}] n{n}'s grid "
                              f"{grid}: list every point of the sweep")
    both = sorted(set(plan.seeds) & _table_seeds(root))
    if both:
        raise TuningError(f"--write-tuned: plan {plan.path!r} uses seeds {both}, which the table plans use too: a "
                          "sweep takes seeds of its own (e.g. 100, 101, 102), so no table run took part in the choice")
    by_path = {}
    for r, _ in runs:
        if os.path.isfile(r.trace):
            try:
                rec = read_run(r.trace, METRIC)
            except TraceError:
                continue  # unreadable: reported as not finished
            by_path[os.path.abspath(r.trace)] = SimpleNamespace(
                finished=rec["status"] == "finished", status=rec["status"], value=rec["value"], config=rec["config"],
                seed=rec["seed"], stamp=rec["stamp"])
    undone, no_val = [], []
    values = {}  # (recipe, n) -> lr -> [(seed, value, name, stamp)]
    for r, p in runs:
        got = by_path.get(os.path.abspath(r.trace))
        if got is None or not got.finished or math.isnan(got.value):
            undone.append(r.name + ("" if got is None else f" ({got.status})" if not got.finished else
                                    f" (no {METRIC})"))
            continue
        if float(got.config.get("validation_split", 0) or 0) <= 0:
            no_val.append(r.name)
        values.setdefault((p["recipe"], p["n"]), {}).setdefault(p["lr"], []).append(
            (got.seed, got.value, r.name, got.stamp))
    if undone:
        raise TuningError(f"--write-tuned: {len(undone)} of {len(runs)} sweep runs not finished: "
                          f"{', '.join(undone[:6])}{', ...' if len(undone) > 6 else ''}; run `python -m hpc_dsgd "
                          f"campaign run {plan.path}` until every point is finished")
    if no_val:
        raise TuningError(f"--write-tuned: {len(no_val)} sweep run(s) scored the test set (validation_split = 0): "
                          f"{', '.join(no_val[:6])}; a sweep holds out training samples (validation_split > 0)")
    with open(os.path.join(cdir, "tuned_lr.toml"), "rb") as f:
        tuned = tomllib.load(f)
    notes: dict = {}
    edge = []
    for recipe in sorted({rec for rec, _ in covered}):
        sec = {k: v for k, v in tuned.get(recipe, {}).items() if k.startswith("n") and k[1:].isdigit()}
        ident = []
        for (rec, n), cells in sorted(values.items()):
            if rec != recipe:
                continue
            grid = gen.RECIPES[recipe][1]["grid"]
            means = {lr: sum(v for _, v, _, _ in c) / len(c) for lr, c in cells.items()}
            best = max(means, key=lambda lr: (means[lr], -lr))
            if best in (min(grid), max(grid)):
                edge.append(f"[{recipe}] n{n} best {best:g} ({means[best]:.2f})")
            sec[f"n{n}"] = float(best)
            notes.setdefault(recipe, {})[n] = [
                f"n{n}: mean {METRIC} on the held-out samples per base_lr: "
                + ", ".join(f"{lr:g}: {means[lr]:.2f}" for lr in sorted(means)) + f"; best {best:g}"]
            ident += sorted((name, lr, seed, value, stamp.split("|")[0]) for lr, c in cells.items() for seed, value, name, stamp in c)
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        tuned[recipe] = {"tuned": True, "sweep": plan.path, "identity": f"sha256:{digest}",
                         "metric": f"{METRIC} on validation_split held-out training samples",
                         "seeds": list(plan.seeds), **sec}
    if edge:
        raise TuningError(f"--write-tuned: best rate at the grid's edge: {'; '.join(edge)}: extend the grid "
                          "(hpc_dsgd/paper_configs.py: new points are new runs, the finished ones stay), run them, "
                          "then --write-tuned again")
    return tuned, notes


def write_tuned(plan, root: str = ".") -> int:
    """Check everything, then write configs/tuned_lr.toml and regenerate the configs; 0, or 2 with one line."""
    try:
        tuned, notes = choose(plan, root)
        checked = gen.check_tuned(tuned)
        w = gen.Writer(os.path.join(root, "configs"), checked)
        gen.generate(w)  # in memory: a generator problem stops here, with nothing written
        text = gen.render_tuned(checked, notes)
    except (TuningError, gen.TunedError) as e:
        print(f"hpc_dsgd: error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return 2
    path = os.path.join(root, "configs", "tuned_lr.toml")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    w.write_all()
    names = sorted({k for k, v in checked.items() if v.get("tuned") and v.get("sweep") == plan.path})
    print(f"hpc_dsgd: campaign: wrote {path} (tuned: {', '.join(names)}) and regenerated {len(w.written)} configs",
          flush=True)
    return 0

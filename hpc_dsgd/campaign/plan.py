"""A campaign's plan and its dependency graph: the runs (configs x seeds), each run's resolved config, which runs
need which (reference traces, branch checkpoints), in a stable topological order. Nothing here starts or reads a
run; a plan that cannot run is refused with one line (CampaignError) before anything starts.
"""
from __future__ import annotations

import glob
import json
import os
import tomllib
from dataclasses import dataclass, field

from ..config import DEFAULTS, FIELDS, ConfigError, from_dict, parse_override, read_toml
from .traces import trace_status

PLAN_KEYS = ("configs", "seeds", "set", "ranks", "report", "tables", "slurm")
EXIT_RECORD = "exit.json"  # RUN_DIR/exit.json: {job_id, restart, rc, error, time}, written by slurm/run.sbatch
DEP_KEYS = ("reference_trace", "reference_traces", "branch_from")
# [slurm] table of a plan: sbatch options (None = not asked for: the batch script asks for no GPU or CPU count)
SLURM_KEYS = {"partition": str, "account": str, "time": str, "gpus_per_task": int, "cpus_per_task": int,
              "args": list}


class CampaignError(ValueError):
    """A plan that cannot run; the message names the plan, run or key and what would be right."""


@dataclass
class Run:
    """One run of a plan: a config file at one seed."""

    name: str
    config: str  # the config file
    seed: int | None  # None: the config's own seed (a plan without `seeds`)
    run_dir: str  # out_dir/name, as the run sees it (relative to the launch directory)
    sets: list[str]  # --set items for train: the plan's, the command line's, seed, name, rewritten dependencies
    cfg: dict  # the resolved config (Config.to_dict())
    deps: list[str] = field(default_factory=list)  # names of the plan's runs this one needs
    external: list[str] = field(default_factory=list)  # dependencies outside the plan (finished on disk)

    @property
    def trace(self) -> str:
        return os.path.join(self.run_dir, "trace.h5")

    @property
    def log(self) -> str:
        return os.path.join(self.run_dir, "campaign.log")

    @property
    def exit_record(self) -> str:
        return os.path.join(self.run_dir, EXIT_RECORD)


@dataclass
class Plan:
    path: str
    runs: list[Run]  # in dependency order (a stable topological order of the plan's order)
    seeds: list
    ranks: int
    report: str
    tables: list[str] | None
    state_path: str
    slurm: dict = field(default_factory=dict)  # the plan's [slurm] table (sbatch options)
    validated: bool = True  # the runs' configs validated (load_plan(validate=True)); else keys over defaults

    def by_name(self) -> dict[str, Run]:
        return {r.name: r for r in self.runs}


# ------------------------------------------------------------------------------------------------
# Plans and the graph
# ------------------------------------------------------------------------------------------------
def norm(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def _toml_value(v) -> str:
    return json.dumps(v)  # JSON scalars, strings and arrays are valid TOML values (config.to_toml does the same)


def dep_paths(raw: dict) -> list[tuple[str, int | None, str]]:
    """(key, index in reference_traces or None, path) of every non-empty dependency path of a config."""
    out = []
    for key in DEP_KEYS:
        v = raw.get(key)
        if isinstance(v, list):
            out += [(key, i, p) for i, p in enumerate(v) if isinstance(p, str) and p]
        elif isinstance(v, str) and v:
            out.append((key, None, v))
    return out


def split_dep(path: str) -> tuple[str, str]:
    """(run directory, rest): RUN/trace.h5 -> (RUN, 'trace.h5'); RUN/checkpoints/X -> (RUN, 'checkpoints/X')."""
    parts = os.path.normpath(path).split(os.sep)
    if "checkpoints" in parts[1:]:
        i = len(parts) - 1 - parts[::-1].index("checkpoints")
        return os.sep.join(parts[:i]) or ".", os.sep.join(parts[i:])
    return os.path.dirname(path) or ".", os.path.basename(path)


def phase_alias(path: str) -> int | None:
    """K of RUN/checkpoints/phase-K, else None."""
    base = os.path.basename(os.path.normpath(path))
    if base.startswith("phase-") and base[6:].isdigit() and os.path.basename(os.path.dirname(os.path.normpath(path))) \
            == "checkpoints":
        return int(base[6:])
    return None


def resolve_phase_checkpoint(path: str) -> str | None:
    """The concrete checkpoint of RUN/checkpoints/phase-K (the checkpoint module's resolver: bounded, validated
    manifests); the path itself if it is not an alias; None if that run has no such checkpoint (yet)."""
    if phase_alias(path) is None:
        return path
    from ..checkpoint import CheckpointError
    from ..resume import resolve_branch

    try:
        return resolve_branch(path)
    except CheckpointError:
        return None


def load_plan(path: str, overrides: list[str] = (), ranks: int | None = None, validate: bool = True) -> Plan:
    """Read a plan, expand its configs x seeds, resolve every run's config and the dependency graph.
    CampaignError (one line) for anything that cannot run, before anything is started. validate=False (status,
    report): each run's config is its keys over the defaults, not validated, so that no torch module is imported."""
    if not os.path.isfile(path):
        raise CampaignError(f"plan {path!r} does not exist")
    try:
        with open(path, "rb") as f:
            plan = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise CampaignError(f"plan {path!r} is not valid TOML: {e}") from None
    unknown = sorted(set(plan) - set(PLAN_KEYS))
    if unknown:
        raise CampaignError(f"plan {path!r}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(PLAN_KEYS)}")
    patterns = plan.get("configs")
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) for p in patterns):
        raise CampaignError(f"plan {path!r}: configs = {patterns!r}: need a list of config files or globs, "
                            f"e.g. configs = [\"configs/table2/*.toml\"]")
    files: list[str] = []
    for pat in patterns:
        found = sorted(glob.glob(pat, recursive=True)) if glob.has_magic(pat) else [pat] if os.path.isfile(pat) else []
        if not found:
            raise CampaignError(f"plan {path!r}: configs entry {pat!r} matches no file (paths are relative to the "
                                f"launch directory, {os.getcwd()}: run from the repository root)")
        files += [f for f in map(os.path.normpath, found) if f not in files]  # a config listed twice runs once
    seeds = plan.get("seeds", [None])
    if not isinstance(seeds, list) or not seeds or not all(s is None or isinstance(s, int) and s >= 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise CampaignError(f"plan {path!r}: seeds = {seeds!r}: need a list of distinct seeds >= 0, e.g. [0, 1, 2]")
    ranks = ranks if ranks is not None else plan.get("ranks", 1)
    if not isinstance(ranks, int) or ranks < 1:
        raise CampaignError(f"ranks={ranks!r}: need a positive number of MPI ranks per run")
    sets = plan.get("set", {})
    if not isinstance(sets, dict):
        raise CampaignError(f"plan {path!r}: set must be a table of config keys ([set] epochs = 10)")
    items = [f"{k}={_toml_value(v)}" for k, v in sets.items()] + list(overrides)
    parsed = []
    for text in items:
        try:
            k, v = parse_override(text)
        except ConfigError as e:
            raise CampaignError(str(e)) from None
        if k not in FIELDS:
            raise CampaignError(f"--set {text!r}: unknown config key {k!r}; known keys: {', '.join(FIELDS)}")
        if k in ("name", "seed") or k == "branch_from" or k.startswith("reference_trace"):
            raise CampaignError(f"--set {text!r}: {k} differs per run; set it in the config files "
                                f"(seeds come from the plan's `seeds`)")
        parsed.append((k, v, text))

    # 1. every instance, with its config before dependency rewriting
    raw_of, orig_dir, runs, where = {}, {}, [], {}
    for cf in files:
        try:
            raw = read_toml(cf)
        except ConfigError as e:
            raise CampaignError(f"plan {path!r}: {e}") from None
        raw_of[cf] = raw
        orig_dir[cf] = norm(os.path.join(raw.get("out_dir", DEFAULTS["out_dir"]), raw.get("name", DEFAULTS["name"])))
        for s in seeds:
            data = dict(raw)
            for k, v, _ in parsed:
                data[k] = v
            base = data.get("name", DEFAULTS["name"])
            name = base if s in (None, 0) else f"{base}-s{s}"
            extra = [text for _, _, text in parsed]
            if s is not None:
                data["seed"], data["name"] = s, name
                extra += [f"seed={s}", f"name={_toml_value(name)}"]
            run_dir = os.path.join(data.get("out_dir", DEFAULTS["out_dir"]), name)
            r = Run(name, cf, s, os.path.normpath(run_dir), extra, data)
            other = where.get(norm(run_dir))
            if other is not None:
                raise CampaignError(f"plan {path!r}: run name {name!r} twice: {other.config} and {cf} (seed "
                                    f"{s if s is not None else data.get('seed', 0)}) would both write {run_dir}; "
                                    f"give one of them another name")
            where[norm(run_dir)] = r
            runs.append(r)
    inst = {(r.config, r.seed): r for r in runs}
    by_dir = {}  # a run directory as a config names it (its own out_dir, or the overridden one) -> config file
    for cf in files:
        by_dir.setdefault(orig_dir[cf], cf)
        first = inst[(cf, seeds[0])]
        if seeds[0] in (None, 0):
            by_dir.setdefault(norm(first.run_dir), cf)

    # 2. dependencies: rewrite to the same seed's instance, or check that they are finished on disk
    for r in runs:
        raw = r.cfg
        for key, idx, p in dep_paths(raw):
            d, rest = split_dep(p)
            cf = by_dir.get(norm(d))
            if cf is not None:
                dep = inst[(cf, r.seed)]
                if dep is r:
                    raise CampaignError(f"plan {path!r}: run {r.name} ({r.config}) names itself in {key} = {p!r}")
                new = os.path.join(dep.run_dir, rest)
                if dep.name not in r.deps:
                    r.deps.append(dep.name)
                if idx is None:
                    raw[key] = new
                else:
                    raw[key] = list(raw[key])
                    raw[key][idx] = new
            else:
                why = _external_missing(p)
                if why:
                    raise CampaignError(f"plan {path!r}: run {r.name} ({r.config}) needs {key} = {p!r}, which is "
                                        f"neither a run of the plan nor finished on disk ({why}): add its config "
                                        f"to the plan's configs, or run it first")
                r.external.append(p)
        for key in DEP_KEYS:
            if key in raw and raw[key] != raw_of[r.config].get(key):
                r.sets.append(f"{key}={_toml_value(raw[key])}")
        if not validate:
            r.cfg = {**DEFAULTS, **raw}
            continue
        try:
            r.cfg = from_dict(raw, ranks).to_dict()
        except ConfigError as e:
            raise CampaignError(f"plan {path!r}: run {r.name} ({r.config}): {e}") from None

    ordered = _toposort(path, runs)
    parents = sorted({os.path.dirname(r.run_dir) or "." for r in runs})
    try:
        common = os.path.commonpath(parents)
    except ValueError:  # absolute and relative out_dirs mixed
        common = os.path.commonpath([norm(p) for p in parents])
    stem = os.path.splitext(os.path.basename(path))[0]
    tables = plan.get("tables")
    if tables is not None and (not isinstance(tables, list) or not all(isinstance(t, str) for t in tables)):
        raise CampaignError(f"plan {path!r}: tables = {tables!r}: need a list of preset names, e.g. [\"table2\"]")
    return Plan(path, ordered, seeds, ranks, str(plan.get("report", os.path.join("reports", stem))), tables,
                os.path.join(common or ".", f"campaign-{stem}.json"), _slurm_table(path, plan.get("slurm", {})),
                validate)


def _slurm_table(path: str, table) -> dict:
    """The plan's [slurm] table, checked: partition, account, time (strings), gpus_per_task, cpus_per_task
    (integers >= 0), args (a list of further sbatch options)."""
    if not isinstance(table, dict):
        raise CampaignError(f"plan {path!r}: slurm must be a table ([slurm] partition = \"gpu\")")
    for k, v in table.items():
        typ = SLURM_KEYS.get(k)
        if typ is None:
            raise CampaignError(f"plan {path!r}: [slurm] {k}: unknown key; known keys: {', '.join(SLURM_KEYS)}")
        ok = (isinstance(v, typ) and not isinstance(v, bool) and (typ is not int or v >= 0)
              and (typ is not list or all(isinstance(a, str) and a.startswith("--") for a in v))
              and (typ is not str or (v and "\0" not in v)))
        if not ok:
            want = {str: "a non-empty string", int: "an integer >= 0",
                    list: 'a list of sbatch options, e.g. ["--qos=long"]'}[typ]
            raise CampaignError(f"plan {path!r}: [slurm] {k} = {v!r}: need {want}")
    return dict(table)


def _external_missing(p: str) -> str | None:
    """Why a dependency outside the plan cannot be used yet (None: it is there)."""
    d, rest = split_dep(p)
    if rest.startswith("checkpoints"):
        concrete = resolve_phase_checkpoint(p)
        return None if concrete and os.path.isdir(concrete) else f"no checkpoint {p}"
    status = trace_status(p)
    return None if status == "finished" else f"trace {p}: " + (f"status {status}" if status else "absent")


def _toposort(path: str, runs: list[Run]) -> list[Run]:
    """Kahn's algorithm, stable in the plan's order; a cycle is named."""
    names = {r.name: r for r in runs}
    indeg = {r.name: len(r.deps) for r in runs}
    users = {r.name: [] for r in runs}
    for r in runs:
        for d in r.deps:
            users[d].append(r.name)
    out, ready = [], [r.name for r in runs if not r.deps]
    while ready:
        n = ready.pop(0)
        out.append(names[n])
        for u in users[n]:
            indeg[u] -= 1
            if indeg[u] == 0:
                ready.append(u)
                ready.sort(key=lambda x: runs.index(names[x]))
    if len(out) < len(runs):
        left = [r for r in runs if indeg[r.name] > 0]
        cyc, seen, n = [], set(), left[0].name
        while n not in seen:  # follow unresolved dependencies until one repeats
            seen.add(n)
            cyc.append(n)
            n = next(d for d in names[n].deps if indeg[d] > 0)
        cyc = cyc[cyc.index(n):] + [n]
        raise CampaignError(f"plan {path!r}: dependency cycle {' -> '.join(cyc)} (through reference_trace / "
                            f"branch_from): no order can run these")
    return out

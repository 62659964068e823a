"""Claim: the modules of hpc_dsgd import each other without a cycle, counting every import (at module level
and inside functions, where a few stay for a torch-free `--help`, campaign status and tables). A cycle is what
let `load_config` open files and build a data cache (config -> preflight -> checkpoint -> compat -> config); the
test names any new one. The graph is drawn in docs/architecture.md.
"""
from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PKG = "hpc_dsgd"


def modules() -> dict[str, str]:
    """Dotted module name -> file, for every module of the package (a package is its __init__)."""
    out = {}
    for d, _, files in os.walk(os.path.join(ROOT, PKG)):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].split(os.sep)
                out[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(d, f)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (module level and in functions)."""
    mods = modules()
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        pkg = m if path.endswith("__init__.py") else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[:len(pkg.split(".")) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]  # `from pkg import submodule`
            else:
                continue
            for t in targets:
                while t and t not in mods and "." in t:  # `import a.b.c` of a name inside a.b
                    t = t.rpartition(".")[0]
                if t in mods and t != m:
                    graph[m].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and f"{PKG}.checkpoint" in graph[f"{PKG}.resume"]  # the parser sees the imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    """The checker itself: a graph with the circle the code had is refused, naming it."""
    g = {"config": {"preflight"}, "preflight": {"checkpoint"}, "checkpoint": {"compat"}, "compat": {"config"},
         "trace": set()}
    assert find_cycle(g) == ["checkpoint", "compat", "config", "preflight", "checkpoint"]
    g["compat"] = set()
    assert find_cycle(g) is None


def test_config_and_the_bottom_modules_import_nothing_above_them():
    """config (the run description), rundir, fileio and compat import no module that opens files for a run,
    initialises MPI or imports torch at their top: they are the bottom of the drawing (with workloads.spec, the
    torch-free registry of data-set facts that config and compat ask)."""
    graph = import_graph()
    for m, allowed in ((f"{PKG}.rundir", set()), (f"{PKG}.fileio", set()), (f"{PKG}.compat", {f"{PKG}.config", f"{PKG}.workloads.spec"})):
        assert graph[m] <= allowed, (m, graph[m])
    assert not {f"{PKG}.preflight", f"{PKG}.checkpoint", f"{PKG}.compat", f"{PKG}.resume"} & graph[f"{PKG}.config"]

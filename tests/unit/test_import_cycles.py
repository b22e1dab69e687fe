"""No import cycles between modules: of ``l2reason/`` and of the engine plugins (``integrations/*/``).

Every module is parsed with :mod:`ast` (the parser is ``test_layering.py``'s):
module ``a`` depends on ``b`` when it imports ``b`` anywhere, at the top or
inside a function (a deferred import is still a dependency: it only moves the
circular-import failure to the first call), or imports a name from package
``b``'s ``__init__``. Two kinds of import do not count:

- ``if TYPE_CHECKING:`` blocks, which never run (that is what they are for);
- the implicit import of the parent packages (importing ``a.b.c`` runs
  ``a/__init__`` and ``a/b/__init__`` first): a package's ``__init__`` that
  re-exports its submodules would otherwise make every package a cycle.

A cycle is reported as its modules in import order, each with the file and line
of the import that leads to the next.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from test_layering import PACKAGE_DIRS, ROOT, all_modules, imports_of

#: module -> {module it imports: the line of the first such import}
Graph = dict[str, dict[str, int]]


def _nearest_module(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` or its nearest enclosing package among ``modules`` (``l2reason.x.NAME`` -> ``l2reason.x``)."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in modules else None


def import_graph(sources: dict[str, tuple[str, bool]]) -> Graph:
    """The module graph of ``sources`` (module -> (its source, whether it is a package ``__init__``))."""
    names = dict.fromkeys(sources, Path())
    graph: Graph = {}
    for name, (source, is_pkg) in sources.items():
        edges: dict[str, int] = {}
        for imp in imports_of(source, name, importer_is_pkg=is_pkg, skip_type_checking=True):
            target = _nearest_module(imp.target, names)
            if target is not None and target != name:
                edges.setdefault(target, imp.line)
        graph[name] = edges
    return graph


def strongly_connected(graph: Graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp: list[str] = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def shortest_cycle(graph: Graph, component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, as ``[m0, m1, ..., m0]`` (breadth-first)."""
    inside = set(component)
    start = component[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in inside:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if child not in parent:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {component}")


def describe(graph: Graph, cycle: list[str], where: dict[str, str]) -> str:
    """``a (file:line) -> b (file:line) -> a``: each module with the import that leads to the next."""
    steps = [f"{a} ({where.get(a, a)}:{graph[a][b]})" for a, b in itertools.pairwise(cycle)]
    return " -> ".join([*steps, cycle[-1]])


def _package_sources() -> tuple[dict[str, tuple[str, bool]], dict[str, str]]:
    sources: dict[str, tuple[str, bool]] = {}
    where: dict[str, str] = {}
    for top in PACKAGE_DIRS:
        for name, path in all_modules(top).items():
            sources[name] = (path.read_text(encoding="utf-8"), path.name == "__init__.py")
            where[name] = str(path.relative_to(ROOT))
    return sources, where


def test_no_import_cycles() -> None:
    sources, where = _package_sources()
    graph = import_graph(sources)
    assert len(graph) > 50 and any(m.startswith("l2reason_vllm") for m in graph), sorted(graph)[:5]
    cycles = [describe(graph, shortest_cycle(graph, comp), where) for comp in strongly_connected(graph)]
    assert not cycles, "import cycles (break each by moving the shared piece below both modules):\n" + "\n".join(cycles)


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        # a function-level import closes the cycle
        (
            {
                "l2reason.a": ("from l2reason.b import x\n", False),
                "l2reason.b": ("def f():\n    from l2reason.a import y\n", False),
            },
            [["l2reason.a", "l2reason.b"]],
        ),
        # a three-module cycle through a package __init__ (a name imported from the package)
        (
            {
                "l2reason.p": ("from l2reason.p.m import x\n", True),
                "l2reason.p.m": ("import l2reason.q\n", False),
                "l2reason.q": ("from l2reason.p import x\n", False),
            },
            [["l2reason.p", "l2reason.p.m", "l2reason.q"]],
        ),
        # TYPE_CHECKING imports and the implicit parent-package import do not count
        (
            {
                "l2reason.p": ("from l2reason.p.m import x\n", True),
                "l2reason.p.m": (
                    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from l2reason.p import x\n",
                    False,
                ),
            },
            [],
        ),
        # relative imports resolve; a plugin importing the core is no cycle
        (
            {
                "l2reason_vllm": ("from . import runtime\n", True),
                "l2reason_vllm.runtime": ("from l2reason.serving import slots\n", False),
                "l2reason.serving.slots": ("import torch\n", False),
            },
            [],
        ),
    ],
)
def test_cycle_finder(sources: dict[str, tuple[str, bool]], expected: list[list[str]]) -> None:
    graph = import_graph(sources)
    found = strongly_connected(graph)
    assert found == expected, graph
    for comp in found:
        cycle = shortest_cycle(graph, comp)
        assert cycle[0] == cycle[-1] and set(cycle) == set(comp)
        assert describe(graph, cycle, {}).count("->") == len(cycle) - 1

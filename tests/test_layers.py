"""Imports only look down: no module imports from a package above its own, and packages form no cycle.

The allowed order, lowest first (a package may import only from packages of a lower rank):

0. ``model``, ``config``, ``metrics``, ``logs``, ``times``, ``process``, ``tls``: the vocabulary every part shares
   (above the package's ``__init__``, which holds only its version)
1. ``kube``: Kubernetes API access and the resource catalog
2. ``linking``, ``export``, ``storage``, ``spool``, ``auth``: what the pipeline writes with, and who may read
3. ``pipeline`` (write side), ``frontend`` (read side), ``search`` (the record index and its API, scoped by ``auth``)
4. ``plugins`` (the plugin API of both sides), ``analysis`` (reads the frontend's views), ``alerts`` (rules over
   the search records)
5. ``sources`` (feed the pipeline), ``ui`` (serves the frontend and analysis)
6. ``app``: the composition root; then ``demo`` (runs an App), then ``cli`` (the commands)

Besides, the read side (``auth``, ``frontend``, ``analysis``, ``ui``) and the write side (``linking``, ``export``,
``spool``, ``pipeline``, ``sources``) never import each other; ``storage`` and ``search`` are both written and read.
Every import counts, including those inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "kelemetry_py"
RANKS = {
    "__init__": -1,
    **dict.fromkeys(("model", "config", "metrics", "logs", "times", "process", "tls"), 0),
    "kube": 1,
    **dict.fromkeys(("linking", "export", "storage", "spool", "auth"), 2),
    **dict.fromkeys(("pipeline", "frontend", "search"), 3),
    **dict.fromkeys(("plugins", "analysis", "alerts"), 4),
    **dict.fromkeys(("sources", "ui"), 5),
    "app": 6,
    "demo": 7,
    "cli": 8,
}
READ_SIDE = frozenset(("auth", "frontend", "analysis", "ui"))
WRITE_SIDE = frozenset(("linking", "export", "spool", "pipeline", "sources"))


def package_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(package, line) of every kelemetry_py package the module imports."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            if node.module == "kelemetry_py":  # a submodule, or a name of the package's own __init__
                modules = [f"kelemetry_py.{a.name if a.name in RANKS else '__init__'}" for a in node.names]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "kelemetry_py" and len(parts) > 1:
                found.add((parts[1], node.lineno))
    return found


def package_imports() -> list[tuple[str, str, str]]:
    """(importing package, imported package, 'file:line') for imports between different packages."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = package_of(path)
        for target, line in imported_packages(path):
            if target != source:
                edges.append((source, target, f"{path.relative_to(PACKAGE.parent)}:{line}"))
    return edges


def test_every_package_has_a_rank() -> None:
    packages = {package_of(path) for path in PACKAGE.rglob("*.py")}
    assert packages - RANKS.keys() == set(), "give the new package a rank in this test (and the docstring)"


def test_imports_only_look_down() -> None:
    upward = [
        f"{where}: {source} (rank {RANKS[source]}) imports {target} (rank {RANKS[target]})"
        for source, target, where in package_imports()
        if RANKS[target] >= RANKS[source]
    ]
    assert upward == []


def test_the_read_and_write_sides_stay_apart() -> None:
    crossing = [
        f"{where}: {source} imports {target}"
        for source, target, where in package_imports()
        if (source in READ_SIDE and target in WRITE_SIDE) or (source in WRITE_SIDE and target in READ_SIDE)
    ]
    assert crossing == []


def test_no_cycle_between_packages() -> None:
    graph = nx.DiGraph((source, target) for source, target, _ in package_imports())
    assert list(nx.simple_cycles(graph)) == []


def test_the_rule_catches_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    module = tmp_path / "core.py"
    module.write_text("def f():\n    from kelemetry_py.sources.differ import x\n    import kelemetry_py.pipeline\n")
    assert imported_packages(module) == {("sources", 2), ("pipeline", 3)}
    assert RANKS["sources"] > RANKS["pipeline"]
    assert list(nx.simple_cycles(nx.DiGraph([("pipeline", "sources"), ("sources", "pipeline")])))

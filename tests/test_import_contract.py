"""The core's import contract, read from the source (AST), so it holds without importing a module:
the core (`safesail/`) imports no room, and its import graph has no cycle.

Every import statement is an edge: at module level, under `if TYPE_CHECKING:` and inside
functions alike, since a circle that only a lazy or type-only import closes is still a circle.
`from safesail.a import b` is an edge to the module `safesail.a.b` when there is one, else to
`safesail.a`. Importing a submodule also runs its package's `__init__`, but that is Python's
order, not an edge of ours: only what `__init__` itself imports counts for the package.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = "safesail"
ROOMS = ("annotation", "active_learning", "exports", "app")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _core_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / CORE).rglob("*.py"))}


def _imports(name: str, path: Path) -> Iterator[tuple[int, str, str | None]]:
    """(line, imported module, imported name or None) for every import in the module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            for alias in node.names:
                yield node.lineno, module, alias.name
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value, None


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for _, module, member in _imports(name, path):
            if module != CORE and not module.startswith(CORE + "."):
                continue
            target = f"{module}.{member}" if member and f"{module}.{member}" in modules else module
            while target and target not in modules:  # an attribute path: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _room_imports(modules: dict[str, Path]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line}: imports {module}"
        for name, path in modules.items()
        for line, module, _ in _imports(name, path)
        if module.split(".")[0] in ROOMS
    ]


def test_core_imports_no_room():
    modules = _core_modules()
    assert len(modules) > 40  # the walk found the core
    offences = _room_imports(modules)
    assert not offences, "the core imports a room:\n" + "\n".join(offences)


def test_core_import_graph_has_no_cycle():
    graph = _graph(_core_modules())
    cycle = _cycle(graph)
    assert cycle is None, "import cycle in the core: " + " -> ".join(cycle or [])


def test_the_contract_sees_what_it_forbids(tmp_path, monkeypatch):
    """The checks above catch a room import and a circle, including one closed under
    TYPE_CHECKING and a relative one (a planted package, not the real core)."""
    pkg = tmp_path / CORE / "planted"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from safesail.planted.b import thing\nimport annotation.push\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\nthing = 1\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    modules = _core_modules()
    assert set(modules) == {"safesail.planted", "safesail.planted.a", "safesail.planted.b"}
    graph = _graph(modules)
    assert graph["safesail.planted.a"] == {"safesail.planted.b"}
    assert graph["safesail.planted.b"] == {"safesail.planted.a"}
    assert _cycle(graph) in (
        ["safesail.planted.a", "safesail.planted.b", "safesail.planted.a"],
        ["safesail.planted.b", "safesail.planted.a", "safesail.planted.b"],
    )
    assert _room_imports(modules) == [f"{Path(CORE, 'planted', 'a.py')}:2: imports annotation.push"]

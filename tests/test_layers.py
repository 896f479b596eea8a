"""The import graph of src/agelens, read statically with `ast`: layers point one way, no cycles.

Doors are the ways in from outside: `agelens.server` (the HTTP service, its jobs and Lambda
handler), `agelens.cli` and `agelens.__main__` (the command line), `agelens.bots` (chat bots).
Everything else is the core (analysis, models, imaging, batch, video, reports, training, the
URL fetcher, the HTTP client), which the doors use and which never imports a door, not even
inside a function or under `TYPE_CHECKING`: the core must be usable, and testable, without them.

Cycles are checked twice:
- between top-level units (`agelens.batch`, `agelens.models`, `agelens.server`, ...), counting
  every import that runs, at module level or inside a function. A lazy import inside a function
  cannot fail at import time, but it still ties the two units together, so a cycle through one
  is a design cycle all the same. Imports under `if TYPE_CHECKING:` never run and are exempt
  (annotations may name a type from anywhere).
- between single modules, counting module-level imports only: those are the cycles that break
  with a half-initialised module at import time. Function-level imports are exempt there, since
  every unit is fully imported before a function in it runs.

The root package `agelens` (its `__init__` re-exports the public names) is left out of both: a
submodule's `import agelens...` runs the root first anyway, and the root imports only `errors`
and `types` at module level.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
ROOT = "agelens"
DOORS = ("agelens.server", "agelens.cli", "agelens.__main__", "agelens.bots")


@dataclass(frozen=True)
class Import:
    """`importer` imports `imported` at `line`; `when` is "module", "function" or "typing"."""

    importer: str
    imported: str
    line: int
    when: str


def module_files(source: Path, package: str = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package` under `source`."""
    modules = {}
    for path in sorted((source / package).rglob("*.py")):
        parts = list(path.relative_to(source).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _owning_module(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of `name` that is a module (`agelens.batch.run_batch` -> batch)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


class _ImportVisitor(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, modules: dict[str, Path]) -> None:
        self.module = module
        self.is_package = is_package
        self.modules = modules
        self.functions = 0
        self.typing = 0
        self.found: list[Import] = []

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.functions += 1
        self.generic_visit(node)
        self.functions -= 1

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.visit_FunctionDef(node)

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        typing_only = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
        if not typing_only:
            self.generic_visit(node)
            return
        self.typing += 1
        for child in node.body:
            self.visit(child)
        self.typing -= 1
        for child in node.orelse:
            self.visit(child)

    def _add(self, target: str | None, node: ast.stmt) -> None:
        if target is None:
            return
        when = "typing" if self.typing else "function" if self.functions else "module"
        self.found.append(Import(self.module, target, node.lineno, when))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] == ROOT:
                self._add(_owning_module(alias.name, self.modules), node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.module.split(".")
            if not self.is_package:
                base.pop()
            base = base[: len(base) - (node.level - 1)]
            source = ".".join([*base, *([node.module] if node.module else [])])
        else:
            source = node.module or ""
        if source.split(".")[0] != ROOT:
            return
        for alias in node.names:
            # `from agelens.models import fetch` imports the submodule `agelens.models.fetch`
            submodule = f"{source}.{alias.name}"
            owner = submodule if submodule in self.modules else _owning_module(source, self.modules)
            self._add(owner, node)


def import_graph(source: Path, package: str = ROOT) -> list[Import]:
    """Every import of one of `package`'s modules by another (or the same) module of it."""
    modules = module_files(source, package)
    found: list[Import] = []
    for module, path in modules.items():
        visitor = _ImportVisitor(module, path.name == "__init__.py", modules)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        found.extend(visitor.found)
    return found


def is_door(module: str, doors: tuple[str, ...] = DOORS) -> bool:
    """True for a module of the server, the command line or the bots."""
    return any(module == door or module.startswith(door + ".") for door in doors)


def core_imports_of_doors(graph: list[Import], doors: tuple[str, ...] = DOORS) -> list[Import]:
    """Imports by a core module of a door module (each one a layering violation)."""
    return [i for i in graph if not is_door(i.importer, doors) and is_door(i.imported, doors)]


def unit_of(module: str) -> str:
    """The top-level unit a module belongs to: `agelens.models.fetch` -> `agelens.models`."""
    return ".".join(module.split(".")[:2])


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(edges.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def unit_cycles(graph: list[Import], package: str = ROOT) -> list[list[str]]:
    """Cycles between top-level units through imports that run (module or function level)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for found in graph:
        a, b = unit_of(found.importer), unit_of(found.imported)
        if found.when != "typing" and a != b and package not in (a, b):
            edges[a].add(b)
    return cycles(edges)


def module_cycles(graph: list[Import], package: str = ROOT) -> list[list[str]]:
    """Cycles between single modules through module-level imports."""
    edges: dict[str, set[str]] = defaultdict(set)
    for found in graph:
        a, b = found.importer, found.imported
        if found.when == "module" and a != b and package not in (a, b):
            edges[a].add(b)
    return cycles(edges)


def _explain(graph: list[Import], members: list[str], unit: bool) -> str:
    def key(module: str) -> str:
        return unit_of(module) if unit else module

    lines = sorted(
        {
            f"  {i.importer}:{i.line} imports {i.imported} ({i.when} level)"
            for i in graph
            if i.when != "typing"
            and key(i.importer) in members
            and key(i.imported) in members
            and key(i.importer) != key(i.imported)
        }
    )
    return " <-> ".join(members) + "\n" + "\n".join(lines)


@pytest.fixture(scope="module")
def graph() -> list[Import]:
    return import_graph(SOURCE)


def test_the_graph_is_read_in_full(graph: list[Import]) -> None:
    """Guards the checks below against passing because the reader found nothing."""
    seen = {(i.importer, i.imported, i.when) for i in graph}
    assert ("agelens.server.service", "agelens.urlfetch", "module") in seen
    assert ("agelens.cli", "agelens.batch", "function") in seen  # a lazy import in a command
    assert ("agelens.batch.core", "agelens.pipeline", "typing") in seen
    assert ("agelens.models.backends", "agelens.models.registry", "module") in seen
    modules = module_files(SOURCE)
    assert {i.imported for i in graph} <= set(modules)


def test_no_core_module_imports_a_door(graph: list[Import]) -> None:
    violations = core_imports_of_doors(graph)
    assert not violations, "core modules import a door:\n" + "\n".join(
        f"  {i.importer}:{i.line} imports {i.imported} ({i.when} level)" for i in violations
    )


def test_no_cycle_between_top_level_units(graph: list[Import]) -> None:
    found = unit_cycles(graph)
    assert not found, "\n".join(_explain(graph, members, unit=True) for members in found)


def test_no_cycle_between_modules_at_module_level(graph: list[Import]) -> None:
    found = module_cycles(graph)
    assert not found, "\n".join(_explain(graph, members, unit=False) for members in found)


def test_the_checks_catch_violations(tmp_path: Path) -> None:
    """A made-up package with each kind of violation: the checks above can fail."""
    files = {
        "agelens/__init__.py": "from agelens.types import Face\n",
        "agelens/types.py": "class Face: ...\n",
        "agelens/batch.py": "def run():\n    from agelens.cluster import ray_rows\n",
        "agelens/cluster.py": "from agelens.batch import run\n",
        "agelens/video/__init__.py": "",
        "agelens/video/sources.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from agelens.server import app\n"
        ),
        "agelens/video/a.py": "from . import b\n",
        "agelens/video/b.py": "from .a import x\n",
        "agelens/server/__init__.py": "",
        "agelens/server/app.py": "from ..batch import run\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    made_up = import_graph(tmp_path)
    assert [(i.importer, i.imported, i.when) for i in core_imports_of_doors(made_up)] == [
        ("agelens.video.sources", "agelens.server.app", "typing")
    ]
    assert ("agelens.server.app", "agelens.batch", "module") in {
        (i.importer, i.imported, i.when) for i in made_up
    }
    assert unit_cycles(made_up) == [["agelens.batch", "agelens.cluster"]]
    assert module_cycles(made_up) == [["agelens.video.a", "agelens.video.b"]]

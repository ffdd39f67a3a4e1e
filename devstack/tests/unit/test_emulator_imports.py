"""The Azure ML emulator's modules import each other without a cycle, counting every import.

Imports inside functions and under `if TYPE_CHECKING:` count too: a cycle hidden in a function
body or behind a type annotation is still a cycle of the design (handlers reaching back into the
app that registers them). `app.py` collects the routes; nothing imports it.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path

import devstack.aml

AML_DIR = Path(devstack.aml.__file__).resolve().parent


def module_name(package: str, package_dir: Path, path: Path) -> str:
    parts = list(path.relative_to(package_dir).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def import_graph(package: str, package_dir: Path) -> dict[str, set[str]]:
    """module -> the modules of `package` it imports anywhere in its source (any depth, any branch)."""
    files = {module_name(package, package_dir, p): p for p in sorted(package_dir.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for imported in targets:
                target = imported
                while target and target not in files:  # `import devstack.aml.x.y` → the longest known module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import cycle (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_the_emulator_has_no_import_cycle() -> None:
    graph = import_graph("devstack.aml", AML_DIR)
    assert len(graph) >= 15, sorted(graph)  # really read the package
    assert "devstack.aml.runner" in graph["devstack.aml.jobs"]  # really saw imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_nothing_imports_the_app() -> None:
    graph = import_graph("devstack.aml", AML_DIR)
    importers = sorted(m for m, targets in graph.items() if "devstack.aml.app" in targets)
    assert importers == ["devstack.aml.__main__"]


def test_the_checker_sees_cycles_through_functions_and_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "app.py").write_text("from pkg import handlers\n")
    (pkg / "handlers.py").write_text(textwrap.dedent("""
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from pkg.app import App
    """))
    (pkg / "jobs.py").write_text("def run():\n    from .runner import go\n")
    (pkg / "runner.py").write_text("import pkg.jobs\n")
    graph = import_graph("pkg", pkg)
    assert graph["pkg.jobs"] == {"pkg.runner"} and graph["pkg.runner"] == {"pkg.jobs"}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert set(cycle) in ({"pkg.app", "pkg.handlers"}, {"pkg.jobs", "pkg.runner"})
    (pkg / "handlers.py").write_text("")
    (pkg / "jobs.py").write_text("")
    assert find_cycle(import_graph("pkg", pkg)) is None

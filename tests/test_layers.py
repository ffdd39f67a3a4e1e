"""Each layer keeps its one rule (ARCHITECTURE.md). Imports are read with `ast`, function-level ones included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1] / "shared"

# layer → module prefixes it must never import
FORBIDDEN = {
    "domain": ("azure", "shared.services", "shared.adapters", "shared.composition", "shared.ports", "devstack"),
    "config": ("azure", "shared.services", "shared.adapters", "shared.composition", "devstack"),
    "services": ("azure", "shared.adapters", "shared.composition", "devstack"),
}
PRODUCT = ("shared", "functions")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{path.relative_to(SHARED.parent)}:{line} imports {module}"
            for path in files for line, module in _imports(path)
            if any(module == f or module.startswith(f + ".") for f in forbidden)]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_it_must_not(layer: str) -> None:
    files = sorted((SHARED / layer).rglob("*.py"))
    assert files, f"shared/{layer} is empty"
    assert _violations(files, FORBIDDEN[layer]) == []


def test_ports_speak_only_domain_types() -> None:
    assert _violations([SHARED / "ports.py"], FORBIDDEN["services"]) == []


def test_the_product_never_imports_the_local_stack() -> None:
    root = SHARED.parent
    files = [root / "function_app.py"] + [p for top in PRODUCT for p in sorted((root / top).rglob("*.py"))]
    assert _violations(files, ("devstack", "tests")) == []


def test_the_checker_sees_function_level_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from azure.core import MatchConditions\n    return MatchConditions\n")
    assert _imports(sample) == [(2, "azure.core")]

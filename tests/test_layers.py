"""Each layer keeps its one rule (ARCHITECTURE.md). Imports are read with `ast`, function-level ones included."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1] / "shared"

# layer → module prefixes it must never import
FORBIDDEN = {
    "domain": ("azure", "shared.services", "shared.adapters", "shared.composition", "shared.ports", "devstack"),
    "config": ("azure", "shared.services", "shared.adapters", "shared.composition", "devstack"),
    "services": ("azure", "shared.adapters", "shared.composition", "devstack"),
    "status_page": ("azure", "shared.adapters", "shared.composition", "devstack"),  # renders a view, reads nothing
    "cli": ("azure", "shared.adapters", "devstack"),  # commands get what they use from the composition root
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


# -- one error hierarchy, one vocabulary, services on ports even through what they import ------------------------
BUILTIN_EXCEPTIONS = {name for name, value in vars(builtins).items()
                      if isinstance(value, type) and issubclass(value, BaseException)}
# A simulated process death in the fault harness: deliberately no Exception, so no `except Exception` swallows it.
OUTSIDE_THE_HIERARCHY = {("shared/adapters/memory/faults.py", "ProcessCrash")}


def _base_names(node: ast.ClassDef) -> list[str]:
    return [b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases]


def test_every_exception_of_the_product_is_in_the_one_hierarchy() -> None:
    """`shared/errors.py` says which errors are retried: a class deriving straight from a builtin exception
    escapes that table (the edge would treat it as a bug and retry it)."""
    root = SHARED.parent
    outside = [f"{path.relative_to(root)}:{node.lineno} class {node.name}({', '.join(_base_names(node))})"
               for top in PRODUCT for path in sorted((root / top).rglob("*.py")) if path.name != "errors.py"
               for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(node, ast.ClassDef) and set(_base_names(node)) & BUILTIN_EXCEPTIONS
               and (str(path.relative_to(root)), node.name) not in OUTSIDE_THE_HIERARCHY]
    assert outside == []


def _string_constants(tree: ast.AST) -> list[tuple[int, str]]:
    return [(n.lineno, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_every_evergreen_tag_is_named_only_in_the_vocabulary() -> None:
    """An `evergreen.<name>` string is a tag (`vocabulary.Tag`) or a span attribute (`telemetry.Attr`), never
    a literal elsewhere."""
    import re

    tag = re.compile(r"evergreen\.[a-z0-9_]+(\.[a-z0-9_]+)*")
    found = []
    for path in sorted(p for top in PRODUCT for p in (SHARED.parent / top).rglob("*.py")):
        if path == SHARED / "domain" / "vocabulary.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if path == SHARED / "domain" / "telemetry.py":  # the span attribute names: the body of `class Attr`
            attrs = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Attr")
            tree = ast.Module(body=[n for n in tree.body if n is not attrs], type_ignores=[])
        found += [f"{path.relative_to(SHARED.parent)}:{line} {text!r}" for line, text in _string_constants(tree)
                  if tag.fullmatch(text) and not text.endswith((".py", ".yaml", ".json"))]
    assert found == []


def test_every_outcome_names_its_action_with_a_type() -> None:
    """An executor's outcome (and the edge's own, for timers and HTTP) says what it did, and how it went
    (`status`), with a vocabulary enum (or a typed plan action), not a free string."""
    import dataclasses
    import importlib
    import pkgutil
    import typing

    import shared.services

    loose = []
    names = [info.name for info in pkgutil.iter_modules(shared.services.__path__, "shared.services.")]
    for module in map(importlib.import_module, [*names, "functions.edge"]):
        for cls in vars(module).values():
            if isinstance(cls, type) and cls.__module__ == module.__name__ and dataclasses.is_dataclass(cls):
                hints = typing.get_type_hints(cls)
                loose += [f"{cls.__module__}.{cls.__qualname__}.{name}: str" for name in ("action", "status")
                          if hints.get(name) is str]  # what it did, and (retention) how it went
    assert loose == []


def test_the_pure_layers_load_no_azure_sdk_even_through_what_they_import() -> None:
    """The import checks above read each file's own imports; this one imports every module of the domain,
    config, ports and services in a fresh interpreter and looks at what got loaded."""
    import subprocess
    import sys

    code = ("import importlib, pkgutil, sys\n"
            "import shared.domain, shared.config, shared.services, shared.ports\n"
            "for pkg in (shared.domain, shared.config, shared.services):\n"
            "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
            "        importlib.import_module(m.name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('azure', 'devstack')\n"
            "             or m.startswith(('shared.adapters', 'shared.composition'))))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=SHARED.parent, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

"""A small evaluator of Bicep expressions, over the JSON tree that pycep-parser produces.

The Bicep compiler is not available here, and pycep only parses. To check what a template *does* (for example,
which filter each Event Grid subscription gets for each entry of the subscription file), this module evaluates
the expressions that matter with the loop variables bound to real data. Values only known at deployment time
(resource ids, module outputs, keys) become `Opaque` strings such as ``<functionApp.id>``, so checks can still
see where a value comes from.

pycep quirks handled here (pycep-parser 0.7.1):
- identifiers and string literals are both plain strings; a string that names something in scope is an
  identifier, anything else is a literal;
- ``a.b == c`` parses as ``a.(b == c)`` (likewise ``??``, ``&&``...): `_access` moves the operator back out;
- ``a.?b`` loses its ``?``; a missing property therefore reads as null (Bicep would fail on ``a.b``);
- string interpolations stay raw (``'x${a.b}'``); `_interpolate` evaluates the dotted paths inside them, and
  parses any other expression inside them (``'${substring(a, 1)}'``) on its own;
- ``a!.b`` (non-null assertion) loses its ``!``, which is harmless here.

Deployment-time list functions (``listKeys``) that the evaluation reaches are recorded in
`Evaluator.list_calls`: like ARM's ``if()``, a conditional evaluates only its taken branch, so a check can see
whether a key is looked up for an item that does not need it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pycep import BicepParser

_PARSER = BicepParser()
_PATH_RE = re.compile(r"^[A-Za-z_]\w*(?:\.\w+|\[\d+\])*$")
_INTERPOLATION_RE = re.compile(r"\$\{([^{}]*)\}")
_BINARY_OPERATORS = {
    "equals", "not_equals", "coalesce", "and", "or", "greater_than", "greater_than_or_equals", "less_than",
    "less_than_or_equals", "equals_case_insensitive", "not_equals_case_insensitive",
}


class Opaque(str):
    """A value known only at deployment time, named by the expression that produces it."""


class EvaluationError(Exception):
    """The expression uses something this evaluator does not model."""


@dataclass(frozen=True)
class ResourceRef:
    """A symbolic resource (or module) of a template."""

    symbol: str
    type: str
    existing: bool


@dataclass
class Template:
    """One parsed .bicep file."""

    path: Path
    tree: dict[str, Any]
    _imports: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Template:
        tree: dict[str, Any] = dict(_PARSER.parse(file_path=path))
        template = cls(path=path, tree=tree)
        for name, spec in (tree.get("imports") or {}).items():
            exported = Template.load(path.parent / spec["file_path"])
            template._imports[name] = exported.evaluator().variable(name)
        return template

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(self.tree.get("parameters") or {})

    @property
    def resources(self) -> dict[str, Any]:
        return dict(self.tree.get("resources") or {})

    @property
    def modules(self) -> dict[str, Any]:
        return dict(self.tree.get("modules") or {})

    def resources_of_type(self, resource_type: str) -> Iterator[tuple[str, dict[str, Any]]]:
        for symbol, resource in self.resources.items():
            if resource["type"].lower() == resource_type.lower():
                yield symbol, resource

    def evaluator(self, params: Mapping[str, Any] | None = None) -> Evaluator:
        return Evaluator(self, dict(params or {}))


def body(resource: dict[str, Any]) -> dict[str, Any]:
    """The `{...}` of a resource or module, whether or not it has a loop or a condition."""
    config: dict[str, Any] = resource["config"]
    return config["config"] if "loop_type" in config or "condition" in config else config


def loop(resource: dict[str, Any]) -> dict[str, Any] | None:
    """pycep's loop description of a resource or module (`item_name`, `array_name`...), if it has one."""
    loop_type: dict[str, Any] | None = resource["config"].get("loop_type")
    return loop_type["detail"] if loop_type else None


class Evaluator:
    """Evaluates pycep expression trees of one template, with given parameter values."""

    def __init__(self, template: Template, params: dict[str, Any]) -> None:
        self.template = template
        self.params = params
        self._variables: dict[str, Any] = {}
        self.list_calls: list[str] = []

    # --- names ---------------------------------------------------------------------------------------------
    def variable(self, name: str) -> Any:
        if name not in self._variables:
            self._variables[name] = self.eval(self.template.tree["variables"][name]["value"])
        return self._variables[name]

    def _lookup(self, name: str, scope: Mapping[str, Any]) -> tuple[bool, Any]:
        tree = self.template.tree
        if name in scope:
            return True, scope[name]
        if name in self.params:
            return True, self.params[name]
        if name in (tree.get("parameters") or {}):
            default = tree["parameters"][name].get("default")
            return True, self.eval(default) if default is not None else Opaque(f"<param {name}>")
        if name in (tree.get("variables") or {}):
            return True, self.variable(name)
        if name in self.template._imports:
            return True, self.template._imports[name]
        if name in (tree.get("resources") or {}):
            resource = tree["resources"][name]
            return True, ResourceRef(name, resource["type"], bool(resource.get("existing")))
        if name in (tree.get("modules") or {}):
            return True, ResourceRef(name, "module", False)
        return False, None

    # --- expressions ---------------------------------------------------------------------------------------
    def eval(self, node: Any, scope: Mapping[str, Any] | None = None) -> Any:
        scope = scope or {}
        if node is None or isinstance(node, bool | int | float):
            return node
        if isinstance(node, str):
            found, value = self._lookup(node, scope)
            if found:
                return value
            return self._interpolate(node, scope) if "${" in node else node
        if isinstance(node, list):
            return [self.eval(item, scope) for item in node]
        if isinstance(node, dict):
            if set(node) == {"operator"}:
                return self._operator(node["operator"], scope)
            if set(node) == {"function"}:
                return self._function(node["function"], scope)
            if node.get("type") == "lambda_expression":
                return self._lambda(node["detail"], scope)
            return {key.strip("'"): self.eval(value, scope) for key, value in node.items()}
        raise EvaluationError(f"cannot evaluate {node!r}")

    def _interpolate(self, text: str, scope: Mapping[str, Any]) -> str:
        opaque = False

        def replace(match: re.Match[str]) -> str:
            nonlocal opaque
            expression = match.group(1).strip()
            if _PATH_RE.match(expression):
                value = self._path(expression, scope)
            else:
                value = self._inner_expression(expression, scope)
            opaque = opaque or isinstance(value, Opaque)
            return str(value)

        result = _INTERPOLATION_RE.sub(replace, text)
        return Opaque(result) if opaque else result

    def _inner_expression(self, expression: str, scope: Mapping[str, Any]) -> Any:
        """An interpolated expression other than a dotted path; opaque if it is beyond this evaluator."""
        tree = _expression_tree(expression)
        if tree is None:
            return Opaque(f"<{expression}>")
        try:
            return self.eval(tree, scope)
        except (EvaluationError, KeyError, TypeError):
            return Opaque(f"<{expression}>")

    def _path(self, expression: str, scope: Mapping[str, Any]) -> Any:
        head, *rest = re.findall(r"[A-Za-z_]\w*|\[\d+\]", expression)
        found, value = self._lookup(head, scope)
        if not found:
            raise EvaluationError(f"unknown name {head!r} in interpolation {expression!r}")
        for part in rest:
            value = _index(value, int(part[1:-1])) if part.startswith("[") else _get(value, part)
        return value

    def _access(self, base: Any, member: Any, scope: Mapping[str, Any]) -> Any:
        """`base.member`, where pycep may have folded a following operator into `member`."""
        if isinstance(member, str):
            return _get(base, member)
        operator = member.get("operator") if isinstance(member, dict) else None
        if operator is None:
            raise EvaluationError(f"cannot access {member!r}")
        operands = operator["operands"]
        if operator["type"] == "property_accessor":
            return self._access(self._access(base, operands["operand_1"], scope), operands["operand_2"], scope)
        if operator["type"] == "index_accessor":
            inner = self._access(base, operands["operand_1"], scope)
            return _index(inner, self.eval(operands["operand_2"], scope))
        if operator["type"] in _BINARY_OPERATORS:
            left = self._access(base, operands["operand_1"], scope)
            return self._binary(operator["type"], left, operands["operand_2"], scope)
        raise EvaluationError(f"unsupported operator after '.': {operator['type']}")

    def _binary(self, kind: str, left: Any, right_node: Any, scope: Mapping[str, Any]) -> Any:
        if kind == "coalesce":
            return left if left is not None else self.eval(right_node, scope)
        if kind == "and":
            return _truth(left) and _truth(self.eval(right_node, scope))
        if kind == "or":
            return _truth(left) or _truth(self.eval(right_node, scope))
        right = self.eval(right_node, scope)
        if isinstance(left, Opaque) or isinstance(right, Opaque):
            return Opaque(f"<{left} {kind} {right}>")
        comparisons: dict[str, Callable[[Any, Any], bool]] = {
            "equals": lambda a, b: bool(a == b),
            "not_equals": lambda a, b: bool(a != b),
            "equals_case_insensitive": lambda a, b: str(a).lower() == str(b).lower(),
            "not_equals_case_insensitive": lambda a, b: str(a).lower() != str(b).lower(),
            "greater_than": lambda a, b: bool(a > b),
            "greater_than_or_equals": lambda a, b: bool(a >= b),
            "less_than": lambda a, b: bool(a < b),
            "less_than_or_equals": lambda a, b: bool(a <= b),
        }
        return comparisons[kind](left, right)

    def _operator(self, operator: dict[str, Any], scope: Mapping[str, Any]) -> Any:
        kind, operands = operator["type"], operator["operands"]
        if kind == "property_accessor":
            return self._access(self.eval(operands["operand_1"], scope), operands["operand_2"], scope)
        if kind == "index_accessor":
            return _index(self.eval(operands["operand_1"], scope), self.eval(operands["operand_2"], scope))
        if kind == "conditional":
            condition = self.eval(operands["condition"], scope)
            if isinstance(condition, Opaque):
                raise EvaluationError(f"condition known only at deployment: {condition}")
            return self.eval(operands["true_value" if _truth(condition) else "false_value"], scope)
        if kind == "not":
            return not _truth(self.eval(operands["bool_value"], scope))
        if kind in _BINARY_OPERATORS:
            return self._binary(kind, self.eval(operands["operand_1"], scope), operands["operand_2"], scope)
        raise EvaluationError(f"unsupported operator {kind}")

    def _lambda(self, detail: dict[str, Any], scope: Mapping[str, Any]) -> Callable[..., Any]:
        names = [value for key, value in detail.items() if key.startswith("var_")]

        def call(*args: Any) -> Any:
            return self.eval(detail["expression"], {**scope, **dict(zip(names, args, strict=True))})

        return call

    def _function(self, function: dict[str, Any], scope: Mapping[str, Any]) -> Any:
        kind = function["type"]
        raw = function.get("parameters") or {}
        user_functions = self.template.tree.get("functions") or {}
        if kind in user_functions:
            definition = user_functions[kind]
            args = [self.eval(value, scope) for value in raw.values()]
            return self.eval(definition["expression"], dict(zip(definition["args"], args, strict=True)))
        if kind == "load_json_content":
            return json.loads((self.template.path.parent / raw["file_path"]).read_text())
        if kind == "list_func":
            target = self.eval(raw["resource_identifier"], scope)
            self.list_calls.append(f"{raw['func_name']}({target})")
            return Opaque(f"<{raw['func_name']}({target})>")
        args = [self.eval(value, scope) for value in raw.values() if value is not None]
        builtins: dict[str, Callable[..., Any]] = {
            "filter": lambda items, predicate: [item for item in items if _truth(predicate(item))],
            "map": lambda items, mapper: [mapper(item) for item in items],
            "flatten": lambda items: [inner for item in items for inner in item],
            "range": lambda start, count: list(range(start, start + count)),
            "length": len,
            "empty": lambda value: value is None or (not isinstance(value, Opaque) and len(value) == 0),
            "contains": lambda container, item: item in container,
            "union": _union,
            "take": lambda value, count: value[:count],
            "to_lower": lambda value: value.lower() if not isinstance(value, Opaque) else Opaque(value.lower()),
            "starts_with": lambda text, prefix: str(text).lower().startswith(str(prefix).lower()),
            "substring": lambda text, start, count=None: text[start:] if count is None else text[start:start + count],
            "split": lambda text, delimiter: text.split(delimiter),
            "trim": lambda text: text.strip(),
        }
        if kind in builtins:
            if any(isinstance(arg, Opaque) for arg in args) and kind not in ("union", "to_lower"):
                return Opaque(f"<{kind}({', '.join(map(str, args))})>")
            return builtins[kind](*args)
        # Deployment-time functions (guid, uniqueString, resourceId, subscription()...): keep the arguments
        # visible, because checks look for them (e.g. a role GUID inside subscriptionResourceId()).
        return Opaque(f"<{kind}({', '.join(map(str, args))})>")


@lru_cache(maxsize=256)
def _expression_tree(expression: str) -> Any:
    """The pycep tree of one Bicep expression (from inside an interpolation), or None if pycep cannot parse it."""
    try:
        tree = _PARSER.parse(text=f"var expression = {expression}\n")
    except Exception:  # pycep raises lark's errors, of several kinds; the caller then keeps the text opaque
        return None
    return tree["variables"]["expression"]["value"]


def _truth(value: Any) -> bool:
    if isinstance(value, Opaque):
        raise EvaluationError(f"truth value known only at deployment: {value}")
    return bool(value)


def _get(base: Any, name: str) -> Any:
    if isinstance(base, ResourceRef):
        return Opaque(f"<{base.symbol}.{name}>")
    if isinstance(base, Opaque):
        return Opaque(f"{base}.{name}")
    if isinstance(base, dict):
        return base.get(name)
    if base is None:
        return None
    raise EvaluationError(f"cannot read .{name} of {base!r}")


def _index(base: Any, index: Any) -> Any:
    if isinstance(base, ResourceRef | Opaque) or isinstance(index, Opaque):
        return Opaque(f"<{base}[{index}]>")
    return base[index]


def _union(*values: Any) -> Any:
    if all(isinstance(value, list) for value in values):
        merged: list[Any] = []
        for value in values:
            merged.extend(item for item in value if item not in merged)
        return merged
    if all(isinstance(value, dict) for value in values):
        result: dict[str, Any] = {}
        for value in values:
            result.update(value)
        return result
    return Opaque(f"<union({', '.join(map(str, values))})>")

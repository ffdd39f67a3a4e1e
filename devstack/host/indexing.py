"""Load the Python v2 app and derive every function's triggers and bindings from its own metadata.

Mirrors the Python worker's indexing: import `function_app`, find the `FunctionApp`, call
`get_functions()` once, read each function's raw bindings (the function.json it would generate),
resolve `%SETTING%` expressions and check the trigger parameter's annotation against the binding's
converter, so type mismatches surface at start-up as they do in Azure.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.host.patterns import BlobPathPattern, PatternError, RouteTemplate
from devstack.host.settings import SettingsError, resolve_expression

log = logging.getLogger(__name__)

SUPPORTED_TRIGGERS = {"httpTrigger", "eventGridTrigger", "blobTrigger", "queueTrigger", "timerTrigger"}
_NOT_EXPRESSIONS = {"name", "type", "direction"}


class AppLoadError(RuntimeError):
    """The function app could not be imported or indexed (the worker's indexing error)."""


@dataclass(frozen=True)
class Binding:
    """One entry of the function's bindings, with `%SETTING%` expressions resolved."""

    name: str
    type: str
    direction: str
    config: Mapping[str, Any]

    @property
    def is_output(self) -> bool:
        return self.direction in {"out", "inout"}


@dataclass
class FunctionInfo:
    """Everything the host needs to trigger and invoke one function."""

    name: str
    trigger: Binding
    bindings: tuple[Binding, ...]
    func: Callable[..., Any] = field(repr=False)
    annotations: dict[str, Any] = field(repr=False)
    parameters: tuple[str, ...]
    is_async: bool
    error: str | None = None
    disabled: bool = False
    route: RouteTemplate | None = None
    methods: frozenset[str] | None = None
    blob_pattern: BlobPathPattern | None = None

    @property
    def trigger_type(self) -> str:
        return self.trigger.type

    @property
    def runnable(self) -> bool:
        return self.error is None and not self.disabled

    def inputs(self) -> list[Binding]:
        return [b for b in self.bindings if not b.is_output and b is not self.trigger]

    def outputs(self) -> list[Binding]:
        return [b for b in self.bindings if b.is_output]


def load_app(app_dir: Path, module_name: str = "function_app") -> Any:
    """Import the app module from `app_dir` and return its single FunctionApp/FunctionRegister."""
    import azure.functions as func

    app_path = str(app_dir.resolve())
    if app_path not in sys.path:
        sys.path.insert(0, app_path)
    os.chdir(app_path)
    sys.modules.pop(module_name, None)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise AppLoadError(f"Error importing '{module_name}' from {app_path}: {exc!r}") from exc
    apps = [value for value in vars(module).values() if isinstance(value, func.FunctionRegister)]
    if not apps:
        raise AppLoadError(f"'{module_name}.py' defines no FunctionApp instance")
    if len(apps) > 1:
        raise AppLoadError(f"'{module_name}.py' defines {len(apps)} FunctionApp instances; define exactly one")
    return apps[0]


def index_functions(app: Any, settings: Mapping[str, str]) -> dict[str, FunctionInfo]:
    """Index every function of `app` (call once per app object: `get_functions()` is not repeatable)."""
    try:
        functions = app.get_functions()
    except Exception as exc:
        raise AppLoadError(f"Error indexing the function app: {exc}") from exc
    indexed: dict[str, FunctionInfo] = {}
    for function in functions:
        info = _index_one(function, settings)
        if info.name.lower() in indexed:
            raise AppLoadError(f"Function name '{info.name}' is used twice (names are case-insensitive)")
        indexed[info.name.lower()] = info
    return indexed


def _index_one(function: Any, settings: Mapping[str, str]) -> FunctionInfo:
    name = str(function.get_function_name())
    user_function = function.get_user_function()
    raw = [json.loads(text) for text in function.get_raw_bindings()]
    error: str | None = None
    bindings: list[Binding] = []
    for entry in raw:
        config: dict[str, Any] = {}
        for key, value in entry.items():
            config[key] = value
            if isinstance(value, str) and key not in _NOT_EXPRESSIONS:
                try:
                    config[key] = resolve_expression(value, settings)
                except SettingsError as exc:
                    error = error or f"binding '{entry.get('name')}': {exc}"
        bindings.append(
            Binding(
                name=str(entry["name"]),
                type=str(entry["type"]),
                direction=str(entry.get("direction", "in")).lower(),
                config=config,
            )
        )
    trigger_name = function.get_trigger().name
    trigger = next(b for b in bindings if b.name == trigger_name)
    try:
        annotations = typing.get_type_hints(user_function)
    except Exception:  # unresolvable forward references: fall back to the raw annotations
        annotations = dict(getattr(user_function, "__annotations__", {}))
    parameters = tuple(inspect.signature(user_function).parameters)
    info = FunctionInfo(
        name=name,
        trigger=trigger,
        bindings=tuple(bindings),
        func=user_function,
        annotations=annotations,
        parameters=parameters,
        is_async=inspect.iscoroutinefunction(user_function),
        error=error,
        disabled=_is_disabled(name, settings),
    )
    if info.error is None:
        info.error = _prepare_trigger(info)
    if info.error is None:
        info.error = _check_annotation(info)
    if info.error:
        log.error("Function '%s' is in error and will not run: %s", name, info.error)
    return info


def _is_disabled(name: str, settings: Mapping[str, str]) -> bool:
    value = settings.get(f"AzureWebJobs.{name}.Disabled", "")
    return value.strip().lower() in {"1", "true"}


def _prepare_trigger(info: FunctionInfo) -> str | None:
    config = info.trigger.config
    try:
        if info.trigger_type == "httpTrigger":
            info.route = RouteTemplate(str(config.get("route") or info.name))
            methods = config.get("methods")
            info.methods = frozenset(str(m).upper() for m in methods) if methods else None
        elif info.trigger_type == "blobTrigger":
            info.blob_pattern = BlobPathPattern(str(config["path"]))
        elif info.trigger_type == "queueTrigger" and not config.get("queueName"):
            return "queueTrigger has no queueName"
        elif info.trigger_type == "timerTrigger" and not config.get("schedule"):
            return "timerTrigger has no schedule"
        elif info.trigger_type not in SUPPORTED_TRIGGERS:
            return f"trigger type '{info.trigger_type}' is not supported by the local host"
    except (PatternError, KeyError) as exc:
        return f"invalid {info.trigger_type}: {exc}"
    return None


def _check_annotation(info: FunctionInfo) -> str | None:
    """Reject a trigger parameter whose annotation its converter cannot produce, as the worker does."""
    from devstack.host import bindings

    if info.trigger_type == "httpTrigger":
        return None
    annotation = info.annotations.get(info.trigger.name)
    if annotation is None:
        return None
    if bindings.is_deferred(annotation):
        if bindings.deferred_converter(info.trigger_type) is None:
            return f"parameter '{info.trigger.name}' uses an SDK type that '{info.trigger_type}' cannot bind"
        return None
    converter = bindings.converter(info.trigger_type)
    if converter is None or not isinstance(annotation, type):
        return None
    if not converter.check_input_type_annotation(annotation):
        return (
            f'type of {info.trigger.name} binding "{info.trigger_type}" does not match its Python '
            f"annotation '{getattr(annotation, '__name__', annotation)}'"
        )
    return None

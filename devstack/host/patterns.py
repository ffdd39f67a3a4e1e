"""Blob trigger path patterns and HTTP route templates, compiled to regular expressions.

Both are pure so they can be tested without a host: `BlobPathPattern("landing/{name}")` matches
`"landing/a b/ü.csv"` with `{"name": "a b/ü.csv"}`, as the blob trigger does; `RouteTemplate`
follows ASP.NET route templates as the Functions host uses them (`{id:int}`, `{rest?}`, `{*path}`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_PARAM = re.compile(r"\{([^{}]+)\}")
_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "float": r"-?\d+(?:\.\d+)?",
    "double": r"-?\d+(?:\.\d+)?",
    "decimal": r"-?\d+(?:\.\d+)?",
    "bool": r"(?i:true|false)",
    "alpha": r"[A-Za-z]+",
    "guid": r"[0-9A-Fa-f]{8}-?(?:[0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12}",
}


class PatternError(ValueError):
    """A trigger path or route template cannot be compiled."""


@dataclass(frozen=True)
class BlobPathPattern:
    """`container/blob-pattern` of a blob trigger; `{x}` captures (across `/` after the container)."""

    template: str
    regex: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if "/" not in self.template.strip("/"):
            raise PatternError(f"blob path '{self.template}' must be 'container/blob-pattern'")
        container, _, blob = self.template.strip("/").partition("/")
        names: list[str] = []
        regex = _compile_part(container, r"[^/]+", names) + "/" + _compile_part(blob, r".+", names)
        object.__setattr__(self, "regex", re.compile(f"^{regex}$", re.DOTALL))

    @property
    def container(self) -> str:
        return self.template.strip("/").partition("/")[0]

    def match(self, blob_path: str) -> dict[str, str] | None:
        """Binding data for `container/blob` if it matches, else None."""
        found = self.regex.match(blob_path)
        return None if found is None else found.groupdict()


def _compile_part(text: str, capture: str, names: list[str]) -> str:
    out: list[str] = []
    position = 0
    for match in _PARAM.finditer(text):
        out.append(re.escape(text[position : match.start()]))
        name = match.group(1).strip()
        if not name.isidentifier():
            raise PatternError(f"'{{{name}}}' in '{text}' is not a valid binding parameter name")
        if name in names:
            raise PatternError(f"'{{{name}}}' appears twice in blob path pattern")
        names.append(name)
        out.append(f"(?P<{name}>{capture})")
        position = match.end()
    out.append(re.escape(text[position:]))
    return "".join(out)


@dataclass(frozen=True)
class RouteTemplate:
    """An HTTP trigger route such as `items/{id:int}/{rest?}`; literals match case-insensitively."""

    template: str
    regex: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        parts: list[str] = []
        for index, segment in enumerate(s for s in self.template.strip("/").split("/") if s):
            separator = "" if index == 0 else "/"
            whole = _PARAM.fullmatch(segment)
            if whole:
                name, pattern, optional, catch_all = _route_param(whole.group(1))
                group = f"(?P<{name}>{pattern})"
                if catch_all or optional:
                    parts.append(f"(?:{separator}{group})?")
                else:
                    parts.append(separator + group)
                continue
            compiled: list[str] = [separator]
            position = 0
            for match in _PARAM.finditer(segment):
                compiled.append(re.escape(segment[position : match.start()]))
                name, pattern, _optional, _catch = _route_param(match.group(1))
                compiled.append(f"(?P<{name}>{pattern})")
                position = match.end()
            compiled.append(re.escape(segment[position:]))
            parts.append("".join(compiled))
        try:
            regex = re.compile("^" + "".join(parts) + "/?$", re.IGNORECASE | re.DOTALL)
        except re.error as exc:
            raise PatternError(f"route '{self.template}' cannot be compiled: {exc}") from exc
        object.__setattr__(self, "regex", regex)

    def match(self, path: str) -> dict[str, str] | None:
        """Route parameters if `path` (without the route prefix) matches, else None."""
        found = self.regex.match(path.strip("/"))
        if found is None:
            return None
        return {key: value for key, value in found.groupdict().items() if value is not None}


def _route_param(spec: str) -> tuple[str, str, bool, bool]:
    """(name, regex, optional, catch-all) of one `{...}` route parameter."""
    spec = spec.strip()
    catch_all = spec.startswith("*")
    spec = spec.lstrip("*")
    spec, _, _default = spec.partition("=")
    optional = spec.endswith("?")
    spec = spec.rstrip("?")
    name, _, constraint = spec.partition(":")
    if not name.isidentifier():
        raise PatternError(f"route parameter '{{{spec}}}' is not a valid name")
    if catch_all:
        return name, ".*", True, True
    kind = constraint.split(":")[0].split("(")[0].lower()
    return name, _CONSTRAINTS.get(kind, r"[^/]+"), optional or bool(_default), False

"""Event Grid subscription filters with Azure's documented semantics (pure; no I/O).

Source: learn.microsoft.com/azure/event-grid/event-filtering. In short:
- `includedEventTypes`: case-insensitive; absent, empty or containing `All` lets every type through.
- `subjectBeginsWith` / `subjectEndsWith`: case-insensitive unless `isSubjectCaseSensitive`.
- Advanced filters are AND-ed; the values of one filter are OR-ed. String comparisons are
  case-insensitive. Key values whose type does not match the operator's type are ignored. An array key
  is examined element by element only with `enableAdvancedFilteringOnArrays` (otherwise it is a type
  mismatch). A missing key does not match, except for NumberNotIn, StringNotIn (and, by the same logic,
  NumberNotInRange) which match, and IsNullOrUndefined which matches; `null` counts as missing.
- Keys: `data.a.b` walks the event with `.` as the separator (no escaping, as in Azure). The first
  segment (`Id`, `Subject`, `EventType`, `Data`, ...) is matched case-insensitively; nested names exactly
  first, then case-insensitively (Azure ML payloads arrive as `ModelTags` or `modelTags`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from devstack.eventgrid.config import AdvancedFilter, EventFilter

_MISSING = object()

_STRING_POSITIVE: dict[str, Callable[[str, str], bool]] = {
    "stringin": lambda key, val: key == val,
    "stringcontains": lambda key, val: val in key,
    "stringbeginswith": lambda key, val: key.startswith(val),
    "stringendswith": lambda key, val: key.endswith(val),
}
# Negated operators: name -> (positive comparison, result when the key is missing)
_STRING_NEGATIVE: dict[str, tuple[Callable[[str, str], bool], bool]] = {
    "stringnotin": (_STRING_POSITIVE["stringin"], True),
    "stringnotcontains": (_STRING_POSITIVE["stringcontains"], False),
    "stringnotbeginswith": (_STRING_POSITIVE["stringbeginswith"], False),
    "stringnotendswith": (_STRING_POSITIVE["stringendswith"], False),
}
_NUMBER_SINGLE: dict[str, Callable[[float, float], bool]] = {
    "numbergreaterthan": lambda key, val: key > val,
    "numbergreaterthanorequals": lambda key, val: key >= val,
    "numberlessthan": lambda key, val: key < val,
    "numberlessthanorequals": lambda key, val: key <= val,
}
OPERATORS = frozenset(
    [
        *_STRING_POSITIVE,
        *_STRING_NEGATIVE,
        *_NUMBER_SINGLE,
        "numberin",
        "numbernotin",
        "numberinrange",
        "numbernotinrange",
        "boolequals",
        "isnullorundefined",
        "isnotnull",
    ]
)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _filter_values(adv: AdvancedFilter) -> list[Any]:
    if adv.values is not None:
        return list(adv.values)
    return [] if adv.value is None else [adv.value]


def check_advanced_filter(adv: AdvancedFilter) -> str | None:
    """Why Azure would reject this filter at deployment, or None if it is acceptable."""
    op = adv.operator_type.lower()
    if op not in OPERATORS:
        return f"operatorType {adv.operator_type!r} is not an Event Grid advanced filter operator"
    values = _filter_values(adv)
    if op in ("isnullorundefined", "isnotnull"):
        return None
    if not values:
        return f"{adv.operator_type} needs 'values' (or 'value')"
    if op.startswith("string") and not all(isinstance(v, str) for v in values):
        return f"{adv.operator_type} values must be strings"
    if op in ("numberinrange", "numbernotinrange"):
        ok = all(
            isinstance(r, list | tuple) and len(r) == 2 and all(_is_number(x) for x in r) for r in values
        )
        return None if ok else f"{adv.operator_type} values must be [low, high] number pairs"
    if op.startswith("number") and not all(_is_number(v) for v in values):
        return f"{adv.operator_type} values must be numbers"
    if op == "boolequals" and not isinstance(values[0], bool):
        return "BoolEquals value must be a boolean"
    return None


def _lookup(mapping: Mapping[str, Any], name: str, *, exact_first: bool) -> Any:
    if exact_first and name in mapping:
        return mapping[name]
    folded = name.casefold()
    for key, value in mapping.items():
        if isinstance(key, str) and key.casefold() == folded:
            return value
    return _MISSING


def resolve_key(event: Mapping[str, Any], key: str) -> Any:
    """The value at `key` (dot-separated) in the event, or the module's missing sentinel."""
    current: Any = event
    for depth, part in enumerate(key.split(".")):
        if not isinstance(current, Mapping):
            return _MISSING
        current = _lookup(current, part, exact_first=depth > 0)
        if current is _MISSING:
            return _MISSING
    return current


def is_missing(value: Any) -> bool:
    return value is _MISSING or value is None


def _candidates(value: Any, *, arrays: bool) -> list[Any]:
    if isinstance(value, list):
        return [v for v in value if not isinstance(v, list | dict)] if arrays else []
    if isinstance(value, dict):
        return []
    return [value]


# An operator's test: (the key's value or the missing sentinel, the filter's values, arrays on?) -> match.
Matcher = Callable[[Any, list[Any], bool], bool]


def _keys(raw: Any, arrays: bool) -> list[Any]:
    return [] if is_missing(raw) else _candidates(raw, arrays=arrays)


def _strings(raw: Any, arrays: bool) -> list[str]:
    return [k.casefold() for k in _keys(raw, arrays) if isinstance(k, str)]


def _numbers(raw: Any, arrays: bool) -> list[float]:
    return [float(k) for k in _keys(raw, arrays) if _is_number(k)]


def _string_match(compare: Callable[[str, str], bool]) -> Matcher:
    def match(raw: Any, values: list[Any], arrays: bool) -> bool:
        return any(compare(k, str(v).casefold()) for v in values for k in _strings(raw, arrays))

    return match


def _string_negated(compare: Callable[[str, str], bool], when_missing: bool) -> Matcher:
    positive = _string_match(compare)

    def match(raw: Any, values: list[Any], arrays: bool) -> bool:
        return when_missing if is_missing(raw) else not positive(raw, values, arrays)

    return match


def _number_match(compare: Callable[[float, float], bool]) -> Matcher:
    def match(raw: Any, values: list[Any], arrays: bool) -> bool:
        return any(compare(k, float(values[0])) for k in _numbers(raw, arrays))

    return match


def _number_in(raw: Any, values: list[Any], arrays: bool) -> bool:
    return any(k == float(v) for v in values for k in _numbers(raw, arrays))


def _number_in_range(raw: Any, values: list[Any], arrays: bool) -> bool:
    return any(float(lo) <= k <= float(hi) for lo, hi in values for k in _numbers(raw, arrays))


def _negated(positive: Matcher) -> Matcher:
    """The negation of `positive`; a missing key matches (NumberNotIn, NumberNotInRange)."""

    def match(raw: Any, values: list[Any], arrays: bool) -> bool:
        return is_missing(raw) or not positive(raw, values, arrays)

    return match


def _bool_equals(raw: Any, values: list[Any], arrays: bool) -> bool:
    return any(isinstance(k, bool) and k is bool(values[0]) for k in _keys(raw, arrays))


_MATCHERS: dict[str, Matcher] = {
    **{op: _string_match(compare) for op, compare in _STRING_POSITIVE.items()},
    **{op: _string_negated(compare, missing) for op, (compare, missing) in _STRING_NEGATIVE.items()},
    **{op: _number_match(compare) for op, compare in _NUMBER_SINGLE.items()},
    "numberin": _number_in,
    "numbernotin": _negated(_number_in),
    "numberinrange": _number_in_range,
    "numbernotinrange": _negated(_number_in_range),
    "boolequals": _bool_equals,
    "isnullorundefined": lambda raw, values, arrays: is_missing(raw),
    "isnotnull": lambda raw, values, arrays: not is_missing(raw),
}


def advanced_filter_matches(adv: AdvancedFilter, event: Mapping[str, Any], *, arrays: bool = False) -> bool:
    """Whether one advanced filter passes the event; raises ValueError for an unknown operator."""
    matcher = _MATCHERS.get(adv.operator_type.lower())
    if matcher is None:
        raise ValueError(f"unknown advanced filter operator {adv.operator_type!r}")
    return matcher(resolve_key(event, adv.key), _filter_values(adv), arrays)


def _fold(text: str, case_sensitive: bool) -> str:
    return text if case_sensitive else text.casefold()


def event_type_of(event: Mapping[str, Any]) -> str:
    return str(event.get("eventType", event.get("type", "")))


def filter_matches(flt: EventFilter, event: Mapping[str, Any]) -> bool:
    """Whether an event (Event Grid or CloudEvents schema dict) passes a subscription's filter."""
    types: Iterable[str] = flt.included_event_types or ()
    folded_types = {t.casefold() for t in types}
    if folded_types and "all" not in folded_types and event_type_of(event).casefold() not in folded_types:
        return False
    subject = _fold(str(event.get("subject") or ""), flt.is_subject_case_sensitive)
    if flt.subject_begins_with and not subject.startswith(
        _fold(flt.subject_begins_with, flt.is_subject_case_sensitive)
    ):
        return False
    if flt.subject_ends_with and not subject.endswith(
        _fold(flt.subject_ends_with, flt.is_subject_case_sensitive)
    ):
        return False
    arrays = flt.enable_advanced_filtering_on_arrays
    return all(advanced_filter_matches(adv, event, arrays=arrays) for adv in flt.advanced_filters)

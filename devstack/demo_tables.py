"""The demo's comparison table: what a `comparison.json` says, as a few short lines.

It formats the comparison exactly as Evergreen recorded it (the `promotion.compared` audit record's
`comparison` detail, a copy of the comparison job's `comparison.json`); it never recomputes a metric.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

_NO_VALUE = "—"


def _num(value: Any, *, signed: bool = False) -> str:
    """A metric as 3 decimals (`+` on differences); a dash for null (a metric undefined on that slice)."""
    if value is None or isinstance(value, bool):
        return _NO_VALUE
    try:
        number = float(value)
    except (TypeError, ValueError):
        return _NO_VALUE
    return f"{number:+.3f}" if signed else f"{number:.3f}"


def parse_recorded(text: str) -> dict[str, Any] | None:
    """The comparison from an audit record's `comparison` detail; None if the record holds none.

    The detail is JSON text (possibly with its slices left out when too long for the audit log).
    """
    if not text:
        return None
    try:
        document = json.loads(text)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def comparison_lines(comparison: Mapping[str, Any], *, min_slice_rows: int = 0,
                     max_slice_regression: float | None = None, indent: str = "   ") -> list[str]:
    """The table for one comparison: rows and data version, both models' metric, the difference with its
    interval, and the slices (flagging those that regress by more than `max_slice_regression`)."""
    evaluation = comparison.get("evaluation") or {}
    metric = str(comparison.get("metric", "?"))
    confidence = comparison.get("confidence")
    level = f"{float(confidence):.0%}" if isinstance(confidence, int | float) else "?"
    challenger = comparison.get("challenger") or {}
    champion = comparison.get("champion")
    lines = [f"{indent}comparison on {evaluation.get('data_asset', '?')}:{evaluation.get('data_version', '?')}: "
             f"{evaluation.get('rows', '?')} rows, {comparison.get('resamples', '?')} paired resamples, "
             f"seed {comparison.get('seed', '?')}"]
    models = [("challenger", challenger)] + ([("champion", champion)] if isinstance(champion, Mapping) else [])
    for role, side in models:
        value = (side.get("metrics") or {}).get(metric)
        lines.append(f"{indent}  {role:<10} {side.get('model', '?')!s:<16} {metric} {_num(value)}")
    difference = comparison.get("difference")
    if isinstance(difference, Mapping):
        lines.append(f"{indent}  difference {_num(difference.get('estimate'), signed=True)}, {level} interval "
                     f"[{_num(difference.get('low'), signed=True)}, {_num(difference.get('high'), signed=True)}]")
    else:
        lines.append(f"{indent}  scored alone (no champion to compare with)")
    lines.extend(_slice_lines(comparison.get("slices"), has_champion=isinstance(champion, Mapping),
                              min_slice_rows=min_slice_rows, max_slice_regression=max_slice_regression,
                              lower_is_better=comparison.get("direction") == "lower_is_better", indent=indent))
    return lines


def _slice_lines(slices: Any, *, has_champion: bool, min_slice_rows: int, max_slice_regression: float | None,
                 lower_is_better: bool, indent: str) -> list[str]:
    """One line per slice column: `value rows challenger[/champion] difference`, regressions marked."""
    if isinstance(slices, str):  # the audit record left them out (too long)
        return [f"{indent}  slices: {slices}"]
    if not isinstance(slices, Sequence) or not slices:
        return []
    by_column: dict[str, list[str]] = {}
    for entry in slices:
        if not isinstance(entry, Mapping):
            continue
        rows = entry.get("rows", 0)
        cell = f"{entry.get('value')} ({rows}) {_num(entry.get('challenger'))}"
        if has_champion:
            cell += f"/{_num(entry.get('champion'))} {_num(entry.get('difference'), signed=True)}"
            if _regressed(entry, min_slice_rows, max_slice_regression, lower_is_better):
                cell += " ← regressed"
        by_column.setdefault(str(entry.get("column")), []).append(cell)
    header = "value (rows) challenger/champion difference" if has_champion else "value (rows) score"
    return [f"{indent}  slices, {header}:"] + [f"{indent}    {column}: " + ", ".join(cells)
                                               for column, cells in by_column.items()]


def _regressed(entry: Mapping[str, Any], min_slice_rows: int, max_slice_regression: float | None,
               lower_is_better: bool) -> bool:
    """A large enough slice whose recorded difference (challenger − champion) is worse than allowed."""
    difference = entry.get("difference")
    if max_slice_regression is None or not isinstance(difference, int | float) or isinstance(difference, bool):
        return False
    rows = entry.get("rows")
    worse = difference if lower_is_better else -difference
    return isinstance(rows, int) and rows >= min_slice_rows and worse > max_slice_regression

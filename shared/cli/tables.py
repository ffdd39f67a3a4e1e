"""Plain-text tables for the CLI: long cells wrap onto more lines (never cut), or stay whole with `wide`."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

DEFAULT_WIDTH = 60  # the widest a column grows before its cells wrap


def table(rows: Sequence[Sequence[str]], *, width: int = DEFAULT_WIDTH, wide: bool = False) -> str:
    """`rows[0]` is the header. Each column is as wide as its longest cell, at most `width` unless `wide`;
    a longer cell wraps (at spaces where it can) onto continuation lines of its row, so nothing is lost."""
    if not rows:
        return ""
    columns = len(rows[0])
    widths = [max(len(row[i]) for row in rows) for i in range(columns)]
    if not wide:
        widths = [max(1, min(w, width)) for w in widths]
    lines: list[str] = []
    for n, row in enumerate(rows):
        cells = [_wrap(cell, w, wide) for cell, w in zip(row, widths, strict=True)]
        for k in range(max(len(c) for c in cells)):
            parts = [(c[k] if k < len(c) else "").ljust(w) for c, w in zip(cells, widths, strict=True)]
            lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _wrap(cell: str, width: int, wide: bool) -> list[str]:
    if wide or len(cell) <= width:
        return [cell]
    return textwrap.wrap(cell, width, break_on_hyphens=False, drop_whitespace=True) or [""]

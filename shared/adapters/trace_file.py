"""Spans as JSON lines in a file: where the local stack's traces go (`EVERGREEN_TRACE_FILE`).

Imported only when that setting is set (`shared.telemetry.configure`): the SDK stays out of a cold start.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

log = logging.getLogger(__name__)


class JsonLinesSpanExporter(SpanExporter):
    """An OpenTelemetry `SpanExporter` appending one JSON object per finished span to a file.

    Each line: trace_id, span_id, parent_span_id (hex; null for a root), name, kind, start/end (ns since
    the epoch), attributes, links, status. One `write` per span on a file opened for appending, so lines
    from several threads never interleave.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Append the spans; a failure to write is logged and reported as FAILURE, never raised."""
        text = "".join(json.dumps(span_document(span), default=str) + "\n" for span in spans)
        try:
            with self._lock, self._path.open("a", encoding="utf-8") as out:
                out.write(text)
        except OSError as exc:
            log.warning("could not write %d span(s) to %s: %s", len(spans), self._path, exc)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release: the file is opened per export."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Every export is written when it returns."""
        return True


def span_document(span: ReadableSpan) -> dict[str, Any]:
    """One finished span as the trace file stores it."""
    ctx = span.get_span_context()
    parent = span.parent
    return {
        "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
        "span_id": f"{ctx.span_id:016x}" if ctx else None,
        "parent_span_id": f"{parent.span_id:016x}" if parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "start": span.start_time,
        "end": span.end_time,
        "attributes": dict(span.attributes or {}),
        "links": [{"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
                  for link in span.links],
        "status": {"code": span.status.status_code.name, "description": span.status.description},
    }

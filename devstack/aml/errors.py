"""ARM error bodies as the Azure ML management front end sends them (see the recordings)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any


class ArmError(Exception):
    """An error answer: HTTP status plus the `{"error": {code, message, details, additionalInfo}}` body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    def body(self, location: str) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "details": self.details,
                "additionalInfo": _additional_info(location),
            }
        }


def _additional_info(location: str) -> list[dict[str, Any]]:
    """The service's standard trailer: component, correlation, region and time."""
    return [
        {"type": "ComponentName", "info": {"value": "managementfrontend"}},
        {
            "type": "Correlation",
            "info": {"value": {"operation": uuid.uuid4().hex, "request": uuid.uuid4().hex[:16]}},
        },
        {"type": "Environment", "info": {"value": location}},
        {"type": "Location", "info": {"value": location}},
        {"type": "Time", "info": {"value": datetime.now(UTC).isoformat()}},
    ]


def detail(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "details": [], "additionalInfo": []}


def not_found(detail_code: str, detail_message: str) -> ArmError:
    """404 as recorded: generic UserError message, the specific reason in `details`."""
    return ArmError(
        404, "UserError", "The specified resource was not found.", details=[detail(detail_code, detail_message)]
    )


def bad_request(message: str, code: str = "UserError") -> ArmError:
    return ArmError(400, code, message)

"""Evergreen's exceptions: each says what was wrong and, where it helps, what to do.

Which errors are retried is decided in one place, the edge (`functions/edge.py`):

| error                                | at the edge                                                      |
|--------------------------------------|------------------------------------------------------------------|
| `InvalidEventError` (+ subclasses)   | the input can never be handled: acknowledged (the function       |
|                                      | returns normally), one WARNING line `outcome=rejected`, audited  |
|                                      | as `event.rejected`; HTTP 400 (413 for `PayloadTooLargeError`);  |
|                                      | never retried                                                    |
| `SignatureError`                     | the same, with HTTP 401                                          |
| `TransientError` (+ subclasses)      | one WARNING line `outcome=retry`; propagates: the platform       |
|                                      | retries                                                          |
| `azure.core.exceptions.AzureError`   | one ERROR line `outcome=failed`; propagates: the platform        |
|                                      | retries                                                          |
| `ConfigurationError`                 | at start-up: the app refuses to start, listing every problem     |
| anything else (a bug)                | one ERROR line `outcome=failed`; propagates: retried, then       |
|                                      | dead-lettered or poisoned                                        |

If the `event.rejected` record cannot be written, the edge logs that (ERROR, `outcome=audit_failed`)
and still acknowledges: a rejection never turns into a retry loop.

Event Grid retries a failed delivery with backoff for up to 24 hours, then dead-letters it; a
queue message is retried up to `maxDequeueCount` (5) times, then moved to `<queue>-poison`.
"""

from __future__ import annotations


class EvergreenError(Exception):
    """Base class of Evergreen's own errors."""


class ConfigurationError(EvergreenError):
    """Settings or the policy file are invalid; raised at start-up with every problem listed."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} is invalid ({len(problems)} problem(s)):\n{lines}")


class InvalidEventError(EvergreenError):
    """An incoming event, message or request is malformed: rejected (4xx) and audited, never retried."""

    status = 400


class PayloadTooLargeError(InvalidEventError):
    """A request body over the size Evergreen accepts."""

    status = 413


class SignatureError(EvergreenError):
    """A registry webhook's signature is missing, stale or wrong (HTTP 401); never retried."""

    status = 401


class TransientError(EvergreenError):
    """The work cannot be done right now but may succeed later: the platform retries the event."""


class ClaimInProgressError(TransientError):
    """Another instance holds the work right now; raising lets the platform retry later."""


class ConcurrentUpdateError(TransientError):
    """A ledger row changed between our read and our conditional write; re-reading and retrying resolves it."""


class BlobChangedError(TransientError):
    """A blob changed or vanished while it was being read; its own new event brings the new content."""


class OperationFailedError(TransientError):
    """A call to an external service (Azure ML) failed; adapters raise it `from` the SDK's error.

    Transient by default: the platform retries the event. A rollout step that gets it retries the step
    with backoff and rolls back after a few tries (`shared.services.promotion`).
    """


class JobRejectedError(InvalidEventError):
    """Azure ML refused a job for good (HTTP 400, a pipeline YAML that does not load): retrying cannot help.

    The retrainer marks the run failed and lets the next data version run; should it reach the edge,
    it is acknowledged and audited as rejected, never retried.
    """


class SmokeTestFailedError(EvergreenError):
    """A candidate deployment did not answer the sample request as expected (the rollout rolls back)."""

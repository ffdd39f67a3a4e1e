"""Push delivery to the Functions host: at-least-once, unordered, bounded concurrency, Azure's retry rules.

Azure Event Grid considers only 200-204 a success. 400, 401, 403, 404 and 413 are not retried (the
event is dead-lettered at once); any other failure, a timeout or a refused connection is retried with
exponential backoff and jitter until the subscription's maxDeliveryAttempts or eventTimeToLive runs
out, then dead-lettered. Dead letters are also written, as Azure does, as blobs to the subscription's
dead-letter container; that write is retried until it succeeds (it is state, not a best-effort log).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus

import httpx

from devstack.eventgrid.store import Delivery, PendingDeadLetterBlob, Store

logger = logging.getLogger(__name__)

SUCCESS = frozenset({200, 201, 202, 203, 204})
NO_RETRY = frozenset({400, 401, 403, 404, 413})
BODY_EXCERPT = 1000
MAX_DELIVERY_ATTEMPTS_EXCEEDED = "MaxDeliveryAttemptsExceeded"
TIME_TO_LIVE_EXCEEDED = "TimeToLiveExceeded"


@dataclass(frozen=True)
class RetrySettings:
    """Local defaults are short (Azure starts at 10 s and goes to hourly) so a dev loop stays quick."""

    initial_delay: float = 0.5
    max_delay: float = 30.0
    jitter: float = 0.2
    response_timeout: float = 30.0
    max_attempts_cap: int | None = None

    def delay(self, attempts_done: int) -> float:
        base = min(self.max_delay, self.initial_delay * 2.0 ** max(0, attempts_done - 1))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)

    def max_attempts(self, subscription_max: int) -> int:
        return min(subscription_max, self.max_attempts_cap) if self.max_attempts_cap else subscription_max


def outcome_of(status: int) -> str:
    """Azure's `lastDeliveryOutcome` style: the status phrase in PascalCase (NotFound, BadRequest, ...)."""
    try:
        return HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        return f"Http{status}"


class Dispatcher:
    """Takes due deliveries from the store and POSTs them to the host, several at a time."""

    def __init__(
        self,
        store: Store,
        host_url: str,
        *,
        retry: RetrySettings,
        concurrency: int = 16,
        blob_connection_string: str | None = None,
    ) -> None:
        self._store = store
        self._host_url = host_url.rstrip("/")
        self._retry = retry
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._in_flight: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(retry.response_timeout, connect=5.0))
        self._dead_letters = DeadLetterWriter(store, blob_connection_string)

    def wake(self) -> None:
        """Something was queued: look for due work now instead of at the next tick."""
        self._wake.set()

    async def run(self) -> None:
        writer = asyncio.create_task(self._dead_letters.run())
        try:
            while True:
                self._wake.clear()
                free = self._concurrency - len(self._in_flight)
                if free > 0:
                    for delivery in self._store.due_deliveries(time.time(), free, self._in_flight):
                        self._in_flight.add(delivery.id)
                        task = asyncio.create_task(self._deliver(delivery))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                timeout = 0.5
                next_due = self._store.next_due_at()
                if next_due is not None:
                    timeout = min(timeout, max(0.01, next_due - time.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            writer.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(writer, *self._tasks, return_exceptions=True)
            await self._client.aclose()

    async def _deliver(self, delivery: Delivery) -> None:
        try:
            async with self._slots:
                await self._attempt(delivery)
        except Exception:
            logger.exception(
                "delivery %s of event %s failed unexpectedly", delivery.id, delivery.event.get("id")
            )
            self._store.record_retry(
                delivery.id,
                None,
                "GenericError",
                "internal error",
                time.time() + self._retry.delay(delivery.attempts + 1),
            )
        finally:
            self._in_flight.discard(delivery.id)
            self.wake()

    async def _attempt(self, delivery: Delivery) -> None:
        event_id = delivery.event.get("id")
        if time.time() > delivery.expires_at:
            self._dead_letter(
                delivery,
                TIME_TO_LIVE_EXCEEDED,
                "the event's time to live ran out before delivery",
                attempted=False,
                status=None,
                outcome=None,
                body=None,
            )
            return
        url = self._host_url + _webhook_path(delivery)
        status: int | None = None
        try:
            response = await self._client.post(url, content=_body(delivery), headers=_headers(delivery))
            status, text = response.status_code, response.text[:BODY_EXCERPT]
            outcome = "Succeeded" if status in SUCCESS else outcome_of(status)
        except httpx.TimeoutException as exc:
            outcome, text = (
                "TimedOut",
                f"no response within {self._retry.response_timeout}s ({type(exc).__name__})",
            )
        except httpx.HTTPError as exc:
            outcome, text = "GenericError", f"{type(exc).__name__}: {exc}"[:BODY_EXCERPT]
        attempts = delivery.attempts + 1
        if status in SUCCESS:
            logger.info(
                "delivered event %s to %s (attempt %d, HTTP %s)",
                event_id,
                delivery.subscription,
                attempts,
                status,
            )
            self._store.record_success(delivery.id, status, text)
            return
        if status in NO_RETRY:
            self._dead_letter(
                delivery,
                MAX_DELIVERY_ATTEMPTS_EXCEEDED,
                f"HTTP {status} is not retried",
                attempted=True,
                status=status,
                outcome=outcome,
                body=text,
            )
            return
        max_attempts = self._retry.max_attempts(delivery.max_attempts)
        if attempts >= max_attempts:
            self._dead_letter(
                delivery,
                MAX_DELIVERY_ATTEMPTS_EXCEEDED,
                f"{attempts} of {max_attempts} attempts failed",
                attempted=True,
                status=status,
                outcome=outcome,
                body=text,
            )
            return
        next_at = time.time() + self._retry.delay(attempts)
        if next_at > delivery.expires_at:
            self._dead_letter(
                delivery,
                TIME_TO_LIVE_EXCEEDED,
                "the next retry would be after the time to live",
                attempted=True,
                status=status,
                outcome=outcome,
                body=text,
            )
            return
        logger.info(
            "delivery of event %s to %s failed (%s), attempt %d of %d; retry in %.2fs",
            event_id,
            delivery.subscription,
            outcome,
            attempts,
            max_attempts,
            next_at - time.time(),
        )
        self._store.record_retry(delivery.id, status, outcome, text, next_at)

    def _dead_letter(
        self,
        delivery: Delivery,
        reason: str,
        detail: str,
        *,
        attempted: bool,
        status: int | None,
        outcome: str | None,
        body: str | None,
    ) -> None:
        dl_id = self._store.record_dead_letter(
            delivery,
            reason=reason,
            detail=detail,
            attempted=attempted,
            status=status,
            outcome=outcome,
            body=body,
        )
        logger.warning(
            "dead-lettered event %s for %s: %s (%s); dead letter %s",
            delivery.event.get("id"),
            delivery.subscription,
            reason,
            detail,
            dl_id,
        )
        self._dead_letters.wake()


def _webhook_path(delivery: Delivery) -> str:
    if delivery.kind == "blobTrigger":
        return f"/runtime/webhooks/blobs?functionName=Host.Functions.{delivery.function}"
    return f"/runtime/webhooks/EventGrid?functionName={delivery.function}"


def _body(delivery: Delivery) -> bytes:
    return json.dumps([delivery.event], ensure_ascii=False).encode("utf-8")


def _headers(delivery: Delivery) -> dict[str, str]:
    headers = {
        "aeg-event-type": "Notification",
        # Azure sends the subscription name upper-cased and the number of earlier attempts.
        "aeg-subscription-name": delivery.subscription.upper(),
        "aeg-delivery-count": str(delivery.attempts),
    }
    if delivery.schema == "CloudEventSchemaV1_0":
        headers["Content-Type"] = "application/cloudevents-batch+json; charset=utf-8"
    else:
        headers["Content-Type"] = "application/json; charset=utf-8"
        headers["aeg-data-version"] = str(delivery.event.get("dataVersion", ""))
        headers["aeg-metadata-version"] = "1"
    return headers


def dead_letter_blob_name(topic: str, subscription: str, when: float, guid: str) -> str:
    """Azure's layout: `{TOPIC}/{SUBSCRIPTION}/{yyyy}/{MM}/{dd}/{HH}/{guid}.json` (names upper-cased)."""
    stamp = datetime.fromtimestamp(when, UTC)
    return f"{topic.upper()}/{subscription.upper()}/{stamp:%Y/%m/%d/%H}/{guid}.json"


class DeadLetterWriter:
    """Copies dead letters to their blob container, retrying while storage is unreachable."""

    def __init__(self, store: Store, connection_string: str | None) -> None:
        self._store = store
        self._connection_string = connection_string
        self._wake = asyncio.Event()
        self._created: set[str] = set()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            if self._connection_string:
                for pending in self._store.pending_dead_letter_blobs(time.time()):
                    await self._write(pending)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.5)

    async def _write(self, pending: PendingDeadLetterBlob) -> None:
        name = dead_letter_blob_name(
            pending.topic, pending.subscription, pending.dead_lettered_at, pending.id
        )
        try:
            await asyncio.to_thread(self._upload, pending.container, name, pending.document)
        except Exception as exc:
            self._created.discard(pending.container)  # Azurite may have been reset: create it again
            delay = min(30.0, 0.5 * 2**pending.blob_attempts)
            logger.warning(
                "cannot write dead letter %s to container %s yet (%s); retrying in %.1fs",
                pending.id,
                pending.container,
                type(exc).__name__,
                delay,
            )
            self._store.mark_dead_letter_blob(
                pending.id,
                blob_name=None,
                error=f"{type(exc).__name__}: {exc}"[:500],
                next_at=time.time() + delay,
            )
            return
        logger.info("wrote dead letter %s to %s/%s", pending.id, pending.container, name)
        self._store.mark_dead_letter_blob(pending.id, blob_name=name, error=None, next_at=0)

    def _upload(self, container: str, name: str, document: dict[str, object]) -> None:
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import BlobServiceClient, ContentSettings

        assert self._connection_string is not None
        service = BlobServiceClient.from_connection_string(
            self._connection_string, retry_total=0, connection_timeout=5, read_timeout=10
        )
        with service:
            container_client = service.get_container_client(container)
            if container not in self._created:
                with contextlib.suppress(ResourceExistsError):
                    container_client.create_container()
                self._created.add(container)
            container_client.upload_blob(
                name,
                json.dumps([document], ensure_ascii=False).encode("utf-8"),
                overwrite=True,
                content_settings=ContentSettings(content_type="application/json"),
            )

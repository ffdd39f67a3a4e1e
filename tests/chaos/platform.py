"""The platform simulator: Evergreen's services on the in-memory adapters, with Azure's delivery semantics.

One `Platform` is one run of one flow. It owns what outlives a process (the stores: tables, blobs,
queues, the workspace, the endpoints, the published events) and builds the services on them
(`compose`), each port wrapped in the run's `FaultInjector`. When an injected `ProcessCrash`
reaches it, it discards the services and composes new ones over the same stores (a new process), and
what was in flight is redelivered:

- **Event Grid** (`infra/eventgrid-subscriptions.json` routes each event type to a function):
  at-least-once; a failed delivery is retried on Event Grid's backoff schedule, dead-lettered after
  30 attempts or 24 h. `BlobCreated` goes to the blob trigger, which (Event Grid source) enqueues
  internally and acknowledges: from there it behaves like a queue.
- **Queue triggers** (`evergreen-batch-seal`, `evergreen-rollout`, the blob trigger's queue): a
  received message is leased for `FUNCTION_LEASE`; a failed run releases it after host.json's
  `visibilityTimeout` (10 s), a crashed one reappears when its lease lapses; the dequeue count
  rises each time, and a message received more than `MAX_DEQUEUE` times goes to poison.
- **People**: an operator's command (`python -m shared.cli approve`) runs through the same faulty ports;
  when it fails (a fault, or the candidate is not waiting yet) the operator runs it again a minute later.
- **Timers**: the reconciler (`reconcile(now)` of each service that has it) every
  `RECONCILE_SECONDS`; retention, when the flow has it, every `RETENTION_SECONDS`.
- **Azure ML**: a submitted pipeline job runs after `JOB_START_SECONDS` and completes after
  `JOB_SECONDS`; then a model version is registered (metric and lineage tags) and `RunCompleted`
  and `ModelRegistered` are published (a champion re-score writes its comparison.json with the score
  `Platform.rescored`, and registers nothing). Endpoint operations settle after `OPERATION_SECONDS`.
- **The clock** is fake: when nothing is due it jumps to the next due item.

Event Grid deliveries are routed as the app's triggers route them, by the composition root's own functions
(`shared.composition.on_data_version_registered`, `on_run_finished`) over a real `composition.Services`.
Like the edge (`functions/edge.py`), an `InvalidEventError` acknowledges the input (recorded as
rejected); any other exception leaves it to the platform's retry.
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from azure.core.exceptions import ServiceResponseError

from shared import composition
from shared.adapters.memory.azureml import MemoryWorkspace
from shared.adapters.memory.blobs import MemoryBlobStore
from shared.adapters.memory.endpoints import MemoryEndpoints
from shared.adapters.memory.eventgrid import MemoryEventPublisher
from shared.adapters.memory.faults import FaultInjector, ProcessCrash, port_methods
from shared.adapters.memory.queues import MemoryDelayedQueue, QueuedMessage
from shared.adapters.memory.retention import MemoryRetentionBlobs, MemoryRetentionWorkspace
from shared.adapters.memory.tables import MemoryTable
from shared.composition import SEAL_QUEUE
from shared.config.connections import StorageConnection
from shared.config.policy import Policy
from shared.config.settings import Settings
from shared.domain.decay import ChampionDegraded
from shared.domain.events import BlobCreated, DataVersionRegistered
from shared.domain.retrain import RUN_COMPLETED, parse_data_version_registered, parse_run_event
from shared.domain.vocabulary import ComparisonPurpose, Tag, metric_tag
from shared.domain.webhooks import MODEL_REGISTERED, parse_model_registered
from shared.errors import InvalidEventError, OperationFailedError, SignatureError
from shared.ports import (
    BlobStore,
    DataRegistry,
    DelayedQueue,
    Endpoints,
    EventPublisher,
    JobRunner,
    RetentionBlobs,
    RetentionWorkspace,
    TableStore,
)
from shared.services import promotion
from shared.services.approval import Approvals
from shared.services.audit import TableAuditLog
from shared.services.ingest import Ingestor
from shared.services.ledger import Ledger
from shared.services.monitor import ChampionMonitor
from shared.services.promotion import ROLLOUT_QUEUE, Promoter
from shared.services.reconcile import Reconciler
from shared.services.retention import RetentionRunner
from shared.services.retrain import Retrainer

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
SUBSCRIPTIONS = REPO / "infra" / "eventgrid-subscriptions.json"
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

BLOB_TRIGGER_QUEUE = "blob-trigger"  # the Event Grid–sourced blob trigger's internal queue
FUNCTION_LEASE = 600.0  # seconds a queue message being processed stays hidden (a crash shows after this)
VISIBILITY_ON_FAILURE = 10.0  # host.json extensions.queues.visibilityTimeout
MAX_DEQUEUE = 5  # host.json extensions.queues.maxDequeueCount
EVENT_GRID_BACKOFF = (10, 30, 60, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600)
EVENT_GRID_MAX_ATTEMPTS = 30
EVENT_GRID_TTL = timedelta(hours=24)
RECONCILE_SECONDS = 300.0
RETENTION_SECONDS = 3600.0
JOB_START_SECONDS = 30.0
JOB_SECONDS = 1800.0
OPERATION_SECONDS = 20.0
SETTLE = timedelta(minutes=40)  # quiet time (longer than a claim lease and a few reconciler runs) that ends a run
MAX_SIMULATED = timedelta(days=3)
MAX_STEPS = 3000
WORKSPACE_TOPIC = "/subscriptions/0/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/mlw"

T = TypeVar("T")


def azure_error(what: str) -> BaseException:
    """What an Azure SDK raises for a 503 or a dropped connection (azure-core; the platform retries it)."""
    return ServiceResponseError(what)


def endpoint_error(what: str) -> BaseException:
    """What the `Endpoints` adapter raises for any failed Azure ML call (it chains the SDK's error)."""
    return OperationFailedError(what)


TABLE = port_methods(TableStore)
MUTATING = frozenset({"insert", "replace_if", "upsert", "upsert_many", "delete", "send", "data_version_registered",
                      "register_data_version", "submit_pipeline", "begin_create_endpoint", "begin_create_deployment",
                      "begin_set_traffic", "begin_delete_deployment", "execute", "delete_job_output", "copy"})


class SimClock:
    """The one time of a run; it only moves when the platform jumps it (or a service sleeps on it)."""

    def __init__(self, start: datetime = START) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = max(self._now, when)

    def sleep(self, seconds: float) -> None:
        """A service waiting briefly for a holder: simulated time passes, nothing else runs meanwhile."""
        with self._lock:
            self._now += timedelta(seconds=max(0.0, seconds))


class PlatformTable(MemoryTable):
    """A `MemoryTable` the harness can read whole (to find stuck work at the end of a run)."""

    def entities(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row.data) for _, row in sorted(self._rows.items())]


class PlatformQueue(MemoryDelayedQueue[T]):
    """A `MemoryDelayedQueue` with the two operations the Functions host does that the port does not show."""

    def release(self, message: QueuedMessage[T], delay_seconds: float) -> None:
        """Update a received message's visibility (a failed run: it shows again after `delay_seconds`)."""
        with self._lock:
            current = self._messages.get(message.id)
            if current is not None and current.receipt == message.receipt:
                self._messages[message.id] = replace(current, visible_at=self._clock() + timedelta(
                    seconds=delay_seconds))

    def next_visible_at(self) -> datetime | None:
        with self._lock:
            return min((m.visible_at for m in self._messages.values()), default=None)


@dataclass
class EventDelivery:
    """One event on its way to one subscription's function."""

    function: str
    document: dict[str, Any]
    due: datetime
    first: datetime
    attempts: int = 0


@dataclass
class TrackedJob:
    name: str
    submitted: datetime
    model_name: str
    experiment: str
    tags: dict[str, str]
    state: str = "NotStarted"


OPERATOR_RETRY_SECONDS = 60.0  # an operator whose command failed runs it again after this

# The app's settings as the services see them (nothing here reaches a network: every port is in memory).
SETTINGS = Settings(subscription_id="0", resource_group="rg", workspace_name="mlw", policy_path=REPO / "evergreen.yaml",
                    landing_container="landing", app_storage=StorageConnection(name="AzureWebJobsStorage"),
                    data_storage=StorageConnection(name="EVERGREEN_DATA_STORAGE"), events_topic_endpoint="",
                    events_topic_key=None, client_id=None, webhook_secret=None, retention_schedule="0 0 3 * * *")


@dataclass(frozen=True, kw_only=True)
class Services(composition.Services):
    """What one process builds: the app's `Services` (so the composition root's routing functions take them as
    the triggers pass them), each over fault-injecting ports, and the reconciler over them."""

    reconciler: Reconciler


def _name(constant: str, default: str) -> str:
    """A queue's name as the composition root spells it (the queues of issue 11 are being added right now)."""
    return str(getattr(composition, constant, getattr(promotion, constant, default)))


@dataclass(frozen=True)
class QueueTrigger:
    """A queue, the constructor parameter a service sends to it through, and the function it triggers."""

    queue: str
    parameter: str
    handler: Callable[[Services, QueuedMessage[Any]], object]


QUEUES: tuple[QueueTrigger, ...] = (  # names from the composition root, as the app's functions bind them
    QueueTrigger(SEAL_QUEUE, "seal_queue", lambda s, m: s.ingestor.on_seal_request(m.item)),
    QueueTrigger(_name("BLOB_RETRY_QUEUE", "evergreen-blob-retry"), "blob_retry",
                 lambda s, m: s.ingestor.on_blob_created(m.item)),
    QueueTrigger(_name("RETRAIN_QUEUE", "evergreen-retrain-check"), "rechecks",
                 lambda s, m: s.retrainer.on_recheck(m.item, f"message-{m.id}")),
    QueueTrigger(ROLLOUT_QUEUE, "ticks", lambda s, m: s.promoter.on_tick(m.item, m.dequeue_count)),
    QueueTrigger(_name("PROMOTION_RETRY_QUEUE", "evergreen-promotion-retry"), "retries",
                 lambda s, m: s.promoter.on_candidate_retry(m.item)),
    QueueTrigger(BLOB_TRIGGER_QUEUE, "blob_trigger_queue", lambda s, m: s.ingestor.on_blob_created(m.item)),
)


@dataclass
class Stores:
    """What outlives a process: the platform's state, shared by every process of a run."""

    clock: SimClock
    ledger: PlatformTable = field(default_factory=PlatformTable)
    audit: PlatformTable = field(default_factory=PlatformTable)
    blobs: MemoryBlobStore = field(init=False)
    workspace: MemoryWorkspace = field(default_factory=MemoryWorkspace)
    endpoints: MemoryEndpoints = field(init=False)
    publisher: MemoryEventPublisher = field(default_factory=MemoryEventPublisher)
    queues: dict[str, PlatformQueue[Any]] = field(default_factory=dict)
    retention_workspace: MemoryRetentionWorkspace = field(default_factory=MemoryRetentionWorkspace)
    retention_blobs: MemoryRetentionBlobs = field(init=False)

    def __post_init__(self) -> None:
        self.blobs = MemoryBlobStore(clock=self.clock)
        self.endpoints = MemoryEndpoints(operation_ticks=0, clock=self.clock, operation_seconds=OPERATION_SECONDS)
        self.retention_blobs = MemoryRetentionBlobs(clock=self.clock)
        for trigger in QUEUES:
            self.queues[trigger.queue] = PlatformQueue(clock=self.clock)


def build(cls: Callable[..., T], available: Mapping[str, Any]) -> T:
    """`cls(**what it takes of available)`: the services' constructors grow; the harness follows by name.

    Raises TypeError naming a required keyword the harness does not provide (add it to `Platform.compose`).
    """
    parameters = inspect.signature(cls).parameters
    missing = [name for name, p in parameters.items()
               if p.default is inspect.Parameter.empty and name not in available
               and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if missing:
        raise TypeError(f"{getattr(cls, '__name__', cls)} needs {', '.join(missing)}: "
                        "provide it in tests/chaos/platform.py Platform.compose")
    return cls(**{name: value for name, value in available.items() if name in parameters})


def _subscriptions() -> list[tuple[str, frozenset[str]]]:
    """(function, event types) of every Event Grid subscription, from the one list infra/ deploys."""
    document = json.loads(SUBSCRIPTIONS.read_text(encoding="utf-8"))
    return [(s["destination"]["function"], frozenset(s["filter"]["includedEventTypes"]))
            for s in document["subscriptions"]]


class Platform:
    """One run of one flow: the stores, the current process's services, and the delivery loop."""

    def __init__(self, policy: Policy, injector: FaultInjector, *, retention_timer: bool = False,
                 metric: str = "roc_auc") -> None:
        self.policy = policy
        self.injector = injector
        self.clock = SimClock()
        self.stores = Stores(self.clock)
        self.retention_timer = retention_timer
        self.metric = metric
        self.rescored = 0.83  # what a champion re-scored alone scores now (a flow sets a decayed score)
        self.subscriptions = _subscriptions()
        self.events: list[EventDelivery] = []
        self.jobs: dict[str, TrackedJob] = {}
        self.models: list[tuple[str, str]] = []
        self.script: list[tuple[datetime, str, Callable[[], object]]] = []
        self.poisoned: list[tuple[str, Any]] = []
        self.poison_count = 0  # every message ever poisoned (a replay takes it off `poisoned`)
        self.dead_lettered: list[tuple[str, str]] = []
        self.rejected: list[tuple[str, str]] = []
        self.restarts = 0
        self.steps = 0
        self.timed_out = ""
        self.last_activity = self.clock()
        # Quiet long enough for a lease to lapse and the reconciler to run, and for the next retention run.
        self.settle = max(SETTLE, timedelta(seconds=1.5 * RETENTION_SECONDS)) if retention_timer else SETTLE
        self._event_ids = itertools.count(1)
        self._next_reconcile = self.clock() + timedelta(seconds=RECONCILE_SECONDS)
        self._next_retention = self.clock() if retention_timer else None
        self.services = self.compose()

    # -- a process -------------------------------------------------------------------------------------
    def compose(self) -> Services:
        """The services as a new process builds them: new objects over the same stores, every port faulty."""
        wrap, s = self.injector.wrap, self.stores
        ledger_table = wrap(s.ledger, "ledger", TABLE, error=azure_error)
        audit = TableAuditLog(wrap(s.audit, "audit", TABLE, error=azure_error))
        ledger = build(Ledger, {"table": ledger_table, "clock": self.clock})
        common = {"policy": self.policy, "ledger": ledger, "audit": audit, "clock": self.clock,
                  "sleep": self.clock.sleep, "sleeper": self.clock.sleep, "app_root": REPO}
        queues = {wiring.parameter: wrap(s.queues[wiring.queue], wiring.queue, port_methods(DelayedQueue),
                                         error=azure_error) for wiring in QUEUES}
        publisher = wrap(_Routed(s.publisher, self._published), "publisher", port_methods(EventPublisher),
                         error=azure_error)
        ingestor = build(Ingestor, {
            **common, **queues, "blobs": wrap(s.blobs, "blobs", port_methods(BlobStore), error=azure_error),
            "registry": wrap(s.workspace, "registry", port_methods(DataRegistry), error=azure_error),
            "publisher": publisher})
        retrainer = build(Retrainer, {**common, **queues, "jobs": wrap(s.workspace, "jobs", port_methods(JobRunner),
                                                                       error=azure_error)})
        endpoints = wrap(s.endpoints, "endpoints", port_methods(Endpoints), error=endpoint_error)
        jobs = wrap(s.workspace, "jobs", port_methods(JobRunner), error=azure_error)
        data = wrap(s.workspace, "registry", port_methods(DataRegistry), error=azure_error)
        approvals = build(Approvals, {**common, **queues, "endpoints": endpoints})
        promoter = build(Promoter, {**common, **queues, "endpoints": endpoints, "jobs": jobs, "data": data,
                                    "approvals": approvals})
        monitor = build(ChampionMonitor, {**common, "endpoints": endpoints, "jobs": jobs, "data": data,
                                          "publisher": publisher, "retrainer": retrainer,
                                          "code_hash": lambda: ""})  # the rescore timer's code check: not a flow
        retention = build(RetentionRunner, {
            **common, "policy": self.policy.retention, "max_workers": 1,  # one worker: call numbers are replayable
            "workspace": wrap(s.retention_workspace, "retention_workspace", port_methods(RetentionWorkspace),
                              error=azure_error),
            "blobs": wrap(s.retention_blobs, "retention_blobs", port_methods(RetentionBlobs), error=azure_error),
            "rollouts": ledger.rollouts, "approvals": ledger.open_approvals,
            "comparisons": ledger.open_comparisons, "waiting": ledger.waiting_candidates})
        reconciler = Reconciler(flows={"ingest": ingestor, "retrain": retrainer, "promotion": promoter,
                                       "approval": approvals}, clock=self.clock)
        return Services(settings=SETTINGS, policy=self.policy, ingestor=ingestor, retrainer=retrainer,
                        promoter=promoter, retention=retention, audit=audit, approvals=approvals, monitor=monitor,
                        reconciler=reconciler)

    def _invoke(self, what: str, handler: Callable[[], object]) -> str:
        """Run one function execution as the edge settles it: ok | rejected | failed | crashed."""
        try:
            handler()
        except (InvalidEventError, SignatureError) as exc:
            self.rejected.append((what, str(exc).splitlines()[0]))
            return "rejected"
        except ProcessCrash:
            self.restarts += 1
            self.injector.restart()
            self.services = self.compose()
            return "crashed"
        except Exception as exc:
            log.debug("%s failed: %s: %s", what, type(exc).__name__, exc)
            return "failed"
        return "ok"

    # -- inputs (what people, pipelines and Azure do) ---------------------------------------------------
    def at(self, seconds: float, what: str, action: Callable[[], object]) -> None:
        """Schedule a scripted input `seconds` after the start."""
        self.script.append((START + timedelta(seconds=seconds), what, action))
        self.script.sort(key=lambda item: item[0])

    def operator(self, seconds: float, what: str, command: Callable[[], object]) -> None:
        """A person's command (`python -m shared.cli ...`) `seconds` after the start, through the run's faulty
        ports; if it fails (a fault, or what it acts on is not there yet) they run it again a minute later."""
        def attempt() -> None:
            if self._invoke(f"operator: {what}", command) != "ok":
                retry = (self.clock() - START).total_seconds() + OPERATOR_RETRY_SECONDS
                self.at(retry, f"{what} (again)", attempt)

        self.at(seconds, what, attempt)

    def upload(self, container: str, name: str, data: bytes) -> None:
        """A blob lands: Event Grid hands BlobCreated to the blob trigger, which queues it."""
        facts = self.stores.blobs.put(container, name, data)
        url = f"https://data.blob.core.windows.net/{container}/{name}"
        log.debug("uploaded %s/%s etag=%s", container, name, facts.etag)
        self.stores.queues[BLOB_TRIGGER_QUEUE].send(BlobCreated(container=container, name=name, url=url), 0)

    def publish(self, event: DataVersionRegistered) -> None:
        """An event on Evergreen's topic from outside this run (an earlier instance, another tool)."""
        self.stores.publisher.data_version_registered(event)
        self._published(event)

    def register_model(self, name: str, tags: Mapping[str, str], *, announce: bool = True) -> str:
        """A model version lands in the registry (training, or a person); announced with ModelRegistered."""
        version = str(1 + sum(1 for n, _ in self.models if n == name))
        self.stores.endpoints.add_model(name, version, dict(tags))
        self.models.append((name, version))
        if announce:
            self._emit({"id": f"model-registered-{name}-{version}", "eventType": MODEL_REGISTERED,
                        "subject": f"models/{name}:{version}", "eventTime": self.clock().isoformat(),
                        "topic": WORKSPACE_TOPIC, "dataVersion": "2",
                        "data": {"modelName": name, "modelVersion": version, "modelTags": dict(tags)}})
        return version

    def _published(self, event: DataVersionRegistered) -> None:
        self._emit({"id": event.event_id, "eventType": event.EVENT_TYPE,
                    "subject": f"datasets/{event.dataset}/versions/{event.version}",
                    "eventTime": self.clock().isoformat(), "dataVersion": "1.0",
                    "data": json.loads(json.dumps({**asdict(event), "files": list(event.files)}))})

    def _emit(self, document: dict[str, Any]) -> None:
        """Event Grid: one delivery per subscription whose filter takes the event type."""
        now = self.clock()
        for function, types in self.subscriptions:
            if document["eventType"] in types:
                self.events.append(EventDelivery(function, document, now, now))

    def redrive_blob_poison(self) -> int:
        """What an operator does with `python -m shared.cli redrive`: replay the blob trigger's poison messages.

        A blob whose every delivery failed leaves no trace in the ledger, so only this replay can bring
        it back (issue 11, Deliver 3). Returns how many were replayed.
        """
        replay = [item for queue, item in self.poisoned if queue == BLOB_TRIGGER_QUEUE]
        self.poisoned = [(queue, item) for queue, item in self.poisoned if queue != BLOB_TRIGGER_QUEUE]
        for item in replay:
            self.stores.queues[BLOB_TRIGGER_QUEUE].send(item, 0)
        if replay:
            self.last_activity = self.clock()
        return len(replay)

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        """Deliver everything until the run is quiet for `SETTLE`, or give up (`timed_out` says why)."""
        deadline = START + MAX_SIMULATED
        while True:
            now = self.clock()
            if now > deadline:
                self.timed_out = f"still busy after {MAX_SIMULATED} of simulated time"
                return
            if self.steps > MAX_STEPS:
                self.timed_out = f"still busy after {MAX_STEPS} deliveries"
                return
            if self._step(now):
                self.steps += 1
                continue
            due = self._next_work()
            if due is None and now >= self.last_activity + self.settle:
                return
            candidates = [t for t in (due, self._next_timer(), self.last_activity + self.settle) if t is not None]
            self.clock.set(min(t for t in candidates if t > now) if any(t > now for t in candidates) else now)

    def _step(self, now: datetime) -> bool:
        """Do one thing that is due at `now`; False if nothing is."""
        return (self._script_step(now) or self._azure_ml_step(now) or self._event_step(now)
                or self._queue_step(now) or self._timer_step(now))

    def _next_work(self) -> datetime | None:
        times = [t for t, _, _ in self.script[:1]]
        times += [d.due for d in self.events]
        times += [t for t in (q.next_visible_at() for q in self.stores.queues.values()) if t is not None]
        times += [t for t in (self._job_due(j) for j in self.jobs.values()) if t is not None]
        if self._untracked_jobs():
            times.append(self.clock())
        return min(times, default=None)

    def _next_timer(self) -> datetime | None:
        times = [self._next_reconcile] if self._reconcilers() else []
        if self._next_retention is not None:
            times.append(self._next_retention)
        return min(times, default=None)

    def _script_step(self, now: datetime) -> bool:
        if not self.script or self.script[0][0] > now:
            return False
        _, what, action = self.script.pop(0)
        log.debug("script: %s", what)
        action()
        self.last_activity = now
        return True

    def _event_step(self, now: datetime) -> bool:
        due = sorted((d for d in self.events if d.due <= now), key=lambda d: d.due)
        if not due:
            return False
        delivery = due[0]
        result = self._invoke(f"{delivery.function} {delivery.document['id']}", self._event_handler(delivery))
        self.last_activity = now
        delivery.attempts += 1
        if result in ("ok", "rejected"):
            self.events.remove(delivery)
        elif delivery.attempts >= EVENT_GRID_MAX_ATTEMPTS or now - delivery.first >= EVENT_GRID_TTL:
            self.events.remove(delivery)
            self.dead_lettered.append((delivery.function, str(delivery.document["id"])))
        else:
            backoff = EVENT_GRID_BACKOFF[min(delivery.attempts, len(EVENT_GRID_BACKOFF)) - 1]
            delivery.due = now + timedelta(seconds=backoff)
        return True

    def _event_handler(self, delivery: EventDelivery) -> Callable[[], object]:
        doc = delivery.document
        if delivery.function == "on_data_version_registered":  # routed as functions/retrain.py routes them
            return lambda: composition.on_data_version_registered(
                self.services, parse_data_version_registered(doc["data"]), str(doc["id"]))
        if delivery.function == "on_run_event":
            return lambda: composition.on_run_finished(
                self.services, parse_run_event(doc["eventType"], doc["data"]), str(doc["id"]))
        if delivery.function == "on_model_registered":
            return lambda: self.services.promoter.on_model_version(parse_model_registered(doc))
        raise AssertionError(f"no handler for Event Grid subscription {delivery.function}: add it to "
                             "tests/chaos/platform.py")

    def _queue_handler(self, queue: str, message: QueuedMessage[Any]) -> Callable[[], object]:
        for wiring in QUEUES:
            if wiring.queue == queue:
                return lambda: wiring.handler(self.services, message)
        raise AssertionError(f"no queue trigger for {queue}: add it to QUEUES in tests/chaos/platform.py")

    def _queue_step(self, now: datetime) -> bool:
        ready = [(t, name) for name, q in self.stores.queues.items()
                 if (t := q.next_visible_at()) is not None and t <= now]
        if not ready:
            return False
        _, name = min(ready)
        queue = self.stores.queues[name]
        message = queue.receive(now=now, visibility_timeout=FUNCTION_LEASE)
        assert message is not None
        self.last_activity = now
        if message.dequeue_count > MAX_DEQUEUE:
            queue.complete(message)
            self.poisoned.append((name, message.item))
            self.poison_count += 1
            return True
        result = self._invoke(f"{name} {message.item}", self._queue_handler(name, message))
        if result in ("ok", "rejected"):
            queue.complete(message)
        elif result == "failed":
            queue.release(message, VISIBILITY_ON_FAILURE)
        return True  # crashed: the message shows again when its lease lapses

    # -- timers ----------------------------------------------------------------------------------------
    def _reconcilers(self) -> bool:
        """Whether any service can reconcile yet (the flows gain `reconcile` one by one)."""
        s = self.services
        return any(callable(getattr(service, "reconcile", None)) for service in (s.ingestor, s.retrainer, s.promoter))

    def _timer_step(self, now: datetime) -> bool:
        if self._reconcilers() and self._next_reconcile <= now:
            self._next_reconcile = now + timedelta(seconds=RECONCILE_SECONDS)
            self._timer("reconcile", lambda: self.services.reconciler.run(run_id=f"reconcile-{now:%d%H%M%S}",
                                                                           now=self.clock()), now)
            return True
        if self._next_retention is not None and self._next_retention <= now:
            self._next_retention = now + timedelta(seconds=RETENTION_SECONDS)
            self._timer("retention", lambda: self.services.retention.run(run_id=f"retention-{now:%d%H%M%S}",
                                                                          dry_run=False), now)
            return True
        return False

    def _timer(self, what: str, run: Callable[[], object], now: datetime) -> None:
        """A timer execution; it counts as activity only if it failed or changed something (audit aside)."""
        before = len(self.injector.calls)
        result = self._invoke(what, run)
        changed = any(c.took_effect and c.method in MUTATING and c.port != "audit"
                      for c in self.injector.calls[before:])
        if result != "ok" or changed:
            self.last_activity = now

    # -- Azure ML ----------------------------------------------------------------------------------------
    def _untracked_jobs(self) -> list[str]:
        return [j.name for j in self.stores.workspace.jobs() if j.name not in self.jobs]

    @staticmethod
    def _job_due(job: TrackedJob) -> datetime | None:
        if job.state == "NotStarted":
            return job.submitted + timedelta(seconds=JOB_START_SECONDS)
        if job.state == "Running":
            return job.submitted + timedelta(seconds=JOB_SECONDS)
        return None

    def _azure_ml_step(self, now: datetime) -> bool:
        for job in self.stores.workspace.jobs():
            if job.name not in self.jobs:
                inputs = job.submission.inputs
                self.jobs[job.name] = TrackedJob(job.name, now, str(inputs.get("model_name", "model")),
                                                 job.submission.experiment, dict(job.submission.tags))
                return True
        for tracked in self.jobs.values():
            due = self._job_due(tracked)
            if due is not None and due <= now:
                self._advance_job(tracked)
                self.last_activity = now
                return True
        return False

    def _advance_job(self, job: TrackedJob) -> None:
        if job.state == "NotStarted":
            job.state = "Running"
            self.stores.workspace.set_job_status(job.name, "Running")
            return
        job.state = "Completed"
        self.stores.workspace.set_job_status(job.name, "Completed")
        if job.tags.get(Tag.COMPARISON.value):  # the compare step: it writes comparison.json, registers nothing
            self.stores.workspace.write_comparison(job.name, self.comparison(job))
        else:
            self._registered_by(job)
        self._emit({"id": f"run-completed-{job.name}", "eventType": RUN_COMPLETED,
                    "subject": f"experiments/{job.experiment}/runs/{job.name}", "eventTime": self.clock().isoformat(),
                    "topic": WORKSPACE_TOPIC, "dataVersion": "2",
                    "data": {"runId": job.name, "experimentName": job.experiment, "runTags": job.tags,
                             "runStatus": "Completed"}})

    def comparison(self, job: TrackedJob) -> str:
        """What the compare step writes: every challenger clearly better than its champion (by 0.02-0.04); a
        champion re-scored alone scores `rescored`."""
        champion = job.tags.get(Tag.COMPARED_WITH.value) or None
        rescore = job.tags.get(Tag.COMPARISON.value) == ComparisonPurpose.RESCORE.value
        return json.dumps({
            "schema": "evergreen.comparison/1", "seed": 7, "resamples": 1000, "confidence": 0.95,
            "evaluation": {"data_asset": job.tags.get(Tag.DATA_ASSET.value, ""), "rows": 5000,
                           "data_version": job.tags.get(Tag.DATA_VERSION.value, ""), "label_column": "churned"},
            "metric": self.metric, "direction": "higher_is_better",
            "challenger": {"model": job.tags.get(Tag.MODEL.value, ""), "metrics": {
                self.metric: self.rescored if rescore else 0.83}},
            "champion": None if champion is None else {"model": champion, "metrics": {self.metric: 0.80}},
            "difference": None if champion is None else {"metric": self.metric, "estimate": 0.03, "low": 0.02,
                                                         "high": 0.04},
            "slices": []})

    def _registered_by(self, job: TrackedJob) -> None:
        """A training run registers its model (and Azure ML announces it)."""
        score = 0.80 + 0.01 * (1 + sum(1 for n, _ in self.models if n == job.model_name))
        lineage = {Tag.DATA_ASSET.value: job.tags.get(Tag.DATA_ASSET.value, ""),
                   Tag.DATA_VERSION.value: job.tags.get(Tag.DATA_VERSION.value, ""), Tag.JOB_NAME.value: job.name}
        self.register_model(job.model_name, {metric_tag(self.metric): f"{score:.2f}", **lineage})


class _Routed:
    """The topic as Event Grid sees it: every publish (duplicates too) is recorded and delivered."""

    def __init__(self, store: MemoryEventPublisher, deliver: Callable[[DataVersionRegistered], None]) -> None:
        self._store = store
        self._deliver = deliver

    def data_version_registered(self, event: DataVersionRegistered) -> str:
        event_id = self._store.data_version_registered(event)
        self._deliver(event)
        return event_id

    def champion_degraded(self, event: ChampionDegraded) -> str:
        """Recorded only: no Event Grid subscription of the app takes Evergreen.ChampionDegraded (alerts do)."""
        return self._store.champion_degraded(event)

"""The status page's read model: what Evergreen did and why, gathered through the ports with bounded reads.

Every read is a query or a page of known size, never a scan of history, so the page's cost does not grow
with the number of versions or audit records (`bench/bench_status.py` measures it):

* data versions: the dataset's latest version, then the `limits.versions` before it (one `get` each);
* model versions: the model's latest (`Endpoints.latest_model`), then the ones before it;
* open batches: the ledger's open-work index (`Operator.batches`);
* stuck work: the ledger's open-work index of ingest, approval and comparisons, and the rollout rows;
* gate decisions, rollout timelines, failed runs, the last retention run and the audit tail: the audit
  log's time-ordered index (`AuditLog.tail`), newest first, with a cap on what a filtered search reads;
* dead letters and poison messages: the first `limits.health` of each;
* the retention dry run lists the whole inventory (it must, to protect what is in use), so it is computed
  at most once per `plan_ttl_seconds` and the page says when it was computed.

`StatusReader.read(query)` returns a `StatusView` of frozen dataclasses; `StatusView.to_json()` is what
`GET /api/status.json` answers. `parse_status_query` turns the page's query parameters into a
`StatusQuery`, raising `InvalidEventError` naming a bad one (the edge answers 400).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import InvalidOperation
from typing import Any

from croniter import croniter

from shared.config.policy import Policy
from shared.domain.audit import AuditRecord
from shared.domain.gate import parse_metric
from shared.domain.records import utcnow
from shared.domain.urls import strip_query
from shared.domain.vocabulary import (
    ApprovalState,
    PromotionAction,
    RetentionAudit,
    Tag,
    metric_tag,
    retention_audit_kind,
    version_order,
)
from shared.domain.workspace import DataVersionInfo, EndpointView, ModelInfo
from shared.errors import InvalidEventError
from shared.ports import AuditLog, Clock, DataRegistry, DeadLetters, Endpoints, PoisonQueue
from shared.services.ledger import Ledger
from shared.services.operator import BatchStatus, Operator
from shared.services.promotion import stall_patience
from shared.services.redrive import RedriveItem, _dead_letter_item, _poison_item
from shared.services.retention import RetentionRunner, RetentionSummary

log = logging.getLogger(__name__)

REJECTED_KIND = f"promotion.{PromotionAction.SKIPPED.value}"
SOURCE_TAGS = (Tag.SOURCE_URL.value, Tag.SOURCE_FOLDER.value, Tag.FILES.value, Tag.UPLOADED_AT.value,
               Tag.SHA256.value)
COMPARISON_TAGS = (Tag.COMPARED_WITH.value, Tag.INTERVAL.value, Tag.DECISION.value, Tag.APPROVAL.value)
FILTERS = ("dataset", "model", "endpoint", "kind", "limit")
PASSED_OVER = ("code",)  # the Functions host's own key parameter (auth level function): not a filter
_KIND_RE = re.compile(r"^[a-z_]+(\.[a-z_]*)?$")


@dataclass(frozen=True)
class StatusLimits:
    """How much of each list the page reads: the bounds that keep its cost flat."""

    versions: int = 20  # data and model versions per dataset/model
    decisions: int = 20  # gate decisions (and rejected candidates) per model
    timeline: int = 40  # rollout steps per endpoint
    health: int = 20  # dead letters, poison messages per queue, failed runs, stuck items
    plan_rows: int = 200  # retention actions and protected assets shown (the CLI prints the whole plan)
    audit_days: int = 7  # how far back the audit searches look
    scan_limit: int = 5000  # audit index rows one filtered search reads at most


# -- the query ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StatusQuery:
    """The page's filters: they narrow the sections and the audit tail."""

    dataset: str = ""
    model: str = ""
    endpoint: str = ""
    kind: str = ""  # an audit kind prefix, e.g. `rollout.` or `promotion.skipped`
    limit: int = 50  # audit tail rows

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_status_query(params: Mapping[str, str], policy: Policy) -> StatusQuery:
    """The filters from query parameters; raises InvalidEventError naming every bad one (HTTP 400)."""
    problems = [f"unknown parameter {name!r} (use {', '.join(FILTERS)})" for name in params
                if name not in FILTERS and name not in PASSED_OVER]
    values = {name: str(params.get(name, "")).strip() for name in FILTERS}
    known = {"dataset": [d.name for d in policy.datasets], "model": [m.name for m in policy.models],
             "endpoint": sorted({m.promotion.endpoint for m in policy.models})}
    for name, names in known.items():
        if values[name] and values[name] not in names:
            problems.append(f"{name}={values[name]!r} is not in the policy (known: {', '.join(names) or 'none'})")
    if values["kind"] and not _KIND_RE.match(values["kind"]):
        problems.append(f"kind={values['kind']!r} is not an audit kind prefix like 'rollout.' or 'promotion.skipped'")
    limit = 50
    if values["limit"]:
        if not re.fullmatch(r"[0-9]{1,3}", values["limit"]) or not 1 <= int(values["limit"]) <= 500:  # not '²'
            problems.append(f"limit={values['limit']!r} must be a whole number from 1 to 500")
        else:
            limit = int(values["limit"])
    if problems:
        raise InvalidEventError("bad status filter: " + "; ".join(problems))
    return StatusQuery(dataset=values["dataset"], model=values["model"], endpoint=values["endpoint"],
                       kind=values["kind"], limit=limit)


# -- the view -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataVersionRow:
    version: str
    asset_type: str
    uri: str
    sources: Mapping[str, str]  # the `evergreen.source_*`/`files`/`uploaded_at` tags: which blobs it holds


@dataclass(frozen=True)
class DatasetStatus:
    name: str
    versions: tuple[DataVersionRow, ...]  # newest first
    batches: tuple[BatchStatus, ...]


@dataclass(frozen=True)
class ModelVersionRow:
    version: str
    metric: float | None  # the primary metric (the promotion policy's), None if the version has none
    champion: bool  # served by the endpoint now (most traffic)
    rejected: str  # why the gate (or a person) rejected it; "" if it was not
    comparison: Mapping[str, str]  # `evergreen.compared_with`, `interval`, `decision`, `approval` tags


@dataclass(frozen=True)
class Decision:
    """One audited decision (gate, rollout step, retention, …) as the page shows it."""

    at: datetime
    kind: str
    decision: str
    reason: str
    event_id: str
    assets: Mapping[str, str]

    @classmethod
    def of(cls, rec: AuditRecord) -> Decision:
        return cls(at=rec.at, kind=rec.kind, decision=rec.decision, reason=rec.reason, event_id=rec.event_id,
                   assets=dict(rec.assets))


@dataclass(frozen=True)
class ModelStatus:
    name: str
    endpoint: str
    metric: str
    direction: str
    versions: tuple[ModelVersionRow, ...]  # oldest first (the chart's x axis)
    decisions: tuple[Decision, ...]  # newest first
    rejected: tuple[Decision, ...]  # newest first


@dataclass(frozen=True)
class TrafficShare:
    deployment: str
    weight: int
    model: str  # "name:version" it serves ("" if unknown)
    state: str


@dataclass(frozen=True)
class RolloutNow:
    candidate: str
    champion: str
    phase: str
    phase_since: datetime | None
    reason: str
    queued: str


@dataclass(frozen=True)
class EndpointStatus:
    name: str
    exists: bool
    state: str
    serving: str  # "name:version" with the most traffic ("" = none)
    traffic: tuple[TrafficShare, ...]
    rollout: RolloutNow | None
    timeline: tuple[Decision, ...]  # oldest first


@dataclass(frozen=True)
class PlannedAction:
    kind: str
    target: str
    rule: str
    reason: str


@dataclass(frozen=True)
class ProtectedAsset:
    target: str
    reason: str


@dataclass(frozen=True)
class RetentionStatus:
    schedule: str
    next_run: datetime | None
    last_run: Decision | None
    plan_at: datetime | None  # when the dry-run plan was computed (it is cached; None = not available)
    plan_cached_seconds: float
    actions: tuple[PlannedAction, ...]  # the first `limits.plan_rows`, in the plan's order
    protected: tuple[ProtectedAsset, ...]  # likewise
    suspended: tuple[str, ...]
    note: str  # why there is no plan, if there is none
    actions_total: int = 0
    protected_total: int = 0


@dataclass(frozen=True)
class HealthItem:
    source: str  # deadletter | poison | failed_run | stuck
    what: str
    reason: str
    at: datetime | None


@dataclass(frozen=True)
class HealthStatus:
    dead_letters: tuple[HealthItem, ...]
    poison: tuple[HealthItem, ...]
    failed_runs: tuple[HealthItem, ...]
    stuck: tuple[HealthItem, ...]


@dataclass(frozen=True)
class AuditTailView:
    records: tuple[Decision, ...]
    scanned: int
    truncated: bool


@dataclass(frozen=True)
class StatusView:
    at: datetime
    query: StatusQuery
    datasets: tuple[DatasetStatus, ...]
    models: tuple[ModelStatus, ...]
    endpoints: tuple[EndpointStatus, ...]
    retention: RetentionStatus
    health: HealthStatus
    audit: AuditTailView
    timings_ms: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (times as ISO text)."""
        data: dict[str, Any] = _jsonable(dataclasses.asdict(self))
        return data


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# -- the retention plan, computed at most once per window ------------------------------------------------
class PlanCache:
    """The retention dry run, kept for `ttl_seconds`: it lists the whole inventory, so a page view must not."""

    def __init__(self, compute: Callable[[datetime], RetentionSummary], ttl_seconds: float) -> None:
        self._compute = compute
        self.ttl_seconds = ttl_seconds
        self._lock = threading.Lock()
        self._kept: tuple[float, RetentionSummary] | None = None

    def get(self, now: datetime) -> RetentionSummary:
        """The cached plan, or a fresh one if it is older than the window; errors of the dry run propagate."""
        with self._lock:
            if self._kept is None or time.monotonic() - self._kept[0] > self.ttl_seconds:
                self._kept = (time.monotonic(), self._compute(now))
            return self._kept[1]


# -- the reader -----------------------------------------------------------------------------------------
class StatusReader:
    """Gathers the status page's view through ports, each read bounded by `limits`."""

    def __init__(self, *, policy: Policy, registry: DataRegistry, endpoints: Endpoints, ledger: Ledger,
                 audit: AuditLog, retention_schedule: str, retention: RetentionRunner | None = None,
                 dead_letters: DeadLetters | None = None,
                 poison_queues: Sequence[PoisonQueue] | Callable[[], Sequence[PoisonQueue]] = (),
                 limits: StatusLimits = StatusLimits(), plan_ttl_seconds: float = 300.0,
                 stuck_after: timedelta = timedelta(minutes=10), clock: Clock = utcnow) -> None:
        """`stuck_after`: how long open work may stay untouched before the page calls it stuck (the lease;
        comparisons in flight get the reconciler's patience, at most `STALL_FLOOR` of it);
        `poison_queues` may be a function, called on each read (poison queues appear while the app runs)."""
        self._policy = policy
        self._registry = registry
        self._endpoints = endpoints
        self._ledger = ledger
        self._audit = audit
        self._schedule = retention_schedule
        self._dead_letters = dead_letters
        self._poison = poison_queues
        self._limits = limits
        self._stuck_after = stuck_after
        self._clock = clock
        self._operator = Operator(policy=policy, ledger=ledger, audit=audit, clock=clock)
        self._plans = (PlanCache(lambda now: retention.run(run_id=f"status-{now:%Y%m%dT%H%M%S}", dry_run=True,
                                                           now=now), plan_ttl_seconds)
                       if retention is not None else None)

    def read(self, query: StatusQuery = StatusQuery()) -> StatusView:
        """The whole view for `query`. Port errors propagate (the platform answers 500 and logs them)."""
        now = self._clock()
        timings: dict[str, float] = {}

        def timed(name: str, make: Callable[[], Any]) -> Any:
            mark = time.perf_counter()
            result = make()
            timings[name] = round((time.perf_counter() - mark) * 1000, 2)
            return result

        endpoints = timed("endpoints", lambda: self._endpoint_views(query, now))
        serving = {e.name: e.serving for e in endpoints}
        view = StatusView(
            at=now, query=query, endpoints=endpoints,
            datasets=timed("datasets", lambda: self._datasets(query)),
            models=timed("models", lambda: self._models(query, serving, now)),
            retention=timed("retention", lambda: self._retention(now)),
            health=timed("health", lambda: self._health(now)),
            audit=timed("audit", lambda: self._audit_tail(query, now)),
            timings_ms=timings,
        )
        log.info("status read at=%s query=%s timings_ms=%s", now.isoformat(), query, timings)
        return view

    # -- datasets -----------------------------------------------------------------------------------
    def _datasets(self, query: StatusQuery) -> tuple[DatasetStatus, ...]:
        batches = self._operator.batches()
        return tuple(
            DatasetStatus(name=d.name, versions=tuple(self._data_versions(d.name)),
                          batches=tuple(b for b in batches if b.dataset == d.name))
            for d in self._policy.datasets if query.dataset in ("", d.name))

    def _data_versions(self, name: str) -> Iterable[DataVersionRow]:
        latest = self._registry.get_data_version(name)
        infos: list[DataVersionInfo] = []
        if latest is not None:
            infos = [latest, *_before(latest.version, self._limits.versions - 1,
                                      lambda v: self._registry.get_data_version(name, v))]
        # No query string (a SAS) on the page, even on a version registered by hand.
        return [DataVersionRow(version=i.version, asset_type=i.asset_type, uri=strip_query(i.uri),
                               sources={k: strip_query(v) if k == Tag.SOURCE_URL.value else v
                                        for k, v in i.tags.items() if k in SOURCE_TAGS}) for i in infos]

    # -- models -------------------------------------------------------------------------------------
    def _models(self, query: StatusQuery, serving: Mapping[str, str], now: datetime) -> tuple[ModelStatus, ...]:
        return tuple(self._model(m.name, m.promotion.endpoint, m.promotion.metric, m.promotion.direction.value,
                                 serving.get(m.promotion.endpoint, ""), now)
                     for m in self._policy.models
                     if query.model in ("", m.name) and query.endpoint in ("", m.promotion.endpoint))

    def _model(self, name: str, endpoint: str, metric: str, direction: str, champion: str,
               now: datetime) -> ModelStatus:
        decisions = self._tail(now, self._limits.decisions, "promotion.", {"model": name})
        rejected = tuple(d for d in decisions if d.kind == REJECTED_KIND)
        why = {d.assets.get("model", ""): d.reason for d in reversed(rejected)}  # the newest reason wins
        latest = self._endpoints.latest_model(name)
        infos: list[ModelInfo] = []
        if latest is not None:
            infos = [latest, *_before(latest.version, self._limits.versions - 1,
                                      lambda v: self._endpoints.get_model(name, v))]
        rows = tuple(ModelVersionRow(version=i.version, metric=_metric(i, metric),
                                     champion=f"{name}:{i.version}" == champion,
                                     rejected=why.get(f"{name}:{i.version}", "") or _rejected_by_tag(i),
                                     comparison={k: v for k, v in i.tags.items() if k in COMPARISON_TAGS})
                     for i in sorted(infos, key=lambda i: version_order(i.version)))
        return ModelStatus(name=name, endpoint=endpoint, metric=metric, direction=direction, versions=rows,
                           decisions=decisions, rejected=rejected)

    # -- endpoints ----------------------------------------------------------------------------------
    def _endpoint_views(self, query: StatusQuery, now: datetime) -> tuple[EndpointStatus, ...]:
        names = sorted({m.promotion.endpoint for m in self._policy.models if query.model in ("", m.name)})
        return tuple(self._endpoint(name, now) for name in names if query.endpoint in ("", name))

    def _endpoint(self, name: str, now: datetime) -> EndpointStatus:
        found = self._endpoints.endpoint(name)
        record = self._ledger.get_rollout(name)
        rollout = None if record is None else RolloutNow(
            candidate=record.candidate, champion=record.champion_model, phase=record.state,
            phase_since=record.phase_since, reason=record.failure or record.reason,
            queued=f"{record.queued_name}:{record.queued_version}" if record.queued_name else "")
        timeline = tuple(reversed(self._tail(now, self._limits.timeline, "rollout.", {"endpoint": name})))
        if found is None:
            return EndpointStatus(name=name, exists=False, state="", serving="", traffic=(), rollout=rollout,
                                  timeline=timeline)
        return EndpointStatus(name=name, exists=True, state=found.state, serving=_serving(found),
                              traffic=_traffic(found), rollout=rollout, timeline=timeline)

    # -- retention ----------------------------------------------------------------------------------
    def _retention(self, now: datetime) -> RetentionStatus:
        last = self._tail(now, 1, retention_audit_kind(RetentionAudit.RUN), {})
        next_run = croniter(self._schedule, now, second_at_beginning=True).get_next(datetime)
        ttl = self._plans.ttl_seconds if self._plans else 0.0
        empty = RetentionStatus(schedule=self._schedule, next_run=next_run, last_run=last[0] if last else None,
                                plan_at=None, plan_cached_seconds=ttl, actions=(), protected=(), suspended=(),
                                note="retention is not configured for this page")
        if self._plans is None:
            return empty
        try:
            summary = self._plans.get(now)
        except Exception as exc:  # the page still answers; the plan's failure is shown, and logged
            log.warning("status retention dry run failed: %s: %s", type(exc).__name__, exc)
            return dataclasses.replace(empty, note=f"the dry run failed: {type(exc).__name__}: {exc}")
        plan, rows = summary.plan, self._limits.plan_rows
        return dataclasses.replace(
            empty, plan_at=plan.now, note="", actions_total=len(plan.actions), protected_total=len(plan.protected),
            actions=tuple(PlannedAction(a.kind.value, str(a.target), a.rule, a.reason) for a in plan.actions[:rows]),
            protected=tuple(ProtectedAsset(str(p.target), p.reason) for p in plan.protected[:rows]),
            suspended=tuple(str(s) for s in plan.suspended))

    # -- health -------------------------------------------------------------------------------------
    def _health(self, now: datetime) -> HealthStatus:
        n = self._limits.health
        letters: list[RedriveItem] = []
        if self._dead_letters is not None:
            letters = [_dead_letter_item(letter) for letter in itertools.islice(self._dead_letters.list(), n)]
        queues = self._poison() if callable(self._poison) else self._poison
        poison = [_poison_item(m) for q in queues for m in q.peek(n)]
        failed = [d for d in self._tail(now, n, "retrain.", {}) if "fail" in d.decision or "fail" in d.kind]
        return HealthStatus(
            dead_letters=tuple(HealthItem("deadletter", i.what, i.reason, i.at) for i in letters),
            poison=tuple(HealthItem("poison", i.what, i.reason, i.at) for i in poison),
            failed_runs=tuple(HealthItem("failed_run", d.assets.get("job") or d.assets.get("data", ""), d.reason,
                                         d.at) for d in failed),
            stuck=tuple(self._stuck(now))[:n])

    def _stuck(self, now: datetime) -> Iterable[HealthItem]:
        """Work the reconciler would re-drive (dry): open items past their lease, comparisons in flight past
        the promoter's patience (and unreadable ones), rollouts past their step."""
        lease = self._stuck_after
        for flow in ("ingest", "approval"):
            for item in self._ledger.open_work(flow):
                try:
                    since = datetime.fromisoformat(str(item["Since"])) if item.get("Since") else None
                except ValueError:  # a garbled entry is shown (it needs a look), never a failed page
                    yield HealthItem("stuck", f"{flow}: {item.get('RowKey', '?')}",
                                     f"its open-work time {str(item['Since'])[:40]!r} cannot be read", None)
                    continue
                if since is not None and now - since > lease:
                    yield HealthItem("stuck", f"{flow}: {item.get('RowKey', '?')}",
                                     f"open since {since.isoformat()} (longer than {lease})", since)
        yield from self._stuck_comparisons(now, stall_patience(lease))
        for record in self._ledger.rollouts():
            if record.active and record.due_at is not None and now - record.due_at > lease:
                yield HealthItem("stuck", f"rollout on {record.endpoint}",
                                 f"{record.state}: its step was due at {record.due_at.isoformat()}", record.due_at)

    def _stuck_comparisons(self, now: datetime, patience: timedelta) -> Iterable[HealthItem]:
        """Comparisons in flight the reconciler would re-drive: open longer than `patience` (its `stall_after`
        rule; an entry with no time counts as stale, as it does there); and every entry that cannot be read,
        whatever its age: the reconciler refuses to re-drive it, so it waits for an operator (only its job's
        own RunCompleted would drop it)."""
        for work in self._ledger.open_comparisons():
            if work.tags is None or work.unreadable:
                yield HealthItem("stuck", f"comparison: {work.job} (needs an operator)",
                                 f"its open-work entry cannot be read ({work.unreadable}); the reconciler will not "
                                 "re-drive it", work.since)
            elif work.since is None or now - work.since > patience:
                candidate = work.tags.get(Tag.MODEL.value) or "no candidate named"
                age = (f"for {timedelta(seconds=int((now - work.since).total_seconds()))}" if work.since
                       else "for an unknown time")
                yield HealthItem("stuck", f"comparison: {work.job} ({candidate})",
                                 f"open {age} (longer than {patience}); the reconciler re-drives it", work.since)

    # -- the audit tail -----------------------------------------------------------------------------
    def _audit_tail(self, query: StatusQuery, now: datetime) -> AuditTailView:
        assets = {key: value for key, value in (("", query.dataset), ("model", query.model),
                                                ("endpoint", query.endpoint)) if value}
        tail = self._audit.tail(limit=query.limit, kind_prefix=query.kind, assets=assets, days=self._limits.audit_days,
                                now=now, scan_limit=self._limits.scan_limit)
        return AuditTailView(tuple(Decision.of(r) for r in tail.records), tail.scanned, tail.truncated)

    def _tail(self, now: datetime, limit: int, kind: str, assets: Mapping[str, str]) -> tuple[Decision, ...]:
        tail = self._audit.tail(limit=limit, kind_prefix=kind, assets=assets, days=self._limits.audit_days, now=now,
                                scan_limit=self._limits.scan_limit)
        return tuple(Decision.of(r) for r in tail.records)


# -- helpers --------------------------------------------------------------------------------------------
def _before(version: str, count: int, get: Callable[[str], Any]) -> list[Any]:
    """Up to `count` versions numbered below `version`, newest first, one `get` each (gaps are skipped).

    Reads at most `2 * count` numbers, so a registry with many deleted versions cannot make it scan.
    """
    if not (version.isascii() and version.isdigit()) or len(version) > 18:  # '²' is a digit `int` cannot read
        return []
    found: list[Any] = []
    for number in range(int(version) - 1, max(0, int(version) - 1 - 2 * count), -1):
        item = get(str(number))
        if item is not None:
            found.append(item)
            if len(found) >= count:
                break
    return found


def _metric(info: ModelInfo, metric: str) -> float | None:
    raw = {**info.tags, **info.properties}.get(metric_tag(metric))
    if raw is None:
        return None
    try:
        return float(parse_metric(raw))
    except (ValueError, InvalidOperation):
        return None


def _rejected_by_tag(info: ModelInfo) -> str:
    """A rejection the model's own tags record (a person rejected it, or its approval expired)."""
    approval = info.tags.get(Tag.APPROVAL.value, "")
    final = (ApprovalState.REJECTED.value, ApprovalState.EXPIRED.value)
    return f"approval {approval}" if approval in final else ""


def _serving(found: EndpointView) -> str:
    deployment = found.serving()
    return f"{deployment.model[0]}:{deployment.model[1]}" if deployment and deployment.model else ""


def _traffic(found: EndpointView) -> tuple[TrafficShare, ...]:
    shares = [TrafficShare(deployment=d.name, weight=found.traffic.get(d.name, 0),
                           model=f"{d.model[0]}:{d.model[1]}" if d.model else "", state=d.state)
              for d in found.deployments]
    return tuple(sorted(shares, key=lambda s: (-s.weight, s.deployment)))

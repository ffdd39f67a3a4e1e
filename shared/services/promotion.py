"""Model registered → champion/challenger gate → blue/green rollout: the service behind three functions.

`on_model_version` (Event Grid ModelRegistered and the registry webhook) gathers the candidate and
the champion from the registry and the endpoint, asks the pure gate (`shared.domain.gate.plan_promotion`),
and starts a rollout or records why not. `on_tick` (the `evergreen-rollout` queue) advances a
rollout by one step of the state machine in `shared.domain.rollout`.

Concurrency. The endpoint's rollout row in the ledger is its lock: a rollout starts only through a
conditional write that finds no active rollout, and a step is taken only by the instance whose
conditional write moves `seq` forward. Duplicate or late events and queue messages therefore find
either a finished decision or a stale `seq`, and do nothing. A decision whose conditional write
keeps losing is re-read and re-decided a few times, then re-scheduled (`CandidateRetry` on the
`evergreen-promotion-retry` queue): "someone else is writing the row" never fails an execution.

Recovery. The row works as a lease whose expiry is `due_at`: every step that follows a write is
idempotent and is simply done again by whoever finds it undone. A redelivered event that finds
its own rollout without a step taken re-sends the first step (the start died after taking the
row); a redelivered tick re-sends the next step or re-does the end (outcome, hand-over); and
`reconcile` (a timer) re-sends the step of a rollout overdue by `STALL_POLL_INTERVALS` poll
intervals (its message was poisoned or lost) and finishes an end that was never recorded. Audit
records are keyed by what they say (the step, the row's own times), so a retry rewrites them.

Waiting for evaluation data. A candidate skipped because its `promotion.evaluation` data has no version
(`evaluation_data_missing`) is indexed in the ledger as waiting (only the newest version of a model is
kept); the DataVersionRegistered of that data (`on_evaluation_data`) or, if that is lost, `reconcile`
puts it through `_consider` as its own event would have, and drops the entry only afterwards.

Supersede rule. A candidate that arrives while a rollout is running is *queued* on the row (only
the newest version is kept; an older one is dropped, with a reason). The running rollout is never
interrupted: it finishes (or rolls back), and then the queued candidate goes through the gate
against whatever serves at that moment, so it must beat the model that just won, not the old one.

Ports only: `Endpoints`, the `Ledger` (over a `TableStore`), a `DelayedQueue[RolloutTick]` (and one
of `CandidateRetry`), an `AuditLog` and a `Clock`. A failed Azure ML call arrives as
`OperationFailedError`: a rollout step retries it with backoff and rolls back after
`MAX_STEP_ATTEMPTS`; anywhere else it propagates (transient: the platform retries the event or message).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from shared.config.policy import ModelPolicy, Policy
from shared.config.promotion import EvaluationPolicy, PromotionPolicy
from shared.domain import rollout as rollout_domain
from shared.domain.audit import AuditRecord
from shared.domain.comparison import (
    COMPARE_EXPERIMENT,
    COMPARE_NODE,
    COMPARE_PIPELINE,
    Comparison,
    InvalidComparisonError,
    judge,
    parse_comparison,
)
from shared.domain.events import DataVersionRegistered, ModelVersionEvent
from shared.domain.gate import (
    ModelSnapshot,
    Promote,
    PromoteCode,
    PromotionDecision,
    Skip,
    SkipCode,
    plan_promotion,
    precheck,
)
from shared.domain.keys import digest
from shared.domain.records import RolloutRecord, WaitingCandidate, utcnow
from shared.domain.retrain import PipelineSubmission, RunFinished
from shared.domain.rollout import (
    CandidateRetry,
    CreateDeployment,
    CreateEndpoint,
    DeleteDeployment,
    RolloutAction,
    RolloutTick,
    SetTraffic,
    SmokeTest,
    Transition,
    decide,
    deployment_name,
)
from shared.domain.telemetry import Attr
from shared.domain.vocabulary import (
    FINISHED_JOB_STATUSES,
    LINEAGE_TAGS,
    ROLLBACK_PHASES,
    ComparisonPurpose,
    Phase,
    PromotionAction,
    Tag,
    TickAction,
    version_order,
)
from shared.domain.workspace import DeploymentSpec
from shared.errors import (
    ClaimInProgressError,
    InvalidEventError,
    JobRejectedError,
    OperationFailedError,
    SmokeTestFailedError,
    TransientError,
)
from shared.ports import AuditLog, Clock, DataRegistry, DelayedQueue, Endpoints, JobRunner
from shared.services.approval import Approvals
from shared.services.ledger import Ledger
from shared.telemetry import annotate, continued, current_traceparent

log = logging.getLogger(__name__)

# Named beside their messages in shared.domain.rollout (the triggers bind them without importing this module).
ROLLOUT_QUEUE = rollout_domain.ROLLOUT_QUEUE
PROMOTION_RETRY_QUEUE = rollout_domain.PROMOTION_RETRY_QUEUE
MAX_STEP_ATTEMPTS = 3  # transient errors of one step before the rollout gives up and rolls back
MAX_BACKOFF_SECONDS = 300.0
RETRY_DELAY_SECONDS = 30.0  # when a re-scheduled candidate is looked at again
STALL_POLL_INTERVALS = 5  # a step overdue by this many poll intervals has lost its message (`reconcile`)
STALL_FLOOR = timedelta(minutes=3)  # ...and by at least this: the Functions host polls an idle queue ~once a minute


def stall_patience(lease: timedelta) -> timedelta:
    """How long open promotion work (a step, a comparison) may wait before `reconcile` re-drives it: the
    claim lease, at most `STALL_FLOOR` (the Promoter's `stall_after`, and what the status page calls stuck)."""
    return min(STALL_FLOOR, lease)
_DECIDE_ATTEMPTS = 8  # re-reads of the endpoint's row before a candidate is re-scheduled
_KNOWN_PHASES = frozenset(phase.value for phase in Phase)
PROMOTION_COMPARED = "compared"  # audit kind `promotion.compared`: a judged comparison, with the whole comparison
_MAX_AUDIT_COMPARISON = 30_000  # characters: a Table Storage string property holds at most 32K
_COMPARING_CODES = frozenset({PromoteCode.IMPROVED.value, SkipCode.NOT_BETTER.value, SkipCode.TOO_SMALL.value})


@dataclass(frozen=True)
class PromotionOutcome:
    action: PromotionAction
    detail: str
    code: str = ""  # a skip's code (`SkipCode`), "" for anything else


@dataclass(frozen=True)
class TickOutcome:
    action: TickAction
    detail: str


@dataclass(frozen=True)
class _Contest:
    """One candidate against the endpoint's champion, as read for one decision."""

    current: RolloutRecord | None  # the endpoint's rollout row as read (the start's condition)
    candidate: ModelSnapshot
    champion: ModelSnapshot | None
    champion_deployment: str
    event_id: str
    promotion: PromotionPolicy
    evaluation: EvaluationPolicy

    @property
    def compared_with(self) -> str:
        return self.champion.model if self.champion is not None else ""


def comparison_job_name(challenger: str, champion: str, data_asset: str, data_version: str) -> str:
    """The comparison job's name: deterministic from what it compares, so a redelivery submits nothing new."""
    return f"evergreen-compare-{digest('compare', challenger, champion, data_asset, data_version, length=20)}"


def comparison_submission(challenger: str, champion: str, data_asset: str, data_version: str, data_type: str,
                          promotion: PromotionPolicy, evaluation: EvaluationPolicy, app_root: Path,
                          event_id: str) -> PipelineSubmission:
    """The `ml/compare.yml` job scoring `challenger` (against `champion`, if any) on one evaluation data version."""
    # `ml/compare.yml` binds the champion on its node, only when there is one (a pipeline job's own
    # inputs cannot be optional): "<node>.<input>" addresses a node's input.
    models = {"challenger_model": f"azureml:{challenger}"}
    names: dict[str, str | int | float | bool] = {"challenger_name": challenger}
    if champion:
        models[f"{COMPARE_NODE}.champion_model"] = f"azureml:{champion}"
        names[f"{COMPARE_NODE}.champion_name"] = champion
    return PipelineSubmission(
        yaml_path=app_root / COMPARE_PIPELINE,
        job_name=comparison_job_name(challenger, champion, data_asset, data_version),
        experiment=COMPARE_EXPERIMENT, data_input=f"azureml:{data_asset}:{data_version}", data_type=data_type,
        data_input_name="evaluation_data", model_inputs=models,
        inputs={**names, "data_asset": data_asset, "data_version": data_version,
                "label_column": evaluation.label_column,
                "metric": promotion.metric, "direction": promotion.direction.value,
                "confidence": evaluation.confidence, "resamples": evaluation.resamples, "seed": evaluation.seed,
                "slices": ",".join(evaluation.slices), "min_slice_rows": evaluation.min_slice_rows},
        tags={Tag.COMPARISON.value: ComparisonPurpose.CHALLENGER.value, Tag.MODEL.value: challenger,
              Tag.COMPARED_WITH.value: champion, Tag.ENDPOINT.value: promotion.endpoint,
              Tag.DATA_ASSET.value: data_asset, Tag.DATA_VERSION.value: data_version,
              Tag.TRIGGER_EVENT.value: event_id},
    )


def _holdouts(code: PromoteCode | SkipCode, reason: str) -> str:
    """Without `promotion.evaluation`, a comparison of two models is of metrics on different rows: say so."""
    if code.value in _COMPARING_CODES:
        return (f"{reason} (compared on different holdouts: each run's own test split; set "
                "promotion.evaluation to score both on the same data)")
    return reason


def _compact(text: str) -> str:
    """The comparison for the audit record, within a table property's size (slices left out if too long)."""
    if not text:
        return ""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return text[:_MAX_AUDIT_COMPARISON]
    compact = json.dumps(document, separators=(",", ":"))
    if len(compact) > _MAX_AUDIT_COMPARISON and isinstance(document, dict):
        document["slices"] = f"{len(document.get('slices') or [])} slices left out (too long for the audit log)"
        compact = json.dumps(document, separators=(",", ":"))
    return compact[:_MAX_AUDIT_COMPARISON]


def promotion_key(endpoint: str, model_name: str, version: str) -> str:
    """Names one promotion (candidate on endpoint): rollout id and the ledger's memory of its outcome."""
    return digest("promote", endpoint, model_name, version, length=16)


class Promoter:
    """Gates registered model versions and drives their rollouts, through ports only."""

    def __init__(self, *, policy: Policy, endpoints: Endpoints, ledger: Ledger, ticks: DelayedQueue[RolloutTick],
                 audit: AuditLog, app_root: Path, clock: Clock = utcnow,
                 retries: DelayedQueue[CandidateRetry] | None = None, stall_after: timedelta = STALL_FLOOR,
                 approvals: Approvals | None = None, jobs: JobRunner | None = None,
                 data: DataRegistry | None = None) -> None:
        """`stall_after`: how overdue a step must be (at least) before `reconcile` re-sends it. A step's
        message is its lease: a host that dies mid-step hides it for minutes, so the composition root
        passes the claim lease (`EVERGREEN_LEASE_SECONDS`, at most `STALL_FLOOR`)."""
        self._policy = policy
        self._approvals = approvals  # manual approval's hold at `_on_promote`; None: every winner starts
        self._stall_after = stall_after
        self._retries = retries
        self._jobs = jobs  # the comparison jobs of models with `promotion.evaluation`
        self._data = data  # resolves `evaluation.data: name@latest` at submit time
        self._endpoints = endpoints
        self._ledger = ledger
        self._ticks = ticks
        self._audit = audit
        self._app_root = app_root
        self._clock = clock

    # -- a model version was registered ------------------------------------------------------------
    def on_model_version(self, event: ModelVersionEvent) -> PromotionOutcome:
        """Gate the version against the champion; start a rollout, queue it, or record why not.

        If the endpoint's rollout row keeps changing under us, the candidate is re-scheduled on the
        retry queue (`RESCHEDULED`). Raises OperationFailedError if Azure ML cannot be read (transient:
        the platform retries the event).
        """
        annotate({Attr.MODEL: event.model_name, Attr.MODEL_VERSION: event.version})
        model_policy = self._policy.model(event.model_name)
        if model_policy is None:
            return self._skip(event.event_id, event.model, "", f"no promotion policy for model {event.model_name!r} "
                              "(models: in evergreen.yaml)")
        return self._consider(event.model_name, event.version, event.event_id, model_policy)

    def on_candidate_retry(self, retry: CandidateRetry) -> PromotionOutcome:
        """A candidate re-scheduled by `_reschedule`: decide again, exactly as for its original event.

        Raises OperationFailedError if Azure ML cannot be read (transient: the platform retries).
        """
        model_policy = self._policy.model(retry.model_name)
        if model_policy is None:
            return self._skip(retry.event_id, f"{retry.model_name}:{retry.version}", "",
                              f"no promotion policy for model {retry.model_name!r} any more "
                              "(models: in evergreen.yaml)")
        return self._consider(retry.model_name, retry.version, retry.event_id, model_policy)

    def on_comparison_finished(self, finished: RunFinished, event_id: str) -> PromotionOutcome:
        """A challenger's comparison job ended (RunCompleted / RunStatusChanged): decide from its comparison.json.

        The job's tags say which candidate and which champion it compared; the candidate then goes
        through `_consider` as for its ModelRegistered event (queued behind a running rollout, or
        judged). A run that is not one of ours (another job, a step of the pipeline) is ignored.
        Raises OperationFailedError if Azure ML cannot be read (transient: the platform retries).
        """
        tags = finished.tags
        name, _, version = tags.get(Tag.MODEL.value, "").rpartition(":")
        if tags.get(Tag.COMPARISON.value) != ComparisonPurpose.CHALLENGER.value or not name or not version:
            return PromotionOutcome(PromotionAction.SKIPPED, f"run {finished.run_id} is not a challenger comparison")
        if not finished.ended:
            return PromotionOutcome(PromotionAction.SKIPPED, f"comparison {finished.run_id} is {finished.status}, "
                                    "not finished")
        expected = comparison_job_name(f"{name}:{version}", tags.get(Tag.COMPARED_WITH.value, ""),
                                       tags.get(Tag.DATA_ASSET.value, ""), tags.get(Tag.DATA_VERSION.value, ""))
        if finished.run_id != expected:
            return PromotionOutcome(PromotionAction.SKIPPED, f"run {finished.run_id} is not the comparison job "
                                    f"{expected} (a step of it?)")
        model_policy = self._policy.model(name)
        if model_policy is None or model_policy.promotion.evaluation is None:
            return self._skip(event_id, f"{name}:{version}", "", f"comparison {finished.run_id} ended, but model "
                              f"{name!r} has no promotion.evaluation policy any more (models: in evergreen.yaml)")
        outcome = self._consider(name, version, event_id, model_policy, finished)
        # Decided, queued behind a rollout, re-scheduled or compared again against a new champion: this
        # job's part is over either way (what follows has its own recovery).
        self._ledger.finish_comparison(finished.run_id)
        return outcome

    # -- candidates that waited for their evaluation data ---------------------------------------------------
    def on_evaluation_data(self, event: DataVersionRegistered, event_id: str) -> list[PromotionOutcome]:
        """A data version was registered: gate again every candidate waiting for it (`evaluation_data_missing`).

        Only the newest waiting version of each model is gated (older ones are dropped, `skip:superseded`);
        each re-gate is audited as `promotion.regated`, and its entry leaves the index only after the gate
        has durably decided (a comparison submitted and indexed, a decision recorded), so a crash in between
        is re-driven by a redelivery or by `reconcile`. A redelivered event finds nothing waiting any more.
        Raises OperationFailedError if Azure ML cannot be read (transient: the platform retries the event).
        """
        assets = {event.asset_name, event.dataset}
        if not any(m.promotion.evaluation is not None and m.promotion.evaluation.data_name in assets
                   for m in self._policy.models):
            return []  # nobody's evaluation data: the index is not even read
        waiting = [w for w in self._ledger.waiting_candidates() if not w.unreadable and w.data_asset in assets]
        trigger = f"{event.asset_name}:{event.version} was registered (event {event_id})"
        outcomes = (self._wake(candidate, trigger) for candidate in self._newest(waiting))
        return [outcome for outcome in outcomes if outcome is not None]

    def _newest(self, waiting: list[WaitingCandidate]) -> list[WaitingCandidate]:
        """The newest waiting version of each (model, data asset), in the one version order; the older ones are
        superseded: audited (`skip:superseded`), then dropped from the index."""
        newest: dict[tuple[str, str], WaitingCandidate] = {}
        for candidate in waiting:
            group = (candidate.model_name, candidate.data_asset)
            if group not in newest or version_order(candidate.version) > version_order(newest[group].version):
                newest[group] = candidate
        for candidate in waiting:
            kept = newest[(candidate.model_name, candidate.data_asset)]
            if candidate.key != kept.key:
                self._drop_waiting(candidate, f"{candidate.model} waited for its evaluation data {candidate.data}, "
                                   f"but {kept.model} is newer and waits too; the newest candidate wins")
        return list(newest.values())

    def _wake(self, waiting: WaitingCandidate, trigger: str) -> PromotionOutcome | None:
        """Gate `waiting` again if its evaluation data has a version now; None if it has none yet (it waits on).

        A newer version of the model in the registry supersedes it (that version went through the gate on
        its own event), and so does a policy without the model. Raises OperationFailedError if Azure ML
        cannot be read (the entry stays; the platform or the next `reconcile` retries).
        """
        model = waiting.model
        model_policy = self._policy.model(waiting.model_name)
        if model_policy is None:
            return self._drop_waiting(waiting, f"{model} waited for its evaluation data {waiting.data}, but there is "
                                      f"no promotion policy for model {waiting.model_name!r} any more")
        evaluation, found = model_policy.promotion.evaluation, ""
        if evaluation is not None:
            if self._data is None:
                raise OperationFailedError("promotion.evaluation needs a DataRegistry (composition)")
            data = self._data.get_data_version(evaluation.data_name, evaluation.data_version)
            if data is None:
                return None  # e.g. a pinned `name:version` that is not there yet
            found = f"{data.name}:{data.version}"
        latest = self._endpoints.latest_model(waiting.model_name)
        if latest is not None and version_order(latest.version) > version_order(waiting.version):
            return self._drop_waiting(waiting, f"{model} waited for its evaluation data {waiting.data}, but "
                                      f"{waiting.model_name}:{latest.version} is newer and went through the gate "
                                      "itself; the newest candidate wins")
        outcome = self._consider(waiting.model_name, waiting.version, waiting.event_id, model_policy)
        if outcome.code == SkipCode.EVALUATION_DATA_MISSING.value:
            return outcome  # the data went again meanwhile: the gate indexed it as waiting again
        reason = (f"{model} waited for its evaluation data {waiting.data}; "
                  + (f"{found} is there now" if found else "the policy no longer evaluates it")
                  + f" ({trigger}): {outcome.action.value}: {outcome.detail}")
        self._audit.record(AuditRecord(f"promotion.{PromotionAction.REGATED.value}", "regate", reason,
                                       waiting.event_id, {"model": model, "endpoint": model_policy.promotion.endpoint,
                                                          "data": found}, at=self._clock()))
        self._ledger.finish_waiting(waiting)  # after the gate's own durable step, so a crash before re-drives
        log.info("promotion event=%s model=%s re-gated: %s", waiting.event_id, model, reason)
        return PromotionOutcome(outcome.action, reason, outcome.code)

    def _drop_waiting(self, waiting: WaitingCandidate, reason: str) -> PromotionOutcome:
        """Give a waiting candidate up: audited as `skip:superseded` first, then dropped from the index."""
        model_policy = self._policy.model(waiting.model_name)
        endpoint = model_policy.promotion.endpoint if model_policy is not None else ""
        outcome = self._skip(waiting.event_id, waiting.model, endpoint, reason, code=SkipCode.SUPERSEDED.value)
        self._ledger.finish_waiting(waiting)
        return outcome

    def _consider(self, name: str, version: str, event_id: str, model_policy: ModelPolicy,
                  finished: RunFinished | None = None) -> PromotionOutcome:
        """Read the endpoint's row and decide (queue behind it, or gate and start); re-read and re-decide
        when a conditional write loses a race, and after `_DECIDE_ATTEMPTS` re-schedule instead of failing."""
        endpoint = model_policy.promotion.endpoint
        for _ in range(_DECIDE_ATTEMPTS):
            current = self._ledger.get_rollout(endpoint)
            if current is not None and current.active:
                outcome = self._queue(current, name, version, event_id)
            else:
                outcome = self._gate(current, name, version, event_id, model_policy.promotion, finished)
            if outcome is not None:
                return outcome
            log.info("promotion event=%s model=%s:%s: the rollout row of %s changed under us; deciding again",
                     event_id, name, version, endpoint)
        return self._reschedule(name, version, event_id, endpoint)

    def _gate(self, current: RolloutRecord | None, name: str, version: str, event_id: str,
              promotion: PromotionPolicy, finished: RunFinished | None = None) -> PromotionOutcome | None:
        """No rollout is running: gate the candidate; start it if it wins. None if the row changed meanwhile.

        With `promotion.evaluation`, the gate is a comparison job (`_evaluate`; `finished` is its end, when
        this is its RunCompleted); without it, the metrics each training run computed on its own holdout.
        """
        endpoint = promotion.endpoint
        model = f"{name}:{version}"
        earlier = self._ledger.promotion_outcome(promotion_key(endpoint, name, version))
        if earlier is not None and earlier[0] == Phase.ROLLED_BACK.value:
            return self._skip(event_id, model, endpoint, f"{model} was rolled out on {endpoint} before and rolled "
                              f"back ({earlier[1]}); register a new version to try again",
                              action=PromotionAction.DUPLICATE)
        info = self._endpoints.get_model(name, version)
        if info is None:
            return self._skip(event_id, model, endpoint, f"{model} is not in the workspace's model registry")
        candidate = ModelSnapshot.from_registry(info.name, info.version, info.tags, info.properties)
        view = self._endpoints.endpoint(endpoint)
        serving = view.serving() if view is not None else None
        champion = self._champion(serving.model) if serving is not None and serving.model is not None else None
        if promotion.evaluation is not None:
            skip = precheck(candidate, champion, promotion.rule())
            if skip is not None:
                return self._skip(event_id, model, endpoint, skip.reason, code=skip.code.value)
            return self._evaluate(_Contest(current, candidate, champion, serving.name if serving else "", event_id,
                                           promotion, promotion.evaluation), finished)
        decision = plan_promotion(candidate, champion, promotion.rule())
        if isinstance(decision, Skip):
            return self._skip(event_id, model, endpoint, _holdouts(decision.code, decision.reason),
                              code=decision.code.value)
        return self._on_promote(dataclasses.replace(decision, reason=_holdouts(decision.code, decision.reason)),
                                current, event_id, serving.name if serving else "")

    # -- the comparison on shared evaluation data (promotion.evaluation) ----------------------------------
    def _evaluate(self, contest: _Contest, finished: RunFinished | None) -> PromotionOutcome | None:
        """Decide from the comparison job of (candidate, champion, evaluation data): submit it if it is not
        there yet (a redelivery finds it under its deterministic name and submits nothing new), and judge its
        comparison.json once it has ended. A comparison against a champion that no longer serves is
        submitted again against the one that does."""
        if finished is not None and finished.tags.get(Tag.COMPARED_WITH.value, "") == contest.compared_with:
            return self._decide(contest, finished.run_id, finished.status)
        if finished is not None:
            log.info("promotion event=%s model=%s: comparison %s was against %s, but %s serves %s now; comparing "
                     "again", contest.event_id, contest.candidate.model, finished.run_id,
                     finished.tags.get(Tag.COMPARED_WITH.value) or "no champion", contest.promotion.endpoint,
                     contest.compared_with or "no model")
        submitted = self._submit_comparison(contest)
        if isinstance(submitted, PromotionOutcome):
            return submitted
        job, status = submitted
        if status.lower() in FINISHED_JOB_STATUSES:  # it ran already (a redelivery, or its event was lost)
            return self._decide(contest, job, status)
        reason = (f"comparison job {job} ({status}) scores {contest.candidate.model} "
                  + (f"against the champion {contest.compared_with}" if contest.compared_with else "alone (no "
                     "champion yet)") + f" on {contest.evaluation.data}; its RunCompleted decides")
        self._audit.record(AuditRecord(f"promotion.{PromotionAction.COMPARING.value}", "compare", reason,
                                       contest.event_id, {"model": contest.candidate.model, "job": job,
                                                          "endpoint": contest.promotion.endpoint,
                                                          "champion": contest.compared_with}, at=self._clock()))
        return PromotionOutcome(PromotionAction.COMPARING, reason)

    def _submit_comparison(self, contest: _Contest) -> tuple[str, str] | PromotionOutcome:
        """Submit (or find) the comparison job: (job name, status), or the coded skip when it cannot be.

        Azure ML's transient errors propagate unchanged (the platform retries the event).
        """
        evaluation, model = contest.evaluation, contest.candidate.model
        if self._jobs is None or self._data is None:
            raise OperationFailedError("promotion.evaluation needs a JobRunner and a DataRegistry (composition)")
        data = self._data.get_data_version(evaluation.data_name, evaluation.data_version)
        if data is None:
            # Indexed before the skip is audited: a version of the data gates it again (`on_evaluation_data`,
            # or `reconcile` if that event is lost); only the newest waiting version of the model is kept.
            candidate = contest.candidate
            self._ledger.track_waiting(candidate.name, candidate.version, evaluation.data_name, evaluation.data,
                                       contest.event_id)
            skipped = self._skip(contest.event_id, model, contest.promotion.endpoint,
                                 f"the evaluation data {evaluation.data} has no such version in the workspace; "
                                 f"upload a labelled drop of it: {model} waits, and is gated when a version lands",
                                 code=SkipCode.EVALUATION_DATA_MISSING.value)
            self._newest([w for w in self._ledger.waiting_candidates() if not w.unreadable
                          and (w.model_name, w.data_asset) == (candidate.name, evaluation.data_name)])
            return skipped
        submission = comparison_submission(model, contest.compared_with, data.name, data.version, data.asset_type,
                                           contest.promotion, evaluation, self._app_root, contest.event_id)
        # Indexed before the submission, dropped once decided: `reconcile` finds a comparison whose
        # RunCompleted never came (Event Grid gave up) or whose submission died half-way.
        self._ledger.track_comparison(submission.job_name, submission.tags)
        try:
            status = self._jobs.submit_pipeline(submission)
        except JobRejectedError as exc:
            outcome = self._judged(contest, submission.job_name, None,
                                   Skip(f"Azure ML refused the comparison job {submission.job_name}: {exc}",
                                        SkipCode.COMPARISON_FAILED))
            assert outcome is not None  # a skip never races
            return outcome
        return submission.job_name, status

    def _decide(self, contest: _Contest, job: str, status: str) -> PromotionOutcome | None:
        """Judge the ended comparison job `job` (a coded skip if it failed or wrote nothing usable)."""
        if status.lower() != "completed":
            return self._judged(contest, job, None, Skip(f"comparison job {job} ended {status}; "
                                                         f"{contest.candidate.model} is not promoted",
                                                         SkipCode.COMPARISON_FAILED))
        text = self._jobs.read_comparison(job) if self._jobs is not None else None
        if text is None:
            return self._judged(contest, job, None, Skip(f"comparison job {job} completed without a comparison.json",
                                                         SkipCode.COMPARISON_FAILED))
        try:
            comparison = parse_comparison(text)
        except InvalidComparisonError as exc:
            return self._judged(contest, job, None, Skip(str(exc), SkipCode.INVALID_COMPARISON), text)
        compared = comparison.champion.model if comparison.champion else ""
        if (comparison.challenger.model, compared) != (contest.candidate.model, contest.compared_with):
            return self._judged(contest, job, comparison, Skip(
                f"comparison job {job} compared {comparison.challenger.model} with {compared or 'nothing'}, not "
                f"{contest.candidate.model} with {contest.compared_with or 'nothing'}", SkipCode.INVALID_COMPARISON),
                text)
        decision = judge(comparison, contest.promotion.rule(), contest.evaluation.rule())
        return self._judged(contest, job, comparison, decision, text)

    def _judged(self, contest: _Contest, job: str, comparison: Comparison | None, decision: PromotionDecision,
                text: str = "") -> PromotionOutcome | None:
        """Record the decision (audit with the whole comparison; tags on the challenger), then act on it."""
        candidate, endpoint = contest.candidate, contest.promotion.endpoint
        interval = comparison.difference.text() if comparison is not None and comparison.difference else ""
        tags = {Tag.COMPARED_WITH.value: contest.compared_with, Tag.COMPARISON_JOB.value: job,
                Tag.INTERVAL.value: interval, Tag.DECISION.value: decision.code.value}
        self._endpoints.set_model_tags(candidate.name, candidate.version, tags)
        self._audit.record(AuditRecord(
            f"promotion.{PROMOTION_COMPARED}", decision.code.value, decision.reason, contest.event_id,
            {"model": candidate.model, "endpoint": endpoint, "champion": contest.compared_with, "job": job,
             "interval": interval, "comparison": _compact(text)}, at=self._clock()))
        outcome: PromotionOutcome | None
        if isinstance(decision, Skip):
            outcome = self._skip(contest.event_id, candidate.model, endpoint, decision.reason,
                                 code=decision.code.value)
        else:
            outcome = self._on_promote(decision, contest.current, contest.event_id, contest.champion_deployment)
        if outcome is not None:
            self._ledger.finish_comparison(job)
        return outcome

    def _on_promote(self, decision: Promote, current: RolloutRecord | None, event_id: str,
                    champion_deployment: str) -> PromotionOutcome | None:
        """The one place where "the gate said promote" becomes "start the rollout" (manual approval diverts
        here). `current` is the endpoint's row as read before deciding; None if the row changed meanwhile."""
        candidate = decision.candidate
        if self._approvals is not None:  # `promotion.approval: manual` holds it here (`shared.services.approval`)
            held = self._approvals.check(candidate.name, candidate.version, decision.endpoint, event_id,
                                         decision.reason)
            if held is not None:
                return PromotionOutcome(held.action, held.detail)
        outcome = self._start(current, candidate.name, candidate.version, event_id, decision.reason,
                              champion_deployment, decision.champion.model if decision.champion else "",
                              decision.endpoint)
        if outcome is not None and self._approvals is not None:  # its rollout row protects it now
            self._approvals.handed_over(candidate.name, candidate.version, decision.endpoint)
        return outcome

    def _champion(self, model: tuple[str, str]) -> ModelSnapshot:
        """The serving model as the gate sees it (just its name and version if the registry lost it)."""
        info = self._endpoints.get_model(*model)
        if info is None:
            return ModelSnapshot(name=model[0], version=model[1])
        return ModelSnapshot.from_registry(info.name, info.version, info.tags, info.properties)

    def _skip(self, event_id: str, model: str, endpoint: str, reason: str, *, code: str = "",
              action: PromotionAction = PromotionAction.SKIPPED) -> PromotionOutcome:
        annotate({Attr.DECISION: "skip", Attr.REASON_CODE: code or None, Attr.ENDPOINT: endpoint or None})
        self._audit.record(AuditRecord(f"promotion.{PromotionAction.SKIPPED.value}",
                                       f"skip{':' + code if code else ''}", reason, event_id,
                                       {"model": model, "endpoint": endpoint}, at=self._clock()))
        return PromotionOutcome(action, reason, code)

    def _queue(self, current: RolloutRecord, name: str, version: str, event_id: str) -> PromotionOutcome | None:
        """Queue the candidate behind the running rollout (only the newest version is kept); None on a lost race.

        A candidate whose own rollout is running is a duplicate, unless that rollout has not taken a
        step yet: then its start may have died before the first step was queued, so it is re-sent.
        """
        model = f"{name}:{version}"
        if current.rollout_id == promotion_key(current.endpoint, name, version):
            if current.due_at is None:
                self._announce(current)
                return PromotionOutcome(PromotionAction.STARTED, f"rollout of {model} on {current.endpoint} "
                                        "had not taken its first step; re-sent it")
            return PromotionOutcome(PromotionAction.DUPLICATE, f"{model} is already rolling out on "
                                    f"{current.endpoint} ({current.state})")
        if (current.queued_name, current.queued_version) == (name, version):
            return PromotionOutcome(PromotionAction.DUPLICATE, f"{model} is already queued behind "
                                    f"{current.candidate}")
        if current.queued_name == name and version_order(current.queued_version) > version_order(version):
            reason = (f"{model} is older than the queued {name}:{current.queued_version}; the newest queued "
                      "candidate wins")
            return self._skip(event_id, model, current.endpoint, reason, code=SkipCode.SUPERSEDED.value)
        replaced = f"{current.queued_name}:{current.queued_version}" if current.queued_name else ""
        updated = self._ledger.update_rollout(dataclasses.replace(
            current, queued_name=name, queued_version=version, queued_event=event_id))
        if updated is None:
            return None
        reason = (f"rollout of {current.candidate} on {current.endpoint} is in progress ({current.state}); "
                  f"{model} goes through the gate when it ends"
                  + (f" (supersedes the queued {replaced})" if replaced else ""))
        self._audit.record(AuditRecord(f"promotion.{PromotionAction.QUEUED.value}", "queue", reason,
                                       event_id, {"model": model, "endpoint": current.endpoint}, at=self._clock()))
        return PromotionOutcome(PromotionAction.QUEUED, reason)

    def _start(self, current: RolloutRecord | None, name: str, version: str, event_id: str, reason: str,
               champion_deployment: str, champion_model: str, endpoint: str) -> PromotionOutcome | None:
        """Take the endpoint's row as read in `current` (insert, or a conditional write over a finished
        rollout), then announce the rollout; None if another instance wrote the row first."""
        now = self._clock()
        fresh = RolloutRecord(
            endpoint=endpoint, rollout_id=promotion_key(endpoint, name, version),
            seq=(current.seq + 1) if current else 1,
            state=Phase.ENDPOINT.value, candidate_name=name, candidate_version=version,
            deployment=deployment_name(name, version), champion_deployment=champion_deployment,
            champion_model=champion_model, step=-1, due_at=None, started_at=now, reason=reason,
            queued_name="", queued_version="", queued_event="", event_id=event_id, phase_since=now, attempts=0,
            failure="", traceparent=current_traceparent(),
        )
        annotate({Attr.DECISION: "promote", Attr.ENDPOINT: endpoint, Attr.ROLLOUT: fresh.rollout_id})
        if current is None:
            started = self._ledger.create_rollout(fresh)
        else:
            # A candidate queued behind the finished rollout stays queued, unless it is this one.
            keep = (current.queued_name, current.queued_version) != (name, version)
            started = self._ledger.update_rollout(dataclasses.replace(
                fresh, row=current.row, queued_name=current.queued_name if keep else "",
                queued_version=current.queued_version if keep else "",
                queued_event=current.queued_event if keep else ""))
        if started is None:
            return None
        self._announce(started)
        return PromotionOutcome(PromotionAction.STARTED, reason)

    def _announce(self, started: RolloutRecord) -> None:
        """What follows taking the row: remember the promotion, audit it, queue the first step.

        Idempotent, so a redelivery (or the reconciler) that finds the rollout without progress repeats
        it: the promotion row and the audit record are rewritten (same keys and time), and a second
        first-step message is harmless (the step is `seq`-keyed, so one of the two is stale).
        """
        model = started.candidate
        self._ledger.record_promotion(started.rollout_id, started.endpoint, model, PromotionAction.STARTED,
                                      started.reason)
        self._audit.record(AuditRecord(
            f"promotion.{PromotionAction.STARTED.value}", "promote", started.reason, started.event_id,
            {"model": model, "endpoint": started.endpoint, "deployment": started.deployment,
             "champion": started.champion_model}, at=started.started_at or self._clock()))
        self._schedule(started, 0)
        log.info("rollout event=%s rollout=%s started: %s on %s (%s)", started.event_id, started.rollout_id, model,
                 started.endpoint, started.reason)

    def _reschedule(self, name: str, version: str, event_id: str, endpoint: str) -> PromotionOutcome:
        """The row kept changing (a burst of racing deliveries): look at the candidate again later.

        Raises ClaimInProgressError (the platform retries the event) only if no retry queue was given.
        """
        model = f"{name}:{version}"
        if self._retries is None:
            raise ClaimInProgressError(f"rollout row of {endpoint} kept changing; retry the event")
        self._retries.send(CandidateRetry(name, version, event_id), RETRY_DELAY_SECONDS)
        reason = (f"the rollout row of {endpoint} kept changing while {model} was decided; deciding again in "
                  f"{RETRY_DELAY_SECONDS:.0f} s")
        log.warning("promotion event=%s model=%s: %s", event_id, model, reason)
        return PromotionOutcome(PromotionAction.RESCHEDULED, reason)

    # -- a rollout step is due -------------------------------------------------------------------------
    def on_tick(self, tick: RolloutTick, dequeue_count: int) -> TickOutcome:
        """Take the step `tick` names, if it is still the current one; at most one instance takes it.

        Raises InvalidEventError if no model in the policy promotes onto the endpoint any more, and
        OperationFailedError if Azure ML cannot be read (the platform retries the message).
        """
        annotate({Attr.ENDPOINT: tick.endpoint, Attr.ROLLOUT: tick.rollout_id})
        record = self._ledger.get_rollout(tick.endpoint)
        if record is None or record.rollout_id != tick.rollout_id:
            if record is not None and dequeue_count > 1 and record.active and record.due_at is None:
                # This message's earlier run may have handed over to the queued candidate and died before
                # that rollout's first step was queued: send it (a duplicate first step is harmless).
                self._announce(record)
                return TickOutcome(TickAction.RESUMED, f"first step of {record.candidate} re-sent after a failed "
                                   "delivery")
            return TickOutcome(TickAction.STALE, f"rollout {tick.rollout_id} is not {tick.endpoint}'s current rollout")
        if tick.seq != record.seq:
            return self._behind(record, tick, dequeue_count)
        if not record.active:
            return TickOutcome(TickAction.STALE, f"rollout is over ({record.state})")
        remaining = self._remaining(record)
        if remaining > 1:
            self._schedule(record, remaining)
            return TickOutcome(TickAction.WAITING, f"step {record.seq} is due in {remaining:.0f} s")
        return self._step(record, self._promotion_for(record))

    def _behind(self, record: RolloutRecord, tick: RolloutTick, dequeue_count: int) -> TickOutcome:
        """A tick for an older step: stale, unless it is the redelivery of the step just taken."""
        if dequeue_count > 1 and tick.seq == record.seq - 1:
            # This message's earlier run wrote the next state but may have died before what follows it:
            # sending the next tick, or (for the last step) the outcome's records and the hand-over to the
            # queued candidate. All of it is idempotent, so it is simply done again.
            if record.active:
                self._schedule(record, self._remaining(record))
                return TickOutcome(TickAction.RESENT, f"step {record.seq} re-scheduled after a failed delivery")
            self._audit_transition(record)
            self._finished(record)
            return TickOutcome(TickAction.RESUMED, f"end of the rollout ({record.state}) re-done after a failed "
                               "delivery")
        return TickOutcome(TickAction.STALE, f"tick {tick.seq} is behind step {record.seq}")

    def _step(self, record: RolloutRecord, policy: PromotionPolicy) -> TickOutcome:
        now = self._clock()
        view = self._endpoints.endpoint(record.endpoint)
        transition = decide(record, view, policy, now)
        attempts = 0
        if isinstance(transition.action, SetTraffic):
            annotate({Attr.TRAFFIC: transition.action.traffic.get(record.deployment, 0)})
        try:
            if transition.action is not None:
                self._execute(transition.action, record, policy)
        except SmokeTestFailedError as exc:
            transition = Transition(Phase.ROLLBACK, f"rolling back: {exc}", failure=str(exc))
        except OperationFailedError as exc:
            transition, attempts = self._after_error(record, transition, exc, policy)
        if transition.failure and record.phase is Phase.PROVISIONING:
            transition = dataclasses.replace(transition, failure=f"{transition.failure}{self._logs_tail(record)}")
        return self._commit(record, transition, attempts, now)

    def _after_error(self, record: RolloutRecord, transition: Transition, exc: OperationFailedError,
                     policy: PromotionPolicy) -> tuple[Transition, int]:
        """A failed action: try the step again with backoff; give up (roll back) after MAX_STEP_ATTEMPTS.

        A rollback itself never gives up: leaving traffic on a failed candidate is worse than retrying.
        """
        attempts = record.attempts + 1
        what = type(transition.action).__name__
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        phase = record.phase
        if phase in ROLLBACK_PHASES or attempts < MAX_STEP_ATTEMPTS:
            delay = min(MAX_BACKOFF_SECONDS, policy.poll_interval_seconds * 2 ** attempts)
            log.warning("rollout event=%s rollout=%s: %s failed (attempt %d): %s; retrying in %.0f s",
                        record.event_id, record.rollout_id, what, attempts, message, delay)
            return Transition(phase, f"{what} failed (attempt {attempts}): {message}; retrying",
                              delay_seconds=delay), attempts
        reason = f"{what} failed {attempts} times: {message}"
        return Transition(Phase.ROLLBACK, f"rolling back: {reason}", failure=reason), 0

    def _commit(self, record: RolloutRecord, transition: Transition, attempts: int, now: datetime) -> TickOutcome:
        """Write the next state with the ETag condition of `record`; the loser of a race does nothing more."""
        moved = transition.phase is not record.phase
        updated = self._ledger.update_rollout(dataclasses.replace(
            record, seq=record.seq + 1, state=transition.phase.value, reason=transition.reason,
            due_at=now + timedelta(seconds=transition.delay_seconds), attempts=attempts,
            phase_since=now if moved else record.phase_since,
            step=record.step if transition.step is None else transition.step,
            failure=transition.failure or record.failure))
        if updated is None:
            return TickOutcome(TickAction.LOST_RACE, f"step {record.seq} was taken by another instance")
        log.info("rollout event=%s rollout=%s step=%d %s -> %s: %s", record.event_id, record.rollout_id, record.seq,
                 record.state, updated.state, transition.reason)
        annotate({Attr.ROLLOUT_PHASE: updated.state, Attr.MODEL: updated.candidate_name,
                  Attr.MODEL_VERSION: updated.candidate_version})
        if moved:
            self._audit_transition(updated)
        if updated.active:
            self._schedule(updated, transition.delay_seconds)
            return TickOutcome(TickAction.ADVANCED, transition.reason)
        self._finished(updated)
        return TickOutcome(TickAction.FINISHED, f"{updated.state}: {updated.failure or transition.reason}")

    def _audit_transition(self, record: RolloutRecord) -> None:
        """Audit the phase `record` entered at its last step, from the row alone, so a retry rewrites the
        same record (a phase entered again later, e.g. the next canary step, is another step: another record)."""
        self._audit.record(AuditRecord(f"rollout.{record.state}", f"{record.state} (step {record.seq - 1})",
                                       record.reason, record.event_id, self._assets(record),
                                       at=record.phase_since or self._clock()))

    def _finished(self, record: RolloutRecord) -> None:
        """Remember the outcome, then put the queued candidate (if any) through the gate."""
        outcome = record.phase
        reason = record.failure if outcome is Phase.ROLLED_BACK else record.reason
        self._ledger.record_promotion(record.rollout_id, record.endpoint, record.candidate, outcome, reason)
        if not (record.queued_name and record.queued_version):
            return
        policy = self._policy.model(record.queued_name)
        if policy is not None:
            result = self._consider(record.queued_name, record.queued_version, record.queued_event or record.event_id,
                                    policy)
            log.info("rollout event=%s: queued candidate %s:%s -> %s: %s", record.queued_event, record.queued_name,
                     record.queued_version, result.action.value, result.detail)
        latest = self._ledger.get_rollout(record.endpoint)
        if latest is not None and not latest.active and latest.queued_name:
            self._ledger.update_rollout(dataclasses.replace(latest, queued_name="", queued_version="",
                                                            queued_event=""))

    # -- the reconciler ------------------------------------------------------------------------------
    def reconcile(self, now: datetime) -> list[TickOutcome]:
        """Re-drive every rollout that stalled, idempotently; each re-drive is audited as `rollout.redriven`.

        The rollout partition holds one row per endpoint, so it is the index of open work. Stalled is:
        an active rollout whose step is overdue by `STALL_POLL_INTERVALS` poll intervals (at least
        `STALL_FLOOR`: its message was poisoned or lost; a waiting rollout has a future `due_at`), or
        whose first step was never queued; or a finished rollout whose outcome was not recorded or
        whose queued candidate was not handed over. A failure on one endpoint is logged and the others
        go on; the next pass retries it.
        """
        outcomes, failure = self._reconcile_comparisons(now)
        waiting, waiting_failure = self._reconcile_waiting()
        outcomes, failure = outcomes + waiting, failure or waiting_failure
        for record in self._ledger.rollouts():
            try:
                with continued(record.traceparent):  # what it re-sends continues the rollout's own trace
                    outcome = self._redrive(record, now)
            except Exception as exc:  # one endpoint's failure must not stop the others' re-drive
                log.warning("rollout event=%s rollout=%s: re-drive on %s failed, next pass retries: %s",
                            record.event_id, record.rollout_id, record.endpoint, exc)
                failure = failure or exc
                continue
            if outcome is not None:
                self._audit.record(AuditRecord(f"rollout.{TickAction.REDRIVEN.value}",
                                               f"redrive {record.state} (step {record.seq})", outcome.detail,
                                               record.event_id, self._assets(record), at=now))
                log.info("rollout event=%s rollout=%s redriven: %s", record.event_id, record.rollout_id,
                         outcome.detail)
                outcomes.append(outcome)
        if failure is not None and not isinstance(failure, TransientError):
            raise failure  # a bug, after the other endpoints were re-driven: surface it (the timer fails)
        return outcomes

    def _reconcile_comparisons(self, now: datetime) -> tuple[list[TickOutcome], Exception | None]:
        """Re-drive comparisons open longer than the stall patience: an ended job whose RunCompleted never
        came is decided as its event would have; a job that was never created is submitted again (through
        the gate, from the candidate); a running one is left alone. Each re-drive is `promotion.redriven`.
        A stale entry that cannot be read is not re-driven: it is returned as the failure (a ValueError)."""
        outcomes: list[TickOutcome] = []
        failure: Exception | None = None
        for work in self._ledger.open_comparisons():
            job = work.job
            if work.since is not None and now - work.since <= self._stall_after:
                continue
            try:
                if work.tags is None or work.unreadable:
                    raise ValueError(f"open comparison entry {job} cannot be read: {work.unreadable}")
                outcome = self._redrive_comparison(job, work.tags)
            except Exception as exc:  # one comparison's failure must not stop the others' re-drive
                log.warning("promotion event=reconcile job=%s: re-drive failed, next pass retries: %s", job, exc)
                failure = failure or exc
                continue
            if outcome is not None:
                self._audit.record(AuditRecord(f"promotion.{TickAction.REDRIVEN.value}", "redrive comparison",
                                               outcome.detail, f"reconcile:{job}", {"job": job}, at=now))
                outcomes.append(outcome)
        return outcomes, failure

    def _reconcile_waiting(self) -> tuple[list[TickOutcome], Exception | None]:
        """Gate again the candidates waiting for evaluation data that has a version now: the DataVersionRegistered
        that should have woken them was lost (or its handler died before the entry was finished). Audited by
        `_wake` (`promotion.regated`). An entry that cannot be read is returned as the failure (a ValueError)."""
        outcomes: list[TickOutcome] = []
        failure: Exception | None = None
        readable = []
        for waiting in self._ledger.waiting_candidates():
            if waiting.unreadable:
                failure = failure or ValueError(f"waiting candidate entry {waiting.key} cannot be read: "
                                                f"{waiting.unreadable}")
            else:
                readable.append(waiting)
        for waiting in self._newest(readable):
            try:
                outcome = self._wake(waiting, "found by the reconciler: no DataVersionRegistered woke it")
            except Exception as exc:  # one candidate's failure must not stop the others' re-drive
                log.warning("promotion event=%s model=%s: re-gate failed, next pass retries: %s", waiting.event_id,
                            waiting.model, exc)
                failure = failure or exc
                continue
            if outcome is not None:
                outcomes.append(TickOutcome(TickAction.REDRIVEN, outcome.detail))
        return outcomes, failure

    def _redrive_comparison(self, job: str, tags: Mapping[str, str]) -> TickOutcome | None:
        """One stale comparison: decide it, submit it again, or leave it running. None if nothing was done."""
        status = self._jobs.job_status(job) if self._jobs is not None else None
        event_id = tags.get(Tag.TRIGGER_EVENT.value) or f"reconcile:{job}"
        if status is not None and status.lower() not in FINISHED_JOB_STATUSES:
            return None  # still running: its RunCompleted will come
        if status is not None:
            result = self.on_comparison_finished(RunFinished(job, status, COMPARE_EXPERIMENT, tags), event_id)
            return TickOutcome(TickAction.REDRIVEN, f"comparison {job} ended {status} and its RunCompleted never "
                               f"came: {result.action.value}: {result.detail}")
        name, _, version = tags.get(Tag.MODEL.value, "").rpartition(":")
        policy = self._policy.model(name) if name else None
        self._ledger.finish_comparison(job)  # a new submission indexes its own job
        if policy is None or not version:
            return TickOutcome(TickAction.REDRIVEN, f"comparison {job} was never submitted and its model has no "
                               "promotion policy any more; dropped")
        result = self._consider(name, version, event_id, policy)
        return TickOutcome(TickAction.REDRIVEN, f"comparison {job} was never submitted: {result.action.value}: "
                           f"{result.detail}")

    def _redrive(self, record: RolloutRecord, now: datetime) -> TickOutcome | None:
        """Re-drive one endpoint's row if it is stuck; None if it is moving, waiting, or done."""
        if record.state not in _KNOWN_PHASES:
            log.warning("rollout event=%s rollout=%s on %s has unknown state %r; not re-driven", record.event_id,
                        record.rollout_id, record.endpoint, record.state)
            return None
        if not record.active:
            earlier = self._ledger.promotion_outcome(record.rollout_id)
            if record.queued_name or earlier is None or earlier[0] != record.state:
                self._finished(record)
                return TickOutcome(TickAction.REDRIVEN, f"end of {record.candidate}'s rollout ({record.state}) "
                                   "recorded again and any queued candidate handed over")
            return None
        policy = next((m.promotion for m in self._policy.models if m.promotion.endpoint == record.endpoint), None)
        if policy is None:
            log.warning("rollout event=%s rollout=%s: no model in the policy promotes onto %s any more; its "
                        "steps are rejected, so it is not re-driven", record.event_id, record.rollout_id,
                        record.endpoint)
            return None
        since = record.due_at or record.started_at
        patience = max(self._stall_after, timedelta(seconds=policy.poll_interval_seconds * STALL_POLL_INTERVALS))
        if since is not None and now - since <= patience:
            return None
        if record.due_at is None:
            self._announce(record)
            return TickOutcome(TickAction.REDRIVEN, f"first step of {record.candidate} was never queued; sent it")
        self._schedule(record, 0)
        return TickOutcome(TickAction.REDRIVEN, f"step {record.seq} ({record.state}) of {record.candidate} was due "
                           f"at {record.due_at.isoformat()} and never taken; re-sent it")

    # -- actions ----------------------------------------------------------------------------------
    def _execute(self, action: RolloutAction, record: RolloutRecord, policy: PromotionPolicy) -> None:
        """Perform one action; raises OperationFailedError (retried) or SmokeTestFailedError (rolls back)."""
        if isinstance(action, CreateEndpoint):
            self._endpoints.begin_create_endpoint(action.endpoint, {Tag.MANAGED.value: "true"})
        elif isinstance(action, CreateDeployment):
            self._endpoints.begin_create_deployment(self._deployment_spec(record, policy))
        elif isinstance(action, SmokeTest):
            self._smoke_test(action, policy)
        elif isinstance(action, SetTraffic):
            self._endpoints.begin_set_traffic(action.endpoint, action.traffic)
        elif isinstance(action, DeleteDeployment):
            self._endpoints.begin_delete_deployment(action.endpoint, action.deployment)

    def _deployment_spec(self, record: RolloutRecord, policy: PromotionPolicy) -> DeploymentSpec:
        info = self._endpoints.get_model(record.candidate_name, record.candidate_version)
        lineage = {k: v for k, v in (info.tags if info else {}).items() if k in LINEAGE_TAGS}
        spec = policy.deployment
        return DeploymentSpec(
            endpoint=record.endpoint, name=record.deployment, model_name=record.candidate_name,
            model_version=record.candidate_version, instance_type=spec.instance_type,
            instance_count=spec.instance_count, environment=spec.environment,
            code_path=str(self._app_root / spec.code) if spec.code else None, scoring_script=spec.scoring_script,
            tags={**lineage, Tag.MODEL.value: record.candidate, Tag.ROLLOUT.value: record.rollout_id,
                  Tag.EVENT.value: record.event_id},
        )

    def _smoke_test(self, action: SmokeTest, policy: PromotionPolicy) -> None:
        """Score the sample request on the candidate alone.

        A request that fails or times out raises OperationFailedError: the step is retried with backoff
        and the rollout rolls back after `MAX_STEP_ATTEMPTS`, so one lost or throttled request (a 429, a
        503 while the deployment warms up) does not roll back a good candidate. A reply that is not what
        the policy expects raises SmokeTestFailedError: the candidate answered, wrongly; it rolls back.
        """
        smoke = policy.smoke_test
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        try:
            reply = pool.submit(self._endpoints.score, action.endpoint, action.deployment, smoke.request).result(
                timeout=smoke.timeout_seconds)
        except concurrent.futures.TimeoutError as exc:
            raise OperationFailedError(f"smoke test: {action.deployment} did not answer within "
                                       f"{smoke.timeout_seconds:.0f} s") from exc
        except OperationFailedError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise OperationFailedError(f"smoke test: {action.deployment} failed the sample request: {first}") from exc
        except ValueError as exc:
            raise SmokeTestFailedError(f"smoke test: {action.deployment} failed the sample request: {exc}") from exc
        finally:
            pool.shutdown(wait=False)
        missing = [k for k in smoke.expect_keys if not isinstance(reply, dict) or k not in reply]
        if missing:
            raise SmokeTestFailedError(f"smoke test: {action.deployment}'s reply lacks {', '.join(missing)}: "
                                       f"{str(reply)[:200]}")

    def _logs_tail(self, record: RolloutRecord) -> str:
        try:
            logs = self._endpoints.deployment_logs(record.endpoint, record.deployment, lines=5).strip()
        except OperationFailedError as exc:
            return f" (deployment logs unavailable: {type(exc.__cause__ or exc).__name__})"
        return f"; last log lines: {logs[-600:]}" if logs else ""

    # -- helpers ------------------------------------------------------------------------------------
    def _promotion_for(self, record: RolloutRecord) -> PromotionPolicy:
        for model in self._policy.models:
            if model.promotion.endpoint == record.endpoint:
                return model.promotion
        raise InvalidEventError(f"no model in the policy promotes onto endpoint {record.endpoint!r} any more; "
                                f"rollout {record.rollout_id} of {record.candidate} cannot continue")

    def _remaining(self, record: RolloutRecord) -> float:
        if record.due_at is None:
            return 0.0
        return max(0.0, (record.due_at - self._clock()).total_seconds())

    def _schedule(self, record: RolloutRecord, delay: float) -> None:
        self._ticks.send(RolloutTick(record.endpoint, record.rollout_id, record.seq, record.event_id), delay)

    @staticmethod
    def _assets(record: RolloutRecord) -> dict[str, str]:
        return {"model": record.candidate, "endpoint": record.endpoint, "deployment": record.deployment,
                "champion": record.champion_model}

"""A decaying champion, and changed training code, trigger retraining: the service behind two triggers.

- A new version of an evaluation dataset (`promotion.evaluation.data`; `functions/retrain.py`'s
  DataVersionRegistered trigger routes it here too) or the rescore timer (`EVERGREEN_RESCORE_SCHEDULE`,
  `functions/monitor.py`) submits a compare job (`ml/compare.yml`, built by the Promoter's
  `comparison_submission`) that scores the endpoint's champion *alone* on the newest evaluation
  version. Its name is deterministic from (champion, data version) and the job is tagged
  `evergreen.comparison=rescore`, so a redelivery or the next timer tick submits nothing new.
- Its RunCompleted (`on_rescore_finished`) reads `comparison.json`, asks `shared.domain.decay.judge_decay`,
  records the score in the ledger (`Ledger.champion_scores(endpoint)`: the champion's metric over
  time) and audits it (`champion.healthy|degraded`). Degraded: publish `Evergreen.ChampionDegraded`
  and retrain the model's training dataset on its newest version through the Retrainer's own
  decision, as a *rerun* keyed by the degradation (so it retrains once per degradation, and an
  active run is not doubled).
- The timer also compares the champion's `evergreen.code_sha256` with the deployed `ml/src` code hash;
  when they differ, the newest training data is retrained once per (dataset, version, code hash).

Ports only (Endpoints, JobRunner, DataRegistry, EventPublisher, AuditLog, the ledger) plus the
Retrainer service; errors of the ports propagate (transient: the platform retries the event/timer).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from shared.config.policy import ModelPolicy, Policy
from shared.domain.audit import AuditRecord
from shared.domain.comparison import InvalidComparisonError, parse_comparison
from shared.domain.decay import (
    ChampionDegraded,
    ChampionScore,
    Degraded,
    Healthy,
    code_trigger,
    decimal_of,
    degradation_trigger,
    judge_decay,
    plan_code_retrain,
    rescore_job_name,
)
from shared.domain.events import DataVersionRegistered
from shared.domain.records import utcnow
from shared.domain.retrain import RunFinished
from shared.domain.vocabulary import FINISHED_JOB_STATUSES, ComparisonPurpose, MonitorAction, Tag, metric_tag
from shared.domain.workspace import ModelInfo
from shared.errors import InvalidEventError
from shared.ports import AuditLog, Clock, DataRegistry, Endpoints, EventPublisher, JobRunner
from shared.services.ledger import Ledger
from shared.services.promotion import comparison_submission
from shared.services.retrain import Retrainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorOutcome:
    """What one look at a champion did (audit kind `champion.<action>`)."""

    action: MonitorAction
    detail: str
    job_name: str = ""


class ChampionMonitor:
    """Re-scores champions on new evaluation data and retrains when they decay or the training code changed."""

    def __init__(self, *, policy: Policy, endpoints: Endpoints, jobs: JobRunner, data: DataRegistry, ledger: Ledger,
                 audit: AuditLog, publisher: EventPublisher, retrainer: Retrainer, app_root: Path,
                 code_hash: Callable[[], str], clock: Clock = utcnow) -> None:
        """`code_hash`: the deployed training code's hash (`ml/src`, as the pipeline's steps compute it)."""
        self._policy = policy
        self._endpoints = endpoints
        self._jobs = jobs
        self._data = data
        self._ledger = ledger
        self._audit = audit
        self._publisher = publisher
        self._retrainer = retrainer
        self._app_root = app_root
        self._code_hash = code_hash
        self._clock = clock

    # -- triggers --------------------------------------------------------------------------------------------
    def evaluates(self, event: DataVersionRegistered) -> bool:
        """Whether `event` is a version of some model's evaluation dataset (the edge routes it here then)."""
        return bool(self._evaluated_by(event))

    def on_data_version(self, event: DataVersionRegistered, event_id: str) -> MonitorOutcome:
        """A new evaluation data version: re-score every champion evaluated on it (pinned versions excepted)."""
        outcomes = [self._rescore(model, event.asset_name, event.version, event.asset_type, event_id)
                    for model in self._evaluated_by(event)]
        if not outcomes:
            return MonitorOutcome(MonitorAction.SKIPPED, f"{event.asset_name} is no model's evaluation data")
        return _summary(outcomes)

    def on_schedule(self, event_id: str) -> list[MonitorOutcome]:
        """The rescore timer: re-score each champion on its newest evaluation version; retrain on changed code."""
        outcomes = []
        for model in self._policy.models:
            evaluation = model.promotion.evaluation
            if evaluation is not None:
                data = self._data.get_data_version(evaluation.data_name, evaluation.data_version)
                if data is None:
                    outcomes.append(MonitorOutcome(MonitorAction.SKIPPED, f"evaluation data {evaluation.data} of "
                                                   f"{model.name} has no version in the workspace"))
                else:
                    outcomes.append(self._rescore(model, data.name, data.version, data.asset_type, event_id))
            outcomes.extend(self._code_check(model, event_id))
        return outcomes

    def _evaluated_by(self, event: DataVersionRegistered) -> list[ModelPolicy]:
        return [m for m in self._policy.models
                if m.promotion.evaluation is not None and m.promotion.evaluation.data_version is None
                and m.promotion.evaluation.data_name in (event.asset_name, event.dataset)]

    # -- re-scoring ----------------------------------------------------------------------------------------------
    def _rescore(self, model: ModelPolicy, asset: str, version: str, asset_type: str, event_id: str) -> MonitorOutcome:
        """Submit the job scoring the champion alone on (asset, version); once per (champion, data version).

        A job found ended under its name (a redelivery, or a tick after its RunCompleted was lost) is judged
        here, as its event would have been. Azure ML's transient errors propagate (the platform retries).
        """
        promotion, evaluation = model.promotion, model.promotion.evaluation
        assert evaluation is not None
        champion = self._champion(promotion.endpoint)
        if champion is None:
            return MonitorOutcome(MonitorAction.SKIPPED, f"{promotion.endpoint} serves no model of {model.name}; "
                                  "nothing to re-score")
        submission = comparison_submission(champion, "", asset, version, asset_type, promotion, evaluation,
                                           self._app_root, event_id)
        job = rescore_job_name(champion, asset, version)
        submission = dataclasses.replace(submission, job_name=job, tags={
            **submission.tags, Tag.COMPARISON.value: ComparisonPurpose.RESCORE.value})
        status = self._jobs.submit_pipeline(submission)
        # It ran already (its RunCompleted may have been lost): judged here, if it is the policy's own model.
        if status.lower() in FINISHED_JOB_STATUSES and champion.partition(":")[0] == model.name:
            return self.on_rescore_finished(RunFinished(job, status, submission.experiment, dict(submission.tags)),
                                            event_id)
        reason = f"re-scoring the champion {champion} alone on {asset}:{version} (job {job}, {status})"
        self._record(MonitorAction.RESCORE_SUBMITTED, reason, event_id,
                     {"model": champion, "endpoint": promotion.endpoint, "data": f"{asset}:{version}", "job": job})
        return MonitorOutcome(MonitorAction.RESCORE_SUBMITTED, reason, job)

    def on_rescore_finished(self, finished: RunFinished, event_id: str) -> MonitorOutcome:
        """A re-score job ended: record the champion's score; if it decayed, announce it and retrain once.

        Raises InvalidEventError if the run's tags do not name a re-score of a model in the policy.
        """
        tags = finished.tags
        champion, endpoint = tags.get(Tag.MODEL.value, ""), tags.get(Tag.ENDPOINT.value, "")
        asset, version = tags.get(Tag.DATA_ASSET.value, ""), tags.get(Tag.DATA_VERSION.value, "")
        if tags.get(Tag.COMPARISON.value) != ComparisonPurpose.RESCORE.value:
            return MonitorOutcome(MonitorAction.SKIPPED, f"run {finished.run_id} is not a champion re-score")
        if finished.run_id != rescore_job_name(champion, asset, version):
            raise InvalidEventError(f"run {finished.run_id}: its tags name {champion} on {asset}:{version}, whose "
                                    "re-score job has another name")
        model = self._policy.model(champion.partition(":")[0])
        if model is None or model.promotion.endpoint != endpoint or model.promotion.evaluation is None:
            raise InvalidEventError(f"run {finished.run_id}: no model in the policy re-scores {champion} on {endpoint}")
        if not finished.ended:
            return MonitorOutcome(MonitorAction.SKIPPED, f"re-score {finished.run_id} is {finished.status}")
        assets = {"model": champion, "endpoint": endpoint, "data": f"{asset}:{version}", "job": finished.run_id}
        if not finished.succeeded:
            reason = f"re-score job {finished.run_id} ended {finished.status}; the champion was not judged"
            self._record(MonitorAction.SKIPPED, reason, event_id, assets)
            return MonitorOutcome(MonitorAction.SKIPPED, reason, finished.run_id)
        return self._judge(model, champion, asset, version, finished.run_id, event_id, assets)

    def _judge(self, model: ModelPolicy, champion: str, asset: str, version: str, job: str, event_id: str,
               assets: dict[str, str]) -> MonitorOutcome:
        promotion = model.promotion
        evaluation = promotion.evaluation
        assert evaluation is not None
        value = self._score(job, promotion.metric)
        name, _, model_version = champion.partition(":")
        info = self._endpoints.get_model(name, model_version)
        at_promotion = _metric_of(info, promotion.metric)
        threshold = decimal_of(promotion.threshold) if promotion.threshold is not None else None
        decision = judge_decay(value, at_promotion=at_promotion, metric=promotion.metric,
                               direction=promotion.direction, threshold=threshold,
                               max_decay=Decimal(str(evaluation.max_decay)))
        degraded = isinstance(decision, Degraded)
        self._ledger.record_champion_score(ChampionScore(
            endpoint=promotion.endpoint, model=champion, data_asset=asset, data_version=version,
            metric=promotion.metric, value="" if value is None else str(value), at=self._clock(), job_name=job,
            degraded=degraded, reason=decision.reason))
        if not isinstance(decision, Degraded):
            action = MonitorAction.HEALTHY if isinstance(decision, Healthy) else MonitorAction.SKIPPED
            self._record(action, decision.reason, event_id, assets)
            return MonitorOutcome(action, decision.reason, job)
        self._record(MonitorAction.DEGRADED, f"{decision.code}: {decision.reason}", event_id, assets)
        self._publisher.champion_degraded(ChampionDegraded(
            endpoint=promotion.endpoint, model=champion, metric=promotion.metric, value=str(value),
            at_promotion="" if at_promotion is None else str(at_promotion),
            threshold="" if threshold is None else str(threshold), code=decision.code, reason=decision.reason,
            data_asset=asset, data_version=version, job_name=job))
        if self._champion(promotion.endpoint) != champion:
            return MonitorOutcome(MonitorAction.DEGRADED, f"{decision.reason}; {champion} no longer serves on "
                                  f"{promotion.endpoint}, so nothing is retrained", job)
        retrained = self._retrain(model, lambda dataset, data_version: degradation_trigger(champion, asset, version),
                                  event_id)
        return MonitorOutcome(MonitorAction.DEGRADED, f"{decision.reason}; {retrained}", job)

    def _score(self, job: str, metric: str) -> Decimal | None:
        """The champion's metric in the re-score's comparison.json; None if there is none or it is unreadable."""
        text = self._jobs.read_comparison(job)
        if text is None:
            return None
        try:
            comparison = parse_comparison(text)
        except InvalidComparisonError as exc:
            log.warning("re-score job=%s: comparison.json unreadable: %s", job, exc)
            return None
        return comparison.challenger.metrics.get(metric)

    # -- changed training code -------------------------------------------------------------------------------------
    def _code_check(self, model: ModelPolicy, event_id: str) -> list[MonitorOutcome]:
        """Retrain the newest training data once when the deployed code differs from the champion's."""
        champion = self._champion(model.promotion.endpoint)
        if champion is None:
            return []
        name, _, version = champion.partition(":")
        info = self._endpoints.get_model(name, version)
        champion_code = info.tags.get(Tag.CODE_SHA256.value) if info is not None else None
        deployed = self._code_hash()
        reason = plan_code_retrain(champion_code, deployed)
        if reason is None:
            return []
        retrained = self._retrain(model, lambda dataset, data_version: code_trigger(dataset, data_version, deployed),
                                  event_id)
        detail = f"{champion}: {reason}; {retrained}"
        self._record(MonitorAction.CODE_CHANGED, detail, event_id,
                     {"model": champion, "endpoint": model.promotion.endpoint, "code": deployed[:12]})
        return [MonitorOutcome(MonitorAction.CODE_CHANGED, detail)]

    # -- helpers ---------------------------------------------------------------------------------------------
    def _retrain(self, model: ModelPolicy, trigger: Callable[[str, str], str], event_id: str) -> str:
        """Rerun each training dataset of `model` on its newest version through the Retrainer's decision."""
        done = []
        for pipeline in (r for r in self._policy.retraining if r.model_name == model.name):
            info = self._data.get_data_version(pipeline.dataset)
            if info is None:
                done.append(f"{pipeline.dataset}: no data version to retrain on")
                continue
            event = DataVersionRegistered(dataset=pipeline.dataset, asset_name=info.name, version=info.version,
                                          uri=info.uri, asset_type=info.asset_type,
                                          sha256=info.tags.get(Tag.SHA256.value, "") or "-", file_count=1)
            outcome = self._retrainer.on_data_version_registered(event, event_id,
                                                                 rerun=trigger(pipeline.dataset, info.version))
            done.append(f"retrain {info.name}:{info.version}: {outcome.action.value} ({outcome.detail})")
        return "; ".join(done) or f"no retraining pipeline registers {model.name}"

    def _champion(self, endpoint: str) -> str | None:
        view = self._endpoints.endpoint(endpoint)
        serving = view.serving() if view is not None else None
        return ":".join(serving.model) if serving is not None and serving.model is not None else None

    def _record(self, action: MonitorAction, reason: str, event_id: str, assets: dict[str, str]) -> None:
        self._audit.record(AuditRecord(f"champion.{action.value}", action.value, reason, event_id, assets,
                                       at=self._clock()))
        log.info("champion event=%s %s: %s", event_id, action.value, reason)


def _metric_of(info: ModelInfo | None, metric: str) -> Decimal | None:
    """The champion's score at promotion: the property, else the tag `evergreen.metric.<m>` (as the gate reads it)."""
    if info is None:
        return None
    return decimal_of(info.properties.get(metric_tag(metric)) or info.tags.get(metric_tag(metric)))


def _summary(outcomes: list[MonitorOutcome]) -> MonitorOutcome:
    if len(outcomes) == 1:
        return outcomes[0]
    return MonitorOutcome(outcomes[0].action, " | ".join(o.detail for o in outcomes), outcomes[0].job_name)

"""Data version → retraining pipeline run, with lineage and without stale runs.

`plan_retrain` and `plan_follow_up` decide purely; `Retrainer` executes the decisions. Idempotency
lives in the job name (derived from the data version: a redelivered event can never start a
second run) and in the ledger's per-dataset state row, updated with ETag conditions so two
instances cannot both start a run for the same dataset. Versions that arrive while a run is active
coalesce into at most one follow-up run, on the newest version.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from shared.audit import AuditRecord
from shared.errors import ClaimInProgressError, InvalidEventError
from shared.events import DataVersionRegistered
from shared.keys import digest
from shared.ledger import Ledger, RetrainState, utcnow
from shared.policy import Policy, RetrainPolicy

log = logging.getLogger(__name__)

RUN_COMPLETED = "Microsoft.MachineLearningServices.RunCompleted"
RUN_STATUS_CHANGED = "Microsoft.MachineLearningServices.RunStatusChanged"


# -- typed events ---------------------------------------------------------------------------------
def _lower_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in data.items()}


def parse_data_version_registered(data: object) -> DataVersionRegistered:
    """The payload of Evergreen.DataVersionRegistered; InvalidEventError names what is wrong."""
    if not isinstance(data, dict):
        raise InvalidEventError("Evergreen.DataVersionRegistered: data must be a JSON object")
    missing = [k for k in ("dataset", "asset_name", "version", "uri", "asset_type", "sha256") if not data.get(k)]
    if missing:
        raise InvalidEventError(f"Evergreen.DataVersionRegistered: data lacks {', '.join(missing)}")
    files = data.get("files", [])
    if not isinstance(files, list):
        raise InvalidEventError("Evergreen.DataVersionRegistered: data.files must be a list")
    return DataVersionRegistered(
        dataset=str(data["dataset"]), asset_name=str(data["asset_name"]), version=str(data["version"]),
        uri=str(data["uri"]), asset_type=str(data["asset_type"]), sha256=str(data["sha256"]),
        file_count=int(data.get("file_count", len(files))), files=tuple(str(f) for f in files),
        files_truncated=bool(data.get("files_truncated", False)),
    )


@dataclass(frozen=True)
class RunFinished:
    """An Azure ML run reached a terminal state (RunCompleted, or RunStatusChanged for failures)."""

    run_id: str
    status: str  # Completed | Failed | Canceled | …
    experiment: str
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.status == "Completed"


def parse_run_event(event_type: str, data: object) -> RunFinished:
    """Azure ML run events; keys are matched case-insensitively (sources disagree on casing)."""
    if not isinstance(data, dict):
        raise InvalidEventError(f"{event_type}: data must be a JSON object")
    d = _lower_keys(data)
    if not d.get("runid"):
        raise InvalidEventError(f"{event_type}: data lacks runId")
    if event_type.lower() == RUN_COMPLETED.lower():
        status = "Completed"
    elif event_type.lower() == RUN_STATUS_CHANGED.lower():
        status = str(d.get("runstatus") or "")
        if not status:
            raise InvalidEventError(f"{event_type}: data lacks runStatus")
    else:
        raise InvalidEventError(f"not an Azure ML run event: {event_type}")
    tags = d.get("runtags") or {}
    if not isinstance(tags, dict):
        raise InvalidEventError(f"{event_type}: runTags must be an object")
    return RunFinished(str(d["runid"]), status, str(d.get("experimentname") or ""),
                       {str(k): str(v) for k, v in tags.items()})


# -- decisions ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SubmitRetrain:
    dataset: str
    asset_name: str
    data_version: str
    asset_type: str
    job_name: str
    pipeline: RetrainPolicy
    reason: str


@dataclass(frozen=True)
class Coalesce:
    """A run is active: remember this version as the follow-up (only the newest is kept)."""

    dataset: str
    data_version: str
    reason: str


@dataclass(frozen=True)
class Skip:
    reason: str


RetrainDecision = SubmitRetrain | Coalesce | Skip

_SLUG = re.compile(r"[^a-z0-9-]+")


def job_name_for(dataset: str, version: str) -> str:
    """Deterministic Azure ML job name for (dataset, data version): the run's idempotency key."""
    slug = _SLUG.sub("-", dataset.lower()).strip("-")[:60] or "data"
    return f"evergreen-{slug}-v{_SLUG.sub('-', version.lower())[:20]}-{digest(dataset, version, length=8)}"


def version_key(version: str) -> tuple[int, int | str]:
    """Order versions numerically when they are numbers (Azure ML's autoincrement), else lexically."""
    return (1, int(version)) if version.isdigit() else (0, version)


def plan_retrain(
    event: DataVersionRegistered, policy: Policy, state: RetrainState | None, run_status: str | None,
    now: datetime,
) -> RetrainDecision:
    """Decide what a new data version means for retraining. Pure."""
    pipeline = policy.retraining_for(event.dataset)
    if pipeline is None:
        return Skip(f"dataset {event.dataset!r} has no retraining pipeline in the policy")
    name = job_name_for(event.dataset, event.version)
    if run_status == "submitting":  # a previous attempt crashed between claim and submit: finish it
        return SubmitRetrain(event.dataset, event.asset_name, event.version, event.asset_type, name, pipeline,
                             "resuming an interrupted submission")
    if run_status is not None:
        return Skip(f"a run for {event.dataset}:{event.version} already exists ({name}, {run_status})")
    if state is not None and state.active_job:
        if state.pending_version and version_key(state.pending_version) >= version_key(event.version):
            return Skip(f"version {state.pending_version} is already queued as the follow-up of {state.active_job}")
        if version_key(event.version) <= version_key(state.active_version or "0"):
            return Skip(f"version {event.version} is not newer than the running {state.active_version}")
        return Coalesce(event.dataset, event.version,
                        f"run {state.active_job} is active; {event.version} becomes the follow-up (newest wins)")
    if state is not None and state.last_submitted_at is not None and pipeline.min_interval_minutes:
        next_allowed = state.last_submitted_at + timedelta(minutes=pipeline.min_interval_minutes)
        if now < next_allowed:
            return Skip(f"inside the minimum interval of {pipeline.min_interval_minutes:g} min "
                        f"(next run allowed at {next_allowed.isoformat()})")
    return SubmitRetrain(event.dataset, event.asset_name, event.version, event.asset_type, name, pipeline,
                         f"new data version {event.asset_name}:{event.version}")


def plan_follow_up(finished: RunFinished, state: RetrainState | None, policy: Policy) -> SubmitRetrain | Skip:
    """After the active run ends: start one run on the newest pending version, if any. Pure."""
    if state is None or state.active_job != finished.run_id:
        return Skip(f"run {finished.run_id} is not an active Evergreen retraining run")
    if not state.pending_version:
        return Skip(f"no data version arrived during {finished.run_id}")
    pipeline = policy.retraining_for(state.dataset)
    if pipeline is None:
        return Skip(f"dataset {state.dataset!r} no longer has a retraining pipeline")
    return SubmitRetrain(state.dataset, state.pending_asset or state.dataset, state.pending_version,
                         state.pending_asset_type or "uri_folder",
                         job_name_for(state.dataset, state.pending_version), pipeline,
                         f"follow-up of {finished.run_id} on the newest version {state.pending_version}")


# -- execution ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PipelineSubmission:
    yaml_path: Path
    job_name: str
    experiment: str
    data_input: str  # azureml:<asset>:<version>
    data_type: str
    inputs: Mapping[str, str | int | float | bool]
    tags: Mapping[str, str]


class JobRunner(Protocol):
    def submit_pipeline(self, submission: PipelineSubmission) -> str: ...


class AuditSink(Protocol):
    def record(self, rec: AuditRecord) -> None: ...


@dataclass(frozen=True)
class RetrainOutcome:
    action: str  # submitted | coalesced | skipped | finished
    detail: str
    job_name: str | None = None


class Retrainer:
    def __init__(self, *, policy: Policy, app_root: Path, ledger: Ledger, jobs: JobRunner, audit: AuditSink,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self._policy = policy
        self._root = app_root
        self._ledger = ledger
        self._jobs = jobs
        self._audit = audit
        self._clock = clock

    def on_data_version_registered(self, event: DataVersionRegistered, event_id: str) -> RetrainOutcome:
        state = self._ledger.get_retrain_state(event.dataset)
        run_status = self._ledger.retrain_run_status(event.dataset, event.version)
        decision = plan_retrain(event, self._policy, state, run_status, self._clock())
        assets = {"data": f"{event.asset_name}:{event.version}"}
        if isinstance(decision, Skip):
            outcome = RetrainOutcome("skipped", decision.reason)
        elif isinstance(decision, Coalesce):
            assert state is not None
            if not self._ledger.set_pending(state, event.version, event.asset_name, event.asset_type):
                raise ClaimInProgressError(f"retrain state of {event.dataset} changed; retry")
            outcome = RetrainOutcome("coalesced", decision.reason, state.active_job)
        else:
            outcome = self._submit(decision, state, event_id)
        self._audit.record(AuditRecord(f"retrain.{outcome.action}", outcome.action, outcome.detail, event_id,
                                       {**assets, **({"job": outcome.job_name} if outcome.job_name else {})}))
        return outcome

    def on_run_finished(self, finished: RunFinished, event_id: str) -> RetrainOutcome:
        dataset = finished.tags.get("evergreen.dataset")
        if not dataset:
            return RetrainOutcome("skipped", f"run {finished.run_id} is not an Evergreen retraining run")
        state = self._ledger.get_retrain_state(dataset)
        if state is None or state.active_job != finished.run_id:
            return RetrainOutcome("skipped", f"run {finished.run_id} is not the active run of {dataset}")
        version = finished.tags.get("evergreen.data_version", state.active_version or "")
        self._ledger.set_retrain_run_status(dataset, version, finished.status.lower())
        verdict = "finished" if finished.succeeded else "failed"
        self._audit.record(AuditRecord(
            f"retrain.{verdict}", finished.status,
            f"run {finished.run_id} ended {finished.status}" + ("" if finished.succeeded else
                                                                "; the next data version can retrain"),
            event_id, {"job": finished.run_id, "data": f"{dataset}:{version}"}))
        follow = plan_follow_up(finished, state, self._policy)
        if isinstance(follow, Skip):
            if not self._ledger.clear_active(state):
                raise ClaimInProgressError(f"retrain state of {dataset} changed; retry")
            return RetrainOutcome(verdict, f"{finished.run_id} {finished.status}; {follow.reason}", finished.run_id)
        outcome = self._submit(follow, state, event_id)
        self._audit.record(AuditRecord(f"retrain.{outcome.action}", outcome.action, outcome.detail, event_id,
                                       {"data": f"{dataset}:{follow.data_version}", "job": follow.job_name}))
        return outcome

    def _submit(self, decision: SubmitRetrain, state: RetrainState | None, event_id: str) -> RetrainOutcome:
        claimed = self._ledger.claim_retrain(state, decision.dataset, decision.job_name, decision.data_version,
                                             self._clock())
        if not claimed:
            raise ClaimInProgressError(f"another instance is starting a run for {decision.dataset}; retry")
        self._ledger.set_retrain_run_status(decision.dataset, decision.data_version, "submitting",
                                            decision.job_name)
        p = decision.pipeline
        submission = PipelineSubmission(
            yaml_path=self._root / p.pipeline,
            job_name=decision.job_name,
            experiment=p.experiment,
            data_input=f"azureml:{decision.asset_name}:{decision.data_version}",
            data_type=decision.asset_type,
            inputs={**p.inputs, "model_name": p.model_name, "data_asset": decision.asset_name,
                    "data_version": decision.data_version},
            tags={"evergreen.dataset": decision.dataset, "evergreen.data_asset": decision.asset_name,
                  "evergreen.data_version": decision.data_version, "evergreen.trigger_event": event_id},
        )
        status = self._jobs.submit_pipeline(submission)
        self._ledger.set_retrain_run_status(decision.dataset, decision.data_version, "submitted",
                                            decision.job_name)
        log.info("retrain submitted job=%s data=%s:%s status=%s event=%s", decision.job_name,
                 decision.asset_name, decision.data_version, status, event_id)
        return RetrainOutcome("submitted", f"{decision.reason}: job {decision.job_name} ({status})",
                              decision.job_name)

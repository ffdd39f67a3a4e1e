"""Data version → retraining pipeline run, the decisions: pure, no I/O.

`plan_retrain` and `plan_follow_up` decide; `shared.services.retrain.Retrainer` executes. Idempotency
lives in the job name (derived from the data version: a redelivered event can never start a second
run) and in the ledger's per-dataset state row. Versions that arrive while a run is active coalesce
into at most one follow-up run, on the newest version (`version_order` decides "newest").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from shared.config.policy import Policy, RetrainPolicy
from shared.domain.events import DataVersionRegistered
from shared.domain.keys import digest
from shared.domain.records import RetrainState
from shared.domain.vocabulary import RunStatus, Tag, version_order
from shared.errors import InvalidEventError

log = logging.getLogger(__name__)

RUN_COMPLETED = "Microsoft.MachineLearningServices.RunCompleted"
RUN_STATUS_CHANGED = "Microsoft.MachineLearningServices.RunStatusChanged"


# -- typed events ---------------------------------------------------------------------------------
def _lower_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in data.items()}


def _count(value: object) -> int:
    """A non-negative whole number from an event; InvalidEventError otherwise (never a retried ValueError)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidEventError(f"Evergreen.DataVersionRegistered: file_count must be a whole number, got {value!r}")
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()):
        raise InvalidEventError(f"Evergreen.DataVersionRegistered: file_count must be a whole number, got {value!r}")
    return int(text)


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
        file_count=_count(data.get("file_count", len(files))), files=tuple(str(f) for f in files),
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

    @property
    def run_status(self) -> RunStatus:
        """The ledger's word for how the run ended: any status but Completed or Canceled counts as failed."""
        if self.succeeded:
            return RunStatus.COMPLETED
        if self.status.lower() in ("canceled", "cancelled"):
            return RunStatus.CANCELED
        return RunStatus.FAILED

    @property
    def dataset(self) -> str | None:
        """The dataset an Evergreen retraining run was started for (its tag); None for anyone else's run."""
        return self.tags.get(Tag.DATASET.value) or None


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


def plan_retrain(
    event: DataVersionRegistered, policy: Policy, state: RetrainState | None, run_status: RunStatus | None,
    now: datetime,
) -> RetrainDecision:
    """Decide what a new data version means for retraining. Pure."""
    pipeline = policy.retraining_for(event.dataset)
    if pipeline is None:
        return Skip(f"dataset {event.dataset!r} has no retraining pipeline in the policy")
    name = job_name_for(event.dataset, event.version)
    if run_status is RunStatus.SUBMITTING:  # a previous attempt crashed between claim and submit: finish it
        return SubmitRetrain(event.dataset, event.asset_name, event.version, event.asset_type, name, pipeline,
                             "resuming an interrupted submission")
    if run_status is not None:
        return Skip(f"a run for {event.dataset}:{event.version} already exists ({name}, {run_status.value})")
    if state is not None and state.active_job:
        if state.pending_version and version_order(state.pending_version) >= version_order(event.version):
            return Skip(f"version {state.pending_version} is already queued as the follow-up of {state.active_job}")
        if version_order(event.version) <= version_order(state.active_version or "0"):
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


@dataclass(frozen=True)
class PipelineSubmission:
    yaml_path: Path
    job_name: str
    experiment: str
    data_input: str  # azureml:<asset>:<version>
    data_type: str
    inputs: Mapping[str, str | int | float | bool]
    tags: Mapping[str, str]


def pipeline_submission(decision: SubmitRetrain, app_root: Path, event_id: str) -> PipelineSubmission:
    """The job to submit for a decision: the pipeline YAML with the data version as input, and lineage tags."""
    p = decision.pipeline
    return PipelineSubmission(
        yaml_path=app_root / p.pipeline,
        job_name=decision.job_name,
        experiment=p.experiment,
        data_input=f"azureml:{decision.asset_name}:{decision.data_version}",
        data_type=decision.asset_type,
        inputs={**p.inputs, "model_name": p.model_name, "data_asset": decision.asset_name,
                "data_version": decision.data_version},
        tags={Tag.DATASET.value: decision.dataset, Tag.DATA_ASSET.value: decision.asset_name,
              Tag.DATA_VERSION.value: decision.data_version, Tag.TRIGGER_EVENT.value: event_id},
    )

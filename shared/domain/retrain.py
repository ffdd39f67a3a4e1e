"""Data version → retraining pipeline run, the decisions: pure, no I/O.

`plan_retrain` and `plan_follow_up` decide; `shared.services.retrain.Retrainer` executes. Idempotency
lives in the job name (derived from the data version: a redelivered event can never start a second
run) and in the ledger's per-dataset state row. Versions that arrive while a run is active coalesce
into at most one follow-up run, on the newest version (`version_order` decides "newest").
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from shared.config.policy import Policy, RetrainPolicy
from shared.domain.events import DataVersionRegistered
from shared.domain.keys import digest
from shared.domain.records import RECHECK_GRACE, RetrainState
from shared.domain.vocabulary import FINISHED_JOB_STATUSES, RunStatus, Tag, version_order
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
        traceparent=str(data.get("traceparent") or ""),
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
    def ended(self) -> bool:
        """Whether the status is an end (RunStatusChanged also reports Queued, Running, …, which end nothing)."""
        return self.status.lower() in FINISHED_JOB_STATUSES

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


# -- the re-check queue ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetrainCheck:
    """A queue message: look at a dataset's retraining again (the minimum interval ended, a lease ran out)."""

    dataset: str
    reason: str = ""


def retrain_check_from_json(body: str) -> RetrainCheck:
    """Parse a re-check message; malformed input is an InvalidEventError naming what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply (issue 11, defect 5)
        raise InvalidEventError(f"retrain re-check is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("dataset"), str) or not data["dataset"]:
        raise InvalidEventError("retrain re-check must be a JSON object with a dataset name")
    return RetrainCheck(data["dataset"], str(data.get("reason", "")))


def retrain_check_to_json(check: RetrainCheck) -> str:
    """The re-check message text (the inverse of `retrain_check_from_json`)."""
    return json.dumps({"dataset": check.dataset, "reason": check.reason})


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
    resume: bool = False  # the job is the dataset's unconfirmed submission: take its expired lease over
    trigger_event: str = ""  # the event the run was started for ("" = the one being handled)
    rerun: str = ""  # a deliberate second run of a version already run (`plan_retrain(rerun=…)`): its key

    @property
    def run_key(self) -> str:
        """Under what the ledger remembers this run's status: the data version, plus the rerun's key if any."""
        return run_key(self.data_version, self.rerun)


def run_key(version: str, rerun: str = "") -> str:
    """The ledger's key of one run of a data version: the version, or `<version>+<rerun>` for a rerun."""
    return f"{version}+{rerun}" if rerun else version


@dataclass(frozen=True)
class Coalesce:
    """A run is active: remember this version as the follow-up (only the newest is kept)."""

    dataset: str
    data_version: str
    asset_name: str
    asset_type: str
    reason: str


@dataclass(frozen=True)
class Defer:
    """Inside the minimum interval: remember this version as the pending one, re-check when the window ends."""

    dataset: str
    data_version: str
    asset_name: str
    asset_type: str
    due: datetime
    reason: str


@dataclass(frozen=True)
class Wait:
    """Another instance holds the dataset's unconfirmed submission: look again when its lease ends."""

    dataset: str
    until: datetime
    reason: str


@dataclass(frozen=True)
class Skip:
    reason: str


RetrainDecision = SubmitRetrain | Coalesce | Defer | Wait | Skip

_SLUG = re.compile(r"[^a-z0-9-]+")


def job_name_for(dataset: str, version: str, rerun: str = "") -> str:
    """Deterministic Azure ML job name for (dataset, data version[, rerun key]): the run's idempotency key."""
    slug = _SLUG.sub("-", dataset.lower()).strip("-")[:60] or "data"
    base = f"evergreen-{slug}-v{_SLUG.sub('-', version.lower())[:20]}"
    if rerun:
        return f"{base}-r-{digest(dataset, version, rerun, length=12)}"
    return f"{base}-{digest(dataset, version, length=8)}"


def _newer(version: str, than: str | None) -> bool:
    return than is None or version_order(version) > version_order(than)


def _window_end(state: RetrainState | None, pipeline: RetrainPolicy) -> datetime | None:
    """When the minimum interval after the last submission ends; None if there is none."""
    if state is None or state.last_submitted_at is None or not pipeline.min_interval_minutes:
        return None
    return state.last_submitted_at + timedelta(minutes=pipeline.min_interval_minutes)


def _resume_or_wait(state: RetrainState, pipeline: RetrainPolicy, now: datetime) -> SubmitRetrain | Wait:
    """The dataset's unconfirmed submission: wait for a live holder, else resume it under the same job name."""
    assert state.active_job is not None
    if state.lease_live(now):
        assert state.lease_until is not None
        return Wait(state.dataset, state.lease_until,
                    f"{state.lease_owner or 'another instance'} is submitting {state.active_job} "
                    f"(lease until {state.lease_until.isoformat()})")
    return SubmitRetrain(state.dataset, state.active_asset or state.dataset, state.active_version or "",
                         state.active_asset_type or "uri_folder", state.active_job, pipeline,
                         "resuming an interrupted submission", resume=True, trigger_event=state.active_event or "",
                         rerun=state.active_rerun or "")


def _pending_run(state: RetrainState, pipeline: RetrainPolicy, reason: str) -> SubmitRetrain:
    assert state.pending_version is not None
    return SubmitRetrain(state.dataset, state.pending_asset or state.dataset, state.pending_version,
                         state.pending_asset_type or "uri_folder", job_name_for(state.dataset, state.pending_version),
                         pipeline, reason)


def _while_active(event: DataVersionRegistered, state: RetrainState, exists: RunStatus | None,
                  rerun: str = "") -> Skip | Coalesce:
    """A run is active: coalesce the version as its follow-up if it is the newest seen (newest wins).

    A rerun is not coalesced: the active run already retrains the dataset (its model is the rerun's answer).
    """
    name = job_name_for(event.dataset, event.version, rerun)
    if rerun:
        return Skip(f"run {state.active_job} is active and retrains {event.dataset} already; "
                    f"the rerun {rerun} of {event.version} is not started")
    if exists is not None:
        return Skip(f"a run for {event.dataset}:{event.version} already exists ({name}, {exists.value})")
    if state.pending_version and not _newer(event.version, state.pending_version):
        return Skip(f"version {state.pending_version} is already queued as the follow-up of {state.active_job}")
    if not _newer(event.version, state.active_version or "0"):
        return Skip(f"version {event.version} is not newer than the running {state.active_version}")
    return Coalesce(event.dataset, event.version, event.asset_name, event.asset_type,
                    f"run {state.active_job} is active; {event.version} becomes the follow-up (newest wins)")


def _while_idle(event: DataVersionRegistered, pipeline: RetrainPolicy, state: RetrainState | None,
                exists: RunStatus | None, now: datetime, rerun: str = "") -> RetrainDecision:
    """No run is active: run the newest of the event's and the waiting version, or defer it to the window's end.

    A rerun (its own job name) may run the last version again, never an older one.
    """
    name = job_name_for(event.dataset, event.version, rerun)
    last = state.last_version if state else None
    if rerun:
        fresh = exists is None and (last is None or version_order(event.version) >= version_order(last))
    else:
        fresh = exists is None and _newer(event.version, last)
    if state is not None and state.pending_version and not (fresh and _newer(event.version, state.pending_version)):
        return _run_waiting(state, pipeline, now)  # the version already waiting is the newest
    if not fresh:
        why = f"already exists ({name}, {exists.value})" if exists else f"is not newer than the last run's {last}"
        return Skip(f"a run for {event.dataset}:{event.version} {why}")
    end = _window_end(state, pipeline)
    if end is not None and now < end:
        return Defer(event.dataset, event.version, event.asset_name, event.asset_type, end,
                     f"inside the minimum interval of {pipeline.min_interval_minutes:g} min: {event.version} "
                     f"waits until {end.isoformat()} (newest wins)")
    why = f"rerun {rerun} of" if rerun else "new data version"
    return SubmitRetrain(event.dataset, event.asset_name, event.version, event.asset_type, name, pipeline,
                         f"{why} {event.asset_name}:{event.version}", rerun=rerun)


def _run_waiting(state: RetrainState, pipeline: RetrainPolicy, now: datetime) -> SubmitRetrain | Defer:
    """The version waiting for the minimum interval: run it once the window has ended, else wait on."""
    assert state.pending_version is not None
    end = _window_end(state, pipeline)
    if end is not None and now < end:
        return Defer(state.dataset, state.pending_version, state.pending_asset or state.dataset,
                     state.pending_asset_type or "uri_folder", end,
                     f"{state.pending_version} already waits for the end of the minimum interval "
                     f"({end.isoformat()})")
    return _pending_run(state, pipeline, f"the minimum interval ended; the newest waiting version is "
                                         f"{state.pending_version}")


def plan_retrain(
    event: DataVersionRegistered, policy: Policy, state: RetrainState | None, run_status: RunStatus | None,
    now: datetime, rerun: str = "",
) -> RetrainDecision:
    """Decide what a new data version means for retraining. Pure.

    An unconfirmed submission of this very version is resumed (or waited for, while its holder's
    lease lasts); during an active run the newest version becomes the follow-up; inside the minimum
    interval the newest version waits for the window's end (`Defer`), never dropped. `rerun` (a key,
    e.g. a champion's degradation) runs a version again once under its own job name; `run_status` is
    then that rerun's status.
    """
    pipeline = policy.retraining_for(event.dataset)
    if pipeline is None:
        return Skip(f"dataset {event.dataset!r} has no retraining pipeline in the policy")
    name = job_name_for(event.dataset, event.version, rerun)
    if state is not None and state.active_job == name and (state.submitting or run_status is RunStatus.SUBMITTING):
        return _resume_or_wait(state, pipeline, now)
    exists = run_status if run_status is not RunStatus.SUBMITTING else None  # a claim undone is no run
    if state is not None and state.active_job:
        return _while_active(event, state, exists, rerun)
    return _while_idle(event, pipeline, state, exists, now, rerun)


def plan_recheck(state: RetrainState | None, policy: Policy, now: datetime) -> RetrainDecision:
    """Look at a dataset again (a re-check message, the reconciler). Pure.

    An unconfirmed submission whose lease ran out is resumed; a version waiting for the minimum
    interval runs once the window has ended (or waits on, as `Defer`).
    """
    if state is None:
        return Skip("nothing is known of this dataset's retraining")
    pipeline = policy.retraining_for(state.dataset)
    if pipeline is None:
        return Skip(f"dataset {state.dataset!r} has no retraining pipeline in the policy")
    if state.active_job:
        if state.submitting:
            return _resume_or_wait(state, pipeline, now)
        waiting = f"; {state.pending_version} follows it" if state.pending_version else ""
        return Skip(f"run {state.active_job} is active{waiting}")
    if not state.pending_version:
        return Skip(f"no data version of {state.dataset} waits")
    return _run_waiting(state, pipeline, now)


def plan_reconcile(state: RetrainState, job_status: str | None, policy: Policy,
                   now: datetime) -> RetrainDecision | RunFinished | None:
    """What a stuck dataset needs, for the reconciler; None if nothing is stuck. Pure.

    `job_status` is Azure ML's status of a confirmed active job (None: there is no such job). Stuck
    are: a submission not confirmed whose lease expired (resume it), an active job that does not exist
    (submit it again under its name), an active job that finished while its run event was lost (the
    follow-up, as if the event had come: a `RunFinished`), and a waiting version whose re-check is
    not in flight (run it, or schedule the re-check).
    """
    pipeline = policy.retraining_for(state.dataset)
    if pipeline is None:
        return None
    job = state.active_job
    if job and state.submitting:
        if state.lease_live(now):
            return None
        return replace(_resume_or_wait(state, pipeline, now),
                       reason=f"the submission of {job} was not confirmed before its lease expired; resuming it")
    if job and job_status is None:
        return SubmitRetrain(state.dataset, state.active_asset or state.dataset, state.active_version or "",
                             state.active_asset_type or "uri_folder", job, pipeline,
                             f"the active job {job} does not exist; submitting it again", resume=True,
                             trigger_event=state.active_event or "", rerun=state.active_rerun or "")
    if job and job_status is not None and job_status.lower() in FINISHED_JOB_STATUSES:
        tags = {Tag.DATASET.value: state.dataset, Tag.DATA_VERSION.value: state.active_version or "",
                **({Tag.RERUN.value: state.active_rerun} if state.active_rerun else {})}
        return RunFinished(job, job_status, pipeline.experiment, tags)
    if job or not state.pending_version:
        return None
    if state.recheck_at is not None and now <= state.recheck_at + RECHECK_GRACE:
        return None  # its re-check is in flight
    return _run_waiting(state, pipeline, now)


def plan_follow_up(finished: RunFinished, state: RetrainState | None, policy: Policy) -> SubmitRetrain | Skip:
    """After the active run ends: start one run on the newest pending version, if any. Pure."""
    if state is None or state.active_job != finished.run_id:
        return Skip(f"run {finished.run_id} is not an active Evergreen retraining run")
    if not state.pending_version:
        return Skip(f"no data version arrived during {finished.run_id}")
    pipeline = policy.retraining_for(state.dataset)
    if pipeline is None:
        return Skip(f"dataset {state.dataset!r} no longer has a retraining pipeline")
    return _pending_run(state, pipeline, f"follow-up of {finished.run_id} on the newest version "
                                         f"{state.pending_version}")


@dataclass(frozen=True)
class PipelineSubmission:
    yaml_path: Path
    job_name: str
    experiment: str
    data_input: str  # azureml:<asset>:<version>
    data_type: str
    inputs: Mapping[str, str | int | float | bool]
    tags: Mapping[str, str]
    data_input_name: str = "training_data"  # the pipeline input that takes `data_input`
    model_inputs: Mapping[str, str] = field(default_factory=dict)  # input -> azureml:<model>:<version> (custom_model)


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
              Tag.DATA_VERSION.value: decision.data_version, Tag.TRIGGER_EVENT.value: event_id,
              **({Tag.RERUN.value: decision.rerun} if decision.rerun else {})},
    )

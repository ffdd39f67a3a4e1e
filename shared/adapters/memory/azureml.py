"""Azure ML's data registry and job runner in memory (`DataRegistry`, `JobRunner`), with the service's semantics.

Data versions are numbered by the registry (1, 2, 3, … per asset) and keep their tags; a pipeline
job is keyed by its name, so submitting the same name twice returns the existing job's status and
runs nothing new. Tests move jobs to a terminal status with `set_job_status`, and make Azure ML refuse
a job for good (`JobRejectedError`, as for a HTTP 400) with `reject_job`. Thread-safe.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path

from shared.domain.lineage import JobInfo, JobStep
from shared.domain.retrain import PipelineSubmission
from shared.domain.vocabulary import version_order
from shared.domain.workspace import DataVersionInfo, DataVersionSpec, RegisteredDataVersion
from shared.errors import JobRejectedError

NEW_JOB_STATUS = "NotStarted"  # what Azure ML answers for a pipeline job just created


def pipeline_steps(yaml_path: Path) -> tuple[str, ...]:
    """The step names a pipeline job YAML defines (its `jobs:` keys), as Azure ML keeps them on the job;
    none if the file is missing or not a pipeline (the in-memory job then has no steps)."""
    import yaml

    try:
        doc = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return ()
    jobs = doc.get("jobs") if isinstance(doc, dict) else None
    return tuple(str(k) for k in jobs) if isinstance(jobs, dict) else ()


@dataclass(frozen=True)
class MemoryDataVersion:
    name: str
    version: str
    spec: DataVersionSpec


@dataclass(frozen=True)
class MemoryJob:
    name: str
    submission: PipelineSubmission
    status: str


class MemoryWorkspace:
    def __init__(self) -> None:
        self._data: dict[str, list[MemoryDataVersion]] = {}
        self._highest: dict[str, int] = {}  # per name, as Azure ML's nextVersion: a deleted number is not reused
        self._jobs: dict[str, MemoryJob] = {}
        self._rejections: dict[str, str] = {}  # job name -> why Azure ML refuses it
        self._outputs: dict[str, str] = {}  # job name -> its comparison.json
        self._step_status: dict[str, dict[str, str]] = {}  # job name -> step -> status
        self._lock = threading.Lock()

    # -- DataRegistry ----------------------------------------------------------------------------
    def register_data_version(self, spec: DataVersionSpec) -> RegisteredDataVersion:
        """Register the next version of the asset: one more than the highest number ever given (not reused)."""
        with self._lock:
            versions = self._data.setdefault(spec.name, [])
            numbers = [int(v.version) for v in versions if v.version.isascii() and v.version.isdigit()]
            number = max([*numbers, self._highest.get(spec.name, 0)]) + 1
            self._highest[spec.name] = number
            version = str(number)
            versions.append(MemoryDataVersion(spec.name, version, spec))
        return RegisteredDataVersion(name=spec.name, version=version, uri=spec.uri)

    def find_data_version(self, name: str, tag: str, value: str) -> RegisteredDataVersion | None:
        """The lowest version of `name` carrying tag=value; None if none (or no such asset)."""
        with self._lock:
            matching = [v for v in self._data.get(name, []) if v.spec.tags.get(tag) == value]
        if not matching:
            return None
        first = min(matching, key=lambda v: version_order(v.version))
        return RegisteredDataVersion(name=name, version=first.version, uri=first.spec.uri)

    def get_data_version(self, name: str, version: str | None = None) -> DataVersionInfo | None:
        """Version `version` of `name`, or its highest one (by `version_order`) when None; None if there is none."""
        with self._lock:
            versions = list(self._data.get(name, []))
        if version is None:
            found = max(versions, key=lambda v: version_order(v.version), default=None)
        else:
            found = next((v for v in versions if v.version == version), None)
        if found is None:
            return None
        spec = found.spec
        return DataVersionInfo(name, found.version, spec.uri, spec.asset_type, dict(spec.tags))

    def delete_data_version(self, name: str, version: str) -> bool:
        """Remove a version, as retention's delete does; False if there was none."""
        with self._lock:
            versions = self._data.get(name, [])
            kept = [v for v in versions if v.version != version]
            self._data[name] = kept
            return len(kept) != len(versions)

    def data_versions(self, name: str) -> list[MemoryDataVersion]:
        """Every registered version of `name`, in registration order."""
        with self._lock:
            return list(self._data.get(name, []))

    # -- JobRunner -------------------------------------------------------------------------------
    def submit_pipeline(self, submission: PipelineSubmission) -> str:
        """Create the job under its deterministic name; an existing job's status is returned, never re-run.

        Raises JobRejectedError for a job `reject_job` named (Azure ML refusing it for good).
        """
        with self._lock:
            existing = self._jobs.get(submission.job_name)
            if existing is not None:
                return existing.status
            if submission.job_name in self._rejections:
                raise JobRejectedError(self._rejections[submission.job_name])
            self._jobs[submission.job_name] = MemoryJob(submission.job_name, submission, NEW_JOB_STATUS)
            return NEW_JOB_STATUS

    def job_status(self, name: str) -> str | None:
        with self._lock:
            job = self._jobs.get(name)
            return job.status if job else None

    def read_comparison(self, job_name: str) -> str | None:
        """The `comparison.json` a test (or the fault harness) wrote for the job with `write_comparison`."""
        with self._lock:
            return self._outputs.get(job_name)

    def write_comparison(self, job_name: str, text: str) -> None:
        """What the compare step would write to the job's `comparison` output."""
        with self._lock:
            self._outputs[job_name] = text

    def jobs(self) -> list[MemoryJob]:
        """Every job, in submission order."""
        with self._lock:
            return list(self._jobs.values())

    def reject_job(self, name: str, reason: str = "(BadRequest) the pipeline job is invalid") -> None:
        """Make every submission of job `name` fail as Azure ML's HTTP 400 would."""
        with self._lock:
            self._rejections[name] = reason

    def get_job(self, name: str) -> JobInfo | None:
        """The job (`JobInspector`): status, tags, and the steps its pipeline YAML defines, with the statuses
        `set_step_status` gave them ("" otherwise, as when the service does not list child runs)."""
        with self._lock:
            job = self._jobs.get(name)
            statuses = dict(self._step_status.get(name, {}))
        if job is None:
            return None
        steps = tuple(JobStep(step, statuses.get(step, "")) for step in pipeline_steps(job.submission.yaml_path))
        return JobInfo(name=name, status=job.status, tags=dict(job.submission.tags), steps=steps)

    def set_step_status(self, name: str, step: str, status: str) -> None:
        """Give one child step of job `name` a status, as the service's child-run listing would show it."""
        with self._lock:
            self._step_status.setdefault(name, {})[step] = status

    def set_job_status(self, name: str, status: str) -> MemoryJob:
        """Move a job on (Running, Completed, Failed, …), as the service would. KeyError if there is no such job."""
        with self._lock:
            job = self._jobs[name] = replace(self._jobs[name], status=status)
            return job

"""Azure ML adapter: the only module that talks to azure-ai-ml.

`azure.ai.ml` costs about 1.3 s to import, so it is imported on first use, never at start-up:
functions that never touch Azure ML (webhook handshakes, ignored blobs) stay fast on a cold start.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from azure.core.credentials import TokenCredential

if TYPE_CHECKING:
    from azure.ai.ml import MLClient

    from shared.retrain import PipelineSubmission

log = logging.getLogger(__name__)

PATH_CONFLICT = "Asset paths cannot be updated."
AUTOINCREMENT_ATTEMPTS = 8


@dataclass(frozen=True)
class DataVersionSpec:
    name: str
    asset_type: str  # uri_file | uri_folder
    uri: str
    description: str
    tags: dict[str, str]


@dataclass(frozen=True)
class RegisteredDataVersion:
    name: str
    version: str
    uri: str


class AzureML:
    """Creates the MLClient once, on first use, and exposes the few operations Evergreen needs."""

    def __init__(self, credential: TokenCredential, subscription_id: str, resource_group: str, workspace: str):
        self._credential = credential
        self._coordinates = (subscription_id, resource_group, workspace)
        self._client: MLClient | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> MLClient:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    from azure.ai.ml import MLClient

                    sub, rg, ws = self._coordinates
                    self._client = MLClient(self._credential, sub, rg, ws)
        return self._client

    def register_data_version(self, spec: DataVersionSpec) -> RegisteredDataVersion:
        """Register the next version of a data asset (the service assigns the number)."""
        from azure.ai.ml.entities import Data

        data = Data(
            name=spec.name,
            path=spec.uri,
            type=spec.asset_type,
            description=spec.description,
            tags=spec.tags,
        )
        from azure.core.exceptions import HttpResponseError

        # The SDK reads the container's nextVersion, then PUTs that number. Another instance may take
        # the same number first; the service then refuses our PUT ("Asset paths cannot be updated."),
        # with no side effect, and reading nextVersion again gives a free number.
        for attempt in range(1, AUTOINCREMENT_ATTEMPTS + 1):
            try:
                created = self.client.data.create_or_update(data)
                break
            except HttpResponseError as exc:
                if PATH_CONFLICT not in str(exc) or attempt == AUTOINCREMENT_ATTEMPTS:
                    raise
                log.info("data asset %s: version number taken concurrently (attempt %d); retrying", spec.name,
                         attempt)
                data.version = None
                time.sleep(random.uniform(0, 0.05 * attempt))  # jitter: racing instances fall out of step
        return RegisteredDataVersion(name=created.name, version=str(created.version), uri=str(created.path))

    def find_data_version(self, name: str, tag: str, value: str) -> RegisteredDataVersion | None:
        """Find a version carrying tag=value: reconciles a registration whose ledger write was lost."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            versions: Any = self.client.data.list(name=name)
            for item in versions:
                if (item.tags or {}).get(tag) == value:
                    return RegisteredDataVersion(name=item.name, version=str(item.version), uri=str(item.path))
        except ResourceNotFoundError:
            return None
        return None

    def submit_pipeline(self, submission: PipelineSubmission) -> str:
        """Submit the pipeline job under its deterministic name; an existing job is returned, never re-run."""
        from azure.ai.ml import Input, load_job
        from azure.core.exceptions import ResourceNotFoundError

        try:
            existing = self.client.jobs.get(submission.job_name)
            log.info("job %s already exists (%s): not submitting again", submission.job_name, existing.status)
            return str(existing.status)
        except ResourceNotFoundError:
            pass
        job: Any = load_job(source=submission.yaml_path)
        job.name = submission.job_name
        job.experiment_name = submission.experiment
        job.tags = {**(job.tags or {}), **submission.tags}
        job.inputs.training_data = Input(type=submission.data_type, path=submission.data_input)
        for key, value in submission.inputs.items():
            setattr(job.inputs, key, value)
        created = self.client.jobs.create_or_update(job)
        return str(created.status)

"""What `validate` needs from Azure ML: pipelines read by azure-ai-ml's `load_job`, the workspace's names.

`AmlPipelineReader` implements `shared.config.validate.PipelineReader` (it also checks what the
plain YAML reader cannot: components that exist and parse, the job schema); `AmlWorkspaceFacts`
implements `WorkspaceFacts` on the `AzureML` client holder. `azure.ai.ml` is slow to import, so it
is imported on first use.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from azure.core.credentials import TokenCredential
from azure.core.exceptions import AzureError

from shared.adapters.azure.azureml import AzureML
from shared.config.validate import PIPELINE_METRICS_TAG, PipelineFacts, compute_name, metric_list
from shared.errors import OperationFailedError

log = logging.getLogger(__name__)


class AmlPipelineReader:
    """Loads a pipeline job YAML as Azure ML would submit it (`azure.ai.ml.load_job`)."""

    def read(self, path: Path) -> PipelineFacts:
        """Raises ValueError with azure-ai-ml's reason when the file is not a loadable pipeline job."""
        from azure.ai.ml import load_job
        from azure.ai.ml.entities import PipelineJob

        experimental = logging.getLogger("azure.ai.ml._utils._experimental")
        level = experimental.level
        experimental.setLevel(logging.ERROR)  # its "experimental class" notices are not the user's problems
        try:
            job = load_job(source=path)
        except Exception as exc:  # azure-ai-ml raises ValidationException, marshmallow and YAML errors alike
            raise ValueError(f"cannot be loaded by azure-ai-ml: {' '.join(str(exc).split())[:300]}") from exc
        finally:
            experimental.setLevel(level)
        if not isinstance(job, PipelineJob):
            raise ValueError(f"is a {type(job).__name__}, not a pipeline job (type: pipeline)")
        computes = [job.settings.default_compute if job.settings is not None else None]
        computes += [getattr(step, "compute", None) for step in (job.jobs or {}).values()]
        return PipelineFacts(
            inputs=frozenset(job.inputs or {}),
            computes=frozenset(compute_name(c) for c in computes if isinstance(c, str) and c),
            metrics=metric_list((job.tags or {}).get(PIPELINE_METRICS_TAG)),
        )


class AmlWorkspaceFacts:
    """The computes and datastores of the workspace, listed once each."""

    def __init__(self, azureml: AzureML) -> None:
        self._azureml = azureml

    def compute_names(self) -> frozenset[str]:
        """Raises OperationFailedError when the workspace cannot be listed (unreachable, no access)."""
        try:
            return frozenset(c.name for c in self._azureml.client.compute.list())
        except AzureError as exc:
            raise OperationFailedError(f"listing the workspace's computes failed: {exc}") from exc

    def datastore_names(self) -> frozenset[str]:
        """Raises OperationFailedError when the workspace cannot be listed (unreachable, no access)."""
        try:
            return frozenset(d.name for d in self._azureml.client.datastores.list())
        except AzureError as exc:
            raise OperationFailedError(f"listing the workspace's datastores failed: {exc}") from exc


def workspace_facts(credential: TokenCredential, env: Mapping[str, str]) -> AmlWorkspaceFacts | None:
    """The workspace the settings name (AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP, AZUREML_WORKSPACE_NAME).

    None when one of them is unset: `validate` then skips the workspace checks with a note.
    """
    keys = ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME")
    names = [env.get(key, "").strip() for key in keys]
    if not all(names):
        log.info("validate: no workspace settings; the compute and datastore checks are skipped")
        return None
    return AmlWorkspaceFacts(AzureML(credential, *names))

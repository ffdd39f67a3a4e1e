"""`validate`'s workspace checks through azure-ai-ml against the Azure ML emulator.

The unit tests give `validate` a hand-written `WorkspaceFacts`; here the real one (`AmlWorkspaceFacts`,
built by `workspace_facts` from the settings as `python -m shared.cli validate` builds it) lists the
computes and datastores of a workspace, so the check a user runs before deploying is exercised end to end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from azure.identity import DefaultAzureCredential

from shared.adapters.azure.workspace_facts import workspace_facts
from shared.config.validate import Severity, check_document, validate

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "evergreen.yaml"


def settings(aml: Any, workspace: str | None = None) -> dict[str, str]:
    return {"AZURE_SUBSCRIPTION_ID": aml.subscription_id, "AZURE_RESOURCE_GROUP": aml.resource_group,
            "AZUREML_WORKSPACE_NAME": workspace or aml.workspace}


def test_the_shipped_policy_finds_its_compute_and_datastore_in_the_workspace(aml: Any) -> None:
    facts = workspace_facts(DefaultAzureCredential(), settings(aml))
    assert facts is not None
    assert "cpu-cluster" in facts.compute_names() and "landing" in facts.datastore_names()
    report = validate(SHIPPED, workspace=facts, landing_container="landing", env={})
    assert report.problems == (), report.lines()


def test_a_datastore_the_workspace_lacks_is_an_error_with_the_close_name(aml: Any) -> None:
    facts = workspace_facts(DefaultAzureCredential(), settings(aml))
    document = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    document["datasets"][0]["datastore"] = "landng"
    report = check_document(document, root=REPO, workspace=facts, landing_container="landing", env={})
    assert [p.describe() for p in report.problems if p.severity is Severity.ERROR] == [
        "datasets[0].datastore: 'landng' is not a datastore of the workspace (did you mean 'landing'?)"]

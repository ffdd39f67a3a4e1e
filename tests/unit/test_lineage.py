"""The pure assembly of lineage (`shared.domain.lineage`): blob paths, what belongs to the chain, order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.domain.audit import AuditRecord
from shared.domain.lineage import (
    DeploymentNode,
    data_node,
    model_node,
    parse_subject,
    retention_actions,
    retention_targets,
    rollout_phases,
)
from shared.domain.vocabulary import Tag

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def test_blob_paths_never_keep_a_query_string_and_datastore_paths_get_their_container() -> None:
    node = data_node("d", "2", "azureml://datastores/landing/paths/_evergreen/snapshots/d/ab/?sv=x&sig=secret",
                     {Tag.SOURCE_URL.value: "https://acct.blob.core.windows.net/landing/d/a.csv?sig=secret",
                      Tag.FILES.value: "3"}, container="landing")
    assert [(b.role, b.path) for b in node.blobs] == [("source", "landing/d/a.csv"),
                                                       ("snapshot", "landing/_evergreen/snapshots/d/ab/")]
    assert "secret" not in repr(node) and node.files == "3"


def test_a_model_without_lineage_tags_names_no_data() -> None:
    assert model_node("m", "1", {"other": "x"}).data == ""
    tagged = model_node("m", "2", {Tag.DATA_ASSET.value: "d", Tag.DATA_VERSION.value: "4", Tag.JOB_NAME.value: "j"})
    assert (tagged.data, tagged.job) == ("d:4", "j")


def record(kind: str, target: str, at: datetime = T0, **assets: str) -> AuditRecord:
    return AuditRecord(kind, f"{kind} {target}", "why", "run-1", {"target": target, **assets} if target else assets,
                       at=at)


def test_retention_records_about_the_chain_exactly_under_a_snapshot_folder_or_a_job_output() -> None:
    data = [data_node("d", "2", "azureml://datastores/landing/paths/_evergreen/snapshots/d/ab/", {}, "landing")]
    models = [model_node("m", "1", {Tag.JOB_NAME.value: "evergreen-d-v2-x"})]
    deployments = [DeploymentNode("ep", "v1-aa", "m:1", 100, "Succeeded", "")]
    targets = retention_targets(data, models, deployments)
    records = [record("retention.delete_data", "data:d:2"), record("retention.delete_data", "data:d:20"),
               record("retention.delete_blob", "blob:landing/_evergreen/snapshots/d/ab/part-0.csv"),
               record("retention.delete_blob", "blob:landing/_evergreen/snapshots/d/abc/part-0.csv"),
               record("retention.delete_job_output", "blob:outputs/azureml/evergreen-d-v2-x/model"),
               record("retention.delete_deployment", "deployment:ep/v1-aa"),
               record("retrain.submitted", "data:d:2")]
    shown = [s.assets["target"] for s in retention_actions(records, targets)]
    assert shown == ["data:d:2", "blob:landing/_evergreen/snapshots/d/ab/part-0.csv",
                     "blob:outputs/azureml/evergreen-d-v2-x/model", "deployment:ep/v1-aa"]


def test_rollout_phases_of_one_second_keep_the_order_of_their_steps() -> None:
    later = T0 + timedelta(seconds=1)
    records = [AuditRecord("rollout.shift", "shift (step 10)", "", "e", {"model": "m:1", "endpoint": "ep"}, at=T0),
               AuditRecord("rollout.smoke", "smoke (step 9)", "", "e", {"model": "m:1", "endpoint": "ep"}, at=T0),
               AuditRecord("rollout.grace", "grace (step 11)", "", "e", {"model": "m:1", "endpoint": "ep"}, at=later),
               AuditRecord("rollout.grace", "grace (step 3)", "", "e", {"model": "m:2", "endpoint": "ep"}, at=T0)]
    assert [p.kind for p in rollout_phases(records, "m:1", "ep")] == ["rollout.smoke", "rollout.shift",
                                                                        "rollout.grace"]


@pytest.mark.parametrize("text, expected", [("m:3", ("m", "3")), (" churn-training:12 ", ("churn-training", "12"))])
def test_a_reference_is_name_colon_version(text: str, expected: tuple[str, str]) -> None:
    assert parse_subject(text) == expected


def test_the_command_parses_and_needs_storage_and_the_workspace_but_not_the_data_account() -> None:
    from shared import cli
    from shared.cli.lineage import NEEDS
    from shared.config.settings import load_settings
    from shared.errors import ConfigurationError

    args = cli.build_parser()[0].parse_args(["lineage", "churn-model:3", "--json", "--days", "3"])
    assert (args.command, args.ref, args.json, args.days) == ("lineage", "churn-model:3", True, 3)
    with pytest.raises(ConfigurationError) as error:
        load_settings({}, only=NEEDS)
    names = {p.split(":", 1)[0] for p in error.value.problems}
    assert names == {"AzureWebJobsStorage", "AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME"}

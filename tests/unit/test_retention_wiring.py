"""Retention's wiring: the timer function, the policy file's rules, and the adapters' parsing of Azure ML values."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.azure.aml_retention import job_input
from shared.config.policy import load_policy
from shared.domain.retention import (
    Action,
    ActionKind,
    AssetLabel,
    BlobKey,
    BlobPath,
    BlobTier,
    DataKey,
    ModelKey,
    Protected,
    RetentionPlan,
    RuleType,
    Unreadable,
)
from shared.domain.retention.addresses import AddressBook, Datastore
from shared.domain.vocabulary import rollout_finished
from shared.services.retention import Outcome, RetentionSummary, rollouts_from
from tests.unit.test_function_app import ENV, run

REPO = Path(__file__).resolve().parents[2]
BOOK = AddressBook.of([Datastore("landing", "AzureBlob", "acct", "landing"),
                       Datastore("workspaceblobstore", "AzureBlob", "acct", "azureml-blobstore")], ["acct"])


def test_the_timer_runs_on_the_schedule_setting_and_not_on_start_up() -> None:
    code = ("import json, function_app; print(json.dumps({f.get_function_name(): json.loads(f.get_raw_bindings()[0])"
            " for f in function_app.app.get_functions()}))")
    result = run(code, ENV)
    assert result.returncode == 0, result.stderr
    timer = json.loads(result.stdout)["retention"]
    assert timer["type"] == "timerTrigger"
    assert timer["schedule"] == "%EVERGREEN_RETENTION_SCHEDULE%"
    assert timer.get("runOnStartup", False) is False


def test_the_policy_file_has_rules_for_the_demo_assets() -> None:
    policy = load_policy(REPO / "evergreen.yaml", landing_container="landing")
    rules = {r.name: r for r in policy.retention.rules}
    assert policy.retention.protect_tag == "evergreen.keep"
    data = rules["archive-old-training-data"]
    assert data.type is RuleType.DATA_VERSIONS and "churn-training" in data.filters.names
    assert rules["prune-churn-models"].actions.keep_top_k is not None
    assert rules["prune-churn-models"].actions.keep_top_k.metric == "roc_auc"
    assert rules["raw-landing-blobs"].filters.prefixes == ("landing/",)
    assert rules["idle-deployments"].actions.delete_idle is not None
    assert rules["old-job-outputs"].enabled is False


@pytest.mark.parametrize(("uri", "expected"), [
    ("azureml://subscriptions/s/resourcegroups/r/workspaces/w/datastores/landing/paths/churn/d1/",
     BlobPath("landing", "churn/d1/")),
    ("azureml://datastores/workspaceblobstore/paths/models/m1", BlobPath("azureml-blobstore", "models/m1")),
    ("azureml://datastores/elsewhere/paths/x", Unreadable("azureml://datastores/elsewhere/paths/x",
                                                          "datastore elsewhere is not in the workspace")),
    # ingestion percent-encodes blob names in URIs; the path must match the blob's real name again
    ("azureml://datastores/landing/paths/churn/drop%201/part%20%C3%A9.csv",
     BlobPath("landing", "churn/drop 1/part é.csv")),
    ("https://acct.blob.core.windows.net/raw/2026/a.csv?sv=1&sig=x", BlobPath("raw", "2026/a.csv")),
    ("https://other.blob.core.windows.net/raw/2026/a.csv", None),  # another account: never ours to delete
    ("./local/folder", Unreadable("./local/folder", "address form not understood")),
    (None, None),
])
def test_asset_uris_map_to_blob_paths(uri: str | None, expected: BlobPath | None) -> None:
    assert BOOK.locate(uri) == expected


class _Input:
    def __init__(self, path: str, type_: str = "uri_folder") -> None:
        self.path, self.type = path, type_


class _Wrapped:
    """Like azure-ai-ml's PipelineInput/NodeInput: the value sits in `_data`; `.path` raises for literals."""

    def __init__(self, data: Any) -> None:
        self._data = data

    @property
    def path(self) -> str:
        raise ValueError(f"{type(self._data)} does not have path.")


@pytest.mark.parametrize(("value", "expected"), [
    (_Input("azureml:churn-training:3"), DataKey("churn-training", "3")),
    (_Input("azureml:churn-model:2", "custom_model"), ModelKey("churn-model", "2")),
    (_Input("churn-training:4"), DataKey("churn-training", "4")),  # the SDK's form after it drops 'azureml:'
    (_Input("/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w/data/"
            "churn-training/versions/7"), DataKey("churn-training", "7")),
    (_Input("azureml://locations/l/workspaces/w/models/churn-model/versions/4", "mlflow_model"),
     ModelKey("churn-model", "4")),
    (_Input("azureml://datastores/landing/paths/churn/d9/"), BlobPath("landing", "churn/d9/")),
    ("churned", None),  # a literal pipeline input
    (_Wrapped("churned"), None),  # a pipeline input wrapping a literal (its .path would raise)
    (_Wrapped(_Input("azureml:churn-training:5")), DataKey("churn-training", "5")),
    (_Wrapped({"type": "uri_folder", "path": "azureml://datastores/landing/paths/x/"}), BlobPath("landing", "x/")),
    (0.5, None),
    (_Input("azureml:churn-training@latest"), AssetLabel("churn-training", "latest", "data")),
    (_Input("azureml:churn-model@prod", "mlflow_model"), AssetLabel("churn-model", "prod", "model")),
])
def test_job_inputs_are_recognised_as_data_models_or_paths(value: Any, expected: Any) -> None:
    assert job_input(value, BOOK) == expected


@dataclass(frozen=True)
class _Rollout:
    """The fields of shared.services.ledger.RolloutRecord that retention reads (the ledger row has many more)."""

    state: str
    endpoint: str = "ep"
    candidate_name: str = "churn-model"
    candidate_version: str = "5"
    deployment: str = "green"
    champion_deployment: str = "blue"
    champion_model: str = "churn-model:4"
    queued_name: str = ""  # a candidate queued behind the rollout (none here)
    queued_version: str = ""

    @property
    def active(self) -> bool:
        return not rollout_finished(self.state)


def _rollout(state: str) -> _Rollout:
    return _Rollout(state)


def test_only_active_rollouts_protect_and_the_ledger_decides_what_is_active() -> None:
    records = [_rollout("shifting"), _rollout("succeeded"), _rollout(""), _rollout("rolled_back"), _rollout("failed")]
    rollouts = rollouts_from(records)  # type: ignore[arg-type]  # a stub of RolloutRecord's fields
    assert [(r.state, r.candidate, r.deployment) for r in rollouts] == [
        ("shifting", ModelKey("churn-model", "5"), "green"),
        ("failed", ModelKey("churn-model", "5"), "green")]  # not a phase: active for the ledger, in flight here
    assert all(r.in_flight for r in rollouts)
    assert {(r.champion_deployment, r.champion_model) for r in rollouts} == {("blue", ModelKey("churn-model", "4"))}


def test_the_summary_renders_the_plan_then_the_outcomes_and_serialises_to_json() -> None:
    now = datetime(2026, 11, 27, tzinfo=UTC)
    archive = Action(ActionKind.ARCHIVE_DATA, DataKey("churn-training", "1"), "created 90 days ago (> 30)", "r1")
    tier = Action(ActionKind.TIER_BLOB, BlobKey("landing", "x.csv"), "modified 40 days ago", "r2", tier=BlobTier.COOL)
    plan = RetentionPlan(now, (archive, tier), (Protected(DataKey("churn-training", "2"), "tagged evergreen.keep"),))
    summary = RetentionSummary("run-1", False, plan, (Outcome(archive, "done"), Outcome(tier, "failed", "boom")))
    text = summary.render()
    assert "archive_data" in text and "tier_blob->Cool" in text and "tagged evergreen.keep" in text
    assert "Applied (run run-1): 1 done, 1 failed" in text and "(boom)" in text
    assert summary.counts == {"done": 1, "failed": 1} and [o.action for o in summary.failed] == [tier]
    doc = json.loads(summary.to_json())
    assert doc["actions"][1] == {"kind": "tier_blob", "target": "blob:landing/x.csv", "reason": "modified 40 days ago",
                                 "rule": "r2", "tier": "Cool", "key": tier.key}
    assert doc["protected"] == [{"target": "data:churn-training:2", "reason": "tagged evergreen.keep"}]
    dry = RetentionSummary("run-2", True, plan).render()
    assert "Dry run: nothing was changed." in dry and "Applied" not in dry


def test_defect4_as_of_without_dry_run_is_a_usage_error_and_applies_nothing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from shared import cli

    runs: list[dict[str, Any]] = []
    monkeypatch.setattr(cli, "run_retention", lambda **kwargs: runs.append(kwargs) or 0)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["retention", "--as-of", "2030-01-01T00:00:00+00:00"])
    assert exit_.value.code == 2 and runs == []
    assert "--as-of previews a future run and requires --dry-run" in capsys.readouterr().err
    assert cli.main(["retention", "--dry-run", "--as-of", "2030-01-01"]) == 0
    assert runs == [{"dry_run": True, "as_json": False, "as_of": datetime(2030, 1, 1, tzinfo=UTC)}]


def _retention_sources(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, dict[str, Any]]:
    """The ledger `_Clients.retention` is built on, and the arguments it gives the RetentionRunner."""
    from shared import composition
    from shared.adapters.memory.tables import MemoryTable
    from shared.config.settings import load_settings
    from shared.services import retention as retention_service
    from shared.services.ledger import Ledger

    given: dict[str, Any] = {}
    monkeypatch.setattr(retention_service, "RetentionRunner", lambda **kwargs: given.update(kwargs))
    clients = composition._Clients(load_settings(ENV))
    ledger = Ledger(MemoryTable())
    clients.__dict__.update(ledger=ledger, audit=object(), data_blobs=object(),
                            azureml=type("Aml", (), {"workspace_rest": lambda self: object()})())
    clients.retention(load_policy(REPO / "evergreen.yaml"))
    return ledger, given


def test_the_composition_root_feeds_retention_the_promoters_open_comparisons(monkeypatch: pytest.MonkeyPatch) -> None:
    """`_Clients.retention` hands the runner the ledger's comparison work, the same rows the promoter indexes."""
    from shared.services import retention as retention_service

    ledger, given = _retention_sources(monkeypatch)
    ledger.track_comparison("cmp-1", {"evergreen.model": "m:3"})
    [read] = retention_service.comparisons_from(given["comparisons"]())
    assert (read.job, read.challenger) == ("cmp-1", ModelKey("m", "3"))


def test_the_composition_root_feeds_retention_the_promoters_waiting_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """`_Clients.retention` hands the runner the ledger's candidates waiting for their evaluation data, the same
    rows the promoter indexes (`Ledger.track_waiting`)."""
    from shared.services import retention as retention_service

    ledger, given = _retention_sources(monkeypatch)
    ledger.track_waiting("m", "3", "m-eval", "m-eval@latest", "ev-3")
    [read] = retention_service.waiting_from(given["waiting"]())
    assert (read.candidate, read.data_asset) == (ModelKey("m", "3"), "m-eval")

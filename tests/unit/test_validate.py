"""`validate`: the shipped policy and schema, the cross-checks that need a workspace, the command's output."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import shared.config.validate as validate_module
from shared.adapters.azure.workspace_facts import AmlPipelineReader
from shared.config.policy import load_policy, parse_policy
from shared.config.retention import EXAMPLE_YAML, parse_retention
from shared.config.validate import (
    SCHEMA_PATH,
    PipelineFacts,
    Problem,
    Severity,
    YamlPipelineReader,
    main,
    policy_schema,
    schema_text,
    validate,
)
from shared.errors import ConfigurationError, OperationFailedError

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "fixtures" / "policies"
SHIPPED = REPO / "evergreen.yaml"


class Workspace:
    """A hand-written WorkspaceFacts: the names a workspace has, or the error listing them raises."""

    def __init__(self, computes: set[str], datastores: set[str], error: Exception | None = None) -> None:
        self._computes, self._datastores, self._error = frozenset(computes), frozenset(datastores), error

    def compute_names(self) -> frozenset[str]:
        if self._error is not None:
            raise self._error
        return self._computes

    def datastore_names(self) -> frozenset[str]:
        return self._datastores


# -- the shipped policy and its schema ------------------------------------------------------------------------
def test_the_shipped_schema_is_generated_from_the_models() -> None:
    """Regenerate with `python -m shared.config.validate --write-schema` when this fails."""
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text()


def test_editors_find_the_schema_from_the_first_line() -> None:
    first = SHIPPED.read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=./schema/evergreen.schema.json"
    assert (SHIPPED.parent / first.split("$schema=", 1)[1]).resolve() == SCHEMA_PATH


@pytest.mark.parametrize("policy", [SHIPPED, *sorted(CORPUS.glob("good_*.yaml"))], ids=lambda p: p.name)
def test_good_policies_pass_the_json_schema_as_an_editor_checks_them(policy: Path) -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(yaml.safe_load(policy.read_text())))
    assert [e.message for e in errors] == []


def test_the_json_schema_refuses_what_validate_refuses() -> None:
    validator = jsonschema.Draft202012Validator(policy_schema())
    for case in ("unknown_nested_key", "enum_typo", "missing_required_key", "canary_steps_not_ending_at_100"):
        document = yaml.safe_load((CORPUS / f"{case}.yaml").read_text())
        if case == "canary_steps_not_ending_at_100":  # a rule between values: only validate knows it
            assert list(validator.iter_errors(document)) == []
        else:
            assert list(validator.iter_errors(document)), case


def test_the_schema_has_the_new_fields_and_one_spelling() -> None:
    text = schema_text()
    assert '"registered_elsewhere"' in text and '"metrics"' in text and '"keep_top_k"' in text
    assert "keepTopK" not in text and "daysAfter" not in text and "dataVersions" not in text


def test_the_shipped_policy_has_no_problem_with_either_pipeline_reader() -> None:
    for reader in (YamlPipelineReader(), AmlPipelineReader()):
        report = validate(SHIPPED, pipelines=reader, landing_container="landing")
        assert report.problems == () and report.policy is not None


def test_both_readers_see_the_same_facts_of_the_shipped_pipelines() -> None:
    for pipeline in ("ml/pipeline.yml", "ml/regression/pipeline.yml"):
        assert YamlPipelineReader().read(REPO / pipeline) == AmlPipelineReader().read(REPO / pipeline)
    facts = YamlPipelineReader().read(REPO / "ml/pipeline.yml")
    assert {"training_data", "model_name", "data_asset", "data_version"} <= facts.inputs
    assert facts.computes == {"cpu-cluster"}


def test_load_job_reports_a_file_it_cannot_load() -> None:
    with pytest.raises(ValueError, match=r"^is a CommandJob, not a pipeline job|^cannot be loaded by azure-ai-ml"):
        AmlPipelineReader().read(CORPUS / "pipelines" / "command.yml")


# -- the workspace ---------------------------------------------------------------------------------------------
def test_computes_and_datastores_are_checked_when_a_workspace_is_reachable() -> None:
    report = validate(CORPUS / "good_base.yaml", workspace=Workspace({"cpu-clustr"}, {"landng"}))
    assert [p.line() for p in report.problems] == [
        "error: retraining[0].pipeline: names the compute 'cpu-cluster', which the workspace does not have "
        "(did you mean 'cpu-clustr'?)",
        "error: datasets[0].datastore: 'landing' is not a datastore of the workspace (did you mean 'landng'?)",
        "error: datasets[1].datastore: 'landing' is not a datastore of the workspace (did you mean 'landng'?)",
    ]
    assert validate(CORPUS / "good_base.yaml", workspace=Workspace({"cpu-cluster"}, {"landing"})).problems == ()


def test_an_unreachable_workspace_is_a_note_not_an_error() -> None:
    down = Workspace(set(), set(), OperationFailedError("listing the workspace's computes failed: 403"))
    (problem,) = validate(CORPUS / "good_base.yaml", workspace=down).problems
    assert problem.severity is Severity.NOTE and "403" in problem.message and "skipped" in problem.message
    (note,) = validate(CORPUS / "good_base.yaml", env={}).problems
    assert note.line() == "note: (workspace): not reachable: the compute and datastore checks were skipped"


# -- spellings -------------------------------------------------------------------------------------------------
def test_camel_case_retention_parses_to_the_same_rules_with_one_warning_each() -> None:
    renames = [("protect_tag", "protectTag"), ("data_versions", "dataVersions"),
               ("model_versions", "modelVersions"), ("job_outputs", "jobOutputs"),
               ("keep_latest", "keepLatest"), ("keep_top_k", "keepTopK"),
               ("days_after_creation_greater_than", "daysAfterCreationGreaterThan"),
               ("days_after_modification_greater_than", "daysAfterModificationGreaterThan"),
               ("days_after_completion_greater_than", "daysAfterCompletionGreaterThan"),
               ("tier_to_cool", "tierToCool"), ("tier_to_archive", "tierToArchive"),
               ("delete_idle", "deleteIdle"), ("hours_at_zero_traffic_greater_than", "hoursAtZeroTrafficGreaterThan")]
    camel = EXAMPLE_YAML
    for new, old in renames:
        camel = camel.replace(new, old)
    snake = parse_retention(yaml.safe_load(EXAMPLE_YAML)["retention"])
    assert parse_retention(yaml.safe_load(camel)["retention"]) == snake
    document = {"datasets": [{"name": "d", "container": "landing", "prefix": "d/", "type": "uri_file",
                              "datastore": "landing"}], **yaml.safe_load(camel)}
    report = validate_module.check_document(document)
    written = sorted(old for _, old in renames for _ in range(camel.count(old)))
    new_of = {old: new for new, old in renames}
    found = [re.fullmatch(r"'(\w+)' is deprecated; write '(\w+)'", p.message) for p in report.warnings]
    assert report.errors == ()
    assert sorted(m[1] for m in found if m is not None) == written
    assert all(m is not None and new_of[m[1]] == m[2] for m in found)


def test_start_up_logs_each_deprecated_spelling(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shared.config.policy"):
        load_policy(CORPUS / "legacy_camel_case.yaml")
    assert "retention.rules[0].actions.keepLatest: 'keepLatest' is deprecated; write 'keep_latest'" in caplog.text


def test_parse_policy_checks_the_document_but_reads_no_file() -> None:
    document = yaml.safe_load((CORPUS / "several_mistakes.yaml").read_text())
    with pytest.raises(ConfigurationError) as raised:
        parse_policy(document, source="evergreen.yaml")
    assert list(raised.value.problems) == ["datasets[0].prefix: must end with '/'",
                                           "models[0].promotion.min_improvment: unknown key "
                                           "(did you mean 'min_improvement'?)"]


# -- the command -----------------------------------------------------------------------------------------------
def test_main_prints_one_line_per_problem_and_exits_1_on_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    policy = CORPUS / "several_mistakes.yaml"
    assert main(["--policy", str(policy)]) == 1
    out = capsys.readouterr().out.splitlines()
    expected = (CORPUS / "several_mistakes.expected").read_text().splitlines()
    assert out[:len(expected)] == [f"{policy}: {line}" for line in expected]
    assert out[len(expected):] == [
        f"{policy}: note: (workspace): not reachable: the compute and datastore checks were skipped",
        f"{policy}: invalid: 5 error(s), 0 warning(s)",
    ]


def test_main_exits_0_on_warnings_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--policy", str(CORPUS / "legacy_direction.yaml")], workspace=Workspace({"cpu-cluster"},
                                                                                          {"landing"})) == 0
    out = capsys.readouterr().out
    assert "warning: models[0].promotion.direction: 'max' is deprecated" in out
    assert "ok: 0 error(s), 1 warning(s)" in out


def test_json_reports_every_problem_with_its_fields_and_the_same_exit_code(
        capsys: pytest.CaptureFixture[str]) -> None:
    policy = CORPUS / "several_mistakes.yaml"
    assert main(["--policy", str(policy), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert (doc["source"], doc["ok"], doc["errors"], doc["warnings"]) == (str(policy), False, 5, 0)
    expected = (CORPUS / "several_mistakes.expected").read_text().splitlines()
    described = [Problem(p["path"], p["message"], p["hint"], Severity(p["severity"])).line() for p in doc["problems"]]
    assert described[:len(expected)] == expected
    assert main(["--policy", str(CORPUS / "legacy_direction.yaml"), "--json"],
                workspace=Workspace({"cpu-cluster"}, {"landing"})) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_write_schema_writes_what_the_test_compares(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "schema" / "evergreen.schema.json"
    monkeypatch.setattr(validate_module, "SCHEMA_PATH", target)
    monkeypatch.setattr(validate_module, "APP_ROOT", tmp_path)
    assert main(["--write-schema"]) == 0
    assert target.read_text(encoding="utf-8") == schema_text()


def test_a_problem_line_carries_path_message_and_hint() -> None:
    problem = Problem("models[0].promotion.metric", "'auc' is not a metric the pipeline writes", "roc_auc")
    assert problem.line() == ("error: models[0].promotion.metric: 'auc' is not a metric the pipeline writes "
                              "(did you mean 'roc_auc'?)")


def test_the_facts_of_a_pipeline_are_read_from_its_yaml(tmp_path: Path) -> None:
    path = tmp_path / "p.yml"
    path.write_text("type: pipeline\ntags: {evergreen.metrics: 'rmse, mae'}\ninputs: {a: 1}\n"
                    "jobs: {train: {compute: azureml:gpu}}\n")
    assert YamlPipelineReader().read(path) == PipelineFacts(frozenset({"a"}), frozenset({"gpu"}),
                                                            frozenset({"rmse", "mae"}))
    path.write_text("type: pipeline\ninputs: [unclosed\n")
    with pytest.raises(ValueError, match="cannot read it as YAML"):
        YamlPipelineReader().read(path)


def test_no_workspace_settings_no_workspace_facts() -> None:
    from shared.adapters.azure.workspace_facts import AmlWorkspaceFacts, workspace_facts

    credential: Any = object()  # never used: nothing is listed here
    assert workspace_facts(credential, {"AZURE_SUBSCRIPTION_ID": "s", "AZURE_RESOURCE_GROUP": "rg"}) is None
    assert isinstance(workspace_facts(credential, {"AZURE_SUBSCRIPTION_ID": "s", "AZURE_RESOURCE_GROUP": "rg",
                                                   "AZUREML_WORKSPACE_NAME": "ws"}), AmlWorkspaceFacts)


def test_the_inputs_validate_requires_are_exactly_those_every_submission_sets() -> None:
    from shared.config.validate import EVERGREEN_INPUTS
    from shared.domain.retrain import SubmitRetrain, pipeline_submission

    (entry,) = [r for r in load_policy(SHIPPED).retraining if r.dataset == "house-prices"]
    decision = SubmitRetrain(dataset=entry.dataset, asset_name=entry.dataset, data_version="3", asset_type="uri_file",
                             job_name="job", pipeline=entry, reason="test")
    submission = pipeline_submission(decision, REPO, "event-1")
    set_by_evergreen = {submission.data_input_name, *submission.inputs} - set(entry.inputs)
    assert set_by_evergreen == set(EVERGREEN_INPUTS)

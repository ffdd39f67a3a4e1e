"""`python -m shared.cli`: argument parsing, filters and rendering, pure (no storage, no network)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared import cli
from shared.adapters.memory.tables import MemoryTable
from shared.cli import operate
from shared.cli.operate import age, matches, parse_target, render_audit, render_status, run_audit, select
from shared.cli.tables import table
from shared.domain.audit import AuditRecord
from shared.domain.vocabulary import OperatorAction, RetrainAction
from shared.services.audit import TableAuditLog
from shared.services.operator import (
    ApprovalStatus,
    ComparisonStatus,
    OperatorOutcome,
    OperatorRefused,
    RolloutStatus,
    Status,
)
from shared.services.retrain import RetrainOutcome

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
LONG = ("gate: candidate roc_auc 0.8123 does not beat the champion's 0.8120 by min_improvement 0.01 "
        "(difference 0.0003); the champion keeps serving")


def rec(kind: str = "promotion.skipped", reason: str = "r", event: str = "evt-1", **assets: str) -> AuditRecord:
    return AuditRecord(kind, "skip", reason, event, assets, at=AT)


# -- tables: nothing is cut --------------------------------------------------------------------------------
def test_a_long_cell_wraps_onto_more_lines_and_loses_nothing() -> None:
    text = render_audit([rec(reason=LONG, model="churn:3")])
    lines = text.splitlines()
    assert lines[0].startswith("time (UTC)") and len(lines) > 3  # header, rule, and the row on several lines
    assert all(len(line) <= 6 * 60 + 5 * 2 for line in lines)
    words = " ".join(line for line in lines[2:]).split()
    assert all(word in words for word in LONG.split())  # every word of the reason is printed


def test_wide_keeps_each_record_on_one_line() -> None:
    lines = render_audit([rec(reason=LONG)], wide=True).splitlines()
    assert len(lines) == 3 and LONG in lines[2]


def test_a_table_of_short_cells_is_one_line_per_row() -> None:
    assert table([("a", "bb"), ("ccc", "d")]) == "a    bb\n---  --\nccc  d"


# -- audit filters ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("filters", "expected"), [
    ({"model": "churn"}, True), ({"model": "churn:3"}, True), ({"model": "churn:4"}, False), ({"model": "chu"}, False),
    ({"endpoint": "churn-online"}, True), ({"endpoint": "other"}, False),
    ({"event": "evt-1"}, True), ({"event": "evt-2"}, False),
    ({"model": "churn", "endpoint": "other"}, False),
])
def test_model_endpoint_and_event_filters(filters: dict[str, str], expected: bool) -> None:
    assert matches(rec(model="churn:3", endpoint="churn-online"), **filters) is expected


@pytest.mark.parametrize("assets", [{"data": "churn-training:4"}, {"batch": "churn-training:2026-11/"},
                                    {"dataset": "churn-training"}])
def test_the_dataset_filter_matches_data_batch_and_dataset_assets(assets: dict[str, str]) -> None:
    assert matches(rec(**assets), dataset="churn-training")
    assert not matches(rec(**assets), dataset="churn")


def test_select_applies_the_limit_after_the_filters() -> None:
    records = [rec(event=f"e{i}", model="a:1" if i % 2 else "b:1") for i in range(10)]
    args = argparse.Namespace(limit=3, model="a", endpoint="", dataset="", event="")
    assert [r.event_id for r in select(records, args)] == ["e1", "e3", "e5"]


def test_audit_json_prints_every_field_whole(capsys: pytest.CaptureFixture[str]) -> None:
    log = TableAuditLog(MemoryTable())
    log.record(AuditRecord("promotion.skipped", "skip", LONG, "evt-9", {"model": "churn:3"},
                           at=datetime.now(UTC)))
    log.record(AuditRecord("promotion.skipped", "skip", "other", "evt-8", {"model": "ref:1"}, at=datetime.now(UTC)))
    args = argparse.Namespace(days=1, kind="", limit=50, model="churn", endpoint="", dataset="", event="",
                              json=True, wide=False)
    assert run_audit(args, log) == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["reason"] == LONG and doc["event"] == "evt-9" and doc["assets"] == {"model": "churn:3"}


# -- parsing ------------------------------------------------------------------------------------------------------
def test_every_command_takes_json() -> None:
    parser, _ = cli.build_parser()
    for argv in (["audit"], ["status"], ["rollout", "abort", "ep"], ["rollout", "resume", "ep"], ["retrain", "d"],
                 ["retention"], ["reconcile"], ["redrive", "list"], ["redrive", "show", "x"],
                 ["redrive", "replay", "x"], ["approve", "m:1", "--reason", "r"], ["reject", "m:1", "--reason", "r"],
                 ["lineage", "m:1"]):
        assert parser.parse_args([*argv, "--json"]).json is True, argv
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    # every command is in the list above; `validate` has its own parser (tests/unit/test_validate.py: --json)
    assert set(commands.choices) == {"audit", "status", "rollout", "retrain", "retention", "reconcile", "redrive",
                                     "approve", "reject", "lineage", "validate"}


def test_audit_parses_its_filters() -> None:
    parser, _ = cli.build_parser()
    args = parser.parse_args(["audit", "--model", "churn", "--endpoint", "ep", "--dataset", "d", "--event", "e",
                              "--kind", "rollout.", "--days", "3", "--limit", "5", "--wide"])
    assert (args.model, args.endpoint, args.dataset, args.event, args.kind, args.days, args.limit, args.wide) == (
        "churn", "ep", "d", "e", "rollout.", 3, 5, True)


@pytest.mark.parametrize(("text", "expected"), [("churn", ("churn", None)), ("churn:4", ("churn", "4"))])
def test_retrain_target(text: str, expected: tuple[str, str | None]) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize("text", [":4", "churn:"])
def test_a_retrain_target_with_an_empty_part_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected DATASET or DATASET:VERSION"):
        parse_target(text)


def test_the_operator_is_named_by_by_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVERGREEN_OPERATOR", "ops-bot")
    assert operate.operator_name("ana") == "ana"
    assert operate.operator_name("") == "ops-bot"


def test_validate_passes_its_arguments_to_the_validator_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[list[str], dict[str, object]]] = []
    # The real readers import names from the real module: load them before it is faked (this test alone too).
    importlib.import_module("shared.adapters.azure.workspace_facts")
    fake = types.ModuleType("shared.config.validate")
    fake.main = lambda argv, **readers: seen.append((argv, readers)) or 1  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "shared.config.validate", fake)
    for key in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME"):
        monkeypatch.delenv(key, raising=False)
    assert cli.main(["validate", "--policy", "other.yaml"]) == 1
    [(argv, readers)] = seen
    assert argv == ["--policy", "other.yaml"]
    assert type(readers["pipelines"]).__name__ == "AmlPipelineReader"  # azure-ai-ml's load_job, as the issue asks
    assert "workspace" in readers  # None here: no workspace settings in this test's environment


# -- exit codes and output of the operator commands -------------------------------------------------------------
class StubOperator:
    """Answers like the Operator; `refuse` makes every action refused."""

    def __init__(self, refuse: str = "") -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.refuse = refuse

    def _maybe_refuse(self) -> None:
        if self.refuse:
            raise OperatorRefused(self.refuse)

    def abort(self, endpoint: str, *, who: str, reason: str) -> OperatorOutcome:
        self.calls.append(("abort", endpoint, who, reason))
        self._maybe_refuse()
        return OperatorOutcome(OperatorAction.ABORTED, endpoint, "moved to rollback")

    def resume(self, endpoint: str, *, who: str, reason: str = "") -> OperatorOutcome:
        self.calls.append(("resume", endpoint, who, reason))
        self._maybe_refuse()
        return OperatorOutcome(OperatorAction.RESUMED, endpoint, "re-sent")

    def retrain(self, dataset: str, version: str | None, *, who: str, reason: str = "") -> RetrainOutcome:
        self.calls.append(("retrain", dataset, version, who))
        self._maybe_refuse()
        return RetrainOutcome(RetrainAction.SUBMITTED, "job j (NotStarted)", "j", f"{dataset}:{version}")


def parsed(*argv: str) -> argparse.Namespace:
    return cli.build_parser()[0].parse_args(list(argv))


def test_abort_prints_what_it_did_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    stub = StubOperator()
    assert operate.run_rollout(parsed("rollout", "abort", "ep", "--reason", "slow", "--by", "ana"), stub) == 0  # type: ignore[arg-type]
    assert stub.calls == [("abort", "ep", "ana", "slow")]
    assert capsys.readouterr().out == "aborted: moved to rollback\n"


def test_a_refused_abort_exits_2_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    stub = StubOperator(refuse="no rollout on endpoint 'ep'")
    assert operate.run_rollout(parsed("rollout", "abort", "ep", "--json"), stub) == 2  # type: ignore[arg-type]
    out = capsys.readouterr()
    assert json.loads(out.out) == {"error": "no rollout on endpoint 'ep'"}
    assert out.err == "refused: no rollout on endpoint 'ep'\n"


def test_retrain_json_and_a_bad_target(capsys: pytest.CaptureFixture[str]) -> None:
    stub = StubOperator()
    assert operate.run_retrain(parsed("retrain", "churn:4", "--json", "--by", "ana"), stub) == 0  # type: ignore[arg-type]
    assert json.loads(capsys.readouterr().out) == {"action": "submitted", "detail": "job j (NotStarted)", "job": "j",
                                                   "data": "churn:4"}
    assert operate.run_retrain(parsed("retrain", "churn:"), stub) == 2  # type: ignore[arg-type]
    assert stub.calls == [("retrain", "churn", "4", "ana")]


def test_a_missing_setting_is_one_message_and_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    for key in ("AzureWebJobsStorage", "AzureWebJobsStorage__accountName", "AzureWebJobsStorage__blobServiceUri"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(cli, "use_local_settings", lambda: None)
    assert cli.main(["audit"]) == 2
    err = capsys.readouterr().err
    assert "AzureWebJobsStorage: missing" in err and "AZURE_SUBSCRIPTION_ID" not in err
    assert "Traceback" not in err


# -- status rendering -------------------------------------------------------------------------------------------
def test_status_text_names_each_section_and_the_rollouts_age() -> None:
    rollout = RolloutStatus(endpoint="ep", candidate="m:2", champion="m:1", phase="shifting", phase_since=AT,
                            age_seconds=3725, due_at=None, queued="", reason="shifting 50%")
    text = render_status(Status(at=AT, batches=[], retraining=[], rollouts=[rollout], last_retention=None,
                                notes=["no retention run in the last 7 days"]))
    assert "Open batches\n  none" in text and "Retraining\n  none" in text
    assert "1h02m" in text and "shifting 50%" in text
    assert "Last retention run: none" in text and text.endswith("note: no retention run in the last 7 days")
    assert "Comparisons in flight\n  none" in text and "Awaiting approval\n  none" in text


def test_status_text_lists_comparisons_in_flight_and_candidates_awaiting_approval() -> None:
    waiting = ApprovalStatus(endpoint="ep", candidate="m:3", state="pending", requested_at=AT,
                             expires_at=AT + timedelta(hours=2), gate_reason="auc 0.91 > 0.88")
    comparing = ComparisonStatus(job="cmp-m-4-3", candidate="m:4", champion="", since=AT)
    text = render_status(Status(at=AT, batches=[], retraining=[], rollouts=[], last_retention=None,
                                approvals=[waiting], comparisons=[comparing]))
    approvals = text.split("Awaiting approval\n", 1)[1].split("\n\n", 1)[0]
    assert "m:3" in approvals and "pending" in approvals and "auc 0.91 > 0.88" in approvals
    assert (AT + timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S") in approvals
    comparisons = text.split("Comparisons in flight\n", 1)[1].split("\n\n", 1)[0]
    assert "cmp-m-4-3" in comparisons and "(scored alone)" in comparisons


@pytest.mark.parametrize(("seconds", "text"), [(42, "42s"), (307, "5m07s"), (11040, "3h04m"), (183600, "2d03h")])
def test_age(seconds: float, text: str) -> None:
    assert age(seconds) == text

"""Azure Monitor in the Bicep (`infra/modules/monitoring.bicep`, `infra/workbook.json`), checked offline.

Both parse; the workbook has the Notebook/1.0 shape; every KQL query (alert rules and workbook) names only
attributes of the one list (`shared.domain.telemetry.ATTRIBUTE_NAMES`), each alert at least one, and each
alert's attributes are ones the code really sets (`Attr.X` used in `shared/` or `functions/`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from shared.domain.telemetry import ATTRIBUTE_NAMES, Attr
from shared.domain.vocabulary import FINISHED_JOB_STATUSES, Phase
from tests.infra import checks
from tests.infra.bicep import Template

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
MONITORING = INFRA / "modules" / "monitoring.bicep"
WORKBOOK = INFRA / "workbook.json"
ALERTS = {"dead-letters": Attr.DEAD_LETTERS, "retraining-failed": Attr.JOB_STATUS,
          "rollout-rolled-back": Attr.ROLLOUT_PHASE, "stuck-work": Attr.STUCK,
          "retention-errors": Attr.RETENTION_ERRORS}
"""Each alert the issue asks for, and the attribute its condition is on."""

_BRACKET = re.compile(r"""customDimensions\s*\[\s*["']([^"']+)["']\s*\]""")
_DOTTED = re.compile(r"customDimensions\.([A-Za-z_][\w.]*)")
_ATTR_USE = re.compile(r"\bAttr\.([A-Z_]+)\b")


def attributes_in(query: str) -> set[str]:
    """Every customDimensions attribute a KQL query names (`customDimensions["a.b"]` or `customDimensions.a_b`)."""
    return set(_BRACKET.findall(query)) | set(_DOTTED.findall(query))


def unknown_attributes(queries: Iterable[tuple[str, str]]) -> list[str]:
    """`where: attribute` for each attribute a query names that is not in ATTRIBUTE_NAMES."""
    return [f"{where}: {name}" for where, query in queries for name in sorted(attributes_in(query))
            if name not in ATTRIBUTE_NAMES]


def alert_rules(path: Path = MONITORING) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = Template.load(path).evaluator().variable("alertRules")
    return rules


def workbook_queries(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"workbook {item['name']}", item["content"]["query"]) for item in doc["items"] if item["type"] == 3]


def all_queries(rules: list[dict[str, Any]], doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"alert {r['name']}", r["query"]) for r in rules] + workbook_queries(doc)


def attributes_the_code_sets() -> set[str]:
    """The values of every `Attr.X` referenced in the product (`shared/`, `functions/`) outside its definition."""
    files = [p for top in ("shared", "functions") for p in (REPO / top).rglob("*.py")
             if p != REPO / "shared" / "domain" / "telemetry.py"]
    used = {m for p in files for m in _ATTR_USE.findall(p.read_text(encoding="utf-8"))}
    return {Attr[m].value for m in used if m in Attr.__members__}


@pytest.fixture(scope="module")
def workbook() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(WORKBOOK.read_text(encoding="utf-8"))
    return doc


# -- parsing and shape --------------------------------------------------------------------------------------
def test_the_monitoring_module_parses_and_main_deploys_it_with_the_alert_email_parameter() -> None:
    assert MONITORING in checks.bicep_files(INFRA)
    tree = Template.load(MONITORING).tree
    types = {symbol: r["type"] for symbol, r in tree["resources"].items()}
    assert types == {"actionGroup": "Microsoft.Insights/actionGroups",
                     "alerts": "Microsoft.Insights/scheduledQueryRules", "workbook": "Microsoft.Insights/workbooks"}
    main = Template.load(INFRA / "main.bicep")
    assert main.parameters["alertEmail"]["default"] == ""
    (module,) = [m for m in main.modules.values() if checks.module_path(m) == "modules/monitoring.bicep"]
    text = MONITORING.read_text(encoding="utf-8")
    assert "emailAddress: alertEmail" in text and "scheduledQueryRules@" in text and "workbooks@" in text
    assert "loadTextContent('../workbook.json')" in text
    assert module  # deployed by main.bicep
    params = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert params["alertEmail"]["value"] == "${EVERGREEN_ALERT_EMAIL=}"


def test_there_is_one_alert_rule_per_condition_the_issue_names() -> None:
    rules = alert_rules()
    assert [r["name"] for r in rules] == list(ALERTS)
    for rule in rules:
        assert rule["query"].startswith("union requests, dependencies"), rule["name"]
        assert rule["severity"] in (0, 1, 2, 3, 4) and rule["description"], rule["name"]


def test_the_workbook_is_a_notebook_with_a_time_range_and_a_query_per_view(workbook: dict[str, Any]) -> None:
    assert workbook["version"] == "Notebook/1.0" and isinstance(workbook["items"], list)
    assert "$schema" in workbook and "fallbackResourceIds" in workbook
    names = [item["name"] for item in workbook["items"]]
    assert len(names) == len(set(names)), "item names must be unique"
    for item in workbook["items"]:
        assert item["type"] in (1, 3, 9) and isinstance(item["content"], dict), item["name"]
        if item["type"] == 3:
            content = item["content"]
            assert content["version"] == "KqlItem/1.0" and content["query"] and content["title"], item["name"]
            assert content["resourceType"] == "microsoft.insights/components", item["name"]
    (parameters,) = [i for i in workbook["items"] if i["type"] == 9]
    assert {p["name"] for p in parameters["content"]["parameters"]} == {"TimeRange", "Dataset", "Model", "Endpoint"}
    # the status page's views: data versions, batches, models and gate decisions, endpoints, retention, health, tail
    assert {"data-versions", "batches", "gate-decisions", "traffic", "rollout-timeline", "retention-runs",
            "health", "tail"} <= set(names)


# -- the attribute names ------------------------------------------------------------------------------------
def test_every_query_names_only_declared_attributes_and_each_alert_its_own(workbook: dict[str, Any]) -> None:
    rules = alert_rules()
    assert unknown_attributes(all_queries(rules, workbook)) == []
    for rule in rules:
        named = attributes_in(rule["query"])
        assert ALERTS[rule["name"]].value in named, (rule["name"], named)
    assert all(attributes_in(query) for _, query in workbook_queries(workbook) if "customDimensions" in query)


def test_an_unknown_attribute_in_a_query_is_caught(tmp_path: Path, workbook: dict[str, Any]) -> None:
    mutated = tmp_path / "modules" / "monitoring.bicep"
    mutated.parent.mkdir()
    mutated.write_text(MONITORING.read_text(encoding="utf-8").replace('"evergreen.stuck"', '"evergreen.stuk"', 1))
    assert unknown_attributes(all_queries(alert_rules(mutated), workbook)) == ["alert stuck-work: evergreen.stuk"]
    doc = json.loads(json.dumps(workbook).replace('customDimensions[\\"evergreen.traffic\\"]',
                                                  'customDimensions.evergreen_traffic_pct', 1))
    assert unknown_attributes(workbook_queries(doc)) == ["workbook traffic: evergreen_traffic_pct"]


def test_the_values_the_alerts_compare_with_are_the_vocabulary_s() -> None:
    by_name = {r["name"]: r["query"] for r in alert_rules()}
    assert f'== "{Phase.ROLLED_BACK.value}"' in by_name["rollout-rolled-back"]
    statuses = set(re.findall(r'"(\w+)"', by_name["retraining-failed"].split(" in ", 1)[1].split(")", 1)[0]))
    assert statuses and statuses <= FINISHED_JOB_STATUSES and "completed" not in statuses


def test_each_alert_s_attribute_is_one_the_code_really_sets() -> None:
    emitted = attributes_the_code_sets()
    missing = {name: attr.value for name, attr in ALERTS.items() if attr.value not in emitted}
    assert missing == {}, f"alerts on attributes no code sets (annotate them in shared/ or functions/): {missing}"

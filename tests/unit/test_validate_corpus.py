"""The corpus of broken policies (`tests/fixtures/policies/`): `validate` reports each one's exact lines.

Each `<case>.yaml` has a `<case>.expected` next to it: the lines `validate` must print, in order (a
`<case>.env.json` gives app settings, for the timer schedules). Start-up must refuse each file that
has an error with one ConfigurationError listing exactly those errors, and accept the others.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.config.policy import load_policy
from shared.config.validate import Severity, validate
from shared.errors import ConfigurationError

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "policies"
BROKEN = sorted(p.stem for p in CORPUS.glob("*.yaml") if not p.stem.startswith("good_"))
# The seven mistakes of issue 16 that passed start-up and failed later, and the reporting cases it names.
ISSUE_CASES = ("promotion_metric_not_produced", "model_name_typo", "input_not_declared_by_pipeline",
               "code_folder_missing", "keep_top_k_metric_unknown", "filters_match_nothing", "cron_invalid",
               "several_mistakes", "empty", "bad_yaml")


def _env(case: str) -> dict[str, str] | None:
    path = CORPUS / f"{case}.env.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def test_the_corpus_is_large_and_names_the_issues_cases() -> None:
    assert len(BROKEN) >= 30
    assert set(ISSUE_CASES) <= set(BROKEN)
    assert all((CORPUS / f"{case}.expected").is_file() for case in BROKEN)


@pytest.mark.parametrize("case", BROKEN)
def test_validate_reports_exactly_the_pinned_lines(case: str) -> None:
    expected = (CORPUS / f"{case}.expected").read_text(encoding="utf-8").splitlines()

    report = validate(CORPUS / f"{case}.yaml", env=_env(case))

    assert [p.line() for p in report.problems] == expected
    assert expected, "every corpus file has at least one finding"
    assert not any("Traceback" in line or "\n" in line for line in expected)


@pytest.mark.parametrize("case", BROKEN)
def test_start_up_refuses_exactly_the_errors(case: str) -> None:
    report = validate(CORPUS / f"{case}.yaml")
    errors = [p.describe() for p in report.problems if p.severity is Severity.ERROR]
    if not errors:
        assert load_policy(CORPUS / f"{case}.yaml") == report.policy
        return
    with pytest.raises(ConfigurationError) as raised:
        load_policy(CORPUS / f"{case}.yaml")
    assert list(raised.value.problems) == errors


def test_several_mistakes_are_reported_in_one_run() -> None:
    report = validate(CORPUS / "several_mistakes.yaml")
    assert len(report.errors) == 5
    assert {p.path for p in report.errors} == {
        "datasets[0].prefix", "models[0].promotion.min_improvment", "retraining[0].inputs.target_col",
        "models[0].promotion.metric", "models[0].promotion.deployment.scoring_script"}


def test_bad_yaml_names_the_file_and_the_line() -> None:
    (problem,) = validate(CORPUS / "bad_yaml.yaml").problems
    assert problem.message.startswith("bad_yaml.yaml:5:1: not valid YAML")

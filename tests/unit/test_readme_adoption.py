"""The README keeps what a new user needs in a user's order, and its pipeline contract matches the code.

What each test pins: the README's top-level order; no dead relative link and no issue numbers in the
user-facing docs; the "Bring your own pipeline" contract names every input Evergreen sets, every job
tag it writes, every model key it reads, and what the fair gate needs from a model; Reference → Events
lists every subscription and every field of the events Evergreen publishes; the cost notes name every
timer and the alert rules.
"""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from shared.config.settings import SCHEDULE_DEFAULTS
from shared.config.validate import EVERGREEN_INPUTS, PIPELINE_METRICS_TAG
from shared.domain.decay import ChampionDegraded
from shared.domain.events import DataVersionRegistered
from shared.domain.telemetry import TRACEPARENT_TAG
from shared.domain.vocabulary import Tag
from tests.unit.test_ml_steps import step_module

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")
DOCS = ("README.md", "ARCHITECTURE.md", "ml/README.md", "devstack/README.md")
# The issue's order: what it is, quickstart, adapt, deploy, operate, reference, design and limits.
USER_ORDER = ("What it is", "Quickstart", "Adapt it to your model", "Deploy to Azure", "Operate", "Reference",
              "Design and limits")


def section(text: str, heading: str) -> str:
    """The text under `### heading` up to the next heading of level 1-3."""
    match = re.search(rf"^### {re.escape(heading)}\n(.*?)(?=^#{{1,3}} )", text, re.S | re.M)
    assert match, f"no section {heading!r}"
    return match.group(1)


def test_the_top_level_sections_follow_a_users_order() -> None:
    headings = re.findall(r"^## (.+)$", README, re.M)
    assert headings == list(USER_ORDER)  # everything else is a subsection of one of these


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_point_at_files_that_exist(doc: str) -> None:
    path = REPO / doc
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8"))
    dead = [link for link in links if "://" not in link and not (path.parent / link).exists()]
    assert not dead, dead


@pytest.mark.parametrize("doc", ("README.md", "ml/README.md", "devstack/README.md"))
def test_user_docs_do_not_talk_about_issue_numbers(doc: str) -> None:
    text = (REPO / doc).read_text(encoding="utf-8")
    assert not re.findall(r"[^\n]*\bissue(?:'s| #?\d+)[^\n]*", text, re.I)


def test_the_pipeline_contract_names_every_input_tag_and_key_the_code_uses() -> None:
    contract = section(README, "Bring your own pipeline")
    job_tags = (Tag.DATASET, Tag.DATA_ASSET, Tag.DATA_VERSION, Tag.TRIGGER_EVENT, Tag.RERUN)
    model_keys = (Tag.DATA_ASSET, Tag.DATA_VERSION, Tag.JOB_NAME, Tag.CODE_SHA256)
    named = [*EVERGREEN_INPUTS, *(t.value for t in job_tags), *(t.value for t in model_keys), TRACEPARENT_TAG,
             "evergreen.metric.<name>"]
    assert not [name for name in named if f"`{name}`" not in contract]


def test_the_contract_says_what_the_fair_gate_and_the_code_check_need_from_a_pipeline() -> None:
    contract = section(README, "Bring your own pipeline")
    compare, steplib = step_module("compare"), step_module("steplib")
    for name in (steplib.MODEL_META_FILE, compare.MLMODEL_FILE, PIPELINE_METRICS_TAG, "promotion.evaluation"):
        assert f"`{name}`" in contract, name
    (row,) = [line for line in contract.splitlines() if line.startswith(f"| `{Tag.CODE_SHA256.value}`")]
    assert "`rescore`" in row and "`ml/src`" in row  # the timer compares it with the deployed ml/src


def test_the_events_reference_lists_every_subscription_and_every_published_field() -> None:
    events = section(README, "Events")
    subscriptions = json.loads((REPO / "infra" / "eventgrid-subscriptions.json").read_text(encoding="utf-8"))
    for entry in subscriptions["subscriptions"]:
        names = [*entry["filter"]["includedEventTypes"], entry["destination"]["function"]]
        assert not [n for n in names if f"`{n}`" not in events], entry["name"]
        assert f"`{entry['filter']['subjectBeginsWith'].replace('/landing/', '/<landing>/')}`" in events
    _, published_table = events.split("What Evergreen publishes", 1)
    for published in (DataVersionRegistered, ChampionDegraded):
        (row,) = [line for line in published_table.splitlines() if line.startswith(f"| `{published.EVENT_TYPE}` |")]
        assert not [f.name for f in fields(published) if f"`{f.name}`" not in row], published.EVENT_TYPE


def test_the_cost_notes_name_everything_that_runs_while_idle() -> None:
    costs = re.search(r"^#### Cost notes\n(.*?)(?=^#{1,4} )", README, re.S | re.M)
    assert costs, "no Cost notes"
    assert not [key for key in SCHEDULE_DEFAULTS if f"`{key}`" not in costs.group(1)]  # every timer
    assert "alert rules" in costs.group(1) and "scheduledQueryRules" in (
        REPO / "infra" / "modules" / "monitoring.bicep").read_text(encoding="utf-8")


def test_adapting_the_policy_says_how_to_check_it() -> None:
    policy = section(README, "The lifecycle policy (`evergreen.yaml`)")
    first_line = (REPO / "evergreen.yaml").read_text(encoding="utf-8").splitlines()[0]
    schema = first_line.removeprefix("# yaml-language-server: $schema=./")
    assert "`python -m shared.cli validate [--policy FILE] [--json]`" in policy
    assert f"`{schema}`" in policy and (REPO / schema).is_file()

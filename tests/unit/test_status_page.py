"""Rendering the status page (`shared.status_page`): escaping, empty states, the chart's points, accessibility."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from html.parser import HTMLParser

from shared.services.status import (
    AuditTailView,
    DatasetStatus,
    DataVersionRow,
    Decision,
    EndpointStatus,
    HealthStatus,
    ModelStatus,
    ModelVersionRow,
    RetentionStatus,
    StatusQuery,
    StatusView,
    TrafficShare,
)
from shared.status_page import render_html, render_json
from shared.status_page.chart import trend_chart

AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text, as a browser's parser sees them."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str, css: str = "") -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and (not css or css in (a.get("class") or "").split())]


def version(v: str, metric: float | None, *, champion: bool = False, rejected: str = "") -> ModelVersionRow:
    return ModelVersionRow(version=v, metric=metric, champion=champion, rejected=rejected, comparison={})


def empty_retention(note: str = "retention is not configured for this page") -> RetentionStatus:
    return RetentionStatus(schedule="0 0 3 * * *", next_run=AT, last_run=None, plan_at=None, plan_cached_seconds=300,
                           actions=(), protected=(), suspended=(), note=note)


def view(models: tuple[ModelStatus, ...] = (), **kwargs: object) -> StatusView:
    base: dict[str, object] = dict(
        at=AT, query=StatusQuery(), datasets=(), models=models, endpoints=(), retention=empty_retention(),
        health=HealthStatus((), (), (), ()), audit=AuditTailView((), 0, False))
    base.update(kwargs)
    return StatusView(**base)  # type: ignore[arg-type]


def churn(*versions: ModelVersionRow, rejected: tuple[Decision, ...] = ()) -> ModelStatus:
    return ModelStatus(name="churn", endpoint="churn-online", metric="roc_auc", direction="higher_is_better",
                       versions=versions, decisions=rejected, rejected=rejected)


def test_the_chart_has_one_point_per_version_with_the_champion_and_rejected_marked() -> None:
    model = churn(version("1", 0.80), version("2", 0.70, rejected="worse"), version("3", 0.90, champion=True),
                  version("4", None))
    page = Tags(render_html(view((model,))))
    points = page.all("circle", "point")
    assert [p["data-version"] for p in points] == ["1", "2", "3", "4"]
    assert [p["data-version"] for p in page.all("circle", "champion")] == ["3"]
    assert [p["data-version"] for p in page.all("circle", "rejected")] == ["2"]
    assert [p["data-version"] for p in page.all("circle", "unscored")] == ["4"]
    (svg,) = page.all("svg", "trend")
    assert svg["role"] == "img" and "4 version(s), champion version 3, 1 rejected" in str(svg["aria-label"])
    chart = trend_chart(model)
    ys = {p.version: p.y for p in chart.points}
    assert ys["3"] < ys["1"] < ys["2"]  # higher metric, higher on the page
    assert chart.path.count(",") == 3  # the line joins the three scored versions


def test_hostile_text_from_tags_reasons_and_assets_is_escaped_everywhere() -> None:
    decision = Decision(at=AT, kind="promotion.skipped", decision="skip", reason=HOSTILE, event_id=HOSTILE,
                        assets={"model": "churn:2", HOSTILE: HOSTILE})
    model = churn(version("1", 0.8), version("2", 0.7, rejected=HOSTILE), rejected=(decision,))
    row = DataVersionRow("1", "uri_file", HOSTILE, {"evergreen.source_url": HOSTILE})
    dataset = DatasetStatus(name="d", versions=(row,), batches=())
    html = render_html(view((model,), datasets=(dataset,), audit=AuditTailView((decision,), 1, False),
                            query=StatusQuery(kind=HOSTILE)))
    page = Tags(html)
    assert not page.all("script") and not page.all("img")
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert HOSTILE in "".join(page.text)  # shown as text, not run


def test_an_empty_system_says_so_in_every_section() -> None:
    html = render_html(view())
    for text in ("No dataset matches the filters.", "No model matches the filters.",
                 "No endpoint matches the filters.", "No dry-run plan: retention is not configured",
                 "No dead letter.", "No poison message.", "No failed run", "Nothing stuck.",
                 "No audit record matches the filters"):
        assert text in html
    assert not Tags(html).all("circle")


def test_a_model_without_versions_and_an_endpoint_that_does_not_exist_have_empty_states() -> None:
    endpoint = EndpointStatus(name="churn-online", exists=False, state="", serving="", traffic=(), rollout=None,
                              timeline=())
    html = render_html(view((churn(),), endpoints=(endpoint,)))
    assert "No version of churn is registered yet." in html and "The endpoint does not exist yet." in html


def test_the_page_is_usable_by_keyboard_and_screen_reader() -> None:
    endpoint = EndpointStatus(name="churn-online", exists=True, state="Succeeded", serving="churn:3",
                              traffic=(TrafficShare("churn-3", 100, "churn:3", "Succeeded"),), rollout=None,
                              timeline=())
    html = render_html(view((churn(version("3", 0.9, champion=True)),), endpoints=(endpoint,)),
                       policy_datasets=("d",), policy_models=("churn",), policy_endpoints=("churn-online",))
    page = Tags(html)
    first_link = next(a for t, a in page.tags if t == "a")
    assert first_link["href"] == "#main" and page.all("main")[0]["id"] == "main"
    labelled = {str(a["for"]) for a in page.all("label")}
    fields = [a for t, a in page.tags if t in ("input", "select")]
    assert fields and all(f["id"] in labelled for f in fields)  # every field has a label
    headers = [a for t, a in page.tags if t == "th"]
    assert headers and all(h.get("scope") in ("col", "row") for h in headers)
    assert ":focus-visible" in html and '<html lang="en">' in html
    assert page.all("strong")[0]["data-serving"] == "churn:3"


def test_json_is_the_view_with_times_as_iso_text() -> None:
    doc = json.loads(render_json(view((churn(version("1", 0.8, champion=True)),))))
    assert doc["at"] == AT.isoformat() and doc["models"][0]["versions"][0]["champion"] is True
    assert doc["retention"]["next_run"] == AT.isoformat()

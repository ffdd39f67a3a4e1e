"""Blob trigger path patterns and HTTP route templates."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devstack.host.patterns import BlobPathPattern, PatternError, RouteTemplate


@pytest.mark.parametrize(
    "blob",
    [
        "a.csv",
        "with space/and more.csv",
        "ünïcødé/数据/файл.csv",
        "100% sure #1 (final)+&=;,.csv",
        "x" * 1000,
        "trailing/slash/",
        "{braces}.csv",
    ],
)
def test_name_captures_everything_after_the_container(blob: str) -> None:
    assert BlobPathPattern("landing/{name}").match(f"landing/{blob}") == {"name": blob}


@given(st.text(min_size=1).filter(lambda s: "\x00" not in s))
def test_any_blob_name_round_trips(blob: str) -> None:
    assert BlobPathPattern("landing/{name}").match(f"landing/{blob}") == {"name": blob}


def test_other_container_does_not_match() -> None:
    pattern = BlobPathPattern("landing/{name}")
    assert pattern.match("other/a.csv") is None
    assert pattern.match("landing2/a.csv") is None
    assert pattern.match("landing/") is None


def test_literal_parts_and_extension() -> None:
    pattern = BlobPathPattern("landing/streams/{name}.txt")
    assert pattern.match("landing/streams/a b.txt") == {"name": "a b"}
    assert pattern.match("landing/streams/a.csv") is None
    assert pattern.match("landing/other/a.txt") is None
    assert pattern.container == "landing"


def test_several_parameters() -> None:
    pattern = BlobPathPattern("landing/{team}/{name}.{ext}")
    assert pattern.match("landing/ml/data.v2.csv") == {"team": "ml", "name": "data.v2", "ext": "csv"}


def test_regex_characters_in_literals_are_literal() -> None:
    pattern = BlobPathPattern("landing/a+b(1)/{name}")
    assert pattern.match("landing/a+b(1)/x") == {"name": "x"}
    assert pattern.match("landing/aab1/x") is None


@pytest.mark.parametrize("template", ["landing", "landing/{na me}", "landing/{x}/{x}"])
def test_bad_blob_patterns(template: str) -> None:
    with pytest.raises(PatternError):
        BlobPathPattern(template)


def test_route_with_constraint_and_optional() -> None:
    route = RouteTemplate("items/{id:int}/{rest?}")
    assert route.match("items/5") == {"id": "5"}
    assert route.match("items/5/more") == {"id": "5", "rest": "more"}
    assert route.match("items/x") is None
    assert route.match("items/5/more/extra") is None
    assert route.match("ITEMS/7/") == {"id": "7"}


def test_route_catch_all_and_mixed_segment() -> None:
    assert RouteTemplate("files/{*path}").match("files/a/b/c.txt") == {"path": "a/b/c.txt"}
    assert RouteTemplate("files/{*path}").match("files") == {}
    assert RouteTemplate("v{version}/models").match("v2/models") == {"version": "2"}


def test_route_literal_only() -> None:
    route = RouteTemplate("registry/webhook")
    assert route.match("registry/webhook") == {}
    assert route.match("registry/webhooks") is None


def test_bad_route() -> None:
    with pytest.raises(PatternError):
        RouteTemplate("items/{bad name}")

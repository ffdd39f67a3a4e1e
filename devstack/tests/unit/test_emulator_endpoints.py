"""Online endpoint rules that need no servers: names, traffic validation, routing choice, auth, logs."""

from __future__ import annotations

import random

import pytest

from devstack.aml.endpoints import tail_lines, validate_name, validate_traffic
from devstack.aml.errors import ArmError
from devstack.aml.serving import RouteInfo, ServingManager, pick_deployment


@pytest.mark.parametrize("name", ["abc", "ep-1", "a" * 32, "Blue-Green2"])
def test_valid_names(name: str) -> None:
    validate_name("Endpoint", name)


@pytest.mark.parametrize("name", ["ab", "a" * 33, "1abc", "abc-", "a_bc", "a.bc"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ArmError, match="3-32 characters") as err:
        validate_name("Deployment", name)
    assert err.value.status == 400


READY = {"blue": "Succeeded", "green": "Succeeded", "red": "Failed"}


@pytest.mark.parametrize("traffic, mirror", [
    ({}, {}), ({"blue": 0}, {}), ({"blue": 100}, {}), ({"Blue": 30, "green": 70}, {}), ({"blue": 100}, {"green": 10}),
    ({"red": 0, "blue": 100}, {}),
])
def test_accepted_traffic(traffic: dict[str, int], mirror: dict[str, int]) -> None:
    validate_traffic(traffic, mirror, READY)


@pytest.mark.parametrize("traffic, mirror, message", [
    ({"blue": 50}, {}, "sum to 100 or 0, got 50"),
    ({"blue": 60, "green": 60}, {}, "got 120"),
    ({"ghost": 100}, {}, "ghost do not exist"),
    ({"blue": 100}, {"ghost": 10}, "Invalid mirrorTraffic: deployment"),
    ({"red": 100}, {}, "not in a Succeeded state"),
    ({"blue": 100}, {"green": 60}, "at most 50%"),
    ({"blue": 50, "green": 50}, {"green": 10}, "cannot also receive mirrored traffic"),
])
def test_rejected_traffic(traffic: dict[str, int], mirror: dict[str, int], message: str) -> None:
    with pytest.raises(ArmError, match=message) as err:
        validate_traffic(traffic, mirror, READY)
    assert err.value.status == 400


def test_pick_deployment_follows_weights() -> None:
    rng = random.Random(7)
    picks = [pick_deployment({"blue": 90, "green": 10, "red": 0}, rng) for _ in range(2000)]
    assert "red" not in picks
    assert 1650 < picks.count("blue") < 1950
    assert pick_deployment({"blue": 0}) is None
    assert pick_deployment({}) is None


def test_tail_lines() -> None:
    text = "a\nb\nc\n"
    assert tail_lines(text, 2) == "b\nc\n"
    assert tail_lines(text, None) == text
    assert tail_lines(text, 10) == text


def test_router_auth_accepts_keys_and_endpoint_tokens_only() -> None:
    mgr = ServingManager(lambda ep: None, b"k" * 32)
    info = RouteInfo("ep-one", ("primary", "secondary"), {}, {}, frozenset())
    assert mgr.authorized(info, "Bearer primary")
    assert mgr.authorized(info, "bearer secondary")
    assert not mgr.authorized(info, "Bearer wrong")
    assert not mgr.authorized(info, None)
    assert not mgr.authorized(info, "primary")
    token = mgr.issue_token("EP-ONE")["accessToken"]
    assert mgr.authorized(info, f"Bearer {token}")
    other = RouteInfo("ep-two", ("x", "y"), {}, {}, frozenset())
    assert not mgr.authorized(other, f"Bearer {token}")

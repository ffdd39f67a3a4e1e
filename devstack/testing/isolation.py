"""Each test runs with the client environment of the stack it uses, in any test order.

Two session fixtures point the SDKs at a stack through environment variables (AZUREML_DEV_URL_MFE,
IDENTITY_ENDPOINT, REQUESTS_CA_BUNDLE, …; clients read them when they are built): the emulator
fixture `aml` (devstack.testing.aml) and the end-to-end tests' `local_stack` (tests/e2e/conftest.py),
each with its own emulator. Both set their environment when they start and restore it at the end
of the session, so whichever started last would otherwise win for every later test: a test of the
emulator running after the first end-to-end test would talk to the end-to-end stack's emulator.

Here, for every test that uses one of them (directly or through another fixture) and once it is
running, its environment is applied around the whole test (setup, call, teardown, so module-scoped
fixtures built for the test see it too) and the previous environment is restored afterwards. A
test that uses both gets `local_stack`'s. A stack that starts during the test sets its own
environment, as before.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Mapping
from typing import Any

import pytest

# fixture name -> precedence order: the first one a test uses decides its environment
ENV_FIXTURES = ("local_stack", "aml")

_running: dict[str, dict[str, str]] = {}  # fixture name -> its environment, while it is set up


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None, Any, Any]:
    value = yield  # a fixture that fails to start raises here and is never recorded
    if fixturedef.argname in ENV_FIXTURES:
        env = getattr(value, "env", None)
        if isinstance(env, Mapping):
            _running[fixturedef.argname] = dict(env)
    return value


def pytest_fixture_post_finalizer(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> None:
    if fixturedef.argname in ENV_FIXTURES:
        _running.pop(fixturedef.argname, None)


def environment_for(fixturenames: list[str]) -> tuple[str, dict[str, str]] | None:
    """(fixture, environment) a test with these fixtures runs under; None: leave the environment alone."""
    for name in ENV_FIXTURES:
        if name in fixturenames and name in _running:
            return name, _running[name]
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
    chosen = environment_for(list(getattr(item, "fixturenames", ())))
    if chosen is None:
        return (yield)
    name, env = chosen
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return (yield)
    finally:
        if name in _running:  # still up; when the session just ended, its own teardown has restored everything
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

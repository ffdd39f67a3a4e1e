"""devstack.testing.isolation: a test sees the environment of the stack it uses, whichever stack started last."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

CONFTEST = textwrap.dedent("""
    import os
    from types import SimpleNamespace

    import pytest

    def _stack(key, value):
        saved = os.environ.get(key)
        os.environ[key] = value  # as the real fixtures do: set at start, restored at session end
        yield SimpleNamespace(env={key: value, "SHARED_URL": value})
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved

    @pytest.fixture(scope="session")
    def aml():
        os.environ["SHARED_URL"] = "emulator"
        yield from _stack("ONLY_AML", "emulator")

    @pytest.fixture(scope="session")
    def local_stack():
        os.environ["SHARED_URL"] = "stack"
        yield from _stack("ONLY_STACK", "stack")

    @pytest.fixture(scope="module")
    def module_client(aml):
        return os.environ["SHARED_URL"]  # built once per module, from the environment of that moment
""")

TESTS = textwrap.dedent("""
    import os

    def test_1_emulator_first(aml):
        assert os.environ["SHARED_URL"] == "emulator"

    def test_2_then_the_whole_stack(local_stack):
        assert os.environ["SHARED_URL"] == "stack"

    def test_3_emulator_again(aml, module_client):
        assert os.environ["SHARED_URL"] == "emulator"
        assert module_client == "emulator"

    def test_4_stack_again(local_stack):
        assert os.environ["SHARED_URL"] == "stack"

    def test_5_both_means_the_stack(aml, local_stack):
        assert os.environ["SHARED_URL"] == "stack"

    def test_6_neither_is_left_alone():
        assert "SHARED_URL" in os.environ
""")


@pytest.mark.parametrize(("plugin", "outcome"), [
    ("devstack.testing.isolation", {"passed": 6}),
    (None, {"passed": 5, "failed": 1}),  # without it, the stack started last wins: test 3 and its module fixture
])
def test_each_test_gets_the_environment_of_its_stack(
    pytester: pytest.Pytester, plugin: str | None, outcome: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("SHARED_URL", "ONLY_AML", "ONLY_STACK"):
        monkeypatch.delenv(key, raising=False)
    pytester.makeconftest(CONFTEST + (f"\npytest_plugins = [{plugin!r}]\n" if plugin else ""))
    pytester.makepyfile(test_order=TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(**outcome)

"""Test fixtures. Each local-stack piece has its own fixture module under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.azurite",
    "tests.fixtures.aml",
    "tests.fixtures.eventgrid",
    "tests.fixtures.host",
]

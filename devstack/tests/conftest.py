"""The devstack's own tests use the local stack's fixtures (devstack.testing)."""

pytest_plugins = ["devstack.testing"]

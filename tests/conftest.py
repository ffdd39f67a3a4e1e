"""The product's tests use the local stack's fixtures, which the devstack ships as a pytest plugin
(devstack.testing: azurite, aml, ml_client, eventgrid, start_function_host, sample_host)."""

pytest_plugins = ["devstack.testing"]

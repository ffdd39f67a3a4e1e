"""Evergreen's Azure ML adapter against the emulator with the real SDK."""

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from azure.identity import DefaultAzureCredential

from shared.adapters.azure.azureml import AzureML
from shared.domain.workspace import DataVersionSpec

pytestmark = pytest.mark.integration


def test_concurrent_registrations_of_one_asset_all_get_their_own_version(aml):
    """Two instances can read the same nextVersion; the loser's PUT fails ("Asset paths cannot be
    updated.") and the adapter takes the next number instead of failing the event."""
    name = f"conc-{uuid.uuid4().hex[:8]}"
    adapters = [AzureML(DefaultAzureCredential(), aml.subscription_id, aml.resource_group, aml.workspace)
                for _ in range(4)]
    specs = [DataVersionSpec(name, "uri_file", f"azureml://datastores/landing/paths/f{i}.csv", "", {"i": str(i)})
             for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda p: adapters[p[0] % 4].register_data_version(p[1]), enumerate(specs)))
    assert sorted(int(r.version) for r in results) == list(range(1, 13))
    stored = {d.version: d for d in adapters[0].client.data.list(name=name)}
    for spec, result in zip(specs, results, strict=True):
        assert stored[result.version].tags["i"] == spec.tags["i"]

"""The emulator holds every datastore kind retention reads: blob and ADLS Gen2, created through azure-ai-ml."""

from __future__ import annotations

import uuid

import httpx
import pytest
from azure.ai.ml.entities import AccountKeyConfiguration, AzureBlobDatastore, AzureDataLakeGen2Datastore

from devstack.testing.aml import AmlInfo, bearer

pytestmark = pytest.mark.integration


def test_blob_and_adls_gen2_datastores_are_created_listed_and_read_back(ml_client, aml: AmlInfo) -> None:
    uid = uuid.uuid4().hex[:8]
    blob = ml_client.datastores.create_or_update(AzureBlobDatastore(
        name=f"blob{uid}", account_name="devstoreaccount1", container_name="landing",
        credentials=AccountKeyConfiguration(account_key="not-echoed")))
    lake = ml_client.datastores.create_or_update(AzureDataLakeGen2Datastore(
        name=f"lake{uid}", account_name="devstoreaccount1", filesystem="landing"))
    assert (blob.type.value, blob.container_name, blob.account_name) == ("AzureBlob", "landing", "devstoreaccount1")
    assert (lake.type.value, lake.filesystem, lake.account_name) == ("AzureDataLakeGen2", "landing",
                                                                     "devstoreaccount1")
    listed = {d.name: d for d in ml_client.datastores.list()}
    assert listed[f"lake{uid}"].filesystem == "landing" and listed[f"blob{uid}"].container_name == "landing"
    assert ml_client.datastores.get(f"lake{uid}").filesystem == "landing"
    assert ml_client.datastores.get_default().name == "workspaceblobstore"  # a new datastore is not the default
    raw = httpx.get(f"{aml.workspace_url}/datastores/blob{uid}?api-version=2024-10-01-preview",
                    headers=bearer(aml), verify=aml.env["REQUESTS_CA_BUNDLE"])
    assert raw.status_code == 200
    assert "not-echoed" not in raw.text  # a secret is stored, never answered


def test_a_datastore_kind_the_emulator_does_not_hold_is_refused_with_a_reason(aml: AmlInfo) -> None:
    reply = httpx.put(f"{aml.workspace_url}/datastores/share?api-version=2024-10-01-preview",
                      json={"properties": {"datastoreType": "AzureFile", "accountName": "a", "fileShareName": "s"}},
                      headers=bearer(aml), verify=aml.env["REQUESTS_CA_BUNDLE"])
    assert reply.status_code == 400 and "AzureFile is not supported" in reply.text

import pytest

from shared.config.settings import load_settings
from shared.errors import ConfigurationError

GOOD = {
    "AZURE_SUBSCRIPTION_ID": "sub",
    "AZURE_RESOURCE_GROUP": "rg",
    "AZUREML_WORKSPACE_NAME": "ws",
    "EVERGREEN_EVENTS_TOPIC_ENDPOINT": "https://topic.westeurope-1.eventgrid.azure.net/api/events",
    "AzureWebJobsStorage__accountName": "appstore",
    "DATA_STORAGE__blobServiceUri": "https://data.blob.core.windows.net",
}


def test_identity_based_settings():
    s = load_settings(GOOD)
    assert s.app_storage.uses_identity
    assert s.app_storage.table_service_uri == "https://appstore.table.core.windows.net"
    assert s.data_storage.blob_service_uri == "https://data.blob.core.windows.net"
    assert s.events_topic_key is None
    assert s.landing_container == "landing"
    assert s.policy_path.name == "evergreen.yaml"


def test_every_bad_setting_is_named_at_once():
    env = {"EVERGREEN_EVENTS_TOPIC_ENDPOINT": "ftp://x", "EVERGREEN_LANDING_CONTAINER": "Bad_Name",
           "EVERGREEN_RETENTION_SCHEDULE": "0 3 * * *", "EVERGREEN_POLICY_PATH": "/nope.yaml"}
    with pytest.raises(ConfigurationError) as info:
        load_settings(env)
    text = str(info.value)
    for key in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME",
                "EVERGREEN_EVENTS_TOPIC_ENDPOINT: must be an http(s) URL", "EVERGREEN_LANDING_CONTAINER",
                "EVERGREEN_RETENTION_SCHEDULE", "EVERGREEN_POLICY_PATH", "AzureWebJobsStorage: missing",
                "DATA_STORAGE: missing"):
        assert key in text
    assert len(info.value.problems) == 9


def test_repr_hides_connection_strings_and_keys():
    env = dict(GOOD, DATA_STORAGE="AccountName=x;AccountKey=c2VjcmV0", EVERGREEN_EVENTS_TOPIC_KEY="topsecret")
    s = load_settings(env)
    assert "c2VjcmV0" not in repr(s) and "topsecret" not in repr(s)
    assert s.data_storage.connection_string is not None

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


def test_webhook_secret_is_read_as_given():
    assert load_settings(dict(GOOD, EVERGREEN_WEBHOOK_SECRET="s3cret")).webhook_secret == "s3cret"
    assert load_settings(GOOD).webhook_secret is None


@pytest.mark.parametrize("reference", [
    "@Microsoft.KeyVault(SecretUri=https://kv-evg-abc.vault.azure.net/secrets/evergreen-webhook-secret)",
    " @microsoft.keyvault(VaultName=kv-evg-abc;SecretName=evergreen-webhook-secret)",
])
def test_an_unresolved_key_vault_reference_is_no_secret_and_says_so(reference, caplog):
    """App Service passes the reference text when the secret is missing: it must not become the HMAC key."""
    with caplog.at_level("WARNING", logger="shared.config.settings"):
        settings = load_settings(dict(GOOD, EVERGREEN_WEBHOOK_SECRET=reference))
    assert settings.webhook_secret is None
    assert any("unresolved Key Vault reference" in r.getMessage() and "refused" in r.getMessage()
               for r in caplog.records)
    assert reference not in caplog.text  # the vault URI is not logged either


@pytest.mark.parametrize("key", ["EVERGREEN_RETENTION_SCHEDULE", "EVERGREEN_RECONCILE_SCHEDULE"])
@pytest.mark.parametrize("schedule", ["0 0 25 * * *", "0 61 * * * *", "0 0 3 * * mon-xyz", "*/5 * * * *"])
def test_a_schedule_croniter_refuses_is_named(key, schedule):
    """Six NCRONTAB fields (seconds first) are not enough: each must be a value the timer can fire on."""
    with pytest.raises(ConfigurationError) as info:
        load_settings(dict(GOOD, **{key: schedule}))
    assert info.value.problems == (f"{key}: {schedule!r} is not a valid 6-field NCRONTAB expression "
                                   "(second minute hour day month weekday, e.g. '0 0 3 * * *')",)


def test_valid_schedules_are_kept():
    s = load_settings(dict(GOOD, EVERGREEN_RETENTION_SCHEDULE="30 15 2 * * sun",
                           EVERGREEN_RECONCILE_SCHEDULE="0 */10 * * * *"))
    assert (s.retention_schedule, s.reconcile_schedule) == ("30 15 2 * * sun", "0 */10 * * * *")


# -- the claim lease and the Azure ML timeout (issue 11: a dead holder costs one lease) -----------------------
def test_lease_and_azureml_timeout_default_to_ten_minutes_and_one_minute():
    s = load_settings(GOOD)
    assert (s.lease_seconds, s.azureml_timeout_seconds) == (600, 60)


def test_lease_and_azureml_timeout_are_read_as_given():
    s = load_settings(dict(GOOD, EVERGREEN_LEASE_SECONDS="30", EVERGREEN_AZUREML_TIMEOUT_SECONDS=" 10 "))
    assert (s.lease_seconds, s.azureml_timeout_seconds) == (30, 10)


@pytest.mark.parametrize(("lease", "timeout", "problem"), [
    ("29", "10", "EVERGREEN_LEASE_SECONDS: 29 s is too short (at least 30 s)"),
    ("ten", "10", "EVERGREEN_LEASE_SECONDS: 'ten' is not a whole number of seconds"),
    ("600", "0", "EVERGREEN_AZUREML_TIMEOUT_SECONDS: 0 s is too short (at least 1 s)"),
    ("600", "1.5", "EVERGREEN_AZUREML_TIMEOUT_SECONDS: '1.5' is not a whole number of seconds"),
])
def test_a_bad_lease_or_timeout_is_named(lease, timeout, problem):
    with pytest.raises(ConfigurationError) as info:
        load_settings(dict(GOOD, EVERGREEN_LEASE_SECONDS=lease, EVERGREEN_AZUREML_TIMEOUT_SECONDS=timeout))
    assert info.value.problems == (problem,)


@pytest.mark.parametrize(("lease", "timeout"), [("30", "30"), ("60", "300"), (None, "600")])
def test_a_lease_must_outlast_the_longest_azureml_call(lease, timeout):
    """A holder blocked in a call longer than its lease is taken over while it still works."""
    env = dict(GOOD, EVERGREEN_AZUREML_TIMEOUT_SECONDS=timeout)
    if lease is not None:
        env["EVERGREEN_LEASE_SECONDS"] = lease
    with pytest.raises(ConfigurationError) as info:
        load_settings(env)
    (problem,) = info.value.problems
    assert problem.startswith(f"EVERGREEN_AZUREML_TIMEOUT_SECONDS: {timeout} s must be less than "
                              f"EVERGREEN_LEASE_SECONDS ({lease or 600} s)")


def test_a_bad_lease_is_reported_with_every_other_problem_and_kept_out_of_a_narrower_load():
    env = {"EVERGREEN_LEASE_SECONDS": "5", "AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    with pytest.raises(ConfigurationError) as info:
        load_settings(env)
    assert "EVERGREEN_LEASE_SECONDS: 5 s is too short (at least 30 s)" in info.value.problems
    assert len(info.value.problems) == 6  # with the four required settings and DATA_STORAGE (no comparison)
    assert load_settings(env, only={"AzureWebJobsStorage"}).app_storage.connection_string
    with pytest.raises(ConfigurationError) as narrow:
        load_settings(env, only={"AzureWebJobsStorage", "EVERGREEN_LEASE_SECONDS"})
    assert narrow.value.problems == ("EVERGREEN_LEASE_SECONDS: 5 s is too short (at least 30 s)",)

"""App settings, read once from the environment into a frozen, validated object.

Every problem is collected and reported together, so a bad deployment fails at start-up with one
error that names each setting to fix, instead of failing later, far from the cause.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from croniter import croniter

from shared.config.connections import StorageConnection, resolve_storage_connection
from shared.errors import ConfigurationError

logger = logging.getLogger(__name__)

APP_ROOT = Path(__file__).resolve().parents[2]
# What App Service leaves in a setting whose Key Vault reference it could not resolve (missing secret, no access).
_UNRESOLVED_KEY_VAULT_REFERENCE = "@microsoft.keyvault("

_CONTAINER_RE = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$")
# The timers' NCRONTAB settings and their defaults (03:00 UTC daily; every five minutes).
SCHEDULE_DEFAULTS = {"EVERGREEN_RETENTION_SCHEDULE": "0 0 3 * * *", "EVERGREEN_RECONCILE_SCHEDULE": "0 */5 * * * *",
                     "EVERGREEN_RESCORE_SCHEDULE": "0 30 4 * * *"}  # rescore: champions re-scored daily, 04:30 UTC


@dataclass(frozen=True)
class Settings:
    subscription_id: str
    resource_group: str
    workspace_name: str
    policy_path: Path
    landing_container: str
    app_storage: StorageConnection
    data_storage: StorageConnection
    events_topic_endpoint: str
    events_topic_key: str | None
    client_id: str | None
    webhook_secret: str | None
    retention_schedule: str
    reconcile_schedule: str = "0 */5 * * * *"  # EVERGREEN_RECONCILE_SCHEDULE: the reconciler timer
    lease_seconds: int = 600  # EVERGREEN_LEASE_SECONDS: a claim's lease (seal, content, submission)
    azureml_timeout_seconds: int = 60  # EVERGREEN_AZUREML_TIMEOUT_SECONDS: connect + read timeout per Azure ML call
    rescore_schedule: str = "0 30 4 * * *"  # EVERGREEN_RESCORE_SCHEDULE: champions re-scored, code hash compared

    def __repr__(self) -> str:  # never leak keys or connection strings into logs
        return (
            f"Settings(workspace={self.subscription_id}/{self.resource_group}/{self.workspace_name}, "
            f"policy={self.policy_path}, landing={self.landing_container})"
        )


def _storage(env: Mapping[str, str], name: str, problems: list[str]) -> StorageConnection:
    """The storage connection `name`, by the Functions convention (`shared.config.connections`)."""
    connection = resolve_storage_connection(name, env)
    if connection is None:
        problems.append(
            f"{name}: missing; set a connection string in {name}, or {name}__accountName "
            f"(or {name}__blobServiceUri) to use the managed identity"
        )
        return StorageConnection(name=name)
    return connection


def _webhook_secret(env: Mapping[str, str]) -> str | None:
    """EVERGREEN_WEBHOOK_SECRET, or None when unset or still an unresolved Key Vault reference.

    When the secret is missing from Key Vault (or unreadable), App Service passes the reference text itself,
    `@Microsoft.KeyVault(SecretUri=...)`: anyone who can guess the vault name could sign with it. It counts as
    unset, so signed registry webhooks are refused, and a warning at start-up says what to fix.
    """
    secret = env.get("EVERGREEN_WEBHOOK_SECRET", "")
    if secret.strip().lower().startswith(_UNRESOLVED_KEY_VAULT_REFERENCE):
        logger.warning("EVERGREEN_WEBHOOK_SECRET is an unresolved Key Vault reference (the secret is missing or "
                       "the app's identity cannot read it): registry webhooks are refused until the secret "
                       "evergreen-webhook-secret exists in the vault (az keyvault secret set)")
        return None
    return secret or None


def cron_problem(expression: str) -> str | None:
    """What is wrong with an NCRONTAB expression (six fields, seconds first, as Azure Functions reads it), or None."""
    schedule = expression.strip()
    if len(schedule.split()) != 6 or not croniter.is_valid(schedule, second_at_beginning=True):
        return (f"{schedule!r} is not a valid 6-field NCRONTAB expression (second minute hour day month weekday, "
                "e.g. '0 0 3 * * *')")
    return None


def _schedule(env: Mapping[str, str], key: str, problems: list[str]) -> str:
    """A timer's schedule (`SCHEDULE_DEFAULTS` when unset); a problem is added if it is not valid NCRONTAB."""
    schedule = env.get(key, SCHEDULE_DEFAULTS[key]).strip()
    problem = cron_problem(schedule)
    if problem is not None:
        problems.append(f"{key}: {problem}")
    return schedule


# The claim lease and the Azure ML call timeout: (default, minimum) in seconds.
LEASE_SECONDS = ("EVERGREEN_LEASE_SECONDS", 600, 30)
AZUREML_TIMEOUT_SECONDS = ("EVERGREEN_AZUREML_TIMEOUT_SECONDS", 60, 1)


def _seconds(env: Mapping[str, str], setting: tuple[str, int, int], problems: list[str]) -> int:
    """A whole number of seconds, at least the setting's minimum (its default when unset); else a problem."""
    key, default, minimum = setting
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        problems.append(f"{key}: {raw!r} is not a whole number of seconds")
        return default
    if value < minimum:
        problems.append(f"{key}: {value} s is too short (at least {minimum} s)")
    return value


def _lease_and_timeout(env: Mapping[str, str], problems: list[str]) -> tuple[int, int]:
    """EVERGREEN_LEASE_SECONDS and EVERGREEN_AZUREML_TIMEOUT_SECONDS, validated together.

    A lease must outlast the holder's longest call: a holder blocked in an Azure ML call past its lease
    is taken over while it still works (safe, every step is idempotent, but wasted work).
    """
    known = len(problems)
    lease = _seconds(env, LEASE_SECONDS, problems)
    timeout = _seconds(env, AZUREML_TIMEOUT_SECONDS, problems)
    if len(problems) == known and timeout >= lease:  # compared only once each is valid on its own
        problems.append(f"EVERGREEN_AZUREML_TIMEOUT_SECONDS: {timeout} s must be less than EVERGREEN_LEASE_SECONDS "
                        f"({lease} s): a lease must outlast the holder's longest call")
    return lease, timeout


# The settings `load_settings` knows, by name: `only=` takes a subset of these.
SETTING_NAMES = frozenset({
    "AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME", "EVERGREEN_EVENTS_TOPIC_ENDPOINT",
    "EVERGREEN_LANDING_CONTAINER", "EVERGREEN_POLICY_PATH", "EVERGREEN_RETENTION_SCHEDULE",
    "EVERGREEN_RECONCILE_SCHEDULE", "AzureWebJobsStorage", "DATA_STORAGE", "EVERGREEN_LEASE_SECONDS",
    "EVERGREEN_AZUREML_TIMEOUT_SECONDS", "EVERGREEN_RESCORE_SCHEDULE",
})
LOCAL_SETTINGS = APP_ROOT / "local.settings.json"


def local_settings_values(path: Path = LOCAL_SETTINGS) -> dict[str, str]:
    """The `Values` of a `local.settings.json` (what `func start` puts in the environment); {} if there is none.

    Raises ConfigurationError naming the file if it is not JSON with an object of `Values`.
    """
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text(encoding="utf-8")).get("Values", {})
    except (ValueError, AttributeError) as exc:
        raise ConfigurationError(str(path), [f"not a local.settings.json: {exc}"]) from None
    if not isinstance(values, dict):
        raise ConfigurationError(str(path), ["Values: must be an object of setting names to strings"])
    return {str(k): str(v) for k, v in values.items() if v is not None}


def environment_with_local_settings(env: Mapping[str, str] | None = None,
                                    path: Path = LOCAL_SETTINGS) -> dict[str, str]:
    """The environment, completed by `local.settings.json`'s `Values` for what it lacks (the environment wins).

    Raises ConfigurationError if the file exists but cannot be read as one.
    """
    env = os.environ if env is None else env
    return {**local_settings_values(path), **env}


def load_settings(env: Mapping[str, str] | None = None, *, only: Collection[str] | None = None) -> Settings:
    """Read and validate the settings; raise ConfigurationError naming all problems at once.

    With `only` (names from SETTING_NAMES), just those are required and checked (a command that needs
    only the app's storage need not be given a workspace); the others are read as given, or left empty.
    Raises ValueError for a name in `only` that is not a setting.
    """
    unknown = set(only or ()) - SETTING_NAMES
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(SETTING_NAMES))}")
    env = os.environ if env is None else env
    problems: list[str] = []

    def required(key: str, hint: str) -> str:
        value = env.get(key, "").strip()
        if not value:
            problems.append(f"{key}: missing ({hint})")
        return value

    subscription_id = required("AZURE_SUBSCRIPTION_ID", "the Azure ML workspace's subscription id")
    resource_group = required("AZURE_RESOURCE_GROUP", "the Azure ML workspace's resource group")
    workspace_name = required("AZUREML_WORKSPACE_NAME", "the Azure ML workspace name")
    topic = required("EVERGREEN_EVENTS_TOPIC_ENDPOINT", "Evergreen's Event Grid custom topic endpoint")
    if topic and not topic.startswith(("https://", "http://")):
        problems.append(f"EVERGREEN_EVENTS_TOPIC_ENDPOINT: must be an http(s) URL, got {topic!r}")

    landing = env.get("EVERGREEN_LANDING_CONTAINER", "landing").strip()
    if not _CONTAINER_RE.match(landing):
        problems.append(
            f"EVERGREEN_LANDING_CONTAINER: {landing!r} is not a valid container name "
            "(3-63 lowercase letters, digits and single hyphens)"
        )

    policy_raw = env.get("EVERGREEN_POLICY_PATH", "").strip()
    policy_path = Path(policy_raw) if policy_raw else APP_ROOT / "evergreen.yaml"
    if not policy_path.is_absolute():
        policy_path = APP_ROOT / policy_path
    if not policy_path.is_file():
        problems.append(f"EVERGREEN_POLICY_PATH: no policy file at {policy_path}")

    schedule = _schedule(env, "EVERGREEN_RETENTION_SCHEDULE", problems)
    reconcile_schedule = _schedule(env, "EVERGREEN_RECONCILE_SCHEDULE", problems)
    rescore_schedule = _schedule(env, "EVERGREEN_RESCORE_SCHEDULE", problems)
    lease_seconds, azureml_timeout_seconds = _lease_and_timeout(env, problems)

    app_storage = _storage(env, "AzureWebJobsStorage", problems)
    data_storage = _storage(env, "DATA_STORAGE", problems)

    if only is not None:  # every problem names its setting first: keep those asked for
        problems = [p for p in problems if p.split(":", 1)[0] in only]
    if problems:
        raise ConfigurationError("App settings", problems)
    return Settings(
        subscription_id=subscription_id,
        resource_group=resource_group,
        workspace_name=workspace_name,
        policy_path=policy_path,
        landing_container=landing,
        app_storage=app_storage,
        data_storage=data_storage,
        events_topic_endpoint=topic,
        events_topic_key=env.get("EVERGREEN_EVENTS_TOPIC_KEY") or None,
        client_id=env.get("AZURE_CLIENT_ID") or None,
        webhook_secret=_webhook_secret(env),
        retention_schedule=schedule,
        reconcile_schedule=reconcile_schedule,
        lease_seconds=lease_seconds,
        azureml_timeout_seconds=azureml_timeout_seconds,
        rescore_schedule=rescore_schedule,
    )


@dataclass(frozen=True)
class TelemetrySettings:
    """Where spans go (`shared.telemetry.configure`): Application Insights, a local file, both, or nowhere."""

    connection_string: str | None  # APPLICATIONINSIGHTS_CONNECTION_STRING: an identifier, not a credential
    client_id: str | None  # AZURE_CLIENT_ID: the user-assigned identity that authenticates ingestion
    trace_file: Path | None  # EVERGREEN_TRACE_FILE: one JSON line per finished span (the local stack's)

    def __repr__(self) -> str:
        return (f"TelemetrySettings(azure_monitor={self.connection_string is not None}, "
                f"trace_file={self.trace_file})")


def load_telemetry_settings(env: Mapping[str, str] | None = None) -> TelemetrySettings:
    """Read the telemetry settings; raise ConfigurationError naming every problem at once.

    Read apart from `load_settings` so that tracing is set up (and can record a configuration failure)
    even when another setting is wrong.
    """
    env = os.environ if env is None else env
    problems: list[str] = []
    connection = env.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "").strip() or None
    if connection and "instrumentationkey=" not in connection.lower():
        problems.append("APPLICATIONINSIGHTS_CONNECTION_STRING: not a connection string (no InstrumentationKey=…); "
                        "copy it from the Application Insights resource's overview")
    trace_raw = env.get("EVERGREEN_TRACE_FILE", "").strip()
    trace_file = Path(trace_raw) if trace_raw else None
    if trace_file is not None and not trace_file.parent.is_dir():
        problems.append(f"EVERGREEN_TRACE_FILE: the folder {trace_file.parent} does not exist")
    if problems:
        raise ConfigurationError("Telemetry settings", problems)
    return TelemetrySettings(connection_string=connection, client_id=env.get("AZURE_CLIENT_ID") or None,
                             trace_file=trace_file)

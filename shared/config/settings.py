"""App settings, read once from the environment into a frozen, validated object.

Every problem is collected and reported together, so a bad deployment fails at start-up with one
error that names each setting to fix, instead of failing later, far from the cause.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.config.connections import StorageConnection, resolve_storage_connection
from shared.errors import ConfigurationError

APP_ROOT = Path(__file__).resolve().parents[2]

_CONTAINER_RE = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$")


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


def _schedule(env: Mapping[str, str], key: str, default: str, problems: list[str]) -> str:
    """A timer's NCRONTAB schedule (six fields, seconds first); a problem is added if it is not one."""
    schedule = env.get(key, default).strip()
    if len(schedule.split()) != 6:
        problems.append(f"{key}: {schedule!r} is not a 6-field NCRONTAB expression "
                        "(second minute hour day month weekday)")
    return schedule


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise ConfigurationError naming all problems at once."""
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

    schedule = _schedule(env, "EVERGREEN_RETENTION_SCHEDULE", "0 0 3 * * *", problems)
    reconcile_schedule = _schedule(env, "EVERGREEN_RECONCILE_SCHEDULE", "0 */5 * * * *", problems)

    app_storage = _storage(env, "AzureWebJobsStorage", problems)
    data_storage = _storage(env, "DATA_STORAGE", problems)

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
        webhook_secret=env.get("EVERGREEN_WEBHOOK_SECRET") or None,
        retention_schedule=schedule,
        reconcile_schedule=reconcile_schedule,
    )

"""Clients and the domain services built on them: created once per process, on first use.

Functions call `get_services()`; tests build `Services` from their own clients. Nothing here runs
at import time, so importing `function_app` stays cheap and needs no network.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Generic, TypeVar

from azure.core.credentials import AzureKeyCredential, TokenCredential
from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient, QueueServiceClient, TextBase64EncodePolicy

from shared.aml import AzureML, OnlineEndpoints
from shared.aml_retention import AmlRetention
from shared.audit import AUDIT_TABLE, AuditLog
from shared.blob_retention import BlobRetention
from shared.ingest import Ingestor, seal_request_to_json
from shared.ledger import Ledger
from shared.policy import Policy, load_policy
from shared.promotion import ROLLOUT_QUEUE, Promoter
from shared.publisher import EventPublisher
from shared.retention_runner import RetentionRunner
from shared.retrain import Retrainer
from shared.rollout import RolloutTick
from shared.settings import Settings, StorageConnection, load_settings

log = logging.getLogger(__name__)

LEDGER_TABLE = "evergreenledger"
SEAL_QUEUE = "evergreen-batch-seal"
MAX_VISIBILITY_SECONDS = 7 * 24 * 3600
T = TypeVar("T")


def credential_for(client_id: str | None) -> TokenCredential:
    """Managed identity in Azure (user-assigned when a client id is set); the same code works locally."""
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if client_id:
        return ManagedIdentityCredential(client_id=client_id)
    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


def blob_service(conn: StorageConnection, credential: TokenCredential) -> BlobServiceClient:
    if conn.connection_string:
        return BlobServiceClient.from_connection_string(conn.connection_string)
    assert conn.blob_service_uri is not None
    return BlobServiceClient(conn.blob_service_uri, credential=credential)


def queue_client(conn: StorageConnection, credential: TokenCredential, queue: str) -> QueueClient:
    policy = TextBase64EncodePolicy()  # the Functions queue trigger expects base64 messages by default
    if conn.connection_string:
        service = QueueServiceClient.from_connection_string(conn.connection_string, message_encode_policy=policy)
    else:
        assert conn.queue_service_uri is not None
        service = QueueServiceClient(conn.queue_service_uri, credential=credential, message_encode_policy=policy)
    client = service.get_queue_client(queue, message_encode_policy=policy)
    with suppress(ResourceExistsError):
        client.create_queue()
    return client


def table_service(conn: StorageConnection, credential: TokenCredential) -> TableServiceClient:
    if conn.connection_string:
        return TableServiceClient.from_connection_string(conn.connection_string)
    assert conn.table_service_uri is not None
    return TableServiceClient(conn.table_service_uri, credential=credential)


class DelayedQueue(Generic[T]):
    """Schedules work as queue messages that become visible after the delay (Azure's maximum: 7 days).

    Seal checks and rollout steps both wait this way instead of blocking a function.
    """

    def __init__(self, queue: QueueClient, encode: Callable[[T], str]) -> None:
        self._queue = queue
        self._encode = encode

    def send(self, item: T, delay_seconds: float) -> None:
        self._queue.send_message(self._encode(item), visibility_timeout=min(MAX_VISIBILITY_SECONDS,
                                                                             max(0, round(delay_seconds))))


@dataclass(frozen=True)
class Services:
    settings: Settings
    policy: Policy
    ingestor: Ingestor
    retrainer: Retrainer
    retention: RetentionRunner
    promoter: Promoter


def build_services(settings: Settings, policy: Policy) -> Services:
    credential = credential_for(settings.client_id)
    tables = table_service(settings.app_storage, credential)
    ledger_table = tables.create_table_if_not_exists(LEDGER_TABLE)
    topic_credential: AzureKeyCredential | TokenCredential = (
        AzureKeyCredential(settings.events_topic_key) if settings.events_topic_key else credential
    )
    audit = AuditLog(tables.create_table_if_not_exists(AUDIT_TABLE))
    ledger = Ledger(ledger_table)
    azureml = AzureML(credential, settings.subscription_id, settings.resource_group, settings.workspace_name)
    data_blobs = blob_service(settings.data_storage, credential)
    ingestor = Ingestor(
        policy=policy,
        blobs=data_blobs,
        ledger=ledger,
        registry=azureml,
        publisher=EventPublisher(settings.events_topic_endpoint, topic_credential),
        seal_queue=DelayedQueue(queue_client(settings.app_storage, credential, SEAL_QUEUE), seal_request_to_json),
        audit=audit,
    )
    retrainer = Retrainer(policy=policy, app_root=settings.policy_path.parent, ledger=ledger, jobs=azureml,
                          audit=audit)
    promoter = Promoter(policy=policy, endpoints=OnlineEndpoints(azureml), ledger=ledger,
                        ticks=DelayedQueue(queue_client(settings.app_storage, credential, ROLLOUT_QUEUE),
                                           RolloutTick.to_json),
                        audit=audit, app_root=settings.policy_path.parent)
    retention = RetentionRunner(policy.retention, AmlRetention(azureml), BlobRetention(data_blobs), ledger.rollouts,
                                audit)
    return Services(settings=settings, policy=policy, ingestor=ingestor, retrainer=retrainer, promoter=promoter,
                    retention=retention)


@functools.cache
def load_configuration() -> tuple[Settings, Policy]:
    """Settings and policy, read and validated once; raises ConfigurationError listing every problem."""
    settings = load_settings()
    policy = load_policy(settings.policy_path, landing_container=settings.landing_container)
    log.info("configuration loaded: %r, %d dataset(s)", settings, len(policy.datasets))
    return settings, policy


@functools.cache
def get_services() -> Services:
    return build_services(*load_configuration())

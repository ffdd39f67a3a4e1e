"""Clients and the domain services built on them: created once per process, on first use.

Functions call `get_services()`; tests build `Services` from their own clients. Nothing here runs
at import time, so importing `function_app` stays cheap and needs no network.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from azure.core.credentials import AzureKeyCredential, TokenCredential
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from shared.adapters.azure.aml_retention import AmlRetention
from shared.adapters.azure.azureml import AzureML, OnlineEndpoints
from shared.adapters.azure.blob_retention import BlobRetention
from shared.adapters.azure.blobs import AzureBlobStore
from shared.adapters.azure.eventgrid import EventGridPublisher
from shared.adapters.azure.queues import AzureDelayedQueue, queue_client
from shared.adapters.azure.tables import AzureTable
from shared.config.connections import StorageConnection
from shared.config.policy import Policy, load_policy
from shared.config.settings import Settings, load_settings
from shared.domain.ingest import seal_request_to_json
from shared.domain.rollout import RolloutTick
from shared.services.audit import AUDIT_TABLE, TableAuditLog
from shared.services.ingest import Ingestor
from shared.services.ledger import Ledger
from shared.services.promotion import ROLLOUT_QUEUE, Promoter
from shared.services.retention import RetentionRunner
from shared.services.retrain import Retrainer

log = logging.getLogger(__name__)

LEDGER_TABLE = "evergreenledger"
SEAL_QUEUE = "evergreen-batch-seal"


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


def table_service(conn: StorageConnection, credential: TokenCredential) -> TableServiceClient:
    if conn.connection_string:
        return TableServiceClient.from_connection_string(conn.connection_string)
    assert conn.table_service_uri is not None
    return TableServiceClient(conn.table_service_uri, credential=credential)


@dataclass(frozen=True)
class Services:
    settings: Settings
    policy: Policy
    ingestor: Ingestor
    retrainer: Retrainer
    retention: RetentionRunner
    promoter: Promoter
    audit: TableAuditLog  # the edge records rejected events here


def build_services(settings: Settings, policy: Policy) -> Services:
    credential = credential_for(settings.client_id)
    tables = table_service(settings.app_storage, credential)
    ledger_table = tables.create_table_if_not_exists(LEDGER_TABLE)
    topic_credential: AzureKeyCredential | TokenCredential = (
        AzureKeyCredential(settings.events_topic_key) if settings.events_topic_key else credential
    )
    audit = TableAuditLog(AzureTable(tables.create_table_if_not_exists(AUDIT_TABLE)))
    ledger = Ledger(AzureTable(ledger_table))
    azureml = AzureML(credential, settings.subscription_id, settings.resource_group, settings.workspace_name)
    data_blobs = blob_service(settings.data_storage, credential)
    ingestor = Ingestor(
        policy=policy,
        blobs=AzureBlobStore(data_blobs),
        ledger=ledger,
        registry=azureml,
        publisher=EventGridPublisher(settings.events_topic_endpoint, topic_credential),
        seal_queue=AzureDelayedQueue(queue_client(settings.app_storage, credential, SEAL_QUEUE),
                                     seal_request_to_json),
        audit=audit,
    )
    retrainer = Retrainer(policy=policy, app_root=settings.policy_path.parent, ledger=ledger, jobs=azureml,
                          audit=audit)
    promoter = Promoter(policy=policy, endpoints=OnlineEndpoints(azureml), ledger=ledger,
                        ticks=AzureDelayedQueue(queue_client(settings.app_storage, credential, ROLLOUT_QUEUE),
                                                RolloutTick.to_json),
                        audit=audit, app_root=settings.policy_path.parent)
    retention = RetentionRunner(policy=policy.retention, workspace=AmlRetention(azureml),
                                blobs=BlobRetention(data_blobs), rollouts=ledger.rollouts, audit=audit)
    return Services(settings=settings, policy=policy, ingestor=ingestor, retrainer=retrainer, promoter=promoter,
                    retention=retention, audit=audit)


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

"""Clients and the domain services built on them: created once per process, on first use.

Functions call `get_services()`; tests build `Services` from their own clients. Nothing here runs
at import time, so importing `function_app` stays cheap and needs no network.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

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
from shared.domain.ingest import blob_created_to_json, seal_request_to_json
from shared.domain.records import Leases
from shared.domain.retrain import retrain_check_to_json
from shared.domain.rollout import CandidateRetry, RolloutTick
from shared.services.audit import AUDIT_TABLE, TableAuditLog
from shared.services.ingest import Ingestor
from shared.services.ledger import Ledger
from shared.services.operator import Operator
from shared.services.promotion import PROMOTION_RETRY_QUEUE, ROLLOUT_QUEUE, STALL_FLOOR, Promoter
from shared.services.reconcile import Reconciler
from shared.services.redrive import Redriver
from shared.services.retention import RetentionRunner
from shared.services.retrain import Retrainer

log = logging.getLogger(__name__)
T = TypeVar("T")

LEDGER_TABLE = "evergreenledger"
SEAL_QUEUE = "evergreen-batch-seal"
BLOB_RETRY_QUEUE = "evergreen-blob-retry"  # blob events re-scheduled while another instance held their work
RETRAIN_QUEUE = "evergreen-retrain-check"  # re-checks of a dataset's retraining (minimum interval, leases)


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


class _Clients:
    """The clients and adapters every builder below shares, each created once, on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.credential = credential_for(settings.client_id)
        self.leases = Leases.of(settings.lease_seconds)  # EVERGREEN_LEASE_SECONDS: every claim's lease

    @functools.cached_property
    def _tables(self) -> TableServiceClient:
        return table_service(self.settings.app_storage, self.credential)

    @functools.cached_property
    def ledger(self) -> Ledger:
        return Ledger(AzureTable(self._tables.create_table_if_not_exists(LEDGER_TABLE)), leases=self.leases)

    @functools.cached_property
    def audit(self) -> TableAuditLog:
        return TableAuditLog(AzureTable(self._tables.create_table_if_not_exists(AUDIT_TABLE)))

    @functools.cached_property
    def azureml(self) -> AzureML:
        s = self.settings
        return AzureML(self.credential, s.subscription_id, s.resource_group, s.workspace_name,
                       timeout=s.azureml_timeout_seconds)

    @functools.cached_property
    def data_blobs(self) -> BlobServiceClient:
        return blob_service(self.settings.data_storage, self.credential)

    def queue(self, name: str, encode: Callable[[T], str]) -> AzureDelayedQueue[T]:
        """One of Evergreen's queues in the app's storage (created if missing)."""
        return AzureDelayedQueue(queue_client(self.settings.app_storage, self.credential, name), encode)

    def retrainer(self, policy: Policy) -> Retrainer:
        return Retrainer(policy=policy, app_root=self.settings.policy_path.parent, ledger=self.ledger,
                         jobs=self.azureml, audit=self.audit, rechecks=self.queue(RETRAIN_QUEUE, retrain_check_to_json),
                         leases=self.leases)

    def retention(self, policy: Policy) -> RetentionRunner:
        return RetentionRunner(policy=policy.retention, workspace=AmlRetention(self.azureml),
                               blobs=BlobRetention(self.data_blobs), rollouts=self.ledger.rollouts, audit=self.audit)


def build_services(settings: Settings, policy: Policy) -> Services:
    """Every service of the Function App, on the Azure adapters."""
    clients = _Clients(settings)
    ingestor = Ingestor(
        policy=policy,
        blobs=AzureBlobStore(clients.data_blobs),
        ledger=clients.ledger,
        registry=clients.azureml,
        publisher=_publisher(settings, clients.credential),
        seal_queue=clients.queue(SEAL_QUEUE, seal_request_to_json),
        blob_retry=clients.queue(BLOB_RETRY_QUEUE, blob_created_to_json),
        audit=clients.audit,
        sleep=time.sleep,
        leases=clients.leases,
    )
    promoter = Promoter(policy=policy, endpoints=OnlineEndpoints(clients.azureml), ledger=clients.ledger,
                        ticks=clients.queue(ROLLOUT_QUEUE, RolloutTick.to_json), audit=clients.audit,
                        app_root=settings.policy_path.parent,
                        retries=clients.queue(PROMOTION_RETRY_QUEUE, CandidateRetry.to_json),
                        stall_after=min(STALL_FLOOR, timedelta(seconds=settings.lease_seconds)))
    return Services(settings=settings, policy=policy, ingestor=ingestor, retrainer=clients.retrainer(policy),
                    promoter=promoter, retention=clients.retention(policy), audit=clients.audit)


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


# -- recovery (issue 11): the reconciler and the redrive command --------------------------------------------
def get_reconciler() -> Reconciler:
    """The reconciler over every flow's service (the `reconcile` timer and `python -m shared.cli reconcile`)."""
    services = get_services()
    return Reconciler(flows={"ingest": services.ingestor, "retrain": services.retrainer,
                             "promotion": services.promoter})


def build_redriver(services: Services) -> Redriver:
    """The redrive command's service: dead letters and poison queues of both accounts, and where replays go."""
    from shared.adapters.azure.redrive import (
        DEAD_LETTER_CONTAINER,
        AzurePoisonQueue,
        BlobDeadLetters,
        blob_trigger_queue_name,
        poison_queue_names,
        queue_service,
    )
    from shared.domain.redrive import BLOB_TRIGGER_POISON, BLOB_TRIGGER_QUEUE, POISON_SUFFIX
    from shared.domain.retrain import RUN_COMPLETED, RUN_STATUS_CHANGED, parse_run_event
    from shared.domain.webhooks import MODEL_REGISTERED, parse_model_registered

    settings = services.settings
    credential = credential_for(settings.client_id)
    app_queues, data_queues = queue_service(settings.app_storage, credential), queue_service(settings.data_storage,
                                                                                             credential)
    poison = [AzurePoisonQueue(app_queues.get_queue_client(name))
              for name in poison_queue_names(app_queues.list_queues(name_starts_with="evergreen-"))]
    poison.append(AzurePoisonQueue(data_queues.get_queue_client(BLOB_TRIGGER_POISON)))
    originals = [q.name.removesuffix(POISON_SUFFIX) for q in poison if q.name != BLOB_TRIGGER_POISON]
    queues = {name: AzureDelayedQueue(app_queues.get_queue_client(name), str) for name in originals}
    blob_trigger = blob_trigger_queue_name(data_queues.list_queues(name_starts_with="azure-webjobs-blobtrigger-"))
    if blob_trigger:
        queues[BLOB_TRIGGER_QUEUE] = AzureDelayedQueue(data_queues.get_queue_client(blob_trigger), str)

    def run_event(document: Mapping[str, Any]) -> object:
        """A dead-lettered Azure ML run event, through `functions/retrain.py:on_run_event`'s parser and service."""
        return services.retrainer.on_run_finished(parse_run_event(str(document["eventType"]), document["data"]),
                                                  str(document["id"]))

    return Redriver(
        dead_letters=BlobDeadLetters(blob_service(settings.app_storage, credential)
                                     .get_container_client(DEAD_LETTER_CONTAINER)),
        poison_queues=poison, queues=queues, publisher=_publisher(settings, credential),
        handlers={MODEL_REGISTERED: lambda doc: services.promoter.on_model_version(parse_model_registered(doc)),
                  RUN_COMPLETED: run_event, RUN_STATUS_CHANGED: run_event},
        audit=services.audit,
    )


def build_retention(settings: Settings, policy: Policy) -> RetentionRunner:
    """Retention alone (`python -m shared.cli retention`): the workspace, the data account and the app's tables."""
    return _Clients(settings).retention(policy)


def build_operator(settings: Settings, policy: Policy, *, workspace: bool = False) -> Operator:
    """The operator's commands (`python -m shared.cli status|rollout|retrain`) on only what they need.

    The ledger, the audit log and the rollout queue come from the app's storage; with `workspace`
    (for `retrain`) also Azure ML and a Retrainer built as the Function App builds it.
    """
    clients = _Clients(settings)
    ticks = clients.queue(ROLLOUT_QUEUE, RolloutTick.to_json)
    if not workspace:
        return Operator(policy=policy, ledger=clients.ledger, audit=clients.audit, ticks=ticks)
    return Operator(policy=policy, ledger=clients.ledger, audit=clients.audit, ticks=ticks,
                    retrainer=clients.retrainer(policy), registry=clients.azureml)


def _publisher(settings: Settings, credential: TokenCredential) -> EventGridPublisher:
    key = settings.events_topic_key
    return EventGridPublisher(settings.events_topic_endpoint, AzureKeyCredential(key) if key else credential)

"""Clients and the domain services built on them: created once per process, on first use.

Functions call `get_services()`; tests build `Services` from their own clients. Nothing here runs
at import time, so importing `function_app` stays cheap and needs no network.

Cold start is benchmarked (`bench/bench_cold_start.py`): `import function_app` imports this module to
validate the configuration, so only settings and policy are imported at the top. Adapters, SDK clients
and services are imported inside the builders that use them (they are annotated under TYPE_CHECKING);
`tests/unit/test_cold_start.py` keeps azure.ai.ml, azure.monitor and azure-data-tables out of start-up.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from shared.config.policy import Policy, load_policy
from shared.config.settings import Settings, load_settings

if TYPE_CHECKING:  # imported where used: see the module docstring (cold start)
    from azure.core.credentials import TokenCredential
    from azure.data.tables import TableServiceClient
    from azure.storage.blob import BlobServiceClient

    from shared.adapters.azure.azureml import AzureML
    from shared.adapters.azure.eventgrid import EventGridPublisher
    from shared.adapters.azure.queues import AzureDelayedQueue
    from shared.config.connections import StorageConnection
    from shared.config.validate import PipelineReader, WorkspaceFacts
    from shared.domain.events import DataVersionRegistered
    from shared.domain.retrain import RunFinished
    from shared.services.approval import Approvals
    from shared.services.audit import TableAuditLog
    from shared.services.ingest import Ingestor
    from shared.services.ledger import Ledger
    from shared.services.lineage import LineageReader
    from shared.services.monitor import ChampionMonitor, MonitorOutcome
    from shared.services.operator import Operator
    from shared.services.promotion import Promoter, PromotionOutcome
    from shared.services.reconcile import Reconciler
    from shared.services.redrive import Redriver
    from shared.services.retention import RetentionRunner
    from shared.services.retrain import Retrainer, RetrainOutcome
    from shared.services.status import StatusReader

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
    from azure.storage.blob import BlobServiceClient

    if conn.connection_string:
        return BlobServiceClient.from_connection_string(conn.connection_string)
    assert conn.blob_service_uri is not None
    return BlobServiceClient(conn.blob_service_uri, credential=credential)


def table_service(conn: StorageConnection, credential: TokenCredential) -> TableServiceClient:
    from azure.data.tables import TableServiceClient

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
    approvals: Approvals | None = None  # manual approval (the reconciler expires and reads studio verdicts)
    monitor: ChampionMonitor | None = None  # champion re-scores and code-change retrains (`functions/monitor.py`)


class _Clients:
    """The clients and adapters every builder below shares, each created once, on first use."""

    def __init__(self, settings: Settings) -> None:
        from shared.domain.records import Leases

        self.settings = settings
        self.credential = credential_for(settings.client_id)
        self.leases = Leases.of(settings.lease_seconds)  # EVERGREEN_LEASE_SECONDS: every claim's lease

    @functools.cached_property
    def _tables(self) -> TableServiceClient:
        return table_service(self.settings.app_storage, self.credential)

    @functools.cached_property
    def ledger(self) -> Ledger:
        from shared.adapters.azure.tables import AzureTable
        from shared.services.ledger import Ledger

        return Ledger(AzureTable(self._tables.create_table_if_not_exists(LEDGER_TABLE)), leases=self.leases)

    @functools.cached_property
    def audit(self) -> TableAuditLog:
        from shared.adapters.azure.tables import AzureTable
        from shared.services.audit import AUDIT_TABLE, TableAuditLog

        return TableAuditLog(AzureTable(self._tables.create_table_if_not_exists(AUDIT_TABLE)))

    @functools.cached_property
    def azureml(self) -> AzureML:
        from shared.adapters.azure.azureml import AzureML

        s = self.settings
        return AzureML(self.credential, s.subscription_id, s.resource_group, s.workspace_name,
                       timeout=s.azureml_timeout_seconds, workspace_blobs=self.workspace_blobs)

    def workspace_blobs(self, account: str, endpoint: str) -> BlobServiceClient:
        """Blobs of a workspace datastore's account (job outputs such as comparison.json): the data account's
        client when it is that account (the local stack's one Azurite), else the app's identity on it."""
        if self.data_blobs.account_name == account:
            return self.data_blobs
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(f"https://{account}.blob.{endpoint}", credential=self.credential)

    @functools.cached_property
    def data_blobs(self) -> BlobServiceClient:
        return blob_service(self.settings.data_storage, self.credential)

    def queue(self, name: str, encode: Callable[[T], str]) -> AzureDelayedQueue[T]:
        """One of Evergreen's queues in the app's storage (created if missing)."""
        from shared.adapters.azure.queues import AzureDelayedQueue, queue_client

        return AzureDelayedQueue(queue_client(self.settings.app_storage, self.credential, name), encode)

    def retrainer(self, policy: Policy) -> Retrainer:
        from shared.domain.retrain import retrain_check_to_json
        from shared.services.retrain import Retrainer

        return Retrainer(policy=policy, app_root=self.settings.policy_path.parent, ledger=self.ledger,
                         jobs=self.azureml, audit=self.audit, rechecks=self.queue(RETRAIN_QUEUE, retrain_check_to_json),
                         leases=self.leases)

    def approvals(self, policy: Policy) -> Approvals:
        """Manual approval (`promotion.approval: manual`): the Promoter's hold, the CLI's approve/reject."""
        from shared.adapters.azure.azureml import OnlineEndpoints
        from shared.domain.rollout import CandidateRetry
        from shared.services.approval import Approvals
        from shared.services.promotion import PROMOTION_RETRY_QUEUE

        return Approvals(policy=policy, ledger=self.ledger, endpoints=OnlineEndpoints(self.azureml),
                         retries=self.queue(PROMOTION_RETRY_QUEUE, CandidateRetry.to_json), audit=self.audit)

    def monitor(self, policy: Policy, retrainer: Retrainer) -> ChampionMonitor:
        """Champion re-scores (`functions/monitor.py`, re-score run events) on the Function App's own Retrainer."""
        from shared.adapters.azure.azureml import OnlineEndpoints
        from shared.services.monitor import ChampionMonitor

        root = self.settings.policy_path.parent
        return ChampionMonitor(policy=policy, endpoints=OnlineEndpoints(self.azureml), jobs=self.azureml,
                               data=self.azureml, ledger=self.ledger, audit=self.audit,
                               publisher=_publisher(self.settings, self.credential), retrainer=retrainer,
                               app_root=root, code_hash=functools.partial(deployed_code_hash, root))

    def retention(self, policy: Policy) -> RetentionRunner:
        from shared.adapters.azure.aml_retention import AmlRetention
        from shared.adapters.azure.blob_retention import BlobRetention
        from shared.services.retention import RetentionRunner

        return RetentionRunner(policy=policy.retention, workspace=AmlRetention(self.azureml),
                               blobs=BlobRetention(self.data_blobs), rollouts=self.ledger.rollouts,
                               approvals=self.ledger.open_approvals, audit=self.audit,
                               comparisons=self.ledger.open_comparisons, waiting=self.ledger.waiting_candidates)


def build_services(settings: Settings, policy: Policy) -> Services:
    """Every service of the Function App, on the Azure adapters."""
    from shared.adapters.azure.azureml import OnlineEndpoints
    from shared.adapters.azure.blobs import AzureBlobStore
    from shared.domain.ingest import blob_created_to_json, seal_request_to_json
    from shared.domain.rollout import CandidateRetry, RolloutTick
    from shared.services.ingest import SNAPSHOT_COPY_WORKERS, Ingestor
    from shared.services.promotion import PROMOTION_RETRY_QUEUE, ROLLOUT_QUEUE, Promoter, stall_patience

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
        copy_workers=SNAPSHOT_COPY_WORKERS,
    )
    approvals = clients.approvals(policy)
    promoter = Promoter(policy=policy, endpoints=OnlineEndpoints(clients.azureml), ledger=clients.ledger,
                        ticks=clients.queue(ROLLOUT_QUEUE, RolloutTick.to_json), audit=clients.audit,
                        app_root=settings.policy_path.parent,
                        retries=clients.queue(PROMOTION_RETRY_QUEUE, CandidateRetry.to_json),
                        stall_after=stall_patience(timedelta(seconds=settings.lease_seconds)),
                        approvals=approvals, jobs=clients.azureml, data=clients.azureml)
    retrainer = clients.retrainer(policy)
    return Services(settings=settings, policy=policy, ingestor=ingestor, retrainer=retrainer,
                    promoter=promoter, retention=clients.retention(policy), audit=clients.audit,
                    approvals=approvals, monitor=clients.monitor(policy, retrainer))


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


@functools.cache
def deployed_code_hash(app_root: Path) -> str:
    """The training code's hash as the pipeline's steps compute it (`ml/src/steplib.code_sha256` over `ml/src`):
    the same function, loaded from the deployed file, so the two can never disagree. "" if ml/src is absent."""
    import importlib.util

    source = app_root / "ml" / "src"
    spec = importlib.util.spec_from_file_location("evergreen_ml_steplib", source / "steplib.py")
    if spec is None or spec.loader is None or not (source / "steplib.py").is_file():
        log.warning("no training code at %s: code-change retraining is off", source)
        return ""
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.code_sha256(source))


def get_monitor() -> ChampionMonitor:
    """The champion monitor of the Function App's services (the rescore timer and re-score run events)."""
    monitor = get_services().monitor
    if monitor is None:
        raise RuntimeError("the services were built without the champion monitor")
    return monitor


def on_data_version_registered(services: Services, registered: DataVersionRegistered,
                               event_id: str) -> RetrainOutcome | MonitorOutcome:
    """Where a DataVersionRegistered goes (`functions/retrain.py`'s trigger, the chaos harness): the dataset's
    retraining; a version of some model's evaluation data also re-scores that model's champion (the monitor),
    and only that when nothing trains on the dataset. Then the promoter gates the candidates that waited for
    this evaluation data (`Promoter.on_evaluation_data`; its outcomes are logged, the answer stays the one
    above). Raises RuntimeError if the services have no monitor."""
    monitor = services.monitor
    if monitor is None:
        raise RuntimeError("the services were built without the champion monitor")
    evaluated = monitor.evaluates(registered)
    outcome: RetrainOutcome | MonitorOutcome
    if evaluated and services.policy.retraining_for(registered.dataset) is None:
        outcome = monitor.on_data_version(registered, event_id)
    else:
        outcome = services.retrainer.on_data_version_registered(registered, event_id)
        if evaluated:  # a dataset both trained on and evaluated on: both happen
            monitor.on_data_version(registered, event_id)
    for regated in services.promoter.on_evaluation_data(registered, event_id):
        log.info("data version event=%s %s:%s: waiting candidate %s: %s", event_id, registered.asset_name,
                 registered.version, regated.action.value, regated.detail)
    return outcome


def on_run_finished(services: Services, finished: RunFinished,
                    event_id: str) -> PromotionOutcome | MonitorOutcome | RetrainOutcome:
    """Where a finished Azure ML run goes, from its trigger (`functions/retrain.py:on_run_event`) or a replayed
    dead letter alike: a challenger's comparison to the promoter, a champion's re-score to the monitor, any other
    run to the retrainer. Raises RuntimeError for a re-score if the services were built without the monitor."""
    from shared.domain.vocabulary import ComparisonPurpose, Tag

    purpose = finished.tags.get(Tag.COMPARISON.value)
    if purpose == ComparisonPurpose.CHALLENGER.value:
        return services.promoter.on_comparison_finished(finished, event_id)
    if purpose == ComparisonPurpose.RESCORE.value:
        if services.monitor is None:
            raise RuntimeError("the services were built without the champion monitor")
        return services.monitor.on_rescore_finished(finished, event_id)
    return services.retrainer.on_run_finished(finished, event_id)


# -- recovery (issue 11): the reconciler and the redrive command --------------------------------------------
def get_reconciler() -> Reconciler:
    """The reconciler over every flow's service (the `reconcile` timer and `python -m shared.cli reconcile`)."""
    from shared.services.reconcile import Reconciler

    services = get_services()
    return Reconciler(flows={"ingest": services.ingestor, "retrain": services.retrainer,
                             "promotion": services.promoter, "approval": services.approvals},
                      dead_letters=lambda: build_redriver(services).count_waiting())


def build_redriver(services: Services) -> Redriver:
    """The redrive command's service: dead letters and poison queues of both accounts, and where replays go."""
    from shared.adapters.azure.queues import AzureDelayedQueue
    from shared.adapters.azure.redrive import (
        DEAD_LETTER_CONTAINER,
        AzurePoisonQueue,
        BlobDeadLetters,
        blob_trigger_queue_name,
        poison_queue_names,
        queue_service,
    )
    from shared.domain.redrive import BLOB_TRIGGER_POISON, BLOB_TRIGGER_QUEUE, POISON_SUFFIX
    from shared.services.redrive import Redriver

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

    return Redriver(
        dead_letters=BlobDeadLetters(blob_service(settings.app_storage, credential)
                                     .get_container_client(DEAD_LETTER_CONTAINER)),
        poison_queues=poison, queues=queues, publisher=_publisher(settings, credential),
        handlers=redrive_handlers(services), audit=services.audit,
    )


def redrive_handlers(services: Services) -> dict[str, Callable[[Mapping[str, Any]], object]]:
    """A dead-lettered Azure ML event type -> its trigger's parser and service, in-process (`redrive replay`)."""
    from shared.domain.retrain import RUN_COMPLETED, RUN_STATUS_CHANGED, parse_run_event
    from shared.domain.webhooks import MODEL_REGISTERED, parse_model_registered

    def run_event(document: Mapping[str, Any]) -> object:
        """As `functions/retrain.py:on_run_event`: the same parser, routed by `on_run_finished`."""
        return on_run_finished(services, parse_run_event(str(document["eventType"]), document["data"]),
                               str(document["id"]))

    return {MODEL_REGISTERED: lambda doc: services.promoter.on_model_version(parse_model_registered(doc)),
            RUN_COMPLETED: run_event, RUN_STATUS_CHANGED: run_event}


def build_retention(settings: Settings, policy: Policy) -> RetentionRunner:
    """Retention alone (`python -m shared.cli retention`): the workspace, the data account and the app's tables."""
    return _Clients(settings).retention(policy)


def build_operator(settings: Settings, policy: Policy, *, workspace: bool = False) -> Operator:
    """The operator's commands (`python -m shared.cli status|rollout|retrain`) on only what they need.

    The ledger, the audit log and the rollout queue come from the app's storage; with `workspace`
    (for `retrain`) also Azure ML and a Retrainer built as the Function App builds it.
    """
    from shared.domain.rollout import ROLLOUT_QUEUE, RolloutTick
    from shared.services.operator import Operator

    clients = _Clients(settings)
    ticks = clients.queue(ROLLOUT_QUEUE, RolloutTick.to_json)
    if not workspace:
        return Operator(policy=policy, ledger=clients.ledger, audit=clients.audit, ticks=ticks)
    return Operator(policy=policy, ledger=clients.ledger, audit=clients.audit, ticks=ticks,
                    retrainer=clients.retrainer(policy), registry=clients.azureml)


def build_approvals(settings: Settings, policy: Policy) -> Approvals:
    """`python -m shared.cli approve|reject`: the ledger, the audit log, the retry queue and the model registry."""
    return _Clients(settings).approvals(policy)


def build_audit_reader(settings: Settings) -> TableAuditLog:
    """`python -m shared.cli audit`: the audit log on the app's storage, read as it is (the table is not created)."""
    from shared.adapters.azure.tables import AzureTable
    from shared.services.audit import AUDIT_TABLE, TableAuditLog

    tables = table_service(settings.app_storage, credential_for(settings.client_id))
    return TableAuditLog(AzureTable(tables.get_table_client(AUDIT_TABLE)))


def build_validation_readers(env: Mapping[str, str]) -> tuple[PipelineReader, WorkspaceFacts | None]:
    """`python -m shared.cli validate`: azure-ai-ml's `load_job`, and the workspace `env` names (None when it
    names none: the workspace checks are then skipped with a note)."""
    from shared.adapters.azure.workspace_facts import AmlPipelineReader, workspace_facts

    return AmlPipelineReader(), workspace_facts(credential_for(env.get("AZURE_CLIENT_ID") or None), env)


def build_lineage(settings: Settings, policy: Policy, *, days: int = 30) -> LineageReader:
    """`python -m shared.cli lineage`: Azure ML (registry, jobs, endpoints), the ledger and the audit log."""
    from datetime import UTC, datetime

    from shared.adapters.azure.azureml import OnlineEndpoints
    from shared.services.lineage import LineageReader

    clients = _Clients(settings)
    endpoints = OnlineEndpoints(clients.azureml)
    return LineageReader(policy=policy, data=clients.azureml, jobs=clients.azureml, models=endpoints,
                         endpoints=endpoints, audit=clients.audit, ledger=clients.ledger,
                         clock=lambda: datetime.now(UTC), days=days)


def _publisher(settings: Settings, credential: TokenCredential) -> EventGridPublisher:
    from azure.core.credentials import AzureKeyCredential

    from shared.adapters.azure.eventgrid import EventGridPublisher

    key = settings.events_topic_key
    return EventGridPublisher(settings.events_topic_endpoint, AzureKeyCredential(key) if key else credential)


# -- observing (issue 14): the status page's read model ----------------------------------------------------
@functools.cache
def get_status_reader() -> StatusReader:
    """The status page's read model on the Function App's settings and clients (built once per process).

    Poison queues are listed on each read (the host creates them when a message first fails).
    """
    from shared.adapters.azure.azureml import OnlineEndpoints
    from shared.adapters.azure.redrive import (
        DEAD_LETTER_CONTAINER,
        AzurePoisonQueue,
        BlobDeadLetters,
        poison_queue_names,
        queue_service,
    )
    from shared.domain.redrive import BLOB_TRIGGER_POISON
    from shared.services.status import StatusReader

    settings, policy = load_configuration()
    clients = _Clients(settings)
    app_queues = queue_service(settings.app_storage, clients.credential)
    data_queues = queue_service(settings.data_storage, clients.credential)

    def poison() -> list[AzurePoisonQueue]:
        names = poison_queue_names(app_queues.list_queues(name_starts_with="evergreen-"))
        return [*(AzurePoisonQueue(app_queues.get_queue_client(n)) for n in names),
                AzurePoisonQueue(data_queues.get_queue_client(BLOB_TRIGGER_POISON))]

    return StatusReader(
        policy=policy, registry=clients.azureml, endpoints=OnlineEndpoints(clients.azureml), ledger=clients.ledger,
        audit=clients.audit, retention_schedule=settings.retention_schedule, retention=clients.retention(policy),
        dead_letters=BlobDeadLetters(blob_service(settings.app_storage, clients.credential)
                                     .get_container_client(DEAD_LETTER_CONTAINER)),
        poison_queues=poison, stuck_after=timedelta(seconds=settings.lease_seconds),
    )

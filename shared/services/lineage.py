"""Lineage of a model version or a data version (`python -m shared.cli lineage NAME:VERSION`).

From a model version it goes back (its lineage tags → the data version → its blobs, and the retraining
job with its steps) and forward (gate decisions, deployments with their traffic history, retention
actions). From a data version it goes forward: the models trained on it (a tag query per model name
the policy knows, bounded), where they serve, what retention did. Every read is bounded: the audit log
over `days` UTC days (at most `scan_limit` records), at most `limit` model versions per model name.

Ports only; the assembly is pure (`shared.domain.lineage`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime

from shared.config.policy import Policy
from shared.domain.audit import AuditRecord
from shared.domain.lineage import (
    DATA,
    MODEL,
    DataNode,
    DeploymentNode,
    JobInfo,
    Lineage,
    ModelNode,
    Subject,
    by_version,
    data_node,
    gate_decisions,
    model_node,
    retention_actions,
    retention_targets,
    rollout_phases,
)
from shared.domain.vocabulary import Tag
from shared.ports import AuditLog, Clock, DataRegistry, Endpoints, JobInspector, ModelRegistry
from shared.services.ledger import Ledger

log = logging.getLogger(__name__)

DEFAULT_DAYS = 30
DEFAULT_LIMIT = 50
SCAN_LIMIT = 20_000


class LineageReader:
    """Reads the chain around one asset through the ports; `None` when the asset itself does not exist."""

    def __init__(self, *, policy: Policy, data: DataRegistry, jobs: JobInspector, models: ModelRegistry,
                 endpoints: Endpoints, audit: AuditLog, ledger: Ledger, clock: Clock,
                 days: int = DEFAULT_DAYS, limit: int = DEFAULT_LIMIT, scan_limit: int = SCAN_LIMIT) -> None:
        self._policy = policy
        self._data = data
        self._jobs = jobs
        self._models = models
        self._endpoints = endpoints
        self._audit = audit
        self._ledger = ledger
        self._clock = clock
        self._days = days
        self._limit = limit
        self._scan_limit = scan_limit

    def of(self, name: str, version: str) -> Lineage | None:
        """The chain around `name:version`: a data version if the policy names a dataset `name` (or no model
        has that version), else a model version; None if neither exists. Errors of the ports propagate."""
        if any(d.name == name for d in self._policy.datasets):
            return self.of_data(name, version)
        return self.of_model(name, version) or self.of_data(name, version)

    def of_model(self, name: str, version: str) -> Lineage | None:
        """The chain through model `name:version`; None if the registry has no such version.

        Errors of the ports propagate (`OperationFailedError`, azure-core's `AzureError`).
        """
        info = self._endpoints.get_model(name, version)
        if info is None:
            return None
        model = model_node(info.name, info.version, info.tags)
        notes: list[str] = []
        data: list[DataNode] = []
        if model.data:
            asset, _, data_version = model.data.partition(":")
            found = self._data_node(asset, data_version)
            if found is None:
                notes.append(f"data version {model.data} named by the model's tags is gone from the registry")
            else:
                data.append(found)
        else:
            notes.append(f"model {name}:{version} carries no lineage tags ({Tag.DATA_ASSET.value}, "
                         f"{Tag.DATA_VERSION.value}): it was not trained by Evergreen")
        log.info("lineage model=%s:%s data=%s job=%s", name, version, model.data or "-", model.job or "-")
        return self._assemble(Subject(MODEL, name, version), data, [model], [model.job], notes)

    def of_data(self, name: str, version: str) -> Lineage | None:
        """The chain from data version `name:version` forward; None if the registry has no such version.

        Errors of the ports propagate (`OperationFailedError`, azure-core's `AzureError`).
        """
        node = self._data_node(name, version)
        if node is None:
            return None
        models: list[ModelNode] = []
        for model_name in self._model_names(name):
            found = self._models.list_model_versions(
                model_name, tags={Tag.DATA_ASSET.value: name, Tag.DATA_VERSION.value: version}, limit=self._limit)
            models += [model_node(m.name, m.version, m.tags) for m in found]
        records = self._records()
        ref = f"{name}:{version}"
        submitted = [r.assets["job"] for r in records if r.kind.startswith("retrain.")
                     and r.assets.get("data") == ref and r.assets.get("job")]
        log.info("lineage data=%s models=%d jobs=%d", ref, len(models), len(set(submitted)))
        return self._assemble(Subject(DATA, name, version), [node], by_version(models),
                              [m.job for m in models] + submitted, [], records)

    # -- gathering --------------------------------------------------------------------------------
    def _model_names(self, dataset: str) -> list[str]:
        """The model names that may be trained on `dataset`: its retraining policy's, then the policy's models."""
        names = [r.model_name for r in self._policy.retraining if r.dataset == dataset]
        names += [m.name for m in self._policy.models]
        return list(dict.fromkeys(names))

    def _data_node(self, name: str, version: str) -> DataNode | None:
        info = self._data.get_data_version(name, version)
        if info is None:
            return None
        container = next((d.container for d in self._policy.datasets if d.name == name), "")
        return data_node(info.name, info.version, info.uri, info.tags, container)

    def _records(self) -> list[AuditRecord]:
        """The audit log of the last `days` UTC days, at most `scan_limit` records (newest first)."""
        read = self._audit.query(days=self._days, now=self._clock())
        return list(itertools.islice(read, self._scan_limit))

    def _job_infos(self, names: Iterable[str], notes: list[str]) -> tuple[JobInfo, ...]:
        jobs: list[JobInfo] = []
        for name in dict.fromkeys(n for n in names if n):
            job = self._jobs.get_job(name)
            if job is None:
                notes.append(f"job {name} is gone from the workspace")
                continue
            jobs.append(job)
            if job.note:
                notes.append(f"job {name}: {job.note}")
        return tuple(jobs)

    def _deployments(self, models: Sequence[ModelNode], records: Sequence[AuditRecord]) -> list[DeploymentNode]:
        """Every deployment of each model on its policy's endpoint: now (traffic, state) and its rollout's phases."""
        found: list[DeploymentNode] = []
        for model in models:
            policy = self._policy.model(model.name)
            if policy is None:
                continue
            endpoint = policy.promotion.endpoint
            ref = f"{model.name}:{model.version}"
            phases = rollout_phases(records, ref, endpoint)
            view = self._endpoints.endpoint(endpoint)
            row = self._ledger.get_rollout(endpoint)
            phase = row.state if row is not None and row.candidate == ref else ""
            live = [d for d in (view.deployments if view else ()) if d.model == (model.name, model.version)]
            names = [d.name for d in live]
            names += [p.assets["deployment"] for p in phases if p.assets.get("deployment")]
            if row is not None and row.candidate == ref:
                names.append(row.deployment)
            for deployment in dict.fromkeys(names):
                current = view.deployment(deployment) if view else None
                found.append(DeploymentNode(
                    endpoint=endpoint, deployment=deployment, model=ref,
                    traffic=view.traffic.get(deployment, 0) if view and current else None,
                    state=current.state if current else "gone", rollout_phase=phase, phases=phases))
        return found

    def _assemble(self, subject: Subject, data: Sequence[DataNode], models: Sequence[ModelNode],
                  job_names: Iterable[str], notes: list[str],
                  records: Sequence[AuditRecord] | None = None) -> Lineage:
        records = self._records() if records is None else records
        if len(records) >= self._scan_limit:
            notes.append(f"the audit log was read up to {self._scan_limit} records: older decisions are not shown")
        jobs = self._job_infos(job_names, notes)
        deployments = self._deployments(models, records)
        refs = [f"{m.name}:{m.version}" for m in models]
        return Lineage(
            subject=subject, data=tuple(data), jobs=jobs, models=tuple(models),
            decisions=gate_decisions(records, refs), deployments=tuple(deployments),
            retention=retention_actions(records, retention_targets(data, models, deployments)),
            notes=(*notes, self._window()))

    def _window(self) -> str:
        now: datetime = self._clock()
        return (f"decisions, rollouts and retention from the audit log of the last {self._days} UTC day(s) "
                f"(to {now:%Y-%m-%d %H:%M} UTC)")

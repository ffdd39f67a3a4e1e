"""Lineage as values: the chain blobs → data version → retraining job → model version(s) → gate decisions →
deployments and their traffic history → retention actions, assembled purely from what the ports read.

`shared.services.lineage` gathers the facts (registry, jobs, endpoints, the audit log, the ledger's
rollout rows); the functions here decide what belongs to the chain and shape it for the CLI
(`python -m shared.cli lineage`). Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from shared.domain.audit import AuditRecord
from shared.domain.urls import strip_query
from shared.domain.vocabulary import RETENTION_AUDIT_PREFIX, TAG_PREFIX, Tag, version_order

DATA = "data"
MODEL = "model"
_STEP = re.compile(r"\(step (\d+)\)")
GATE_PREFIX = "promotion."
ROLLOUT_PREFIX = "rollout."


@dataclass(frozen=True)
class Subject:
    """What the operator asked about: a model version or a data version (`name:version`)."""

    kind: str  # DATA | MODEL
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


def parse_subject(text: str) -> tuple[str, str]:
    """`name:version` → (name, version). Raises ValueError naming the expected shape."""
    name, sep, version = text.strip().partition(":")
    if not sep or not name or not version or ":" in version:
        raise ValueError(f"{text!r} is not a reference: expected NAME:VERSION, e.g. churn-model:3 or churn-training:2")
    return name, version


@dataclass(frozen=True)
class JobStep:
    """One child step of a pipeline job, as the SDK lists it (status "" when the service does not say)."""

    name: str
    status: str


@dataclass(frozen=True)
class JobInfo:
    """A retraining job: its status, tags and child steps."""

    name: str
    status: str
    tags: Mapping[str, str] = field(default_factory=dict)
    steps: tuple[JobStep, ...] = ()
    note: str = ""  # why the steps' statuses are missing, when they are


@dataclass(frozen=True)
class BlobLink:
    """A blob (or folder) in the chain: where the data came from, and the snapshot the version points at."""

    role: str  # source | source_folder | snapshot
    path: str  # container/name, never a URL with a query string


@dataclass(frozen=True)
class DataNode:
    name: str
    version: str
    uri: str
    blobs: tuple[BlobLink, ...]
    files: str = ""  # how many files a folder version holds (its `evergreen.files` tag)
    sha256: str = ""


@dataclass(frozen=True)
class ModelNode:
    name: str
    version: str
    data: str  # "asset:version" it was trained on ("" if its tags do not say)
    job: str
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One audit record in the chain, shortened to what a reader needs."""

    at: datetime
    kind: str
    decision: str
    reason: str
    assets: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DeploymentNode:
    """A deployment of one model version on an endpoint: its traffic now, and its rollout's phases with times."""

    endpoint: str
    deployment: str
    model: str  # name:version
    traffic: int | None  # percent now; None if the deployment is gone
    state: str  # provisioning state now, or "gone"
    rollout_phase: str  # the endpoint row's phase when this model is (or was last) its candidate, else ""
    phases: tuple[Step, ...] = ()


@dataclass(frozen=True)
class Lineage:
    """The whole chain around one subject, ready to print or serialise."""

    subject: Subject
    data: tuple[DataNode, ...]
    jobs: tuple[JobInfo, ...]
    models: tuple[ModelNode, ...]
    decisions: tuple[Step, ...]
    deployments: tuple[DeploymentNode, ...]
    retention: tuple[Step, ...]
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (times as ISO strings)."""
        doc = asdict(self)
        doc["subject"] = {"kind": self.subject.kind, "name": self.subject.name, "version": self.subject.version}
        out: dict[str, Any] = _iso(doc)
        return out


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _iso(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_iso(v) for v in value]
    return value


# -- assembly -----------------------------------------------------------------------------------------
def data_blobs(uri: str, tags: Mapping[str, str], container: str = "") -> tuple[BlobLink, ...]:
    """Where a data version came from (its `evergreen.source_*` tags) and the snapshot it points at.

    `container` is the dataset's container, for a datastore URI (`azureml://datastores/<ds>/paths/<path>`).
    """
    links: list[BlobLink] = []
    if tags.get(Tag.SOURCE_URL.value):
        links.append(BlobLink("source", _path_of(tags[Tag.SOURCE_URL.value], "")))
    if tags.get(Tag.SOURCE_FOLDER.value):
        links.append(BlobLink("source_folder", tags[Tag.SOURCE_FOLDER.value]))
    if uri:
        links.append(BlobLink("snapshot", _path_of(uri, container)))
    return tuple(links)


def _path_of(uri: str, container: str) -> str:
    """`container/name` of a blob URL or of a datastore URI in `container` (never the query string)."""
    text = strip_query(uri)
    if "/paths/" in text:
        path = text.split("/paths/", 1)[1]
        return f"{container}/{path}" if container else path
    if "://" in text:
        return text.split("://", 1)[1].split("/", 1)[-1]
    return text


def data_node(name: str, version: str, uri: str, tags: Mapping[str, str], container: str = "") -> DataNode:
    return DataNode(name=name, version=version, uri=strip_query(uri), blobs=data_blobs(uri, tags, container),
                    files=tags.get(Tag.FILES.value, ""), sha256=tags.get(Tag.SHA256.value, ""))


def model_node(name: str, version: str, tags: Mapping[str, str]) -> ModelNode:
    """A model version with the lineage its tags carry (`evergreen.data_asset`/`data_version`/`job_name`)."""
    asset, data_version = tags.get(Tag.DATA_ASSET.value, ""), tags.get(Tag.DATA_VERSION.value, "")
    return ModelNode(name=name, version=version, data=f"{asset}:{data_version}" if asset and data_version else "",
                     job=tags.get(Tag.JOB_NAME.value, ""),
                     tags={k: v for k, v in tags.items() if k.startswith(TAG_PREFIX)})


def trained_on(tags: Mapping[str, str], data: str, version: str) -> bool:
    """Whether a model version's lineage tags name this data version."""
    return tags.get(Tag.DATA_ASSET.value) == data and tags.get(Tag.DATA_VERSION.value) == version


def step(record: AuditRecord) -> Step:
    return Step(at=record.at, kind=record.kind, decision=record.decision, reason=record.reason,
                assets=dict(record.assets))


def gate_decisions(records: Iterable[AuditRecord], models: Iterable[str]) -> tuple[Step, ...]:
    """The gate's decisions (`promotion.*`) about any of `models` (`name:version`), oldest first."""
    wanted = set(models)
    return _oldest_first(r for r in records if r.kind.startswith(GATE_PREFIX) and r.assets.get("model") in wanted)


def rollout_phases(records: Iterable[AuditRecord], model: str, endpoint: str) -> tuple[Step, ...]:
    """The rollout's phases (`rollout.*`) of `model` on `endpoint`, oldest first: its traffic history.

    Phases entered in the same second keep the order of their step (the promoter writes `<phase> (step N)`).
    """
    chosen = [r for r in records if r.kind.startswith(ROLLOUT_PREFIX)
              and r.assets.get("model") == model and r.assets.get("endpoint") == endpoint]
    return tuple(step(r) for r in sorted(chosen, key=lambda r: (r.at, _step_number(r.decision))))


def _step_number(decision: str) -> int:
    found = _STEP.search(decision)
    return int(found.group(1)) if found else -1


def retention_targets(data: Iterable[DataNode], models: Iterable[ModelNode],
                      deployments: Iterable[DeploymentNode]) -> frozenset[str]:
    """The retention target names (as `retention.*` audit records spell them) of every asset in the chain."""
    names = {f"data:{d.name}:{d.version}" for d in data}
    names |= {f"blob:{b.path}" for d in data for b in d.blobs if b.role != "source_folder"}
    names |= {f"blob:{b.path}*" for d in data for b in d.blobs if b.role != "source" and b.path.endswith("/")}
    names |= {f"model:{m.name}:{m.version}" for m in models}
    names |= {f"deployment:{d.endpoint}/{d.deployment}" for d in deployments}
    names |= {f"job-output:{m.job}" for m in models if m.job}
    return frozenset(names)


def retention_actions(records: Iterable[AuditRecord], targets: frozenset[str]) -> tuple[Step, ...]:
    """Retention's records (`retention.*`) that name an asset of the chain, oldest first."""
    return _oldest_first(r for r in records if r.kind.startswith(RETENTION_AUDIT_PREFIX) and _names(r, targets))


def _names(record: AuditRecord, targets: frozenset[str]) -> bool:
    """Whether a retention record's target is in the chain: exactly, under a folder (`…/*`), or a job's output."""
    target = record.assets.get("target", "")
    if not target:
        return False
    if target in targets or any(t.endswith("*") and target.startswith(t[:-1]) for t in targets):
        return True
    return _names_job(record, targets)


def _names_job(record: AuditRecord, targets: frozenset[str]) -> bool:
    """A job output's target is its folder; it names the job when the job's name is a segment of it."""
    target = record.assets.get("target", "")
    jobs = {t.removeprefix("job-output:") for t in targets if t.startswith("job-output:")}
    return any(f"/{job}/" in f"/{target}/" for job in jobs)


def _oldest_first(records: Iterable[AuditRecord]) -> tuple[Step, ...]:
    return tuple(step(r) for r in sorted(records, key=lambda r: r.at))


def by_version(models: Sequence[ModelNode]) -> tuple[ModelNode, ...]:
    """Models sorted by name, then version (numbers as numbers)."""
    return tuple(sorted(models, key=lambda m: (m.name, version_order(m.version))))

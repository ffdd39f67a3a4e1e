"""Retention: which old data versions, models, blobs, idle deployments and job outputs to retire.

The `retention:` section of the policy file holds rules shaped like Azure Storage lifecycle
management (a name, a type, filters, and actions gated by `daysAfter…` conditions), but about
Azure ML assets. `plan_retention` turns an `Inventory` snapshot and those rules into a
`RetentionPlan`: a sorted list of `Action`s, each with its reason and rule, plus the `Protected`
assets a rule would have touched and why it did not. It is pure (no I/O); an `apply_*` step
elsewhere executes the actions.

Protection is computed once, before any rule is evaluated, and always wins: anything deployed or
taking traffic, each endpoint's champion, the data version it was trained from and that version's
blobs, inputs and outputs of unfinished jobs, models and data of in-flight rollouts, and anything
tagged with the protection tag. A blob is also never deleted or tiered while a non-archived data
version (or model) references it.

A plan is computed against one snapshot and never counts on its own actions: blobs freed by a
version archived in this run are retired on the next run, and a model becomes archivable only once
its last deployment is gone. The price is that retention converges over a few runs; the gain is that
any subset of a plan, applied in any order or concurrently, or cut short by a crash, is safe.

The shape of the section is shown by `EXAMPLE_YAML` below; `parse_retention` validates it.
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel

from shared.errors import ConfigurationError
from shared.keys import digest, version_order

EXAMPLE_YAML = """\
retention:
  protectTag: evergreen.keep
  rules:
    - name: archive-old-training-data
      type: dataVersions
      filters: {names: [churn-training]}
      actions:
        keepLatest: 5
        archive: {daysAfterCreationGreaterThan: 30}
    - name: prune-models
      type: modelVersions
      filters: {prefixes: [churn-]}
      actions:
        keepLatest: 3
        keepTopK: {k: 2, metric: auc, direction: max}
        archive: {daysAfterCreationGreaterThan: 14}
        delete: {daysAfterCreationGreaterThan: 180}
    - name: raw-drops
      type: blobs
      filters: {prefixes: [landing/churn/]}
      actions:
        tierToCool: {daysAfterModificationGreaterThan: 30}
        tierToArchive: {daysAfterModificationGreaterThan: 90}
        delete: {daysAfterModificationGreaterThan: 365}
    - name: idle-deployments
      type: deployments
      actions:
        deleteIdle: {hoursAtZeroTrafficGreaterThan: 24}
    - name: old-job-outputs
      type: jobOutputs
      enabled: false
      actions:
        delete: {daysAfterCompletionGreaterThan: 60}
"""

DEFAULT_PROTECT_TAG = "evergreen.keep"

# Azure ML job statuses after which a job reads and writes nothing more. Any other status, including
# one we do not know, counts as running: an unknown state must protect, not expose.
FINISHED_JOB_STATUSES = frozenset({"completed", "failed", "canceled", "cancelled"})
# Rollout states that are over. Any other state counts as in flight, for the same reason.
FINISHED_ROLLOUT_STATES = frozenset(
    {"completed", "succeeded", "promoted", "failed", "rolled_back", "rolledback", "aborted", "cancelled", "canceled"}
)

_RULE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


# == the `retention:` section of the policy file ====================================================
class RuleType(str, Enum):
    DATA_VERSIONS = "dataVersions"
    MODEL_VERSIONS = "modelVersions"
    BLOBS = "blobs"
    DEPLOYMENTS = "deployments"
    JOB_OUTPUTS = "jobOutputs"


class Direction(str, Enum):
    MAX = "max"
    MIN = "min"


class _Section(BaseModel):
    """camelCase in the file (as in Azure lifecycle policies), snake_case in Python.

    Numbers and booleans are strict: `"30"` or `enabled: "no"` is an error, not a silent coercion.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)


Days = Annotated[int, Field(ge=0, le=36500, strict=True)]


class AfterCreation(_Section):
    days_after_creation_greater_than: Days


class AfterModification(_Section):
    days_after_modification_greater_than: Days


class DeleteCondition(_Section):
    """`delete` takes the age that fits the asset: creation (versions), modification (blobs), completion (jobs)."""

    days_after_creation_greater_than: Days | None = None
    days_after_modification_greater_than: Days | None = None
    days_after_completion_greater_than: Days | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> DeleteCondition:
        given = [k for k, v in self._conditions().items() if v is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one condition: daysAfterCreationGreaterThan (dataVersions, modelVersions), "
                "daysAfterModificationGreaterThan (blobs) or daysAfterCompletionGreaterThan (jobOutputs)"
            )
        return self

    def _conditions(self) -> dict[str, int | None]:
        return {
            "daysAfterCreationGreaterThan": self.days_after_creation_greater_than,
            "daysAfterModificationGreaterThan": self.days_after_modification_greater_than,
            "daysAfterCompletionGreaterThan": self.days_after_completion_greater_than,
        }

    @property
    def days(self) -> int:
        return next(v for v in self._conditions().values() if v is not None)

    @property
    def condition(self) -> str:
        return next(k for k, v in self._conditions().items() if v is not None)


class KeepTopK(_Section):
    k: Annotated[int, Field(ge=1, strict=True)]
    metric: Annotated[str, Field(min_length=1)]
    direction: Direction = Direction.MAX


class DeleteIdle(_Section):
    hours_at_zero_traffic_greater_than: Annotated[float, Field(gt=0, le=24 * 36500, strict=True)]


class RuleActions(_Section):
    """Every action and exemption any rule type may use; `RetentionRule` checks which fit its type."""

    keep_latest: Annotated[int, Field(ge=1, strict=True)] | None = None
    keep_top_k: KeepTopK | None = None
    archive: AfterCreation | None = None
    delete: DeleteCondition | None = None
    tier_to_cool: AfterModification | None = None
    tier_to_archive: AfterModification | None = None
    delete_idle: DeleteIdle | None = None

    def given(self) -> list[str]:
        """The camelCase names of the entries set, as written in the file."""
        return [to_camel(name) for name in type(self).model_fields if getattr(self, name) is not None]


class RuleFilters(_Section):
    """Which assets a rule looks at; empty means all of its type. Every given filter must match.

    `names` (exact) and `prefixes` match the data asset name, the model name, the endpoint name
    (deployments) or the job name (jobOutputs). For blobs, `prefixes` are 'container/path-prefix' as
    in Azure lifecycle rules' prefixMatch. `tags` must all be equal (blobs: blob index tags).
    """

    names: tuple[Annotated[str, Field(min_length=1)], ...] = ()
    prefixes: tuple[Annotated[str, Field(min_length=1)], ...] = ()
    tags: dict[str, str] = Field(default_factory=dict)


_ALLOWED_ACTIONS: dict[RuleType, tuple[str, ...]] = {
    RuleType.DATA_VERSIONS: ("keepLatest", "archive", "delete"),
    RuleType.MODEL_VERSIONS: ("keepLatest", "keepTopK", "archive", "delete"),
    RuleType.BLOBS: ("delete", "tierToCool", "tierToArchive"),
    RuleType.DEPLOYMENTS: ("deleteIdle",),
    RuleType.JOB_OUTPUTS: ("delete",),
}
_DELETE_CONDITION: dict[RuleType, str] = {
    RuleType.DATA_VERSIONS: "daysAfterCreationGreaterThan",
    RuleType.MODEL_VERSIONS: "daysAfterCreationGreaterThan",
    RuleType.BLOBS: "daysAfterModificationGreaterThan",
    RuleType.JOB_OUTPUTS: "daysAfterCompletionGreaterThan",
}
_KEEPS = ("keepLatest", "keepTopK")


class RetentionRule(_Section):
    """One rule: which assets (`filters`), what to spare (`keep…`) and what to do after how long.

    Which actions fit which type is checked here, so a rule that could never act, or would act on
    the wrong clock, fails at start-up with a message naming the fix.
    """

    name: str
    enabled: Annotated[bool, Field(strict=True)] = True
    type: RuleType
    filters: RuleFilters = Field(default_factory=RuleFilters)
    actions: RuleActions

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _RULE_NAME_RE.match(value):
            raise ValueError("must be 1-63 letters, digits, '_', '.', '-', starting with a letter or digit")
        return value

    @field_validator("filters")
    @classmethod
    def _filters_fit_the_type(cls, value: RuleFilters, info: ValidationInfo) -> RuleFilters:
        kind = info.data.get("type")
        if kind is RuleType.BLOBS:
            if value.names:
                raise ValueError("a blobs rule selects blobs by prefixes ('container/path/'), not names")
            for prefix in value.prefixes:
                container, sep, _ = prefix.partition("/")
                if not sep or not container or prefix.startswith("/"):
                    raise ValueError(
                        f"prefix {prefix!r} must start with the container, as in Azure lifecycle rules: "
                        "'landing/' or 'landing/churn/'"
                    )
        if kind is RuleType.DEPLOYMENTS and value.tags:
            raise ValueError("a deployments rule cannot filter by tags; filter endpoints by names or prefixes")
        return value

    @field_validator("actions")
    @classmethod
    def _actions_fit_the_type(cls, value: RuleActions, info: ValidationInfo) -> RuleActions:
        kind = info.data.get("type")
        if not isinstance(kind, RuleType):
            return value  # the type itself is invalid and already reported
        allowed = _ALLOWED_ACTIONS[kind]
        wrong = [a for a in value.given() if a not in allowed]
        if wrong:
            raise ValueError(
                f"{', '.join(wrong)} cannot be used in a {kind.value} rule; it takes {', '.join(allowed)}"
            )
        if not [a for a in value.given() if a not in _KEEPS]:
            doing = [a for a in allowed if a not in _KEEPS]
            raise ValueError(
                f"no action: a {kind.value} rule needs {' or '.join(doing)} "
                "(keepLatest and keepTopK only say what to spare)"
            )
        if value.delete is not None and value.delete.condition != _DELETE_CONDITION[kind]:
            raise ValueError(
                f"delete in a {kind.value} rule takes {_DELETE_CONDITION[kind]}, not {value.delete.condition}"
            )
        if value.archive is not None and value.delete is not None and value.delete.days < (
            value.archive.days_after_creation_greater_than
        ):
            raise ValueError(
                f"delete after {value.delete.days} days comes before archive after "
                f"{value.archive.days_after_creation_greater_than}: versions would be deleted before being archived"
            )
        cool, cold = value.tier_to_cool, value.tier_to_archive
        if cool is not None and cold is not None and (
            cold.days_after_modification_greater_than <= cool.days_after_modification_greater_than
        ):
            raise ValueError("tierToArchive must come later than tierToCool (more days), or tierToCool never happens")
        return value


class RetentionPolicy(_Section):
    """The `retention:` section: the protection tag and the rules, evaluated independently."""

    protect_tag: Annotated[str, Field(min_length=1)] = DEFAULT_PROTECT_TAG
    rules: tuple[RetentionRule, ...] = ()

    @model_validator(mode="after")
    def _unique_names(self) -> RetentionPolicy:
        names = [r.name for r in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique (they are recorded in the audit log); repeated: "
                             f"{', '.join(duplicates)}")
        return self


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def parse_retention(document: object, *, source: str = "policy") -> RetentionPolicy:
    """Validate the `retention:` section on its own; every problem is reported with its path.

    Embedding `RetentionPolicy` as a field of the policy model gives the same paths through its parser.
    """
    try:
        return RetentionPolicy.model_validate(document if document is not None else {})
    except ValidationError as exc:
        problems = [
            f"retention{_path(tuple(e['loc']))}: "
            + str(e["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
            for e in exc.errors()
        ]
        raise ConfigurationError(source, problems) from exc


# == typed keys ======================================================================================
@dataclass(frozen=True)
class DataKey:
    name: str
    version: str

    def __str__(self) -> str:
        return f"data:{self.name}:{self.version}"

    def sort_key(self) -> tuple[Any, ...]:
        return ("data", self.name, version_order(self.version))


@dataclass(frozen=True)
class ModelKey:
    name: str
    version: str

    def __str__(self) -> str:
        return f"model:{self.name}:{self.version}"

    def sort_key(self) -> tuple[Any, ...]:
        return ("model", self.name, version_order(self.version))


@dataclass(frozen=True)
class BlobKey:
    container: str
    name: str

    def __str__(self) -> str:
        return f"blob:{self.container}/{self.name}"

    def sort_key(self) -> tuple[Any, ...]:
        return ("blob", self.container, self.name)


@dataclass(frozen=True)
class DeploymentKey:
    endpoint: str
    name: str

    def __str__(self) -> str:
        return f"deployment:{self.endpoint}/{self.name}"

    def sort_key(self) -> tuple[Any, ...]:
        return ("deployment", self.endpoint, self.name)


@dataclass(frozen=True)
class BlobPath:
    """A path in a container that an asset references: a folder if it ends with '/', else a file.

    A path without a trailing '/' is treated as both the file and the folder of that name, so an
    adapter that drops the '/' of a uri_folder protects too much, never too little. '' is the whole
    container.
    """

    container: str
    path: str

    def __str__(self) -> str:
        return f"{self.container}/{self.path}"


@dataclass(frozen=True)
class JobOutputKey:
    job: str
    output: str
    path: BlobPath

    def __str__(self) -> str:
        return f"job-output:{self.job}/{self.output}"

    def sort_key(self) -> tuple[Any, ...]:
        return ("job-output", self.job, self.output)


AssetKey = DataKey | ModelKey | BlobKey | DeploymentKey | JobOutputKey
JobInput = DataKey | ModelKey | BlobPath


# == the inventory: one snapshot, listed by adapters =================================================
def _require_aware(owner: object, name: str, value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{type(owner).__name__}.{name} must be timezone-aware (UTC), got {value!r}")


class BlobTier(str, Enum):
    HOT = "Hot"
    COOL = "Cool"
    COLD = "Cold"
    ARCHIVE = "Archive"


_TIER_RANK = {BlobTier.HOT: 0, BlobTier.COOL: 1, BlobTier.COLD: 2, BlobTier.ARCHIVE: 3}


@dataclass(frozen=True)
class DataVersion:
    name: str
    version: str
    created_at: datetime
    archived: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)
    blob_paths: tuple[BlobPath, ...] = ()

    def __post_init__(self) -> None:
        _require_aware(self, "created_at", self.created_at)

    @property
    def key(self) -> DataKey:
        return DataKey(self.name, self.version)


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    created_at: datetime
    archived: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    data_asset: str | None = None  # lineage: the data version it was trained from
    data_version: str | None = None
    blob_paths: tuple[BlobPath, ...] = ()  # its artifacts, when they live in a watched container
    job: str | None = None  # the job whose outputs it was registered from

    def __post_init__(self) -> None:
        _require_aware(self, "created_at", self.created_at)

    @property
    def key(self) -> ModelKey:
        return ModelKey(self.name, self.version)

    @property
    def trained_on(self) -> DataKey | None:
        if self.data_asset and self.data_version:
            return DataKey(self.data_asset, self.data_version)
        return None


@dataclass(frozen=True)
class Blob:
    container: str
    name: str
    last_modified: datetime
    tier: BlobTier | None = BlobTier.HOT  # None: the account default (Hot)
    tags: Mapping[str, str] = field(default_factory=dict)  # blob index tags

    def __post_init__(self) -> None:
        _require_aware(self, "last_modified", self.last_modified)

    @property
    def key(self) -> BlobKey:
        return BlobKey(self.container, self.name)


@dataclass(frozen=True)
class Deployment:
    endpoint: str
    name: str
    traffic_percent: int
    zero_traffic_since: datetime | None = None  # None with 0% traffic: unknown, so never idle
    model_name: str | None = None
    model_version: str | None = None
    mirror_traffic_percent: int = 0  # shadow traffic counts as taking traffic
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require_aware(self, "zero_traffic_since", self.zero_traffic_since)

    @property
    def key(self) -> DeploymentKey:
        return DeploymentKey(self.endpoint, self.name)

    @property
    def model(self) -> ModelKey | None:
        if self.model_name and self.model_version:
            return ModelKey(self.model_name, self.model_version)
        return None

    @property
    def takes_traffic(self) -> bool:
        return self.traffic_percent > 0 or self.mirror_traffic_percent > 0


@dataclass(frozen=True)
class Job:
    name: str
    status: str  # Azure ML job status: Queued, Running, Completed, Failed, Canceled, ...
    inputs: tuple[JobInput, ...] = ()
    outputs: Mapping[str, BlobPath] = field(default_factory=dict)
    finished_at: datetime | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require_aware(self, "finished_at", self.finished_at)

    @property
    def finished(self) -> bool:
        return self.status.strip().lower() in FINISHED_JOB_STATUSES


@dataclass(frozen=True)
class Rollout:
    endpoint: str
    candidate: ModelKey
    state: str
    deployment: str | None = None  # the candidate's deployment, when already created

    @property
    def in_flight(self) -> bool:
        return self.state.strip().lower() not in FINISHED_ROLLOUT_STATES


@dataclass(frozen=True)
class Inventory:
    """Everything retention may look at, listed at one instant `now` (timezone-aware)."""

    now: datetime
    data_versions: tuple[DataVersion, ...] = ()
    model_versions: tuple[ModelVersion, ...] = ()
    blobs: tuple[Blob, ...] = ()
    deployments: tuple[Deployment, ...] = ()
    jobs: tuple[Job, ...] = ()
    rollouts: tuple[Rollout, ...] = ()

    def __post_init__(self) -> None:
        _require_aware(self, "now", self.now)


# == the plan ========================================================================================
class ActionKind(str, Enum):
    ARCHIVE_DATA = "archive_data"
    DELETE_DATA = "delete_data"
    ARCHIVE_MODEL = "archive_model"
    DELETE_MODEL = "delete_model"
    DELETE_BLOB = "delete_blob"
    TIER_BLOB = "tier_blob"
    DELETE_DEPLOYMENT = "delete_deployment"
    DELETE_JOB_OUTPUT = "delete_job_output"


_KIND_ORDER = {kind: i for i, kind in enumerate(ActionKind)}


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    target: AssetKey
    reason: str
    rule: str
    tier: BlobTier | None = None  # for tier_blob: the tier to move to

    @property
    def key(self) -> str:
        """Idempotency key for the audit log: the same decision on the same asset gives the same key."""
        return digest(self.kind.value, str(self.target), self.tier.value if self.tier else "")

    def sort_key(self) -> tuple[Any, ...]:
        return (_KIND_ORDER[self.kind], self.target.sort_key())


@dataclass(frozen=True)
class Protected:
    """An asset a rule would have retired, and why it was spared."""

    target: AssetKey
    reason: str


@dataclass(frozen=True)
class RetentionPlan:
    now: datetime
    actions: tuple[Action, ...]
    protected: tuple[Protected, ...]

    @property
    def is_empty(self) -> bool:
        return not self.actions

    def targets(self) -> frozenset[AssetKey]:
        return frozenset(a.target for a in self.actions)


# == protection ======================================================================================
class _PathIndex:
    """Blob paths referenced by assets, answering 'who references this blob/folder?' in O(depth + hits).

    Files and folders sit in hash maps, so a blob's references are found by looking up its own name
    and each of its parent folders. `overlapping` also finds references *below* a folder through a
    sorted list and bisect. No scan over all references per blob: 20k blobs × 10k versions stays linear.
    """

    def __init__(self) -> None:
        self._files: dict[tuple[str, str], list[str]] = defaultdict(list)
        self._folders: dict[tuple[str, str], list[str]] = defaultdict(list)
        self._sorted: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self._dirty = False

    def add(self, path: BlobPath, why: str) -> None:
        if path.path == "" or path.path.endswith("/"):
            self._folders[(path.container, path.path)].append(why)
        else:
            self._files[(path.container, path.path)].append(why)
            self._folders[(path.container, path.path + "/")].append(why)
        self._sorted[path.container].append((path.path, why))
        self._dirty = True

    def covering(self, container: str, name: str) -> list[str]:
        """Who references the blob `name`: itself as a file, or any folder above it."""
        found = list(self._files.get((container, name), ()))
        found += self._folders.get((container, ""), ())
        end = name.find("/")
        while end != -1:
            found += self._folders.get((container, name[: end + 1]), ())
            end = name.find("/", end + 1)
        return found

    def overlapping(self, path: BlobPath) -> list[str]:
        """Who references anything at, above or below `path` (a folder, or a file that may be a folder)."""
        if self._dirty:
            for entries in self._sorted.values():
                entries.sort()
            self._dirty = False
        found = self.covering(path.container, path.path)
        folder = path.path if path.path == "" or path.path.endswith("/") else path.path + "/"
        entries = self._sorted.get(path.container, [])
        for ref, why in entries[bisect.bisect_left(entries, (path.path, "")) :]:
            if not ref.startswith(path.path):
                break
            if ref == path.path or ref.startswith(folder):
                found.append(why)
        return sorted(set(found))


@dataclass
class _Guard:
    """The protected keys and blob paths with their reasons, computed once per plan."""

    keys: dict[AssetKey, list[str]] = field(default_factory=lambda: defaultdict(list))
    paths: _PathIndex = field(default_factory=_PathIndex)

    def protect(self, key: AssetKey, why: str) -> None:
        if why not in self.keys[key]:
            self.keys[key].append(why)

    def why(self, key: AssetKey) -> list[str]:
        return self.keys.get(key, [])


def _tagged(tags: Mapping[str, str], protect_tag: str) -> bool:
    """The tag protects unless it plainly says no: a typo must keep, not expose."""
    value = tags.get(protect_tag)
    return value is not None and value.strip().lower() not in {"false", "0", "no"}


def champions(deployments: Iterable[Deployment]) -> dict[str, list[Deployment]]:
    """Per endpoint, the deployment(s) taking the most live traffic (all of them on a tie); none at 0%."""
    by_endpoint: dict[str, list[Deployment]] = defaultdict(list)
    for d in deployments:
        by_endpoint[d.endpoint].append(d)
    out: dict[str, list[Deployment]] = {}
    for endpoint, group in by_endpoint.items():
        top = max(d.traffic_percent for d in group)
        if top > 0:
            out[endpoint] = sorted((d for d in group if d.traffic_percent == top), key=lambda d: d.name)
    return out


def _protect(inventory: Inventory, protect_tag: str) -> _Guard:
    guard = _Guard()
    data = {v.key: v for v in inventory.data_versions}
    models = {m.key: m for m in inventory.model_versions}

    def protect_data(key: DataKey, why: str) -> None:
        guard.protect(key, why)
        version = data.get(key)
        for path in version.blob_paths if version else ():
            guard.paths.add(path, f"referenced by {key} ({why})")

    def protect_model(key: ModelKey, why: str, *, with_data: bool) -> None:
        guard.protect(key, why)
        model = models.get(key)
        if model is None:
            return
        for path in model.blob_paths:
            guard.paths.add(path, f"artifact of {key} ({why})")
        if with_data and model.trained_on is not None:
            protect_data(model.trained_on, f"trained {key}, {why}")

    for d in inventory.deployments:
        if d.takes_traffic:
            guard.protect(d.key, f"taking traffic ({d.traffic_percent}% live, {d.mirror_traffic_percent}% mirror)")
        if d.model is not None:
            protect_model(d.model, f"deployed as {d.endpoint}/{d.name}", with_data=False)
        if _tagged(d.tags, protect_tag):
            guard.protect(d.key, f"tagged {protect_tag}")
    for endpoint, tops in champions(inventory.deployments).items():
        for d in tops:
            guard.protect(d.key, f"champion of endpoint {endpoint}")
            if d.model is not None:
                protect_model(d.model, f"champion of endpoint {endpoint}", with_data=True)
        champion_models = {d.model for d in tops if d.model is not None}
        for d in inventory.deployments:  # a standby of the champion's model is the champion's too
            if d.endpoint == endpoint and d.model in champion_models and d not in tops:
                guard.protect(d.key, f"serves the champion model of endpoint {endpoint}")
    for job in inventory.jobs:
        if job.finished:
            continue
        why = f"used by {job.status.lower()} job {job.name}"
        for item in job.inputs:
            if isinstance(item, DataKey):
                protect_data(item, why)
            elif isinstance(item, ModelKey):
                protect_model(item, why, with_data=False)
            else:
                guard.paths.add(item, why)
        for name, path in sorted(job.outputs.items()):
            guard.paths.add(path, f"output {name} of {job.status.lower()} job {job.name}")
    for rollout in inventory.rollouts:
        if not rollout.in_flight:
            continue
        why = f"candidate of the {rollout.state} rollout on {rollout.endpoint}"
        protect_model(rollout.candidate, why, with_data=True)
        for d in inventory.deployments:
            if d.endpoint == rollout.endpoint and (d.name == rollout.deployment or d.model == rollout.candidate):
                guard.protect(d.key, f"part of the {rollout.state} rollout on {rollout.endpoint}")
    for v in inventory.data_versions:
        if _tagged(v.tags, protect_tag):
            protect_data(v.key, f"tagged {protect_tag}")
    for m in inventory.model_versions:
        if _tagged(m.tags, protect_tag):
            protect_model(m.key, f"tagged {protect_tag}", with_data=False)
    return guard


def protected_assets(inventory: Inventory, *, protect_tag: str = DEFAULT_PROTECT_TAG) -> dict[AssetKey, str]:
    """Every protected version and deployment with its reasons (blobs are protected through their paths)."""
    guard = _protect(inventory, protect_tag)
    return {key: "; ".join(sorted(why)) for key, why in sorted(guard.keys.items(), key=lambda kv: kv[0].sort_key())}


# == planning ========================================================================================
_SEVERITY = {
    ActionKind.DELETE_DATA: 3,
    ActionKind.DELETE_MODEL: 3,
    ActionKind.DELETE_BLOB: 3,
    ActionKind.DELETE_DEPLOYMENT: 3,
    ActionKind.DELETE_JOB_OUTPUT: 3,
    ActionKind.ARCHIVE_DATA: 2,
    ActionKind.ARCHIVE_MODEL: 2,
    ActionKind.TIER_BLOB: 1,
}


class _Planner:
    def __init__(self, inventory: Inventory, protect_tag: str) -> None:
        self.inv = inventory
        self.now = inventory.now
        self.protect_tag = protect_tag
        self.guard = _protect(inventory, protect_tag)
        self.references = _PathIndex()  # paths of non-archived data versions and models
        for v in inventory.data_versions:
            if not v.archived:
                for path in v.blob_paths:
                    self.references.add(path, f"referenced by non-archived {v.key}")
        self.models_from_job: dict[str, list[ModelKey]] = defaultdict(list)
        for m in inventory.model_versions:
            if not m.archived:
                for path in m.blob_paths:
                    self.references.add(path, f"artifact of non-archived {m.key}")
            if m.job:
                self.models_from_job[m.job].append(m.key)
        self.actions: dict[AssetKey, Action] = {}
        self.spared: dict[AssetKey, list[str]] = defaultdict(list)

    # -- bookkeeping --
    def act(self, action: Action) -> None:
        """Several rules may pick one asset: the strongest action wins (delete > archive > tier), as in Azure."""
        current = self.actions.get(action.target)
        if current is None or _rank(action) > _rank(current):
            self.actions[action.target] = action

    def spare(self, key: AssetKey, reasons: Iterable[str]) -> None:
        for why in reasons:
            if why not in self.spared[key]:
                self.spared[key].append(why)

    def age(self, since: datetime) -> timedelta:
        return self.now - since

    # -- versions (data and models share the shape) --
    def versions(self, rule: RetentionRule, items: Sequence[DataVersion] | Sequence[ModelVersion]) -> None:
        by_name: dict[str, list[DataVersion | ModelVersion]] = defaultdict(list)
        for item in items:
            by_name[item.name].append(item)
        acts = rule.actions
        is_data = rule.type is RuleType.DATA_VERSIONS
        for name in sorted(_select_names(by_name, rule.filters)):
            group = [v for v in by_name[name] if _tags_match(v.tags, rule.filters.tags)]
            group.sort(key=lambda v: (v.created_at, version_order(v.version)), reverse=True)
            kept: dict[str, str] = {}
            if acts.keep_latest is not None:
                active = [v for v in group if not v.archived][: acts.keep_latest]
                for v in active:
                    kept.setdefault(v.version, f"one of the latest {acts.keep_latest} versions of {name} "
                                               f"(rule {rule.name})")
            if acts.keep_top_k is not None:
                top = acts.keep_top_k
                scored = [v for v in group if isinstance(v, ModelVersion) and top.metric in v.metrics]
                scored.sort(key=lambda v: (_score(v, top), v.created_at, version_order(v.version)), reverse=True)
                for v in scored[: top.k]:
                    kept.setdefault(v.version, f"in the top {top.k} of {name} by {top.metric} "
                                               f"({top.direction.value}) (rule {rule.name})")
            for v in group:
                age = self.age(v.created_at)
                kind: ActionKind | None = None
                if acts.delete is not None and age > timedelta(days=acts.delete.days):
                    kind = ActionKind.DELETE_DATA if is_data else ActionKind.DELETE_MODEL
                    why = f"created {age.days} days ago (> {acts.delete.days})"
                elif acts.archive is not None and not v.archived and (
                    age > timedelta(days=acts.archive.days_after_creation_greater_than)
                ):
                    kind = ActionKind.ARCHIVE_DATA if is_data else ActionKind.ARCHIVE_MODEL
                    why = f"created {age.days} days ago (> {acts.archive.days_after_creation_greater_than})"
                if kind is None:
                    continue
                if self.guard.why(v.key):
                    self.spare(v.key, self.guard.why(v.key))
                elif v.version in kept:
                    self.spare(v.key, [kept[v.version]])
                else:
                    self.act(Action(kind, v.key, why + _beyond(acts, name), rule.name))

    # -- blobs --
    def blobs(self, rule: RetentionRule) -> None:
        acts = rule.actions
        for blob in self.inv.blobs:
            if not _blob_selected(blob, rule.filters):
                continue
            age = self.age(blob.last_modified)
            current = blob.tier or BlobTier.HOT
            action: Action | None = None
            days = f"modified {age.days} days ago"
            if acts.delete is not None and age > timedelta(days=acts.delete.days):
                action = Action(ActionKind.DELETE_BLOB, blob.key, f"{days} (> {acts.delete.days})", rule.name)
            else:
                for cond, tier in ((acts.tier_to_archive, BlobTier.ARCHIVE), (acts.tier_to_cool, BlobTier.COOL)):
                    if cond is None or _TIER_RANK[current] >= _TIER_RANK[tier]:
                        continue  # never move a blob to a hotter tier (that would rehydrate it)
                    if age > timedelta(days=cond.days_after_modification_greater_than):
                        why = f"{days} (> {cond.days_after_modification_greater_than}); now {current.value}"
                        action = Action(ActionKind.TIER_BLOB, blob.key, why, rule.name, tier=tier)
                        break
            if action is None:
                continue
            reasons = self.guard.paths.covering(blob.container, blob.name)
            reasons += self.references.covering(blob.container, blob.name)
            if _tagged(blob.tags, self.protect_tag):
                reasons.append(f"tagged {self.protect_tag}")
            if reasons:
                self.spare(blob.key, sorted(set(reasons)))
            else:
                self.act(action)

    # -- deployments --
    def deployments(self, rule: RetentionRule) -> None:
        assert rule.actions.delete_idle is not None  # guaranteed by the rule's validation
        hours = rule.actions.delete_idle.hours_at_zero_traffic_greater_than
        for d in self.inv.deployments:
            if not _name_selected(d.endpoint, rule.filters):
                continue
            if d.takes_traffic or d.zero_traffic_since is None:
                continue
            idle = self.age(d.zero_traffic_since)
            if idle <= timedelta(hours=hours):
                continue
            if self.guard.why(d.key):
                self.spare(d.key, self.guard.why(d.key))
                continue
            idle_hours = idle.total_seconds() / 3600
            self.act(Action(ActionKind.DELETE_DEPLOYMENT, d.key,
                            f"at 0% traffic for {idle_hours:.1f} hours (> {hours:g})", rule.name))

    # -- job outputs --
    def job_outputs(self, rule: RetentionRule) -> None:
        assert rule.actions.delete is not None  # guaranteed by the rule's validation
        days = rule.actions.delete.days
        for job in self.inv.jobs:
            if not job.finished or job.finished_at is None or not _name_selected(job.name, rule.filters):
                continue
            if not _tags_match(job.tags, rule.filters.tags):
                continue
            age = self.age(job.finished_at)
            if age <= timedelta(days=days):
                continue
            for output, path in sorted(job.outputs.items()):
                key = JobOutputKey(job.name, output, path)
                reasons = self.guard.paths.overlapping(path) + self.references.overlapping(path)
                reasons += [f"model {m} was registered from this job" for m in self.models_from_job.get(job.name, [])]
                if _tagged(job.tags, self.protect_tag):
                    reasons.append(f"job tagged {self.protect_tag}")
                if reasons:
                    self.spare(key, reasons)
                else:
                    why = f"job {job.name} {job.status.lower()} {age.days} days ago (> {days})"
                    self.act(Action(ActionKind.DELETE_JOB_OUTPUT, key, why, rule.name))

    def plan(self, rules: Sequence[RetentionRule]) -> RetentionPlan:
        for rule in rules:
            if not rule.enabled:
                continue
            if rule.type is RuleType.DATA_VERSIONS:
                self.versions(rule, self.inv.data_versions)
            elif rule.type is RuleType.MODEL_VERSIONS:
                self.versions(rule, self.inv.model_versions)
            elif rule.type is RuleType.BLOBS:
                self.blobs(rule)
            elif rule.type is RuleType.DEPLOYMENTS:
                self.deployments(rule)
            else:
                self.job_outputs(rule)
        actions = tuple(sorted(self.actions.values(), key=Action.sort_key))
        protected = tuple(
            Protected(key, "; ".join(sorted(why)))  # sorted: the plan must not depend on listing order
            for key, why in sorted(self.spared.items(), key=lambda kv: kv[0].sort_key())
            if key not in self.actions  # a keep in one rule does not stop another rule (Azure semantics)
        )
        return RetentionPlan(now=self.now, actions=actions, protected=protected)


def _rank(action: Action) -> tuple[int, int]:
    return (_SEVERITY[action.kind], _TIER_RANK[action.tier] if action.tier else 0)


def _score(v: ModelVersion, top: KeepTopK) -> float:
    value = v.metrics[top.metric]
    return value if top.direction is Direction.MAX else -value


def _beyond(acts: RuleActions, name: str) -> str:
    parts = []
    if acts.keep_latest is not None:
        parts.append(f"not among the latest {acts.keep_latest} of {name}")
    if acts.keep_top_k is not None:
        parts.append(f"not in the top {acts.keep_top_k.k} by {acts.keep_top_k.metric}")
    return "; " + "; ".join(parts) if parts else ""


def _name_selected(name: str, filters: RuleFilters) -> bool:
    if filters.names and name not in filters.names:
        return False
    return not filters.prefixes or any(name.startswith(p) for p in filters.prefixes)


def _select_names(names: Iterable[str], filters: RuleFilters) -> list[str]:
    if filters.names and not filters.prefixes:
        present = set(names)
        return [n for n in filters.names if n in present]  # a lookup, not a scan
    return [n for n in names if _name_selected(n, filters)]


def _tags_match(tags: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(tags.get(k) == v for k, v in wanted.items())


def _blob_selected(blob: Blob, filters: RuleFilters) -> bool:
    full = f"{blob.container}/{blob.name}"
    if filters.prefixes and not any(full.startswith(p) for p in filters.prefixes):
        return False
    return _tags_match(blob.tags, filters.tags)


def plan_retention(
    inventory: Inventory,
    rules: Sequence[RetentionRule],
    *,
    protect_tag: str = DEFAULT_PROTECT_TAG,
) -> RetentionPlan:
    """Decide what to retire, and what was spared and why. Pure: no I/O; same input, same plan."""
    return _Planner(inventory, protect_tag).plan(rules)


# == dry run =========================================================================================
def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def render_plan_table(plan: RetentionPlan) -> str:
    """The dry run's output: what would be done (kind, target, reason, rule), then what was spared and why."""
    out = [f"Retention plan at {plan.now.isoformat()}: {len(plan.actions)} action(s)"]
    if plan.actions:
        rows = [
            (a.kind.value + (f"->{a.tier.value}" if a.tier else ""), str(a.target), a.reason, a.rule)
            for a in plan.actions
        ]
        out += _table(("KIND", "TARGET", "REASON", "RULE"), rows)
    else:
        out.append("Nothing to retire.")
    out.append("")
    out.append(f"Protected: {len(plan.protected)} asset(s) a rule selected but retention spared")
    if plan.protected:
        out += _table(("TARGET", "WHY"), [(str(p.target), p.reason) for p in plan.protected])
    return "\n".join(out) + "\n"

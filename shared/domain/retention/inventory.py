"""What retention looks at: typed keys of every asset kind, and one `Inventory` snapshot of them.

Adapters list the workspace and the data account into these values; the planner reads nothing else.
Unknown job statuses and rollout states count as running (fail closed): what retention cannot read
must protect, not expose. The same holds for addresses: an asset's address is a `BlobPath` on the
data account, or an `Unreadable` (see `addresses`) that protects its whole container or, when even
the container is unknown, suspends the blob rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from shared.domain.urls import strip_query
from shared.domain.vocabulary import FINISHED_JOB_STATUSES, rollout_finished, version_order


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
class Unreadable:
    """An address that may point into the data account, but retention cannot tell where: it fails closed.

    With a `container` (a known datastore, a path form not understood) it protects that whole
    container; without one (an unknown datastore, scheme or label) every blob and jobOutputs rule is
    suspended for the run, and the plan says why.
    """

    address: str
    why: str
    container: str = ""

    def __str__(self) -> str:
        """The address as plans, audit records and logs show it: never with its query (a SAS token)."""
        return f"{strip_query(self.address)} ({self.why})"


@dataclass(frozen=True)
class AssetLabel:
    """A job input `azureml:<name>@<label>`: which version it reads is decided by Azure ML at run time."""

    name: str
    label: str
    kind: str = ""  # "data", "model", or "" when the input's type does not say

    def __str__(self) -> str:
        return f"azureml:{self.name}@{self.label}"


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
Location = BlobPath | Unreadable
JobInput = DataKey | ModelKey | AssetLabel | BlobPath | Unreadable


# == the inventory: one snapshot, listed by adapters =================================================
def _require_aware(owner: object, name: str, value: datetime | None) -> None:
    """Raises ValueError for a naive datetime: ages are measured in UTC, and a naive time would shift them."""
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{type(owner).__name__}.{name} must be timezone-aware (UTC), got {value!r}")


class BlobTier(str, Enum):
    HOT = "Hot"
    COOL = "Cool"
    COLD = "Cold"
    ARCHIVE = "Archive"


TIER_RANK = {BlobTier.HOT: 0, BlobTier.COOL: 1, BlobTier.COLD: 2, BlobTier.ARCHIVE: 3}
"""How cold a tier is: a blob is only ever moved to a colder tier (a hotter one would rehydrate it)."""


@dataclass(frozen=True)
class DataVersion:
    name: str
    version: str
    created_at: datetime
    archived: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)
    blob_paths: tuple[Location, ...] = ()

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
    blob_paths: tuple[Location, ...] = ()  # its artifacts, when they may live in the data account
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
    etag: str = ""  # as listed: deletes and tiers are conditional on it (a changed blob is skipped)

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
    outputs: Mapping[str, Location] = field(default_factory=dict)
    finished_at: datetime | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require_aware(self, "finished_at", self.finished_at)

    @property
    def finished(self) -> bool:
        """Only a known final status is finished; any other (including an unknown one) is still running."""
        return self.status.strip().lower() in FINISHED_JOB_STATUSES


@dataclass(frozen=True)
class Rollout:
    endpoint: str
    candidate: ModelKey
    state: str  # the ledger's stored phase (shared.domain.vocabulary.Phase value)
    deployment: str | None = None  # the candidate's deployment, when already created
    champion_deployment: str | None = None  # the rollback target: the deployment serving when it started
    champion_model: ModelKey | None = None  # and its model

    @property
    def in_flight(self) -> bool:
        """In flight unless the state is a known final phase: an unknown or empty state protects (fail closed)."""
        return not (self.state and rollout_finished(self.state))


@dataclass(frozen=True)
class Approval:
    """A candidate held for manual approval (pending, or approved and not yet handed to its rollout).

    Until its rollout starts (and protects it) it is the next champion-to-be: it and its training data
    must survive the wait.
    """

    endpoint: str
    candidate: ModelKey
    state: str  # the ledger's stored `ApprovalState` value


@dataclass(frozen=True)
class OpenComparison:
    """A comparison job submitted and not yet decided (the promoter's open work, `Ledger.open_comparisons`).

    Its challenger may be promoted once the job is judged: it and its training data must survive the
    job and the wait for the decision; so must the champion it is compared with. Read fail closed:
    `challenger` None with a `challenger_name` protects every listed version of that name; with no name
    either, `unreadable` says why, and the version and blob rules are suspended for the run.
    """

    job: str
    challenger: ModelKey | None
    champion: ModelKey | None = None
    challenger_name: str = ""  # when only the name could be read
    unreadable: str = ""  # what could not be read ("" when the entry was read whole)


@dataclass(frozen=True)
class WaitingForData:
    """A candidate waiting for its evaluation data (the promoter's open work, `Ledger.waiting_candidates`).

    It is gated when a version of that data lands and may then be promoted: it and its training data must
    survive the wait. Read fail closed like `OpenComparison`: `candidate` None with a `candidate_name`
    protects every listed version of that name; with no name either, `unreadable` says why, and the version
    and blob rules are suspended for the run.
    """

    entry: str  # the index entry's key
    candidate: ModelKey | None
    data_asset: str = ""  # the evaluation data it waits for ("" when it cannot be read)
    candidate_name: str = ""  # when only the name could be read
    unreadable: str = ""  # what could not be read ("" when the candidate was read whole)


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
    approvals: tuple[Approval, ...] = ()  # candidates awaiting approval (`Ledger.open_approvals`)
    comparisons: tuple[OpenComparison, ...] = ()  # comparison jobs in flight (the promoter's open work)
    waiting: tuple[WaitingForData, ...] = ()  # candidates waiting for their evaluation data (the promoter's too)

    def __post_init__(self) -> None:
        _require_aware(self, "now", self.now)

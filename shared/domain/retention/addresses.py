"""Where an address points: Azure ML data paths read into blob paths of the account retention deletes in.

Retention lists, deletes and tiers blobs only in the accounts it knows (the data account). Every
address an asset carries is read here (`AddressBook.locate`) into one of:

- a `BlobPath` (container + path) on one of those accounts;
- `None`: it points where retention never deletes (another storage account, a file share, a web
  URL), so it protects nothing there, and it never maps onto a same-named container of ours;
- an `Unreadable`: it may point into our account but retention cannot tell where. It fails closed:
  with a known container it protects that whole container; without one it suspends every blob and
  jobOutputs rule for the run (`plan_retention` names why, the run audits it).

Forms understood ("container" is a blob container or an ADLS Gen2 filesystem, the same thing):

- `azureml://[subscriptions/…/workspaces/…/]datastores/<ds>/paths/<path>`: through the datastore's
  account and container (blob) or filesystem (ADLS Gen2);
- `azureml://jobs/<job>/outputs/artifacts/paths/<path>` and `runs:/<job>/<path>`: the job's artifacts
  on `workspaceartifactstore`;
- `abfs[s]://<fs>@<account>.dfs.<suffix>/<path>`, `wasb[s]://<container>@<account>.blob.<suffix>/<path>`;
- `http[s]://<account>.(blob|dfs).<suffix>/<container>/<path>`, and the path style of the local
  emulator `http[s]://<host>/<account>/<container>/<path>` when `<account>` is one of ours.

Job inputs are read by `read_job_input`: asset references (`azureml:<name>:<version>`, ARM ids,
`azureml:<name>@<label>`) or addresses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from shared.domain.retention.inventory import (
    AssetLabel,
    BlobPath,
    DataKey,
    JobInput,
    Location,
    ModelKey,
    Unreadable,
)

ARTIFACT_DATASTORE = "workspaceartifactstore"
BLOB_KINDS = frozenset({"azureblob", "azuredatalakegen2"})
"""Datastore kinds whose paths are blobs of a storage account (an ADLS Gen2 filesystem is a container)."""
OTHER_SERVICE_KINDS = frozenset({"azurefile", "azuredatalakegen1", "onelake"})
"""Datastore kinds that never hold blobs of a storage account: they protect nothing there."""

_DATASTORE_PATH = re.compile(r"^azureml://(?:.*/)?datastores/(?P<ds>[^/]+)/paths/(?P<path>.*)$", re.IGNORECASE)
_DATASTORE_OTHER = re.compile(r"^azureml://(?:.*/)?datastores/(?P<ds>[^/]+)(?:/.*)?$", re.IGNORECASE)
_JOB_ARTIFACTS = re.compile(r"^(?:azureml://jobs/(?P<job>[^/]+)/outputs/artifacts/paths/|runs:/(?P<run>[^/]+)/)"
                            r"(?P<path>.*)$", re.IGNORECASE)
_AT_ACCOUNT = re.compile(r"^(?P<scheme>abfss?|wasbs?)://(?P<container>[^@/]+)@(?P<account>[^./]+)\.(?P<svc>[^./]+)"
                         r"\.[^/?#]*/?(?P<path>[^?#]*)", re.IGNORECASE)
_HTTP = re.compile(r"^https?://(?P<host>[^/?#]+)/?(?P<rest>[^?#]*)", re.IGNORECASE)
_STORAGE_HOST = re.compile(r"^(?P<account>[^.]+)\.(?:privatelink\.)?(?P<svc>blob|dfs|file|queue|table|web|z\d+)\.",
                           re.IGNORECASE)
_ASSET_ID = re.compile(r"/(?P<kind>data|models)/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$", re.IGNORECASE)
_SHORT_REF = re.compile(r"^(?:azureml:)?(?P<name>[^:/@]+):(?P<version>[^:/@]+)$")  # the SDK drops 'azureml:'
_LABEL_REF = re.compile(r"^(?:azureml:)?(?P<name>[^:/@]+)@(?P<label>[^:/@]+)$")
_MODEL_TYPES = frozenset({"custom_model", "mlflow_model", "triton_model"})
_ELSEWHERE_SCHEMES = ("adl://",)  # ADLS Gen1: another service, never blobs of ours


@dataclass(frozen=True)
class Datastore:
    """A workspace datastore as retention reads it: which account and container its paths are in."""

    name: str
    kind: str  # the REST datastoreType: AzureBlob, AzureDataLakeGen2, AzureFile, ...
    account: str = ""  # storage account name ("" unknown)
    container: str = ""  # container (blob) or filesystem (ADLS Gen2); "" unknown


@dataclass(frozen=True)
class AddressBook:
    """What it takes to read addresses: the workspace's datastores and the accounts retention deletes in."""

    datastores: Mapping[str, Datastore] = field(default_factory=dict)  # by lower-case name
    accounts: frozenset[str] = frozenset()  # lower-case names of the accounts retention lists and changes

    @classmethod
    def of(cls, datastores: Iterable[Datastore], accounts: Iterable[str]) -> AddressBook:
        return cls({d.name.lower(): d for d in datastores}, frozenset(a.lower() for a in accounts if a))

    def ours(self, account: str) -> bool:
        return account.lower() in self.accounts

    def locate(self, address: str | None) -> Location | None:
        """Where an address points in our accounts: a `BlobPath`, an `Unreadable`, or None (not ours, or no address)."""
        if not address:
            return None
        if address.lower().startswith(("azureml://", "runs:/")):
            return self._azureml(address)
        m = _AT_ACCOUNT.match(address)
        if m:
            return self._on_account(address, m.group("account"), m.group("container"), unquote(m.group("path")))
        if _HTTP.match(address):
            return self._http(address)
        if address.lower().startswith(_ELSEWHERE_SCHEMES):
            return None
        return Unreadable(address, "address form not understood")

    def _azureml(self, address: str) -> Location | None:
        m = _DATASTORE_PATH.match(address)
        if m:  # paths are percent-encoded in URIs (shared.domain.blobnames.azureml_path), blob names are not
            return self._on_datastore(address, m.group("ds"), unquote(m.group("path")))
        m = _JOB_ARTIFACTS.match(address)
        if m:
            artifacts = f"ExperimentRun/dcid.{m.group('job') or m.group('run')}/{unquote(m.group('path'))}"
            return self._on_datastore(address, ARTIFACT_DATASTORE, artifacts)
        m = _DATASTORE_OTHER.match(address)
        if m is None:
            return Unreadable(address, "azureml address form not understood")
        where = self._on_datastore(address, m.group("ds"), "")
        if isinstance(where, BlobPath):
            return Unreadable(address, "path form not understood", where.container)
        return where

    def _on_datastore(self, address: str, name: str, path: str) -> Location | None:
        ds = self.datastores.get(name.lower())
        if ds is None:
            return Unreadable(address, f"datastore {name} is not in the workspace")
        if ds.account and not self.ours(ds.account):
            return None  # another account: retention never deletes there
        kind = ds.kind.lower()
        if kind in OTHER_SERVICE_KINDS:
            return None
        if kind not in BLOB_KINDS or not ds.container or not ds.account:
            return Unreadable(address, f"datastore {ds.name} of kind {ds.kind or '?'} is not understood")
        return BlobPath(ds.container, path)

    def _on_account(self, address: str, account: str, container: str, path: str) -> Location | None:
        if not self.ours(account):
            return None
        if not container:
            return Unreadable(address, f"no container named in an address on account {account}")
        return BlobPath(container, path)

    def _http(self, address: str) -> Location | None:
        m = _HTTP.match(address)
        assert m is not None  # checked by the caller
        host, rest = m.group("host"), unquote(m.group("rest"))
        storage = _STORAGE_HOST.match(host)
        if storage:
            service = storage.group("svc").lower()
            if service in ("file", "queue", "table"):
                return None
            if service not in ("blob", "dfs"):  # a static website lives in the account's $web container
                return self._on_account(address, storage.group("account"), "$web", rest)
            container, _, path = rest.partition("/")
            return self._on_account(address, storage.group("account"), container, path)
        account, _, rest = rest.partition("/")  # path style (the local emulator): /<account>/<container>/<path>
        if not self.ours(account):
            return None  # a web address, not a storage account of ours
        container, _, path = rest.partition("/")
        return self._on_account(address, account, container, path)


def read_job_input(uri: str | None, kind: str, book: AddressBook) -> JobInput | None:
    """What a job input reads: an asset version, a label, or an address; None for no path.

    `kind` is the input's type (`uri_folder`, `mlflow_model`, ...), which says whether a short reference
    names a data asset or a model.
    """
    if not uri:
        return None
    kind = kind.lower()
    m = _ASSET_ID.search(uri)
    if m:
        if m.group("kind").lower() == "models":
            return ModelKey(m.group("name"), m.group("version"))
        return DataKey(m.group("name"), m.group("version"))
    m = _SHORT_REF.match(uri)
    if m:
        if kind in _MODEL_TYPES:
            return ModelKey(m.group("name"), m.group("version"))
        return DataKey(m.group("name"), m.group("version"))
    m = _LABEL_REF.match(uri)
    if m:
        asset = "model" if kind in _MODEL_TYPES else "data" if kind else ""
        return AssetLabel(m.group("name"), m.group("label"), asset)
    return book.locate(uri)

"""The lifecycle policy file (evergreen.yaml), parsed once into frozen typed settings.

Pydantic does the checking; this module turns its errors into one ConfigurationError whose lines
carry the path of each problem (`datasets[1].prefix: must end with '/'`).
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.config.promotion import PromotionPolicy
from shared.config.retention import RetentionPolicy
from shared.errors import ConfigurationError

_ASSET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")


class AssetType(str, Enum):
    URI_FILE = "uri_file"
    URI_FOLDER = "uri_folder"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BatchPolicy(_Frozen):
    """How a folder dataset decides that a drop is complete."""

    marker: str | None = Field(default=None, description="file name that seals the batch, e.g. _SUCCESS")
    quiet_period_seconds: Annotated[float, Field(gt=0, le=86400)] | None = None

    @field_validator("marker")
    @classmethod
    def _marker_is_a_file_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value):
            raise ValueError("must be a file name without '/'")
        return value

    @model_validator(mode="after")
    def _needs_a_seal(self) -> BatchPolicy:
        if self.marker is None and self.quiet_period_seconds is None:
            raise ValueError("set marker, quiet_period_seconds, or both: otherwise a batch never seals")
        return self


class DatasetPolicy(_Frozen):
    name: str = Field(description="Azure ML data asset name")
    container: str
    prefix: str
    type: AssetType
    datastore: str = Field(description="Azure ML datastore that points at the container")
    batch: BatchPolicy | None = None
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _asset_name(cls, value: str) -> str:
        if not _ASSET_NAME_RE.match(value):
            raise ValueError("must start with a letter or digit and use only letters, digits, '_', '.', '-'")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if value.startswith("/"):
            raise ValueError("must not start with '/' (it is relative to the container)")
        if value and not value.endswith("/"):
            raise ValueError("must end with '/'")
        if any(seg in (".", "..") for seg in value.split("/")[:-1]):
            raise ValueError("must not contain '.' or '..' segments")
        return value

    @model_validator(mode="after")
    def _batch_matches_type(self) -> DatasetPolicy:
        if self.type is AssetType.URI_FOLDER and self.batch is None:
            raise ValueError("uri_folder datasets need 'batch' (marker and/or quiet_period_seconds)")
        if self.type is AssetType.URI_FILE and self.batch is not None:
            raise ValueError("'batch' applies only to uri_folder datasets")
        return self


class RetrainPolicy(_Frozen):
    """Which pipeline retrains on a dataset's new versions, and how often at most."""

    dataset: str
    pipeline: str = Field(description="Azure ML pipeline job YAML, relative to the app root")
    experiment: str
    model_name: str
    min_interval_minutes: Annotated[float, Field(ge=0)] = 0
    inputs: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("pipeline")
    @classmethod
    def _yaml(cls, value: str) -> str:
        if not value.endswith((".yml", ".yaml")) or value.startswith("/") or ".." in value.split("/"):
            raise ValueError("must be a relative path to a .yml/.yaml pipeline job file inside the app")
        return value

    @field_validator("experiment", "model_name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _ASSET_NAME_RE.match(value):
            raise ValueError("must start with a letter or digit and use only letters, digits, '_', '.', '-'")
        return value


class ModelPolicy(_Frozen):
    """A registered model's promotion: which endpoint it serves, and when a new version wins."""

    name: str = Field(description="Azure ML model name, as registered by the pipeline")
    promotion: PromotionPolicy

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _ASSET_NAME_RE.match(value):
            raise ValueError("must start with a letter or digit and use only letters, digits, '_', '.', '-'")
        return value


class Policy(_Frozen):
    version: int = 1
    datasets: tuple[DatasetPolicy, ...]
    retraining: tuple[RetrainPolicy, ...] = ()
    models: tuple[ModelPolicy, ...] = ()
    retention: RetentionPolicy = RetentionPolicy()

    @field_validator("version")
    @classmethod
    def _version(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only version 1 is supported")
        return value

    @field_validator("datasets")
    @classmethod
    def _not_empty(cls, value: tuple[DatasetPolicy, ...]) -> tuple[DatasetPolicy, ...]:
        if not value:
            raise ValueError("declare at least one dataset")
        return value

    @model_validator(mode="after")
    def _unique_and_disjoint(self) -> Policy:
        names = [d.name for d in self.datasets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"dataset names must be unique; repeated: {', '.join(duplicates)}")
        for i, a in enumerate(self.datasets):
            for b in self.datasets[i + 1 :]:
                if a.container == b.container and (a.prefix.startswith(b.prefix) or b.prefix.startswith(a.prefix)):
                    raise ValueError(
                        f"datasets {a.name!r} and {b.name!r} watch overlapping prefixes "
                        f"({a.container}/{a.prefix} and {b.container}/{b.prefix}); a blob must belong to one"
                    )
        return self

    @model_validator(mode="after")
    def _retraining_names_datasets(self) -> Policy:
        names = {d.name for d in self.datasets}
        for i, r in enumerate(self.retraining):
            if r.dataset not in names:
                raise ValueError(f"retraining[{i}].dataset: {r.dataset!r} is not a declared dataset")
        seen = [r.dataset for r in self.retraining]
        if len(seen) != len(set(seen)):
            raise ValueError("retraining: one entry per dataset")
        return self

    @model_validator(mode="after")
    def _one_model_per_endpoint(self) -> Policy:
        names = [m.name for m in self.models]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"models: one entry per model; repeated: {', '.join(repeated)}")
        endpoints = [m.promotion.endpoint for m in self.models]
        shared = sorted({e for e in endpoints if endpoints.count(e) > 1})
        if shared:
            raise ValueError(f"models: endpoint(s) {', '.join(shared)} named by more than one model; two models "
                             "promoting onto one endpoint would keep replacing each other")
        return self

    def model(self, name: str) -> ModelPolicy | None:
        return next((m for m in self.models if m.name == name), None)

    def retraining_for(self, dataset: str) -> RetrainPolicy | None:
        return next((r for r in self.retraining if r.dataset == dataset), None)

    def dataset(self, name: str) -> DatasetPolicy:
        for d in self.datasets:
            if d.name == name:
                return d
        raise KeyError(name)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _message(error: Any) -> str:
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def parse_policy(document: object, *, source: str = "policy", landing_container: str | None = None) -> Policy:
    """Validate a parsed YAML document; every problem is reported with its path."""
    try:
        policy = Policy.model_validate(document)
    except ValidationError as exc:
        problems = [f"{_path(tuple(e['loc']))}: {_message(e)}" for e in exc.errors()]
        raise ConfigurationError(source, problems) from exc
    if landing_container is not None:
        problems = [
            f"datasets[{i}].container: {d.container!r} is not the landing container {landing_container!r} "
            "(EVERGREEN_LANDING_CONTAINER); the blob trigger watches one container per app"
            for i, d in enumerate(policy.datasets)
            if d.container != landing_container
        ]
        if problems:
            raise ConfigurationError(source, problems)
    return policy


def load_policy(path: Path, *, landing_container: str | None = None) -> Policy:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(str(path), [f"cannot read the file: {exc}"]) from exc
    except (yaml.YAMLError, RecursionError) as exc:  # RecursionError: nested too deeply for the parser
        raise ConfigurationError(str(path), [f"not valid YAML: {exc}"]) from exc
    policy = parse_policy(document, source=str(path), landing_container=landing_container)
    missing = [
        f"retraining[{i}].pipeline: no file at {path.parent / r.pipeline}"
        for i, r in enumerate(policy.retraining)
        if not (path.parent / r.pipeline).is_file()
    ]
    if missing:
        raise ConfigurationError(str(path), missing)
    return policy

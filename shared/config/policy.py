"""The lifecycle policy file (evergreen.yaml), parsed once into frozen typed settings.

The models here are the schema (and generate `schema/evergreen.schema.json`); the checks between
entries and against the pipelines and code run in `shared.config.validate`, over the same document
in the same pass. `load_policy` and `parse_policy` raise one ConfigurationError whose lines carry
the path of each problem (`datasets[1].prefix: must end with '/'`).
"""

from __future__ import annotations

import logging
import re
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.config.promotion import PromotionPolicy
from shared.config.retention import RetentionPolicy
from shared.errors import ConfigurationError

if TYPE_CHECKING:
    from shared.config.validate import Report

log = logging.getLogger(__name__)

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
    inputs: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="extra pipeline inputs set on every submission; the pipeline must "
        "declare each (Evergreen always sets training_data, model_name, data_asset, data_version)")
    metrics: tuple[Annotated[str, Field(min_length=1, pattern=r"^\S+$")], ...] = Field(
        default=(), description="metrics the pipeline writes as evergreen.metric.<name> on the models it "
        "registers; promotion and keep_top_k metrics are checked against them")

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
    registered_elsewhere: bool = Field(default=False, description="the model is registered by something other "
                                       "than a retraining entry of this file (no model_name produces it)")
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

    def model(self, name: str) -> ModelPolicy | None:
        return next((m for m in self.models if m.name == name), None)

    def retraining_for(self, dataset: str) -> RetrainPolicy | None:
        return next((r for r in self.retraining if r.dataset == dataset), None)

    def dataset(self, name: str) -> DatasetPolicy:
        for d in self.datasets:
            if d.name == name:
                return d
        raise KeyError(name)


def parse_policy(document: object, *, source: str = "policy", landing_container: str | None = None) -> Policy:
    """Validate a parsed YAML document and the consistency of its entries (no files are read).

    Raises ConfigurationError listing every error, each with its path.
    """
    from shared.config.validate import check_document  # validate builds on these models

    return _accepted(check_document(document, landing_container=landing_container, source=source))


def load_policy(path: Path, *, landing_container: str | None = None) -> Policy:
    """Read and check the policy file as `python -m shared.cli validate` does (without a workspace).

    Deprecations are logged as warnings. Raises ConfigurationError listing every error, each with its path.
    """
    from shared.config.validate import validate

    return _accepted(validate(path, landing_container=landing_container))


def _accepted(report: Report) -> Policy:
    """The report's policy; its warnings are logged. Raises ConfigurationError listing its errors."""
    for problem in report.warnings:
        log.warning("%s: %s", report.source, problem.describe())
    if report.errors or report.policy is None:
        raise ConfigurationError(report.source, [p.describe() for p in report.errors])
    return report.policy

"""The `retention:` section of the policy file: rules shaped like Azure Storage lifecycle management.

Each rule has a name, a type, filters, and actions gated by `daysAfter…` conditions, but about Azure
ML assets. This module only validates the section (pydantic, camelCase in the file, snake_case in
Python); `shared.domain.retention.plan_retention` turns an inventory and these rules into a plan.

The shape of the section is shown by `EXAMPLE_YAML`; `parse_retention` validates it on its own, and
`shared.config.policy.Policy` embeds `RetentionPolicy` so the whole file is validated in one go.
A metric's `direction` is spelled as everywhere in the policy (`higher_is_better`/`lower_is_better`);
the old `max`/`min` still parse, with a deprecation warning.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel

from shared.domain.vocabulary import Direction, Tag
from shared.errors import ConfigurationError

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
        keepTopK: {k: 2, metric: auc, direction: higher_is_better}
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

DEFAULT_PROTECT_TAG: str = Tag.KEEP.value

_RULE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class RuleType(str, Enum):
    DATA_VERSIONS = "dataVersions"
    MODEL_VERSIONS = "modelVersions"
    BLOBS = "blobs"
    DEPLOYMENTS = "deployments"
    JOB_OUTPUTS = "jobOutputs"


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
    """Spare the `k` best versions by a metric; `direction` as in `models[].promotion` (legacy max/min warn)."""

    k: Annotated[int, Field(ge=1, strict=True)]
    metric: Annotated[str, Field(min_length=1)]
    direction: Direction = Direction.HIGHER_IS_BETTER

    @field_validator("direction", mode="before")
    @classmethod
    def _direction(cls, value: object) -> Direction:
        return Direction.parse(value)


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


def _check_blob_prefixes(value: RuleFilters) -> None:
    """Raises ValueError: a blobs rule selects by 'container/prefix', never by names."""
    if value.names:
        raise ValueError("a blobs rule selects blobs by prefixes ('container/path/'), not names")
    for prefix in value.prefixes:
        container, sep, _ = prefix.partition("/")
        if not sep or not container or prefix.startswith("/"):
            raise ValueError(
                f"prefix {prefix!r} must start with the container, as in Azure lifecycle rules: "
                "'landing/' or 'landing/churn/'"
            )


def _check_kinds(value: RuleActions, kind: RuleType) -> None:
    """Raises ValueError: an action the type does not take, or only keeps and no action."""
    allowed = _ALLOWED_ACTIONS[kind]
    wrong = [a for a in value.given() if a not in allowed]
    if wrong:
        raise ValueError(f"{', '.join(wrong)} cannot be used in a {kind.value} rule; it takes {', '.join(allowed)}")
    if not [a for a in value.given() if a not in _KEEPS]:
        doing = [a for a in allowed if a not in _KEEPS]
        raise ValueError(
            f"no action: a {kind.value} rule needs {' or '.join(doing)} "
            "(keepLatest and keepTopK only say what to spare)"
        )


def _check_clocks(value: RuleActions, kind: RuleType) -> None:
    """Raises ValueError: a delete on the wrong clock, or steps in an order that skips one."""
    if value.delete is not None and value.delete.condition != _DELETE_CONDITION[kind]:
        raise ValueError(f"delete in a {kind.value} rule takes {_DELETE_CONDITION[kind]}, not {value.delete.condition}")
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
            _check_blob_prefixes(value)
        if kind is RuleType.DEPLOYMENTS and value.tags:
            raise ValueError("a deployments rule cannot filter by tags; filter endpoints by names or prefixes")
        return value

    @field_validator("actions")
    @classmethod
    def _actions_fit_the_type(cls, value: RuleActions, info: ValidationInfo) -> RuleActions:
        kind = info.data.get("type")
        if not isinstance(kind, RuleType):
            return value  # the type itself is invalid and already reported
        _check_kinds(value, kind)
        _check_clocks(value, kind)
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
    Raises ConfigurationError listing every problem.
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

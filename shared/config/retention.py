"""The `retention:` section of the policy file: rules shaped like Azure Storage lifecycle management.

Each rule has a name, a type, filters, and actions gated by `days_after_…` conditions, but about Azure
ML assets, and spelled snake_case like the rest of the file. This module only validates the section
(pydantic); `shared.domain.retention.plan_retention` turns an inventory and these rules into a plan.
The camelCase spellings of earlier releases (`keepLatest`, `daysAfterCreationGreaterThan`,
`dataVersions`, ...) still parse, each with a deprecation warning naming the new spelling
(`legacy_spellings` lists them for `python -m shared.cli validate`).

The shape of the section is shown by `EXAMPLE_YAML`; `parse_retention` validates it on its own, and
`shared.config.policy.Policy` embeds `RetentionPolicy` so the whole file is validated in one go.
A metric's `direction` is spelled as everywhere in the policy (`higher_is_better`/`lower_is_better`);
the old `max`/`min` still parse, with a deprecation warning.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel, to_snake

from shared.domain.vocabulary import Direction, Tag
from shared.errors import ConfigurationError

EXAMPLE_YAML = """\
retention:
  protect_tag: evergreen.keep
  rules:
    - name: archive-old-training-data
      type: data_versions
      filters: {names: [churn-training]}
      actions:
        keep_latest: 5
        archive: {days_after_creation_greater_than: 30}
    - name: prune-models
      type: model_versions
      filters: {prefixes: [churn-]}
      actions:
        keep_latest: 3
        keep_top_k: {k: 2, metric: auc, direction: higher_is_better}
        archive: {days_after_creation_greater_than: 14}
        delete: {days_after_creation_greater_than: 180}
    - name: raw-drops
      type: blobs
      filters: {prefixes: [landing/churn/]}
      actions:
        tier_to_cool: {days_after_modification_greater_than: 30}
        tier_to_archive: {days_after_modification_greater_than: 90}
        delete: {days_after_modification_greater_than: 365}
    - name: idle-deployments
      type: deployments
      actions:
        delete_idle: {hours_at_zero_traffic_greater_than: 24}
    - name: old-job-outputs
      type: job_outputs
      enabled: false
      actions:
        delete: {days_after_completion_greater_than: 60}
"""

DEFAULT_PROTECT_TAG: str = Tag.KEEP.value

_RULE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class RuleType(str, Enum):
    DATA_VERSIONS = "data_versions"
    MODEL_VERSIONS = "model_versions"
    BLOBS = "blobs"
    DEPLOYMENTS = "deployments"
    JOB_OUTPUTS = "job_outputs"


_LEGACY_TYPES = {"dataVersions": RuleType.DATA_VERSIONS, "modelVersions": RuleType.MODEL_VERSIONS,
                 "jobOutputs": RuleType.JOB_OUTPUTS}


def _renamed_keys(model: type[BaseModel], value: dict[str, Any]) -> list[tuple[str, str]]:
    """(old, new) for each camelCase key of `value` that is the legacy spelling of a field of `model`."""
    fields = model.model_fields
    return [(key, name) for name in fields if (key := to_camel(name)) != name and key in value]


class _Section(BaseModel):
    """snake_case in the file, as the rest of the policy; the camelCase of earlier releases still parses.

    Numbers and booleans are strict: `"30"` or `enabled: "no"` is an error, not a silent coercion.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _legacy_camel_case(cls, value: Any) -> Any:
        """Rename a deprecated camelCase key to its field; a key given both ways is an error.

        The deprecation warning comes from `legacy_spellings` (validate's report, logged at start-up).
        """
        if not isinstance(value, dict):
            return value
        renamed = _renamed_keys(cls, value)
        if not renamed:
            return value
        value = dict(value)
        for old, new in renamed:
            if new in value:
                raise ValueError(f"{old} and {new} are one setting; keep {new} ({old} is deprecated)")
            value[new] = value.pop(old)
        return value


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
                "give exactly one condition: days_after_creation_greater_than (data_versions, model_versions), "
                "days_after_modification_greater_than (blobs) or days_after_completion_greater_than (job_outputs)"
            )
        return self

    def _conditions(self) -> dict[str, int | None]:
        return {
            "days_after_creation_greater_than": self.days_after_creation_greater_than,
            "days_after_modification_greater_than": self.days_after_modification_greater_than,
            "days_after_completion_greater_than": self.days_after_completion_greater_than,
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
        """The names of the entries set, as written in the file."""
        return [name for name in type(self).model_fields if getattr(self, name) is not None]


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
    RuleType.DATA_VERSIONS: ("keep_latest", "archive", "delete"),
    RuleType.MODEL_VERSIONS: ("keep_latest", "keep_top_k", "archive", "delete"),
    RuleType.BLOBS: ("delete", "tier_to_cool", "tier_to_archive"),
    RuleType.DEPLOYMENTS: ("delete_idle",),
    RuleType.JOB_OUTPUTS: ("delete",),
}
_DELETE_CONDITION: dict[RuleType, str] = {
    RuleType.DATA_VERSIONS: "days_after_creation_greater_than",
    RuleType.MODEL_VERSIONS: "days_after_creation_greater_than",
    RuleType.BLOBS: "days_after_modification_greater_than",
    RuleType.JOB_OUTPUTS: "days_after_completion_greater_than",
}
_KEEPS = ("keep_latest", "keep_top_k")


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
            "(keep_latest and keep_top_k only say what to spare)"
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
        raise ValueError("tier_to_archive must come later than tier_to_cool (more days), or tier_to_cool never "
                         "happens")


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

    @field_validator("type", mode="before")
    @classmethod
    def _legacy_type(cls, value: object) -> object:
        """The camelCase rule types of earlier releases still parse (warned about by `legacy_spellings`)."""
        if isinstance(value, str) and value in _LEGACY_TYPES:
            return _LEGACY_TYPES[value]
        return value

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


_SECTIONS_BY_KEY: dict[str, type[_Section]] = {
    "keep_top_k": KeepTopK, "archive": AfterCreation,
    "delete": DeleteCondition, "tier_to_cool": AfterModification, "tier_to_archive": AfterModification,
    "delete_idle": DeleteIdle,
}


def legacy_spellings(section: object, path: str = "retention") -> list[tuple[str, str, str]]:
    """(path, old, new) for every deprecated camelCase key or rule type in a raw `retention:` section.

    Walks the document as written (no validation), so it works on a section with other mistakes too.
    """
    found = _legacy_in(RetentionPolicy, section, path)
    rules = section.get("rules") if isinstance(section, dict) else None
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        if not isinstance(rule, dict):
            continue
        rule_path = f"{path}.rules[{i}]"
        found += _legacy_in(RetentionRule, rule, rule_path)
        kind = rule.get("type")
        if isinstance(kind, str) and kind in _LEGACY_TYPES:
            found.append((f"{rule_path}.type", kind, _LEGACY_TYPES[kind].value))
        actions = rule.get("actions")
        found += _legacy_in(RuleActions, actions, f"{rule_path}.actions")
        for key, inner in actions.items() if isinstance(actions, dict) else ():
            section = _SECTIONS_BY_KEY.get(to_snake(str(key)))
            if section is not None:
                found += _legacy_in(section, inner, f"{rule_path}.actions.{key}")
    return found


def _legacy_in(model: type[BaseModel], value: object, path: str) -> list[tuple[str, str, str]]:
    if not isinstance(value, dict):
        return []
    return [(f"{path}.{old}", old, new) for old, new in _renamed_keys(model, value)]


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

"""`validate`: every problem of a policy file in one pass, one line each, with its path and a hint.

The schema (pydantic, `shared.config.policy`) and the cross-checks run over the same document and
their problems are collected together, so a file with three mistakes reports three. Cross-checks
look at what the policy points to: the retraining pipelines (the inputs Evergreen sets on every
submission, the metrics they produce), the scoring code folders, the names retention filters
select, the timer schedules; and, when a workspace is reachable (`WorkspaceFacts`), the computes and
datastores. Start-up (`load_policy`) raises one `ConfigurationError` listing every error found here.

    python -m shared.config.validate [--policy FILE] [--json]   # one line per problem; exit 1 on an error
    python -m shared.config.validate --write-schema     # regenerate schema/evergreen.schema.json

A pipeline is read by a `PipelineReader`: `YamlPipelineReader` here (pure, fast: start-up uses it),
or azure-ai-ml's `load_job` (`shared.adapters.azure.workspace_facts.AmlPipelineReader`), which the
CLI passes in; the config layer never imports `azure`.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, get_args

import yaml
from pydantic import BaseModel, ValidationError

from shared.config.policy import Policy
from shared.config.retention import legacy_spellings
from shared.config.settings import APP_ROOT, SCHEDULE_DEFAULTS, cron_problem
from shared.domain.comparison import COMPARE_INPUTS, COMPARE_PIPELINE
from shared.domain.vocabulary import LEGACY_DIRECTIONS, Tag
from shared.errors import EvergreenError

log = logging.getLogger(__name__)

SCHEMA_PATH = APP_ROOT / "schema" / "evergreen.schema.json"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
# The inputs Evergreen sets on every submission (shared/services/retrain.py): a pipeline must declare them.
EVERGREEN_INPUTS = ("training_data", "model_name", "data_asset", "data_version")
PIPELINE_METRICS_TAG = Tag.PIPELINE_METRICS.value  # a pipeline may declare the metrics it writes: "roc_auc,accuracy"


class Severity(StrEnum):
    ERROR = "error"  # start-up refuses the file
    WARNING = "warning"  # parses, but probably not what was meant (or a deprecated spelling)
    NOTE = "note"  # a check that could not run here


@dataclass(frozen=True)
class Problem:
    """One finding: where (`models[0].promotion.metric`), what, and a close name when there is one."""

    path: str
    message: str
    hint: str | None = None
    severity: Severity = Severity.ERROR

    def describe(self) -> str:
        """`path: message (did you mean 'x'?)`: the form `ConfigurationError` lists."""
        text = f"{self.path}: {self.message}"
        return f"{text} (did you mean {self.hint!r}?)" if self.hint else text

    def line(self) -> str:
        return f"{self.severity.value}: {self.describe()}"


@dataclass(frozen=True)
class Report:
    """Everything `validate` found in one file, in file order; `policy` is set when there is no error."""

    source: str
    problems: tuple[Problem, ...]
    policy: Policy | None = None

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity is Severity.WARNING)

    @property
    def ok(self) -> bool:
        return not self.errors

    def lines(self) -> list[str]:
        """One line per problem, each naming the file, as the CLI prints them."""
        return [f"{self.source}: {p.line()}" for p in self.problems]

    def to_json(self) -> dict[str, Any]:
        """The report for a machine (`validate --json`): the file, ok, and every problem with its fields."""
        return {"source": self.source, "ok": self.ok, "errors": len(self.errors), "warnings": len(self.warnings),
                "problems": [{"severity": p.severity.value, "path": p.path, "message": p.message, "hint": p.hint}
                             for p in self.problems]}


@dataclass(frozen=True)
class PipelineFacts:
    """What a retraining pipeline job declares: its inputs, the computes it names, the metrics it writes."""

    inputs: frozenset[str]
    computes: frozenset[str] = frozenset()
    metrics: frozenset[str] = frozenset()


class PipelineReader(Protocol):
    def read(self, path: Path) -> PipelineFacts:
        """The facts of the pipeline job YAML at `path`. Raises ValueError saying why it is not one."""
        ...


class WorkspaceFacts(Protocol):
    """The Azure ML workspace, for the checks that need it. Methods raise EvergreenError when unreachable."""

    def compute_names(self) -> frozenset[str]: ...

    def datastore_names(self) -> frozenset[str]: ...


class YamlPipelineReader:
    """Reads a pipeline job YAML as data (no azure-ai-ml): the fields `load_job` would give us."""

    def read(self, path: Path) -> PipelineFacts:
        """Raises ValueError if the file is not YAML or not a pipeline job."""
        try:
            doc = safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
            raise ValueError(f"cannot read it as YAML: {_one_line(exc)}") from exc
        if not isinstance(doc, dict) or doc.get("type") != "pipeline":
            raise ValueError("is not an Azure ML pipeline job (type: pipeline)")
        inputs = doc.get("inputs")
        settings = doc.get("settings")
        jobs = doc.get("jobs")
        computes = [settings.get("default_compute")] if isinstance(settings, dict) else []
        computes += [j.get("compute") for j in jobs.values() if isinstance(j, dict)] if isinstance(jobs, dict) else []
        tags = doc.get("tags")
        return PipelineFacts(
            inputs=frozenset(str(k) for k in inputs) if isinstance(inputs, dict) else frozenset(),
            computes=frozenset(compute_name(c) for c in computes if isinstance(c, str) and c),
            metrics=metric_list(tags.get(PIPELINE_METRICS_TAG) if isinstance(tags, dict) else None),
        )


def compute_name(reference: str) -> str:
    """`azureml:cpu-cluster` → `cpu-cluster`."""
    return reference.removeprefix("azureml:")


def metric_list(value: object) -> frozenset[str]:
    """The metric names of a comma-separated tag value (`roc_auc, accuracy`)."""
    return frozenset(m.strip() for m in value.split(",") if m.strip()) if isinstance(value, str) else frozenset()


# -- the document: read, schema --------------------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def safe_load(text: str) -> Any:
    """`yaml.safe_load(text)`, parsed by libyaml when PyYAML has it: the start-up check reads the policy and
    its pipelines, and the pure-Python parser was most of its time (cold start, `bench/bench_cold_start.py`).
    A document libyaml refuses is parsed again by the pure-Python loader, so every problem reported (its
    message and line) is the one `yaml.safe_load` gives. Raises yaml.YAMLError or RecursionError as it does."""
    if yaml.__with_libyaml__:
        try:
            return yaml.load(text, Loader=yaml.CSafeLoader)  # same SafeConstructor: the same Python values
        except (yaml.YAMLError, RecursionError):
            pass  # the pure-Python loader below raises its own (documented) error for this document
    return yaml.safe_load(text)


def read_document(path: Path) -> tuple[object, list[Problem]]:
    """The parsed YAML of `path`, or the problem that stops reading it (naming the file and the line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return None, [Problem("(file)", f"cannot read the file {path}: {exc.strerror or _one_line(exc)}")]
    except UnicodeDecodeError as exc:
        return None, [Problem("(file)", f"cannot read the file {path.name}: not UTF-8 text (byte {exc.start})")]
    try:
        return safe_load(text), []
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path.name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path.name
        return None, [Problem("(file)", f"{where}: not valid YAML: {exc.problem or exc.context}")]
    except (yaml.YAMLError, RecursionError) as exc:  # RecursionError: nested too deeply for the parser
        return None, [Problem("(file)", f"{path.name}: not valid YAML: {_one_line(exc)[:200]}")]


def _top_level(document: object) -> list[Problem]:
    if document is None:
        return [Problem("(top level)", "the file is empty; a policy declares at least `datasets:` "
                        "(see evergreen.yaml in the repository)")]
    if not isinstance(document, dict):
        kind = "a list" if isinstance(document, list) else f"the {type(document).__name__} {document!r}"[:80]
        return [Problem("(top level)", f"must be a mapping of sections (datasets, retraining, models, retention), "
                        f"not {kind}")]
    return []


def error_path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _model_at(loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The policy model that holds the field at `loc` (its last part), to suggest a close field name."""
    model: type[BaseModel] = Policy
    for part in loc:
        if isinstance(part, int):
            continue
        found = model.model_fields.get(part)
        sub = _find_model(found.annotation) if found is not None else None
        if sub is None:
            return None
        model = sub
    return model


def _find_model(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for a in get_args(annotation) if (m := _find_model(a)) is not None), None)


def close(name: object, candidates: Iterable[str]) -> str | None:
    """The candidate closest to `name` (difflib), if one is close enough to be a typo."""
    if not isinstance(name, str):
        return None
    found = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return found[0] if found else None


def _schema_problem(error: Any) -> Problem:
    loc = tuple(error["loc"])
    kind = error["type"]
    message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    hint = None
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        hint = close(loc[-1], model.model_fields if model else ())
        message = "unknown key" + (f"; the keys here are {', '.join(model.model_fields)}" if model and not hint else "")
    elif kind == "enum":
        hint = close(error.get("input"), re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", ""))))
    elif kind == "missing":
        message = "required, but missing"
    return Problem(error_path(loc), message, hint)


def schema_problems(document: object) -> tuple[list[Problem], Policy | None]:
    """Validate against the policy models; every schema problem, or the parsed policy."""
    try:
        return [], Policy.model_validate(document)
    except ValidationError as exc:
        return [_schema_problem(e) for e in exc.errors()], None


# -- raw access: the cross-checks read the document as written, so they run whatever else is wrong ----------------
def _entries(doc: Mapping[str, Any], key: str) -> list[tuple[int, dict[str, Any]]]:
    value = doc.get(key)
    return [(i, e) for i, e in enumerate(value) if isinstance(e, dict)] if isinstance(value, list) else []


def _get(entry: object, *keys: str) -> Any:
    for key in keys:
        if not isinstance(entry, dict):
            return None
        entry = entry.get(key)
    return entry


def _names(values: Iterable[object]) -> list[str]:
    return [v for v in values if isinstance(v, str)]


def _repeated(values: list[str]) -> list[str]:
    return sorted({v for v in values if values.count(v) > 1})


@dataclass
class _Facts:
    """What the cross-checks share: names declared in the document, and each pipeline's facts."""

    doc: Mapping[str, Any]
    pipelines: dict[int, PipelineFacts] = field(default_factory=dict)

    def dataset_names(self) -> list[str]:
        return _names(d.get("name") for _, d in _entries(self.doc, "datasets"))

    def produced_models(self) -> list[str]:
        return _names(r.get("model_name") for _, r in _entries(self.doc, "retraining"))

    def model_names(self) -> list[str]:
        return _names(m.get("name") for _, m in _entries(self.doc, "models")) + self.produced_models()

    def endpoint_names(self) -> list[str]:
        return _names(_get(m, "promotion", "endpoint") for _, m in _entries(self.doc, "models"))

    def metrics_of(self, model: str | None) -> set[str] | None:
        """Metrics the pipelines producing `model` (all, for None) declare; None when none declares any."""
        found: set[str] = set()
        for i, r in _entries(self.doc, "retraining"):
            if model is None or r.get("model_name") == model:
                declared = r.get("metrics")
                found |= set(_names(declared)) if isinstance(declared, list) else set()
                found |= self.pipelines[i].metrics if i in self.pipelines else set()
        return found or None


# -- consistency of the document itself (also what parse_policy checks) -----------------------------------------
def consistency_problems(doc: Mapping[str, Any], *, landing_container: str | None = None) -> list[Problem]:
    """Names unique, prefixes disjoint, references resolve: the checks between entries of the file."""
    return (_dataset_problems(doc, landing_container) + _retraining_references(doc)
            + _model_uniqueness(doc) + _evaluation_references(doc))


def _dataset_problems(doc: Mapping[str, Any], landing_container: str | None) -> list[Problem]:
    datasets = _entries(doc, "datasets")
    problems = [Problem("datasets", f"dataset names must be unique; repeated: {', '.join(repeated)}")
                for repeated in [_repeated(_names(d.get("name") for _, d in datasets))] if repeated]
    where: list[tuple[int, object, str, str]] = [
        (i, d.get("name"), d["container"], d["prefix"]) for i, d in datasets
        if isinstance(d.get("container"), str) and isinstance(d.get("prefix"), str)]
    for n, (_, a, container, prefix) in enumerate(where):
        for j, b, other_container, other in where[n + 1:]:
            if container == other_container and (prefix.startswith(other) or other.startswith(prefix)):
                problems.append(Problem(f"datasets[{j}].prefix", f"datasets {a!r} and {b!r} watch overlapping "
                                        f"prefixes ({container}/{prefix} and {container}/{other}); a blob must "
                                        "belong to one"))
    if landing_container is not None:
        problems += [Problem(f"datasets[{i}].container", f"{c!r} is not the landing container "
                             f"{landing_container!r} (EVERGREEN_LANDING_CONTAINER); the blob trigger watches "
                             "one container per app") for i, _, c, _ in where if c != landing_container]
    return problems


def _retraining_references(doc: Mapping[str, Any]) -> list[Problem]:
    if not isinstance(doc.get("datasets"), list):
        return []  # the schema reports it; every reference would fail with it
    declared = _names(d.get("name") for _, d in _entries(doc, "datasets"))
    problems = []
    seen: list[str] = []
    for i, r in _entries(doc, "retraining"):
        dataset = r.get("dataset")
        if isinstance(dataset, str) and dataset not in declared:
            problems.append(Problem(f"retraining[{i}].dataset", f"{dataset!r} is not a declared dataset",
                                    close(dataset, declared)))
        elif isinstance(dataset, str) and dataset in seen:
            problems.append(Problem(f"retraining[{i}].dataset", f"{dataset!r} already has a retraining entry; "
                                    "one entry per dataset"))
        seen.append(dataset) if isinstance(dataset, str) else None
    return problems


def _evaluation_references(doc: Mapping[str, Any]) -> list[Problem]:
    """`promotion.evaluation.data` names a declared dataset, so new evaluation drops become its versions."""
    if not isinstance(doc.get("datasets"), list):
        return []  # the schema reports it
    declared = _names(d.get("name") for _, d in _entries(doc, "datasets"))
    problems = []
    for i, m in _entries(doc, "models"):
        data = _get(m, "promotion", "evaluation", "data")
        if not isinstance(data, str):
            continue
        name = data.split("@", 1)[0].split(":", 1)[0]
        if name not in declared:
            problems.append(Problem(f"models[{i}].promotion.evaluation.data", f"{name!r} is not a declared dataset; "
                                    "declare the evaluation data under datasets: so its drops become versions",
                                    close(name, declared)))
    return problems


def _model_uniqueness(doc: Mapping[str, Any]) -> list[Problem]:
    models = _entries(doc, "models")
    problems = [Problem("models", f"one entry per model; repeated: {', '.join(repeated)}")
                for repeated in [_repeated(_names(m.get("name") for _, m in models))] if repeated]
    endpoints = _repeated(_names(_get(m, "promotion", "endpoint") for _, m in models))
    if endpoints:
        problems.append(Problem("models", f"endpoint(s) {', '.join(endpoints)} named by more than one model; "
                                "two models promoting onto one endpoint would keep replacing each other"))
    return problems


# -- cross-checks: the policy against the pipelines, the code and itself -----------------------------------------
def _pipeline_problems(facts: _Facts, root: Path, reader: PipelineReader) -> list[Problem]:
    """Each retraining pipeline exists, reads, and declares every input Evergreen or the policy sets."""
    problems = []
    for i, r in _entries(facts.doc, "retraining"):
        pipeline = r.get("pipeline")
        if not isinstance(pipeline, str) or not pipeline.endswith((".yml", ".yaml")):
            continue  # the schema reports it
        path = root / pipeline
        if pipeline.startswith("/") or ".." in pipeline.split("/"):
            continue  # the schema reports it
        if not path.is_file():
            siblings = [str(p.relative_to(root)) for p in path.parent.glob("*.y*ml")] if path.parent.is_dir() else []
            problems.append(Problem(f"retraining[{i}].pipeline", f"no file {pipeline!r} (paths are relative to "
                                    "the policy file's folder)", close(pipeline, siblings)))
            continue
        try:
            facts.pipelines[i] = pipeline_facts = reader.read(path)
        except ValueError as exc:
            problems.append(Problem(f"retraining[{i}].pipeline", f"{pipeline} {exc}"))
            continue
        declared = pipeline_facts.inputs
        problems += [Problem(f"retraining[{i}].pipeline", f"{pipeline} does not declare the input {name!r}, which "
                             "Evergreen sets on every submission") for name in EVERGREEN_INPUTS if name not in declared]
        inputs = r.get("inputs")
        problems += [Problem(f"retraining[{i}].inputs.{key}", f"{pipeline} declares no input {key!r}; the "
                             "submission would fail", close(key, declared))
                     for key in (inputs if isinstance(inputs, dict) else ()) if key not in declared]
    return problems


def _evaluation_pipeline_problems(facts: _Facts, root: Path, reader: PipelineReader) -> list[Problem]:
    """With `promotion.evaluation`, the comparison pipeline exists, declares every input Evergreen sets, and
    computes each governed model's `promotion.metric` (when it declares its metrics: the `evergreen.metrics` tag)."""
    governed = [i for i, m in _entries(facts.doc, "models") if isinstance(_get(m, "promotion", "evaluation"), dict)]
    if not governed:
        return []
    path = f"models[{governed[0]}].promotion.evaluation"
    try:
        compare = reader.read(root / COMPARE_PIPELINE)
    except (ValueError, OSError) as exc:
        return [Problem(path, f"{COMPARE_PIPELINE} (the comparison job) cannot be read: {_one_line(exc)}")]
    problems = [Problem(path, f"{COMPARE_PIPELINE} does not declare the input {name!r}, which Evergreen sets on "
                        "every comparison job") for name in COMPARE_INPUTS if name not in compare.inputs]
    metrics = {i: _get(m, "promotion", "metric") for i, m in _entries(facts.doc, "models") if i in governed}
    problems += [Problem(f"models[{i}].promotion.metric", f"{metric!r} is not a metric the comparison job computes "
                         f"({', '.join(sorted(compare.metrics))}); every candidate would be skipped as "
                         "comparison_failed", close(metric, compare.metrics))
                 for i, metric in metrics.items()
                 if compare.metrics and isinstance(metric, str) and metric not in compare.metrics]
    return problems


def _model_problems(facts: _Facts) -> list[Problem]:
    """Each model is produced by a retraining entry (or registered elsewhere); its metric is one produced."""
    produced = facts.produced_models()
    problems = []
    for i, m in _entries(facts.doc, "models"):
        name = m.get("name")
        if not isinstance(name, str) or m.get("registered_elsewhere") is True:
            continue
        if name not in produced:
            problems.append(Problem(f"models[{i}].name", f"no retraining entry produces {name!r} (its model_name); "
                                    "fix the name, or mark it registered_elsewhere: true", close(name, produced)))
            continue
        metric = _get(m, "promotion", "metric")
        metrics = facts.metrics_of(name)
        if not isinstance(metric, str):
            continue
        if metrics is None:
            problems.append(Problem(f"models[{i}].promotion.metric", f"cannot check {metric!r}: no pipeline producing "
                                    f"{name!r} declares its metrics (retraining[].metrics)", None, Severity.WARNING))
        elif metric not in metrics:
            problems.append(Problem(f"models[{i}].promotion.metric", f"{metric!r} is not a metric the pipeline "
                                    f"writes ({', '.join(sorted(metrics))}); every candidate would be skipped as "
                                    "missing_metric", close(metric, metrics)))
    return problems


def _code_problems(facts: _Facts, root: Path) -> list[Problem]:
    problems = []
    for i, m in _entries(facts.doc, "models"):
        code, script = _get(m, "promotion", "deployment", "code"), _get(m, "promotion", "deployment", "scoring_script")
        if not isinstance(code, str) or code.startswith("/") or ".." in code.split("/"):
            continue  # none (an MLflow model), or the schema reports it
        path = f"models[{i}].promotion.deployment"
        if not (root / code).is_dir():
            problems.append(Problem(f"{path}.code", f"no folder {code!r} (paths are relative to the policy file's "
                                    "folder)"))
        elif isinstance(script, str) and not (root / code / script).is_file():
            problems.append(Problem(f"{path}.scoring_script", f"no file {script!r} in {code}",
                                    close(script, (p.name for p in (root / code).glob("*.py")))))
    return problems


_FILTER_TARGETS = {"data_versions": "dataset", "dataVersions": "dataset", "model_versions": "model",
                   "modelVersions": "model", "deployments": "endpoint"}


def _retention_problems(facts: _Facts) -> list[Problem]:
    """Filters select something (a warning), and a keep_top_k metric is one some pipeline writes (an error)."""
    if not isinstance(facts.doc.get("datasets"), list):
        return []  # the schema reports it; every filter would look unmatched
    known = {"dataset": facts.dataset_names(), "model": facts.model_names(), "endpoint": facts.endpoint_names()}
    containers = [f"{d.get('container')}/{d.get('prefix')}" for _, d in _entries(facts.doc, "datasets")]
    all_metrics = facts.metrics_of(None)
    problems = []
    rules = _get(facts.doc, "retention", "rules")
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        if not isinstance(rule, dict):
            continue
        path = f"retention.rules[{i}]"
        target = _FILTER_TARGETS.get(str(rule.get("type")))
        names, prefixes = _get(rule, "filters", "names"), _get(rule, "filters", "prefixes")
        if target is not None:
            problems += [Problem(f"{path}.filters.names", f"{n!r} matches no {target} of this policy",
                                 close(n, known[target]), Severity.WARNING)
                         for n in _names(names if isinstance(names, list) else []) if n not in known[target]]
            problems += [Problem(f"{path}.filters.prefixes", f"{p!r} matches no {target} of this policy",
                                 None, Severity.WARNING) for p in _names(prefixes if isinstance(prefixes, list) else [])
                         if not any(k.startswith(p) for k in known[target])]
        elif rule.get("type") == "blobs":
            problems += [Problem(f"{path}.filters.prefixes", f"{p!r} matches no dataset's container/prefix",
                                 close(p, containers), Severity.WARNING)
                         for p in _names(prefixes if isinstance(prefixes, list) else [])
                         if not any(c.startswith(p) or p.startswith(c) for c in containers)]
        top = _get(rule, "actions", "keep_top_k") or _get(rule, "actions", "keepTopK")
        metric = _get(top, "metric")
        if isinstance(metric, str) and all_metrics is not None and metric not in all_metrics:
            key = "keep_top_k" if _get(rule, "actions", "keep_top_k") else "keepTopK"
            problems.append(Problem(f"{path}.actions.{key}.metric", f"{metric!r} is not a metric any pipeline "
                                    f"writes ({', '.join(sorted(all_metrics))})", close(metric, all_metrics)))
    return problems


def _legacy_problems(doc: Mapping[str, Any]) -> list[Problem]:
    """Deprecated spellings: each still parses; the warning names the one to write."""
    problems = [Problem(path, f"{old!r} is deprecated; write {new!r}", None, Severity.WARNING)
                for path, old, new in legacy_spellings(doc.get("retention"))]
    directions = [(f"models[{i}].promotion.direction", _get(m, "promotion", "direction"))
                  for i, m in _entries(doc, "models")]
    rules = _get(doc, "retention", "rules")
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        directions += [(f"retention.rules[{i}].actions.{key}.direction", _get(rule, "actions", key, "direction"))
                       for key in ("keep_top_k", "keepTopK")]
    problems += [Problem(path, f"{value!r} is deprecated; write {LEGACY_DIRECTIONS[value].value!r}", None,
                         Severity.WARNING)
                 for path, value in directions if isinstance(value, str) and value in LEGACY_DIRECTIONS]
    return problems


def schedule_problems(env: Mapping[str, str]) -> list[Problem]:
    """The timers' NCRONTAB settings (six fields, seconds first), when set."""
    return [Problem(key, problem) for key in SCHEDULE_DEFAULTS if key in env
            if (problem := cron_problem(env[key])) is not None]


def _workspace_problems(facts: _Facts, workspace: WorkspaceFacts | None) -> list[Problem]:
    if workspace is None:
        return [Problem("(workspace)", "not reachable: the compute and datastore checks were skipped",
                        None, Severity.NOTE)]
    try:
        computes, datastores = workspace.compute_names(), workspace.datastore_names()
    except EvergreenError as exc:
        return [Problem("(workspace)", f"not reachable ({_one_line(exc)}): the compute and datastore checks "
                        "were skipped", None, Severity.NOTE)]
    problems = [Problem(f"retraining[{i}].pipeline", f"names the compute {c!r}, which the workspace does not have",
                        close(c, computes)) for i, p in sorted(facts.pipelines.items()) for c in sorted(p.computes)
                if c not in computes]
    problems += [Problem(f"datasets[{i}].datastore", f"{d.get('datastore')!r} is not a datastore of the workspace",
                         close(d.get("datastore"), datastores)) for i, d in _entries(facts.doc, "datasets")
                 if isinstance(d.get("datastore"), str) and d.get("datastore") not in datastores]
    return problems


# -- entry points -----------------------------------------------------------------------------------------------
def check_document(
    document: object,
    *,
    root: Path | None = None,
    pipelines: PipelineReader | None = None,
    workspace: WorkspaceFacts | None = None,
    landing_container: str | None = None,
    env: Mapping[str, str] | None = None,
    source: str = "policy",
) -> Report:
    """Every problem of a parsed document. Without `root`, only the document itself is checked (no files)."""
    top = _top_level(document)
    if top or not isinstance(document, dict):
        return Report(source, tuple(top))
    problems, policy = schema_problems(document)
    problems = _legacy_problems(document) + problems + consistency_problems(document,
                                                                            landing_container=landing_container)
    if root is not None:
        facts = _Facts(document)
        problems += _pipeline_problems(facts, root, pipelines or YamlPipelineReader())
        problems += _evaluation_pipeline_problems(facts, root, pipelines or YamlPipelineReader())
        problems += _model_problems(facts) + _code_problems(facts, root) + _retention_problems(facts)
    problems += schedule_problems(env) if env is not None else []
    if root is not None and (workspace is not None or env is not None):
        problems += _workspace_problems(facts, workspace)
    found = tuple(problems)
    has_error = any(p.severity is Severity.ERROR for p in found)
    return Report(source, found, None if has_error else policy)


def validate(
    policy_path: Path,
    *,
    workspace: WorkspaceFacts | None = None,
    pipelines: PipelineReader | None = None,
    landing_container: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Report:
    """Every problem of the policy file at `policy_path` (paths in it are relative to its folder).

    Never raises for a bad file: reading, YAML, schema and cross-check problems are all in the report.
    With `env` (the CLI passes the environment) the timer schedules are checked too, and a missing
    `workspace` is noted; start-up passes neither.
    """
    document, unreadable = read_document(policy_path)
    if unreadable:
        return Report(str(policy_path), tuple(unreadable))
    return check_document(document, root=policy_path.parent, pipelines=pipelines, workspace=workspace,
                          landing_container=landing_container, env=env, source=str(policy_path))


def policy_schema() -> dict[str, Any]:
    """The JSON Schema of `evergreen.yaml`, generated from the policy models."""
    schema = Policy.model_json_schema()
    return {"$schema": SCHEMA_DIALECT, **schema, "title": "Evergreen lifecycle policy (evergreen.yaml)"}


def schema_text() -> str:
    return json.dumps(policy_schema(), indent=2, ensure_ascii=False) + "\n"


def main(
    argv: Sequence[str] | None = None,
    *,
    pipelines: PipelineReader | None = None,
    workspace: WorkspaceFacts | None = None,
) -> int:
    """`validate [--policy FILE] [--json] [--write-schema]`: one line per problem on stdout; 1 on an error, else 0."""
    import argparse  # the command line only: the start-up check (`import function_app`) does not pay for it

    parser = argparse.ArgumentParser(prog="python -m shared.cli validate",
                                     description="Check evergreen.yaml: every problem, one line each.")
    parser.add_argument("--policy", type=Path, default=None,
                        help="policy file (default: EVERGREEN_POLICY_PATH, else evergreen.yaml at the app root)")
    parser.add_argument("--write-schema", action="store_true",
                        help=f"regenerate {SCHEMA_PATH.relative_to(APP_ROOT)} from the policy models and exit")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object (same exit code)")
    args = parser.parse_args(argv)
    if args.write_schema:
        SCHEMA_PATH.parent.mkdir(parents=True, exist_ok=True)
        SCHEMA_PATH.write_text(schema_text(), encoding="utf-8")
        sys.stdout.write(f"wrote {SCHEMA_PATH}\n")
        return 0
    path = args.policy or Path(os.environ.get("EVERGREEN_POLICY_PATH", "").strip() or APP_ROOT / "evergreen.yaml")
    report = validate(path, workspace=workspace, pipelines=pipelines, env=os.environ)
    if args.json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
        return 0 if report.ok else 1
    for line in report.lines():
        sys.stdout.write(line + "\n")
    summary = f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)"
    sys.stdout.write(f"{report.source}: {'ok' if report.ok else 'invalid'}: {summary}\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

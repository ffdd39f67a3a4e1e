"""`Endpoints` in memory, with the Azure ML emulator's semantics, for service tests and the fault harness.

- A model registry: `add_model(name, version, tags, properties)`; an unknown version reads as None.
- Endpoints and deployments whose create/update/delete operations are *in progress* (Creating,
  Updating, Deleting) until they settle: after `operation_ticks` calls of `advance()` and, with a
  clock, `operation_seconds` of its time. A settled create ends Succeeded, or Failed when
  `fail_provisioning(deployment)` was switched on; a settled delete removes the deployment.
- A traffic update is validated as Azure does (known deployments, weights summing to 0 or 100, only
  Succeeded deployments take traffic) and applied when its operation settles.
- Deployments answer `score` with `reply` (by default `{"predictions": [...]}`, one per input row),
  or fail after `fail_scoring(deployment)`.
- A refused request (unknown endpoint, a deployment with an operation in progress, deleting a
  deployment that takes traffic) raises `OperationFailedError`, as the Azure adapter does.

Thread-safe: one lock around every call, so the services' concurrency tests can race instances.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.domain.vocabulary import version_order
from shared.domain.workspace import DeploymentSpec, DeploymentView, EndpointView, ModelInfo
from shared.errors import OperationFailedError
from shared.ports import Clock

log = logging.getLogger(__name__)

Scorer = Callable[[str, str, dict[str, Any]], Any]


def default_reply(_endpoint: str, _deployment: str, request: dict[str, Any]) -> Any:
    """What a served model answers: one prediction per row of `input_data`."""
    rows = request.get("input_data")
    return {"predictions": [0] * (len(rows) if isinstance(rows, list) else 1)}


@dataclass
class _Operation:
    """An operation in progress: it settles once its ticks are used up and its time has come."""

    ticks: int
    ready_at: datetime | None
    settle: Callable[[], None]


@dataclass
class _Deployment:
    name: str
    state: str
    model: tuple[str, str]
    tags: dict[str, str]
    log: list[str] = field(default_factory=list)
    operation: _Operation | None = None

    def view(self) -> DeploymentView:
        return DeploymentView(name=self.name, state=self.state, model=self.model, tags=dict(self.tags))


@dataclass
class _Endpoint:
    name: str
    state: str
    tags: dict[str, str]
    traffic: dict[str, int] = field(default_factory=dict)
    deployments: dict[str, _Deployment] = field(default_factory=dict)
    operation: _Operation | None = None

    def view(self) -> EndpointView:
        return EndpointView(name=self.name, state=self.state, traffic=dict(self.traffic),
                            deployments=tuple(d.view() for d in self.deployments.values()))


class MemoryEndpoints:
    """Managed online endpoints and the model registry, in memory (`shared.ports.Endpoints`)."""

    def __init__(self, *, operation_ticks: int = 1, clock: Clock | None = None, operation_seconds: float = 0.0,
                 reply: Scorer = default_reply) -> None:
        if operation_ticks < 0 or operation_seconds < 0:
            raise ValueError("operation_ticks and operation_seconds must not be negative")
        if operation_seconds and clock is None:
            raise ValueError("operation_seconds needs a clock to measure them")
        self._ticks = operation_ticks
        self._clock = clock
        self._seconds = operation_seconds
        self._reply = reply
        self._models: dict[tuple[str, str], ModelInfo] = {}
        self._endpoints: dict[str, _Endpoint] = {}
        self._failing_provisioning: set[str] = set()
        self._failing_scoring: set[str] = set()
        self._lock = threading.RLock()
        self.calls: list[str] = []  # the port methods called, in order (what tests assert "never happened")

    # -- the test's handles --------------------------------------------------------------------------
    def add_model(self, name: str, version: str, tags: Mapping[str, str] | None = None,
                  properties: Mapping[str, str] | None = None) -> ModelInfo:
        """Register a model version (what training would); returns it as `get_model` will."""
        info = ModelInfo(name=name, version=str(version), tags=dict(tags or {}), properties=dict(properties or {}))
        with self._lock:
            self._models[(name, info.version)] = info
        return info

    def fail_provisioning(self, deployment: str) -> None:
        """The next creation of `deployment` (on any endpoint) ends Failed instead of Succeeded."""
        with self._lock:
            self._failing_provisioning.add(deployment)

    def fail_scoring(self, deployment: str) -> None:
        """`deployment` answers every scoring request with an error (a failing smoke test)."""
        with self._lock:
            self._failing_scoring.add(deployment)

    def advance(self, ticks: int = 1) -> None:
        """Let `ticks` units of work pass: operations whose ticks (and time) are used up settle."""
        with self._lock:
            for _ in range(ticks):
                for operation in self._operations():
                    operation.ticks -= 1
                self._settle()

    def settle_all(self) -> None:
        """Finish every operation in progress now, whatever its ticks or time (a test's shortcut)."""
        with self._lock:
            while operations := self._operations():
                for operation in operations:
                    operation.ticks, operation.ready_at = 0, None
                self._settle()

    # -- the port ---------------------------------------------------------------------------------
    def get_model(self, name: str, version: str) -> ModelInfo | None:
        with self._lock:
            self.calls.append("get_model")
            return self._models.get((name, str(version)))

    def latest_model(self, name: str) -> ModelInfo | None:
        with self._lock:
            self.calls.append("latest_model")
            versions = [info for (model, _), info in self._models.items() if model == name]
        return max(versions, key=lambda info: version_order(info.version), default=None)

    def list_model_versions(self, name: str, *, tags: Mapping[str, str] | None = None,
                            limit: int = 100) -> list[ModelInfo]:
        """`ModelRegistry`: versions of `name` with every tag of `tags`, newest first, at most `limit`
        (reading at most `limit` × 10 versions, as the Azure adapter pages)."""
        wanted = dict(tags or {})
        with self._lock:
            self.calls.append("list_model_versions")
            versions = [info for (model, _), info in self._models.items() if model == name]
        newest = sorted(versions, key=lambda info: version_order(info.version), reverse=True)[:limit * 10]
        return [i for i in newest if all(i.tags.get(k) == v for k, v in wanted.items())][:limit]

    def set_model_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        """Merge `tags` into the version's tags; OperationFailedError if there is no such version."""
        with self._lock:
            self.calls.append("set_model_tags")
            info = self._models.get((name, str(version)))
            if info is None:
                raise OperationFailedError(f"tagging model {name}:{version}: not found")
            self._models[(name, info.version)] = ModelInfo(name=info.name, version=info.version,
                                                           tags={**info.tags, **tags}, properties=info.properties)

    def endpoint(self, name: str) -> EndpointView | None:
        with self._lock:
            self.calls.append("endpoint")
            self._settle()
            found = self._endpoints.get(name)
            return found.view() if found is not None else None

    def begin_create_endpoint(self, name: str, tags: dict[str, str]) -> None:
        """Create the endpoint (Creating → Succeeded), or update the tags of one that exists (Updating)."""
        with self._lock:
            self.calls.append("begin_create_endpoint")
            self._settle()
            endpoint = self._endpoints.get(name)
            if endpoint is None:
                endpoint = self._endpoints[name] = _Endpoint(name=name, state="Creating", tags=dict(tags))
            else:
                self._refuse_if_deleting(endpoint)
                endpoint.state, endpoint.tags = "Updating", dict(tags)
            endpoint.operation = self._start(lambda: self._endpoint_settled(endpoint))

    def begin_create_deployment(self, spec: DeploymentSpec) -> None:
        """Create (Creating) or update (Updating) a deployment; it settles Succeeded, or Failed if switched."""
        with self._lock:
            self.calls.append("begin_create_deployment")
            self._settle()
            endpoint = self._existing(spec.endpoint)
            self._refuse_if_deleting(endpoint)
            if (spec.model_name, spec.model_version) not in self._models:
                raise OperationFailedError(f"creating deployment {spec.name}: could not find model asset "
                                           f"{spec.model_name}:{spec.model_version}")
            deployment = endpoint.deployments.get(spec.name)
            if deployment is not None and deployment.operation is not None:
                raise OperationFailedError(f"creating deployment {spec.name}: it has an operation in progress "
                                           f"({deployment.state})")
            model = (spec.model_name, spec.model_version)
            if deployment is None:
                deployment = endpoint.deployments[spec.name] = _Deployment(spec.name, "Creating", model,
                                                                          dict(spec.tags))
            else:
                deployment.state, deployment.model, deployment.tags = "Updating", model, dict(spec.tags)
            deployment.log.append(f"provisioning {spec.model_name}:{spec.model_version} on {spec.instance_type}")
            created = deployment
            created.operation = self._start(lambda: self._deployment_settled(created))

    def begin_set_traffic(self, endpoint: str, traffic: dict[str, int]) -> None:
        """Validate the split as Azure does, then apply it when the endpoint's update settles."""
        with self._lock:
            self.calls.append("begin_set_traffic")
            self._settle()
            found = self._existing(endpoint)
            self._refuse_if_deleting(found)
            self._validate_traffic(found, traffic)
            wanted = dict(traffic)
            found.state = "Updating"
            found.operation = self._start(lambda: self._traffic_settled(found, wanted))

    def begin_delete_deployment(self, endpoint: str, name: str) -> None:
        """Start deleting (Deleting → gone); a deployment that is already gone counts as deleted."""
        with self._lock:
            self.calls.append("begin_delete_deployment")
            self._settle()
            found = self._existing(endpoint)
            deployment = found.deployments.get(name)
            if deployment is None:
                log.info("deployment %s/%s is already gone", endpoint, name)
                return
            if found.traffic.get(name, 0) > 0:
                raise OperationFailedError(f"deleting deployment {name} of {endpoint}: it receives traffic "
                                           f"({found.traffic[name]}%); set its traffic to 0 first")
            deployment.state = "Deleting"
            deployment.operation = self._start(lambda: self._deleted(found, name))

    def deployment_logs(self, endpoint: str, name: str, lines: int = 20) -> str:
        with self._lock:
            self.calls.append("deployment_logs")
            deployment = self._existing(endpoint).deployments.get(name)
            if deployment is None:
                raise OperationFailedError(f"reading the logs of deployment {name} of {endpoint}: not found")
            return "\n".join(deployment.log[-lines:])

    def score(self, endpoint: str, deployment: str, request: dict[str, Any]) -> Any:
        """The deployment's reply; OperationFailedError if it cannot answer (missing, not Succeeded, failing)."""
        with self._lock:
            self.calls.append("score")
            self._settle()
            found = self._existing(endpoint).deployments.get(deployment)
            if found is None or found.state != "Succeeded":
                state = found.state if found is not None else "missing"
                raise OperationFailedError(f"scoring deployment {deployment} of {endpoint}: it is {state}")
            if deployment in self._failing_scoring:
                raise OperationFailedError(f"scoring deployment {deployment} of {endpoint}: (500) the scoring "
                                           "script raised an error")
            reply = self._reply
        return reply(endpoint, deployment, request)

    # -- operations ----------------------------------------------------------------------------------
    def _start(self, settle: Callable[[], None]) -> _Operation:
        ready_at = self._clock() + timedelta(seconds=self._seconds) if self._clock is not None else None
        return _Operation(ticks=self._ticks, ready_at=ready_at, settle=settle)

    def _operations(self) -> list[_Operation]:
        found = []
        for endpoint in self._endpoints.values():
            if endpoint.operation is not None:
                found.append(endpoint.operation)
            found.extend(d.operation for d in endpoint.deployments.values() if d.operation is not None)
        return found

    def _settle(self) -> None:
        """Settle every operation that is due (called at the start of each port call and by `advance`)."""
        now = self._clock() if self._clock is not None else None
        for operation in self._operations():
            if operation.ticks <= 0 and (operation.ready_at is None or (now is not None and now >= operation.ready_at)):
                operation.settle()

    def _endpoint_settled(self, endpoint: _Endpoint) -> None:
        endpoint.state, endpoint.operation = "Succeeded", None

    def _traffic_settled(self, endpoint: _Endpoint, traffic: dict[str, int]) -> None:
        endpoint.traffic = {name: weight for name, weight in traffic.items() if name in endpoint.deployments}
        endpoint.state, endpoint.operation = "Succeeded", None

    def _deployment_settled(self, deployment: _Deployment) -> None:
        failed = deployment.name in self._failing_provisioning
        self._failing_provisioning.discard(deployment.name)
        deployment.state, deployment.operation = ("Failed" if failed else "Succeeded"), None
        deployment.log.append("provisioning failed: the scoring container did not start (init() raised)" if failed
                              else "provisioning succeeded: the scoring container answers its liveness probe")

    def _deleted(self, endpoint: _Endpoint, name: str) -> None:
        endpoint.deployments.pop(name, None)
        endpoint.traffic.pop(name, None)

    # -- Azure's rules -------------------------------------------------------------------------------
    def _existing(self, name: str) -> _Endpoint:
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            raise OperationFailedError(f"endpoint {name} not found")
        return endpoint

    @staticmethod
    def _refuse_if_deleting(endpoint: _Endpoint) -> None:
        if endpoint.state == "Deleting":
            raise OperationFailedError(f"online endpoint {endpoint.name} is being deleted")

    @staticmethod
    def _validate_traffic(endpoint: _Endpoint, traffic: Mapping[str, int]) -> None:
        unknown = sorted(name for name in traffic if name not in endpoint.deployments)
        if unknown:
            raise OperationFailedError(f"invalid traffic: deployment(s) {', '.join(unknown)} do not exist in "
                                       f"endpoint {endpoint.name}")
        if any(not 0 <= weight <= 100 for weight in traffic.values()) or sum(traffic.values()) not in (0, 100):
            raise OperationFailedError(f"invalid traffic {dict(traffic)}: the weights must sum to 100 or 0")
        not_ready = sorted(name for name, weight in traffic.items()
                           if weight > 0 and endpoint.deployments[name].state != "Succeeded")
        if not_ready:
            raise OperationFailedError(f"invalid traffic: deployment(s) {', '.join(not_ready)} are not in a "
                                       "Succeeded state and cannot take traffic")

"""Turn trigger payloads into the Python objects a function receives, as the Python worker does.

The host hands the worker a `Datum` (typed data) plus trigger metadata; the worker decodes it with
the converter registered for the binding type in `azure.functions` or, for SDK types such as
`azurefunctions.extensions.bindings.blob.BlobClient`, in `azurefunctions.extensions.base` from a
`model_binding_data` Datum. This module builds the same inputs and uses the same converters.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import azure.functions as func
from azure.functions import _abc as azf_abc
from azure.functions.meta import Datum

from devstack.host.connections import ClientCache

if TYPE_CHECKING:
    from devstack.host.indexing import Binding, FunctionInfo
    from devstack.host.settings import QueueOptions

log = logging.getLogger(__name__)

_TEMPLATE = re.compile(r"\{([^{}]+)\}")
_DEFERRED_CACHE_SIZE = 256


class BindingError(RuntimeError):
    """A parameter could not be bound (no binding, unsupported binding, bad value)."""


def converter(binding_type: str) -> Any:
    """The azure-functions converter registered for a binding type, or None (generic binding)."""
    return func.get_binding_registry().get(binding_type)  # type: ignore[no-untyped-call]


def _deferred_registry() -> Any:
    try:
        from azurefunctions.extensions import base
    except ImportError:
        return None
    return base.get_binding_registry()


def is_deferred(annotation: Any) -> bool:
    """True when the annotation is an SDK type bound through model_binding_data (worker's check)."""
    registry = _deferred_registry()
    return bool(registry is not None and annotation is not None and registry.check_supported_type(annotation))


def deferred_converter(binding_type: str) -> Any:
    registry = _deferred_registry()
    return None if registry is None else registry.get(binding_type)


@dataclass(frozen=True)
class ModelBindingData:
    """What the host sends for SDK-type bindings (the protobuf ModelBindingData fields)."""

    content: str
    version: str = "1.0"
    source: str = "AzureStorageBlobs"
    content_type: str = "application/json"


@dataclass(frozen=True)
class BlobReference:
    connection: str
    container: str
    blob: str

    def model_binding_data(self) -> ModelBindingData:
        content = {"Connection": self.connection, "ContainerName": self.container, "BlobName": self.blob}
        return ModelBindingData(content=json.dumps(content, ensure_ascii=False))


@dataclass
class TriggerData:
    """The trigger's payload for one invocation.

    `value` is used as is (HTTP); otherwise `datum()` yields the typed data for the converter,
    computed only when needed (an SDK-type blob binding never downloads the blob).
    """

    metadata: dict[str, Datum] = field(default_factory=dict)
    binding_data: dict[str, str] = field(default_factory=dict)
    value: Any = None
    datum: Callable[[], Datum] | None = None
    blob: BlobReference | None = None


class _TraceContext(azf_abc.TraceContext):
    def __init__(self, trace_parent: str = "", trace_state: str = "") -> None:
        self._parent = trace_parent
        self._state = trace_state

    @property
    def trace_state(self) -> str:
        return self._state

    @property
    def trace_parent(self) -> str:
        return self._parent

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _RetryContext(azf_abc.RetryContext):
    @property
    def retry_count(self) -> int:
        return 0

    @property
    def max_retry_count(self) -> int:
        return 0

    @property
    def exception(self) -> azf_abc.RpcException:
        raise AttributeError("no retry policy is configured")


class InvocationContext(azf_abc.Context):
    """`func.Context` for one invocation (the worker passes it to a parameter named `context`)."""

    def __init__(self, *, invocation_id: str, function_name: str, function_directory: str) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._function_directory = function_directory
        self._local = threading.local()
        self._local.invocation_id = invocation_id

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._local

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self) -> azf_abc.TraceContext:
        return _TraceContext()

    @property
    def retry_context(self) -> azf_abc.RetryContext:
        return _RetryContext()


class Out(azf_abc.Out[Any]):
    """An output parameter; the host writes its value after the function returns."""

    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


class Binder:
    """Builds arguments and writes outputs; holds the worker's deferred-binding client cache."""

    def __init__(self, clients: ClientCache, queues: QueueOptions) -> None:
        self._clients = clients
        self._queues = queues
        self._lock = threading.Lock()
        self._deferred: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    def arguments(
        self, fn: FunctionInfo, trigger: TriggerData, context: InvocationContext
    ) -> tuple[dict[str, Any], dict[str, Out]]:
        args: dict[str, Any] = {}
        outs: dict[str, Out] = {}
        by_name = {b.name: b for b in fn.bindings}
        for name in fn.parameters:
            binding = by_name.get(name)
            if binding is None:
                if name == "context":
                    args[name] = context
                    continue
                raise BindingError(f"parameter '{name}' of '{fn.name}' has no binding")
            if binding is fn.trigger:
                args[name] = self._decode_trigger(fn, trigger)
            elif binding.is_output:
                outs[name] = args[name] = Out()
            else:
                args[name] = self._decode_input(fn, binding, trigger)
        return args, outs

    def _decode_trigger(self, fn: FunctionInfo, trigger: TriggerData) -> Any:
        if trigger.value is not None:
            return trigger.value
        annotation = fn.annotations.get(fn.trigger.name)
        if trigger.blob is not None and is_deferred(annotation):
            return self._decode_deferred(fn, fn.trigger, annotation, trigger.blob, trigger.metadata)
        if trigger.datum is None:
            raise BindingError(f"no data for trigger '{fn.trigger.name}' of '{fn.name}'")
        datum = trigger.datum()
        conv = converter(fn.trigger.type)
        if conv is None:
            return datum.python_value
        return conv.decode(datum, trigger_metadata=trigger.metadata)

    def _decode_deferred(
        self, fn: FunctionInfo, binding: Binding, annotation: Any, blob: BlobReference, metadata: Any
    ) -> Any:
        from azurefunctions.extensions import base

        conv = deferred_converter(binding.type)
        if conv is None:
            raise BindingError(f"no SDK-type converter is registered for '{binding.type}'")
        mbd = blob.model_binding_data()
        # The worker caches SDK clients by (parameter, type, content, function): same here.
        key = (binding.name, annotation, mbd.content, fn.name)
        with self._lock:
            if key in self._deferred:
                self._deferred.move_to_end(key)
                return self._deferred[key]
        value = conv.decode(base.Datum(mbd, "model_binding_data"), trigger_metadata=metadata, pytype=annotation)
        with self._lock:
            self._deferred[key] = value
            while len(self._deferred) > _DEFERRED_CACHE_SIZE:
                self._deferred.popitem(last=False)
        return value

    def _decode_input(self, fn: FunctionInfo, binding: Binding, trigger: TriggerData) -> Any:
        if binding.type != "blob":
            raise BindingError(f"input binding type '{binding.type}' is not supported by the local host")
        path = apply_binding_data(str(binding.config.get("path", "")), trigger.binding_data)
        container, _, blob_name = path.partition("/")
        connection = str(binding.config.get("connection") or "AzureWebJobsStorage")
        annotation = fn.annotations.get(binding.name)
        if is_deferred(annotation):
            ref = BlobReference(connection, container, blob_name)
            return self._decode_deferred(fn, binding, annotation, ref, trigger.metadata)
        from azure.core.exceptions import ResourceNotFoundError

        client = self._clients.blob(connection).get_blob_client(container, blob_name)
        try:
            content = client.download_blob().readall()
        except ResourceNotFoundError:
            return None
        if annotation is str:
            return content.decode("utf-8")
        if annotation is bytes:
            return content
        return func.blob.InputStream(data=content, name=path, uri=client.url, length=len(content))

    def write_outputs(
        self, fn: FunctionInfo, outs: Mapping[str, Out], returned: Any, trigger: TriggerData
    ) -> None:
        for binding in fn.outputs():
            if binding.type == "http":
                continue  # the HTTP route turns `$return` into the response
            if binding.name == "$return":
                value = returned
            else:
                value = outs[binding.name].get() if binding.name in outs else None
            if value is None:
                continue
            if binding.type == "queue":
                self._write_queue(binding, value, trigger)
            elif binding.type == "blob":
                self._write_blob(binding, value, trigger)
            else:
                log.warning(
                    "Output binding '%s' of type '%s' is not supported by the local host; value dropped",
                    binding.name, binding.type,
                )

    def _write_queue(self, binding: Binding, value: Any, trigger: TriggerData) -> None:
        queue_name = apply_binding_data(str(binding.config["queueName"]), trigger.binding_data)
        client = self._clients.queue(str(binding.config.get("connection") or "")).get_queue_client(queue_name)
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            client.create_queue()
        items = value if isinstance(value, list) else [value]
        for item in items:
            client.send_message(encode_queue_message(_as_bytes(item), self._queues.message_encoding))

    def _write_blob(self, binding: Binding, value: Any, trigger: TriggerData) -> None:
        path = apply_binding_data(str(binding.config["path"]), trigger.binding_data)
        container, _, blob_name = path.partition("/")
        client = self._clients.blob(str(binding.config.get("connection") or "")).get_blob_client(
            container, blob_name
        )
        client.upload_blob(_as_bytes(value), overwrite=True)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, func.QueueMessage):
        return value.get_body()
    if hasattr(value, "read"):
        return bytes(value.read())
    return json.dumps(value).encode("utf-8")


def encode_queue_message(body: bytes, encoding: str) -> str:
    """The queue message text the host writes for `body` (`messageEncoding` of host.json)."""
    if encoding == "base64":
        return base64.b64encode(body).decode("ascii")
    return body.decode("utf-8")


def decode_queue_message(content: str, encoding: str) -> bytes:
    """The body the function sees for a stored queue message; raises ValueError if not decodable."""
    if encoding == "base64":
        return base64.b64decode(content.encode("ascii"), validate=True)
    return content.encode("utf-8")


def apply_binding_data(template: str, data: Mapping[str, str]) -> str:
    """Fill `{name}` binding expressions from the trigger's binding data."""

    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        for candidate, value in data.items():
            if candidate.lower() == key.lower():
                return value
        raise BindingError(f"binding expression '{{{key}}}' has no value in the trigger data")

    return _TEMPLATE.sub(substitute, template)


def string_datum(value: str) -> Datum:
    return Datum(value, "string")


def json_datum(value: Any) -> Datum:
    return Datum(json.dumps(value, default=str), "json")

"""Local execution of submitted jobs: the emulator's "compute".

Each job runs on a bounded thread pool (the API stays responsive). A command job is one step; a
pipeline runs its nodes in graph order, each as a child job (Azure ML creates those too). A step:

1. downloads its code snapshot (code asset → blob folder in Azurite) into a work dir,
2. materialises inputs: `azureml:` data (`azureml:n:v`, ARM ids, `azureml://…datastores/…`) is
   downloaded from the datastore's Azurite container; model inputs (`custom_model`/`mlflow_model`:
   `name:version`, `azureml:name:version`, `azureml:name@latest`, ARM ids) get the model version's
   files, as Azure ML mounts them; `mode: direct` gets the datastore URI instead; a binding of a
   pipeline input the job does not set is absent (an optional input's `$[[…]]` vanishes); literals are
   substituted; `${{parent.inputs.x}}` and
   `${{parent.jobs.<node>.outputs.<o>}}` are bound,
3. runs `command` with `${{inputs.x}}`/`${{outputs.y}}` replaced, through bash, cwd = the code,
   with the project venv's `bin` first on PATH (so `python` is the emulator's interpreter),
4. uploads each output folder to `workspaceblobstore` at `azureml/{job}/{output}/` and sets the
   job's `outputs.*.uri`; stdout/stderr go to the job (`/_emulator/jobs/{name}/logs`) and to the
   artifact store blob `ExperimentRun/dcid.{job}/user_logs/std_log.txt`.

Step environment, besides the emulator's client settings (AZUREML_DEV_URL_MFE, REQUESTS_CA_BUNDLE,
IDENTITY_ENDPOINT/HEADER, AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP, AZUREML_WORKSPACE_NAME):
AZUREML_RUN_ID (the step's job), AZUREML_ROOT_RUN_ID (the pipeline), AZUREML_ARM_SUBSCRIPTION,
AZUREML_ARM_RESOURCEGROUP, AZUREML_ARM_WORKSPACE_NAME, and per output `AZUREML_OUTPUT_URI_<name>`
= its datastore URI (so a step can register what it writes by reference).

Lifecycle: Starting/NotStarted (command) or Preparing (pipeline) → Queued → Running → Finalizing →
Completed | Failed | Canceled; top-level jobs then emit RunCompleted or RunStatusChanged. Jobs
that were running when a previous emulator process died are marked Failed when this process
first touches jobs (any job route), not left Running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devstack.aml import components, job_shapes, lro, stats
from devstack.aml.storage import parse_azureml_uri

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient, ContainerClient

    from devstack.aml.emulator import Emulator
    from devstack.aml.store import Tx

log = logging.getLogger(__name__)

MAX_WORKERS = 2
LOG_LIMIT = 1_000_000  # characters of step output kept in the store
KILL_GRACE_SECONDS = 3.0
OUTPUT_DATASTORE = "workspaceblobstore"
ARTIFACT_CONTAINER = "azureml"  # workspaceartifactstore
RESTART_REASON = "The emulator restarted while this job was running; local runs do not survive a restart."

_PLACEHOLDER = re.compile(r"\$\{\{\s*(inputs|outputs)\.([A-Za-z0-9_.-]+)\s*\}\}")
_OPTIONAL = re.compile(r"\$\[\[(.*?)\]\]", re.DOTALL)
_PARENT_INPUT = re.compile(r"^\$\{\{\s*parent\.inputs\.([A-Za-z0-9_.-]+)\s*\}\}$")
_PARENT_OUTPUT = re.compile(r"^\$\{\{\s*parent\.outputs\.([A-Za-z0-9_.-]+)\s*\}\}$")
_NODE_OUTPUT = re.compile(r"^\$\{\{\s*parent\.jobs\.([A-Za-z0-9_.-]+)\.outputs\.([A-Za-z0-9_.-]+)\s*\}\}$")
_DATA_SHORT = re.compile(r"^azureml:(?P<name>[^/:@]+)(?::(?P<version>[^/:@]+)|@(?P<label>[^/:@]+))?$")
# azure-ai-ml sends a model input as `name:version` (it strips `azureml:`); `azureml:` forms are kept too.
_MODEL_SHORT = re.compile(r"^(?:azureml:)?(?P<name>[^/:@]+)(?::(?P<version>[^/:@]+)|@(?P<label>[^/:@]+))$")
MODEL_INPUTS = ("custom_model", "mlflow_model", "triton_model")

_runners: dict[int, Runner] = {}
_runners_lock = threading.Lock()


class Canceled(Exception):
    """The job was canceled while running."""


class StepFailed(Exception):
    """A step (or its preparation) failed; the message is the job's error."""


def runner_for(emu: Emulator) -> Runner:
    """The emulator's runner, created (and orphaned jobs recovered) on first use."""
    with _runners_lock:
        runner = _runners.get(id(emu))
        if runner is None or runner.emu is not emu:
            runner = Runner(emu)
            _runners[id(emu)] = runner
            runner.recover()
    return runner


@dataclass
class Value:
    """A resolved input: a literal, a local path (mounted/downloaded) or a datastore URI (direct)."""

    text: str
    uri: str | None = None  # datastore URI when the value is data
    local: Path | None = None  # where the data is on this machine


@dataclass
class Step:
    node: str | None  # pipeline node name; None for a command job
    job_name: str
    command: str
    code_ref: str | None
    inputs: dict[str, dict[str, Any]]  # input name -> binding (REST shape, snake or camel case)
    outputs: list[str]
    defaults: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    depends: set[str] = field(default_factory=set)


class Runner:
    """Bounded pool of job executions plus what cancel needs (events, running processes)."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.owner = f"{os.getpid()}:{emu.started_at}"
        self.pool = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="aml-job")
        self._cancel: dict[str, threading.Event] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self.work_root = emu.config.state_dir / "jobs"
        self._containers: set[str] = set()

    # --- API used by jobs.py ---

    def submit(self, name: str) -> None:
        if stats.held(self.emu):  # POST /_emulator/compute {"hold": true}: accepted, stays queued
            # No worker holds it, so no cancel event: a cancel finishes it at once (see `cancel`).
            log.info("job %s accepted and held (compute hold is on): not run", name)
            return
        with self._lock:
            self._cancel[name.lower()] = threading.Event()
        self.pool.submit(self._run, name)

    def cancel(self, name: str) -> None:
        with self._lock:
            event = self._cancel.get(name.lower())
        if event is not None:
            event.set()  # the worker kills the running step's process group within 0.1 s
        if event is None:  # not ours (e.g. submitted before a restart): finish it here
            with self.emu.store.write() as tx:
                row = tx.get(job_shapes.KIND, name)
                if row is not None and row.body["properties"]["status"] not in job_shapes.TERMINAL:
                    self._finish(tx, name, "Canceled", None)

    def set_status(self, tx: Tx, name: str, status: str) -> None:
        row = tx.get(job_shapes.KIND, name)
        if row is None:
            return
        body = {**row.body, "properties": {**row.body["properties"], "status": status}}
        tx.put(job_shapes.KIND, name, body, meta=row.meta)

    def recover(self) -> None:
        """Fail jobs left non-terminal by an emulator process that is gone."""
        with self.emu.store.write() as tx:
            for row in tx.rows_of_kind(job_shapes.KIND):
                if row.body["properties"]["status"] in job_shapes.TERMINAL or row.meta.get("owner") == self.owner:
                    continue
                owner_pid = int(str(row.meta.get("owner", "0:")).split(":", 1)[0] or 0)
                if owner_pid != os.getpid() and _alive(owner_pid):
                    continue  # another live emulator process shares this state and runs it
                log.warning("job %s was %s when its emulator stopped; marking it Failed",
                            row.name, row.body["properties"]["status"])
                self._finish(tx, row.body["name"], "Failed", RESTART_REASON)

    # --- execution ---

    def _run(self, name: str) -> None:
        event = self._cancel[name.lower()]
        try:
            self._execute(name, event)
        except Canceled:
            self._finalize(name, "Canceled", None)
        except StepFailed as exc:
            self._finalize(name, "Failed", str(exc))
        except Exception as exc:  # the emulator's own bug or an unreachable Azurite: the job fails, we log
            log.exception("job %s failed in the emulator", name)
            self._finalize(name, "Failed", f"Emulator error: {exc}")
        finally:
            with self._lock:
                self._cancel.pop(name.lower(), None)

    def _check(self, event: threading.Event) -> None:
        if event.is_set():
            raise Canceled()

    def _advance(self, name: str, status: str, event: threading.Event) -> None:
        self._check(event)
        with self.emu.store.write() as tx:
            row = tx.get(job_shapes.KIND, name)
            if row is None or row.body["properties"]["status"] in ("CancelRequested", *job_shapes.TERMINAL):
                raise Canceled()
            self.set_status(tx, name, status)

    def _execute(self, name: str, event: threading.Event) -> None:
        with self.emu.store.read() as tx:
            row = tx.get(job_shapes.KIND, name)
        if row is None:
            return
        req: dict[str, Any] = row.meta["request"]
        base_url = str(row.meta.get("base_url") or "")
        work = self.work_root / name
        work.mkdir(parents=True, exist_ok=True)
        if req["jobType"] == "Command":
            self._advance(name, "Preparing", event)
            steps = [Step(None, name, req["command"], req.get("codeId"), req.get("inputs") or {},
                          [o for o in row.body["properties"]["outputs"] if o != "default"],
                          env=dict(req.get("environmentVariables") or {}))]
        else:
            steps = self._pipeline_steps(name, req)
        self._advance(name, "Queued", event)
        self._advance(name, "Running", event)
        produced: dict[tuple[str, str], Value] = {}
        for step in _ordered(steps):
            self._check(event)
            self._run_step(name, step, req, base_url, work, produced, event)
        if req["jobType"] == "Pipeline":
            self._bind_pipeline_outputs(name, steps, produced)
        self._advance(name, "Finalizing", event)
        self._finalize(name, "Completed", None)

    def _pipeline_steps(self, name: str, req: dict[str, Any]) -> list[Step]:
        steps: list[Step] = []
        children: dict[str, str] = {}
        with self.emu.store.read() as tx:
            for node, spec in req["jobs"].items():
                if (spec.get("type") or "command") != "command":
                    raise StepFailed(f"Node {node}: only command nodes run locally, got {spec.get('type')!r}.")
                component_id = spec.get("componentId") or ""
                comp = components.find_version(tx, component_id)
                if comp is None:
                    raise StepFailed(f"Node {node}: component {component_id!r} was not found in the workspace.")
                cspec = comp.body["properties"]["componentSpec"]
                bindings = dict(spec.get("inputs") or {})
                depends = {m.group(1) for b in bindings.values() if isinstance(b, dict)
                           and (m := _NODE_OUTPUT.match(str(b.get("value") or b.get("uri") or "")))}
                children[node] = f"{name}_{node}_{uuid.uuid4().hex[:8]}"
                steps.append(Step(
                    node, children[node], str(cspec.get("command") or ""), cspec.get("code"), bindings,
                    list((cspec.get("outputs") or {}).keys()),
                    defaults={k: v.get("default") for k, v in (cspec.get("inputs") or {}).items()
                              if isinstance(v, dict) and v.get("default") is not None},
                    env={k: str(v) for k, v in (spec.get("environment_variables") or {}).items()},
                    depends=depends,
                ))
        with self.emu.store.write() as tx:
            parent = tx.get(job_shapes.KIND, name)
            assert parent is not None
            tx.put(job_shapes.KIND, name, parent.body, meta={**parent.meta, "children": children})
            for step in steps:
                self._create_child(tx, parent.body, parent.meta, step, req["jobs"][step.node])
        return steps

    def _create_child(self, tx: Tx, parent: dict[str, Any], meta: dict[str, Any], step: Step,
                      node: dict[str, Any]) -> None:
        props = parent["properties"]
        body = {
            "id": f"{self.emu.config.coords.arm_id}/jobs/{step.job_name}",
            "name": step.job_name,
            "type": "Microsoft.MachineLearningServices/workspaces/jobs",
            "properties": {
                **job_shapes.command_properties(self.emu, step.job_name, {
                    "jobType": "Command", "command": step.command or "-",
                    "environmentId": str(node.get("environment") or "azureml:local-step"),
                    "computeId": props.get("computeId"), "experimentName": props.get("experimentName"),
                    "displayName": node.get("display_name") or step.node, "codeId": step.code_ref,
                    "componentId": node.get("componentId"),
                }),
                "parentJobName": parent["name"],
                "status": "NotStarted",
            },
            "systemData": parent["systemData"],
        }
        body["properties"]["properties"]["azureml.nodeid"] = step.node or ""
        tx.put(job_shapes.KIND, step.job_name, body, meta={"parent": parent["name"], "node": step.node,
                                                     "owner": meta.get("owner")})

    # --- one step ---

    def _run_step(self, root: str, step: Step, req: dict[str, Any], base_url: str, work: Path,
                  produced: dict[tuple[str, str], Value], event: threading.Event) -> None:
        child = step.node is not None
        if child:
            self._set(step.job_name, "Running")
        step_dir = work / (step.node or "job")
        log_path = step_dir / "std_log.txt"
        step_dir.mkdir(parents=True, exist_ok=True)
        try:
            code_dir = self._code(step, step_dir)
            resolved = {k: self._resolve_input(step, k, b, req, produced, step_dir / "inputs" / k)
                        for k, b in step.inputs.items()}
            values = {k: v for k, v in resolved.items() if v is not None}  # None: an unset optional input
            for key, default in step.defaults.items():
                values.setdefault(key, Value(_literal(default)))
            out_values: dict[str, Value] = {}
            for out in step.outputs:
                local = step_dir / "outputs" / out
                local.mkdir(parents=True, exist_ok=True)
                out_values[out] = Value(str(local), _output_uri(step.job_name, out), local)
            command = render_command(step.command, values, out_values)
            env = self._step_env(root, step, base_url, out_values)
        except StepFailed as exc:
            log_path.write_text(f"Preparing step failed: {exc}\n")
            self._step_done(step, "Failed", log_path)
            raise
        log.info("job %s: running %s", root, command)
        with log_path.open("wb") as sink:
            proc = subprocess.Popen(["/bin/bash", "-c", command], cwd=code_dir, env=env, stdout=sink,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            with self._lock:
                self._procs[root.lower()] = proc
            try:
                while proc.poll() is None:
                    if event.wait(0.1):
                        _kill(proc)
            finally:
                with self._lock:
                    self._procs.pop(root.lower(), None)
        if event.is_set():
            self._step_done(step, "Canceled", log_path)
            raise Canceled()
        if proc.returncode != 0:
            self._step_done(step, "Failed", log_path)
            where = f"Step {step.node}" if child else "The command"
            raise StepFailed(f"{where} exited with code {proc.returncode}; see its std_log.txt "
                             f"(GET /_emulator/jobs/{root}/logs).")
        for out, value in out_values.items():
            assert value.local is not None and value.uri is not None
            self._upload_folder(value.local, value.uri)
            if step.node is not None:
                produced[(step.node, out)] = value
        self._step_done(step, "Completed", log_path, out_values)

    def _set(self, name: str, status: str) -> None:
        with self.emu.store.write() as tx:
            self.set_status(tx, name, status)

    def _step_done(self, step: Step, status: str, log_path: Path, outputs: dict[str, Value] | None = None) -> None:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        try:
            self._container(ARTIFACT_CONTAINER).upload_blob(
                f"ExperimentRun/dcid.{step.job_name}/user_logs/std_log.txt", text.encode(), overwrite=True)
        except Exception:  # logs are best effort; the step's status is what matters
            log.exception("uploading the log of %s failed", step.job_name)
        with self.emu.store.write() as tx:
            row = tx.get(job_shapes.KIND, step.job_name)
            if row is None:
                return
            props = dict(row.body["properties"])
            if outputs:
                props["outputs"] = {**props.get("outputs", {}), **{
                    k: job_shapes.output_body({"uri": v.uri, "jobOutputType": "uri_folder"})
                    for k, v in outputs.items()}}
            if step.node is not None:
                props["status"] = status
            tx.put(job_shapes.KIND, step.job_name, {**row.body, "properties": props},
                   meta={**row.meta, "log": text[-LOG_LIMIT:]})

    def _code(self, step: Step, step_dir: Path) -> Path:
        code_dir = step_dir / "code"
        code_dir.mkdir(parents=True, exist_ok=True)
        if not step.code_ref:
            return code_dir
        with self.emu.store.read() as tx:
            row = components.find_version(tx, step.code_ref)
        if row is None:
            raise StepFailed(f"Code {step.code_ref!r} was not found in the workspace.")
        container, prefix = components.code_location(self.emu, row.body["properties"]["codeUri"])
        self._download(container, prefix, code_dir)
        return code_dir

    def _resolve_input(self, step: Step, key: str, binding: Any, req: dict[str, Any],
                       produced: dict[tuple[str, str], Value], dest: Path) -> Value | None:
        """The input's value; None when it binds a pipeline input the job does not set (absent, as an unset
        optional input: `$[[…]]` drops it; a required one fails when the command is rendered)."""
        if not isinstance(binding, dict):
            return Value(_literal(binding))
        kind = binding.get("jobInputType") or binding.get("job_input_type") or "literal"
        mode = str(binding.get("mode") or "").lower()
        if kind == "literal":
            text = str(binding.get("value") if binding.get("value") is not None else "")
            if m := _NODE_OUTPUT.match(text):
                value = produced.get((m.group(1), m.group(2)))
                if value is None:
                    raise StepFailed(f"Input {key}: output {m.group(2)} of node {m.group(1)} was not produced.")
                return Value(value.uri or value.text, value.uri) if mode == "direct" else value
            if m := _PARENT_INPUT.match(text):
                parent = (req.get("inputs") or {}).get(m.group(1))
                if parent is None:
                    return None
                merged = {**parent, **({"mode": binding["mode"]} if binding.get("mode") else {})}
                return self._resolve_input(step, key, merged, {}, produced, dest)
            return Value(text)
        uri = binding.get("uri")
        if not isinstance(uri, str) or not uri:
            raise StepFailed(f"Input {key} ({kind}) has no uri.")
        data_uri = self._model_uri(uri) if kind in MODEL_INPUTS else self._data_uri(uri)
        if mode == "direct" or data_uri is None:
            return Value(data_uri or uri, data_uri)
        local = self._materialise(data_uri, kind, dest, key)
        return Value(str(local), data_uri, local)

    def _data_uri(self, ref: str) -> str | None:
        """A data reference as a datastore URI (None for URIs we cannot download, e.g. https)."""
        if parse_azureml_uri(ref) is not None:
            return ref
        with self.emu.store.read() as tx:
            parsed = components.parse_version_id(ref)
            row = None
            if parsed is not None:
                row = tx.get(f"{parsed[0]}/versions", parsed[2], parent=parsed[1])
            elif m := _DATA_SHORT.match(ref):
                if m["version"]:
                    row = tx.get("data/versions", m["version"], parent=m["name"])
                else:
                    active = [r for r in tx.rows("data/versions", m["name"])
                              if not r.body["properties"].get("isArchived")]
                    row = active[0] if active else None
            else:
                return None
        if row is None:
            what = "Model" if parsed is not None and parsed[0] == "models" else "Data"
            raise StepFailed(f"{what} {ref!r} was not found in the workspace.")
        uri = row.body["properties"].get("dataUri") or row.body["properties"].get("modelUri")
        return str(uri) if parse_azureml_uri(str(uri)) else None

    def _model_uri(self, ref: str) -> str | None:
        """A model input (`name:version`, `azureml:name:version`, `…@latest`, an ARM id) as the datastore
        URI of the model version's files; falls back to data lookup for a URI that names no model."""
        m = _MODEL_SHORT.match(ref)
        if m is None:
            return self._data_uri(ref)
        with self.emu.store.read() as tx:
            if m["version"]:
                row = tx.get("models/versions", m["version"], parent=m["name"])
            else:  # @latest (or another label): the newest active version, as `azureml:name` for data
                active = [r for r in tx.rows("models/versions", m["name"])
                          if not r.body["properties"].get("isArchived")]
                row = active[0] if active else None
        if row is None:
            raise StepFailed(f"Model {ref!r} was not found in the workspace.")
        uri = str(row.body["properties"].get("modelUri") or "")
        return uri if parse_azureml_uri(uri) else None

    def _materialise(self, uri: str, kind: str, dest: Path, key: str) -> Path:
        resolved = self.emu.datastores.resolve(uri)
        if resolved is None:
            raise StepFailed(f"Input {key}: datastore of {uri!r} is unknown.")
        location, path = resolved
        if kind == "uri_file" or (kind not in ("uri_folder", "mltable", "custom_model", "mlflow_model")
                                  and not path.endswith("/")):
            dest.mkdir(parents=True, exist_ok=True)
            target = dest / Path(path).name
            self._download_file(location.container, path, target)
            return target
        count = self._download(location.container, path.strip("/"), dest)
        if count == 0 and kind in MODEL_INPUTS and not path.endswith("/"):  # a model registered from one file
            dest.mkdir(parents=True, exist_ok=True)
            self._download_file(location.container, path, dest / Path(path).name)
            count = 1
        if count == 0:
            raise StepFailed(f"Input {key}: no files under {uri}.")
        return dest

    def _bind_pipeline_outputs(self, name: str, steps: list[Step], produced: dict[tuple[str, str], Value]) -> None:
        with self.emu.store.read() as tx:
            row = tx.get(job_shapes.KIND, name)
        assert row is not None
        req = row.meta["request"]
        uris: dict[str, str] = {}
        for step in steps:
            for out, binding in (req["jobs"][step.node].get("outputs") or {}).items():
                value = binding.get("value") if isinstance(binding, dict) else None
                m = _PARENT_OUTPUT.match(str(value or ""))
                if m and step.node is not None and (step.node, out) in produced:
                    uris[m.group(1)] = str(produced[(step.node, out)].uri)
        with self.emu.store.write() as tx:
            row = tx.get(job_shapes.KIND, name)
            assert row is not None
            props = dict(row.body["properties"])
            props["outputs"] = {k: {**v, "uri": uris.get(k, v.get("uri"))} for k, v in props["outputs"].items()}
            tx.put(job_shapes.KIND, name, {**row.body, "properties": props}, meta=row.meta)

    def _step_env(self, root: str, step: Step, base_url: str, outputs: dict[str, Value]) -> dict[str, str]:
        cfg = self.emu.config
        coords = cfg.coords
        ca = str((cfg.state_dir / "certs" / "ca.pem").resolve())
        env = dict(os.environ)
        env.update({
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "AZUREML_RUN_ID": step.job_name,
            "AZUREML_ROOT_RUN_ID": root,
            "AZUREML_ARM_SUBSCRIPTION": coords.subscription_id,
            "AZUREML_ARM_RESOURCEGROUP": coords.resource_group,
            "AZUREML_ARM_WORKSPACE_NAME": coords.workspace,
            "AZURE_SUBSCRIPTION_ID": coords.subscription_id,
            "AZURE_RESOURCE_GROUP": coords.resource_group,
            "AZUREML_WORKSPACE_NAME": coords.workspace,
            "REQUESTS_CA_BUNDLE": ca,
            "SSL_CERT_FILE": ca,
            "IDENTITY_HEADER": cfg.identity_header,
            "PYTHONUNBUFFERED": "1",
        })
        if base_url:
            env["AZUREML_DEV_URL_MFE"] = f"{base_url}/"
            env["IDENTITY_ENDPOINT"] = f"{base_url}/msi/token"
        for out, value in outputs.items():
            env[f"AZUREML_OUTPUT_URI_{out}"] = str(value.uri)
        env.update(step.env)
        return env

    # --- storage ---

    def _blobs(self) -> BlobServiceClient:
        from azure.storage.blob import BlobServiceClient

        account = self.emu.datastores.account
        return BlobServiceClient(account.blob_endpoint, credential={"account_name": account.account_name,
                                                                   "account_key": account.account_key})

    def _container(self, name: str) -> ContainerClient:
        """The container, created on first use (a fresh Azurite has none of the workspace's containers)."""
        from azure.core.exceptions import ResourceExistsError

        client = self._blobs().get_container_client(name)
        if name not in self._containers:
            with contextlib.suppress(ResourceExistsError):
                client.create_container()
            self._containers.add(name)
        return client

    def _download(self, container: str, prefix: str, dest: Path) -> int:
        client = self._blobs().get_container_client(container)
        start = f"{prefix}/" if prefix else ""
        count = 0
        for blob in client.list_blobs(name_starts_with=start or None):
            rel = blob.name[len(start):]
            if not rel or rel.endswith("/"):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(client.download_blob(blob.name).readall())
            count += 1
        return count

    def _download_file(self, container: str, path: str, target: Path) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            data = self._blobs().get_blob_client(container, path).download_blob().readall()
        except ResourceNotFoundError as exc:
            raise StepFailed(f"File {container}/{path} was not found in the datastore.") from exc
        target.write_bytes(data)

    def _upload_folder(self, local: Path, uri: str) -> None:
        resolved = self.emu.datastores.resolve(uri)
        assert resolved is not None
        location, prefix = resolved
        client = self._container(location.container)
        for file in sorted(p for p in local.rglob("*") if p.is_file()):
            name = f"{prefix.rstrip('/')}/{file.relative_to(local).as_posix()}"
            with file.open("rb") as handle:
                client.upload_blob(name, handle, overwrite=True)

    # --- terminal states ---

    def _finalize(self, name: str, status: str, error: str | None) -> None:
        with self.emu.store.write() as tx:
            self._finish(tx, name, status, error)

    def _finish(self, tx: Tx, name: str, status: str, error: str | None) -> None:
        """Terminal status for the job and its unfinished children, the cancel LRO, and the event."""
        row = tx.get(job_shapes.KIND, name)
        if row is None:
            return
        for child in (row.meta.get("children") or {}).values():
            crow = tx.get(job_shapes.KIND, child)
            if crow is not None and crow.body["properties"]["status"] not in job_shapes.TERMINAL:
                cstatus = "Failed" if status == "Failed" and error == RESTART_REASON else "Canceled"
                self.set_status(tx, child, cstatus)
        if row.meta.get("parent") is not None:
            self.set_status(tx, name, status)
            return
        props = {**row.body["properties"], "status": status}
        tx.put(job_shapes.KIND, name, {**row.body, "properties": props}, meta={**row.meta, "error": error})
        op = f"jc:{self.emu.config.coords.workspace_id}:{name}"
        if tx.get(lro.KIND, op) is not None:
            lro.finish_operation(tx, op)
        self._event(tx, props, name, status)

    def _event(self, tx: Tx, props: dict[str, Any], name: str, status: str) -> None:
        experiment = str(props.get("experimentName") or "Default")
        exp_id = job_shapes.experiment_id(self.emu, experiment)
        data: dict[str, Any] = {
            "experimentId": exp_id,
            "experimentName": experiment,
            "runId": name,
            "runType": "azureml.PipelineRun" if props.get("jobType") == "Pipeline" else "azureml.scriptrun",
            "runTags": props.get("tags") or {},
            "runProperties": props.get("properties") or {},
        }
        subject = f"experiments/{exp_id}/runs/{name}"
        if status == "Completed":
            self.emu.record_event(tx, "RunCompleted", subject, data)
        else:
            self.emu.record_event(tx, "RunStatusChanged", subject, {**data, "runStatus": status})


# --- pure helpers (unit-tested) ------------------------------------------------------------------

def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    return "" if value is None else str(value)


def _output_uri(job: str, output: str) -> str:
    return f"azureml://datastores/{OUTPUT_DATASTORE}/paths/azureml/{job}/{output}/"


def render_command(command: str, inputs: dict[str, Value], outputs: dict[str, Value]) -> str:
    """Substitute `${{inputs.x}}`/`${{outputs.y}}`; `$[[…]]` blocks vanish when an input inside is unset.

    Paths are shell-quoted (they go through bash); literals are inserted as written, as Azure ML does.
    """
    def known(name: str, key: str) -> bool:
        return key in (inputs if name == "inputs" else outputs)

    def optional(m: re.Match[str]) -> str:
        inner = m.group(1)
        return inner if all(known(n, k) for n, k in _PLACEHOLDER.findall(inner)) else ""

    def sub(m: re.Match[str]) -> str:
        table = inputs if m.group(1) == "inputs" else outputs
        value = table.get(m.group(2))
        if value is None:
            raise StepFailed(f"The command uses ${{{{{m.group(1)}.{m.group(2)}}}}} but it has no value.")
        return shlex.quote(value.text) if value.local is not None else value.text

    return _PLACEHOLDER.sub(sub, _OPTIONAL.sub(optional, command))


def _ordered(steps: list[Step]) -> list[Step]:
    """Topological order of pipeline nodes (stable: YAML order among ready nodes)."""
    by_node = {s.node: s for s in steps}
    done: set[str | None] = set()
    order: list[Step] = []
    pending = list(steps)
    while pending:
        ready = [s for s in pending if all(d in done for d in s.depends)]
        if not ready:
            missing = {d for s in pending for d in s.depends if d not in by_node}
            reason = f"unknown nodes {sorted(missing)}" if missing else "a cycle"
            raise StepFailed(f"The pipeline graph has {reason}.")
        for s in ready:
            order.append(s)
            done.add(s.node)
            pending.remove(s)
    return order


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the step's whole process group (bash and what it started)."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


"""One online deployment's scoring process: the Azure ML inference-server contract, run locally.

`python -m devstack.aml.scoring_server --code-dir D --script score.py --port-file F --parent-pid P`

As in Azure: `AZUREML_MODEL_DIR` names the folder holding the model files, the scoring script is
imported, `init()` is called once before the server listens, then every `POST /score` calls
`run(raw_data: str)` and answers its result as JSON; `GET /` is the liveness check. A failing
`init()` exits the process (the deployment fails provisioning; the traceback is in its logs).
The chosen port is written to `--port-file` once listening, so the emulator never races for ports.
The process exits when its parent (the emulator) is gone, so a killed emulator leaves no orphans.

`EVERGREEN_FAULT=init` makes start-up fail as if `init()` raised; `EVERGREEN_FAULT=smoke` makes
every scoring request answer 500 (a failing smoke test), for rollback tests.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger("azmlinfsrv")


class Scorer:
    """The imported scoring script; `run()` calls are serialised (maxConcurrentRequestsPerInstance=1)."""

    def __init__(self, module: ModuleType, fault: str) -> None:
        self.module = module
        self.fault = fault
        self._lock = threading.Lock()

    def score(self, raw: str) -> tuple[int, bytes]:
        if self.fault == "smoke":
            log.error("EVERGREEN_FAULT=smoke: answering 500 on purpose")
            return 500, json.dumps({"message": "EVERGREEN_FAULT=smoke: scoring fails on purpose"}).encode()
        try:
            with self._lock:
                result: Any = self.module.run(raw)
        except Exception as exc:  # the user's code failed: 500 like the inference server
            log.exception("run() raised")
            return 500, json.dumps({"message": f"An unexpected error occurred in scoring script: {exc!r}"}).encode()
        return 200, json.dumps(result).encode()


def _handler(scorer: Scorer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?")[0].rstrip("/")
            if path == "":
                self._send(200, b"Healthy", "text/plain")
            elif path == "/swagger.json":
                self._send(200, json.dumps({"swagger": "2.0", "info": {"title": "scoring", "version": "1.0"},
                                            "paths": {"/score": {"post": {}}}}).encode())
            else:
                self._send(404, b'{"message": "not found"}')

        def do_POST(self) -> None:
            if self.path.split("?")[0].rstrip("/") != "/score":
                self._send(404, b'{"message": "not found"}')
                return
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode("utf-8", errors="replace")
            status, body = scorer.score(raw)
            self._send(status, body)

        def log_message(self, format: str, *args: Any) -> None:
            log.info("%s - %s", self.address_string(), format % args)

    return Handler


def _watch_parent(parent_pid: int) -> None:
    """Exit when the emulator that started us is gone (reparented or pid vanished)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            log.info("parent %s is gone; exiting", parent_pid)
            os._exit(0)


def load_script(code_dir: Path, script: str) -> ModuleType:
    path = (code_dir / script).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"scoring script {script} not found in {code_dir}")
    sys.path.insert(0, str(path.parent))
    sys.path.insert(0, str(code_dir))
    spec = importlib.util.spec_from_file_location("score_module", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise AttributeError(f"scoring script {script} defines no run() function")
    return module


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devstack.aml.scoring_server")
    p.add_argument("--code-dir", type=Path, required=True)
    p.add_argument("--script", required=True)
    p.add_argument("--port-file", type=Path, required=True)
    p.add_argument("--parent-pid", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    if args.parent_pid:
        threading.Thread(target=_watch_parent, args=(args.parent_pid,), daemon=True).start()
    fault = os.environ.get("EVERGREEN_FAULT", "").strip().lower()
    log.info("AZUREML_MODEL_DIR=%s", os.environ.get("AZUREML_MODEL_DIR"))
    try:
        module = load_script(args.code_dir, args.script)
        if fault == "init":
            raise RuntimeError("EVERGREEN_FAULT=init: init() fails on purpose")
        init = getattr(module, "init", None)
        if callable(init):
            log.info("calling init()")
            init()
    except Exception:
        log.exception("User's init function failed")
        log.error("Encountered Exception. Exiting with code 1")  # what the inference server says
        return 1
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(Scorer(module, fault)))
    server.daemon_threads = True
    port = server.server_address[1]
    tmp = args.port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(args.port_file)
    log.info("scoring server listening on 127.0.0.1:%s", port)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever(poll_interval=0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

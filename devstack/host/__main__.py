"""`python -m devstack.host --app-dir . --port 7071 [--state-dir .devstack]`: the local Functions host."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from types import FrameType

from devstack.host.settings import HostConfig, SettingsError, load_local_settings

log = logging.getLogger("devstack.host")

LOG_FORMAT = "%(asctime)s [%(levelname)s] %(name)s%(invocation)s: %(message)s"
# Loggers that would drown function output at Information level (the real host hides them too).
_QUIET = {
    "azure.core.pipeline.policies.http_logging_policy": logging.WARNING,
    "azure.identity": logging.WARNING,
    "uvicorn.access": logging.WARNING,
}


# The Functions setting that pins a host id (it names the blob trigger's queue).
HOST_ID_SETTING = "AzureFunctionsWebHost__hostid"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devstack.host", description=__doc__)
    parser.add_argument("--app-dir", type=Path, default=Path("."), help="directory with function_app.py")
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--bind", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--state-dir", type=Path, default=Path(".devstack"), help="where the host may keep state")
    parser.add_argument("--threads", type=int, default=None,
                        help="worker threads (default: PYTHON_THREADPOOL_THREAD_COUNT or min(32, cpus+4))")
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="seconds to wait for running invocations on shutdown")
    return parser.parse_args(argv)


def configure_logging(config: HostConfig) -> None:
    from devstack.host.invoker import InvocationContextFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(InvocationContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level)
    for name, level in {**_QUIET, **config.category_levels}.items():
        logging.getLogger(name).setLevel(level)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    app_dir = args.app_dir.resolve()
    state_dir = args.state_dir.resolve()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] %(name)s: %(message)s")
    if not (app_dir / "function_app.py").is_file():
        log.error("No function_app.py in %s: pass the function app's directory with --app-dir", app_dir)
        return 1
    try:
        load_local_settings(app_dir)
        config = HostConfig.from_file(app_dir / "host.json")
    except SettingsError as exc:
        log.error("Invalid configuration: %s", exc)
        return 2
    configure_logging(config)
    state_dir.mkdir(parents=True, exist_ok=True)

    import uvicorn

    from devstack.host.bindings import Binder
    from devstack.host.connections import ClientCache
    from devstack.host.indexing import AppLoadError, index_functions, load_app
    from devstack.host.invoker import Invoker, default_thread_count
    from devstack.host.server import Host, build_app

    try:
        app = load_app(app_dir)
        functions = index_functions(app, os.environ)
    except AppLoadError:
        log.exception("Worker failed to index functions")
        return 1
    clients = ClientCache(os.environ)
    invoker = Invoker(
        Binder(clients, config.queues),
        app_dir=str(app_dir),
        threads=args.threads or default_thread_count(),
        function_timeout=config.function_timeout,
    )
    host = Host(
        app_dir=app_dir, config=config, functions=functions, invoker=invoker, clients=clients,
        drain_timeout=args.drain_timeout,
        host_id=os.environ.get(HOST_ID_SETTING) or app_dir.name.lower() or "evergreen-local",
    )
    class Server(uvicorn.Server):
        """Stops the listeners as soon as the signal arrives, not after HTTP connections drain."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            host.request_stop()
            super().handle_exit(sig, frame)

    server = Server(
        uvicorn.Config(
            build_app(host), host=args.bind, port=args.port, log_config=None, lifespan="on",
            timeout_graceful_shutdown=max(1, int(args.drain_timeout)),
        )
    )
    log.info("Functions host for %s listening on http://%s:%d", app_dir, args.bind, args.port)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

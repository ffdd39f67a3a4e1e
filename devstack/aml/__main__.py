"""`python -m devstack.aml --port 5443 --state-dir .devstack --storage-connection-string ...`"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from devstack.aml.config import (
    DEFAULT_IDENTITY_HEADER,
    DEFAULT_LOCATION,
    DEFAULT_RESOURCE_GROUP,
    DEFAULT_SUBSCRIPTION_ID,
    DEFAULT_WORKSPACE,
    AmlConfig,
    WorkspaceCoords,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m devstack.aml", description="Azure ML control-plane emulator (https)")
    p.add_argument("--port", type=int, default=5443)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--state-dir", type=Path, default=Path(".devstack"))
    p.add_argument("--storage-connection-string", required=True, help="Azurite connection string")
    p.add_argument("--eventgrid-url", default=None, help="local Event Grid base URL (events go to topic 'workspace')")
    p.add_argument("--eventgrid-key", default=None)
    p.add_argument("--subscription-id", default=DEFAULT_SUBSCRIPTION_ID)
    p.add_argument("--resource-group", default=DEFAULT_RESOURCE_GROUP)
    p.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    p.add_argument("--location", default=DEFAULT_LOCATION)
    p.add_argument("--identity-header", default=DEFAULT_IDENTITY_HEADER)
    p.add_argument("--page-size", type=int, default=100, help="items per list page before a nextLink")
    p.add_argument("--lro-retry-after", type=float, default=1.0, help="Retry-After seconds sent to LRO pollers")
    p.add_argument("--scoring-port", type=int, default=0, help="http port of online endpoints' scoring URIs (0: any)")
    p.add_argument("--provisioning-delay", type=float, default=1.0,
                   help="least seconds an endpoint/deployment LRO stays Updating")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from devstack.aml.app import create_app
    from devstack.certs import ensure_certs

    state_dir: Path = args.state_dir.resolve()
    certs = ensure_certs(state_dir / "certs")
    config = AmlConfig(
        state_dir=state_dir,
        storage_connection_string=args.storage_connection_string,
        coords=WorkspaceCoords(args.subscription_id, args.resource_group, args.workspace, args.location),
        eventgrid_url=args.eventgrid_url,
        eventgrid_key=args.eventgrid_key,
        identity_header=args.identity_header,
        page_size=args.page_size,
        lro_retry_after=args.lro_retry_after,
        scoring_port=args.scoring_port,
        provisioning_delay=args.provisioning_delay,
    )
    app = create_app(config)
    from devstack.aml import endpoints

    endpoints.start(app.state.emulator)  # re-serves deployments that existed before a restart
    try:
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            ssl_certfile=str(certs.server_cert_pem),
            ssl_keyfile=str(certs.server_key_pem),
            log_level=args.log_level.lower(),
            access_log=args.log_level.lower() == "debug",
            timeout_graceful_shutdown=2,  # idle keep-alive connections of SDK clients must not delay a stop
        )
    finally:
        endpoints.stop(app.state.emulator)


if __name__ == "__main__":
    main()

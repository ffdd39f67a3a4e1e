"""`python -m devstack.eventgrid serve|events|deliveries|deadletters|redeliver`.

`serve` runs the local Event Grid; the other commands read its inspection API and print a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_URL = os.environ.get("EVERGREEN_EVENTGRID_URL", "http://127.0.0.1:7172")


def _serve(args: argparse.Namespace) -> int:
    from devstack.eventgrid.app import Settings, serve
    from devstack.eventgrid.delivery import RetrySettings
    from devstack.eventgrid.faults import DeliveryFaults, FaultSpecError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    retry = RetrySettings(
        initial_delay=args.retry_initial_delay,
        max_delay=args.retry_max_delay,
        response_timeout=args.response_timeout,
        max_attempts_cap=args.max_attempts,
    )
    try:
        faults = DeliveryFaults.from_json(json.loads(args.faults)) if args.faults else DeliveryFaults()
    except (ValueError, FaultSpecError) as exc:
        print(f"--faults: {exc}", file=sys.stderr)
        return 2
    settings = Settings(
        state_dir=Path(args.state_dir).resolve(),
        host_url=args.host_url,
        subscriptions_path=Path(args.subscriptions),
        topic_key=args.topic_key,
        storage_connection_string=args.storage_connection_string or None,
        subscription_id=args.subscription_id,
        resource_group=args.resource_group,
        workspace_name=args.workspace_name,
        retry=retry,
        concurrency=args.concurrency,
        watch_interval=args.watch_interval,
        emit_existing=args.emit_existing,
        faults=faults,
    )
    serve(settings, args.port, args.bind)
    return 0


def _cell(value: Any, width: int) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, int]]) -> None:
    """Print `rows` with (header, key, max width) columns; keys may be dotted (`event.subject`)."""

    def get(row: dict[str, Any], key: str) -> Any:
        value: Any = row
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    cells = [[_cell(get(r, key), width) for _, key, width in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (h, _, _) in enumerate(columns)]
    print("  ".join(h.ljust(w) for (h, _, _), w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


def _inspect(args: argparse.Namespace) -> int:
    import httpx

    params: dict[str, Any] = {"limit": args.limit}
    if args.command == "events":
        params.update(topic=args.topic, type=args.type, subject=args.subject)
        columns = [
            ("seq", "seq", 8),
            ("topic", "topic", 10),
            ("type", "event.eventType", 40),
            ("subject", "event.subject", 70),
            ("received", "receivedAt", 27),
        ]
    elif args.command == "deliveries":
        params.update(status=args.status, subscription=args.subscription)
        columns = [
            ("id", "id", 8),
            ("status", "status", 12),
            ("subscription", "subscription", 24),
            ("function", "function", 24),
            ("attempts", "attempts", 8),
            ("last", "lastStatus", 5),
            ("outcome", "lastOutcome", 20),
            ("subject", "subject", 60),
        ]
    else:
        params.update(subscription=args.subscription)
        columns = [
            ("id", "id", 36),
            ("subscription", "subscription", 24),
            ("reason", "deadLetterReason", 28),
            ("attempts", "deliveryAttempts", 8),
            ("last", "lastHttpStatusCode", 5),
            ("detail", "detail", 40),
            ("blob", "blobStatus", 8),
            ("event", "eventId", 36),
        ]
    params = {k: v for k, v in params.items() if v is not None}
    try:
        response = httpx.get(f"{args.url.rstrip('/')}/{args.command}", params=params, timeout=10)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        print(f"cannot read {args.url}/{args.command}: {exc}", file=sys.stderr)
        return 1
    rows = response.json()
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        print_table(rows, columns)
    return 0


def _redeliver(args: argparse.Namespace) -> int:
    import httpx

    try:
        response = httpx.post(f"{args.url.rstrip('/')}/deadletters/{args.id}/redeliver", timeout=10)
    except httpx.HTTPError as exc:
        print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    print(response.text)
    return 0 if response.status_code == 202 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devstack.eventgrid", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the local Event Grid and storage watcher")
    s.add_argument("--port", type=int, default=7172)
    s.add_argument("--bind", default="127.0.0.1", help="interface to listen on (loopback by default)")
    s.add_argument("--state-dir", default=".devstack")
    s.add_argument("--host-url", default="http://127.0.0.1:7071", help="the Functions host to deliver to")
    s.add_argument("--subscriptions", default="infra/eventgrid-subscriptions.json")
    s.add_argument("--topic-key", default="evergreen-local-topic-key", help="expected aeg-sas-key")
    s.add_argument(
        "--storage-connection-string",
        default=os.environ.get("DATA_STORAGE", ""),
        help="Azurite account to watch and to write dead letters to (empty: no watcher)",
    )
    s.add_argument("--subscription-id", default="00000000-0000-0000-0000-000000000000")
    s.add_argument("--resource-group", default="evergreen-local")
    s.add_argument("--workspace-name", default=os.environ.get("AZUREML_WORKSPACE_NAME", "evergreen-ws"))
    s.add_argument(
        "--max-attempts", type=int, default=None, help="cap every subscription's maxDeliveryAttempts"
    )
    s.add_argument("--retry-initial-delay", type=float, default=0.5, help="first retry delay, seconds")
    s.add_argument("--retry-max-delay", type=float, default=30.0, help="longest retry delay, seconds")
    s.add_argument("--response-timeout", type=float, default=30.0, help="seconds to wait for the host")
    s.add_argument("--concurrency", type=int, default=16, help="deliveries in flight at once")
    s.add_argument("--watch-interval", type=float, default=0.5, help="seconds between blob scans")
    s.add_argument(
        "--emit-existing",
        action="store_true",
        help="on a fresh state dir, emit BlobCreated for blobs that already exist",
    )
    s.add_argument(
        "--faults",
        default=os.environ.get("EVERGREEN_EVENTGRID_FAULTS", ""),
        help='delivery faults as JSON, e.g. \'{"seed": 1, "duplicate": 0.2, "shuffleWindow": 2}\' '
        "(also PUT /faults at run time)",
    )
    s.set_defaults(func=_serve)

    for name, helptext in (
        ("events", "what was published"),
        ("deliveries", "delivery attempts"),
        ("deadletters", "dead-lettered events"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--url", default=DEFAULT_URL)
        p.add_argument("--limit", type=int, default=50)
        p.add_argument("--json", action="store_true", help="print the raw JSON instead of a table")
        if name == "events":
            p.add_argument("--topic")
            p.add_argument("--type")
            p.add_argument("--subject", help="subject prefix")
        else:
            p.add_argument("--subscription")
        if name == "deliveries":
            p.add_argument("--status", choices=["pending", "delivered", "deadlettered"])
        p.set_defaults(func=_inspect)

    r = sub.add_parser("redeliver", help="queue a dead-lettered event for delivery again")
    r.add_argument("id")
    r.add_argument("--url", default=DEFAULT_URL)
    r.set_defaults(func=_redeliver)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

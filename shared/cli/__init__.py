"""`python -m shared.cli <command> [--json]`: Evergreen's operator commands.

- `status`: open batches, retraining per dataset, active rollouts (phase, age), the last retention run.
- `audit [--model M] [--endpoint E] [--dataset D] [--event ID] [--kind K] [--days N] [--limit N] [--wide]`:
  what Evergreen decided, and why, from the audit log (long cells wrap; `--wide` keeps one line).
- `rollout abort <endpoint> [--reason …]`: roll back the active rollout through its own state machine.
- `rollout resume <endpoint>`: re-send the current step of the active rollout.
- `retrain <dataset>[:<version>]`: retrain through the same decision as a new data version.
- `retention [--dry-run [--as-of TIME]]`: plan retention, and apply it unless `--dry-run`.
- `reconcile`: one reconciler pass: every flow re-drives its stuck work (what the timer does).
- `redrive list|show <id>|replay <id>|replay --all [--source deadletter|poison]`: Event Grid dead letters and
  poison-queue messages (each replay audited).
- `lineage NAME:VERSION [--days N]`: the chain around a model or data version, from the blobs to the
  deployments and retention (`shared.cli.lineage`).
- `approve|reject MODEL:VERSION --reason … [--by …]`: a verdict on a candidate awaiting manual approval
  (`shared.cli.approve`).
- `validate [--policy FILE] [--json]`: check the policy and the pipelines it names (`shared.config.validate`).

Reads the Function App's settings from the environment, completed by `local.settings.json` (its
`Values`) as `func start` does; each command asks only for the settings it needs. Exit codes: 0 done,
1 something failed, 2 a usage error, a refusal (e.g. nothing to abort) or invalid settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from shared.cli.approve import add_approval_parsers, run_approval
from shared.cli.lineage import add_lineage_parser, run_lineage
from shared.cli.operate import (
    NEEDS,
    add_operator_parsers,
    render_audit,
    run_audit,
    run_retrain,
    run_rollout,
    run_status,
)
from shared.cli.tables import table
from shared.domain.audit import AuditRecord
from shared.errors import ConfigurationError
from shared.services.redrive import SOURCES, RedriveItem, Redriver, ReplayOutcome

log = logging.getLogger(__name__)


def render(records: Sequence[AuditRecord]) -> str:
    """The audit records as a table (see `shared.cli.operate.render_audit`)."""
    return render_audit(records)


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The CLI's parser, and its `retention` subparser (whose own errors name it)."""
    parser = argparse.ArgumentParser(prog="python -m shared.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    add_operator_parsers(sub)
    retention = sub.add_parser("retention", help="run retention: plan, then apply (or only show, with --dry-run)")
    retention.add_argument("--dry-run", action="store_true", help="print the plan as a table and change nothing")
    retention.add_argument("--json", action="store_true", help="print the plan and outcomes as JSON")
    retention.add_argument("--as-of", type=_aware_time, default=None,
                           help="with --dry-run: measure ages against this ISO time instead of now "
                                "(to preview a future run)")
    reconcile = sub.add_parser("reconcile", help="one reconciler pass: every flow re-drives its stuck work")
    reconcile.add_argument("--json", action="store_true", help="print the run id and summary as JSON")
    add_redrive_parser(sub)
    add_approval_parsers(sub)
    add_lineage_parser(sub)
    sub.add_parser("validate", help="check evergreen.yaml and the pipelines it names (usable in CI); "
                   "`validate --help` lists its options")
    return parser, retention


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, complete the environment from local.settings.json, run one command; its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["validate"]:  # its options are the validator's own: passed on untouched
        return run_validate(argv[1:])
    parser, retention = build_parser()
    args = parser.parse_args(argv)
    if args.command == "retention" and args.as_of is not None and not args.dry_run:
        # a preview of the future must never apply it now
        retention.error("--as-of previews a future run and requires --dry-run; "
                        "to apply, run without --as-of (ages are then measured against now)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        use_local_settings()
        return dispatch(args)
    except ConfigurationError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command. Raises ConfigurationError if a setting it needs is missing or invalid."""
    if args.command == "retention":
        return run_retention(dry_run=args.dry_run, as_json=args.json, as_of=args.as_of)
    if args.command == "reconcile":
        return run_reconcile(as_json=args.json)
    by_args: dict[str, Callable[[argparse.Namespace], int]] = {
        "redrive": run_redrive, "lineage": run_lineage, "approve": run_approval, "reject": run_approval}
    if args.command in by_args:  # the commands that build what they need from `args` alone
        return by_args[args.command](args)
    if args.command == "audit":
        from shared.composition import build_audit_reader

        return run_audit(args, build_audit_reader(load_settings_for("audit")))
    operator = build_operator(args.command)
    if args.command == "status":
        return run_status(args, operator)
    if args.command == "rollout":
        return run_rollout(args, operator)
    return run_retrain(args, operator)


def use_local_settings() -> None:
    """Complete the environment with `local.settings.json`'s Values (what it lacks), as `func start` does.

    Raises ConfigurationError if the file exists but is not a local.settings.json.
    """
    from shared.config.settings import environment_with_local_settings

    os.environ.update(environment_with_local_settings())


def load_settings_for(command: str) -> Any:
    """The settings, requiring only those `command` needs. Raises ConfigurationError naming each problem."""
    from shared.config.settings import load_settings

    return load_settings(only=NEEDS[command])


def build_operator(command: str) -> Any:
    """The Operator through the composition root, with Azure ML only for `retrain`."""
    from shared.composition import build_operator as build
    from shared.config.policy import load_policy

    settings = load_settings_for(command)
    policy = load_policy(settings.policy_path, landing_container=settings.landing_container)
    return build(settings, policy, workspace=command == "retrain")


def run_validate(argv: list[str]) -> int:
    """`validate`: the validator with the real readers: azure-ai-ml's `load_job`, and the workspace when reachable.

    The workspace settings come from the environment or `local.settings.json`; without them the
    compute and datastore checks are skipped with a note (usable in CI with no Azure at all).
    """
    import importlib

    from shared.composition import build_validation_readers
    from shared.config.settings import environment_with_local_settings

    validate = importlib.import_module("shared.config.validate")  # by name: loaded only for this command

    pipelines, workspace = build_validation_readers(environment_with_local_settings())
    return int(validate.main(argv, pipelines=pipelines, workspace=workspace))


def _aware_time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def run_retention(*, dry_run: bool, as_json: bool, as_of: datetime | None) -> int:
    """Run retention with the Function App's own settings, policy and clients; exit 1 if an action failed."""
    from shared.composition import build_retention
    from shared.config.policy import load_policy
    from shared.services.retention import RetentionIncomplete

    settings = load_settings_for("retention")
    runner = build_retention(settings, load_policy(settings.policy_path, landing_container=settings.landing_container))
    run_id = f"retention-cli-{uuid.uuid4().hex[:12]}"
    try:
        summary = runner.run(run_id=run_id, dry_run=dry_run, now=as_of)
        code = 0
    except RetentionIncomplete as exc:
        summary, code = exc.summary, 1
    sys.stdout.write(summary.to_json() + "\n" if as_json else summary.render())
    return code


def run_reconcile(*, as_json: bool = False) -> int:
    """One reconciler pass through the composition root; prints the summary line; exit 1 if a flow failed."""
    from shared.composition import get_reconciler
    from shared.services.reconcile import ReconcileIncomplete

    run_id = f"reconcile-cli-{uuid.uuid4().hex[:12]}"
    try:
        summary = get_reconciler().run(run_id=run_id)
        code = 0
    except ReconcileIncomplete as exc:
        summary, code = exc.summary, 1
    _write({"run_id": run_id, "detail": summary.detail, "ok": code == 0} if as_json else f"{run_id}: {summary.detail}")
    return code


def add_redrive_parser(sub: Any) -> None:
    redrive = sub.add_parser("redrive", help="list, show and replay Event Grid dead letters and poison messages")
    actions = redrive.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every dead letter and poison message (up to 32 per poison queue)")
    show = actions.add_parser("show", help="one item, with its content")
    show.add_argument("id", help="an id as `redrive list` prints it")
    replay = actions.add_parser("replay", help="replay one item, or --all; each replay is audited (redrive.replayed)")
    replay.add_argument("id", nargs="?", help="an id as `redrive list` prints it")
    replay.add_argument("--all", action="store_true", help="replay every item (of --source)")
    for p in (listing, replay):
        p.add_argument("--source", choices=SOURCES, default=None, help="only dead letters, or only poison messages")
    for p in (listing, show, replay):
        p.add_argument("--json", action="store_true", help="print JSON")


def run_redrive(args: argparse.Namespace, redriver: Redriver | None = None) -> int:
    """`redrive list|show|replay`; exit 1 if an item was not found or a replay did not succeed, 2 for a bad id."""
    if redriver is None:
        from shared.composition import build_redriver, get_services

        redriver = build_redriver(get_services())
    try:
        if args.action == "list":
            items = redriver.list_items(args.source)
            _write([i.to_json() for i in items] if args.json else render_items(items))
            return 0
        if args.action == "show":
            item = redriver.show(args.id)
            if item is None:
                sys.stderr.write(f"no item {args.id}\n")
                return 1
            _write(item.to_json() if args.json else render_item(item))
            return 0
        if args.all == bool(args.id):
            sys.stderr.write("replay takes one id, or --all\n")
            return 2
        outcomes = redriver.replay_all(args.source) if args.all else [redriver.replay(args.id)]
    except ValueError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    _write([o.to_json() for o in outcomes] if args.json else render_outcomes(outcomes))
    return 0 if all(o.action == "replayed" for o in outcomes) else 1


def _write(value: object) -> None:
    sys.stdout.write((value if isinstance(value, str) else json.dumps(value, indent=2)) + "\n")


def render_items(items: Sequence[RedriveItem]) -> str:
    if not items:
        return "nothing to redrive: no dead letter, no poison message"
    rows = [("id", "what", "reason", "since (UTC)")]
    rows += [(i.id, i.what, i.reason, i.at.strftime("%Y-%m-%d %H:%M:%S") if i.at else "-") for i in items]
    return table(rows, width=90)


def render_item(item: RedriveItem) -> str:
    when = item.at.isoformat() if item.at else "-"
    return f"id:     {item.id}\nwhat:   {item.what}\nreason: {item.reason}\nsince:  {when}\n\n{item.content}"


def render_outcomes(outcomes: Sequence[ReplayOutcome]) -> str:
    if not outcomes:
        return "nothing to replay"
    return table([("id", "outcome", "detail"), *((o.id, o.action, o.detail) for o in outcomes)], width=90)

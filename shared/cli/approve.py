"""`approve|reject <model>:<version> --reason … [--by …]`: a person's verdict on a candidate awaiting approval.

The work is `shared.services.approval.Approvals.decide` (built by the composition root): the verdict is
recorded on the model (tags `evergreen.approval`, `evergreen.approved_by`, `evergreen.approved_at`) and
in the audit log, and an approved candidate continues into the rollout path. Exit codes: 0 done (also
when the same verdict was already recorded), 2 refused (not waiting, another verdict is final, expired)
or a malformed reference.
"""

from __future__ import annotations

import argparse
import logging
import uuid
from typing import Any

from shared.cli.operate import POLICY, STORAGE, WORKSPACE, operator_name, refuse, write
from shared.domain.vocabulary import ApprovalState

log = logging.getLogger(__name__)

NEEDS = STORAGE | POLICY | WORKSPACE
"""The settings `approve` and `reject` require: the ledger and audit log, the policy, the model registry."""


def add_approval_parsers(sub: Any) -> None:
    """`approve` and `reject` on the CLI's subparsers."""
    for command, verb in (("approve", "approve"), ("reject", "reject")):
        p = sub.add_parser(command, help=f"{verb} a candidate awaiting manual approval (promotion.approval: manual)")
        p.add_argument("model", metavar="MODEL:VERSION", help="e.g. churn-model:7")
        p.add_argument("--reason", required=True, help="why (written to the audit log and the model's tags)")
        p.add_argument("--by", default="", help="who (default: $EVERGREEN_OPERATOR, else the login name)")
        p.add_argument("--json", action="store_true", help="print JSON")


def parse_model(text: str) -> tuple[str, str]:
    """`name:version` → (name, version). Raises ValueError for anything else."""
    name, sep, version = text.partition(":")
    if not name or not sep or not version or ":" in version:
        raise ValueError(f"{text!r}: expected MODEL:VERSION, e.g. churn-model:7")
    return name, version


def run_approval(args: argparse.Namespace, approvals: Any = None) -> int:
    """Run `approve` or `reject`; `approvals` is built from the settings unless given (tests pass their own)."""
    from shared.services.approval import ApprovalRefused

    verdict = ApprovalState.APPROVED if args.command == "approve" else ApprovalState.REJECTED
    try:
        name, version = parse_model(args.model)
    except ValueError as exc:
        return refuse(exc, args.json)
    if approvals is None:
        approvals = build_approvals()
    request = f"operator-{uuid.uuid4().hex[:12]}"
    try:
        outcome = approvals.decide(name, version, verdict, by=operator_name(args.by), reason=args.reason,
                                   event_id=request)
    except ApprovalRefused as exc:
        return refuse(exc, args.json)
    doc = {"action": outcome.action.value, "detail": outcome.detail, "model": outcome.model, "request": request}
    write(doc if args.json else f"{outcome.action.value}: {outcome.detail}")
    return 0


def build_approvals() -> Any:
    """The Approvals service through the composition root. Raises ConfigurationError naming each missing setting."""
    from shared.composition import build_approvals as build
    from shared.config.policy import load_policy
    from shared.config.settings import load_settings

    settings = load_settings(only=NEEDS)
    policy = load_policy(settings.policy_path, landing_container=settings.landing_container)
    return build(settings, policy)

"""Manual approval (`promotion.approval: manual`) on the in-memory adapters: hold, approve, reject, expire, studio tag.

The Promoter is wired as in production with an `Approvals` at its seam and the promotion retry queue
(the path an approval takes back into the rollout). The platform's queue loop of `test_promotion.Rig`
delivers rollout steps; `deliver_retries` delivers what approvals sent on the retry queue.
"""

from __future__ import annotations

import pytest

from shared.adapters.memory.queues import MemoryDelayedQueue
from shared.domain.approval import ApprovalRecord
from shared.domain.rollout import CandidateRetry
from shared.domain.vocabulary import ApprovalState, Phase, PromotionAction, Tag
from shared.errors import TransientError
from shared.services.approval import HANDOVER_GRACE, ApprovalRefused, Approvals
from shared.services.ledger import Ledger
from shared.services.promotion import Promoter
from tests.services.test_promotion import ENDPOINT, MODEL, REPO, Rig, policy_for


class ApprovalRig(Rig):
    """The promotion rig with manual approval: approvals at the seam, and the retry queue they send on."""

    def __init__(self, **promotion: object) -> None:
        self.retries: MemoryDelayedQueue[CandidateRetry] | None = None
        super().__init__(policy=policy_for(**{"approval": "manual", "approval_expires_after": "2h", **promotion}))

    def approvals(self) -> Approvals:
        assert self.retries is not None
        return Approvals(policy=self.policy, ledger=Ledger(self.table, clock=self.clock), endpoints=self.endpoints,
                         retries=self.retries, audit=self.audit, clock=self.clock)

    def instance(self) -> Promoter:
        if self.retries is None:
            self.retries = MemoryDelayedQueue(clock=self.clock)
        return Promoter(policy=self.policy, endpoints=self.endpoints, ledger=Ledger(self.table, clock=self.clock),
                        ticks=self.queue, audit=self.audit, app_root=REPO, clock=self.clock, retries=self.retries,
                        approvals=self.approvals())

    def deliver_retries(self) -> list[PromotionAction]:
        """Deliver every due retry message (what the `evergreen-promotion-retry` queue trigger does)."""
        assert self.retries is not None
        actions = []
        while (message := self.retries.receive()) is not None:
            actions.append(self.promoter.on_candidate_retry(message.item).action)
            self.retries.complete(message)
        return actions

    def approve(self, version: str, *, by: str = "ana", verdict: ApprovalState = ApprovalState.APPROVED) -> object:
        return self.approvals().decide(MODEL, version, verdict, by=by, reason="looks good", event_id="cli-1")

    def kinds(self) -> list[str]:
        return [r.kind for r in self.audit.query(days=2, now=self.clock())]


@pytest.fixture
def arig() -> ApprovalRig:
    return ApprovalRig()


def test_a_winner_waits_for_approval_then_rolls_out_once_even_if_approved_twice(arig: ApprovalRig) -> None:
    v1 = arig.register("0.80")
    held = arig.deliver(v1)
    assert held.action is PromotionAction.AWAITING_APPROVAL
    assert arig.ledger.get_rollout(ENDPOINT) is None and len(arig.queue) == 0  # nothing deployed
    assert arig.endpoints.get_model(MODEL, "1").tags[Tag.APPROVAL.value] == "pending"  # type: ignore[union-attr]
    assert "promotion.awaiting_approval" in arig.kinds()
    assert arig.deliver(v1).action is PromotionAction.AWAITING_APPROVAL  # a redelivery still waits

    first = arig.approve("1")
    second = arig.approve("1", by="bob")
    assert first.action is PromotionAction.APPROVED  # type: ignore[attr-defined]
    assert second.action is PromotionAction.DUPLICATE  # type: ignore[attr-defined]
    # the second message finds the rollout before its first step: it re-sends that step (seq-keyed, harmless)
    assert arig.deliver_retries()[0] is PromotionAction.STARTED
    record = arig.run()
    assert record.phase is Phase.SUCCEEDED and arig.serving_model() == f"{MODEL}:1"
    tags = arig.endpoints.get_model(MODEL, "1").tags  # type: ignore[union-attr]
    assert tags[Tag.APPROVAL.value] == "approved" and tags[Tag.APPROVED_BY.value] == "ana"
    assert tags[Tag.APPROVED_AT.value].startswith("2026-12-01")
    assert arig.kinds().count("promotion.approved") == 1 and arig.kinds().count("promotion.started") == 1
    assert arig.approve("1").action is PromotionAction.DUPLICATE  # type: ignore[attr-defined]
    arig.deliver_retries()
    assert len(arig.queue) == 0  # a third approval after the rollout started nothing new


def test_a_rejected_candidate_is_never_deployed(arig: ApprovalRig) -> None:
    v1 = arig.register("0.80")
    arig.deliver(v1)
    outcome = arig.approve("1", verdict=ApprovalState.REJECTED)
    assert outcome.action is PromotionAction.REJECTED  # type: ignore[attr-defined]
    assert arig.deliver_retries() == []
    assert arig.deliver(v1).action is PromotionAction.REJECTED  # a redelivery is refused too
    assert arig.ledger.get_rollout(ENDPOINT) is None
    assert arig.endpoints.get_model(MODEL, "1").tags[Tag.APPROVAL.value] == "rejected"  # type: ignore[union-attr]
    with pytest.raises(ApprovalRefused, match="already rejected"):
        arig.approve("1")


def test_a_candidate_nobody_decides_expires_and_is_never_deployed(arig: ApprovalRig) -> None:
    v1 = arig.register("0.80")
    arig.deliver(v1)
    arig.clock.advance(3600)
    assert arig.approvals().reconcile(arig.clock()) == []  # within the 2 h: still waiting
    arig.clock.advance(3601)
    expired = arig.approvals().reconcile(arig.clock())
    assert [o.action for o in expired] == [PromotionAction.EXPIRED]
    assert arig.endpoints.get_model(MODEL, "1").tags[Tag.APPROVAL.value] == "expired"  # type: ignore[union-attr]
    assert "promotion.expired" in arig.kinds()
    with pytest.raises(ApprovalRefused, match="expired"):
        arig.approve("1")
    assert arig.deliver(v1).action is PromotionAction.EXPIRED
    assert arig.ledger.get_rollout(ENDPOINT) is None
    assert arig.approvals().reconcile(arig.clock()) == []  # no longer pending: the index is empty


def test_a_late_approval_expires_the_candidate_instead(arig: ApprovalRig) -> None:
    arig.deliver(arig.register("0.80"))
    arig.clock.advance(2 * 3600 + 1)
    with pytest.raises(ApprovalRefused, match="too late"):
        arig.approve("1")
    assert arig.deliver_retries() == [] and arig.ledger.get_rollout(ENDPOINT) is None


def test_a_verdict_set_as_a_tag_in_the_studio_is_applied_by_the_reconciler(arig: ApprovalRig) -> None:
    v1 = arig.register("0.80")
    arig.deliver(v1)
    arig.endpoints.set_model_tags(MODEL, "1", {Tag.APPROVAL.value: " Approved ", Tag.APPROVED_BY.value: "carol"})
    assert arig.deliver(v1).action is PromotionAction.AWAITING_APPROVAL  # a redelivery does not overwrite the verdict
    outcomes = arig.approvals().reconcile(arig.clock())
    assert [o.action for o in outcomes] == [PromotionAction.APPROVED]
    assert arig.approvals().reconcile(arig.clock()) == []  # applied once
    assert arig.deliver_retries() == [PromotionAction.STARTED]
    assert arig.run().phase is Phase.SUCCEEDED
    tags = arig.endpoints.get_model(MODEL, "1").tags  # type: ignore[union-attr]
    assert tags[Tag.APPROVAL.value] == "approved" and tags[Tag.APPROVED_BY.value] == "carol"


def test_an_approval_while_a_rollout_runs_is_queued_behind_it(arig: ApprovalRig) -> None:
    arig.deliver(arig.register("0.80"))
    arig.approve("1")
    assert arig.deliver_retries() == [PromotionAction.STARTED]
    assert arig.run().phase is Phase.SUCCEEDED
    v2 = arig.register("0.90")
    assert arig.deliver(v2).action is PromotionAction.AWAITING_APPROVAL
    v3 = arig.register("0.95")
    assert arig.deliver(v3).action is PromotionAction.AWAITING_APPROVAL
    arig.approve("3")
    assert arig.deliver_retries() == [PromotionAction.STARTED]
    record = arig.ledger.get_rollout(ENDPOINT)
    assert record is not None and record.active and record.candidate == f"{MODEL}:3"
    arig.approve("2")  # approved while v3 rolls out: queued behind it, decided against v3 when it ends
    assert arig.deliver_retries() == [PromotionAction.QUEUED]
    final = arig.run()
    assert arig.serving_model() == f"{MODEL}:3"  # v2 (0.90) does not beat v3 (0.95) when its turn comes
    assert final.candidate == f"{MODEL}:3"
    assert "promotion.queued" in arig.kinds()


def test_automatic_approval_starts_at_once_and_writes_no_approval() -> None:
    rig = ApprovalRig(approval="auto")
    assert rig.deliver(rig.register("0.80")).action is PromotionAction.STARTED
    assert Tag.APPROVAL.value not in rig.endpoints.get_model(MODEL, "1").tags  # type: ignore[union-attr]


def test_approving_a_model_that_is_not_waiting_is_refused(arig: ApprovalRig) -> None:
    arig.register("0.80")
    with pytest.raises(ApprovalRefused, match="not awaiting approval"):
        arig.approve("1")
    with pytest.raises(ApprovalRefused, match="no promotion policy"):
        arig.approvals().decide("other", "1", ApprovalState.APPROVED, by="x", reason="", event_id="e")


def test_with_a_comparison_job_the_approval_resumes_from_the_finished_comparison() -> None:
    """`promotion.evaluation` + manual approval: the comparison's RunCompleted holds the winner; the approval's
    retry finds the comparison job already ended (same name, nothing submitted again) and starts the rollout."""
    from tests.services.test_promotion_comparison import EVALUATION, CompareRig, comparison

    class Both(CompareRig):
        def instance(self) -> Promoter:
            self.retries = getattr(self, "retries", None) or MemoryDelayedQueue(clock=self.clock)
            self.approvals = Approvals(policy=self.policy, ledger=Ledger(self.table, clock=self.clock),
                                       endpoints=self.endpoints, retries=self.retries, audit=self.audit,
                                       clock=self.clock)
            return Promoter(policy=self.policy, endpoints=self.endpoints, ledger=self.ledger, ticks=self.queue,
                            audit=self.audit, app_root=REPO, clock=self.clock, jobs=self.workspace,
                            data=self.workspace, retries=self.retries, approvals=self.approvals)

    rig = Both()
    rig.policy = policy_for(evaluation=EVALUATION, approval="manual")
    rig.promoter = rig.instance()
    first = rig.register("0.70")
    assert rig.deliver(first).action is PromotionAction.COMPARING
    held = rig.finish(rig.job_of(f"{MODEL}:1"), comparison(f"{MODEL}:1", None))
    assert held.action is PromotionAction.AWAITING_APPROVAL, held.detail
    assert rig.approvals.decide(MODEL, "1", ApprovalState.APPROVED, by="ana", reason="ok",
                                event_id="cli").action is PromotionAction.APPROVED
    message = rig.retries.receive()
    assert message is not None
    assert rig.promoter.on_candidate_retry(message.item).action is PromotionAction.STARTED
    assert rig.run().phase is Phase.SUCCEEDED and rig.serving_model() == f"{MODEL}:1"
    assert len(rig.workspace.jobs()) == 1  # the approval submitted no second comparison


def test_the_cli_approves_and_rejects_with_exit_codes(arig: ApprovalRig, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from shared.cli import build_parser
    from shared.cli.approve import run_approval

    parser, _ = build_parser()
    arig.deliver(arig.register("0.80"))
    args = parser.parse_args(["approve", f"{MODEL}:1", "--reason", "reviewed the slices", "--by", "ana", "--json"])
    assert run_approval(args, arig.approvals()) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["action"] == "approved" and doc["model"] == f"{MODEL}:1" and doc["request"].startswith("operator-")
    assert arig.endpoints.get_model(MODEL, "1").tags[Tag.APPROVED_BY.value] == "ana"  # type: ignore[union-attr]
    reject = parser.parse_args(["reject", f"{MODEL}:1", "--reason", "changed my mind"])
    assert run_approval(reject, arig.approvals()) == 2  # approved is final
    assert "already approved" in capsys.readouterr().err
    assert run_approval(parser.parse_args(["approve", "no-version", "--reason", "x"]), arig.approvals()) == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["approve", f"{MODEL}:1"])  # --reason is required


def test_an_approved_candidate_whose_rollout_never_started_is_dropped_audited_after_the_expiry(
        arig: ApprovalRig) -> None:
    arig.deliver(arig.register("0.80"))
    arig.approve("1")
    assert arig.retries is not None
    lost = arig.retries.receive()
    assert lost is not None
    arig.retries.complete(lost)
    arig.clock.advance(3 * 3600)  # past the policy's 2 h: the gate has had its chance
    assert arig.approvals().reconcile(arig.clock()) == []
    (dropped,) = [r for r in arig.audit.query(days=2, now=arig.clock()) if r.kind == "promotion.redriven"]
    assert "given up" in dropped.reason and dropped.assets["model"] == f"{MODEL}:1"
    assert arig.ledger.open_approvals() == []


def test_a_lost_hand_over_after_an_approval_is_re_sent_by_the_reconciler(arig: ApprovalRig) -> None:
    arig.deliver(arig.register("0.80"))
    arig.approve("1")
    assert arig.retries is not None
    lost = arig.retries.receive()
    assert lost is not None
    arig.retries.complete(lost)  # the message is gone: nothing would start the rollout
    assert arig.approvals().reconcile(arig.clock()) == []  # too early to call it lost
    arig.clock.advance(HANDOVER_GRACE.total_seconds())
    redriven = arig.approvals().reconcile(arig.clock())
    assert [o.action for o in redriven] == [PromotionAction.APPROVED]
    assert arig.kinds().count("promotion.redriven") == 1  # every re-drive is audited (issue 11)
    assert arig.deliver_retries() == [PromotionAction.STARTED]
    assert arig.approvals().reconcile(arig.clock()) == []  # its rollout started: it left the index
    assert arig.ledger.open_approvals() == []
    assert arig.run().phase is Phase.SUCCEEDED


class _WatchedRig(ApprovalRig):
    """Approvals whose ledger notes, at each close, whether the endpoint's rollout row already carries the
    candidate (retention protects it through the one or the other); `fail_closes` makes that many closes crash."""

    def __init__(self) -> None:
        self.closes: list[bool] = []
        self.fail_closes = 0
        super().__init__()

    def approvals(self) -> Approvals:
        assert self.retries is not None
        rig = self

        class Watched(Ledger):
            def close_approval(self, record: ApprovalRecord) -> None:
                rollout = self.get_rollout(record.endpoint)
                rig.closes.append(rollout is not None and rollout.candidate == record.model)
                if rig.fail_closes:
                    rig.fail_closes -= 1
                    raise TransientError("the table is throttling")
                super().close_approval(record)

        return Approvals(policy=self.policy, ledger=Watched(self.table, clock=self.clock), endpoints=self.endpoints,
                         retries=self.retries, audit=self.audit, clock=self.clock)


def test_an_approved_candidate_leaves_the_open_work_only_once_its_rollout_row_exists() -> None:
    """No moment where neither the approval nor the rollout row protects the candidate from retention."""
    rig = _WatchedRig()
    rig.deliver(rig.register("0.80"))
    rig.approve("1")
    assert rig.deliver_retries() == [PromotionAction.STARTED]
    assert rig.closes == [True]
    assert rig.ledger.open_approvals() == []


def test_a_crash_after_the_rollout_row_leaves_the_approval_open_until_the_reconciler_closes_it() -> None:
    rig = _WatchedRig()
    rig.deliver(rig.register("0.80"))
    rig.approve("1")
    rig.fail_closes = 1
    with pytest.raises(TransientError):
        rig.deliver_retries()
    rollout = rig.ledger.get_rollout(ENDPOINT)
    assert rollout is not None and rollout.candidate == f"{MODEL}:1"
    assert [r.model for r in rig.ledger.open_approvals()] == [f"{MODEL}:1"]  # still protected by both
    assert rig.approvals().reconcile(rig.clock()) == []
    assert rig.ledger.open_approvals() == [] and rig.closes == [True, True]

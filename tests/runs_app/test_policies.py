"""The rules of a run, one by one: each allowed and refused, with the page's reason and the
API's code (runs_app.policies). The services and pages that use them are tested through
their own doors in test_approvals.py and views/."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User

from hxo_site import codes
from hxo_site.errors import ServiceError
from runs_app import policies, services
from runs_app.models import (
    Approval,
    Partition,
    PartitionState,
    Plan,
    Run,
    RunMode,
    RunStage,
    RunState,
)
from runs_app.models.engine import PARTITION_REDO, RUN_ACTIVE, RUN_FINISHED, RUN_REPLAYABLE
from runs_app.policies import ALLOWED, Decision, ReplayScope
from tests.runs_app.testkinds import stage

pytestmark = pytest.mark.django_db

SOME = ReplayScope(partitions=True, non_idempotent=False)


@pytest.fixture
def plan(test_kinds, tmp_path: Path, operator) -> Plan:
    return services.plan_create(
        actor=operator, document={"name": "p", "stages": [stage("a", tmp_path, items=2)]}
    )


@pytest.fixture
def make_run(plan: Plan, operator) -> Any:
    """A run row in a given state, as the engine would leave it (nothing executes)."""

    def make(state: str, *, mode: str = RunMode.DRY_RUN, **fields: Any) -> Run:
        fields.setdefault("requested_by", operator)
        return Run.objects.create(
            plan=plan,
            revision=plan.latest_revision,
            mode=mode,
            state=state,
            digest="d" * 64,
            **fields,
        )

    return make


def approve(run: Run, user: User, *, hours_ago: float = 0) -> Approval:
    approval = Approval.objects.create(
        run=run, user=user, decision=Approval.Decision.APPROVE, digest=run.digest
    )
    if hours_ago:
        Approval.objects.filter(pk=approval.pk).update(
            created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours_ago)
        )
    return approval


def refused(decision: Decision, code: str, status: int = 409) -> Decision:
    assert not decision.allowed
    assert (decision.code, decision.status) == (code, status)
    assert decision.message
    return decision


# --- Decision --------------------------------------------------------------------------------


def test_a_refusal_raises_as_the_service_error_it_carries() -> None:
    decision = Decision(
        allowed=False,
        reason="Not now.",
        code=codes.INVALID_STATE,
        message="run 1 is done",
        errors=[{"path": "run", "code": codes.INVALID_STATE, "message": "done"}],
        extra={"run": 1},
    )

    with pytest.raises(ServiceError) as raised:
        decision.enforce()

    error = raised.value
    assert (error.message, error.code, error.status) == ("run 1 is done", "invalid_state", 409)
    assert error.errors == decision.errors and error.extra == {"run": 1}
    assert Decision.refused(error, "Not now.") == decision
    assert decision.shown and not Decision(allowed=False, code="x", message="y").shown
    ALLOWED.enforce()  # allowed: nothing raised
    assert ALLOWED.shown


def test_a_capability_is_held_or_refused_with_403(operator, viewer) -> None:
    assert policies.capability(operator, "abort").allowed

    decision = refused(policies.capability(viewer, "abort"), codes.PERMISSION_DENIED, 403)

    assert decision.message == "this needs the hxo:abort capability"
    assert decision.reason == ""


# --- Abort -----------------------------------------------------------------------------------


@pytest.mark.parametrize("state", sorted(RUN_ACTIVE))
def test_an_operator_may_abort_a_run_that_has_not_finished(make_run, operator, state) -> None:
    assert policies.may_abort(operator, make_run(state)).allowed


@pytest.mark.parametrize("state", sorted(RUN_FINISHED))
def test_a_finished_run_cannot_be_aborted(make_run, operator, state) -> None:
    run = make_run(state)

    decision = refused(policies.may_abort(operator, run), codes.INVALID_STATE)

    assert decision.message == f"run {run.pk} is {state}: only a running run can be aborted"
    assert not decision.shown  # the page simply offers no Abort


def test_aborting_needs_the_abort_capability(make_run, viewer) -> None:
    decision = policies.may_abort(viewer, make_run(RunState.RUNNING))

    refused(decision, codes.PERMISSION_DENIED, 403)
    assert not decision.shown


# --- Replay ----------------------------------------------------------------------------------


@pytest.mark.parametrize("state", sorted(RUN_REPLAYABLE))
def test_an_operator_may_replay_a_finished_run_with_partitions_to_redo(
    make_run, operator, state
) -> None:
    assert policies.may_replay(operator, make_run(state), SOME).allowed


@pytest.mark.parametrize("state", sorted(set(RunState) - RUN_REPLAYABLE))
def test_only_a_finished_run_can_be_replayed(make_run, operator, state) -> None:
    run = make_run(state)

    decision = refused(policies.may_replay(operator, run, SOME), codes.INVALID_STATE)

    assert decision.message == f"run {run.pk} is {state}: only a finished run can be replayed"
    assert not decision.shown


def test_replaying_needs_the_replay_capability(make_run, viewer) -> None:
    decision = policies.may_replay(viewer, make_run(RunState.FAILED), SOME)

    refused(decision, codes.PERMISSION_DENIED, 403)
    assert not decision.shown


def test_a_run_without_failed_or_cancelled_partitions_has_nothing_to_replay(
    make_run, operator
) -> None:
    nothing = ReplayScope(partitions=False, non_idempotent=False)

    decision = policies.may_replay(operator, make_run(RunState.SUCCEEDED), nothing)

    refused(decision, codes.NOTHING_TO_REPLAY)
    assert not decision.shown


@pytest.mark.parametrize(
    ("child_state", "code"),
    [
        (RunState.RUNNING, codes.REPLAY_IN_PROGRESS),
        (RunState.FAILED, codes.ALREADY_REPLAYED),
    ],
)
def test_a_run_is_replayed_once_and_the_page_points_at_its_replay(
    make_run, operator, child_state, code
) -> None:
    run = make_run(RunState.FAILED)
    child = make_run(child_state, parent=run)

    decision = refused(policies.may_replay(operator, run, SOME), code)

    assert decision.extra == {"run": child.pk}
    assert decision.errors == [{"path": "run", "code": code, "message": f"run {child.pk}"}]
    assert decision.reason == (
        f"This run was replayed by run #{child.pk}: replay that run instead."
    )
    assert policies.replay_conflict(child) == ALLOWED


def test_a_non_idempotent_replay_needs_force_merge(make_run, operator, admiral) -> None:
    run = make_run(RunState.FAILED)
    scope = ReplayScope(partitions=True, non_idempotent=True)

    decision = refused(policies.may_replay(operator, run, scope), codes.FORCE_MERGE_REQUIRED, 403)

    assert (
        decision.message == "the replay holds non-idempotent partitions: it needs hxo:force-merge"
    )
    assert "non-idempotent" in decision.reason and "hxo:force-merge" in decision.reason
    assert policies.may_replay(admiral, run, scope).allowed


def test_a_replay_is_checked_like_a_new_run_and_needs_submit(make_run) -> None:
    group = Group.objects.create(name="replayer")
    group.permissions.add(
        *Permission.objects.filter(
            codename__in=["replay", "view"], content_type__app_label="blueprints_app"
        )
    )
    user = User.objects.create_user("rita")
    user.groups.add(group)

    decision = policies.may_replay(user, make_run(RunState.FAILED), SOME)

    refused(decision, codes.PERMISSION_DENIED, 403)
    assert decision.message == "this needs the hxo:submit capability"
    assert decision.reason == (
        "A replay is checked like a new run: it needs the hxo:submit capability."
    )


def test_the_replay_scope_is_the_same_from_the_counters_and_from_the_partitions(
    make_run,
) -> None:
    run = make_run(RunState.FAILED)
    rows = [("a", PartitionState.SUCCEEDED, False), ("b", PartitionState.FAILED, True)]
    for position, (sid, state, non_idempotent) in enumerate(rows):
        rs = RunStage.objects.create(
            run=run,
            stage_id=sid,
            position=position,
            kind="k",
            partitioner="p",
            executor="e",
            slo_ms=1000,
            non_idempotent=non_idempotent,
            total=1,
            succeeded=int(state == PartitionState.SUCCEEDED),
            failed=int(state == PartitionState.FAILED),
        )
        Partition.objects.create(
            run=run,
            stage=rs,
            index=0,
            state=state,
            inputs={},
            fingerprints={},
            non_idempotent=non_idempotent,
        )
    redo = Partition.objects.filter(run=run, state__in=PARTITION_REDO)

    from_stages = ReplayScope.of_stages(run.run_stages.all())

    assert from_stages == ReplayScope.of_partitions(redo) == ReplayScope(True, True)
    assert ReplayScope.of_stages(run.run_stages.filter(stage_id="a")) == ReplayScope(False, False)
    assert ReplayScope.of_partitions(redo.none()) == ReplayScope(False, False)


# --- Apply a dry-run ---------------------------------------------------------------------------


def test_an_approved_dry_run_with_a_live_approval_may_be_applied(make_run, approver) -> None:
    dry = make_run(RunState.APPROVED)
    approve(dry, approver)

    assert policies.may_apply(dry, approval_required=True).allowed
    assert policies.may_apply(dry, approval_required=True, latest_number=1).allowed


def test_a_dry_run_awaiting_approval_cannot_be_applied_yet(make_run, approver) -> None:
    dry = make_run(RunState.AWAITING_APPROVAL, required_approvals=2)
    approve(dry, approver)

    decision = refused(policies.may_apply(dry, approval_required=True), codes.DRY_RUN_NOT_APPROVED)

    assert decision.message == f"dry-run {dry.pk} is awaiting_approval, not approved"
    assert decision.reason == (
        "Apply becomes possible once the dry-run is approved (1 of 2 approvals)."
    )


def test_a_rejected_dry_run_cannot_be_applied(make_run) -> None:
    decision = policies.may_apply(make_run(RunState.REJECTED), approval_required=True)

    refused(decision, codes.DRY_RUN_NOT_APPROVED)
    assert decision.reason == "This dry-run was rejected: change the plan and dry-run again."


def test_a_succeeded_dry_run_is_enough_only_where_no_kind_requires_one(make_run) -> None:
    dry = make_run(RunState.SUCCEEDED)

    decision = policies.may_apply(dry, approval_required=True)

    refused(decision, codes.DRY_RUN_NOT_APPROVED)
    assert not decision.shown
    assert policies.may_apply(dry, approval_required=False).allowed


@pytest.mark.parametrize("state", [RunState.FAILED, RunState.RUNNING])
def test_a_dry_run_that_did_not_succeed_cannot_be_applied(make_run, state) -> None:
    decision = policies.may_apply(make_run(state), approval_required=False)

    refused(decision, codes.DRY_RUN_NOT_APPROVED)
    assert not decision.shown


def test_a_dry_run_of_an_older_revision_is_stale_on_the_page(make_run, approver) -> None:
    dry = make_run(RunState.APPROVED)
    approve(dry, approver)

    decision = refused(
        policies.may_apply(dry, approval_required=True, latest_number=2), codes.STALE_PLAN
    )

    assert decision.reason == (
        "The plan changed since this dry-run (it is at revision 2, this dry-run is of "
        "revision 1): start a new dry-run."
    )


def test_an_approval_covers_one_apply(make_run, approver) -> None:
    dry = make_run(RunState.APPROVED)
    approve(dry, approver)
    apply = make_run(RunState.SUCCEEDED, mode=RunMode.APPLY, dry_run=dry, consumed_dry_run=dry)

    decision = refused(policies.may_apply(dry, approval_required=True), codes.APPROVAL_USED)

    assert decision.extra == {"run": apply.pk}
    assert decision.reason.startswith(
        f"The approval of dry-run {dry.pk} was already used by apply run {apply.pk}"
    )
    assert decision.reason.endswith(".")
    # Used is used, required or not.
    refused(policies.may_apply(dry, approval_required=False), codes.APPROVAL_USED)


def test_an_expired_approval_does_not_let_an_apply_through(make_run, approver, settings) -> None:
    settings.HXO_APPROVAL_TTL_HOURS = 2
    dry = make_run(RunState.APPROVED)
    approve(dry, approver, hours_ago=3)

    decision = refused(policies.may_apply(dry, approval_required=True), codes.APPROVAL_EXPIRED)

    assert decision.reason.startswith(f"The approval of dry-run {dry.pk} expired")
    assert decision.errors == [
        {"path": "dry_run", "code": codes.APPROVAL_EXPIRED, "message": "expired"}
    ]


# --- Decide on a dry-run -----------------------------------------------------------------------


def test_an_approver_may_decide_on_someone_elses_dry_run(make_run, approver) -> None:
    dry = make_run(RunState.AWAITING_APPROVAL)

    assert policies.four_eyes(approver, dry).allowed
    assert policies.may_decide(approver, dry, mine=None).allowed


def test_the_requester_of_a_dry_run_may_not_decide_on_it(make_run, admiral, settings) -> None:
    dry = make_run(RunState.AWAITING_APPROVAL, requested_by=admiral)

    decision = refused(
        policies.may_decide(admiral, dry, mine=None), codes.SELF_APPROVAL_FORBIDDEN, 403
    )

    assert decision.message == "four-eyes rule: you requested this dry-run"
    assert decision.reason == (
        "You cannot decide on this dry-run: you requested this dry-run (four-eyes rule)."
    )
    assert decision.shown  # the form is shown, disabled, with the reason
    assert policies.four_eyes(admiral, dry) == decision
    settings.HXO_ALLOW_SELF_APPROVAL = True
    assert policies.may_decide(admiral, dry, mine=None).allowed


def test_the_author_of_the_plan_may_not_decide_on_its_dry_run(make_run, operator) -> None:
    dry = make_run(RunState.AWAITING_APPROVAL)
    operator.groups.add(Group.objects.get(name="approver"))
    operator = User.objects.get(pk=operator.pk)  # capabilities are cached per instance

    decision = policies.may_decide(operator, dry, mine=None)

    refused(decision, codes.SELF_APPROVAL_FORBIDDEN, 403)
    assert "revision 1: you wrote this revision of the plan" in decision.reason


def test_deciding_needs_the_approve_capability(make_run, viewer) -> None:
    decision = policies.may_decide(viewer, make_run(RunState.AWAITING_APPROVAL), mine=None)

    refused(decision, codes.PERMISSION_DENIED, 403)
    assert not decision.shown


@pytest.mark.parametrize("state", sorted(set(RunState) - {RunState.AWAITING_APPROVAL}))
def test_only_a_dry_run_awaiting_approval_is_decided_on(make_run, approver, state) -> None:
    dry = make_run(state)

    decision = refused(policies.may_decide(approver, dry, mine=None), codes.INVALID_STATE)

    assert decision.message == f"run {dry.pk} is {state}, not awaiting approval"
    assert not decision.shown


def test_a_decision_once_made_is_made(make_run, approver) -> None:
    dry = make_run(RunState.AWAITING_APPROVAL)
    mine = approve(dry, approver)

    page = refused(policies.may_decide(approver, dry, mine=mine), codes.ALREADY_DECIDED)
    other = policies.decision_open(dry, mine=mine, decision=Approval.Decision.REJECT)

    assert not page.shown  # the page shows the decision made instead
    assert refused(other, codes.ALREADY_DECIDED).message == (
        f"you already decided on run {dry.pk}: approve"
    )
    # The same decision again counts once: the service returns the run unchanged.
    assert policies.decision_open(dry, mine=mine, decision=Approval.Decision.APPROVE).allowed


def test_the_dry_runs_to_decide_are_split_by_the_four_eyes_rule(
    make_run, approver, admiral
) -> None:
    theirs = make_run(RunState.AWAITING_APPROVAL, requested_by=admiral)
    make_run(RunState.APPROVED)  # decided already: in neither list

    assert policies.runs_to_decide(approver) == ([(theirs, None)], [])
    mine, others = policies.runs_to_decide(admiral)
    assert mine == [] and others == [(theirs, "you requested this dry-run")]

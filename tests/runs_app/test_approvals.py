"""One approval, one apply; every author is a second pair of eyes (issue 11 §4).

Each reproduction of the issue is a test here, through the services and the API, counting
effects (apply runs, executions logged by the test executor, approvals) rather than only
status codes. The concurrent tests run threads against the real database (SQLite file or
PostgreSQL with DATABASE_URL), each thread on its own connection.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User

from blueprints_app.models import JobKind
from blueprints_app.services import job_kind_save
from hxo_site import codes
from hxo_site.capabilities import has_capability
from hxo_site.errors import ServiceError
from hxo_site.models import AuditEvent
from runs_app import policies, services
from runs_app.models import Approval, Plan, Run, RunMode, RunState
from tests.helpers import drain
from tests.runs_app.test_concurrency import in_threads
from tests.runs_app.testkinds import TEST_KIND, TEST_KIND_NOAPPROVAL, effects, stage

pytestmark = pytest.mark.django_db(transaction=True)


def applies(plan: Plan) -> int:
    return Run.objects.filter(plan=plan, mode=RunMode.APPLY).count()


def user_in(username: str, role: str) -> User:
    user = User.objects.create_user(username=username, password="x")
    user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def approved(test_kinds, tmp_path: Path, operator, approver) -> tuple[Plan, Run]:
    """A plan of 3 partitions and its approved dry-run."""
    plan = services.plan_create(
        actor=operator, document={"name": "p", "stages": [stage("a", tmp_path, items=3)]}
    )
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    services.run_approve(run=dry, actor=approver)
    dry.refresh_from_db()
    assert dry.state == RunState.APPROVED
    return plan, dry


# --- An apply consumes its approval ---------------------------------------------------------


def test_a_second_apply_of_one_approval_is_409_approval_used_naming_the_first(
    approved, tmp_path, operator, api_client_for
) -> None:
    plan, dry = approved
    client = api_client_for(operator)
    url = f"/api/v1/plans/{plan.pk}/apply/"
    first = client.post(url, {"dry_run": dry.pk}, format="json")
    assert first.status_code == 202
    drain(Run.objects.get(pk=first.json()["id"]))

    second = client.post(url, {"dry_run": dry.pk}, format="json")

    assert second.status_code == 409
    body = second.json()
    assert body["code"] == codes.APPROVAL_USED
    assert body["run"] == first.json()["id"]
    assert body["errors"] == [
        {"path": "dry_run", "code": codes.APPROVAL_USED, "message": f"used by run {body['run']}"}
    ]
    assert str(first.json()["id"]) in body["detail"]
    assert applies(plan) == 1
    assert sorted(effects(tmp_path, "a")) == [0, 1, 2]  # executed once, not twice
    assert AuditEvent.objects.filter(action=f"refused.{codes.APPROVAL_USED}").count() == 1


def test_eight_concurrent_applies_of_one_approval_make_exactly_one_run(
    approved, tmp_path, operator
) -> None:
    plan, dry = approved
    results = in_threads(
        [lambda: services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk)] * 8
    )

    runs = [r for r in results if isinstance(r, Run)]
    refusals = [r for r in results if isinstance(r, ServiceError)]
    assert len(runs) == 1, results
    assert [r.code for r in refusals] == [codes.APPROVAL_USED] * 7, results
    assert {r.extra["run"] for r in refusals} == {runs[0].pk}
    assert applies(plan) == 1
    drain(runs[0])
    assert sorted(effects(tmp_path, "a")) == [0, 1, 2]


def test_a_replay_of_the_apply_is_not_a_second_use(
    test_kinds, tmp_path, operator, approver, settings
):
    settings.HXO_MAX_ATTEMPTS = 1
    plan = services.plan_create(
        actor=operator,
        document={"name": "p", "stages": [stage("a", tmp_path, items=3, fail={"1": 1})]},
    )
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    services.run_approve(run=dry, actor=approver)
    run = drain(services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk))
    assert run.state == RunState.FAILED

    child = drain(services.run_replay(run=run, actor=operator))

    assert child.state == RunState.SUCCEEDED and child.dry_run_id == dry.pk
    assert sorted(effects(tmp_path, "a")) == [0, 1, 2]
    with pytest.raises(ServiceError) as used:
        services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk)
    assert used.value.code == codes.APPROVAL_USED and used.value.extra["run"] == run.pk


def test_an_expired_approval_is_refused_with_409(approved, tmp_path, operator, settings) -> None:
    plan, dry = approved
    settings.HXO_APPROVAL_TTL_HOURS = 2
    Approval.objects.filter(run=dry).update(
        created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    )

    with pytest.raises(ServiceError) as expired:
        services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk)

    assert expired.value.code == codes.APPROVAL_EXPIRED and expired.value.status == 409
    assert applies(plan) == 0 and effects(tmp_path, "a") == []


@pytest.mark.parametrize("how", ["used", "expired"])
def test_the_pages_do_not_offer_an_apply_the_service_refuses(
    approved, operator, settings, how
) -> None:
    from runs_app.views.plans import apply_option
    from runs_app.views.runs import run_actions

    plan, dry = approved
    assert run_actions(operator, dry).apply
    if how == "used":
        drain(services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk))
        expected = "already used by apply run"
    else:
        Approval.objects.filter(run=dry).update(
            created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=73)
        )
        expected = "expired"

    actions = run_actions(operator, Run.objects.get(pk=dry.pk))
    option = apply_option(
        plan, plan.latest_revision, {TEST_KIND: JobKind.objects.get(kind=TEST_KIND)}
    )

    assert not actions.apply and expected in actions.apply_blocked
    assert not option.available and expected in option.reason


# --- Four-eyes over every author ------------------------------------------------------------


def test_an_author_of_an_earlier_revision_cannot_approve_through_the_api(
    test_kinds, tmp_path, admiral, operator, api_client_for
) -> None:
    """The issue's reproduction: an admiral writes the plan, an operator edits only its
    description and starts the dry-run; the admiral's approval would put their own SQL
    through unreviewed."""
    admin, op = api_client_for(admiral), api_client_for(operator)
    body = {"name": "p", "stages": [stage("a", tmp_path, items=2)]}
    plan = admin.post("/api/v1/plans/", body, format="json").json()
    edit = op.patch(f"/api/v1/plans/{plan['id']}/", {"description": "x"}, format="json")
    assert edit.status_code == 200
    dry = op.post(f"/api/v1/plans/{plan['id']}/dry-run/").json()
    drain(Run.objects.get(pk=dry["id"]))

    response = admin.post(f"/api/v1/runs/{dry['id']}/approve/", {}, format="json")

    assert response.status_code == 403
    assert response.json()["code"] == codes.SELF_APPROVAL_FORBIDDEN
    assert "revision 1" in response.json()["detail"]
    assert Approval.objects.count() == 0
    assert Run.objects.get(pk=dry["id"]).state == RunState.AWAITING_APPROVAL
    applied = op.post(f"/api/v1/plans/{plan['id']}/apply/", {"dry_run": dry["id"]}, format="json")
    assert applied.status_code == 409 and applied.json()["code"] == codes.DRY_RUN_NOT_APPROVED
    assert effects(tmp_path, "a") == []


@pytest.fixture
def cast4(db) -> dict[str, User]:
    """Four users who all hold every capability: only the four-eyes rule tells them apart."""
    return {name: user_in(name, "admiral") for name in ("first", "editor", "requester", "fresh")}


def four_eyes_plan(
    tmp_path: Path, cast4: dict[str, User], *, applied_first: bool, edit: str = "description"
) -> Run:
    """`first` writes revision 1 (applied under `fresh`'s review, when `applied_first`),
    `editor` writes revision 2 (its description, or a second stage: `edit`), `requester`
    starts its dry-run."""
    plan = services.plan_create(
        actor=cast4["first"], document={"name": "p", "stages": [stage("a", tmp_path, items=2)]}
    )
    if applied_first:
        dry = drain(services.run_start_dry_run(plan=plan, actor=cast4["requester"]))
        services.run_approve(run=dry, actor=cast4["fresh"])
        run = services.run_apply(plan=plan, actor=cast4["requester"], dry_run_id=dry.pk)
        assert drain(run).state == RunState.SUCCEEDED
    if edit == "description":
        document: dict[str, Any] = {"description": "edited"}
    else:
        document = {"stages": [stage("a", tmp_path, items=2), stage("b", tmp_path, items=1)]}
    services.plan_update(plan=plan, actor=cast4["editor"], document=document, partial=True)
    return drain(services.run_start_dry_run(plan=plan, actor=cast4["requester"]))


# Rows changed in round 2 (finding 5): an editor of the description alone shaped nothing that
# runs, so they are a second pair of eyes (they used to be refused as "an author since the
# last apply"); who shaped a stage is decided on its content, not on a window of revisions.
@pytest.mark.parametrize(
    ("who", "applied_first", "edit", "refused_because"),
    [
        ("first", False, "description", "revision 1"),
        ("editor", False, "description", None),  # a description shapes nothing that runs
        ("requester", False, "description", "requested"),
        ("fresh", False, "description", None),
        ("first", True, "description", None),  # their stage was applied under fresh's review
        ("editor", True, "description", None),
        ("requester", True, "description", "requested"),
        ("fresh", True, "description", None),
        ("first", False, "stage", "revision 1"),
        ("editor", False, "stage", "revision 2"),
        ("first", True, "stage", None),  # stage a unchanged since a reviewed apply
        ("editor", True, "stage", "revision 2"),
        ("requester", True, "stage", "requested"),
        ("fresh", True, "stage", None),
    ],
)
def test_four_eyes_role_matrix(
    test_kinds, tmp_path, cast4, who, applied_first, edit, refused_because, client_for_views
) -> None:
    dry = four_eyes_plan(tmp_path, cast4, applied_first=applied_first, edit=edit)
    user = cast4[who]

    # What the pages offer agrees with what the service does.
    inbox = client_for_views(user).get("/approvals/").content.decode()
    page = client_for_views(user).get(f"/runs/{dry.pk}/").content.decode()
    home = client_for_views(user).get("/")
    blocked = [r.pk for r, _ in policies.runs_to_decide(user)[1]]
    offered_home = [r.pk for r in home.context["to_decide"]]
    if refused_because:
        with pytest.raises(ServiceError) as refused:
            services.run_approve(run=dry, actor=user)
        assert refused.value.code == codes.SELF_APPROVAL_FORBIDDEN
        assert refused_because in refused.value.message
        assert Approval.objects.filter(run=dry).count() == 0
        assert dry.pk in blocked and dry.pk not in offered_home
        assert "four-eyes rule" in page and refused_because in inbox
    else:
        services.run_approve(run=dry, actor=user)
        assert Approval.objects.filter(run=dry, user=user).count() == 1
        dry.refresh_from_db()
        assert dry.state == RunState.APPROVED
        assert dry.pk not in blocked and dry.pk in offered_home
        assert f"Review dry-run #{dry.pk}" in inbox


def test_self_approval_allowed_by_setting_lets_every_author_approve(
    test_kinds, tmp_path, cast4, settings
) -> None:
    settings.HXO_ALLOW_SELF_APPROVAL = True
    dry = four_eyes_plan(tmp_path, cast4, applied_first=False)
    services.run_approve(run=dry, actor=cast4["first"])
    dry.refresh_from_db()
    assert dry.state == RunState.APPROVED


@pytest.fixture
def client_for_views(db):
    from django.test import Client

    def make(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make


# --- Replays --------------------------------------------------------------------------------


def failed_dry_run(tmp_path: Path, operator, settings) -> tuple[Plan, Run]:
    """A dry-run of 3 partitions of which 2 failed."""
    settings.HXO_MAX_ATTEMPTS = 1
    doc = stage("a", tmp_path, items=3, fail_dry_run={"1": 1, "2": 1})
    doc["max_failed_partitions"] = 1  # the stage fails at its second failure, not its first
    plan = services.plan_create(actor=operator, document={"name": "p", "stages": [doc]})
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    assert dry.state == RunState.FAILED
    assert sorted(dry.partitions.values_list("state", flat=True)) == [
        "failed",
        "failed",
        "succeeded",
    ]
    return plan, dry


def test_an_approved_replay_dry_run_does_not_cover_the_whole_manifest(
    test_kinds, tmp_path, operator, approver, settings, api_client_for
) -> None:
    plan, dry = failed_dry_run(tmp_path, operator, settings)
    child = drain(services.run_replay(run=dry, actor=operator))
    assert child.state == RunState.AWAITING_APPROVAL, list(
        child.partitions.values("state", "error")
    )
    assert child.partitions.count() == 2
    services.run_approve(run=child, actor=approver)

    response = api_client_for(operator).post(
        f"/api/v1/plans/{plan.pk}/apply/", {"dry_run": child.pk}, format="json"
    )

    assert response.status_code == 409
    body = response.json()
    assert body["code"] == codes.APPROVAL_INCOMPLETE
    assert [e["path"] for e in body["errors"]] == ["stages.a.partitions[0]"]
    assert applies(plan) == 0 and effects(tmp_path, "a") == []
    # ...and the run page does not offer the apply the service refuses.
    from runs_app.views.runs import run_actions

    actions = run_actions(operator, Run.objects.get(pk=child.pk))
    assert not actions.apply and "2 of 3" in actions.apply_blocked


def test_a_replay_holding_every_partition_covers_the_manifest(
    test_kinds, tmp_path, operator, approver, settings
) -> None:
    settings.HXO_MAX_ATTEMPTS = 1
    doc = stage("a", tmp_path, items=2, fail_dry_run={"0": 1, "1": 1})
    doc["max_failed_partitions"] = 1  # both fail, whatever the order
    plan = services.plan_create(actor=operator, document={"name": "p", "stages": [doc]})
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    child = drain(services.run_replay(run=dry, actor=operator))
    assert child.partitions.count() == 2
    services.run_approve(run=child, actor=approver)

    run = drain(services.run_apply(plan=plan, actor=operator, dry_run_id=child.pk))

    assert run.state == RunState.SUCCEEDED
    assert sorted(effects(tmp_path, "a")) == [0, 1]


def test_the_requester_of_a_replayed_dry_run_cannot_approve_its_replay(
    test_kinds, tmp_path, cast4, settings
) -> None:
    settings.HXO_MAX_ATTEMPTS = 1
    doc = stage("a", tmp_path, items=2, fail_dry_run={"0": 1, "1": 1})
    doc["max_failed_partitions"] = 1
    plan = services.plan_create(actor=cast4["first"], document={"name": "p", "stages": [doc]})
    dry = drain(services.run_start_dry_run(plan=plan, actor=cast4["requester"]))
    child = drain(services.run_replay(run=dry, actor=cast4["editor"]))
    assert child.state == RunState.AWAITING_APPROVAL

    for who, reason in (("requester", f"you requested dry-run #{dry.pk}"), ("editor", "requested")):
        with pytest.raises(ServiceError) as refused:
            services.run_approve(run=child, actor=cast4[who])
        assert refused.value.code == codes.SELF_APPROVAL_FORBIDDEN
        assert reason in refused.value.message
    services.run_approve(run=child, actor=cast4["fresh"])
    assert list(Approval.objects.filter(run=child).values_list("user__username", flat=True)) == [
        "fresh"
    ]


@pytest.fixture
def failed_apply(test_kinds, tmp_path, operator, settings) -> Run:
    settings.HXO_MAX_ATTEMPTS = 1
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "p",
            "stages": [stage("a", tmp_path, items=3, kind=TEST_KIND_NOAPPROVAL, fail={"0": 1})],
        },
    )
    run = drain(services.run_apply(plan=plan, actor=operator))
    assert run.state == RunState.FAILED
    return run


def test_four_concurrent_replays_make_exactly_one_child(failed_apply, tmp_path, operator) -> None:
    results = in_threads([lambda: services.run_replay(run=failed_apply, actor=operator)] * 4)

    children = [r for r in results if isinstance(r, Run)]
    refusals = [r for r in results if isinstance(r, ServiceError)]
    assert len(children) == 1, results
    assert [r.code for r in refusals] == [codes.REPLAY_IN_PROGRESS] * 3, results
    assert Run.objects.filter(parent=failed_apply).count() == 1
    drain(children[0])
    assert sorted(effects(tmp_path, "a")) == [0, 1, 2]  # each item executed once


def test_a_second_replay_is_refused_while_open_and_after(failed_apply, operator) -> None:
    child = services.run_replay(run=failed_apply, actor=operator)
    with pytest.raises(ServiceError) as open_:
        services.run_replay(run=failed_apply, actor=operator)
    assert open_.value.code == codes.REPLAY_IN_PROGRESS and open_.value.status == 409
    drain(child)
    with pytest.raises(ServiceError) as done:
        services.run_replay(run=failed_apply, actor=operator)
    assert done.value.code == codes.ALREADY_REPLAYED and done.value.extra["run"] == child.pk
    assert Run.objects.filter(parent=failed_apply).count() == 1


def test_a_replay_of_a_sunset_kind_is_refused_like_a_new_submit(
    failed_apply, tmp_path, operator, api_client_for
) -> None:
    row = JobKind.objects.get(kind=TEST_KIND_NOAPPROVAL)
    row.sunset_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    row.deprecated = True
    job_kind_save(job_kind=row)
    plan = failed_apply.plan
    submit = api_client_for(operator).post(f"/api/v1/plans/{plan.pk}/apply/", {}, format="json")

    replay = api_client_for(operator).post(f"/api/v1/runs/{failed_apply.pk}/replay/")

    assert replay.status_code == submit.status_code == 409
    assert replay.json()["code"] == submit.json()["code"] == codes.KIND_SUNSET
    assert Run.objects.filter(parent=failed_apply).count() == 0
    assert effects(tmp_path, "a") == []  # item 0 failed, the others were cancelled


def test_a_replay_needs_the_submit_capability(failed_apply, tmp_path) -> None:
    group = Group.objects.create(name="replayer")
    group.permissions.add(
        *Permission.objects.filter(
            codename__in=["replay", "view"], content_type__app_label="blueprints_app"
        )
    )
    user = User.objects.create_user("rita")
    user.groups.add(group)
    assert has_capability(user, "replay") and not has_capability(user, "submit")

    with pytest.raises(ServiceError) as refused:
        services.run_replay(run=failed_apply, actor=user)

    assert refused.value.code == codes.PERMISSION_DENIED and refused.value.status == 403
    assert Run.objects.filter(parent=failed_apply).count() == 0
    from runs_app.views.runs import run_actions

    actions = run_actions(user, failed_apply)
    assert not actions.replay and "hxo:submit" in actions.replay_blocked


def test_the_database_holds_one_apply_per_approval_and_one_replay_per_run(
    approved, operator
) -> None:
    """Past the services' locks: the unique constraints themselves refuse a second row."""
    from django.db import IntegrityError, transaction

    plan, dry = approved
    first = services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk)
    assert first.consumed_dry_run_id == dry.pk
    fields = {"plan": plan, "revision": dry.revision, "mode": RunMode.APPLY}
    with pytest.raises(IntegrityError), transaction.atomic():
        Run.objects.create(**fields, consumed_dry_run=dry)
    Run.objects.create(**fields, parent=first)
    with pytest.raises(IntegrityError), transaction.atomic():
        Run.objects.create(**fields, parent=first)
    assert applies(plan) == 2


# --- Stale approvals name what changed ------------------------------------------------------


def publish(kind: str, **changes: Any) -> None:
    row = JobKind.objects.get(kind=kind)
    for field, value in changes.items():
        setattr(row, field, value)
    job_kind_save(job_kind=row)


def test_a_tightened_approval_policy_names_the_policy_in_the_stale_diff(
    approved, operator, client_for_views
) -> None:
    plan, dry = approved
    publish(TEST_KIND, required_approvals=2)

    with pytest.raises(ServiceError) as stale:
        services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk)

    assert stale.value.code == codes.STALE_PLAN
    diff = stale.value.extra["diff"]
    assert diff["policy"] == {TEST_KIND: {"required_approvals": {"from": 1, "to": 2}}}
    assert applies(plan) == 0
    page = (
        client_for_views(operator)
        .post(f"/plans/{plan.pk}/apply/", {"dry_run": dry.pk})
        .content.decode()
    )
    assert "required_approvals" in page


@pytest.mark.parametrize("change", ["params", "files", "kind_version"])
def test_every_stale_diff_names_what_changed(approved, tmp_path, operator, change) -> None:
    plan, dry = approved
    if change == "params":
        document = plan.latest_revision.document
        document["stages"][0]["params"]["salt"] = "new"
        services.plan_update(plan=plan, actor=operator, document=document)
    elif change == "files":
        (tmp_path / "source.txt").write_text("changed")
    else:
        publish(TEST_KIND, default_slo_ms=1234)
        services.plan_migrate(plan=plan, actor=operator)

    if change == "files":
        # Only the partitioner sees files: the worker fails the apply with the diff.
        run = drain(services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk))
        assert run.state == RunState.FAILED and run.error["code"] == codes.STALE_PLAN
        diff = run.error["diff"]
    else:
        with pytest.raises(ServiceError) as stale:
            services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk)
        diff = stale.value.extra["diff"]
        assert stale.value.code == codes.STALE_PLAN
    if change == "params":
        assert diff["stages"][0]["params"]["to"]["salt"] == "new"
    elif change == "files":
        assert diff["stages"][0]["changed_partitions"][0]["fingerprints"]["changed"] == [
            "source.txt"
        ]
    else:
        assert diff["kind_versions"] == {TEST_KIND: {"from": 1, "to": 2}}

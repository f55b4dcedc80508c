"""Migrating stored plans to the current kind versions: `plan_migrate`, `hxo_migrate_plans`,
POST /api/v1/plans/{id}/migrate/ and the admin action.

The scenario: version 2 of `test.echo` renames the partitioner `test_items` to `test_count`
and its param `items` to `count` (as a code change would), declared as migration steps on
version 1. Plans written for version 1 keep running until they are migrated; a migrated plan
is a new revision that needs its own dry-run and approval.
"""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from blueprints_app.evolution import CODE_MIGRATIONS, register_migration, register_transform
from blueprints_app.models import JobKind, JobKindVersion
from blueprints_app.registry import PartitionContext, StageManifest, register_partitioner
from blueprints_app.services import job_kind_save, job_kind_version_update
from hxo_site import codes
from hxo_site.errors import ServiceError
from hxo_site.models import AuditEvent
from runs_app import services
from runs_app.models import Plan, PlanRevision, RunState
from tests.helpers import drain
from tests.runs_app.testkinds import TEST_KIND, TEST_KIND_NOAPPROVAL, ItemsPartitioner, stage

pytestmark = pytest.mark.django_db(transaction=True)

RENAME_STEPS = [
    {"op": "rename_partitioner", "from": "test_items", "to": "test_count"},
    {"op": "rename_param", "from": "items", "to": "count", "partitioner": "test_count"},
]


@register_partitioner
class CountPartitioner(ItemsPartitioner):
    """`test_items` under its version-2 name, with `items` renamed to `count`."""

    name = "test_count"
    description = "N partitions (version 2 of test_items)"
    params_schema = {
        **ItemsPartitioner.params_schema,
        "properties": {
            **{k: v for k, v in ItemsPartitioner.params_schema["properties"].items()},
            "count": {"type": "integer", "minimum": 0, "maximum": 1000},
        },
        "required": ["count", "dir"],
    }
    params_schema["properties"].pop("items")

    def partition(self, ctx: PartitionContext) -> StageManifest:
        stage_doc = {**ctx.stage, "params": dict(ctx.params)}
        stage_doc["params"]["items"] = stage_doc["params"].pop("count")
        return super().partition(PartitionContext(stage=stage_doc, kind=ctx.kind))


@register_transform("double")
def double(value: Any) -> Any:
    return value * 2


def publish_v2(kind: str = TEST_KIND, steps: list[dict[str, Any]] | None = None) -> JobKind:
    """Version 2 allows only test_count; the way from version 1 is declared on version 1."""
    row = JobKind.objects.get(kind=kind)
    row.partitioners = ["test_count"]
    row = job_kind_save(job_kind=row)
    v1 = JobKindVersion.objects.get(kind=kind, version=1)
    job_kind_version_update(row=v1, migration=RENAME_STEPS if steps is None else steps)
    return row


def plan_of(operator, *stages: dict) -> Plan:
    return services.plan_create(actor=operator, document={"name": "p", "stages": list(stages)})


def snapshot(plan: Plan) -> tuple[int, int, list[Any], int]:
    plan.refresh_from_db()
    return (
        plan.latest_number,
        PlanRevision.objects.filter(plan=plan).count(),
        plan.latest_revision.document,
        AuditEvent.objects.filter(action="plan.migrate").count(),
    )


def test_a_dry_run_reports_what_would_change_and_changes_nothing(
    test_kinds, tmp_path: Path, operator
) -> None:
    plan = plan_of(operator, stage("a", tmp_path, items=3))
    publish_v2()
    before = snapshot(plan)

    report = services.plan_migrate(plan=plan, actor=operator, dry_run=True)

    assert report.status == "would_migrate"
    assert report.revision is None
    data = report.as_dict()
    assert [c["op"] for c in data["changes"]] == [
        "rename_partitioner",
        "rename_param",
        "version",
    ]
    assert data["kind_versions"] == {"from": {TEST_KIND: 1}, "to": {TEST_KIND: 2}}
    assert data["errors"] == []
    assert snapshot(plan) == before


def test_migrating_writes_a_new_revision_that_needs_a_fresh_approval(
    test_kinds, tmp_path, operator, approver
) -> None:
    plan = plan_of(operator, stage("a", tmp_path, items=3))
    old = drain(services.run_start_dry_run(plan=plan, actor=operator))
    services.run_approve(run=old, actor=approver)
    publish_v2()

    report = services.plan_migrate(plan=plan, actor=operator)

    assert report.status == "migrated"
    revision = plan.latest_revision
    assert revision.number == 2 and report.revision == revision
    assert revision.kind_versions == {TEST_KIND: 2}
    assert revision.document["stages"][0]["partitioner"] == "test_count"
    assert revision.document["stages"][0]["params"]["count"] == 3
    assert "items" not in revision.document["stages"][0]["params"]
    assert revision.comment.startswith("migrated: partitioner test_items → test_count")
    event = AuditEvent.objects.get(action="plan.migrate")
    assert event.before["kind_versions"] == {TEST_KIND: 1}
    assert event.after["revision"] == 2

    # The approval was of revision 1's digest: it does not cover the migrated revision.
    with pytest.raises(ServiceError) as refused:
        services.run_apply(plan=plan, actor=operator, dry_run_id=old.pk)
    assert refused.value.code == codes.STALE_PLAN
    assert refused.value.extra["diff"]["kind_versions"] == {TEST_KIND: {"from": 1, "to": 2}}

    fresh = drain(services.run_start_dry_run(plan=plan, actor=operator))
    assert fresh.revision == revision and fresh.digest != old.digest
    assert fresh.kind_snapshots[TEST_KIND]["version"] == 2
    services.run_approve(run=fresh, actor=approver)
    run = drain(services.run_apply(plan=plan, actor=operator, dry_run_id=fresh.pk))
    assert run.state == RunState.SUCCEEDED
    assert run.run_stages.get().partitioner == "test_count"


def test_an_up_to_date_plan_gets_no_new_revision(test_kinds, tmp_path, operator) -> None:
    plan = plan_of(operator, stage("a", tmp_path))
    before = snapshot(plan)

    report = services.plan_migrate(plan=plan, actor=operator)

    assert report.status == "up_to_date"
    assert report.as_dict()["changes"] == []
    assert snapshot(plan) == before


def test_a_version_change_without_steps_is_still_a_new_pinned_revision(
    test_kinds, tmp_path, operator
) -> None:
    plan = plan_of(operator, stage("a", tmp_path))
    row = JobKind.objects.get(kind=TEST_KIND)
    row.default_slo_ms = 1234
    job_kind_save(job_kind=row)

    report = services.plan_migrate(plan=plan, actor=operator)

    assert report.status == "migrated"
    assert [c.op for c in report.migration.changes] == ["version"]
    revision = plan.latest_revision
    assert revision.kind_versions == {TEST_KIND: 2}
    assert revision.digest == PlanRevision.objects.get(plan=plan, number=1).digest


def test_a_plan_that_cannot_be_migrated_is_reported_and_left_alone(
    test_kinds, tmp_path, operator
) -> None:
    plan = plan_of(operator, stage("a", tmp_path))
    publish_v2(steps=[])  # version 2 drops test_items and nobody said how to get off it
    before = snapshot(plan)

    dry = services.plan_migrate(plan=plan, actor=operator, dry_run=True)
    assert dry.status == "needs_attention"
    with pytest.raises(ServiceError) as refused:
        services.plan_migrate(plan=plan, actor=operator)

    assert refused.value.code == codes.MIGRATION_FAILED
    assert refused.value.status == 409
    assert [e["code"] for e in refused.value.errors] == [codes.PARTITIONER_NOT_ALLOWED]
    assert snapshot(plan) == before


def test_a_deprecated_kind_moves_to_its_replacement(test_kinds, tmp_path, operator) -> None:
    plan = plan_of(operator, stage("a", tmp_path, kind=TEST_KIND_NOAPPROVAL))
    row = JobKind.objects.get(kind=TEST_KIND_NOAPPROVAL)
    row.deprecated, row.replaced_by = True, TEST_KIND
    job_kind_save(job_kind=row)

    report = services.plan_migrate(plan=plan, actor=operator)

    assert report.status == "migrated"
    assert report.as_dict()["changes"][0] == {
        "stage": "a",
        "op": "move_to_kind",
        "message": f"moved from {TEST_KIND_NOAPPROVAL} to {TEST_KIND}",
        "from": TEST_KIND_NOAPPROVAL,
        "to": TEST_KIND,
    }
    assert plan.latest_revision.kind_versions == {TEST_KIND: 1}


def test_migrations_declared_in_code_run_before_those_declared_as_data(
    test_kinds, tmp_path, operator
) -> None:
    plan = plan_of(operator, stage("a", tmp_path, items=2))
    register_migration(
        TEST_KIND, 1, [{"op": "transform_param", "name": "items", "function": "double"}]
    )
    try:
        publish_v2()
        report = services.plan_migrate(plan=plan, actor=operator)
    finally:
        CODE_MIGRATIONS.pop((TEST_KIND, 1))

    assert report.status == "migrated"
    assert plan.latest_revision.document["stages"][0]["params"]["count"] == 4


def test_migrating_needs_the_plan_capability(test_kinds, tmp_path, operator, approver) -> None:
    plan = plan_of(operator, stage("a", tmp_path))

    with pytest.raises(ServiceError) as refused:
        services.plan_migrate(plan=plan, actor=approver, dry_run=True)

    assert refused.value.code == codes.PERMISSION_DENIED


# --- The command ------------------------------------------------------------------------------


def test_the_command_dry_run_reports_per_plan_and_writes_nothing(
    test_kinds, tmp_path, operator
) -> None:
    outdated = plan_of(operator, stage("a", tmp_path, items=3))
    current = plan_of(operator, stage("b", tmp_path, kind=TEST_KIND_NOAPPROVAL))
    publish_v2()
    before = (snapshot(outdated), snapshot(current))
    out = StringIO()

    call_command("hxo_migrate_plans", "--dry-run", "--user", operator.username, stdout=out)

    text = out.getvalue()
    assert f"plan {outdated.pk} “p” revision 1: would migrate" in text
    assert "stage a: partitioner test_items → test_count" in text
    assert "stage a: param items → count" in text
    assert f"{TEST_KIND} v1 → v2" in text
    assert f"plan {current.pk} " not in text  # up to date: only counted
    assert "2 plans: 0 migrated, 1 would migrate, 0 needs attention, 1 up to date" in text
    assert (snapshot(outdated), snapshot(current)) == before


def test_the_command_migrates_and_reports_as_json(test_kinds, tmp_path, operator) -> None:
    plan = plan_of(operator, stage("a", tmp_path, items=3))
    publish_v2()
    out = StringIO()

    call_command(
        "hxo_migrate_plans", "--plan", str(plan.pk), "--json", "--user", "otto", stdout=out
    )

    [report] = json.loads(out.getvalue())
    assert report["status"] == "migrated"
    assert report["revision"] == 2
    plan.refresh_from_db()
    assert plan.latest_revision.kind_versions == {TEST_KIND: 2}


def test_the_command_exits_2_when_a_plan_needs_attention(test_kinds, tmp_path, operator) -> None:
    plan = plan_of(operator, stage("a", tmp_path))
    publish_v2(steps=[])
    out = StringIO()

    with pytest.raises(SystemExit) as exited:
        call_command("hxo_migrate_plans", "--user", "otto", stdout=out)

    assert exited.value.code == 2
    assert "cannot be migrated automatically" in out.getvalue()
    assert "partitioner_not_allowed" in out.getvalue()
    plan.refresh_from_db()
    assert plan.latest_revision.number == 1


# --- The API ----------------------------------------------------------------------------------


def test_the_api_dry_run_and_migration(test_kinds, tmp_path, operator, api_client_for) -> None:
    plan = plan_of(operator, stage("a", tmp_path, items=3))
    publish_v2()
    client = api_client_for(operator)
    url = f"/api/v1/plans/{plan.pk}/migrate/"

    dry = client.post(url, {"dry_run": True}, format="json")
    assert dry.status_code == 200
    assert dry.json()["status"] == "would_migrate"
    assert plan.revisions.count() == 1

    done = client.post(url, {}, format="json")
    assert done.status_code == 200
    assert done.json()["status"] == "migrated" and done.json()["revision"] == 2
    revisions = client.get(f"/api/v1/plans/{plan.pk}/revisions/").json()["results"]
    assert revisions[0]["kind_versions"] == {TEST_KIND: 2}
    assert client.get(f"/api/v1/plans/{plan.pk}/").json()["kind_versions"] == {TEST_KIND: 2}

    again = client.post(url, {}, format="json")
    assert again.json()["status"] == "up_to_date"


@pytest.mark.parametrize("body", [[], None, {"dry_run": "maybe"}, {"dryrun": True}])
def test_the_api_refuses_bad_bodies(test_kinds, tmp_path, operator, api_client_for, body) -> None:
    plan = plan_of(operator, stage("a", tmp_path))
    publish_v2()

    response = api_client_for(operator).post(
        f"/api/v1/plans/{plan.pk}/migrate/", json.dumps(body), content_type="application/json"
    )

    assert response.status_code == 400
    assert plan.revisions.count() == 1


def test_the_api_needs_the_plan_capability_and_reports_refusals(
    test_kinds, tmp_path, operator, viewer, api_client_for
) -> None:
    plan = plan_of(operator, stage("a", tmp_path))
    publish_v2(steps=[])
    url = f"/api/v1/plans/{plan.pk}/migrate/"

    forbidden = api_client_for(viewer).post(url, {"dry_run": True}, format="json")
    refused = api_client_for(operator).post(url, {}, format="json")

    assert forbidden.status_code == 403
    assert refused.status_code == 409
    assert refused.json()["code"] == codes.MIGRATION_FAILED
    assert refused.json()["errors"][0]["path"] == "stages[0].partitioner"
    assert plan.revisions.count() == 1

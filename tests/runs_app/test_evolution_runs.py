"""Kind versions and deprecation through the engine: what a pinned revision runs under, and
what a sunset refuses. Runs are drained inline (tasks called directly, no broker)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from django.utils import timezone

from blueprints_app.models import JobKind, JobKindVersion
from blueprints_app.services import job_kind_save, job_kind_version_update
from blueprints_app.validation import validate_plan
from hxo_site import codes
from hxo_site.errors import ServiceError
from runs_app import services
from runs_app.models import Plan, Run, RunState
from tests.helpers import drain
from tests.runs_app.testkinds import (
    TEST_KIND,
    TEST_KIND_NOAPPROVAL,
    ItemsPartitioner,
    effect_files,
    stage,
)

pytestmark = pytest.mark.django_db(transaction=True)


def publish(kind: str, **changes: object) -> JobKind:
    """A registry admin's edit, through the one registry writer."""
    row = JobKind.objects.get(kind=kind)
    for field, value in changes.items():
        setattr(row, field, value)
    return job_kind_save(job_kind=row)


def plan_of(operator, *stages: dict) -> Plan:
    return services.plan_create(actor=operator, document={"name": "p", "stages": list(stages)})


def errors_of(exc: pytest.ExceptionInfo[ServiceError]) -> list[str]:
    return [e["code"] for e in exc.value.errors]


# --- Versions -------------------------------------------------------------------------------


def test_a_plan_pinned_to_version_1_still_runs_after_version_2_is_published(
    test_kinds, tmp_path: Path, operator
) -> None:
    plan = plan_of(operator, stage("a", tmp_path, items=3, kind=TEST_KIND_NOAPPROVAL))
    assert plan.latest_revision.kind_versions == {TEST_KIND_NOAPPROVAL: 1}

    # Version 2 no longer allows the executor the plan uses, and results say "finished".
    v2 = publish(
        TEST_KIND_NOAPPROVAL,
        executors=["test_append_once"],
        result_status="finished",
        default_slo_ms=5000,
    )
    assert v2.version == 2
    assert not validate_plan(plan.latest_revision.document).valid  # under v2 it is not valid

    run = drain(services.run_apply(plan=plan, actor=operator))

    assert run.state == RunState.SUCCEEDED
    assert effect_files(tmp_path, "a") == [0, 1, 2]
    snapshot = run.kind_snapshots[TEST_KIND_NOAPPROVAL]
    assert snapshot["version"] == 1
    assert snapshot["executors"] == ["test_append", "test_append_once"]
    assert snapshot["result_status"] == "done"  # outputs were checked against v1
    stage_row = run.run_stages.get()
    assert stage_row.kind_version == 1
    assert stage_row.slo_ms == 60000  # v1's default SLO


def test_a_pinned_revision_validates_with_a_warning_naming_the_current_version(
    test_kinds, tmp_path, operator
) -> None:
    plan = plan_of(operator, stage("a", tmp_path, kind=TEST_KIND_NOAPPROVAL))
    publish(TEST_KIND_NOAPPROVAL, executors=["test_append_once"])
    revision = plan.latest_revision

    result = validate_plan(revision.document, pinned_versions=revision.kind_versions)

    assert result.valid
    assert [w.code for w in result.warnings] == [codes.KIND_VERSION_OUTDATED]
    assert "current: 2" in result.warnings[0].message


def test_publishing_a_version_does_not_make_an_approval_of_a_pinned_revision_stale(
    test_kinds, tmp_path, operator, approver
) -> None:
    plan = plan_of(operator, stage("a", tmp_path, items=2))
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    services.run_approve(run=dry, actor=approver)
    publish(TEST_KIND, default_slo_ms=1234)

    run = drain(services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk))

    assert run.state == RunState.SUCCEEDED
    assert run.digest == dry.digest


def test_a_tightened_safety_policy_applies_to_pinned_revisions_and_stales_their_approval(
    test_kinds, tmp_path, operator, approver
) -> None:
    plan = plan_of(operator, stage("a", tmp_path, items=2, kind=TEST_KIND_NOAPPROVAL))
    # v1 needs no dry-run; an optional one is approved anyway...
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    assert dry.state == RunState.SUCCEEDED
    # ...then the registry admin makes the kind require an approved dry-run (v2).
    publish(TEST_KIND_NOAPPROVAL, require_dry_run=True)

    with pytest.raises(ServiceError) as refused:
        services.run_apply(plan=plan, actor=operator)
    assert refused.value.code == codes.DRY_RUN_REQUIRED

    with pytest.raises(ServiceError) as stale:
        services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk)
    assert stale.value.code in (codes.DRY_RUN_NOT_APPROVED, codes.STALE_PLAN)

    fresh = drain(services.run_start_dry_run(plan=plan, actor=operator))
    assert fresh.state == RunState.AWAITING_APPROVAL  # the stricter policy, on a v1 pin
    assert fresh.digest != dry.digest
    services.run_approve(run=fresh, actor=approver)
    run = drain(services.run_apply(plan=plan, actor=operator, dry_run_id=fresh.pk))
    assert run.state == RunState.SUCCEEDED


def test_a_sunset_version_refuses_its_pinned_plans_with_409(
    test_kinds, tmp_path, operator, api_client_for
) -> None:
    plan = plan_of(operator, stage("a", tmp_path, kind=TEST_KIND_NOAPPROVAL))
    publish(TEST_KIND_NOAPPROVAL, default_slo_ms=5000)
    v1 = JobKindVersion.objects.get(kind=TEST_KIND_NOAPPROVAL, version=1)
    job_kind_version_update(row=v1, sunset_at=timezone.now() + dt.timedelta(days=7))
    revision = plan.latest_revision
    result = validate_plan(revision.document, pinned_versions=revision.kind_versions)
    assert result.valid
    assert "will be sunset on" in result.warnings[0].message

    job_kind_version_update(row=v1, sunset_at=timezone.now() - dt.timedelta(minutes=1))
    before = Run.objects.count()
    response = api_client_for(operator).post(f"/api/v1/plans/{plan.pk}/apply/", {}, format="json")

    assert response.status_code == 409
    assert response.json()["code"] == codes.KIND_SUNSET
    assert Run.objects.count() == before


def test_the_current_version_cannot_be_sunset_on_its_own(test_kinds) -> None:
    from blueprints_app.services import JobKindInvalid

    publish(TEST_KIND, default_slo_ms=5000)
    current = JobKindVersion.objects.get(kind=TEST_KIND, version=2)

    with pytest.raises(JobKindInvalid) as refused:
        job_kind_version_update(row=current, sunset_at=timezone.now())

    assert refused.value.result.errors[0].path == "sunset_at"


# --- Deprecation ----------------------------------------------------------------------------


def test_a_deprecated_kind_warns_before_its_sunset_and_is_refused_after_it(
    test_kinds, tmp_path, operator, api_client_for
) -> None:
    plan = plan_of(operator, stage("a", tmp_path, items=2, kind=TEST_KIND_NOAPPROVAL))
    sunset = timezone.now() + dt.timedelta(days=30)
    publish(TEST_KIND_NOAPPROVAL, deprecated=True, sunset_at=sunset, replaced_by=TEST_KIND)
    assert JobKind.objects.get(kind=TEST_KIND_NOAPPROVAL).version == 1  # not a contract change

    validated = api_client_for(operator).post(
        "/api/v1/validate/", {"plan": plan.latest_revision.document}, format="json"
    )
    assert validated.json()["valid"] is True
    warning = validated.json()["warnings"][0]
    assert warning["code"] == codes.KIND_DEPRECATED
    assert f"{sunset:%Y-%m-%d}" in warning["message"] and TEST_KIND in warning["message"]
    assert drain(services.run_apply(plan=plan, actor=operator)).state == RunState.SUCCEEDED

    publish(TEST_KIND_NOAPPROVAL, sunset_at=timezone.now() - dt.timedelta(seconds=1))
    before = Run.objects.count()
    client = api_client_for(operator)

    applied = client.post(f"/api/v1/plans/{plan.pk}/apply/", {}, format="json")
    dry_run = client.post(f"/api/v1/plans/{plan.pk}/dry-run/", {}, format="json")

    for response in (applied, dry_run):
        assert response.status_code == 409
        assert response.json()["code"] == codes.KIND_SUNSET
        assert response.json()["errors"][0]["path"] == "stages[0].kind"
    assert Run.objects.count() == before


def test_a_sunset_partitioner_is_refused_and_a_deprecated_one_warns(
    test_kinds, tmp_path, operator, monkeypatch
) -> None:
    plan = plan_of(operator, stage("a", tmp_path, kind=TEST_KIND_NOAPPROVAL))
    document = plan.latest_revision.document
    monkeypatch.setattr(ItemsPartitioner, "deprecated", True)
    monkeypatch.setattr(ItemsPartitioner, "replaced_by", "test_items_v2")
    monkeypatch.setattr(ItemsPartitioner, "sunset_at", dt.date.today() + dt.timedelta(days=3))

    warned = validate_plan(document)
    assert warned.valid
    assert [(w.path, w.code) for w in warned.warnings] == [
        ("stages[0].partitioner", codes.COMPONENT_DEPRECATED)
    ]
    assert "test_items_v2" in warned.warnings[0].message

    monkeypatch.setattr(ItemsPartitioner, "sunset_at", "2000-01-01")
    with pytest.raises(ServiceError) as refused:
        services.run_apply(plan=plan, actor=operator)

    assert refused.value.code == codes.COMPONENT_SUNSET
    assert refused.value.status == 409
    assert errors_of(refused) == [codes.COMPONENT_SUNSET]

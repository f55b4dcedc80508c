"""Versions and deprecation on the registry pages, and the Plans admin's migrate actions."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from blueprints_app.models import JobKind, JobKindVersion
from blueprints_app.services import job_kind_save, job_kind_version_update
from hxo_site.models import AuditEvent
from tests.runs_app.testkinds import TEST_KIND, ItemsPartitioner

pytestmark = pytest.mark.django_db

PLANS_ADMIN = "/admin/runs_app/plan/"


def edit(kind: str, **changes: object) -> JobKind:
    row = JobKind.objects.get(kind=kind)
    for field, value in changes.items():
        setattr(row, field, value)
    return job_kind_save(job_kind=row)


def test_the_kind_page_lists_its_versions(client_for, viewer):
    edit("deploy.pack", default_slo_ms=5)
    v1 = JobKindVersion.objects.get(kind="deploy.pack", version=1)
    job_kind_version_update(row=v1, sunset_at=timezone.now() - dt.timedelta(days=1))

    page = client_for(viewer).get("/job-kinds/deploy.pack/").content.decode()

    assert 'id="h-versions"' in page
    assert '2 <span class="badge state-succeeded">current</span>' in page
    assert "<td>default_slo_ms</td>" in page
    assert "sunset " + f"{v1.sunset_at:%Y-%m-%d}" in page


def test_a_deprecated_kind_shows_a_banner_with_its_sunset_date(client_for, viewer):
    sunset = timezone.now() + dt.timedelta(days=10)
    edit("deploy.pack", deprecated=True, sunset_at=sunset, replaced_by="deploy.prime")

    page = client_for(viewer).get("/job-kinds/deploy.pack/").content.decode()
    listing = client_for(viewer).get("/job-kinds/").content.decode()

    assert f"Sunset on {sunset:%Y-%m-%d}; after that, plans using it are refused." in page
    assert 'href="/job-kinds/deploy.prime/"' in page
    assert f"deprecated · sunset {sunset:%Y-%m-%d}" in listing


def test_a_kind_past_its_sunset_says_plans_are_refused(client_for, viewer):
    edit("deploy.pack", sunset_at=timezone.now() - dt.timedelta(days=1))

    page = client_for(viewer).get("/job-kinds/deploy.pack/").content.decode()

    assert "alert-error" in page and "plans using it are refused" in page


def test_the_registry_page_shows_the_deprecation_timeline(
    client_for, viewer, test_kinds, monkeypatch
):
    edit("deploy.pack", sunset_at=timezone.now() + dt.timedelta(days=5), replaced_by="deploy.prime")
    edit("docs.index", default_slo_ms=5)
    job_kind_version_update(
        row=JobKindVersion.objects.get(kind="docs.index", version=1),
        sunset_at=timezone.now() - dt.timedelta(days=2),
    )
    monkeypatch.setattr(ItemsPartitioner, "sunset_at", "2099-01-01")

    page = client_for(viewer).get("/job-kinds/").content.decode()
    timeline = page[page.index('id="h-timeline"') :]

    version = timeline.index("docs.index v1")
    kind = timeline.index("<code>deploy.pack</code>")
    component = timeline.index("<code>test_items</code>")
    assert version < kind < component  # oldest first
    assert '<span class="badge state-failed">sunset</span> version' in timeline
    assert "→ use <code>deploy.prime</code>" in timeline


def test_the_kind_page_flags_a_deprecated_component(client_for, viewer, test_kinds, monkeypatch):
    monkeypatch.setattr(ItemsPartitioner, "deprecated", True)
    monkeypatch.setattr(ItemsPartitioner, "replaced_by", "test_count")

    page = client_for(viewer).get(f"/job-kinds/{TEST_KIND}/").content.decode()

    assert '<span class="badge">deprecated</span>' in page
    assert "use <code>test_count</code>" in page


# --- The Plans admin --------------------------------------------------------------------------


def test_the_plans_admin_shows_outdated_pins_and_migrates(client_for, admiral, quick_plan):
    edit(quick_plan.latest_revision.stages[0]["kind"], default_slo_ms=5)
    client = client_for(admiral)

    listing = client.get(PLANS_ADMIN).content.decode()
    assert "outdated: test.quick v1 → v2" in listing

    dry = client.post(
        PLANS_ADMIN,
        {"action": "migrate_dry_run", "_selected_action": [quick_plan.pk]},
        follow=True,
    )
    assert "“quick” would migrate: test.quick v1 → v2" in dry.content.decode()
    quick_plan.refresh_from_db()
    assert quick_plan.latest_number == 1

    done = client.post(
        PLANS_ADMIN, {"action": "migrate", "_selected_action": [quick_plan.pk]}, follow=True
    )
    assert "migrated to revision 2" in done.content.decode()
    quick_plan.refresh_from_db()
    assert quick_plan.latest_revision.kind_versions == {"test.quick": 2}
    assert AuditEvent.objects.filter(action="plan.migrate", actor=admiral).exists()


def test_the_plans_admin_is_read_only_and_refuses_without_the_capabilities(
    client_for, admiral, approver, quick_plan
):
    approver.is_staff = True
    approver.save()

    assert client_for(admiral).get(f"{PLANS_ADMIN}add/").status_code == 403
    assert client_for(admiral).post(f"{PLANS_ADMIN}{quick_plan.pk}/delete/").status_code == 403
    listing = client_for(approver).get(PLANS_ADMIN)  # hxo:view, but not hxo:plan
    assert listing.status_code == 200
    assert "migrate_dry_run" not in listing.content.decode()


# --- The plan page --------------------------------------------------------------------------


def test_the_plan_page_shows_the_pinned_version_and_what_the_registry_changed(
    client_for, operator, quick_plan
):
    kind = quick_plan.latest_revision.stages[0]["kind"]
    edit(kind, require_dry_run=False, default_slo_ms=5)
    client = client_for(operator)

    page = client.get(f"/plans/{quick_plan.pk}/").content.decode()

    assert 'data-testid="kind-lifecycle"' in page
    assert f"written against version 1 of &#x27;{kind}&#x27; (current: 2)" in page
    assert '<span class="muted small">v1</span>' in page
    assert "1 min 00 s (default)" in page  # v1's SLO, which is what the revision runs under
    assert f"hxo_migrate_plans --plan {quick_plan.pk}" in page


def test_the_plan_page_says_when_a_revision_can_no_longer_run(client_for, viewer, quick_plan):
    kind = quick_plan.latest_revision.stages[0]["kind"]
    edit(kind, deprecated=True, sunset_at=timezone.now() - dt.timedelta(hours=1))

    page = client_for(viewer).get(f"/plans/{quick_plan.pk}/").content.decode()

    assert "This revision can no longer run:" in page and "alert-error" in page
    assert "hxo_migrate_plans" not in page  # viewers cannot migrate


def test_an_up_to_date_plan_page_has_no_lifecycle_notice(client_for, operator, quick_plan):
    page = client_for(operator).get(f"/plans/{quick_plan.pk}/").content.decode()

    assert 'data-testid="kind-lifecycle"' not in page

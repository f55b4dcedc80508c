"""Dry-run review, four-eyes approval, the approvals inbox, and apply with its refusals shown
in plain words (dry_run_required, dry_run_not_approved, stale_plan with its diff,
force_merge_required)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hxo_site import codes
from runs_app import services
from runs_app.models import Approval, Partition, Run, RunMode, RunState
from tests.helpers import drain
from tests.runs_app.testkinds import TEST_KIND, stage
from tests.runs_app.views.conftest import html

pytestmark = pytest.mark.django_db


def test_starting_a_dry_run_from_the_plan_page(client_for, operator, plan) -> None:
    op = client_for(operator)
    body = html(op.get(f"/plans/{plan.pk}/"))
    assert 'data-testid="start-dry-run"' in body
    assert 'data-testid="apply"' not in body  # test.echo needs an approved dry-run first
    assert "must be dry-run and approved before it is applied" in body
    response = op.post(f"/plans/{plan.pk}/dry-run/", {"idempotency_key": "k1"})
    run = Run.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.pk}/"
    assert run.mode == RunMode.DRY_RUN and run.requested_by == operator
    # A double submit of the same form makes no second run.
    op.post(f"/plans/{plan.pk}/dry-run/", {"idempotency_key": "k1"})
    assert Run.objects.count() == 1


def test_the_review_shows_manifest_previews_totals_and_slo_budget(
    client_for, approver, dry_run
) -> None:
    body = html(client_for(approver).get(f"/runs/{dry_run.pk}/"))
    assert "Review: what this dry-run would do" in body
    assert "would append item 0" in body  # a partition preview
    assert "never been applied successfully" in body
    review = body[body.index('id="h-review"') : body.index('id="partitions"')]
    assert "<td>4</td>" in review and "<td>2</td>" in review  # partitions per stage
    assert "<td>6</td>" in review  # total
    assert "2 min 00 s" in review  # the summed SLO budget (two stages of 60 s)


def test_the_author_sees_the_decision_buttons_disabled_with_the_reason(
    client_for, admiral, test_kinds, tmp_path: Path
) -> None:
    plan = services.plan_create(
        actor=admiral, document={"name": "mine", "stages": [stage("a", tmp_path, items=2)]}
    )
    run = drain(services.run_start_dry_run(plan=plan, actor=admiral))
    body = html(client_for(admiral).get(f"/runs/{run.pk}/"))
    assert 'data-testid="approve" disabled' in body
    assert 'data-testid="reject" disabled' in body
    assert "you wrote this revision of the plan (four-eyes rule)" in body
    response = client_for(admiral).post(f"/runs/{run.pk}/approve/", {"comment": "me"})
    assert response.status_code == 403
    assert "Four-eyes rule" in html(response)
    assert not Approval.objects.exists()


def test_the_approvals_inbox_lists_what_waits_for_the_user(
    client_for, approver, admiral, dry_run
) -> None:
    body = html(client_for(approver).get("/approvals/"))
    assert f"Review dry-run #{dry_run.pk}" in body
    # The admiral did not write this plan: it waits for them too.
    assert f"Review dry-run #{dry_run.pk}" in html(client_for(admiral).get("/approvals/"))
    services.run_approve(run=dry_run, actor=approver)
    assert "Nothing is waiting for you." in html(client_for(approver).get("/approvals/"))


def test_approving_with_a_comment_and_then_applying(
    client_for, approver, operator, plan, dry_run
) -> None:
    ap, op = client_for(approver), client_for(operator)
    response = ap.post(
        f"/runs/{dry_run.pk}/approve/",
        {"comment": "checked the previews", "digest": dry_run.digest},
    )
    assert response.status_code == 302
    dry_run.refresh_from_db()
    assert dry_run.state == RunState.APPROVED
    assert Approval.objects.get().comment == "checked the previews"
    body = html(op.get(f"/runs/{dry_run.pk}/"))
    assert 'data-testid="apply"' in body and "checked the previews" in body
    body = html(op.get(f"/plans/{plan.pk}/"))
    assert f"Apply approved dry-run #{dry_run.pk}" in body
    response = op.post(f"/plans/{plan.pk}/apply/", {"dry_run": dry_run.pk}, HTTP_HX_REQUEST="true")
    applied = Run.objects.get(mode=RunMode.APPLY)
    assert response.status_code == 200 and response["HX-Redirect"] == f"/runs/{applied.pk}/"
    assert applied.dry_run_id == dry_run.pk


def test_rejecting_closes_the_dry_run(client_for, approver, operator, dry_run) -> None:
    client_for(approver).post(
        f"/runs/{dry_run.pk}/reject/", {"comment": "wrong items", "digest": dry_run.digest}
    )
    dry_run.refresh_from_db()
    assert dry_run.state == RunState.REJECTED
    body = html(client_for(operator).get(f"/runs/{dry_run.pk}/"))
    assert "was rejected" in body and 'data-testid="apply"' not in body


def test_apply_without_a_dry_run_is_refused_in_plain_words(client_for, operator, plan) -> None:
    response = client_for(operator).post(f"/plans/{plan.pk}/apply/")
    body = html(response)
    assert response.status_code == 409
    assert f'data-code="{codes.DRY_RUN_REQUIRED}"' in body
    assert "must be dry-run first" in body
    assert not Run.objects.exists()


def test_apply_of_an_unapproved_dry_run_is_refused_in_plain_words(
    client_for, operator, plan, dry_run
) -> None:
    response = client_for(operator).post(
        f"/plans/{plan.pk}/apply/", {"dry_run": dry_run.pk}, HTTP_HX_REQUEST="true"
    )
    body = html(response)
    assert response.status_code == 409
    assert body.lstrip().startswith('<div class="refusal')  # swapped where the form is
    assert "has not been approved yet" in body
    assert not Run.objects.filter(mode=RunMode.APPLY).exists()


def test_a_stale_plan_fails_the_apply_with_what_changed_on_the_run_page(
    client_for, operator, approver, plan, dry_run, tmp_path: Path
) -> None:
    # Changed files are found by the worker that partitions the apply: the form starts the
    # run, and its page says it failed as stale and what changed.
    services.run_approve(run=dry_run, actor=approver)
    (tmp_path / "source.txt").write_text("changed after the approval")
    response = client_for(operator).post(f"/plans/{plan.pk}/apply/", {"dry_run": dry_run.pk})
    assert response.status_code in (302, 303)
    run = Run.objects.get(mode=RunMode.APPLY)
    assert drain(run).state == RunState.FAILED
    body = html(client_for(operator).get(f"/runs/{run.pk}/"))
    assert f'data-code="{codes.STALE_PLAN}"' in body
    assert "What changed since the dry-run" in body
    assert "files changed: <code>source.txt</code>" in body
    assert not Partition.objects.filter(run=run).exists()


def test_an_edited_plan_is_refused_at_once_with_what_changed(
    client_for, operator, approver, plan, dry_run, tmp_path: Path
) -> None:
    services.run_approve(run=dry_run, actor=approver)
    document = plan.latest_revision.document
    document["stages"][0]["params"]["items"] = 5
    services.plan_update(plan=plan, actor=operator, document=document)
    response = client_for(operator).post(f"/plans/{plan.pk}/apply/", {"dry_run": dry_run.pk})
    body = html(response)
    assert response.status_code == 409
    assert f'data-code="{codes.STALE_PLAN}"' in body
    assert "Something changed since the dry-run was approved" in body
    assert "The plan moved from revision 1 to revision 2" in body
    assert not Run.objects.filter(mode=RunMode.APPLY).exists()


def test_running_a_non_idempotent_stage_without_force_merge_is_refused_in_plain_words(
    client_for, operator, test_kinds, tmp_path: Path
) -> None:
    plan = services.plan_create(
        actor=operator,
        document={"name": "once", "stages": [stage("a", tmp_path, executor="test_append_once")]},
    )
    body = html(client_for(operator).get(f"/plans/{plan.pk}/"))
    assert "needs <code>hxo:force-merge</code>, which you do not have" in body
    response = client_for(operator).post(f"/plans/{plan.pk}/dry-run/")
    assert response.status_code == 403
    assert f'data-code="{codes.FORCE_MERGE_REQUIRED}"' in html(response)
    assert "which you do not have" in html(response)
    assert not Run.objects.exists()


def test_a_plan_changed_after_its_dry_run_is_not_offered_for_apply(
    client_for, operator, approver, plan, dry_run, tmp_path: Path
) -> None:
    services.run_approve(run=dry_run, actor=approver)
    doc = plan.latest_revision.document
    doc["description"] = "edited"
    services.plan_update(plan=plan, actor=operator, document=doc)
    body = html(client_for(operator).get(f"/runs/{dry_run.pk}/"))
    assert 'data-testid="apply"' not in body
    assert "The plan changed since this dry-run" in body


def test_a_kind_without_required_dry_run_may_be_applied_directly(
    client_for, operator, quick_plan
) -> None:
    body = html(client_for(operator).get(f"/plans/{quick_plan.pk}/"))
    assert "Apply now" in body
    response = client_for(operator).post(f"/plans/{quick_plan.pk}/apply/")
    assert response.status_code == 302
    assert Run.objects.get().mode == RunMode.APPLY


def test_the_review_compares_with_the_last_applied_run(
    client_for, viewer, admiral, plan, applied
) -> None:
    second = drain(services.run_start_dry_run(plan=plan, actor=admiral))
    body = html(client_for(viewer).get(f"/runs/{second.pk}/"))
    assert f'hx-get="/runs/{second.pk}/diff/"' in body
    diff = html(client_for(viewer).get(f"/runs/{second.pk}/diff/", HTTP_HX_REQUEST="true"))
    assert f"apply run #{applied.pk}" in diff
    assert "Same digest: nothing changed." in diff
    assert "unchanged (4 partitions)" in diff  # previews and results are not compared


def test_plan_list_filters_by_name(client_for, viewer, plan, quick_plan) -> None:
    body = html(client_for(viewer).get("/plans/?q=nigh", HTTP_HX_REQUEST="true"))
    assert body.lstrip().startswith('<div id="results"')
    assert "nightly" in body and "quick" not in body


def test_job_kinds_page_shows_the_registry_and_the_plans_using_a_kind(
    client_for, viewer, admiral, plan
) -> None:
    body = html(client_for(viewer).get("/job-kinds/"))
    assert "deploy.migrate" in body and "by_sql_batch" in body
    assert "Edit the registry in the admin" not in body
    detail = html(client_for(viewer).get(f"/job-kinds/{TEST_KIND}/"))
    assert f'href="/plans/{plan.pk}/"' in detail and "test_items" in detail
    assert "Edit in the admin" not in detail
    assert "Edit in the admin" in html(client_for(admiral).get(f"/job-kinds/{TEST_KIND}/"))
    assert client_for(viewer).get("/job-kinds/no.such/").status_code == 404


def test_the_audit_page_filters_by_user_action_object_and_time(
    client_for, viewer, approver, dry_run
) -> None:
    services.run_approve(run=dry_run, actor=approver, comment="fine")
    client = client_for(viewer)
    body = html(client.get("/audit/?actor=april"))
    assert "run.approve</code>" in body and "plan.create</code>" not in body
    body = html(client.get("/audit/?action=plan.create"))
    assert "plan.create</code>" in body and "run.approve</code>" not in body
    body = html(client.get(f"/audit/?object_type=run&object_id={dry_run.pk}"))
    assert "run.dry_run" in body and "plan.create</code>" not in body
    assert "No audit events match." in html(client.get("/audit/?since=2999-01-01T00:00"))
    assert "plan.create</code>" in html(client.get("/audit/?until=2999-01-01T00:00"))


def test_search_pages_find_what_the_index_runs_wrote(client_for, operator, viewer) -> None:
    import json

    from django.conf import settings

    examples = settings.BASE_DIR / "examples" / "plans"
    for name in ("docs-index-by-route", "assets-index-by-bucket"):
        document = json.loads((examples / f"{name}.json").read_text())
        plan = services.plan_create(actor=operator, document=document)
        drain(services.run_apply(plan=plan, actor=operator))
    client = client_for(viewer)
    docs = html(client.get("/search/?q=deploy"))
    assert "<mark>" in docs and "/docs/" in docs
    partial = html(client.get("/search/?q=deploy", HTTP_HX_REQUEST="true"))
    assert partial.lstrip().startswith('<div id="results"')
    assets = html(client.get("/search/assets/?q=png"))
    assert "image/png" in assets
    assert "Nothing found" in html(client.get("/search/assets/?q=no-such-asset-anywhere"))


def test_the_refusal_page_links_back_only_within_the_site(client_for, operator, plan) -> None:
    for back in ("//evil.example/", "/\\evil.example/", "https://evil.example/"):
        body = html(client_for(operator).post(f"/plans/{plan.pk}/apply/", {"back": back}))
        assert "evil.example" not in body
        assert f'href="/plans/{plan.pk}/"' in body

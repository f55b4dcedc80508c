"""The dashboard in a real browser: an operator composes a plan with live validation and
dry-runs it, an approver approves, the operator applies, the run reaches 100% on a real
django-q2 cluster and its receipt verifies. Also the four-eyes rule and a viewer's view."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from runs_app import services
from runs_app.models import Plan, Run, RunMode, RunState
from tests.browser.conftest import log_in
from tests.helpers import drain
from tests.runs_app.cluster import running_cluster
from tests.runs_app.testkinds import TEST_KIND, make_test_kinds, stage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

RUN_URL = re.compile(r".*/runs/(\d+)/$")


def run_id(page) -> int:
    m = RUN_URL.match(page.url)
    assert m, page.url
    return int(m.group(1))


def test_operator_composes_dry_runs_and_applies_after_approval(
    open_page, operator, approver, tmp_path: Path
) -> None:
    make_test_kinds()
    op = open_page()
    log_in(op, "otto")
    expect(op.get_by_test_id("current-role")).to_have_text("operator")
    op.get_by_role("navigation", name="Main").get_by_role("link", name="Plans").click()
    op.get_by_role("link", name="New plan").click()
    # A click does not wait for the page's scripts: live validation starts when htmx has
    # processed the page, as it has long before a person starts typing.
    op.wait_for_url(re.compile(r".*/plans/new/$"))
    op.wait_for_load_state("load")

    op.get_by_label("Name").fill("walk-through")
    s = op.locator("#stage-0")
    s.get_by_label("Stage id").fill("echo")
    # A kind fills in its first allowed partitioner and executor.
    s.get_by_label("Job kind").select_option("deploy.pack")
    expect(op.locator("#f-stages-0-partitioner")).to_have_value("by_filesize")
    # Another kind keeps the user's choice and says, next to the field, why it is wrong.
    op.locator("#f-stages-0-kind").select_option(TEST_KIND)
    partitioner_errors = op.locator("#err-stages-0-partitioner")
    expect(partitioner_errors).to_contain_text("not allowed for test.echo")
    expect(partitioner_errors.locator("[data-code=partitioner_not_allowed]")).to_have_count(1)
    expect(op.locator("#f-stages-0-partitioner")).to_have_value("by_filesize")
    expect(op.get_by_test_id("validation-status")).to_contain_text("to fix before saving")
    # Fixing it brings the params form of the right partitioner.
    op.locator("#f-stages-0-partitioner").select_option("test_items")
    expect(partitioner_errors).to_be_empty()
    op.locator("#f-stages-0-executor").select_option("test_append")
    expect(op.locator("#err-stages-0-executor")).to_be_empty()
    items = op.locator("#f-stages-0-params-items")
    items.fill("6")
    op.locator("#f-stages-0-params-dir").fill(str(tmp_path))
    expect(op.get_by_test_id("validation-status")).to_contain_text("The plan is valid")
    # Live validation never rewrote what was typed.
    expect(items).to_have_value("6")
    expect(op.locator("#f-stages-0-id")).to_have_value("echo")
    op.get_by_test_id("save-plan").click()
    op.wait_for_url(re.compile(r".*/plans/\d+/$"))
    expect(op.get_by_text("created (revision 1)")).to_be_visible()
    plan = Plan.objects.get(name="walk-through")
    assert plan.latest_revision.stages[0]["params"] == {"items": 6, "dir": str(tmp_path)}

    with running_cluster(WORKERS=2):
        op.get_by_test_id("start-dry-run").click()
        op.wait_for_url(RUN_URL)
        dry = Run.objects.get(pk=run_id(op))
        assert dry.mode == RunMode.DRY_RUN
        # The page polls until the dry-run has finished, then shows its final state.
        expect(op.locator("h1 .state-awaiting_approval")).to_be_visible()
        expect(op.get_by_test_id("apply-reason")).to_contain_text("once the dry-run is approved")
        expect(op.get_by_test_id("apply")).to_have_count(0)
        expect(op.get_by_test_id("approve")).to_have_count(0)  # otto has no hxo:approve

        ap = open_page()
        log_in(ap, "april")
        ap.get_by_role("navigation", name="Main").get_by_role("link", name="Approvals").click()
        ap.get_by_role("link", name=f"Review dry-run #{dry.pk}").click()
        expect(ap.locator("#partitions")).to_contain_text("would append item 0")
        # A partition's full preview opens in its row.
        ap.locator("#partitions details.p-detail summary").first.click()
        expect(ap.locator("#partitions .p-detail-body pre").first).to_contain_text('"item": 0')
        ap.get_by_label("Comment on your decision").fill("looks right")
        ap.get_by_test_id("approve").click()
        expect(ap.get_by_text(f"Approved dry-run #{dry.pk}")).to_be_visible()
        expect(ap.locator("h1 .state-approved")).to_be_visible()
        expect(ap.get_by_test_id("apply")).to_have_count(0)  # april has no hxo:submit

        op.reload()
        op.get_by_test_id("apply").click()
        op.wait_for_url(lambda url: RUN_URL.match(url) and run_id(op) != dry.pk)
        applied = Run.objects.get(pk=run_id(op))
        assert applied.mode == RunMode.APPLY and applied.dry_run_id == dry.pk
        expect(op.get_by_test_id("run-percent")).to_have_text("100%")
        expect(op.locator("h1 .state-succeeded")).to_be_visible()
        expect(op.get_by_test_id("receipt-status")).to_contain_text("Verified")
    applied.refresh_from_db()
    assert applied.state == RunState.SUCCEEDED
    assert sorted(int(x) for x in (tmp_path / "effects-echo.log").read_text().split()) == list(
        range(6)
    )
    assert op.console_errors == [] and ap.console_errors == []


def _finished_dry_run(author, tmp_path: Path) -> Run:
    plan = services.plan_create(
        actor=author, document={"name": "four eyes", "stages": [stage("a", tmp_path, items=2)]}
    )
    return drain(services.run_start_dry_run(plan=plan, actor=author))


def test_the_author_cannot_approve_their_own_dry_run(open_page, admiral, tmp_path: Path) -> None:
    make_test_kinds()
    run = _finished_dry_run(admiral, tmp_path)
    assert run.state == RunState.AWAITING_APPROVAL
    page = open_page()
    log_in(page, "ada")
    page.goto(f"/runs/{run.pk}/")
    expect(page.get_by_test_id("approve")).to_be_disabled()
    expect(page.get_by_test_id("reject")).to_be_disabled()
    expect(page.get_by_test_id("decision-blocked")).to_contain_text("four-eyes")
    expect(page.get_by_test_id("decision-blocked")).to_contain_text("you wrote this revision")
    page.goto("/approvals/")
    expect(page.get_by_text("Nothing is waiting for you.")).to_be_visible()
    expect(page.get_by_text("The four-eyes rule keeps you from deciding on these.")).to_be_visible()


def test_a_viewer_sees_no_action_buttons(open_page, operator, viewer, tmp_path: Path) -> None:
    make_test_kinds()
    run = _finished_dry_run(operator, tmp_path)
    page = open_page()
    log_in(page, "vera")
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Approvals")).to_have_count(0)
    expect(nav.get_by_role("link", name="Audit")).to_have_count(1)
    page.goto(f"/plans/{run.plan_id}/")
    expect(page.get_by_role("heading", name="four eyes")).to_be_visible()
    for test_id in ("start-dry-run", "apply"):
        expect(page.get_by_test_id(test_id)).to_have_count(0)
    expect(page.get_by_role("link", name="Edit")).to_have_count(0)
    page.goto(f"/runs/{run.pk}/")
    expect(page.locator("#progress")).to_be_visible()
    expect(page.locator("#run-actions")).to_have_count(0)
    for test_id in ("approve", "reject", "apply", "abort", "replay"):
        expect(page.get_by_test_id(test_id)).to_have_count(0)
    expect(page.get_by_role("button")).to_have_count(2)  # Log out and the partition filter

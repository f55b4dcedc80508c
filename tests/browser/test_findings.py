"""An approver reviews a deploy.migrate dry-run with a high-severity SQL finding: the Findings
block in the review, the acknowledgement the kind's policy requires, and the decision. The
screenshot of the review is kept in test-results/ for the eye."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from runs_app import services
from runs_app.models import Approval, RunState
from tests.browser.conftest import RESULTS, log_in
from tests.helpers import drain

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_approver_must_acknowledge_a_high_finding_to_approve(
    open_page, operator, approver, tmp_path: Path, settings: Any
) -> None:
    path = tmp_path / "t.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, note TEXT)")
        conn.executemany("INSERT INTO items VALUES (?, '')", [(i,) for i in range(1, 4)])
    conn.close()
    settings.HXO_DATABASE_TARGETS = {**settings.HXO_DATABASE_TARGETS, "t": f"sqlite:///{path}"}
    document = {
        "name": "risky migration",
        "stages": [
            {
                "id": "migrate",
                "kind": "deploy.migrate",
                "partitioner": "by_sql_batch",
                "executor": "sql_migrate",
                "params": {
                    "target": "t",
                    "statements": [
                        "UPDATE items SET note = 'x' WHERE id = 1",
                        "ALTER TABLE items RENAME COLUMN note TO remark",
                        "DELETE FROM items",
                    ],
                },
            }
        ],
    }
    plan = services.plan_create(actor=operator, document=document)
    run = drain(services.run_start_dry_run(plan=plan, actor=operator))
    assert run.state == RunState.AWAITING_APPROVAL

    page = open_page(height=1200)
    log_in(page, "april")
    page.goto(f"/runs/{run.pk}/")
    findings = page.locator("#findings")
    expect(findings.locator("[data-severity=high]")).to_contain_text("DELETE of items has no WHERE")
    expect(findings.locator("[data-rule=rename]")).to_contain_text("renaming column items.note")
    RESULTS.mkdir(exist_ok=True)
    findings.scroll_into_view_if_needed()
    page.screenshot(path=str(RESULTS / "review-findings.png"), full_page=True)

    # Approving without the acknowledgement is refused, with the code.
    page.get_by_test_id("approve").click()
    expect(page.get_by_text("findings_not_acknowledged")).to_be_visible()
    assert not Approval.objects.exists()

    page.goto(f"/runs/{run.pk}/")
    page.get_by_test_id("acknowledge-findings").check()
    page.get_by_test_id("approve").click()
    page.wait_for_url(f"**/runs/{run.pk}/")
    approval = Approval.objects.get()
    assert [f["rule"] for f in approval.acknowledged_findings] == ["update_without_where"]
    run.refresh_from_db()
    assert run.state == RunState.APPROVED
    # The refused approval's 400 is the only error the browser saw.
    assert all("status of 400" in e for e in page.console_errors), page.console_errors


def test_an_operator_sees_a_risky_statement_s_finding_live_before_saving(
    open_page, operator, tmp_path: Path, settings: Any
) -> None:
    """Typing an UPDATE without WHERE into the editor shows the high-severity finding at the
    statements field while nothing is saved; adding the WHERE clears it, and the plan saves."""
    import re

    from runs_app.models import Plan

    path = tmp_path / "t.sqlite3"
    settings.HXO_DATABASE_TARGETS = {**settings.HXO_DATABASE_TARGETS, "t": f"sqlite:///{path}"}
    page = open_page(height=1000)
    log_in(page, "otto")
    page.goto("/plans/new/")
    page.wait_for_load_state("load")
    page.get_by_label("Name").fill("risky live")
    page.locator("#f-stages-0-id").fill("migrate")
    page.locator("#f-stages-0-kind").select_option("deploy.migrate")
    expect(page.locator("#f-stages-0-partitioner")).to_have_value("by_sql_batch")
    expect(page.locator("#f-stages-0-executor")).to_have_value("sql_migrate")
    page.locator("#f-stages-0-params-target").select_option("t")
    statements = page.locator("#f-stages-0-params-statements")
    statements.fill("UPDATE items SET note = 'x' WHERE id = 1")
    expect(page.get_by_test_id("validation-status")).to_contain_text("The plan is valid")
    slot = page.locator("#err-stages-0-params-statements")
    expect(slot.locator("[data-code=sql_finding]")).to_have_count(0)

    # A risky statement typed as a second paragraph: the finding shows, nothing is saved.
    statements.press("End")
    statements.type("\n\nDELETE FROM items")
    finding = slot.locator("[data-code=sql_finding]")
    expect(finding).to_contain_text("high: DELETE of items has no WHERE")
    expect(finding).to_contain_text("Safer:")
    expect(page.get_by_test_id("validation-status")).to_contain_text("1 warning")
    # Live validation never rewrote what is being typed.
    expect(statements).to_have_value(
        "UPDATE items SET note = 'x' WHERE id = 1\n\nDELETE FROM items"
    )
    assert not Plan.objects.exists()
    RESULTS.mkdir(exist_ok=True)
    # caret="initial": Playwright hides the caret of the focused field with an injected
    # <style>, which the CSP refuses (a console error).
    page.screenshot(path=str(RESULTS / "editor-live-finding.png"), full_page=True, caret="initial")

    statements.type(" WHERE id > 100")
    expect(finding).to_have_count(0)
    page.get_by_test_id("save-plan").click()
    page.wait_for_url(re.compile(r".*/plans/\d+/$"))
    saved = Plan.objects.get(name="risky live").latest_revision.stages[0]["params"]
    assert saved["statements"][1] == "DELETE FROM items WHERE id > 100"
    assert page.console_errors == []

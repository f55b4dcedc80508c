"""An approver reviews a deploy.migrate dry-run (issue 14 §1): the sticky digest, what will
change, the SQL highlighted under the CSP, then the decision. Screenshots of the review are
kept in test-results/ for the eye."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from runs_app import services
from runs_app.models import Approval, RunState
from tests.browser.conftest import RESULTS, log_in
from tests.helpers import drain
from tests.runs_app.kinds.conftest import EXAMPLES, demo_copy, scratch  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_approver_reads_the_change_set_and_the_sql_before_deciding(
    open_page, operator, approver, tmp_path: Path, settings: Any
) -> None:
    path = tmp_path / "shop.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT, domain TEXT, status TEXT)"
        )
        conn.executemany(
            "INSERT INTO customers VALUES (?, ?, NULL, ?)",
            [(i, f"user{i}@example.test", "active" if i % 4 else "closed") for i in range(1, 41)],
        )
        conn.execute("CREATE TABLE archive (id INTEGER PRIMARY KEY, customer INTEGER)")
    conn.close()
    settings.HXO_DATABASE_TARGETS = {
        **settings.HXO_DATABASE_TARGETS,
        "t": {"url": f"sqlite:///{path}", "sensitive": ["email"]},
    }
    statements = [
        "UPDATE customers SET domain = substr(email, instr(email, '@') + 1) "
        "WHERE domain IS NULL AND status = 'active'",
        "INSERT INTO archive (customer) SELECT id FROM customers WHERE status = 'closed'",
        "DELETE FROM customers WHERE status = 'closed' AND id > 30",
    ]
    document = {
        "name": "customer domains",
        "stages": [
            {
                "id": "migrate",
                "kind": "deploy.migrate",
                "partitioner": "by_sql_batch",
                "executor": "sql_migrate",
                "params": {"target": "t", "statements": statements, "batch_size": 2},
            }
        ],
    }
    plan = services.plan_create(actor=operator, document=document)
    run = drain(services.run_start_dry_run(plan=plan, actor=operator))
    assert run.state == RunState.AWAITING_APPROVAL

    page = open_page(height=1000)
    log_in(page, "april")
    page.goto(f"/runs/{run.pk}/")
    expect(page.get_by_test_id("change-total")).to_have_text("43 rows changed")
    expect(page.get_by_test_id("statement-rows")).to_have_text(["30", "10", "3"])
    sql = page.get_by_test_id("sql-migrate")
    # Highlighted with classes, and the stylesheet applies under the CSP: keywords are coloured.
    keyword = sql.locator(".sql .k").first
    expect(keyword).to_have_text("UPDATE")
    assert keyword.evaluate("e => getComputedStyle(e).color") != "rgb(28, 35, 48)"
    # Sample rows before → after under the UPDATE: the email column masked by the target,
    # and the domain too, which the UPDATE computes from the email (a value that flows from a
    # sensitive column is masked wherever it lands).
    samples = page.get_by_test_id("samples-0")
    expect(samples.locator("xpath=ancestor::details[1]/summary")).to_contain_text(
        "masked: domain, email"
    )
    # The domain's change is shown as a change, its values hidden; the row reads changed.
    first = samples.locator("tbody tr").first
    expect(first.locator("td.masked")).to_have_text(["•••", "••• → •••"])
    expect(first.locator("td").last).to_have_text("changed")
    assert "example.test" not in samples.inner_text()
    expect(page.get_by_test_id("samples-2").locator("tr.sample-deleted")).to_have_count(3)
    assert "user1@example.test" not in page.content()
    RESULTS.mkdir(exist_ok=True)
    page.screenshot(path=str(RESULTS / "review-migrate.png"), full_page=True)

    # Scrolled down to the decision, the digest bar is still at the top of the window.
    page.locator("#decision").scroll_into_view_if_needed()
    box = page.get_by_test_id("review-digest").bounding_box()
    assert box is not None and box["y"] <= 1
    page.screenshot(path=str(RESULTS / "review-migrate-decision.png"))

    page.get_by_test_id("approve").click()
    page.wait_for_url(f"**/runs/{run.pk}/")
    assert Approval.objects.get().digest == run.digest
    run.refresh_from_db()
    assert run.state == RunState.APPROVED
    assert page.console_errors == []


def test_the_release_review_and_the_inbox_show_each_kinds_change_set(
    open_page,
    operator,
    approver,
    demo_copy,  # noqa: F811
    tmp_path: Path,
    settings: Any,
) -> None:
    import json

    document = json.loads((EXAMPLES / "plans" / "release-demo.json").read_text())
    (demo_copy / "backend" / "broken.py").write_text("def oops(:\n")
    plan = services.plan_create(actor=operator, document=document)
    run = drain(services.run_start_dry_run(plan=plan, actor=operator))
    assert run.state in (RunState.AWAITING_APPROVAL, RunState.SUCCEEDED), run.error
    path = tmp_path / "t.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, note TEXT)")
        conn.executemany("INSERT INTO items VALUES (?, '')", [(i,) for i in range(1, 6)])
    conn.close()
    settings.HXO_DATABASE_TARGETS = {**settings.HXO_DATABASE_TARGETS, "t": f"sqlite:///{path}"}
    migrate = services.plan_create(
        actor=operator,
        document={
            "name": "notes",
            "stages": [
                {
                    "id": "migrate",
                    "kind": "deploy.migrate",
                    "partitioner": "by_sql_batch",
                    "executor": "sql_migrate",
                    "params": {"target": "t", "statements": ["UPDATE items SET note = 'x'"]},
                }
            ],
        },
    )
    waiting = drain(services.run_start_dry_run(plan=migrate, actor=operator))
    assert waiting.state == RunState.AWAITING_APPROVAL

    page = open_page(height=1000)
    log_in(page, "april")
    page.goto(f"/runs/{run.pk}/")
    summary = page.get_by_test_id("change-summary")
    expect(summary.locator("tr[data-stage=registry]")).to_contain_text("1 will fail")
    expect(summary.locator("tr[data-stage=registry]")).to_contain_text("backend.broken")
    expect(summary.locator("tr[data-stage=pack]")).to_contain_text("archives to write")
    expect(summary.locator("tr[data-stage=docs]")).to_contain_text("pages new")
    expect(summary.locator("tr[data-stage=assets]")).to_contain_text("assets to copy")
    RESULTS.mkdir(exist_ok=True)
    page.screenshot(path=str(RESULTS / "review-release.png"), full_page=True)

    page.goto("/approvals/")
    row = page.locator(f"tr[data-run='{waiting.pk}']")
    expect(row.get_by_test_id("inbox-change")).to_have_text("5 rows changed")
    expect(row.get_by_test_id("inbox-highest")).to_have_text("high")
    page.get_by_label("Kind").select_option("deploy.migrate")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/approvals/?kind=deploy.migrate")
    expect(page.locator(f"tr[data-run='{waiting.pk}']")).to_be_visible()
    page.screenshot(path=str(RESULTS / "approvals-inbox.png"), full_page=True)
    assert page.console_errors == []


def test_an_approver_walks_a_migrate_review_in_order_and_the_apply_changes_the_rows(
    open_page, operator, approver, tmp_path: Path, settings: Any
) -> None:
    """Issue 14's "Done when", in one path: the SQL, the sample rows, a high-severity finding
    that must be acknowledged, the decision (each below the one before on the page), then the
    operator's apply and its rows at the target."""
    from runs_app.models import Run, RunMode

    path = tmp_path / "crm.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT, domain TEXT, status TEXT)"
        )
        conn.executemany(
            "INSERT INTO customers VALUES (?, ?, NULL, ?)",
            [(i, f"user{i}@example.test", "active" if i % 4 else "closed") for i in range(1, 41)],
        )
    conn.close()
    settings.HXO_DATABASE_TARGETS = {
        **settings.HXO_DATABASE_TARGETS,
        "crm": {"url": f"sqlite:///{path}", "sensitive": ["email"]},
    }
    statements = [
        "UPDATE customers SET domain = substr(email, instr(email, '@') + 1) "
        "WHERE domain IS NULL AND status = 'active'",
        "UPDATE customers SET status = upper(status)",  # no WHERE: a high-severity finding
    ]
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "crm domains",
            "stages": [
                {
                    "id": "migrate",
                    "kind": "deploy.migrate",
                    "partitioner": "by_sql_batch",
                    "executor": "sql_migrate",
                    "params": {"target": "crm", "statements": statements, "batch_size": 2},
                }
            ],
        },
    )
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    assert dry.state == RunState.AWAITING_APPROVAL

    page = open_page(height=1000)
    log_in(page, "april")
    page.goto(f"/runs/{dry.pk}/")
    # 1. What will change, then the SQL, highlighted, with each statement's rows.
    expect(page.get_by_test_id("change-total")).to_have_text("70 rows changed")
    sql = page.get_by_test_id("sql-migrate")
    expect(sql.locator(".sql .k").first).to_have_text("UPDATE")
    expect(page.get_by_test_id("statement-rows")).to_have_text(["30", "40"])
    # 2. The sample rows, before → after: the email masked, and the domain computed from it;
    #    the second UPDATE's change shown as a diff.
    samples = page.get_by_test_id("samples-0")
    expect(samples.locator("td.masked").first).to_have_text("•••")
    expect(samples.locator("xpath=ancestor::details[1]/summary")).to_contain_text(
        "masked: domain, email"
    )
    upper = page.get_by_test_id("samples-1")
    expect(upper.locator("td.changed").first).to_have_text("active → ACTIVE")
    # 3. The high-severity finding, with its safer form.
    high = page.locator("#findings [data-severity=high]")
    expect(high).to_contain_text("UPDATE of customers has no WHERE")
    expect(high).to_contain_text("backfill form")
    # The evidence comes in that order, and the decision after all of it.
    tops = [
        loc.bounding_box()["y"]
        for loc in (
            page.get_by_test_id("change-summary"),
            sql,
            samples,
            page.locator("#findings"),
            page.locator("#decision"),
        )
    ]
    assert tops == sorted(tops), tops
    RESULTS.mkdir(exist_ok=True)
    page.screenshot(path=str(RESULTS / "review-deploy.migrate.png"), full_page=True)

    # 4. The decision: refused without the acknowledgement, given with it.
    page.get_by_test_id("approve").click()
    expect(page.get_by_text("findings_not_acknowledged")).to_be_visible()
    assert not Approval.objects.exists()
    page.goto(f"/runs/{dry.pk}/")
    page.get_by_test_id("acknowledge-findings").check()
    page.get_by_label("Comment on your decision").fill(
        "domains only; status upper-cased on purpose"
    )
    page.get_by_test_id("approve").click()
    page.wait_for_url(f"**/runs/{dry.pk}/")
    expect(page.locator("h1 .state-approved")).to_be_visible()
    approval = Approval.objects.get()
    assert approval.digest == dry.digest
    assert [f["rule"] for f in approval.acknowledged_findings] == ["update_without_where"]

    # 5. The operator applies what was approved; the rows change at the target, once.
    op = open_page(height=1000)
    log_in(op, "otto")
    op.goto(f"/runs/{dry.pk}/")
    op.get_by_test_id("apply").click()
    op.wait_for_url(re.compile(rf".*/runs/(?!{dry.pk}/)\d+/$"))
    applied = Run.objects.get(mode=RunMode.APPLY, dry_run=dry)
    drain(applied)
    assert applied.state == RunState.SUCCEEDED, applied.error
    with sqlite3.connect(path) as conn:
        domains = conn.execute(
            "SELECT COUNT(*) FROM customers WHERE domain = 'example.test'"
        ).fetchone()[0]
        statuses = dict(conn.execute("SELECT status, COUNT(*) FROM customers GROUP BY status"))
    conn.close()
    assert domains == 30 and statuses == {"ACTIVE": 30, "CLOSED": 10}
    op.reload()
    expect(op.locator("h1 .state-succeeded")).to_be_visible()
    # The refused approval's 400 is the only error either browser saw.
    assert all("status of 400" in e for e in page.console_errors), page.console_errors
    assert op.console_errors == []

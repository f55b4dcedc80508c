"""SQL lint findings on the pages: live in the editor, as a "Findings" block on the dry-run
review, and the acknowledgement a kind's policy requires of an approver, through the page's
form and through the API, recorded with the approval and in the audit log."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from blueprints_app.models import JobKind
from hxo_site import codes
from hxo_site.models import AuditEvent
from runs_app import services
from runs_app.models import Approval, Run, RunState
from tests.helpers import drain
from tests.runs_app.views.conftest import html
from tests.runs_app.views.test_plan_editor import form

pytestmark = pytest.mark.django_db

RISKY = ["UPDATE items SET note = 'x' WHERE id = 1", "DELETE FROM items"]


def risky_dry_run(operator: Any, statements: list[str] = RISKY) -> Run:
    document = {
        "name": "risky",
        "stages": [
            {
                "id": "migrate",
                "kind": "deploy.migrate",
                "partitioner": "by_sql_batch",
                "executor": "sql_migrate",
                "params": {"target": "t", "statements": statements},
            }
        ],
    }
    plan = services.plan_create(actor=operator, document=document)
    run = drain(services.run_start_dry_run(plan=plan, actor=operator))
    assert run.state == RunState.AWAITING_APPROVAL
    return run


def rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]


def test_the_editor_shows_a_finding_live_at_the_statements_field(
    client_for, operator, target
) -> None:
    stage = {
        "id:string": "m",
        "kind:string": "deploy.migrate",
        "partitioner:string": "by_sql_batch",
        "executor:string": "sql_migrate",
        "params.target:string": "t",
        "params.statements:blocks": "SELECT 1\n\nUPDATE items SET note = ''",
        "_sig": "deploy.migrate|by_sql_batch|sql_migrate",
    }
    body = html(client_for(operator).post("/plans/validate/", form([stage], name="m")))
    assert "The plan is valid, with 1 warning." in body
    assert '<p class="warning" data-code="sql_finding">' in body
    assert "high: UPDATE of items has no WHERE" in body


def test_the_review_shows_the_findings_and_the_acknowledgement_checkbox(
    client_for, operator, approver, target
) -> None:
    run = risky_dry_run(operator)
    body = html(client_for(approver).get(f"/runs/{run.pk}/"))
    review = body[body.index('id="h-review"') :]
    block = review[review.index('id="findings"') : review.index("</section>")]
    assert 'data-rule="update_without_where" data-severity="high"' in block
    assert "DELETE of items has no WHERE" in block and "DELETE FROM items" in block
    assert 'data-testid="findings-highest">highest: high' in block
    assert 'data-testid="acknowledge-findings"' in body


def test_approving_on_the_page_without_the_acknowledgement_is_refused(
    client_for, operator, approver, target
) -> None:
    run = risky_dry_run(operator)
    response = client_for(approver).post(f"/runs/{run.pk}/approve/", {"comment": "ok"})
    assert response.status_code == 400
    assert codes.FINDINGS_NOT_ACKNOWLEDGED in html(response)
    assert not Approval.objects.exists()
    assert Run.objects.get(pk=run.pk).state == RunState.AWAITING_APPROVAL
    assert AuditEvent.objects.filter(action=f"refused.{codes.FINDINGS_NOT_ACKNOWLEDGED}").exists()

    response = client_for(approver).post(
        f"/runs/{run.pk}/approve/",
        {"comment": "ok", "acknowledge_findings": "on", "digest": run.digest},
    )
    assert response.status_code == 302
    approval = Approval.objects.get()
    assert approval.acknowledged_findings == [
        {
            "stage": "migrate",
            "path": "params.statements[1]",
            "rule": "update_without_where",
            "message": "DELETE of items has no WHERE: it changes every row",
        }
    ]
    event = AuditEvent.objects.get(action="run.approve")
    assert event.detail["acknowledged_findings"] == approval.acknowledged_findings
    assert Run.objects.get(pk=run.pk).state == RunState.APPROVED
    assert rows(target) == 5  # the dry-run deleted nothing


def test_the_api_requires_acknowledge_findings_true(
    api_client_for, operator, approver, target
) -> None:
    run = risky_dry_run(operator)
    api = api_client_for(approver)
    response = api.post(f"/api/v1/runs/{run.pk}/approve/", {"comment": "ok"}, format="json")
    assert response.status_code == 400
    data = response.json()
    assert data["code"] == codes.FINDINGS_NOT_ACKNOWLEDGED
    assert data["errors"][0]["path"] == "acknowledge_findings"
    assert not Approval.objects.exists()
    # Not a boolean: refused by the body's shape, not taken as an acknowledgement.
    response = api.post(
        f"/api/v1/runs/{run.pk}/approve/", {"acknowledge_findings": "yes"}, format="json"
    )
    assert response.status_code == 400 and not Approval.objects.exists()
    response = api.post(
        f"/api/v1/runs/{run.pk}/approve/", {"acknowledge_findings": True}, format="json"
    )
    assert response.status_code == 200, response.content
    [approval] = response.json()["approvals"]
    assert [f["rule"] for f in approval["acknowledged_findings"]] == ["update_without_where"]


def test_no_acknowledgement_is_needed_without_high_findings_or_without_the_policy(
    api_client_for, operator, approver, target
) -> None:
    safe = risky_dry_run(operator, ["UPDATE items SET note = 'x' WHERE id = 1"])
    api = api_client_for(approver)
    assert api.post(f"/api/v1/runs/{safe.pk}/approve/", {}, format="json").status_code == 200
    assert Approval.objects.get(run=safe).acknowledged_findings == []

    JobKind.objects.filter(kind="deploy.migrate").update(require_findings_ack=False)
    risky = risky_dry_run(operator)
    assert api.post(f"/api/v1/runs/{risky.pk}/approve/", {}, format="json").status_code == 200


def test_deploy_migrate_requires_the_acknowledgement_by_default() -> None:
    assert JobKind.objects.get(kind="deploy.migrate").require_findings_ack is True
    assert JobKind.objects.get(kind="deploy.pack").require_findings_ack is False

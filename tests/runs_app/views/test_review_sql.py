"""The dry-run review of issue 14 §1 on the page and in the API: the change set and the SQL
(highlighted on the server, escaped, class-based CSS) before the decision, the decision form
bound to the digest it was rendered for (a stale one is refused), and `change_summary` in
`GET /api/v1/runs/{id}/`."""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

from hxo_site import codes
from hxo_site.models import AuditEvent
from runs_app import services
from runs_app.models import Approval, Run, RunState
from runs_app.templatetags.sql import highlight_sql, stylesheet
from tests.helpers import drain
from tests.runs_app.views.conftest import html
from tests.runs_app.views.test_sql_findings import risky_dry_run

pytestmark = pytest.mark.django_db

HOSTILE = "UPDATE items SET note = '<script>alert(1)</script>' WHERE id <= 2"
STATEMENTS = [HOSTILE, "DELETE FROM items WHERE id = 5"]


def migrate_dry_run(operator: Any, statements: list[str] = STATEMENTS) -> Run:
    """A dry-run of `statements` on the `target` SQLite database, awaiting approval."""
    return risky_dry_run(operator, statements)


def test_highlighted_sql_escapes_markup_and_carries_classes_not_styles() -> None:
    out = str(highlight_sql(HOSTILE, "sqlite"))

    assert "<script>" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert out.startswith('<div class="sql"><pre>')
    assert '<span class="k">UPDATE</span>' in out
    assert "style=" not in out
    pg = str(highlight_sql("SELECT now()::date", "postgresql"))
    assert '<span class="o">::</span>' in pg


def test_the_served_sql_stylesheet_is_pygments_output_scoped_to_the_sql_blocks() -> None:
    css = (Path(django_settings.BASE_DIR) / "static" / "css" / "sql.css").read_text()

    assert css == stylesheet()  # regenerate: python -m runs_app.templatetags.sql
    rules = [line for line in css.splitlines()[1:] if line.strip()]
    assert rules and all(line.startswith(".sql") for line in rules)


def test_the_review_shows_the_change_set_and_the_sql_before_the_decision(
    client_for, operator, approver, target
) -> None:
    run = migrate_dry_run(operator)
    body = html(client_for(approver).get(f"/runs/{run.pk}/"))

    digest_bar = body.index('data-testid="review-digest"')
    summary = body.index('data-testid="change-summary"')
    sql = body.index('data-testid="sql-migrate"')
    form = body.index('<form method="post" action="/runs/')
    assert digest_bar < summary < sql < form
    assert "3 rows changed" in body[digest_bar:summary]
    assert "Would change 3 rows in items" in body[summary:sql]
    block = body[sql:form]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in block and "<script>alert" not in body
    assert re.findall(r'data-testid="statement-rows">(\d+)<', block) == ["2", "1"]
    assert f'<input type="hidden" name="digest" value="{run.digest}">' in body[form:]
    assert 'href="/static/css/sql.css"' in body


def test_a_decision_on_another_digest_is_refused_on_the_page_and_records_nothing(
    client_for, operator, approver, target
) -> None:
    run = migrate_dry_run(operator)
    client = client_for(approver)

    stale = client.post(f"/runs/{run.pk}/approve/", {"comment": "ok", "digest": "0" * 64})
    missing = client.post(f"/runs/{run.pk}/reject/", {"comment": "no"})

    for response in (stale, missing):
        assert response.status_code == 409
        assert codes.STALE_REVIEW in html(response)
    assert not Approval.objects.exists()
    assert Run.objects.get(pk=run.pk).state == RunState.AWAITING_APPROVAL
    assert not AuditEvent.objects.filter(action__in=["run.approve", "run.reject"]).exists()
    ok = client.post(f"/runs/{run.pk}/approve/", {"comment": "ok", "digest": run.digest})
    assert ok.status_code == 302
    assert Approval.objects.get().digest == run.digest


def test_the_api_gives_the_change_summary_and_refuses_a_stale_digest(
    api_client_for, operator, approver, target
) -> None:
    run = migrate_dry_run(operator)
    api = api_client_for(approver)

    body = api.get(f"/api/v1/runs/{run.pk}/").json()
    summary = body["change_summary"]
    assert summary["totals"] == {"rows": 3}
    assert [s["rows"] for s in summary["stages"][0]["statements"]] == [2, 1]
    assert summary["stages"][0]["tables"] == ["items"]
    assert body["state"] == RunState.AWAITING_APPROVAL  # the old fields are all still there

    stale = api.post(f"/api/v1/runs/{run.pk}/approve/", {"digest": "f" * 64}, format="json")
    assert stale.status_code == 409
    assert stale.json()["code"] == codes.STALE_REVIEW
    assert stale.json()["errors"][0]["path"] == "digest"
    assert not Approval.objects.exists()
    bad = api.post(f"/api/v1/runs/{run.pk}/approve/", {"digest": 5}, format="json")
    assert bad.status_code == 400
    ok = api.post(f"/api/v1/runs/{run.pk}/approve/", {"digest": run.digest}, format="json")
    assert ok.status_code == 200 and ok.json()["state"] == RunState.APPROVED


def test_an_apply_run_has_no_change_summary_in_the_api(
    api_client_for, operator, approver, target
) -> None:
    run = migrate_dry_run(operator)
    services.run_approve(run=run, actor=approver)
    applied = drain(services.run_apply(plan=run.plan, dry_run_id=run.pk, actor=operator))

    body = api_client_for(operator).get(f"/api/v1/runs/{applied.pk}/").json()
    assert body["change_summary"] is None
    listed = api_client_for(operator).get("/api/v1/runs/").json()
    assert "change_summary" not in listed["results"][0]


def test_the_inbox_shows_waiting_time_requester_change_and_highest_finding_by_kind(
    client_for, operator, approver, target, test_kinds, tmp_path
) -> None:
    from tests.runs_app.testkinds import TEST_KIND, stage

    risky = migrate_dry_run(operator, ["UPDATE items SET note = 'x'"])  # no WHERE: high
    Run.objects.filter(pk=risky.pk).update(
        finished_at=risky.finished_at - datetime.timedelta(hours=3)
    )
    other_plan = services.plan_create(
        actor=operator,
        document={"name": "other", "stages": [stage("a", tmp_path, items=2, kind=TEST_KIND)]},
    )
    other = drain(services.run_start_dry_run(plan=other_plan, actor=operator))
    assert other.state == RunState.AWAITING_APPROVAL
    client = client_for(approver)

    body = html(client.get("/approvals/"))
    row = body[body.index(f'data-run="{risky.pk}"') :]
    row = row[: row.index("</tr>")]
    assert "5 rows changed" in row
    assert 'data-testid="inbox-highest">high<' in row
    assert "3\xa0hours" in row
    assert f"<td>{operator}</td>" in row
    assert f'data-run="{other.pk}"' in body

    only = html(client.get("/approvals/?kind=deploy.migrate"))
    assert f'data-run="{risky.pk}"' in only and f'data-run="{other.pk}"' not in only
    assert f'data-run="{risky.pk}"' not in html(client.get(f"/approvals/?kind={TEST_KIND}"))
    bad = client.get("/approvals/?kind=no.such.kind")
    assert bad.status_code == 400
    assert "kind" in html(bad)

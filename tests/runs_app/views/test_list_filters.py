"""One filter layer for the lists that both the dashboard and the API filter (issue 12 §5): the
same filter values list the same rows on the page and through the endpoint; and the plans
endpoint reads a fixed number of queries whatever the number of plans."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from hxo_site.models import AuditEvent
from runs_app import services
from runs_app.models import Plan
from tests.runs_app.testkinds import TEST_KIND, TEST_KIND_NOAPPROVAL, stage

pytestmark = pytest.mark.django_db


def page_ids(client: Any, path: str, params: dict[str, str], key: str) -> list[int]:
    response = client.get(path, params)
    assert response.status_code == 200
    return [row.pk for row in response.context[key]]


def api_ids(client: Any, path: str, params: dict[str, str]) -> list[int]:
    response = client.get(path, params)
    assert response.status_code == 200, response.json()
    return [row["id"] for row in response.json()["results"]]


def test_the_audit_page_and_the_api_list_the_same_events_for_the_same_filters(
    client_for, api_client_for, viewer, operator, approver, plan, dry_run, quick_plan
) -> None:
    services.run_approve(run=dry_run, actor=approver, comment="fine")
    page, api = client_for(viewer), api_client_for(viewer)
    # The page names the user `actor`, the API `user`; every other parameter is the same.
    cases = [
        ({}, {}),
        ({"actor": operator.username}, {"user": operator.username}),
        ({"actor": approver.username}, {"user": approver.username}),
        # Usernames are case-sensitive: the API's exact match, now the page's too.
        ({"actor": approver.username.upper()}, {"user": approver.username.upper()}),
        ({"action": "plan.create"}, {"action": "plan.create"}),
        ({"action": "run.approve"}, {"action": "run.approve"}),
        ({"object_type": "plan"}, {"object_type": "plan"}),
        (
            {"object_type": "run", "object_id": str(dry_run.pk)},
            {"object_type": "run", "object_id": str(dry_run.pk)},
        ),
    ]
    for page_params, api_params in cases:
        shown = page_ids(page, "/audit/", page_params, "events")
        listed = api_ids(api, "/api/v1/audit/", api_params)
        assert shown == listed, (page_params, api_params)
    every = api_ids(api, "/api/v1/audit/", {})
    assert every == list(AuditEvent.objects.order_by("-at", "-id").values_list("pk", flat=True))
    assert len(api_ids(api, "/api/v1/audit/", {"action": "plan.create"})) == 2
    assert api_ids(api, "/api/v1/audit/", {"user": approver.username.upper()}) == []
    approvals = api_ids(api, "/api/v1/audit/", {"user": approver.username})
    assert [AuditEvent.objects.get(pk=pk).action for pk in approvals] == ["run.approve"]


def test_the_runs_page_and_the_api_list_the_same_runs_for_the_same_filters(
    client_for, api_client_for, viewer, operator, approver, plan, dry_run, applied, quick_plan
) -> None:
    other = services.run_apply(plan=quick_plan, actor=operator)
    page, api = client_for(viewer), api_client_for(viewer)
    cases: list[dict[str, str]] = [
        {},
        {"plan": str(plan.pk)},
        {"plan": str(quick_plan.pk)},
        {"mode": "dry_run"},
        {"mode": "apply"},
        {"state": dry_run.state},
        {"state": "failed"},
        {"plan": str(plan.pk), "mode": "apply"},
    ]
    for params in cases:
        assert page_ids(page, "/runs/", params, "runs") == api_ids(api, "/api/v1/runs/", params)
    assert api_ids(api, "/api/v1/runs/", {}) == [other.pk, applied.pk, dry_run.pk]
    assert api_ids(api, "/api/v1/runs/", {"plan": str(plan.pk), "mode": "apply"}) == [applied.pk]


def make_plans(n: int, operator: Any, tmp_path: Path) -> None:
    """`n` plans, each with two revisions and a run (dry-run or apply)."""
    for i in range(n):
        kind = TEST_KIND if i % 2 else TEST_KIND_NOAPPROVAL
        document = {"name": f"p{i}", "stages": [stage("a", tmp_path, items=1, kind=kind)]}
        saved = services.plan_create(actor=operator, document=document)
        services.plan_update(plan=saved, actor=operator, document={**document, "name": f"q{i}"})
        if i % 2:
            services.run_start_dry_run(plan=saved, actor=operator)
        else:
            services.run_apply(plan=saved, actor=operator)


def test_the_plans_endpoint_reads_as_many_queries_for_30_plans_as_for_2(
    test_kinds, api_client_for, operator, viewer, tmp_path: Path
) -> None:
    api = api_client_for(viewer)
    counts = []
    for n in (2, 30):
        make_plans(n - Plan.objects.count(), operator, tmp_path)
        with CaptureQueriesContext(connection) as queries:
            body = api.get("/api/v1/plans/").json()
        assert body["count"] == n and len(body["results"]) == n
        assert all(p["revision"] == 2 and p["name"].startswith("q") for p in body["results"])
        latest = {p.pk: p.latest_revision for p in Plan.objects.all()}
        for row in body["results"]:
            assert row["digest"] == latest[row["id"]].digest
            assert row["stages"] == latest[row["id"]].stages
            assert row["kind_versions"] == latest[row["id"]].kind_versions
        counts.append(len(queries))
    assert counts[0] == counts[1], counts

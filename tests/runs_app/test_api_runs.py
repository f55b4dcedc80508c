"""REST API v1 for plans and runs: shapes, refusal codes, and that refusals change nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hxo_site.models import AuditEvent
from runs_app.models import Approval, Partition, Plan, PlanRevision, Run
from tests.helpers import drain
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, stage

pytestmark = pytest.mark.django_db(transaction=True)


def snapshot() -> tuple[int, ...]:
    return (
        Plan.objects.count(),
        PlanRevision.objects.count(),
        Run.objects.count(),
        Partition.objects.count(),
        Approval.objects.count(),
    )


@pytest.fixture
def clients(api_client_for, admiral, operator, approver, viewer, nobody) -> dict[str, Any]:
    return {
        name: api_client_for(user)
        for name, user in {
            "admiral": admiral,
            "operator": operator,
            "approver": approver,
            "viewer": viewer,
            "nobody": nobody,
        }.items()
    }


def create_plan(client, tmp_path: Path, **kw: Any) -> dict[str, Any]:
    body = {"name": "nightly", "description": "d", "stages": [stage("a", tmp_path, **kw)]}
    response = client.post("/api/v1/plans/", body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def test_creating_a_plan_returns_its_first_revision(test_kinds, clients, tmp_path) -> None:
    plan = create_plan(clients["operator"], tmp_path)
    assert plan["revision"] == 1 and len(plan["digest"]) == 64
    assert plan["stages"][0]["id"] == "a"
    revisions = clients["viewer"].get(f"/api/v1/plans/{plan['id']}/revisions/").json()
    assert revisions["count"] == 1


def test_an_invalid_plan_is_refused_with_field_paths_and_nothing_stored(
    test_kinds, clients, tmp_path
) -> None:
    before = snapshot()
    bad = stage("a", tmp_path)
    bad["partitioner"] = "by_sql_batch"
    response = clients["operator"].post(
        "/api/v1/plans/", {"name": "x", "stages": [bad]}, format="json"
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "validation_failed"
    assert any(
        e["path"] == "stages[0].partitioner" and e["code"] == "partitioner_not_allowed"
        for e in body["errors"]
    )
    assert snapshot() == before


def test_editing_a_plan_makes_a_new_revision(test_kinds, clients, tmp_path) -> None:
    plan = create_plan(clients["operator"], tmp_path)
    response = clients["operator"].patch(
        f"/api/v1/plans/{plan['id']}/", {"description": "changed"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["revision"] == 2
    assert response.json()["digest"] != plan["digest"]


def test_viewer_cannot_write_plans_or_start_runs(test_kinds, clients, tmp_path) -> None:
    plan = create_plan(clients["operator"], tmp_path)
    before = snapshot()
    assert clients["viewer"].post("/api/v1/plans/", {}, format="json").status_code == 403
    response = clients["viewer"].post(f"/api/v1/plans/{plan['id']}/dry-run/")
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert clients["nobody"].get("/api/v1/runs/").status_code == 403
    assert snapshot() == before


def test_dry_run_honours_the_idempotency_key(test_kinds, clients, tmp_path) -> None:
    plan = create_plan(clients["operator"], tmp_path)
    url = f"/api/v1/plans/{plan['id']}/dry-run/"
    first = clients["operator"].post(url, HTTP_IDEMPOTENCY_KEY="k-1")
    second = clients["operator"].post(url, HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert Run.objects.count() == 1


def test_apply_refusals_are_409_with_codes_and_change_nothing(
    test_kinds, clients, tmp_path
) -> None:
    plan = create_plan(clients["operator"], tmp_path, items=2)
    apply_url = f"/api/v1/plans/{plan['id']}/apply/"
    before = snapshot()
    response = clients["operator"].post(apply_url, {}, format="json")
    assert response.status_code == 409
    assert response.json()["code"] == "dry_run_required"
    assert snapshot() == before

    dry = clients["operator"].post(f"/api/v1/plans/{plan['id']}/dry-run/").json()
    drain(dry["id"])
    before = snapshot()
    response = clients["operator"].post(apply_url, {"dry_run": dry["id"]}, format="json")
    assert response.status_code == 409
    assert response.json()["code"] == "dry_run_not_approved"
    assert snapshot() == before

    approve = clients["approver"].post(f"/api/v1/runs/{dry['id']}/approve/", {"comment": "ok"})
    assert approve.status_code == 200 and approve.json()["state"] == "approved"
    (tmp_path / "source.txt").write_text("changed")
    # Changed files are found by the worker that partitions the apply: 202 at once, then
    # the run fails with `stale_plan` and the diff in its `error`, and nothing ran.
    response = clients["operator"].post(apply_url, {"dry_run": dry["id"]}, format="json")
    assert response.status_code == 202
    assert response.json()["state"] == "partitioning"
    drain(response.json()["id"])
    run = clients["operator"].get(f"/api/v1/runs/{response.json()['id']}/").json()
    assert run["state"] == "failed" and run["stages"] == []
    assert run["error"]["code"] == "stale_plan"
    assert run["error"]["diff"]["stages"][0]["id"] == "a"
    assert not Partition.objects.filter(run_id=run["id"]).exists()


def test_force_merge_is_required_for_a_non_idempotent_stage(test_kinds, clients, tmp_path) -> None:
    plan = create_plan(
        clients["operator"], tmp_path, kind=TEST_KIND_NOAPPROVAL, executor="test_append_once"
    )
    before = snapshot()
    response = clients["operator"].post(f"/api/v1/plans/{plan['id']}/apply/", {}, format="json")
    assert response.status_code == 403
    assert response.json()["code"] == "force_merge_required"
    assert snapshot() == before
    response = clients["admiral"].post(f"/api/v1/plans/{plan['id']}/apply/", {}, format="json")
    assert response.status_code == 202


def test_self_approval_is_refused_through_the_api(test_kinds, clients, tmp_path) -> None:
    plan = create_plan(clients["admiral"], tmp_path)
    dry = clients["admiral"].post(f"/api/v1/plans/{plan['id']}/dry-run/").json()
    drain(dry["id"])
    before = snapshot()
    response = clients["admiral"].post(f"/api/v1/runs/{dry['id']}/approve/", {})
    assert response.status_code == 403
    assert response.json()["code"] == "self_approval_forbidden"
    assert snapshot() == before
    assert clients["operator"].post(f"/api/v1/runs/{dry['id']}/approve/").status_code == 403


def test_full_run_has_progress_partitions_receipt_and_diff(test_kinds, clients, tmp_path) -> None:
    plan = create_plan(clients["operator"], tmp_path, items=3, kind=TEST_KIND_NOAPPROVAL)
    run = clients["operator"].post(f"/api/v1/plans/{plan['id']}/apply/", format="json").json()
    assert run["mode"] == "apply"
    drain(run["id"])
    detail = clients["viewer"].get(f"/api/v1/runs/{run['id']}/").json()
    assert detail["state"] == "succeeded"
    stage_info = detail["stages"][0]
    assert stage_info["counts"]["succeeded"] == 3 and stage_info["counts"]["total"] == 3
    assert stage_info["slo_ms"] == 60000 and stage_info["slo_breached"] is False
    parts = clients["viewer"].get(f"/api/v1/runs/{run['id']}/partitions/?state=succeeded").json()
    assert parts["count"] == 3
    assert {"stage", "index", "inputs", "cas_id", "state", "attempts", "output"} <= set(
        parts["results"][0]
    )
    receipt = clients["viewer"].get(f"/api/v1/runs/{run['id']}/receipt/").json()
    assert receipt["verified"] is True
    assert receipt["merkle_root"] == detail["merkle_root"]
    assert len(receipt["stages"][0]["leaves"]) == 3

    # A stored result altered after the fact no longer verifies.
    p = Partition.objects.filter(run_id=run["id"]).first()
    p.output = {**p.output, "item": 999}
    p.save()
    assert clients["viewer"].get(f"/api/v1/runs/{run['id']}/receipt/").json()["verified"] is False

    second = clients["operator"].post(f"/api/v1/plans/{plan['id']}/apply/", format="json").json()
    drain(second["id"])
    diff = clients["viewer"].get(f"/api/v1/runs/{second['id']}/diff/?against={run['id']}").json()
    assert diff["same_digest"] is True
    assert diff["stages"][0]["partitions"] == {"run": 3, "against": 3}


def test_abort_and_replay_need_their_capabilities(test_kinds, clients, tmp_path, settings) -> None:
    settings.HXO_MAX_ATTEMPTS = 1
    plan = create_plan(
        clients["operator"], tmp_path, items=2, kind=TEST_KIND_NOAPPROVAL, fail={"0": 1}
    )
    run = clients["operator"].post(f"/api/v1/plans/{plan['id']}/apply/", format="json").json()
    drain(run["id"])
    assert clients["approver"].post(f"/api/v1/runs/{run['id']}/replay/").status_code == 403
    replay = clients["operator"].post(f"/api/v1/runs/{run['id']}/replay/")
    assert replay.status_code == 201
    assert replay.json()["parent"] == run["id"]
    abort = clients["operator"].post(f"/api/v1/runs/{replay.json()['id']}/abort/")
    assert abort.status_code == 200 and abort.json()["state"] == "aborted"
    again = clients["operator"].post(f"/api/v1/runs/{replay.json()['id']}/abort/")
    assert again.status_code == 409 and again.json()["code"] == "invalid_state"


def test_audit_needs_the_audit_capability(test_kinds, clients, tmp_path) -> None:
    create_plan(clients["operator"], tmp_path)
    assert clients["operator"].get("/api/v1/audit/").status_code == 403
    events = clients["viewer"].get("/api/v1/audit/?action=plan.").json()
    assert events["count"] == 1
    assert events["results"][0]["actor_name"] == "otto"
    assert AuditEvent.objects.filter(action="plan.create").count() == 1

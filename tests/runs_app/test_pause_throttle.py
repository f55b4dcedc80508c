"""Pause, resume and live throttle of a run: the API's answers and refusals, what a claim
obeys, SLO clocks that leave paused time out, audit events and `manage.py hxo`.

The cluster tests (real django-q2 workers) are in test_pause_throttle_cluster.py."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from hxo_site.models import AuditEvent
from runs_app import services, tasks
from runs_app.engine import claims, progress
from runs_app.models import ClaimLog, Partition, Run, RunStage, RunState
from tests.helpers import drain, partitioned
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, effects, stage

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def clients(api_client_for, operator, approver, viewer) -> dict[str, Any]:
    return {
        "operator": api_client_for(operator),
        "approver": api_client_for(approver),
        "viewer": api_client_for(viewer),
    }


def running_run(operator, tmp_path: Path, items: int = 4) -> Run:
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "long",
            "stages": [stage("a", tmp_path, items=items, kind=TEST_KIND_NOAPPROVAL)],
        },
    )
    run = partitioned(services.run_apply(plan=plan, actor=operator))
    assert run.state == RunState.RUNNING
    return run


def test_a_paused_run_claims_nothing_and_resumes_to_every_effect_once(
    test_kinds, operator, tmp_path
) -> None:
    run = running_run(operator, tmp_path, items=4)
    [held] = claims.claim_batch(run.pk, "worker-a", 1)
    services.run_pause(run=run, actor=operator)
    # Paused: no drainer claims, whatever it asks for; nothing is claimable or due.
    assert claims.claim_batch(run.pk, "worker-b", 10) == []
    assert claims.has_claimable(run.pk) is False
    assert claims.next_due(run.pk) is None
    assert ClaimLog.objects.filter(partition__run=run).count() == 1
    # The partition already running is still held and may finish (its fence is unchanged).
    assert Partition.objects.get(pk=held.partition_id).fence == held.fence
    # A drainer woken while paused leaves at once, having run nothing.
    assert tasks.drain(run.pk, budget_s=5) == {"run": run.pk, "partitions": 0}
    assert ClaimLog.objects.filter(partition__run=run).count() == 1
    run.refresh_from_db()
    assert run.state == RunState.RUNNING and run.is_paused

    services.run_resume(run=run, actor=operator)
    # worker-a never runs its partition: its lease runs out and a drainer retries it.
    Partition.objects.filter(pk=held.partition_id).update(
        lease_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    run = drain(run)
    assert run.state == RunState.SUCCEEDED and not run.is_paused
    assert sorted(effects(tmp_path, "a")) == [0, 1, 2, 3]
    actions = list(
        AuditEvent.objects.filter(object_id=str(run.pk), action__in=["run.pause", "run.resume"])
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == ["run.pause", "run.resume"]
    [pause] = run.pauses
    assert pause["by"] == operator.username and pause["to"] is not None


def test_a_claim_that_read_the_run_before_a_pause_is_taken_back(
    test_kinds, operator, tmp_path, monkeypatch
) -> None:
    """The race the run-row compare-and-swap closes: a drainer read the run unpaused, then
    the pause committed; its claim must not commit (old code: it did)."""
    run = running_run(operator, tmp_path)
    real = claims.Throttle.of

    def read_then_pause(run_id: int) -> Any:
        seen = real(run_id)
        # The pause lands between the claim's read of the run and its writes.
        Run.objects.filter(pk=run_id).update(paused_at=timezone.now())
        return seen

    monkeypatch.setattr(claims.Throttle, "of", staticmethod(read_then_pause))
    assert claims.claim_batch(run.pk, "worker-a", 4) == []
    assert ClaimLog.objects.filter(partition__run=run).count() == 0
    assert set(Partition.objects.filter(run=run).values_list("state", flat=True)) == {"pending"}
    assert run.run_stages.get().pending == 4


def test_throttle_to_one_partition_per_interval_spaces_the_claims(
    test_kinds, operator, tmp_path, settings
) -> None:
    settings.HXO_MAX_CONCURRENCY = 4
    run = running_run(operator, tmp_path, items=5)
    services.run_throttle(run=run, actor=operator, concurrency=1, min_interval_ms=200)
    [first] = claims.claim_batch(run.pk, "worker-a", 10)  # one, whatever the limit asked
    assert claims.claim_batch(run.pk, "worker-b", 10) == []  # within the interval
    run.refresh_from_db()
    assert claims.next_due(run.pk) == run.last_claim_at + dt.timedelta(milliseconds=200)
    # worker-a never runs it: its lease runs out and the drainer retries it (a sixth claim).
    Partition.objects.filter(pk=first.partition_id).update(
        lease_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    run = drain(run)
    assert run.state == RunState.SUCCEEDED
    assert sorted(effects(tmp_path, "a")) == [0, 1, 2, 3, 4]
    stamps = sorted(
        ClaimLog.objects.filter(partition__run=run).values_list("claimed_at", flat=True)
    )
    assert len(stamps) == 6
    gaps = [(b - a).total_seconds() * 1000 for a, b in itertools.pairwise(stamps)]
    assert min(gaps) >= 200, gaps


def test_concurrency_bounds_the_drainers_holding_partitions(
    test_kinds, operator, tmp_path, settings
) -> None:
    settings.HXO_MAX_CONCURRENCY = 4
    run = running_run(operator, tmp_path, items=6)
    assert claims.claim_batch(run.pk, "worker-a", 1)
    assert claims.claim_batch(run.pk, "worker-b", 1)
    services.run_throttle(run=run, actor=operator, concurrency=2)
    assert claims.claim_batch(run.pk, "worker-c", 1) == []  # two drainers hold partitions
    assert claims.claim_batch(run.pk, "worker-a", 1)  # a holder may claim on
    services.run_throttle(run=run, actor=operator, concurrency=None)  # back to the cap
    assert claims.claim_batch(run.pk, "worker-c", 1)


def test_a_drainer_over_the_concurrency_leaves_at_once_instead_of_polling(
    test_kinds, operator, tmp_path, monkeypatch
) -> None:
    """The partition task drains the run it partitioned besides the drainers it woke, so a
    run can have one drainer more than its concurrency: that one finds every slot taken and
    leaves after one empty claim (before, it polled every 50 ms until its budget ran out)."""
    run = running_run(operator, tmp_path, items=6)
    services.run_throttle(run=run, actor=operator, concurrency=1)
    [held] = claims.claim_batch(run.pk, "worker-a", 1)
    attempts: list[str] = []
    real = claims.claim_batch

    def counted(run_id, owner, limit=1, sizer=None):
        attempts.append(owner)
        return real(run_id, owner, limit, sizer)

    monkeypatch.setattr(claims, "claim_batch", counted)
    assert claims.crowded_out(run.pk, "worker-b") and not claims.crowded_out(run.pk, "worker-a")
    assert tasks.drain(run.pk, budget_s=30)["partitions"] == 0
    assert len(attempts) == 1
    assert Partition.objects.filter(run=run, state="pending").count() == 5
    # Once the holder's lease expires (it died), a drainer drains the rest: every effect once.
    Partition.objects.filter(pk=held.partition_id).update(
        lease_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    assert tasks.drain(run.pk, budget_s=30)["partitions"] == 6
    assert sorted(effects(tmp_path, "a")) == list(range(6))


def test_slo_clock_leaves_paused_time_out(test_kinds, operator, tmp_path) -> None:
    run = running_run(operator, tmp_path)
    stage_row = run.run_stages.get()
    start = timezone.now() - dt.timedelta(seconds=100)
    RunStage.objects.filter(pk=stage_row.pk).update(started_at=start, slo_ms=70_000)
    # Paused for 40 s of those 100 s.
    Run.objects.filter(pk=run.pk).update(
        pauses=[
            {
                "from": (start + dt.timedelta(seconds=10)).isoformat(),
                "to": (start + dt.timedelta(seconds=50)).isoformat(),
                "by": "otto",
            }
        ]
    )
    stage_row = RunStage.objects.get(pk=stage_row.pk)
    elapsed = stage_row.active_ms()
    assert 59_000 <= elapsed <= 61_000
    # Finishing it now: 60 s of 70 s, not breached (old code: 100 s, breached).
    Partition.objects.filter(run=run).update(state="succeeded")
    RunStage.objects.filter(pk=stage_row.pk).update(pending=0, succeeded=4)
    progress.finish_stage(stage_row)
    stage_row.refresh_from_db()
    assert stage_row.slo_breached is False
    assert not AuditEvent.objects.filter(action="stage.slo_breached").exists()


def test_an_open_pause_stops_the_clock_and_ends_when_the_run_is_aborted(
    test_kinds, operator, tmp_path
) -> None:
    run = running_run(operator, tmp_path)
    stage_row = run.run_stages.get()
    start = timezone.now() - dt.timedelta(seconds=30)
    RunStage.objects.filter(pk=stage_row.pk).update(started_at=start)
    Run.objects.filter(pk=run.pk).update(
        paused_at=start + dt.timedelta(seconds=10),
        pauses=[{"from": (start + dt.timedelta(seconds=10)).isoformat(), "to": None, "by": ""}],
    )
    assert 9_000 <= RunStage.objects.get(pk=stage_row.pk).active_ms() <= 11_000
    services.run_abort(run=Run.objects.get(pk=run.pk), actor=operator)
    run.refresh_from_db()
    assert run.state == RunState.ABORTED and run.paused_at is None
    assert run.pauses[0]["to"] is not None


# --- API --------------------------------------------------------------------------------------


def test_api_pause_resume_and_throttle_answer_the_run(
    test_kinds, clients, operator, tmp_path, settings
) -> None:
    settings.HXO_MAX_CONCURRENCY = 4
    run = running_run(operator, tmp_path)
    api = clients["operator"]
    paused = api.post(f"/api/v1/runs/{run.pk}/pause/")
    assert paused.status_code == 200, paused.json()
    body = paused.json()
    # PRODUCT.md: `running (⇄ paused)`: the API names the state; the stored one stays running.
    assert body["state"] == "paused" and body["paused"] is True and body["paused_at"]
    assert Run.objects.get(pk=run.pk).state == "running"
    assert body["pauses"][0]["by"] == operator.username
    again = api.post(f"/api/v1/runs/{run.pk}/pause/")
    assert again.status_code == 409 and again.json()["code"] == "already_paused"
    throttled = api.post(
        f"/api/v1/runs/{run.pk}/throttle/",
        {"concurrency": 1, "min_interval_ms": 250},
        format="json",
    )
    assert throttled.status_code == 200, throttled.json()
    assert throttled.json()["throttle"] == {
        "concurrency": 1,
        "effective_concurrency": 1,
        "max_concurrency": 4,
        "min_interval_ms": 250,
    }
    resumed = api.post(f"/api/v1/runs/{run.pk}/resume/")
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    assert resumed.json()["state"] == "running"
    assert resumed.json()["paused_ms"] >= 0
    not_paused = api.post(f"/api/v1/runs/{run.pk}/resume/")
    assert not_paused.status_code == 409 and not_paused.json()["code"] == "not_paused"
    audit = AuditEvent.objects.get(action="run.throttle", object_id=str(run.pk))
    assert audit.before == {"concurrency": None, "min_interval_ms": 0}
    assert audit.after == {"concurrency": 1, "min_interval_ms": 250}


def test_api_refuses_pausing_a_finished_run_and_users_without_the_capability(
    test_kinds, clients, operator, tmp_path
) -> None:
    run = running_run(operator, tmp_path)
    for action in ("pause", "resume", "throttle"):
        denied = clients["viewer"].post(f"/api/v1/runs/{run.pk}/{action}/", {}, format="json")
        assert denied.status_code == 403, (action, denied.json())
        denied = clients["approver"].post(f"/api/v1/runs/{run.pk}/{action}/", {}, format="json")
        assert denied.status_code == 403, (action, denied.json())
    run = drain(run)
    assert run.state == RunState.SUCCEEDED
    for action, body in (("pause", {}), ("resume", {}), ("throttle", {"concurrency": 1})):
        answer = clients["operator"].post(f"/api/v1/runs/{run.pk}/{action}/", body, format="json")
        assert answer.status_code == 409, (action, answer.json())
        assert answer.json()["code"] == "invalid_state"
    assert clients["operator"].post("/api/v1/runs/999999/pause/").status_code == 404
    run.refresh_from_db()
    assert run.paused_at is None and run.max_concurrency is None
    assert not AuditEvent.objects.filter(action__in=["run.pause", "run.throttle"]).exists()


@pytest.mark.parametrize(
    ("body", "path", "code"),
    [
        ({"concurrency": 0}, "concurrency", "invalid_value"),
        ({"concurrency": 5}, "concurrency", "invalid_value"),  # over HXO_MAX_CONCURRENCY
        ({"concurrency": "2"}, "concurrency", "invalid_type"),
        ({"concurrency": True}, "concurrency", "invalid_type"),
        ({"concurrency": 1.5}, "concurrency", "invalid_type"),
        ({"min_interval_ms": -1}, "min_interval_ms", "invalid_value"),
        ({"min_interval_ms": 60_001}, "min_interval_ms", "invalid_value"),
        ({"min_interval_ms": None}, "min_interval_ms", None),
        ({"min_interval_ms": 10**30}, "min_interval_ms", "invalid_value"),
        ({"speed": 3}, "speed", "unknown_field"),
        ({}, "", "required"),
    ],
)
def test_api_refuses_a_bad_throttle_with_its_field_path(
    test_kinds, clients, operator, tmp_path, settings, body, path, code
) -> None:
    settings.HXO_MAX_CONCURRENCY = 4
    run = running_run(operator, tmp_path)
    answer = clients["operator"].post(f"/api/v1/runs/{run.pk}/throttle/", body, format="json")
    assert answer.status_code == 400, answer.json()
    errors = answer.json()["errors"]
    assert any(e["path"] == path and (code is None or e["code"] == code) for e in errors), errors
    run.refresh_from_db()
    assert run.max_concurrency is None and run.min_interval_ms == 0


def test_api_rejects_a_body_that_is_not_an_object(test_kinds, clients, operator, tmp_path):
    run = running_run(operator, tmp_path)
    for body in ([], "x", None):
        answer = clients["operator"].post(f"/api/v1/runs/{run.pk}/throttle/", body, format="json")
        assert answer.status_code == 400, answer.content
    answer = clients["operator"].post(f"/api/v1/runs/{run.pk}/pause/", {"why": "x"}, format="json")
    assert answer.status_code == 400 and answer.json()["code"] == "unknown_field"


# --- manage.py hxo ------------------------------------------------------------------------------


def test_manage_py_hxo_pauses_throttles_and_resumes(test_kinds, operator, tmp_path, capsys):
    run = running_run(operator, tmp_path)
    call_command("hxo", "--user", operator.username, "pause", str(run.pk))
    assert capsys.readouterr().out.strip() == f"run {run.pk} paused"
    call_command(
        "hxo", "--user", operator.username, "throttle", str(run.pk), "--concurrency", "1",
        "--min-interval-ms", "100",
    )  # fmt: skip
    assert "concurrency 1 min_interval_ms 100" in capsys.readouterr().out
    call_command("hxo", "--user", operator.username, "status", str(run.pk))
    assert f"run {run.pk} (apply) paused" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        call_command("hxo", "--user", operator.username, "pause", str(run.pk))
    assert exit_.value.code == 2
    assert "refused (already_paused)" in capsys.readouterr().err
    call_command("hxo", "--user", operator.username, "resume", str(run.pk))
    assert capsys.readouterr().out.strip() == f"run {run.pk} running resumed"
    run.refresh_from_db()
    assert run.paused_at is None and run.max_concurrency == 1 and run.min_interval_ms == 100


def test_runs_are_listed_by_their_public_state_paused_apart_from_running(
    test_kinds, clients, operator, tmp_path
) -> None:
    """`?state=paused` lists the paused running runs and `?state=running` the others, in the API
    and on the dashboard's run list, which shows the paused badge."""
    paused_run = running_run(operator, tmp_path / "a")
    other = running_run(operator, tmp_path / "b")
    api = clients["operator"]
    assert api.post(f"/api/v1/runs/{paused_run.pk}/pause/").status_code == 200

    def ids(state: str) -> set[int]:
        answer = api.get(f"/api/v1/runs/?state={state}")
        assert answer.status_code == 200, answer.json()
        return {r["id"] for r in answer.json()["results"]}

    assert ids("paused") == {paused_run.pk}
    assert ids("running") == {other.pk}
    browser = Client()
    browser.force_login(operator)
    page = browser.get("/runs/?state=paused")
    assert page.status_code == 200
    html = page.content.decode()
    assert f"#{paused_run.pk}" in html and f"#{other.pk}" not in html
    assert 'class="badge state-paused"' in html
    unknown = api.get("/api/v1/runs/?state=sleeping")
    assert unknown.status_code == 400 and "paused" in str(unknown.json())

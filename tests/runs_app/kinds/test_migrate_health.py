"""Database health throttling of deploy.migrate (runs_app.kinds.dbhealth, runs_app.engine.health).

The PostgreSQL tests hold a real long transaction and a real lock wait on a scratch target
database from other connections, run a backfill apply through the engine with the checks on,
and count the effect at the target: nothing applied while held, every row exactly once after.
Replication lag cannot be made real without a replica: its query runs on this primary (no
replicas: healthy).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from django.test import Client

from blueprints_app.registry import ComponentError
from hxo_site.models import AuditEvent
from runs_app import services, tasks
from runs_app.engine.health import ACTION_RESUMED, ACTION_WAIT
from runs_app.kinds import dbhealth
from runs_app.models import Partition, PartitionLog, Run, RunStage, RunState
from runs_app.targets import connect, get_target
from tests.helpers import drain

pytestmark = pytest.mark.django_db(transaction=True)

ROWS = 20
BATCH = 5


def document(target: str, health: Any, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "target": target,
        "backfill": {
            "sql": "UPDATE items SET n = n + 1 WHERE id >= :start AND id < :end",
            "table": "items",
            "key_column": "id",
            "batch_size": BATCH,
        },
        **extra,
    }
    if health is not None:
        params["health"] = health
    return {
        "name": f"health-{uuid.uuid4().hex[:6]}",
        "stages": [
            {
                "id": "backfill",
                "kind": "deploy.migrate",
                "partitioner": "by_sql_batch",
                "executor": "sql_migrate",
                "params": params,
            }
        ],
    }


def deadline_poll(check, what: str, timeout_s: float = 20) -> Any:
    """Poll `check()` until it returns something truthy (no fixed sleeps in assertions)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s: {what}")


@pytest.fixture
def items(pg_target: str) -> str:
    with psycopg.connect(pg_target, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id integer PRIMARY KEY, n integer NOT NULL DEFAULT 0)")
        conn.execute(f"INSERT INTO items (id) SELECT g FROM generate_series(1, {ROWS}) g")
    return pg_target


def counts_at_target(url: str) -> dict[int, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        return dict(conn.execute("SELECT id, n FROM items ORDER BY id").fetchall())


def approved_apply(doc: dict[str, Any], operator, approver) -> tuple[Run, Run]:
    """A plan's dry-run drained and approved, and its apply started (not drained)."""
    plan = services.plan_create(actor=operator, document=doc)
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    assert dry.state == RunState.AWAITING_APPROVAL
    services.run_approve(run=dry, actor=approver, comment="ok", acknowledge_findings=True)
    return dry, services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk)


def assert_held_then_completes(run: Run, url: str, client, user, fragment: str, release) -> None:
    """The apply claims, finds the target unhealthy and applies nothing; the reason is on the
    stage (API and page); after `release()` the run finishes with each row applied once."""
    tasks.drain(run.pk, budget_s=1.5)
    run.refresh_from_db()
    assert run.state == RunState.RUNNING
    # Nothing applied at the target while it is unhealthy, and no batch spent an attempt.
    assert counts_at_target(url) == dict.fromkeys(range(1, ROWS + 1), 0)
    parts = Partition.objects.filter(run=run)
    assert parts.count() == ROWS // BATCH
    assert set(parts.values_list("state", flat=True)) == {"pending"}
    assert set(parts.values_list("attempts", flat=True)) == {0}
    stage = RunStage.objects.get(run=run)
    assert (stage.pending, stage.running, stage.failed) == (ROWS // BATCH, 0, 0)

    body = client.get(f"/api/v1/runs/{run.pk}/").json()
    wait = body["stages"][0]["health_wait"]
    assert wait is not None, body["stages"][0]
    assert wait["reason"].startswith("waiting: ")
    assert fragment in wait["reason"] and "on target 'pg'" in wait["reason"]
    assert wait["since"] and wait["target"] == "pg" and wait["checks"]
    browser = Client()
    browser.force_login(user)
    page = browser.get(f"/runs/{run.pk}/")
    assert page.status_code == 200
    assert 'data-testid="stage-health-wait"' in page.content.decode()
    assert fragment in page.content.decode()
    assert AuditEvent.objects.filter(action=ACTION_WAIT, object_id=str(run.pk)).count() == 1
    assert PartitionLog.objects.filter(partition__run=run, text__contains="waiting: ").exists()

    release()
    drain(run, deadline_s=60)
    assert run.state == RunState.SUCCEEDED
    assert counts_at_target(url) == dict.fromkeys(range(1, ROWS + 1), 1)
    assert set(Partition.objects.filter(run=run).values_list("attempts", flat=True)) == {1}
    with connect("pg") as conn:
        intervals = conn.execute(
            "SELECT key_first, key_last FROM hxo_ledger_intervals ORDER BY key_first"
        ).fetchall()
    assert [tuple(r) for r in intervals] == [(i, i + BATCH - 1) for i in range(1, ROWS + 1, BATCH)]
    stage.refresh_from_db()
    assert stage.health_wait is None
    assert client.get(f"/api/v1/runs/{run.pk}/").json()["stages"][0]["health_wait"] is None
    assert AuditEvent.objects.filter(action=ACTION_RESUMED, object_id=str(run.pk)).count() == 1


@pytest.mark.postgres
def test_a_long_transaction_holds_the_stage_until_it_ends(
    items, operator, approver, api_client_for
):
    doc = document("pg", {"max_transaction_age_s": 1, "recheck_ms": 200})
    _dry, run = approved_apply(doc, operator, approver)
    holder = psycopg.connect(items)  # not autocommit: its first statement opens a transaction
    holder.execute("SELECT count(*) FROM items")
    with psycopg.connect(items, autocommit=True) as probe:
        deadline_poll(
            lambda: probe.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s"
                " AND xact_start < now() - interval '1 second'",
                (holder.info.backend_pid,),
            ).fetchone(),
            "the holder's transaction is older than 1 s",
        )

    def release() -> None:
        holder.rollback()
        holder.close()

    try:
        assert_held_then_completes(
            run, items, api_client_for(operator), operator, "1 transaction older than 1 s", release
        )
    finally:
        if not holder.closed:
            holder.close()


@pytest.mark.postgres
def test_a_lock_wait_holds_the_stage_until_it_clears(items, operator, approver, api_client_for):
    doc = document("pg", {"max_lock_waits": 0, "recheck_ms": 200})
    _dry, run = approved_apply(doc, operator, approver)
    holder = psycopg.connect(items)
    holder.execute("SELECT * FROM items WHERE id = 20 FOR UPDATE")
    waiter = psycopg.connect(items, autocommit=True)
    blocked = threading.Thread(
        target=lambda: waiter.execute("UPDATE items SET n = n WHERE id = 20"), daemon=True
    )
    blocked.start()
    with psycopg.connect(items, autocommit=True) as probe:
        deadline_poll(
            lambda: probe.execute(
                "SELECT 1 FROM pg_locks WHERE pid = %s AND NOT granted",
                (waiter.info.backend_pid,),
            ).fetchone(),
            "the waiter waits for the row lock",
        )

    def release() -> None:
        holder.commit()
        holder.close()
        blocked.join(timeout=20)
        assert not blocked.is_alive()
        waiter.close()

    try:
        assert_held_then_completes(
            run, items, api_client_for(operator), operator, "1 session waiting for a lock", release
        )
    finally:
        for conn in (holder, waiter):
            if not conn.closed:
                conn.close()


@pytest.mark.postgres
def test_an_aborted_waiting_stage_shows_no_wait_and_changed_nothing(
    items, operator, approver, api_client_for
):
    doc = document("pg", {"max_lock_waits": 0, "recheck_ms": 60_000})
    _dry, run = approved_apply(doc, operator, approver)
    holder = psycopg.connect(items)
    holder.execute("SELECT * FROM items WHERE id = 1 FOR UPDATE")
    waiter = psycopg.connect(items, autocommit=True)
    blocked = threading.Thread(
        target=lambda: waiter.execute("UPDATE items SET n = n WHERE id = 1"), daemon=True
    )
    blocked.start()
    try:
        with psycopg.connect(items, autocommit=True) as probe:
            deadline_poll(
                lambda: probe.execute(
                    "SELECT 1 FROM pg_locks WHERE pid = %s AND NOT granted",
                    (waiter.info.backend_pid,),
                ).fetchone(),
                "the waiter waits for the row lock",
            )
        tasks.drain(run.pk, budget_s=1)
        assert RunStage.objects.get(run=run).health_wait is not None
        services.run_abort(run=run, actor=operator)
        drain(run, deadline_s=30)
    finally:
        holder.rollback()
        holder.close()
        blocked.join(timeout=20)
        waiter.close()
    assert run.state == RunState.ABORTED
    stage = api_client_for(operator).get(f"/api/v1/runs/{run.pk}/").json()["stages"][0]
    assert stage["health_wait"] is None
    assert stage["counts"]["cancelled"] == ROWS // BATCH
    assert counts_at_target(items) == dict.fromkeys(range(1, ROWS + 1), 0)


@pytest.mark.postgres
def test_replication_lag_is_measured_and_a_primary_without_replicas_is_healthy(pg_target):
    config = {"max_replication_lag_ms": 0, "max_replication_lag_bytes": 0}
    with connect("pg") as conn:
        replicas = conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone()[0]
        health = dbhealth.check(conn, config)
    assert replicas == 0
    assert health.healthy and health.findings == ()


@pytest.mark.postgres
def test_a_healthy_target_runs_the_checks_and_applies_each_row_once(items, operator, approver):
    health = {
        "max_transaction_age_s": 60,
        "max_lock_waits": 5,
        "max_replication_lag_ms": 10_000,
        "max_replication_lag_bytes": 1 << 30,
    }
    _dry, run = approved_apply(document("pg", health), operator, approver)
    drain(run, deadline_s=60)
    assert run.state == RunState.SUCCEEDED
    assert counts_at_target(items) == dict.fromkeys(range(1, ROWS + 1), 1)
    assert not AuditEvent.objects.filter(action=ACTION_WAIT).exists()


@pytest.mark.postgres
def test_the_target_option_applies_and_a_stage_key_overrides_it(pg_target, settings):
    settings.HXO_DATABASE_TARGETS = {
        **settings.HXO_DATABASE_TARGETS,
        "pg": {"url": pg_target, "health": {"max_lock_waits": 3, "recheck_ms": 1000}},
    }
    target = get_target("pg")
    assert dbhealth.effective({}, target) == {"max_lock_waits": 3, "recheck_ms": 1000}
    assert dbhealth.effective({"health": {"max_lock_waits": 0}}, target) == {
        "max_lock_waits": 0,
        "recheck_ms": 1000,
    }


# --- validation: no database is reached ----------------------------------------------------


@pytest.fixture
def both_targets(settings, tmp_path) -> None:
    settings.HXO_DATABASE_TARGETS = {
        **settings.HXO_DATABASE_TARGETS,
        "lite": f"sqlite:///{tmp_path / 'never.sqlite3'}",
        "pg": "postgres://migrator@127.0.0.1:1/never",
    }


def test_health_checks_on_a_sqlite_target_are_refused_at_validation(
    both_targets, api_client_for, operator
):
    doc = document("lite", {"max_transaction_age_s": 60})
    client = api_client_for(operator)
    checked = client.post("/api/v1/validate/", {"plan": doc}, format="json")
    saved = client.post("/api/v1/plans/", doc, format="json")
    want = ("stages[0].params.health", dbhealth.HEALTH_CHECKS_UNSUPPORTED)
    assert checked.status_code == 200 and checked.json()["valid"] is False
    assert want in {(e["path"], e["code"]) for e in checked.json()["errors"]}
    assert saved.status_code == 400
    assert want in {(e["path"], e["code"]) for e in saved.json()["errors"]}


HOSTILE = [
    ({"max_transaction_age_s": 0}, "stages[0].params.health.max_transaction_age_s"),
    ({"max_transaction_age_s": "60"}, "stages[0].params.health.max_transaction_age_s"),
    ({"max_transaction_age_s": 1.5}, "stages[0].params.health.max_transaction_age_s"),
    ({"max_lock_waits": -1}, "stages[0].params.health.max_lock_waits"),
    ({"max_replication_lag_ms": 10**12}, "stages[0].params.health.max_replication_lag_ms"),
    ({"max_replication_lag_bytes": True}, "stages[0].params.health.max_replication_lag_bytes"),
    ({"max_lock_waits": 1, "recheck_ms": 1}, "stages[0].params.health.recheck_ms"),
    ({"max_lock_waits": 1, "sleep": 1}, "stages[0].params.health"),
    ({"recheck_ms": 1000}, "stages[0].params.health"),
    ({}, "stages[0].params.health"),
    ([], "stages[0].params.health"),
    ("on", "stages[0].params.health"),
    (None, "stages[0].params.health"),
]


@pytest.mark.parametrize(("health", "path"), HOSTILE, ids=[str(h) for h, _ in HOSTILE])
def test_hostile_health_params_are_a_400_at_their_path(
    both_targets, api_client_for, operator, health, path
):
    doc = document("pg", None)
    doc["stages"][0]["params"]["health"] = health
    saved = api_client_for(operator).post("/api/v1/plans/", doc, format="json")
    assert saved.status_code == 400, saved.content
    assert path in {e["path"] for e in saved.json()["errors"]}, saved.json()["errors"]


def test_a_target_option_on_a_sqlite_target_or_a_bad_one_is_refused(settings, tmp_path):
    settings.HXO_DATABASE_TARGETS = {
        "lite": {"url": f"sqlite:///{tmp_path / 'x.sqlite3'}", "health": {"max_lock_waits": 1}},
        "bad": {"url": "postgres://u@127.0.0.1:1/x", "health": {"max_lock_waits": -1}},
    }
    with pytest.raises(ComponentError) as lite:
        get_target("lite")
    with pytest.raises(ComponentError) as bad:
        get_target("bad")
    assert "PostgreSQL" in str(lite.value)
    assert "health.max_lock_waits" in str(bad.value)

"""Permanent errors are not retried (issue 13): the classification of real driver errors
(`runs_app.targets.classify_db_error`), a `deploy.migrate` apply whose statement names a
missing column failing each batch after exactly one attempt on SQLite and PostgreSQL, a lock
timeout retried, and the stage's failed partitions grouped by error code on the run's API
and page.

Every driver error here is produced by running bad SQL against a real SQLite file or a
scratch PostgreSQL database, never constructed by hand.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from django.urls import reverse

from runs_app import services
from runs_app.kinds.migrate import LEDGER_TABLES
from runs_app.models import Partition, PartitionState, Run, RunState
from runs_app.targets import DbErrorClass, classify_db_error, connect
from tests.helpers import drain, partitioned
from tests.runs_app.kinds.test_kinds_migrate import seed

# --- The classification, per class, with real driver errors ------------------------------

SQLITE_SCHEMA = (
    "CREATE TABLE parent (id INTEGER PRIMARY KEY);"
    "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
    " n INTEGER CHECK (n >= 0), parent_id INTEGER REFERENCES parent (id));"
    "INSERT INTO parent VALUES (1); INSERT INTO t VALUES (1, 'a', 1, 1);"
)


def sqlite_error(db: Path, sql: str) -> sqlite3.Error:
    conn = sqlite3.connect(db, timeout=0, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    try:
        conn.execute(sql)
    except sqlite3.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError(f"{sql!r} did not fail")


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Path:
    db = tmp_path / "classify.sqlite3"
    conn = sqlite3.connect(db)
    conn.executescript(SQLITE_SCHEMA)
    conn.close()
    return db


@pytest.mark.parametrize(
    ("sql", "errorname"),
    [
        ("SELEC 1", "SQLITE_ERROR"),  # syntax error
        ("SELECT nosuch FROM t", "SQLITE_ERROR"),  # no such column
        ("SELECT * FROM nosuch", "SQLITE_ERROR"),  # no such table
        ("SELECT nosuch_fn(1)", "SQLITE_ERROR"),  # no such function
        ("INSERT INTO t (id, name) VALUES (2, NULL)", "SQLITE_CONSTRAINT_NOTNULL"),
        ("INSERT INTO t (id, name, n) VALUES (2, 'b', -1)", "SQLITE_CONSTRAINT_CHECK"),
        ("INSERT INTO t (id, name) VALUES (2, 'a')", "SQLITE_CONSTRAINT_UNIQUE"),
        ("INSERT INTO t (id, name, parent_id) VALUES (2, 'b', 9)", "SQLITE_CONSTRAINT_FOREIGNKEY"),
        ("INSERT INTO t (id, name) VALUES ('x', 'b')", "SQLITE_MISMATCH"),
    ],
)
def test_sqlite_errors_that_trying_again_cannot_fix_are_permanent(sqlite_file, sql, errorname):
    exc = sqlite_error(sqlite_file, sql)
    found = classify_db_error(exc)
    assert found.driver_code == errorname
    assert found.permanent is True


def test_sqlite_database_is_locked_is_transient(sqlite_file):
    holder = sqlite3.connect(sqlite_file, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        exc = sqlite_error(sqlite_file, "INSERT INTO parent VALUES (2)")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "database is locked" in str(exc)
    assert classify_db_error(exc).driver_code == "SQLITE_BUSY"
    assert classify_db_error(exc).permanent is False


def test_sqlite_an_interrupted_statement_is_transient(sqlite_file):
    conn = sqlite3.connect(sqlite_file)
    conn.set_progress_handler(lambda: 1, 100)  # what HXO's statement timeout does
    with pytest.raises(sqlite3.OperationalError) as info:
        conn.execute(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
        )
    conn.close()
    assert classify_db_error(info.value).driver_code == "SQLITE_INTERRUPT"
    assert classify_db_error(info.value).permanent is False


def test_other_exceptions_are_transient_as_before():
    assert classify_db_error(RuntimeError("anything")).permanent is False
    assert classify_db_error(OSError("disk")).permanent is False


PG_SCHEMA = (
    "CREATE TABLE parent (id integer PRIMARY KEY);"
    "CREATE TABLE t (id integer PRIMARY KEY, name text NOT NULL UNIQUE,"
    " n integer CHECK (n >= 0), parent_id integer REFERENCES parent (id));"
    "INSERT INTO parent VALUES (1), (2); INSERT INTO t VALUES (1, 'a', 1, 1), (2, 'b', 1, 2);"
)


@pytest.fixture
def pg(pg_target: str) -> Callable[..., object]:
    """A psycopg connection factory to the scratch target (its own non-superuser role)."""
    import psycopg

    with psycopg.connect(pg_target, autocommit=True) as conn:
        conn.execute(PG_SCHEMA)

    def make(**kwargs: object) -> psycopg.Connection:
        return psycopg.connect(pg_target, **kwargs)

    return make


def pg_error(pg, sql: str) -> Exception:
    import psycopg

    with pg(autocommit=True) as conn:
        try:
            conn.execute(sql)
        except psycopg.Error as exc:
            return exc
    raise AssertionError(f"{sql!r} did not fail")


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("sql", "sqlstate"),
    [
        ("SELEC 1", "42601"),  # syntax_error
        ("SELECT nosuch FROM t", "42703"),  # undefined_column
        ("SELECT * FROM nosuch", "42P01"),  # undefined_table
        ("SELECT nosuch_fn(1)", "42883"),  # undefined_function
        ("INSERT INTO t (id, name) VALUES (3, NULL)", "23502"),  # not_null_violation
        ("INSERT INTO t (id, name, n) VALUES (3, 'c', -1)", "23514"),  # check_violation
        ("INSERT INTO t (id, name) VALUES (3, 'a')", "23505"),  # unique_violation
        ("INSERT INTO t (id, name, parent_id) VALUES (3, 'c', 9)", "23503"),  # foreign_key
        ("SELECT 'x'::integer", "22P02"),  # invalid_text_representation
        ("SELECT 1 / 0", "22012"),  # division_by_zero
        ("CREATE DATABASE nope", "42501"),  # insufficient_privilege
    ],
)
def test_postgresql_errors_that_trying_again_cannot_fix_are_permanent(pg, sql, sqlstate):
    exc = pg_error(pg, sql)
    assert exc.sqlstate == sqlstate
    assert classify_db_error(exc) == DbErrorClass(permanent=True, driver_code=sqlstate)


@pytest.mark.postgres
def test_postgresql_lock_timeout_and_statement_timeout_are_transient(pg):
    with pg() as holder:
        holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        lock = pg_error(pg, "SET lock_timeout = '100ms'; SELECT * FROM t")
        holder.rollback()
    cancelled = pg_error(pg, "SET statement_timeout = '100ms'; SELECT pg_sleep(5)")
    assert (lock.sqlstate, classify_db_error(lock).permanent) == ("55P03", False)
    assert (cancelled.sqlstate, classify_db_error(cancelled).permanent) == ("57014", False)


@pytest.mark.postgres
def test_postgresql_serialization_failure_and_deadlock_are_transient(pg):
    import psycopg

    # Serialization: a repeatable-read transaction updates a row another one changed.
    with pg() as a, pg(autocommit=True) as b:
        a.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        a.execute("SELECT * FROM t").fetchall()
        b.execute("UPDATE t SET n = n + 1 WHERE id = 1")
        with pytest.raises(psycopg.Error) as serialization:
            a.execute("UPDATE t SET n = n + 1 WHERE id = 1")
        a.rollback()
    assert serialization.value.sqlstate == "40001"
    assert classify_db_error(serialization.value).permanent is False

    # Deadlock: each transaction holds the row the other one wants.
    errors: list[Exception] = []
    with pg() as a, pg() as b:
        a.execute("UPDATE t SET n = n + 1 WHERE id = 1")
        b.execute("UPDATE t SET n = n + 1 WHERE id = 2")

        def a_wants_2() -> None:
            try:
                a.execute("UPDATE t SET n = n + 1 WHERE id = 2")
            except psycopg.Error as exc:
                errors.append(exc)

        waiter = threading.Thread(target=a_wants_2)
        waiter.start()
        try:
            b.execute("UPDATE t SET n = n + 1 WHERE id = 1")
        except psycopg.Error as exc:
            errors.append(exc)
        waiter.join(30)
        a.rollback()
        b.rollback()
    deadlocks = [e for e in errors if e.sqlstate == "40P01"]
    assert len(deadlocks) == 1
    assert classify_db_error(deadlocks[0]).permanent is False


@pytest.mark.postgres
def test_postgresql_connection_loss_is_transient(pg):
    import psycopg

    with pg(autocommit=True) as victim, pg(autocommit=True) as killer:
        pid = victim.info.backend_pid
        killer.execute("SELECT pg_terminate_backend(%s)", [pid])
        with pytest.raises(psycopg.OperationalError) as info:
            victim.execute("SELECT 1")
    # 57P01 admin_shutdown, or no SQLSTATE at all when the socket is already gone.
    assert info.value.sqlstate in (None, "57P01")
    assert classify_db_error(info.value).permanent is False


# --- Through the engine --------------------------------------------------------------------

BATCHES = 5
NOTE_SQL = "UPDATE customers SET note = 'seen' WHERE id >= :start AND id < :end"


def note_plan(target: str, **stage: object) -> dict:
    return {
        "name": f"notes-{target}",
        "stages": [
            {
                "id": "notes",
                "kind": "deploy.migrate",
                "partitioner": "by_sql_batch",
                "executor": "sql_migrate",
                "params": {
                    "target": target,
                    "backfill": {
                        "sql": NOTE_SQL,
                        "table": "customers",
                        "key_column": "id",
                        "batch_size": 20,
                    },
                    "lock_timeout_ms": 300,
                },
                **stage,
            }
        ],
    }


def approved_plan(target: str, operator, approver, **stage: object):
    plan = services.plan_create(actor=operator, document=note_plan(target, **stage))
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    assert dry.state == RunState.AWAITING_APPROVAL
    services.run_approve(run=dry, actor=approver, comment="reviewed")
    return plan, dry


def ledger_count(target: str) -> int:
    with connect(target) as conn:
        return sum(
            conn.scalar(f"SELECT COUNT(*) FROM {t}") for t in LEDGER_TABLES if conn.table_exists(t)
        )


def notes(target: str) -> int:
    with connect(target) as conn:
        return conn.scalar("SELECT COUNT(*) FROM customers WHERE note IS NOT NULL")


def a_missing_column_fails_each_batch_once(target: str, operator, approver, client, settings):
    settings.HXO_RETRY_BACKOFF_MS = 0
    settings.HXO_MAX_ATTEMPTS = 3
    seed(target, rows=BATCHES * 20)
    # The budget lets every batch but one fail without the stage stopping the others: the
    # last failure puts the stage over it, and every batch has met the error.
    plan, dry = approved_plan(target, operator, approver, max_failed_partitions=BATCHES - 1)
    # After the review, someone drops the column the statement writes.
    with connect(target) as conn:
        conn.begin()
        conn.execute("ALTER TABLE customers DROP COLUMN note")
        conn.commit()

    run = drain(services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk))

    assert run.state == RunState.FAILED
    failed = list(Partition.objects.filter(run=run).values_list("state", "attempts", "error"))
    assert len(failed) == BATCHES
    assert {(state, attempts) for state, attempts, _ in failed} == {(PartitionState.FAILED, 1)}
    assert all(e["code"] == "sql_error" and e["permanent"] is True for _, _, e in failed)
    assert all("note" in e["message"] for _, _, e in failed)
    assert ledger_count(target) == 0  # nothing applied, nothing recorded

    # The stage says how many failed and with which error, in the API and on the page.
    client.force_login(operator)
    stage = client.get(f"/api/v1/runs/{run.pk}/").json()["stages"][0]
    assert stage["counts"]["failed"] == BATCHES
    assert stage["counts"]["cancelled"] == 0
    [grouped] = stage["errors_by_code"]
    assert (grouped["code"], grouped["count"], grouped["permanent"]) == ("sql_error", 5, True)
    assert "note" in grouped["example"]
    page = client.get(reverse("run", args=[run.pk])).content.decode()
    assert 'data-testid="stage-errors"' in page
    assert "<code>sql_error</code>" in page and "permanent, not retried" in page
    return run


@pytest.mark.django_db(transaction=True)
def test_sqlite_a_missing_column_fails_each_batch_after_one_attempt(
    sqlite_target, operator, approver, client, settings
):
    sqlite_target("db")
    a_missing_column_fails_each_batch_once("db", operator, approver, client, settings)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgresql_a_missing_column_fails_each_batch_after_one_attempt(
    pg_target, operator, approver, client, settings
):
    a_missing_column_fails_each_batch_once("pg", operator, approver, client, settings)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgresql_a_lock_timeout_is_retried(pg_target, operator, approver, settings):
    settings.HXO_RETRY_BACKOFF_MS = 0
    settings.HXO_MAX_ATTEMPTS = 2
    seed("pg", rows=20)
    plan, dry = approved_plan("pg", operator, approver)

    # Partitioned first (by a worker, here inline): the lock is on the batches, not on the
    # partitioner's read of the key range.
    run = partitioned(services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk))
    # Another session holds the table for as long as the apply runs: every attempt waits
    # lock_timeout_ms and gives up, and each one is tried again while attempts are left.
    with connect("pg") as holder:
        holder.begin()
        holder.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
        try:
            drain(run)
        finally:
            holder.rollback()

    [(state, attempts, error)] = Partition.objects.filter(run=run).values_list(
        "state", "attempts", "error"
    )
    assert (state, attempts) == (PartitionState.FAILED, 2)
    assert (error["code"], error["permanent"]) == ("lock_timeout", False)
    assert notes("pg") == 0
    assert ledger_count("pg") == 0

    # Once the lock is gone, a replay of the failed partition applies it.
    replay = drain(services.run_replay(run=run, actor=operator))
    assert replay.state == RunState.SUCCEEDED
    assert notes("pg") == 20
    assert Run.objects.filter(pk=replay.pk, parent=run).exists()

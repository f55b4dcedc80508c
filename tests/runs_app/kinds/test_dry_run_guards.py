"""Execution-time guards of `deploy.migrate` on the target (issue 11 round 2, findings 2-4).

- A dry-run holds a lock it took at most HXO_DRY_RUN_STATEMENT_TIMEOUT_MS per statement and
  HXO_DRY_RUN_BATCH_TIMEOUT_MS per batch: a concurrent writer's wait is measured.
- An abort, a lost lease or the partition's time budget cancels the target statement in
  flight and rolls it back at once: a writer gets through within seconds.
- A plan statement that changes the session's timeouts or role stops the batch
  (`session_changed`), with validation bypassed.
- A PostgreSQL dry-run leaves the target's sequences alone: setval()/nextval() are checked
  with EXPLAIN, not executed; SQLite's sqlite_sequence is transactional.

Timings are asserted as bounds with generous margins and as orderings, never tightly.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

import psycopg
import pytest

from blueprints_app.registry import EXECUTORS, ComponentError
from runs_app import services
from runs_app.models import Partition, PartitionState, Run, RunState
from runs_app.targets import connect
from tests.helpers import drain
from tests.runs_app.kinds.conftest import PG_ADMIN_URL
from tests.runs_app.kinds.test_sql_safety import count, crafted, plan

# Fixtures, re-exported so pytest finds them here.
from tests.runs_app.kinds.test_sql_safety import demo as demo
from tests.runs_app.kinds.test_sql_safety import pg_demo as pg_demo

pytestmark = pytest.mark.django_db(transaction=True)


def pg_scalar(url: str, sql: str) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql).fetchone()[0]


def pg_exec(url: str, sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture
def no_validation(monkeypatch):
    """Take the SQL policy out of plan save, partitioning and the executor: what is tested
    here are the guards that hold whatever SQL got past it."""
    monkeypatch.setattr("runs_app.kinds.migrate._sql_errors", lambda *a, **k: [])
    monkeypatch.setattr("runs_app.kinds.migrate.statement_error", lambda *a, **k: None)


def dry_run(document: dict[str, Any], operator) -> Run:
    saved = services.plan_create(actor=operator, document=document)
    return drain(services.run_start_dry_run(plan=saved, actor=operator))


def partition_of(run: Run) -> Partition:
    return Partition.objects.get(run=run)


class Writer(threading.Thread):
    """A session of the target's own application: after `delay_s`, one INSERT, timed."""

    def __init__(self, url: str, sql: str, delay_s: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.url, self.sql, self.delay_s = url, sql, delay_s
        self.waited: float | None = None
        self.started_at: float | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        time.sleep(self.delay_s)
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute("SET lock_timeout = '30s'")
                self.started_at = time.monotonic()
                conn.execute(self.sql)
                self.waited = time.monotonic() - self.started_at
        except Exception as exc:  # reported by the test
            self.error = exc


# --- finding 2: a dry-run's locks are held a bounded time ---------------------------------

# Statements that take a lock every INSERT into orders must wait for, then keep the
# transaction busy: the class is "a lock taken early, held while later statements run".
LOCK_TAKERS = {
    "LOCK TABLE ... SHARE": "LOCK TABLE orders IN SHARE MODE",
    "LOCK TABLE ... ACCESS EXCLUSIVE": "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE",
    "CREATE INDEX": "CREATE INDEX orders_note ON orders (note)",
    "ALTER TABLE": "ALTER TABLE orders ADD COLUMN z integer",
}


@pytest.mark.postgres
@pytest.mark.parametrize("taker", sorted(LOCK_TAKERS))
@pytest.mark.parametrize(
    ("budget", "sleeps", "code"),
    [
        # One long statement: cancelled at the dry-run statement timeout (1 s).
        ("statement", ["SELECT pg_sleep(4)"], "statement_timeout"),
        # Many statements each under the statement timeout: the batch budget (1.5 s) ends it.
        ("batch", ["SELECT pg_sleep(0.8)"] * 5, "batch_timeout"),
    ],
)
def test_a_dry_run_holds_the_targets_writers_up_no_longer_than_its_timeouts(
    pg_target, operator, settings, no_validation, taker, budget, sleeps, code
):
    settings.HXO_DRY_RUN_LOCK_TIMEOUT_MS = 300
    settings.HXO_DRY_RUN_STATEMENT_TIMEOUT_MS = 1000
    settings.HXO_DRY_RUN_BATCH_TIMEOUT_MS = 1500
    pg_exec(pg_target, "CREATE TABLE orders (id serial PRIMARY KEY, note text)")
    statements = [LOCK_TAKERS[taker], *(f"{s} -- {i}" for i, s in enumerate(sleeps))]
    document = plan("pg", statements, batch_size=len(statements), statement_timeout_ms=600_000)
    writer = Writer(pg_target, "INSERT INTO orders (note) VALUES ('customer order')", 0.5)
    writer.start()

    started = time.monotonic()
    run = dry_run(document, operator)
    writer.join(30)

    assert writer.error is None, writer.error
    assert writer.waited is not None
    # Held 1 s (statement) or 1.5 s (batch) from about when the writer came 0.5 s in; the
    # unguarded dry-run held it 4 s. Retries take the lock again: each is bounded the same.
    assert writer.waited < 2.5, f"the writer waited {writer.waited:.1f} s"
    failed = partition_of(run)
    assert failed.state == PartitionState.FAILED
    assert failed.error["code"] == code, failed.error
    assert count("pg", "SELECT COUNT(*) FROM orders") == 1  # the writer's row only
    assert time.monotonic() - started < 30


@pytest.mark.postgres
def test_the_dry_run_statement_timeout_is_never_longer_than_the_stages(
    pg_target, operator, settings, no_validation
):
    settings.HXO_DRY_RUN_STATEMENT_TIMEOUT_MS = 60_000
    pg_exec(pg_target, "CREATE TABLE orders (id serial PRIMARY KEY)")

    started = time.monotonic()
    run = dry_run(plan("pg", ["SELECT pg_sleep(5)"], statement_timeout_ms=300), operator)

    assert partition_of(run).error["code"] == "statement_timeout"
    assert time.monotonic() - started < 5 * 3  # three attempts, each cut at 0.3 s


@pytest.mark.postgres
def test_a_function_that_lifts_lock_timeout_still_gives_up_within_the_statement_timeout(
    pg_target, operator, settings, no_validation
):
    """A function's `SET lock_timeout = 0` clause lifts the lock timeout inside it (no check
    after the statement can see that): the dry-run statement timeout still ends the wait."""
    settings.HXO_DRY_RUN_LOCK_TIMEOUT_MS = 300
    settings.HXO_DRY_RUN_STATEMENT_TIMEOUT_MS = 1000
    pg_exec(pg_target, "CREATE TABLE orders (id integer PRIMARY KEY)")
    statements = [
        "CREATE FUNCTION take_lock() RETURNS void SET lock_timeout = 0 LANGUAGE sql "
        "AS 'LOCK TABLE orders IN ACCESS EXCLUSIVE MODE'",
        "SELECT take_lock()",
    ]
    holder = psycopg.connect(pg_target)
    holder.execute("SELECT count(*) FROM orders")  # ACCESS SHARE until it commits
    timer = threading.Timer(8.0, holder.commit)
    timer.start()
    try:
        started = time.monotonic()
        run = dry_run(plan("pg", statements, batch_size=2), operator)
        elapsed = time.monotonic() - started
    finally:
        timer.cancel()
        holder.close()

    assert partition_of(run).state == PartitionState.FAILED
    assert partition_of(run).error["code"] == "statement_timeout"
    assert elapsed < 8.0  # given up before the reader let go, every attempt


# --- finding 2: an abort (or a spent time budget) cancels the statement in flight -----------


def _drain_in_background(run: Run) -> threading.Thread:
    def work() -> None:
        from django.db import connection

        try:
            drain(run.pk, budget_s=60, rounds=20)
        finally:
            connection.close()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def _wait_for_long_statement(target: str, url: str | None) -> None:
    """Until the LONG statement is running at the target. PostgreSQL shows it in
    pg_stat_activity, so the test waits exactly that long. SQLite has no view of another
    connection's statement: there the wait is a margin after the batch took its lock (the
    assertions hold either way; the margin makes the cancellation hit a running statement
    in practice)."""
    if target == "pg":
        _wait_until(
            lambda: bool(
                pg_scalar(
                    url,
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                    f"AND query = '{LONG['pg']}'",
                )
            )
        )
    else:
        time.sleep(0.5)


def _wait_until(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def _sqlite_locked(path) -> bool:
    probe = sqlite3.connect(path, timeout=0)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        probe.close()


# A statement that runs for long on each vendor (bounded only by the timeouts set here).
LONG = {
    "pg": "SELECT pg_sleep(40)",
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
    "SELECT COUNT(*) FROM c WHERE x < 0",
}


@pytest.mark.parametrize("how", ["abort", "shard_timeout"])
@pytest.mark.parametrize("target", ["sqlite", pytest.param("pg", marks=pytest.mark.postgres)])
def test_stopping_a_partition_cancels_its_target_statement_and_releases_the_lock_at_once(
    request, operator, settings, no_validation, tmp_path, target, how
):
    settings.HXO_DRY_RUN_STATEMENT_TIMEOUT_MS = 40_000
    settings.HXO_DRY_RUN_BATCH_TIMEOUT_MS = 40_000
    settings.HXO_MAX_ATTEMPTS = 1
    if how == "shard_timeout":
        settings.HXO_PARTITION_TIMEOUT_MS = 2_000
    if target == "pg":
        url = request.getfixturevalue("pg_target")
        pg_exec(url, "CREATE TABLE orders (id serial PRIMARY KEY, note text)")
        first = "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE"

        def locked() -> bool:
            return bool(
                pg_scalar(
                    url,
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                    "WHERE c.relname = 'orders' AND l.mode = 'AccessExclusiveLock' "
                    "AND l.granted",
                )
            )
    else:
        path = tmp_path / "target.sqlite3"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT)")
        settings.HXO_DATABASE_TARGETS = {
            **settings.HXO_DATABASE_TARGETS,
            "sqlite": f"sqlite:///{path}",
        }
        first = "INSERT INTO orders (note) VALUES ('dry-run')"

        def locked() -> bool:
            return _sqlite_locked(path)

    saved = services.plan_create(
        actor=operator,
        document=plan(target, [first, LONG[target]], batch_size=2, statement_timeout_ms=60_000),
    )
    run = services.run_start_dry_run(plan=saved, actor=operator)
    drainer = _drain_in_background(run)
    try:
        _wait_until(locked)
        _wait_for_long_statement(target, url if target == "pg" else None)
        stopped = time.monotonic()
        if how == "abort":
            services.run_abort(run=run, actor=operator)
        _wait_until(lambda: not locked(), timeout_s=30)
        released = time.monotonic() - stopped
    finally:
        drainer.join(60)

    # Abort: the heartbeat looks every 0.5 s; the time budget: 2 s from the start.
    assert released < 5.0, f"the lock was held {released:.1f} s after the partition stopped"
    if target == "pg":
        writer = Writer(url, "INSERT INTO orders (note) VALUES ('customer order')")
        writer.run()
        assert writer.error is None and writer.waited < 1.0
    else:
        with sqlite3.connect(path, timeout=1) as db:
            db.execute("INSERT INTO orders (note) VALUES ('customer order')")
    assert count(target, "SELECT COUNT(*) FROM orders") == 1  # the writer's row only
    part = Partition.objects.get(run=run)
    run.refresh_from_db()
    if how == "abort":
        assert run.state == RunState.ABORTED
        assert part.state == PartitionState.CANCELLED
    else:
        assert part.state == PartitionState.FAILED
        assert part.error["code"] == "shard_timeout", part.error


@pytest.mark.parametrize("target", ["demo", pytest.param("pg", marks=pytest.mark.postgres)])
def test_an_apply_whose_partition_must_stop_is_cancelled_and_commits_nothing(
    request, driver, no_validation, target
):
    """The apply path: the canceller the executor registers (`ctx.stop_with`) cancels the
    statement in flight; the batch is rolled back and no ledger row is written."""
    url = request.getfixturevalue("demo" if target == "demo" else "pg_demo")
    statements = ["DELETE FROM orders WHERE id <= 10", LONG["pg" if target == "pg" else "sqlite"]]
    ctx = crafted(driver, target, statements, dry_run=False)
    registered: list[Any] = []
    ctx.stop_with = registered.append
    outcome: list[BaseException] = []

    def apply() -> None:
        try:
            EXECUTORS["sql_migrate"]().execute(ctx)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=apply, daemon=True)
    thread.start()
    _wait_until(lambda: bool(registered) and registered[0] is not None)
    _wait_for_long_statement("pg" if target == "pg" else "sqlite", url)
    stopped = time.monotonic()
    registered[0]("the run was aborted")
    thread.join(20)

    assert not thread.is_alive()
    assert time.monotonic() - stopped < 5.0
    assert isinstance(outcome[0], ComponentError) and outcome[0].code == "cancelled"
    assert registered[-1] is None  # unregistered on the way out
    assert count(target, "SELECT COUNT(*) FROM orders WHERE id <= 10") == 10
    assert count(target, "SELECT COUNT(*) FROM hxo_ledger_batches") == 0


# --- finding 3: the session keeps HXO's timeouts and role ---------------------------------

SESSION_CHANGERS = {
    "pg_settings statement_timeout": "UPDATE pg_settings SET setting = '0' "
    "WHERE name = 'statement_timeout'",
    "pg_settings lock_timeout": "UPDATE pg_catalog.pg_settings SET setting = '0' "
    "WHERE name IN ('lock_timeout', 'statement_timeout')",
    "pg_settings idle timeout": "UPDATE pg_settings SET setting = '0' "
    "WHERE name = 'idle_in_transaction_session_timeout'",
    "set_config": "SELECT set_config('lock_timeout', '0', false)",
    "SET LOCAL": "SET LOCAL statement_timeout = 0",
    "RESET": "RESET lock_timeout",
    "SET ROLE": "SET ROLE hxo_guard_other",
    "set_config role": "SELECT set_config('role', 'hxo_guard_other', false)",
}


@pytest.fixture
def other_role(pg_demo) -> str:
    """A role the target's role is a member of (so SET ROLE to it succeeds)."""
    me = pg_demo.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS hxo_guard_other")
        admin.execute("CREATE ROLE hxo_guard_other NOLOGIN")
        admin.execute(f'GRANT hxo_guard_other TO "{me}"')
        admin.execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO hxo_guard_other")
    yield "hxo_guard_other"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute("DROP OWNED BY hxo_guard_other CASCADE")
        admin.execute("DROP ROLE IF EXISTS hxo_guard_other")


@pytest.mark.postgres
@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize("how", sorted(SESSION_CHANGERS))
def test_a_statement_that_changes_the_sessions_timeouts_or_role_stops_the_batch(
    driver, pg_demo, other_role, no_validation, how, dry_run
):
    statements = [SESSION_CHANGERS[how], "DELETE FROM orders WHERE id <= 10"]
    ctx = crafted(driver, "pg", statements, dry_run=dry_run)

    with pytest.raises(ComponentError) as stopped:
        EXECUTORS["sql_migrate"]().execute(ctx)

    assert stopped.value.code == "session_changed", stopped.value.message
    assert count("pg", "SELECT COUNT(*) FROM orders WHERE id <= 10") == 10
    with connect("pg") as conn:
        if conn.table_exists("hxo_ledger_batches"):
            assert conn.scalar("SELECT COUNT(*) FROM hxo_ledger_batches") == 0


@pytest.mark.postgres
def test_lifting_the_statement_timeout_through_pg_settings_does_not_let_a_dry_run_run_on(
    pg_target, operator, no_validation
):
    pg_exec(pg_target, "CREATE TABLE orders (id integer PRIMARY KEY)")
    statements = [SESSION_CHANGERS["pg_settings lock_timeout"], "SELECT pg_sleep(3)"]

    started = time.monotonic()
    run = dry_run(plan("pg", statements, batch_size=2, statement_timeout_ms=1000), operator)

    assert partition_of(run).error["code"] == "session_changed"
    assert time.monotonic() - started < 3 * 3  # never slept: stopped after the UPDATE


# --- finding 4: sequences ------------------------------------------------------------------

SEQUENCE_CALLS = [
    "SELECT setval('customers_id_seq', 1, false)",
    "SELECT setval('customers_id_seq', 2147483647)",
    "SELECT nextval('customers_id_seq') FROM generate_series(1, 1000)",
    "SELECT pg_catalog.setval('public.customers_id_seq'::regclass, 7)",
    "INSERT INTO customers (id, name) VALUES (nextval('customers_id_seq'), 'x')",
    "UPDATE customers SET name = 'n' || nextval('customers_id_seq') WHERE id <= 3",
    "WITH s AS (SELECT setval('customers_id_seq', 1)) SELECT * FROM s",
    "SELECT 1 WHERE EXISTS (SELECT nextval('customers_id_seq'))",
]


@pytest.fixture
def customers(pg_target) -> str:
    pg_exec(pg_target, "CREATE TABLE customers (id serial PRIMARY KEY, name text)")
    pg_exec(pg_target, "INSERT INTO customers (name) SELECT 'c' FROM generate_series(1, 50)")
    return pg_target


@pytest.mark.postgres
@pytest.mark.parametrize("sql", SEQUENCE_CALLS)
def test_a_postgresql_dry_run_leaves_the_targets_sequences_alone(
    customers, operator, no_validation, sql
):
    before = pg_scalar(customers, "SELECT last_value FROM customers_id_seq")
    statements = ["UPDATE customers SET name = 'touched' WHERE id = 1", sql]

    run = dry_run(plan("pg", statements, batch_size=2), operator)

    assert pg_scalar(customers, "SELECT last_value FROM customers_id_seq") == before == 50
    part = partition_of(run)
    assert part.state == PartitionState.SUCCEEDED, part.error
    assert part.preview["checked_not_executed"] == [1]
    assert part.preview["rows_affected"] == 1  # the UPDATE ran; the sequence call did not
    assert "only checked, not executed" in part.preview["summary"]
    pg_exec(customers, "INSERT INTO customers (name) VALUES ('real')")  # no duplicate key


@pytest.mark.postgres
def test_a_checked_sequence_call_is_still_checked_against_the_target(
    customers, operator, no_validation
):
    run = dry_run(plan("pg", ["SELECT setval('no_such_seq', 1)"]), operator)

    assert partition_of(run).state == PartitionState.FAILED
    assert "no_such_seq" in partition_of(run).error["message"]


@pytest.mark.postgres
def test_transactional_sequence_changes_and_plain_inserts_in_a_dry_run(
    customers, operator, no_validation
):
    """ALTER SEQUENCE is transactional (PostgreSQL >= 10): run, and rolled back. A plain
    INSERT into a serial column may consume values (a gap, as any rolled-back transaction
    leaves; docs/sql-policy.md): never moves the sequence back, so no duplicate key."""
    assert pg_scalar(customers, "SHOW server_version_num") >= "100000"
    statements = [
        "ALTER SEQUENCE customers_id_seq RESTART WITH 1000",
        "INSERT INTO customers (name) SELECT 'd' FROM generate_series(1, 5)",
    ]

    run = dry_run(plan("pg", statements, batch_size=2), operator)

    part = partition_of(run)
    assert part.state == PartitionState.SUCCEEDED, part.error
    assert part.preview["checked_not_executed"] == []
    assert pg_scalar(customers, "SELECT last_value FROM customers_id_seq") == 50
    assert pg_scalar(customers, "SELECT COUNT(*) FROM customers") == 50
    plain = dry_run(plan("pg", ["INSERT INTO customers (name) VALUES ('e') -- 2"]), operator)
    assert partition_of(plain).preview["rows_affected"] == 1
    assert pg_scalar(customers, "SELECT last_value FROM customers_id_seq") >= 50
    pg_exec(customers, "INSERT INTO customers (name) VALUES ('real')")


def test_a_sqlite_dry_run_leaves_autoincrement_counters_alone(
    tmp_path, settings, operator, no_validation
):
    path = tmp_path / "target.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT)")
        db.executemany("INSERT INTO customers (name) VALUES (?)", [("c",)] * 50)
    settings.HXO_DATABASE_TARGETS = {**settings.HXO_DATABASE_TARGETS, "sq": f"sqlite:///{path}"}
    statements = [
        "INSERT INTO customers (name) SELECT name FROM customers",
        "UPDATE sqlite_sequence SET seq = 1 WHERE name = 'customers'",
    ]

    run = dry_run(plan("sq", statements, batch_size=2), operator)

    assert partition_of(run).state == PartitionState.SUCCEEDED, partition_of(run).error
    assert partition_of(run).preview["rows_affected"] == 51
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT seq FROM sqlite_sequence").fetchone() == (50,)
        assert db.execute("SELECT COUNT(*) FROM customers").fetchone() == (50,)


@pytest.mark.postgres
def test_a_dry_run_replaying_an_earlier_batch_does_not_run_its_sequence_calls(
    customers, operator, no_validation
):
    """The dry-run of batch 1 first replays batch 0 (in the transaction it rolls back):
    a setval() there is checked, not executed, as in batch 0's own dry-run."""
    statements = ["SELECT setval('customers_id_seq', 1, false)", "SELECT 1 AS later"]

    run = dry_run(plan("pg", statements, batch_size=1), operator)

    parts = Partition.objects.filter(run=run).order_by("id")
    assert [p.state for p in parts] == [PartitionState.SUCCEEDED] * 2
    assert [p.preview["checked_not_executed"] for p in parts] == [[0], []]
    assert pg_scalar(customers, "SELECT last_value FROM customers_id_seq") == 50

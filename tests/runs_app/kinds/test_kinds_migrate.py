"""deploy.migrate: by_sql_batch and sql_migrate on real SQLite files and a scratch PostgreSQL
database, with the ledger that applies every batch exactly once.

The ledger is keyed by content (target identity, SHA-256 of the batch's SQL and parameters; a
backfill's key intervals per SQL template): tests/runs_app/kinds/test_migrate_ledger.py has
what changes around a plan (description, batch size, moved keys) and the fencing."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from blueprints_app.registry import EXECUTORS, ComponentError, LeaseLost
from runs_app.kinds.migrate import INTERVALS_TABLE, LEDGER_TABLES
from runs_app.targets import connect

pytestmark = pytest.mark.django_db

BACKFILL_SQL = (
    # instr() is SQLite-only and strpos() PostgreSQL-only: rtrim() finds the '@' in both.
    "UPDATE customers SET email_domain = "
    "lower(substr(email, length(rtrim(email, replace(email, '@', ''))) + 1)) "
    "WHERE id >= :start AND id < :end AND email_domain IS NULL"
)


def seed(target: str, rows: int = 1000, *, every_third_done: bool = True) -> None:
    with connect(target, create=True) as conn:
        conn.begin()
        conn.execute(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, email VARCHAR(200) NOT NULL, "
            "email_domain VARCHAR(200), note VARCHAR(20))"
        )
        conn.executemany(
            "INSERT INTO customers (id, email, email_domain) VALUES (:id, :email, :domain)",
            [
                {
                    "id": i,
                    "email": f"user{i}@Example{i % 7}.COM",
                    "domain": f"example{i % 7}.com" if every_third_done and i % 3 == 0 else None,
                }
                for i in range(1, rows + 1)
            ],
        )
        conn.commit()


def rows(target: str, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
    with connect(target) as conn:
        return [tuple(r) for r in conn.execute(sql, params).fetchall()]


def backfill_stage(target: str, batch_size: int = 100, **extra: Any) -> dict:
    return {
        "id": "backfill",
        "kind": "deploy.migrate",
        "partitioner": "by_sql_batch",
        "executor": "sql_migrate",
        "params": {
            "target": target,
            "backfill": {
                "sql": BACKFILL_SQL,
                "table": "customers",
                "key_column": "id",
                "batch_size": batch_size,
            },
            **extra,
        },
    }


def statements_stage(target: str, statements: list[str], batch_size: int = 1, **extra: Any):
    return {
        "id": "schema",
        "kind": "deploy.migrate",
        "partitioner": "by_sql_batch",
        "executor": "sql_migrate",
        "params": {"target": target, "statements": statements, "batch_size": batch_size, **extra},
    }


def null_domains(target: str) -> int:
    return rows(target, "SELECT COUNT(*) FROM customers WHERE email_domain IS NULL")[0][0]


def ledger_rows(target: str) -> list[tuple]:
    """The backfill ledger's intervals: (key_first, key_last, rows_affected) in key order."""
    with connect(target) as conn:
        if not conn.table_exists(INTERVALS_TABLE):
            return []
        return [
            tuple(r)
            for r in conn.execute(
                f"SELECT key_first, key_last, rows_affected FROM {INTERVALS_TABLE} "
                "ORDER BY key_first"
            ).fetchall()
        ]


def no_ledger_tables(target: str) -> bool:
    with connect(target) as conn:
        return not any(conn.table_exists(t) for t in LEDGER_TABLES)


@pytest.fixture
def sqlite_db(sqlite_target) -> str:
    sqlite_target("db")
    seed("db")
    return "db"


def test_a_backfill_is_split_into_offset_limit_batches_over_the_pinned_key_range(driver, sqlite_db):
    _kind, manifest, data = driver.partition(backfill_stage(sqlite_db, batch_size=300))

    inputs = [p.inputs for p in manifest.partitions]
    assert [(i["batch_id"], i["offset"], i["limit"]) for i in inputs] == [
        (0, 0, 300),
        (1, 300, 300),
        (2, 600, 300),
        (3, 900, 100),
    ]
    assert [(i["key_start"], i["key_end"]) for i in inputs][-1] == (901, 1001)
    assert data["backfill"]["key_min"] == 1 and data["backfill"]["key_max"] == 1000
    assert {p.wave for p in manifest.partitions} == {0}  # independent key ranges: parallel
    assert manifest.partitions[0].fingerprints["table:customers"] == "id:1:1000:1000"


def test_the_dry_run_reports_rows_and_changes_nothing_not_even_the_ledger_table(
    driver, sqlite_db, tmp_path
):
    before = (tmp_path / "db.sqlite3").read_bytes()

    run = driver.run(backfill_stage(sqlite_db), dry_run=True)

    assert sum(r["rows_affected"] for r in run.results) == 1000 - 333
    assert run.results[0]["summary"].startswith("batch 0: would change 67 rows")
    assert null_domains(sqlite_db) == 667
    assert ledger_rows(sqlite_db) == []
    assert no_ledger_tables(sqlite_db)
    assert (tmp_path / "db.sqlite3").read_bytes() == before


def test_apply_runs_each_batch_with_its_ledger_row(driver, sqlite_db):
    run = driver.run(backfill_stage(sqlite_db), dry_run=False)

    assert null_domains(sqlite_db) == 0
    assert sum(r["rows_affected"] for r in run.results) == 667
    assert {r["ledger"] for r in run.results} == {"applied"}
    ledger = ledger_rows(sqlite_db)
    assert ledger == [
        (r["key_range"][0], r["key_range"][1] - 1, r["rows_affected"]) for r in run.results
    ]
    assert rows(sqlite_db, "SELECT email_domain FROM customers WHERE id = 8") == [("example1.com",)]


def test_a_batch_executed_twice_is_applied_once(driver, sqlite_db):
    stage = backfill_stage(sqlite_db)
    kind, manifest, data = driver.partition(stage)
    executor = EXECUTORS["sql_migrate"]()
    ctx = driver.context(stage, kind, data, 2, manifest.partitions[2], dry_run=False)
    first = executor.execute(ctx)
    # The batch's rows are un-done by someone else: a second application would redo them.
    with connect(sqlite_db) as conn:
        conn.execute("UPDATE customers SET email_domain = NULL WHERE id >= 201 AND id < 301")

    again = driver.context(stage, kind, data, 2, manifest.partitions[2], dry_run=False, fence=2)
    second = executor.execute(again)

    assert first["ledger"] == "applied" and first["rows_affected"] == 66
    assert second == {**first, "ledger": "already_applied"}
    assert len(ledger_rows(sqlite_db)) == 1
    assert rows(
        sqlite_db,
        "SELECT COUNT(*) FROM customers WHERE id >= 201 AND id < 301 AND email_domain IS NULL",
    ) == [(100,)]


def test_another_plan_digest_applies_nothing_again(driver, sqlite_db):
    # Version 1 keyed the ledger by plan digest: a new revision (an edited description) applied
    # every batch again. The key is the content now, so a new digest changes nothing.
    first = driver.run(backfill_stage(sqlite_db), dry_run=False)
    other = hashlib.sha256(b"plan revision 2").hexdigest()
    with connect(sqlite_db) as conn:  # would be filled again by a second application
        conn.execute("UPDATE customers SET email_domain = NULL WHERE id = 8")

    run = driver.run(backfill_stage(sqlite_db), dry_run=False, plan_digest=other)

    assert {r["ledger"] for r in run.results} == {"already_applied"}
    assert [r["rows_affected"] for r in run.results] == [r["rows_affected"] for r in first.results]
    assert null_domains(sqlite_db) == 1
    assert len(ledger_rows(sqlite_db)) == len(run.results)


def test_a_dry_run_of_an_applied_batch_says_it_would_skip(driver, sqlite_db):
    driver.run(backfill_stage(sqlite_db), dry_run=False)

    run = driver.run(backfill_stage(sqlite_db), dry_run=True)

    assert all(r["already_applied"] for r in run.results)
    assert run.results[0]["ledgered_rows_affected"] == 67


def test_a_lost_lease_rolls_the_batch_and_its_ledger_row_back(driver, sqlite_db):
    stage = backfill_stage(sqlite_db)
    kind, manifest, data = driver.partition(stage)

    def lost() -> None:
        raise LeaseLost()

    ctx = driver.context(
        stage, kind, data, 0, manifest.partitions[0], dry_run=False, heartbeat=lost
    )
    with pytest.raises(LeaseLost):
        EXECUTORS["sql_migrate"]().execute(ctx)

    assert null_domains(sqlite_db) == 667
    assert ledger_rows(sqlite_db) == []


def test_statement_batches_run_in_order_one_wave_each(driver, sqlite_db):
    statements = [
        "CREATE TABLE domains (name VARCHAR(200) PRIMARY KEY)",
        "INSERT INTO domains (name) SELECT DISTINCT lower(substr(email, "
        "length(rtrim(email, replace(email, '@', ''))) + 1)) FROM customers",
        "CREATE INDEX idx_domains_name ON domains (name)",
    ]
    stage = statements_stage(sqlite_db, statements, batch_size=1)

    dry = driver.run(stage, dry_run=True)
    assert [p.wave for p in dry.manifest.partitions] == [0, 1, 2]
    # Batch 1 needs batch 0's table: the dry-run replays earlier batches, then rolls back.
    assert [r["rows_affected"] for r in dry.results] == [0, 7, 0]
    assert rows(sqlite_db, "SELECT name FROM sqlite_master WHERE name = 'domains'") == []

    applied = driver.run(stage, dry_run=False)
    assert [r["rows_affected"] for r in applied.results] == [0, 7, 0]
    assert rows(sqlite_db, "SELECT COUNT(*) FROM domains") == [(7,)]


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("UPDATE customers SET note = 'x' WHERE id >= :start", "exactly the parameters"),
        ("SELECT * FROM customers WHERE id >= :start AND id < :end", "UPDATE, DELETE or INSERT"),
        (
            "UPDATE customers SET note = :note WHERE id >= :start AND id < :end",
            "exactly the parameters",
        ),
    ],
)
def test_a_backfill_statement_of_the_wrong_shape_is_refused(driver, sqlite_db, sql, fragment):
    stage = backfill_stage(sqlite_db)
    stage["params"]["backfill"]["sql"] = sql

    with pytest.raises(ComponentError) as info:
        driver.partition(stage)

    assert info.value.code == "invalid_sql"
    assert fragment in info.value.message
    assert info.value.path == "params.backfill.sql"


def test_parameters_inside_string_literals_are_not_parameters(driver, sqlite_db):
    stage = backfill_stage(sqlite_db)
    stage["params"]["backfill"]["sql"] = (
        "UPDATE customers SET note = 'at :start; ok' WHERE id >= :start AND id < :end"
    )

    run = driver.run(stage, dry_run=False)

    assert sum(r["rows_affected"] for r in run.results) == 1000
    assert rows(sqlite_db, "SELECT DISTINCT note FROM customers") == [("at :start; ok",)]


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("table", "nope", "unknown_table"),
        ("key_column", "nope", "unknown_column"),
        ("key_column", "email", "unsupported_key"),
    ],
)
def test_identifiers_are_checked_against_the_targets_catalogue(
    driver, sqlite_db, field, value, code
):
    stage = backfill_stage(sqlite_db)
    stage["params"]["backfill"][field] = value

    with pytest.raises(ComponentError) as info:
        driver.partition(stage)

    assert info.value.code == code
    assert info.value.path == f"params.backfill.{field}"


def test_an_identifier_that_is_not_a_plain_name_never_reaches_the_database(driver, sqlite_db):
    stage = backfill_stage(sqlite_db)
    stage["params"]["backfill"]["table"] = 'customers" ; DROP TABLE customers; --'

    with pytest.raises(ComponentError) as info:
        driver.partition(stage)

    assert info.value.code == "invalid_params"
    assert rows(sqlite_db, "SELECT COUNT(*) FROM customers") == [(1000,)]


def test_an_unregistered_target_or_a_dsn_in_the_plan_is_refused(driver, sqlite_db, tmp_path):
    for target in ("elsewhere", f"sqlite:///{tmp_path / 'db.sqlite3'}", "default"):
        with pytest.raises(ComponentError) as info:
            driver.partition(backfill_stage(target))
        assert info.value.code in ("unknown_target", "invalid_params")
        assert info.value.path.startswith("params.target")


def test_the_sqlite_statement_timeout_interrupts_a_long_statement(driver, sqlite_db):
    slow = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000000) "
        "INSERT INTO customers (id, email) SELECT 100000 + i, 'x@y' FROM n WHERE i < 0"
    )
    stage = statements_stage(sqlite_db, [slow], statement_timeout_ms=200)
    kind, manifest, data = driver.partition(stage)
    ctx = driver.context(stage, kind, data, 0, manifest.partitions[0], dry_run=False)

    with pytest.raises(ComponentError) as info:
        EXECUTORS["sql_migrate"]().execute(ctx)

    assert info.value.code == "statement_timeout"
    assert ledger_rows(sqlite_db) == []


def test_a_missing_sqlite_target_file_is_not_created(driver, sqlite_target):
    path: Path = sqlite_target("ghost")

    with pytest.raises(ComponentError) as info:
        driver.partition(backfill_stage("ghost"))

    assert info.value.code == "target_unavailable"
    assert not path.exists()


# --- PostgreSQL ---------------------------------------------------------------------------


@pytest.mark.postgres
def test_on_postgresql_a_backfill_applies_each_batch_once_with_timeouts_set(driver, pg_target):
    seed("pg", rows=1000)

    dry = driver.run(backfill_stage("pg", batch_size=250), dry_run=True)
    assert [r["rows_affected"] for r in dry.results] == [167, 167, 166, 167]
    assert null_domains("pg") == 667
    assert no_ledger_tables("pg")

    applied = driver.run(backfill_stage("pg", batch_size=250), dry_run=False)
    assert null_domains("pg") == 0
    assert sum(r["rows_affected"] for r in applied.results) == 667
    assert len(ledger_rows("pg")) == 4

    stage = backfill_stage("pg", batch_size=250)
    kind, manifest, data = driver.partition(stage)
    ctx = driver.context(stage, kind, data, 1, manifest.partitions[1], dry_run=False, fence=2)
    again = EXECUTORS["sql_migrate"]().execute(ctx)
    assert again["ledger"] == "already_applied"
    assert again["rows_affected"] == applied.results[1]["rows_affected"]
    assert len(ledger_rows("pg")) == 4


@pytest.mark.postgres
def test_on_postgresql_statement_and_lock_timeouts_are_enforced(driver, pg_target):
    seed("pg", rows=10)
    stage = statements_stage("pg", ["SELECT pg_sleep(5)"], statement_timeout_ms=200)
    kind, manifest, data = driver.partition(stage)
    ctx = driver.context(stage, kind, data, 0, manifest.partitions[0], dry_run=False)
    with pytest.raises(ComponentError) as info:
        EXECUTORS["sql_migrate"]().execute(ctx)
    assert info.value.code == "statement_timeout"
    assert ledger_rows("pg") == []

    # Another session holds the table lock: the batch gives up after lock_timeout_ms.
    locked = backfill_stage("pg", batch_size=100, lock_timeout_ms=200)
    kind, manifest, data = driver.partition(locked)
    ctx = driver.context(locked, kind, data, 0, manifest.partitions[0], dry_run=False)
    with connect("pg") as holder:
        holder.begin()
        holder.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
        try:
            with pytest.raises(ComponentError) as info:
                EXECUTORS["sql_migrate"]().execute(ctx)
        finally:
            holder.rollback()
    assert info.value.code == "lock_timeout"
    assert null_domains("pg") == 7
    assert ledger_rows("pg") == []

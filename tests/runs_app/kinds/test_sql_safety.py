"""A dry-run never commits anything, and a plan's SQL never reaches outside its target.

Issue 11 §1. Each reproduction runs as an operator (no approval involved) and counts the
effect at the target or beside it; validation is tested for every forbidden class on both
dialects through the API; the execution guards are tested with validation bypassed.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import connection as hxo_connection

from blueprints_app.registry import EXECUTORS, ComponentError
from runs_app import services, tasks
from runs_app.errors import ServiceError
from runs_app.models import Partition, PartitionState, Run
from runs_app.targets import connect
from tests.runs_app.kinds.conftest import PG_ADMIN_URL, pg_role_url

pytestmark = pytest.mark.django_db(transaction=True)

FORBIDDEN = "forbidden_statement"


# --- helpers -------------------------------------------------------------------------------


def stage(target: str, statements: list[str], **params: Any) -> dict[str, Any]:
    return {
        "id": "migrate",
        "kind": "deploy.migrate",
        "partitioner": "by_sql_batch",
        "executor": "sql_migrate",
        "params": {"target": target, "statements": statements, **params},
    }


def plan(target: str, statements: list[str], **params: Any) -> dict[str, Any]:
    return {"name": f"sql-{uuid.uuid4().hex[:6]}", "stages": [stage(target, statements, **params)]}


def drain_all(run: Run) -> Run:
    for _ in range(200):
        tasks.drain(run.pk, budget_s=30)
        run.refresh_from_db()
        if run.is_finished:
            return run
    raise AssertionError(f"run {run.pk} did not finish: {run.state}")


def operator_dry_run(document: dict[str, Any], operator) -> ServiceError | Run:
    """What an operator gets: the plan refused at save, or the finished dry-run."""
    try:
        saved = services.plan_create(actor=operator, document=document)
    except ServiceError as exc:
        return exc
    return drain_all(services.run_start_dry_run(plan=saved, actor=operator))


def assert_refused(outcome: ServiceError | Run, path: str, *fragments: str) -> None:
    assert isinstance(outcome, ServiceError), f"not refused at save: run {outcome.state}"
    found = [e for e in outcome.errors if e["path"] == path and e["code"] == FORBIDDEN]
    assert found, outcome.errors
    for fragment in fragments:
        assert any(fragment in e["message"] for e in found), found


def count(target: str, sql: str) -> int:
    with connect(target) as conn:
        return int(conn.scalar(sql))


@pytest.fixture
def demo(sqlite_target) -> Path:
    path = sqlite_target("demo")
    call_command("hxo_demo", customers=50, orders=200)
    return path


@pytest.fixture
def pg_demo(pg_target, settings) -> str:
    """The demo tables in a scratch PostgreSQL database, as a non-superuser target "pg"."""
    settings.HXO_DATABASE_TARGETS = {**settings.HXO_DATABASE_TARGETS, "demo": pg_target}
    call_command("hxo_demo", customers=50, orders=200)
    settings.HXO_DATABASE_TARGETS = {**settings.HXO_DATABASE_TARGETS, "pg": pg_target}
    return pg_target


@pytest.fixture
def pg_super(pg_demo, settings) -> str:
    """The same database registered as "pgsu", connecting as the superuser `postgres`, with
    the superuser override on: what the reproductions of the issue used, so that only the
    SQL policy stands between a plan and the server."""
    dbname = pg_demo.rsplit("/", 1)[1]
    admin_role = PG_ADMIN_URL.split("://", 1)[1].split("@", 1)[0] or "postgres"
    url = pg_role_url(PG_ADMIN_URL, admin_role, dbname)
    settings.HXO_DATABASE_TARGETS = {**settings.HXO_DATABASE_TARGETS, "pgsu": url}
    settings.HXO_ALLOW_SUPERUSER_TARGETS = True
    return url


# --- reproductions: SQLite ----------------------------------------------------------------


def test_a_dry_run_that_commits_first_deletes_no_order(demo, operator):
    before = count("demo", "SELECT COUNT(*) FROM orders WHERE id <= 10")

    outcome = operator_dry_run(
        plan("demo", ["COMMIT", "DELETE FROM orders WHERE id <= 10"], batch_size=2), operator
    )

    assert count("demo", "SELECT COUNT(*) FROM orders WHERE id <= 10") == before == 10
    assert_refused(outcome, "stages[0].params.statements[0]", "transaction control")


def test_a_dry_run_cannot_attach_hxos_database_and_make_the_operator_an_admiral(demo, operator):
    if hxo_connection.vendor != "sqlite":
        pytest.skip("attaches HXO's own SQLite database")
    hxo_db = hxo_connection.settings_dict["NAME"]
    statements = [
        "COMMIT",
        f"ATTACH DATABASE '{hxo_db}' AS h",
        "INSERT INTO h.auth_user_groups (user_id, group_id) SELECT u.id, g.id "
        f"FROM h.auth_user u, h.auth_group g WHERE u.username = '{operator.username}' "
        "AND g.name = 'admiral'",
    ]

    outcome = operator_dry_run(plan("demo", statements, batch_size=3), operator)

    assert not operator.groups.filter(name="admiral").exists()
    assert Group.objects.get(name="admiral").user_set.count() == 0
    assert_refused(outcome, "stages[0].params.statements[1]", "ATTACH")


def test_a_dry_run_cannot_attach_another_database_file_and_write_into_it(demo, operator, tmp_path):
    other = tmp_path / "other.sqlite3"
    statements = [
        "COMMIT",
        f"ATTACH DATABASE '{other}' AS h",
        "CREATE TABLE h.stolen AS SELECT * FROM orders",
    ]

    outcome = operator_dry_run(plan("demo", statements, batch_size=3), operator)

    assert not other.exists()
    assert_refused(outcome, "stages[0].params.statements[1]", "ATTACH")


def test_a_dry_run_cannot_copy_a_database_to_a_file_with_vacuum_into(demo, operator, tmp_path):
    copy = tmp_path / "copy.sqlite3"

    outcome = operator_dry_run(
        plan("demo", ["COMMIT", f"VACUUM INTO '{copy}'"], batch_size=2), operator
    )

    assert not copy.exists()
    assert_refused(outcome, "stages[0].params.statements[1]", "VACUUM")


def test_a_statement_after_a_commit_in_its_own_batch_changes_nothing(demo, operator):
    # Batches apply in order; the dry-run of batch 1 replays batch 0 in the same transaction.
    outcome = operator_dry_run(
        plan("demo", ["CREATE TABLE pasted (id INTEGER)", "COMMIT"], batch_size=1), operator
    )

    with connect("demo") as conn:
        assert not conn.table_exists("pasted")
    assert_refused(outcome, "stages[0].params.statements[1]", "sqlmigrate")


# --- reproductions: PostgreSQL ------------------------------------------------------------


@pytest.mark.postgres
def test_one_item_hiding_a_commit_behind_an_escaped_quote_is_three_statements(pg_demo, operator):
    item = "SELECT E'\\''; COMMIT; DELETE FROM orders WHERE id = 2; --'"

    outcome = operator_dry_run(plan("pg", [item]), operator)

    assert count("pg", "SELECT COUNT(*) FROM orders WHERE id = 2") == 1
    assert_refused(outcome, "stages[0].params.statements[0]", "3 statements", "COMMIT")


@pytest.mark.postgres
def test_pasted_sqlmigrate_output_is_refused_with_how_to_fix_it_and_creates_nothing(
    pg_demo, operator
):
    pasted = ["BEGIN;", 'CREATE TABLE "shop_coupon" ("id" bigint NOT NULL PRIMARY KEY);', "COMMIT;"]

    outcome = operator_dry_run(plan("pg", pasted, batch_size=3), operator)

    with connect("pg") as conn:
        assert not conn.table_exists("shop_coupon")
    assert_refused(
        outcome, "stages[0].params.statements[0]", "own transaction", "BEGIN;/COMMIT; wrapper"
    )
    assert_refused(outcome, "stages[0].params.statements[2]", "sqlmigrate")
    # Without the wrapper the same statements are accepted.
    assert isinstance(operator_dry_run(plan("pg", pasted[1:2]), operator), Run)


@pytest.mark.postgres
def test_a_dry_run_cannot_run_a_program_on_the_server(pg_super, operator):
    # A directory the server's OS user can write to, so the program would succeed if run.
    where = Path(tempfile.mkdtemp(prefix="hxo-copy-program-"))
    where.chmod(0o777)
    marker = where / "owned"
    try:
        outcome = operator_dry_run(
            plan("pgsu", ["COMMIT", f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'"], batch_size=2),
            operator,
        )

        assert not marker.exists()
        assert_refused(outcome, "stages[0].params.statements[1]", "PROGRAM")
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.postgres
def test_a_dry_run_cannot_create_a_database(pg_super, operator):
    name = f"hxo_evil_{uuid.uuid4().hex[:8]}"

    outcome = operator_dry_run(
        plan("pgsu", ["COMMIT", f"CREATE DATABASE {name}"], batch_size=2), operator
    )

    with connect("pgsu") as conn:
        assert conn.scalar("SELECT COUNT(*) FROM pg_database WHERE datname = :n", {"n": name}) == 0
    assert_refused(outcome, "stages[0].params.statements[1]", "CREATE DATABASE")


@pytest.mark.postgres
def test_a_dry_run_cannot_install_dblink_and_write_into_another_database(
    pg_super, operator, tmp_path
):
    # The other database stands for HXO's own: a table the plan must not reach.
    import psycopg

    other = f"hxo_victim_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{other}"')
    victim = pg_role_url(PG_ADMIN_URL, "postgres", other)
    try:
        with psycopg.connect(victim, autocommit=True) as v:
            v.execute("CREATE TABLE auth_user_groups (user_id int, group_id int)")
        statements = [
            "COMMIT",
            "CREATE EXTENSION IF NOT EXISTS dblink",
            f"SELECT dblink_exec('dbname={other} user=postgres host=127.0.0.1', "
            "'INSERT INTO auth_user_groups VALUES (1, 1)')",
        ]

        outcome = operator_dry_run(plan("pgsu", statements, batch_size=3), operator)

        with psycopg.connect(victim) as v:
            assert v.execute("SELECT COUNT(*) FROM auth_user_groups").fetchone() == (0,)
        with connect("pgsu") as conn:
            assert conn.scalar("SELECT COUNT(*) FROM pg_extension WHERE extname = 'dblink'") == 0
        assert_refused(outcome, "stages[0].params.statements[1]", "CREATE EXTENSION")
        assert_refused(outcome, "stages[0].params.statements[2]", "dblink_exec()")
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("dry_run_ms", "stage_ms", "ddl"),
    [
        (500, 8000, "CREATE INDEX orders_status ON orders (status)"),
        # Never longer than the stage's own timeout.
        (30_000, 300, "ALTER TABLE orders ADD COLUMN orders_status text"),
    ],
)
def test_a_dry_run_of_ddl_gives_up_on_a_held_lock_after_the_short_dry_run_timeout(
    pg_demo, operator, settings, dry_run_ms, stage_ms, ddl
):
    settings.HXO_DRY_RUN_LOCK_TIMEOUT_MS = dry_run_ms
    document = plan("pg", [ddl], lock_timeout_ms=stage_ms)
    saved = services.plan_create(actor=operator, document=document)
    with connect("pg") as holder:
        holder.begin()
        holder.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        try:
            started = time.monotonic()
            run = drain_all(services.run_start_dry_run(plan=saved, actor=operator))
            elapsed = time.monotonic() - started
        finally:
            holder.rollback()

    failed = Partition.objects.get(run=run)
    assert failed.state == PartitionState.FAILED
    assert failed.error["code"] == "lock_timeout"
    # Retried attempts each wait ~0.5 s, never the stage's 8 s.
    assert elapsed < 6, elapsed
    with connect("pg") as conn:
        assert conn.scalar("SELECT COUNT(*) FROM pg_indexes WHERE indexname = 'orders_status'") == 0
        assert "orders_status" not in conn.columns("orders")


# --- every forbidden class, on both dialects, at validation --------------------------------

SQLITE_CASES = {
    "transaction_control": [
        "BEGIN",
        "BEGIN IMMEDIATE;",
        "COMMIT",
        "END TRANSACTION",
        "ROLLBACK",
        "SAVEPOINT s",
        "RELEASE s",
    ],
    "multiple_statements": ["SELECT ';'; DELETE FROM orders", "SELECT '\\'; DELETE FROM orders"],
    "other_databases": ["ATTACH DATABASE 'x.db' AS x", "DETACH x"],
    "vacuum": ["VACUUM", "VACUUM main INTO '/tmp/copy.db'"],
    "pragma": ["PRAGMA writable_schema = 1", "PRAGMA foreign_keys = OFF"],
    "extensions": ["SELECT load_extension('/tmp/evil.so')", "SELECT \"load_extension\"('x')"],
    "not_a_migration_statement": ["EXPLAIN SELECT 1"],
}
PG_CASES = {
    "transaction_control": [
        "BEGIN",
        "START TRANSACTION",
        "COMMIT",
        "END",
        "ROLLBACK",
        "SAVEPOINT s",
        "RELEASE SAVEPOINT s",
        "PREPARE TRANSACTION 'x'",
        "COMMIT PREPARED 'x'",
        "ROLLBACK PREPARED 'x'",
        "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN COMMIT; END $$",
    ],
    "multiple_statements": ["SELECT E'\\''; DELETE FROM orders; --'", "SELECT 1; SELECT 2"],
    "other_databases": [
        "SELECT dblink_exec('dbname=hxo', 'DELETE FROM x')",
        "CREATE FUNCTION f() RETURNS bool LANGUAGE plpgsql AS $$ BEGIN "
        "IF dblink_exec('x', 'y') = 'OK' THEN RETURN true; END IF; RETURN false; END $$",
        "CREATE VIEW v AS SELECT * FROM dblink('dbname=x', 'SELECT 1') AS t(a int)",
        "CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw",
        "CREATE USER MAPPING FOR CURRENT_USER SERVER s",
        "CREATE FOREIGN TABLE f (a int) SERVER s",
        "IMPORT FOREIGN SCHEMA public FROM SERVER s INTO x",
        "CREATE SUBSCRIPTION s CONNECTION 'dbname=x' PUBLICATION p",
    ],
    "server_files": [
        "COPY (SELECT 1) TO PROGRAM 'id'",
        "COPY orders TO '/tmp/orders.csv'",
        "COPY orders FROM '/etc/passwd'",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT pg_read_binary_file('x')",
        "SELECT * FROM pg_ls_dir('.')",
        "SELECT lo_import('/etc/passwd')",
        "SELECT lo_export(1, '/tmp/x')",
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS "
        "$$ DECLARE r text; BEGIN r := (SELECT pg_read_file('x')); RETURN 1; END $$",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC "
        "SELECT length(pg_read_file('x')); END",
        "CREATE TABLESPACE t LOCATION '/tmp'",
    ],
    "vacuum": ["VACUUM", "VACUUM FULL orders"],
    "extensions": [
        "CREATE EXTENSION dblink",
        "DROP EXTENSION dblink",
        "LOAD 'auto_explain'",
        "ALTER EXTENSION x UPDATE",
    ],
    "session": [
        "SET ROLE postgres",
        "RESET ROLE",
        "SET SESSION AUTHORIZATION postgres",
        "SET statement_timeout = 0",
        "SELECT set_config('role', 'postgres', false)",
        "DISCARD ALL",
    ],
    "server_administration": [
        "ALTER SYSTEM SET work_mem = '1GB'",
        "CREATE DATABASE x",
        "DROP DATABASE x",
        "ALTER DATABASE x SET work_mem = '1GB'",
        "CREATE ROLE x SUPERUSER",
        "GRANT postgres TO x",
        "CHECKPOINT",
        "SELECT pg_terminate_backend(1)",
        "SELECT pg_reload_conf()",
    ],
    "dynamic_sql": [
        "DO $$ BEGIN DELETE FROM orders; END $$",
        "PREPARE p AS SELECT 1",
        "EXECUTE p",
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'COMMIT'; END $$",
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpython3u AS $$ return 1 $$",
        "SELECT query_to_xml('SELECT 1', true, true, '')",
    ],
    "notifications": ["LISTEN x", "NOTIFY x", "SELECT pg_notify('x', 'y')"],
    "not_a_migration_statement": ["EXPLAIN ANALYZE DELETE FROM orders", "SHOW work_mem"],
}
CASES = [
    (vendor, rule, sql)
    for vendor, table in (("sqlite", SQLITE_CASES), ("postgresql", PG_CASES))
    for rule, items in table.items()
    for sql in items
]


@pytest.fixture
def both_targets(settings, tmp_path) -> dict[str, str]:
    """One target per vendor; validation reads them from settings and never connects."""
    settings.HXO_DATABASE_TARGETS = {
        **settings.HXO_DATABASE_TARGETS,
        "sqlite": f"sqlite:///{tmp_path / 'never.sqlite3'}",
        "postgresql": "postgres://migrator@127.0.0.1:1/never",
    }
    return {"sqlite": "sqlite", "postgresql": "postgresql"}


@pytest.mark.parametrize(("vendor", "rule", "sql"), CASES)
def test_every_forbidden_class_is_refused_by_validate_and_by_plan_save(
    both_targets, api_client_for, operator, vendor, rule, sql
):
    client = api_client_for(operator)
    document = plan(vendor, ["CREATE TABLE ok (id INTEGER)", sql])
    path = "stages[0].params.statements[1]"

    checked = client.post("/api/v1/validate/", {"plan": document}, format="json")
    saved = client.post("/api/v1/plans/", document, format="json")

    assert checked.status_code == 200
    assert checked.json()["valid"] is False
    assert {(e["path"], e["code"]) for e in checked.json()["errors"]} >= {(path, FORBIDDEN)}
    assert saved.status_code == 400
    assert {(e["path"], e["code"]) for e in saved.json()["errors"]} >= {(path, FORBIDDEN)}
    assert checked.json()["errors"] == saved.json()["errors"]
    from runs_app.sqlpolicy import RULES, analyse

    found = {f.rule for s in analyse(sql, vendor).statements for f in s.findings}
    assert rule in found or (
        rule == "multiple_statements" and len(analyse(sql, vendor).statements) > 1
    )
    assert rule in RULES


@pytest.mark.parametrize("vendor", ["sqlite", "postgresql"])
def test_a_forbidden_backfill_statement_is_refused_at_its_path(
    both_targets, api_client_for, operator, vendor
):
    document = plan(vendor, ["SELECT 1"])
    document["stages"][0]["params"] = {
        "target": vendor,
        "backfill": {
            "sql": "UPDATE orders SET status = 'x' WHERE id >= :start AND id < :end; COMMIT",
            "table": "orders",
            "key_column": "id",
        },
    }

    checked = api_client_for(operator).post("/api/v1/validate/", {"plan": document}, format="json")

    errors = {(e["path"], e["code"]) for e in checked.json()["errors"]}
    assert ("stages[0].params.backfill.sql", FORBIDDEN) in errors


def test_live_validation_of_a_single_stage_refuses_it_too(both_targets, api_client_for, operator):
    checked = api_client_for(operator).post(
        "/api/v1/validate/", {"stage": stage("sqlite", ["COMMIT"])}, format="json"
    )

    assert [(e["path"], e["code"]) for e in checked.json()["errors"]] == [
        ("stage.params.statements[0]", FORBIDDEN)
    ]


# --- execution guards, with validation bypassed ------------------------------------------


def crafted(driver, target: str, statements: list[str], *, dry_run: bool):
    """A partition context for `statements` as if a manifest had been pinned without the
    policy (an old manifest, or other code): nothing in it was validated."""
    stage_doc = stage(target, ["SELECT 1"])
    kind, manifest, data = driver.partition(stage_doc)
    data = {**data, "statements": statements, "batch_size": len(statements)}
    spec = manifest.partitions[0]
    spec.inputs = {**spec.inputs, "batch_id": 0, "offset": 0, "limit": len(statements)}
    return driver.context(stage_doc, kind, data, 0, spec, dry_run=dry_run)


@pytest.mark.parametrize("dry_run", [True, False])
def test_the_executor_checks_pinned_sql_against_the_policy_again(driver, demo, dry_run):
    ctx = crafted(driver, "demo", ["COMMIT", "DELETE FROM orders WHERE id <= 10"], dry_run=dry_run)

    with pytest.raises(ComponentError) as refused:
        EXECUTORS["sql_migrate"]().execute(ctx)

    assert refused.value.code == FORBIDDEN
    assert count("demo", "SELECT COUNT(*) FROM orders WHERE id <= 10") == 10


@pytest.fixture
def no_policy(monkeypatch):
    """Take the SQL policy out of the executor: only the connection's guards remain."""
    monkeypatch.setattr("runs_app.kinds.migrate.statement_error", lambda *a, **k: None)


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize("target", ["demo", pytest.param("pg", marks=pytest.mark.postgres)])
def test_without_the_policy_a_commit_still_cannot_let_the_rest_of_the_batch_run(
    driver, request, no_policy, target, dry_run
):
    request.getfixturevalue("demo" if target == "demo" else "pg_demo")
    ctx = crafted(driver, target, ["COMMIT", "DELETE FROM orders WHERE id <= 10"], dry_run=dry_run)

    with pytest.raises(ComponentError) as refused:
        EXECUTORS["sql_migrate"]().execute(ctx)

    # SQLite: the authorizer denies the COMMIT; PostgreSQL runs it, and the check after it
    # sees the transaction gone and stops before the DELETE.
    assert refused.value.code == (FORBIDDEN if target == "demo" else "transaction_ended")
    assert count(target, "SELECT COUNT(*) FROM orders WHERE id <= 10") == 10
    with connect(target) as conn:
        assert not conn.table_exists("hxo_ledger") or dry_run is False


@pytest.mark.parametrize("dry_run", [True, False])
def test_without_the_policy_attach_and_vacuum_into_write_no_file(
    driver, demo, no_policy, tmp_path, dry_run
):
    for statements in (
        [f"ATTACH DATABASE '{tmp_path / 'a.sqlite3'}' AS h", "CREATE TABLE h.t AS SELECT 1"],
        ["COMMIT", f"ATTACH DATABASE '{tmp_path / 'a.sqlite3'}' AS h"],
        ["COMMIT", f"VACUUM INTO '{tmp_path / 'b.sqlite3'}'"],
        [f"VACUUM INTO '{tmp_path / 'b.sqlite3'}'"],
    ):
        ctx = crafted(driver, "demo", statements, dry_run=dry_run)
        with pytest.raises(ComponentError) as refused:
            EXECUTORS["sql_migrate"]().execute(ctx)
        assert refused.value.code in (FORBIDDEN, "sql_error"), refused.value.message

    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.sqlite3"]


SQLITE_DENIED = [
    "COMMIT",
    "END",
    "ROLLBACK",
    "BEGIN",
    "SAVEPOINT s",
    "RELEASE s",
    "ATTACH DATABASE ':memory:' AS other",
    "DETACH main",
    "PRAGMA writable_schema = 1",
    "PRAGMA journal_mode = DELETE",
    "SELECT load_extension('/tmp/evil.so')",
    "VACUUM",
]


@pytest.mark.parametrize("sql", SQLITE_DENIED)
def test_the_sqlite_authorizer_alone_denies_each_forbidden_action(demo, sql):
    import sqlite3

    with connect("demo") as conn:
        conn.begin()
        conn.run_statement("DELETE FROM orders WHERE id <= 10")
        with pytest.raises((ComponentError, sqlite3.Error)) as refused:
            conn.run_statement(sql)
        assert conn.raw.in_transaction  # the batch's transaction is intact
        conn.rollback()

    assert getattr(refused.value, "code", FORBIDDEN) == FORBIDDEN
    assert count("demo", "SELECT COUNT(*) FROM orders WHERE id <= 10") == 10


def test_sqlite_refuses_vacuum_into_even_outside_a_batch(demo, tmp_path):
    copy = tmp_path / "copy.sqlite3"
    with connect("demo") as conn:
        with pytest.raises(Exception):  # noqa: B017 (the authorizer or SQLite itself)
            conn.execute(f"VACUUM INTO '{copy}'")
        with pytest.raises(Exception):  # noqa: B017
            conn.execute(f"ATTACH DATABASE '{tmp_path / 'x.db'}' AS x")
    assert not copy.exists()
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("target", ["demo", pytest.param("pg", marks=pytest.mark.postgres)])
def test_a_second_statement_in_one_call_is_refused_by_the_engine_itself(request, target):
    request.getfixturevalue("demo" if target == "demo" else "pg_demo")

    with connect(target) as conn:
        conn.begin()
        with pytest.raises(ComponentError) as refused:
            conn.run_statement("SELECT 1; DELETE FROM orders")
        conn.rollback()

    assert refused.value.code == FORBIDDEN
    assert "more than one statement" in refused.value.message

    assert count(target, "SELECT COUNT(*) FROM orders") == 200


@pytest.mark.postgres
@pytest.mark.parametrize("sql", ["COMMIT", "ROLLBACK", "END", "PREPARE TRANSACTION 'x'"])
def test_on_postgresql_a_statement_that_ends_the_transaction_fails_the_batch(pg_demo, sql):
    with connect("pg") as conn:
        conn.begin()
        with pytest.raises(Exception) as ended:
            conn.run_statement(sql)
            conn.run_statement("DELETE FROM orders WHERE id <= 10")

    assert getattr(ended.value, "code", "transaction_ended") == "transaction_ended"
    assert count("pg", "SELECT COUNT(*) FROM orders WHERE id <= 10") == 10


def test_plan_sql_never_runs_outside_a_transaction(demo):
    with connect("demo") as conn, pytest.raises(ComponentError) as refused:
        conn.run_statement("DELETE FROM orders WHERE id <= 10")

    assert refused.value.code == "transaction_ended"
    assert count("demo", "SELECT COUNT(*) FROM orders WHERE id <= 10") == 10


# --- what stays allowed ------------------------------------------------------------------

LEGIT_COMMON = [
    "CREATE TABLE coupons (id INTEGER PRIMARY KEY, code VARCHAR(20) NOT NULL, note TEXT)",
    "CREATE INDEX coupons_code ON coupons (code)",
    "-- a comment; with a semicolon\nINSERT INTO coupons (id, code, note) "
    "SELECT id, 'C' || id, 'a;b -- not a comment' FROM orders WHERE id <= 5",
    "UPDATE coupons SET note = 'it''s; fine /* no */' WHERE id = 1;",
    "WITH paid AS (SELECT id FROM orders WHERE id <= 3) "
    "UPDATE coupons SET code = 'PAID' WHERE id IN (SELECT id FROM paid)",
    "/* leading comment */ ALTER TABLE coupons ADD COLUMN used INTEGER",
    "DELETE FROM coupons WHERE id = 5",
]
LEGIT = {
    "sqlite": [
        *LEGIT_COMMON,
        "CREATE TRIGGER coupons_touch AFTER UPDATE ON coupons BEGIN "
        "UPDATE coupons SET used = 1 WHERE id = new.id; END",
        "UPDATE coupons SET note = 'touched' WHERE id = 2",
        "SELECT * FROM pragma_table_info('coupons')",
    ],
    "pg": [
        *LEGIT_COMMON,
        "CREATE FUNCTION coupon_label(c text) RETURNS text LANGUAGE plpgsql AS $body$ "
        "BEGIN RETURN 'coupon; ' || c; END $body$",
        "CREATE FUNCTION coupon_twice(n int) RETURNS int LANGUAGE sql AS $$ SELECT n * 2; $$",
        "UPDATE coupons SET note = coupon_label(code) || coupon_twice(id) WHERE id = 2",
        "SELECT E'it\\'s'",
        "COMMENT ON TABLE coupons IS 'made by HXO; reviewed'",
    ],
}


@pytest.mark.parametrize("target", ["demo", pytest.param("pg", marks=pytest.mark.postgres)])
def test_ordinary_ddl_and_dml_validate_dry_run_and_apply(
    request, driver, api_client_for, operator, target
):
    request.getfixturevalue("demo" if target == "demo" else "pg_demo")
    statements = LEGIT["sqlite" if target == "demo" else "pg"]
    document = plan(target, statements, batch_size=3)

    checked = api_client_for(operator).post("/api/v1/validate/", {"plan": document}, format="json")
    assert checked.json()["errors"] == []
    driver.run(document["stages"][0], dry_run=True)
    with connect(target) as conn:
        assert not conn.table_exists("coupons")
    driver.run(document["stages"][0], dry_run=False)

    assert count(target, "SELECT COUNT(*) FROM coupons") == 4
    assert count(target, "SELECT COUNT(*) FROM coupons WHERE code = 'PAID'") == 3
    note = "coupon; PAID4" if target == "pg" else "touched"
    assert count(target, f"SELECT COUNT(*) FROM coupons WHERE note = '{note}'") == 1
    if target == "demo":
        assert count("demo", "SELECT used FROM coupons WHERE id = 2") == 1


# --- superuser targets -------------------------------------------------------------------


@pytest.mark.postgres
def test_a_superuser_target_is_refused_unless_explicitly_allowed(pg_super, settings):
    settings.HXO_ALLOW_SUPERUSER_TARGETS = False
    with pytest.raises(ComponentError) as refused, connect("pgsu"):
        pass
    assert refused.value.code == "superuser_target"
    assert "HXO_ALLOW_SUPERUSER_TARGETS" in refused.value.message

    with connect("pg") as conn:  # the suite's own role: no superuser
        assert conn.scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False

    settings.HXO_ALLOW_SUPERUSER_TARGETS = True
    with connect("pgsu") as conn:
        assert conn.scalar("SELECT current_setting('is_superuser')") == "on"


@pytest.mark.postgres
def test_a_dry_run_on_a_superuser_target_fails_with_the_code(pg_super, settings, operator):
    settings.HXO_ALLOW_SUPERUSER_TARGETS = False

    run = operator_dry_run(plan("pgsu", ["DELETE FROM orders WHERE id <= 10"]), operator)

    assert isinstance(run, Run)
    assert {p.error["code"] for p in Partition.objects.filter(run=run)} == {"superuser_target"}
    assert count("pg", "SELECT COUNT(*) FROM orders WHERE id <= 10") == 10


def test_the_plan_editor_refuses_to_save_it_and_live_validation_shows_it(demo, operator):
    import json

    from django.test import Client

    from runs_app.models import Plan

    browser = Client()
    browser.force_login(operator)
    document = json.dumps(plan("demo", ["CREATE TABLE ok (id INTEGER)", "COMMIT"]))

    saved = browser.post("/plans/new/json/", {"document": document, "_action": "save"})
    live = browser.post("/plans/validate-json/", {"document": document})

    assert saved.status_code == 400
    assert not Plan.objects.exists()
    for body in (saved.content.decode(), live.content.decode()):
        assert "stages[0].params.statements[1]" in body
        assert "transaction control" in body


HARMLESS_BODIES = [
    "CREATE OR REPLACE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$\n"
    "DECLARE n int := 0;\nBEGIN\n  NEW.created_at := now()::text;\n"
    "  IF NEW.total_cents > 1 THEN PERFORM pg_sleep(0); END IF;\n"
    "  FOR n IN SELECT id FROM orders LIMIT 1 LOOP RAISE NOTICE '%; done', n; END LOOP;\n"
    "  RETURN NEW;\nEND; $$",
    "CREATE FUNCTION plus_one(a int) RETURNS int LANGUAGE sql IMMUTABLE RETURN a + 1",
    "CREATE PROCEDURE mark(a int) LANGUAGE plpgsql AS $$ BEGIN "
    "UPDATE orders SET status = 'x' WHERE id = a; END $$",
    "CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch()",
]


@pytest.mark.postgres
def test_harmless_function_bodies_validate_and_apply_on_postgresql(
    pg_demo, driver, api_client_for, operator
):
    document = plan("pg", HARMLESS_BODIES)

    checked = api_client_for(operator).post("/api/v1/validate/", {"plan": document}, format="json")
    assert checked.json()["errors"] == []
    driver.run(document["stages"][0], dry_run=False)

    with connect("pg") as conn:  # the trigger runs its body: created_at is stamped
        conn.begin()
        conn.run_statement("UPDATE orders SET total_cents = 5, created_at = 'x' WHERE id = 1")
        conn.run_statement("CALL mark(2)")
        conn.commit()
    assert count("pg", "SELECT plus_one(41)") == 42
    assert count("pg", "SELECT COUNT(*) FROM orders WHERE id = 1 AND created_at = 'x'") == 0
    assert count("pg", "SELECT COUNT(*) FROM orders WHERE id = 2 AND status = 'x'") == 1


UNREADABLE = [
    *((vendor, item) for vendor in ("sqlite", "postgresql") for item in (" ", "-- a", ";", "'")),
    ("postgresql", "$$"),
    ("postgresql", "SELEC 1"),
    ("sqlite", "SELECT [unterminated"),
]


@pytest.mark.parametrize(("vendor", "item"), UNREADABLE)
def test_sql_the_parser_cannot_read_is_invalid_sql_never_a_500(
    both_targets, api_client_for, operator, vendor, item
):
    checked = api_client_for(operator).post(
        "/api/v1/validate/", {"plan": plan(vendor, [item])}, format="json"
    )

    assert checked.status_code == 200
    errors = {(e["path"], e["code"]) for e in checked.json()["errors"]}
    assert errors == {("stages[0].params.statements[0]", "invalid_sql")}


@pytest.mark.parametrize("vendor", ["sqlite", "postgresql"])
def test_text_that_is_not_valid_unicode_is_invalid_sql(vendor):
    from runs_app.sqlpolicy import item_errors

    errors = item_errors("SELECT '\ud800'", vendor, path="p")

    assert [e.code for e in errors] == ["invalid_sql"]

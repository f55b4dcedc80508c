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
from hxo_site.errors import ServiceError
from runs_app import services
from runs_app.models import Partition, PartitionState, Run
from runs_app.targets import connect
from tests.helpers import drain
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


def operator_dry_run(document: dict[str, Any], operator) -> ServiceError | Run:
    """What an operator gets: the plan refused at save, or the finished dry-run."""
    try:
        saved = services.plan_create(actor=operator, document=document)
    except ServiceError as exc:
        return exc
    return drain(services.run_start_dry_run(plan=saved, actor=operator))


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
            run = drain(services.run_start_dry_run(plan=saved, actor=operator))
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


# --- reproductions of round 2: indirect calls, lifted timeouts, the ledger -----------------

# Each list is one plan; the first item makes something the second uses to signal sessions.
TERMINATE_VIA = {
    "an operator bound to pg_terminate_backend": [
        "CREATE OPERATOR !!! (leftarg = integer, rightarg = bigint, "
        "function = pg_terminate_backend)",
        "SELECT pid !!! 0::bigint FROM pg_stat_activity WHERE application_name = 'victim'",
    ],
    "ts_rewrite running a query the policy never saw": [
        "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, ''b''::tsquery "
        "FROM pg_stat_activity s, pg_terminate_backend(s.pid) "
        "WHERE s.application_name = ''victim''')",
    ],
    "RETURN QUERY EXECUTE in a PL/pgSQL body": [
        "CREATE FUNCTION kill_them() RETURNS SETOF boolean LANGUAGE plpgsql AS $$ BEGIN "
        "RETURN QUERY EXECUTE 'SELECT pg_terminate_backend(pid, 0) FROM pg_stat_activity "
        "WHERE application_name = ''vic' || 'tim'''; END $$",
        "SELECT * FROM kill_them()",
    ],
    "an aggregate whose final function is pg_cancel_backend": [
        "CREATE AGGREGATE kill_one(integer) (sfunc = int4larger, stype = integer, "
        "finalfunc = pg_cancel_backend)",
        "SELECT kill_one(pid) FROM pg_stat_activity WHERE application_name = 'victim'",
    ],
    "attribute notation": [
        "SELECT (pid).pg_terminate_backend FROM pg_stat_activity WHERE application_name = 'victim'",
    ],
    "a column default": [
        "CREATE TABLE kills (pid integer, done boolean DEFAULT pg_terminate_backend("
        "(SELECT pid FROM pg_stat_activity WHERE application_name = 'victim')))",
        "INSERT INTO kills (pid) VALUES (1)",
    ],
}


@pytest.mark.postgres
@pytest.mark.parametrize("how", sorted(TERMINATE_VIA))
def test_a_dry_run_cannot_terminate_other_sessions_on_the_target(pg_demo, operator, how):
    """A non-superuser may signal every session of its own role; the functions are refused
    by name, and so is every other way of naming them (finding 1 of round 2)."""
    import psycopg

    victim = psycopg.connect(pg_demo, autocommit=True, application_name="victim")
    victim.execute("BEGIN")
    victim.execute("SELECT 1")  # idle in transaction: a cancel or terminate would hit it
    try:
        outcome = operator_dry_run(plan("pg", TERMINATE_VIA[how], batch_size=5), operator)

        victim.execute("SELECT 1")  # raises if the session was terminated or cancelled
        assert isinstance(outcome, ServiceError), f"{how}: not refused at save"
        assert any(e["code"] == FORBIDDEN for e in outcome.errors), outcome.errors
    finally:
        victim.close()


LIFT_TIMEOUTS_VIA = {
    "UPDATE pg_settings": ["UPDATE pg_settings SET setting = '0' WHERE name = 'statement_timeout'"],
    "UPDATE pg_catalog.pg_settings": [
        "UPDATE pg_catalog.pg_settings SET setting = '0' "
        "WHERE name IN ('lock_timeout', 'statement_timeout')"
    ],
    "a view over pg_settings": [
        "CREATE VIEW s AS SELECT * FROM pg_settings",
        "UPDATE s SET setting = '0' WHERE name = 'statement_timeout'",
    ],
    "a function's SET clause": [
        "CREATE FUNCTION lift() RETURNS void SET statement_timeout = 0 LANGUAGE sql "
        "AS 'SELECT pg_sleep(2)'",
        "SELECT lift()",
    ],
    "ALTER FUNCTION ... SET": [
        "CREATE FUNCTION lift() RETURNS void LANGUAGE sql AS 'SELECT pg_sleep(2)'",
        "ALTER FUNCTION lift() SET statement_timeout = 0",
        "SELECT lift()",
    ],
}


@pytest.mark.postgres
@pytest.mark.parametrize("how", sorted(LIFT_TIMEOUTS_VIA))
def test_a_dry_run_cannot_lift_the_timeouts_hxo_set(pg_demo, operator, how):
    """The statement timeout HXO sets holds for the whole batch: pg_settings (whose UPDATE
    rule calls set_config) and function SET clauses are refused at save."""
    statements = [*LIFT_TIMEOUTS_VIA[how], "SELECT pg_sleep(2)"]
    started = time.monotonic()

    outcome = operator_dry_run(
        plan("pg", statements, batch_size=5, statement_timeout_ms=1000), operator
    )

    assert isinstance(outcome, ServiceError), f"{how}: not refused; dry-run {outcome.state}"
    assert time.monotonic() - started < 2  # nothing slept
    with connect("pg") as conn:
        assert conn.scalar("SELECT COUNT(*) FROM pg_proc WHERE proname = 'lift'") == 0


# The attacker's statements against the ledger (finding 9), valid SQL on both dialects.
LEDGER_ATTACKS = [
    "DELETE FROM hxo_ledger",
    "INSERT INTO hxo_ledger SELECT plan_digest, stage_id, batch_id + 1, batch_digest, "
    "rows_affected, run_id, partition_id, fence, applied_at FROM hxo_ledger",
    "DROP TABLE hxo_ledger",
    "CREATE TRIGGER forget AFTER INSERT ON hxo_ledger BEGIN DELETE FROM hxo_ledger; END",
]
LEDGER_REWRITES = [
    *LEDGER_ATTACKS,
    "DELETE FROM hxo_ledger_batches",
    "UPDATE hxo_ledger_batches SET rows_affected = 0",
    "DROP TABLE hxo_ledger_batches",
    "CREATE TRIGGER forget AFTER INSERT ON orders BEGIN DELETE FROM hxo_ledger_batches; END",
]


@pytest.mark.parametrize("sql", LEDGER_REWRITES)
@pytest.mark.parametrize("target", ["demo", pytest.param("pg", marks=pytest.mark.postgres)])
def test_plan_sql_cannot_rewrite_the_migration_ledger_in_the_target(
    request, driver, operator, target, sql
):
    """The ledger that makes a batch apply exactly once lives in the target: plan SQL naming
    it is refused on both dialects (finding 9 of round 2), and its rows stay."""
    request.getfixturevalue("demo" if target == "demo" else "pg_demo")
    if target == "pg" and " BEGIN " in sql:  # SQLite's trigger body as a trigger function
        body = sql.split(" BEGIN ", 1)[1].removesuffix("; END")
        sql = (
            "CREATE FUNCTION forget() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN {body}; RETURN NULL; END $$"
        )
    driver.run(stage(target, ["UPDATE orders SET status = 'seen' WHERE id = 1"]), dry_run=False)
    before = count(target, "SELECT COUNT(*) FROM hxo_ledger_batches")

    outcome = operator_dry_run(plan(target, [sql]), operator)

    assert_refused(outcome, "stages[0].params.statements[0]", "migration ledger")
    assert count(target, "SELECT COUNT(*) FROM hxo_ledger_batches") == before == 1


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
    # Plain VACUUM runs alone outside a transaction (test_migrate_outside_transaction.py).
    "vacuum": ["VACUUM main INTO '/tmp/copy.db'", "VACUUM INTO '/tmp/copy.db'"],
    "pragma": ["PRAGMA writable_schema = 1", "PRAGMA foreign_keys = OFF"],
    "extensions": [
        "SELECT load_extension('/tmp/evil.so')",
        "SELECT \"load_extension\"('x')",
        "REPLACE INTO orders (id) SELECT load_extension('/tmp/evil.so')",
    ],
    "not_a_migration_statement": ["EXPLAIN SELECT 1"],
    "system_catalog": [
        "UPDATE sqlite_sequence SET seq = 0 WHERE name = 'orders'",
        'UPDATE OR IGNORE main."sqlite_sequence" SET seq = 0',
        "DELETE FROM sqlite_stat1",
        "INSERT INTO main.sqlite_stat1 VALUES ('orders', NULL, '1')",
        "REPLACE INTO [sqlite_stat1] VALUES ('orders', NULL, '1')",
        "DROP TABLE IF EXISTS sqlite_stat1",
        "CREATE TRIGGER t AFTER UPDATE OF status ON orders BEGIN "
        "UPDATE sqlite_sequence SET seq = 1; END",
    ],
    "ledger_tables": [
        *LEDGER_ATTACKS,
        "DELETE FROM [HXO_LEDGER_BATCHES]",
        'DELETE FROM "Hxo_Ledger_Intervals"',
        "INSERT INTO 'hxo_ledger_backfills' SELECT * FROM hxo_ledger_backfills",
        "UPDATE main.hxo_ledger_batches SET rows_affected = 0",
        "CREATE TEMP TABLE hxo_ledger_batches (id INTEGER)",
        "ALTER TABLE orders RENAME TO hxo_ledger_intervals",
        "CREATE VIEW v AS SELECT * FROM hxo_ledger_batches",
        "CREATE TRIGGER forget AFTER INSERT ON orders BEGIN DELETE FROM hxo_ledger_intervals; END",
    ],
}
# Reaching a refused function without a call naming it: bound by name to an operator,
# aggregate, range type, cast, operator class or trigger, attribute notation, regproc.
PG_INDIRECT_CALLS = [
    "CREATE OPERATOR !!! (leftarg = integer, rightarg = bigint, function = pg_terminate_backend)",
    "CREATE OPERATOR !!! (leftarg = integer, procedure = pg_catalog.pg_cancel_backend)",
    "CREATE AGGREGATE kill_one(integer) (sfunc = int4larger, stype = integer, "
    "finalfunc = pg_cancel_backend)",
    "CREATE AGGREGATE kill_one(integer) (sfunc = int4larger, stype = integer, "
    "finalfunc = 'pg_cancel_backend')",
    "CREATE AGGREGATE k(integer) (sfunc = int4larger, stype = integer, "
    "combinefunc = pg_terminate_backend)",
    "CREATE TYPE r AS RANGE (subtype = int4, subtype_diff = pg_cancel_backend)",
    "CREATE CAST (integer AS boolean) WITH FUNCTION pg_cancel_backend(integer)",
    "CREATE OPERATOR CLASS c FOR TYPE integer USING btree AS "
    "FUNCTION 1 pg_terminate_backend(integer)",
    "ALTER OPERATOR FAMILY f USING btree ADD FUNCTION 1 (integer, integer) "
    "pg_cancel_backend(integer)",
    "CREATE TRIGGER t AFTER INSERT ON orders EXECUTE FUNCTION pg_reload_conf()",
    "ALTER OPERATOR === (integer, integer) SET (restrict = pg_cancel_backend)",
    "SELECT (pid).pg_cancel_backend FROM pg_stat_activity",
    "SELECT 'pg_terminate_backend'::regproc",
    "SELECT 'pg_catalog.pg_terminate_backend(integer)'::regprocedure",
    "SELECT to_regproc('PG_CANCEL_BACKEND')",
    "CREATE DOMAIN d AS integer DEFAULT pg_cancel_backend(1)",
    "CREATE DOMAIN d AS integer CHECK (pg_cancel_backend(VALUE))",
    "CREATE TABLE t (id integer DEFAULT pg_cancel_backend(1))",
    "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ DECLARE x bool; BEGIN "
    "x := (0).pg_cancel_backend; RETURN 1; END $$",
]
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
        # The settings view's UPDATE rule calls set_config(); views forward writes to it.
        "UPDATE pg_settings SET setting = '0' WHERE name = 'statement_timeout'",
        "UPDATE pg_catalog.pg_settings SET setting = '0' WHERE name IN "
        "('lock_timeout', 'statement_timeout')",
        "CREATE VIEW s AS SELECT * FROM pg_settings",
        # A function's SET/RESET clause applies to the session whenever it runs.
        "CREATE FUNCTION take_lock() RETURNS void SET lock_timeout = 0 LANGUAGE sql "
        "AS 'LOCK TABLE orders IN ACCESS EXCLUSIVE MODE'",
        "CREATE PROCEDURE p() SET statement_timeout TO DEFAULT LANGUAGE sql AS 'SELECT 1'",
        "ALTER FUNCTION f() SET statement_timeout = 0",
        "ALTER FUNCTION f() RESET ALL",
        "ALTER PROCEDURE p() RESET lock_timeout",
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
        *PG_INDIRECT_CALLS,
    ],
    "dynamic_sql": [
        "DO $$ BEGIN DELETE FROM orders; END $$",
        "PREPARE p AS SELECT 1",
        "EXECUTE p",
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'COMMIT'; END $$",
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpython3u AS $$ return 1 $$",
        "SELECT query_to_xml('SELECT 1', true, true, '')",
        # Functions and statements running SQL given as text.
        "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, ''b''::tsquery "
        "FROM pg_stat_activity s, pg_terminate_backend(s.pid)')",
        "CREATE OPERATOR @@@ (leftarg = tsquery, rightarg = text, function = ts_rewrite)",
        "SELECT * FROM crosstab('SELECT 1, 2, 3') AS t(a int, b int)",
        "CREATE FUNCTION kill_them() RETURNS SETOF boolean LANGUAGE plpgsql AS $$ BEGIN "
        "RETURN QUERY EXECUTE 'SELECT pg_terminate_backend(pid, 0) FROM pg_stat_activity "
        "WHERE application_name = ''vic'' || ''tim'''; END $$",
    ],
    "notifications": ["LISTEN x", "NOTIFY x", "SELECT pg_notify('x', 'y')"],
    "not_a_migration_statement": [
        "EXPLAIN ANALYZE DELETE FROM orders",
        "SHOW work_mem",
        # Objects bound to C functions.
        "CREATE TYPE t (INPUT = t_in, OUTPUT = t_out)",
        "CREATE TEXT SEARCH PARSER p (START = s, GETTOKEN = g, END = e, LEXTYPES = l)",
        "CREATE TEXT SEARCH TEMPLATE t (LEXIZE = dsimple_lexize)",
        "CREATE CONVERSION c FOR 'UTF8' TO 'LATIN1' FROM utf8_to_iso8859_1",
        "CREATE TRANSFORM FOR int LANGUAGE sql (FROM SQL WITH FUNCTION f(internal))",
    ],
    "system_catalog": [
        "UPDATE pg_catalog.pg_class SET relname = 'x' WHERE relname = 'orders'",
        "DELETE FROM pg_proc WHERE proname = 'f'",
        "INSERT INTO information_schema.sql_features SELECT * FROM information_schema.sql_features",
        "WITH u AS (UPDATE pg_catalog.pg_class SET relname = 'x') SELECT 1",
        "CREATE VIEW c AS SELECT * FROM pg_catalog.pg_class",
        "CREATE TRIGGER t AFTER INSERT ON pg_catalog.pg_class EXECUTE FUNCTION f()",
        "TRUNCATE pg_catalog.pg_description",
    ],
    "ledger_tables": [
        *LEDGER_ATTACKS[:3],
        "CREATE TRIGGER forget AFTER INSERT ON hxo_ledger FOR EACH ROW EXECUTE FUNCTION f()",
        "DELETE FROM public.hxo_ledger_batches",
        "TRUNCATE hxo_ledger_intervals",
        "ALTER TABLE hxo_ledger_backfills ADD COLUMN x int",
        "ALTER TABLE orders RENAME TO hxo_ledger_batches",
        "CREATE TEMP TABLE hxo_ledger_batches (id int)",
        "CREATE VIEW v AS SELECT * FROM hxo_ledger_batches",
        "SELECT 'HXO_LEDGER_BATCHES'::regclass",
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'DELETE FROM hxo_ledger_intervals'",
        "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "DELETE FROM hxo_ledger_batches; RETURN NULL; END $$",
    ],
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


# A backfill runs once per batch with :start/:end bound to that batch's slice of the key;
# each of these would touch rows outside it (every row, in every batch).
UNCONFINED_BACKFILLS = [
    "UPDATE orders SET status = 'x' WHERE id >= :start AND id < :end OR true",
    "WITH s AS (SELECT :start, :end) DELETE FROM orders",
    "UPDATE orders SET status = 'x' WHERE id >= :start OR id < :end",
    "UPDATE orders SET status = 'x' WHERE status <> 'x' AND :start < :end",
    "UPDATE orders SET status = 'x' WHERE total_cents >= :start AND total_cents < :end",
    "UPDATE customers SET email = 'x' WHERE id >= :start AND id < :end",
    "DELETE FROM orders WHERE id >= :start AND id > :end",
    "DELETE FROM orders WHERE NOT (id < :start OR id >= :end) OR 1 = 1",
    "INSERT INTO customers (email) SELECT :start || :end",
    "INSERT INTO customers (email) SELECT status FROM orders WHERE id >= :start AND id < :end "
    "UNION SELECT status FROM orders",
    "UPDATE orders SET status = 'x' FROM customers c WHERE c.id >= :start AND c.id < :end",
]
CONFINED_BACKFILLS = [
    "UPDATE orders SET status = 'x' WHERE id >= :start AND id < :end AND status <> 'x'",
    "UPDATE orders AS o SET status = 'x' WHERE :start <= o.id AND o.id <= :last",
    "DELETE FROM orders WHERE id BETWEEN :start AND :last AND status = 'gone'",
    "INSERT INTO customers (email) SELECT o.status FROM orders o "
    "WHERE o.id >= :start AND o.id < :end",
    "WITH paid AS (SELECT id FROM orders WHERE status = 'paid') UPDATE orders SET status = 'x' "
    "WHERE (id >= :start AND id < :end) AND id IN (SELECT id FROM paid)",
]


def backfill_plan(vendor: str, sql: str) -> dict[str, Any]:
    document = plan(vendor, ["SELECT 1"])
    document["stages"][0]["params"] = {
        "target": vendor,
        "backfill": {"sql": sql, "table": "orders", "key_column": "id"},
    }
    return document


@pytest.mark.parametrize("sql", UNCONFINED_BACKFILLS)
@pytest.mark.parametrize("vendor", ["sqlite", "postgresql"])
def test_a_backfill_not_confined_to_its_key_range_is_refused(
    both_targets, api_client_for, operator, vendor, sql
):
    checked = api_client_for(operator).post(
        "/api/v1/validate/", {"plan": backfill_plan(vendor, sql)}, format="json"
    )

    errors = [(e["path"], e["code"]) for e in checked.json()["errors"]]
    assert errors == [("stages[0].params.backfill.sql", "backfill_not_confined")]
    assert "id >= :start" in checked.json()["errors"][0]["message"]


def test_a_data_modifying_with_around_a_confined_backfill_is_refused(
    both_targets, api_client_for, operator
):
    sql = (
        "WITH gone AS (DELETE FROM orders RETURNING id) UPDATE orders SET status = 'x' "
        "WHERE id >= :start AND id < :end"
    )
    checked = api_client_for(operator).post(
        "/api/v1/validate/", {"plan": backfill_plan("postgresql", sql)}, format="json"
    )

    assert [e["code"] for e in checked.json()["errors"]] == ["backfill_not_confined"]


@pytest.mark.parametrize("sql", CONFINED_BACKFILLS)
@pytest.mark.parametrize("vendor", ["sqlite", "postgresql"])
def test_a_backfill_confined_to_its_key_range_validates(
    both_targets, api_client_for, operator, vendor, sql
):
    checked = api_client_for(operator).post(
        "/api/v1/validate/", {"plan": backfill_plan(vendor, sql)}, format="json"
    )

    assert checked.json()["errors"] == []


def test_an_unconfined_backfill_changes_no_row(demo, operator):
    sql = "UPDATE orders SET status = 'x' WHERE id >= :start AND id < :end OR true"
    document = backfill_plan("demo", sql)

    outcome = operator_dry_run(document, operator)

    assert isinstance(outcome, ServiceError)
    assert [e["code"] for e in outcome.errors] == ["backfill_not_confined"]
    assert count("demo", "SELECT COUNT(*) FROM orders WHERE status = 'x'") == 0


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


LEDGER_WRITES = [
    "DELETE FROM hxo_ledger_batches",
    "UPDATE hxo_ledger_batches SET rows_affected = 0",
    "INSERT INTO hxo_ledger_intervals SELECT * FROM hxo_ledger_intervals",
    "DROP TABLE hxo_ledger_batches",
    "ALTER TABLE hxo_ledger_batches RENAME TO gone",
    "CREATE TRIGGER wipe AFTER INSERT ON hxo_ledger_batches BEGIN DELETE FROM orders; END",
    "CREATE INDEX hxo_x ON hxo_ledger_batches (rows_affected)",
    "CREATE TEMP TABLE hxo_ledger_batches (x INTEGER)",
    "SELECT COUNT(*) FROM HXO_LEDGER_BATCHES",
]


@pytest.mark.parametrize("sql", LEDGER_WRITES)
def test_the_sqlite_authorizer_alone_keeps_plan_sql_off_the_ledger(driver, demo, no_policy, sql):
    # Validation refuses these (ledger_tables); with it bypassed the authorizer still denies
    # every action of a plan statement on a ledger table, while HXO's own ledger writes of
    # the same batch go through: the apply records its batch, and the ledger is unchanged.
    applied = crafted(driver, "demo", ["UPDATE orders SET id = id WHERE id = 1"], dry_run=False)
    EXECUTORS["sql_migrate"]().execute(applied)
    before = count("demo", "SELECT COUNT(*) FROM hxo_ledger_batches")
    assert before == 1

    ctx = crafted(driver, "demo", [sql], dry_run=False)
    with pytest.raises(ComponentError) as refused:
        EXECUTORS["sql_migrate"]().execute(ctx)

    assert refused.value.code == FORBIDDEN, refused.value.message
    assert count("demo", "SELECT COUNT(*) FROM hxo_ledger_batches") == before
    assert count("demo", "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('wipe', 'hxo_x')") == 0


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
        "ANALYZE coupons",
        "SELECT COUNT(*) FROM sqlite_master WHERE name = 'coupons'",
        "UPDATE coupons SET note = (SELECT name FROM sqlite_master WHERE name = 'x') WHERE 0",
    ],
    "pg": [
        *LEGIT_COMMON,
        "CREATE FUNCTION coupon_label(c text) RETURNS text LANGUAGE plpgsql AS $body$ "
        "BEGIN RETURN 'coupon; ' || c; END $body$",
        "CREATE FUNCTION coupon_twice(n int) RETURNS int LANGUAGE sql AS $$ SELECT n * 2; $$",
        "UPDATE coupons SET note = coupon_label(code) || coupon_twice(id) WHERE id = 2",
        "SELECT E'it\\'s'",
        "COMMENT ON TABLE coupons IS 'made by HXO; reviewed'",
        "ANALYZE coupons",
        "CREATE TYPE coupon_state AS ENUM ('new', 'used')",
        "CREATE TYPE coupon_pair AS (a int, b text)",
        "CREATE DOMAIN coupon_cents AS integer CHECK (VALUE >= 0) DEFAULT 0",
        "CREATE FUNCTION coupon_plus(a int, b int) RETURNS int LANGUAGE sql IMMUTABLE "
        "SECURITY DEFINER RETURN a + b",
        "CREATE OPERATOR ### (leftarg = int, rightarg = int, function = coupon_plus)",
        "CREATE AGGREGATE coupon_sum(int) (sfunc = coupon_plus, stype = int, initcond = '0')",
        "CREATE TYPE coupon_range AS RANGE (subtype = int4)",
        "SELECT COUNT(*) FROM pg_catalog.pg_class WHERE relname = 'coupons'",
        "UPDATE coupons SET note = c.relname FROM pg_class c WHERE c.relname = 'x'",
        # Only text: a string is a name only where it is converted to one.
        "UPDATE coupons SET note = 'crosstab; hxo_ledger' || 'ts_rewrite' WHERE id = 3",
        # A table cannot be called: one named like a refused function is just a table.
        "CREATE TABLE dblink_log (id int)",
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

"""Statements that cannot run inside a transaction (issue 13, "Migrations"): found by the
target's parser, given a batch of their own, run alone in autocommit at apply, validated
without being run in the dry-run, and non-idempotent unless safe to repeat.

Real statements on real targets: PostgreSQL's CREATE INDEX CONCURRENTLY (the index exists
after the apply and the dry-run leaves none) and SQLite's VACUUM (the file shrinks)."""

from __future__ import annotations

import sqlite3

import pytest

from hxo_site import codes
from hxo_site.errors import ServiceError
from runs_app import services
from runs_app.kinds.migrate import batch_bounds
from runs_app.models import Partition, RunState
from runs_app.sqlpolicy import outside_transaction
from runs_app.targets import connect
from tests.helpers import drain
from tests.runs_app.kinds.test_migrate_stages import failures, previews, seed, stage

pytestmark = pytest.mark.django_db(transaction=True)


def pg_index(target: str, name: str) -> bool | None:
    """Whether index `name` is valid; None when there is none."""
    with connect(target) as conn:
        return conn.scalar(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = :n",
            {"n": name},
        )


def through(document, operator, approver, applier=None):
    plan = services.plan_create(actor=operator, document=document)
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    assert dry.state == RunState.AWAITING_APPROVAL, failures(dry)
    return plan, dry


@pytest.mark.postgres
def test_create_index_concurrently_runs_alone_outside_a_transaction(pg_target, operator, approver):
    seed("pg")
    document = {
        "name": "cic",
        "stages": [
            stage(
                "index",
                "pg",
                [],
                statements=[
                    "CREATE TABLE audit_notes (id integer PRIMARY KEY)",
                    "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS accounts_email_u "
                    "ON accounts (email)",
                    "INSERT INTO audit_notes (id) SELECT id FROM accounts WHERE id <= 10",
                ],
                batch_size=10,
            ),
            # Needs the index: the dry-run replays stage 1's CIC as CREATE UNIQUE INDEX.
            stage(
                "constrain",
                "pg",
                ["index"],
                statements=[
                    "ALTER TABLE accounts ADD CONSTRAINT accounts_email_key "
                    "UNIQUE USING INDEX accounts_email_u"
                ],
            ),
        ],
    }
    plan, dry = through(document, operator, approver)

    # Split around the statement: 3 batches although batch_size is 10.
    first = previews(dry, "index")
    assert [p["statements"] for p in first] == [
        document["stages"][0]["params"]["statements"][0:1],
        document["stages"][0]["params"]["statements"][1:2],
        document["stages"][0]["params"]["statements"][2:3],
    ]
    assert first[1]["outside_transaction"] == "CREATE INDEX CONCURRENTLY"
    assert "runs alone outside a transaction" in first[1]["summary"]
    assert "CREATE UNIQUE INDEX IF NOT EXISTS accounts_email_u" in first[1]["summary"]
    assert first[2]["rows_affected"] == 10
    (second,) = previews(dry, "constrain")
    assert "replayed as" in second["summary"]
    assert pg_index("pg", "accounts_email_u") is None  # the dry-run left no index
    with connect("pg") as conn:
        assert not conn.table_exists("audit_notes")

    services.run_approve(run=dry, actor=approver)
    applied = drain(services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk))

    assert applied.state == RunState.SUCCEEDED, failures(applied)
    # ADD CONSTRAINT ... USING INDEX renames the index after the constraint.
    assert pg_index("pg", "accounts_email_key") is True
    with connect("pg") as conn:
        assert (
            conn.scalar("SELECT COUNT(*) FROM pg_constraint WHERE conname = 'accounts_email_key'")
            == 1
        )
        assert conn.scalar("SELECT COUNT(*) FROM audit_notes") == 10
        assert conn.scalar("SELECT COUNT(*) FROM hxo_ledger_batches") == 4
    outputs = Partition.objects.filter(run=applied, stage__stage_id="index").order_by("index")
    assert [o.output["ledger"] for o in outputs] == ["applied"] * 3


@pytest.mark.postgres
def test_a_statement_not_safe_to_repeat_makes_the_stage_non_idempotent(
    pg_target, operator, approver, admiral
):
    seed("pg")
    sql = "CREATE INDEX CONCURRENTLY accounts_email_i ON accounts (email)"
    document = {"name": "cic-bare", "stages": [stage("index", "pg", [], statements=[sql])]}

    with pytest.raises(ServiceError) as undeclared:
        services.plan_create(actor=admiral, document=document)
    assert [(e["path"], e["code"]) for e in undeclared.value.errors] == [
        ("stages[0].params.statements[0]", codes.NON_IDEMPOTENT_UNDECLARED)
    ]

    document["stages"][0]["non_idempotent"] = True
    plan = services.plan_create(actor=operator, document=document)
    with pytest.raises(ServiceError) as forbidden:
        services.run_start_dry_run(plan=plan, actor=operator)  # no hxo:force-merge
    assert (forbidden.value.code, forbidden.value.status) == (codes.FORCE_MERGE_REQUIRED, 403)

    dry = drain(services.run_start_dry_run(plan=plan, actor=admiral))
    assert dry.state == RunState.AWAITING_APPROVAL, failures(dry)
    assert pg_index("pg", "accounts_email_i") is None
    services.run_approve(run=dry, actor=approver)
    applied = drain(services.run_apply(plan=plan, actor=admiral, dry_run_id=dry.pk))
    assert applied.state == RunState.SUCCEEDED, failures(applied)
    assert pg_index("pg", "accounts_email_i") is True


@pytest.mark.postgres
def test_a_dry_run_of_vacuum_on_a_missing_table_fails_clearly_without_running(pg_target, operator):
    seed("pg")
    document = {"name": "vac", "stages": [stage("v", "pg", [], statements=["VACUUM nope"])]}
    plan = services.plan_create(actor=operator, document=document)

    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))

    assert dry.state == RunState.FAILED
    (error,) = failures(dry)
    assert error["code"] == "sql_error" and error["permanent"] is True
    assert "nope does not exist" in error["message"]


def test_sqlite_vacuum_runs_alone_at_apply_and_shrinks_the_file(sqlite_target, operator, approver):
    path = sqlite_target("db")
    seed("db")
    with connect("db") as conn:
        conn.begin()
        conn.execute(
            "INSERT INTO accounts (id, email) SELECT id + 1000, email || hex(randomblob(200)) "
            "FROM accounts"
        )
        conn.commit()
    document = {
        "name": "vacuum",
        "stages": [
            stage(
                "shrink",
                "db",
                [],
                statements=["DELETE FROM accounts WHERE id > 1000", "VACUUM"],
                batch_size=2,
            )
        ],
    }
    before = path.read_bytes()
    plan, dry = through(document, operator, approver)

    deleted, vacuum = previews(dry, "shrink")
    assert deleted["rows_affected"] == 250
    assert vacuum["outside_transaction"] == "VACUUM"
    assert "runs alone outside a transaction" in vacuum["summary"]
    assert path.read_bytes() == before  # the dry-run changed nothing

    services.run_approve(run=dry, actor=approver)
    applied = drain(services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk))

    assert applied.state == RunState.SUCCEEDED, failures(applied)
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("SELECT COUNT(*) FROM accounts").fetchone()[0] == 250
        assert raw.execute("PRAGMA freelist_count").fetchone()[0] == 0
    finally:
        raw.close()
    assert path.stat().st_size < len(before)


def test_the_parser_decides_what_runs_outside_a_transaction():
    pg = "postgresql"
    cases = {
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a)": ("CREATE INDEX CONCURRENTLY", True),
        "create index concurrently i on t (a)": ("CREATE INDEX CONCURRENTLY", False),
        "DROP INDEX CONCURRENTLY IF EXISTS i": ("DROP INDEX CONCURRENTLY", True),
        "REINDEX TABLE CONCURRENTLY t": ("REINDEX ... CONCURRENTLY", True),
        "REINDEX SCHEMA public": ("REINDEX SCHEMA/DATABASE/SYSTEM", True),
        "VACUUM (ANALYZE) t": ("VACUUM", True),
        "ALTER TABLE p DETACH PARTITION c CONCURRENTLY": (
            "ALTER TABLE ... DETACH PARTITION CONCURRENTLY",
            False,
        ),
        "CLUSTER": ("CLUSTER (every table)", True),
    }
    for sql, (what, idempotent) in cases.items():
        found = outside_transaction(sql, pg)
        assert (found.what, found.idempotent) == (what, idempotent), sql
    for sql in [
        "CREATE INDEX i ON t (a)",
        "REINDEX TABLE t",
        "ANALYZE t",
        "CLUSTER t USING i",
        "SELECT 'CREATE INDEX CONCURRENTLY'",
        "-- VACUUM\nSELECT 1",
        "'",  # unreadable: the policy reports it
    ]:
        assert outside_transaction(sql, pg) is None, sql
    add = "ALTER TYPE mood ADD VALUE 'calm'"
    assert outside_transaction(add, pg, server_version=110000).what.startswith("ALTER TYPE")
    assert outside_transaction(add, pg, server_version=160000) is None
    assert outside_transaction("VACUUM", "sqlite").what == "VACUUM"
    assert outside_transaction("vacuum main", "sqlite").what == "VACUUM"
    assert outside_transaction("VACUUM INTO '/tmp/x.db'", "sqlite") is None  # refused instead
    assert outside_transaction("SELECT 'VACUUM'", "sqlite") is None


def test_batches_split_around_a_statement_that_must_run_alone():
    assert batch_bounds(5, 2, []) == [(0, 2), (2, 2), (4, 1)]
    assert batch_bounds(5, 2, [2]) == [(0, 2), (2, 1), (3, 2)]
    assert batch_bounds(5, 3, [0, 4]) == [(0, 1), (1, 3), (4, 1)]
    assert batch_bounds(3, 10, [1]) == [(0, 1), (1, 1), (2, 1)]

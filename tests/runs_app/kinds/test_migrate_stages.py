"""deploy.migrate stages that build on each other, under one dry-run (issue 13, "Migrations").

Stage 1 adds a column and a table, stage 2 backfills the column by key range, stage 3 reads
what the backfill wrote. A dry-run partition of a later stage first replays, in its own
rolled-back transaction, the earlier stages on the same target (docs/sql-policy.md, "Stages
that build on each other"), so the previews count real rows; nothing is committed; the
apply then does it for real. Through the engine, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import pytest

from runs_app import services
from runs_app.models import Partition, Run, RunState
from runs_app.targets import connect
from tests.helpers import drain

pytestmark = pytest.mark.django_db(transaction=True)

ROWS = 250
DOMAINS = 7
DOMAIN_SQL = (
    # rtrim() finds the '@' on both vendors (instr() is SQLite's, strpos() PostgreSQL's).
    "UPDATE accounts SET domain = lower(substr(email, length(rtrim(email, replace(email, "
    "'@', ''))) + 1)) WHERE id >= :start AND id < :end"
)


def seed(target: str) -> None:
    with connect(target, create=True) as conn:
        conn.begin()
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, email VARCHAR(200) NOT NULL)")
        conn.executemany(
            "INSERT INTO accounts (id, email) VALUES (:id, :email)",
            [{"id": i, "email": f"user{i}@Example{i % DOMAINS}.COM"} for i in range(1, ROWS + 1)],
        )
        conn.commit()


def stage(sid: str, target: str, depends_on: list[str], **params: Any) -> dict[str, Any]:
    return {
        "id": sid,
        "kind": "deploy.migrate",
        "partitioner": "by_sql_batch",
        "executor": "sql_migrate",
        "params": {"target": target, **params},
        "depends_on": depends_on,
    }


def add_then_backfill(target: str, name: str = "add-then-backfill") -> dict[str, Any]:
    return {
        "name": name,
        "stages": [
            stage(
                "add",
                target,
                [],
                statements=[
                    "ALTER TABLE accounts ADD COLUMN domain VARCHAR(200)",
                    "CREATE TABLE domain_counts (domain VARCHAR(200) PRIMARY KEY, n INTEGER)",
                ],
                batch_size=1,
            ),
            stage(
                "fill",
                target,
                ["add"],
                backfill={
                    "sql": DOMAIN_SQL,
                    "table": "accounts",
                    "key_column": "id",
                    "batch_size": 100,
                },
            ),
            stage(
                "count",
                target,
                ["fill"],
                statements=[
                    "INSERT INTO domain_counts (domain, n) SELECT domain, COUNT(*) FROM accounts "
                    "WHERE domain IS NOT NULL GROUP BY domain"
                ],
            ),
        ],
    }


def previews(run: Run, stage_id: str) -> list[dict[str, Any]]:
    found = Partition.objects.filter(run=run, stage__stage_id=stage_id).order_by("index")
    return [p.preview for p in found]


def failures(run: Run) -> list[Any]:
    return list(Partition.objects.filter(run=run, state="failed").values_list("error", flat=True))


def columns(target: str) -> dict[str, str]:
    with connect(target) as conn:
        return conn.columns("accounts")


def scalar(target: str, sql: str) -> Any:
    with connect(target) as conn:
        return conn.scalar(sql)


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.postgres)])
def target(request, sqlite_target) -> str:
    if request.param == "sqlite":
        sqlite_target("db")
        seed("db")
        return "db"
    request.getfixturevalue("pg_target")
    seed("pg")
    return "pg"


def test_add_a_column_then_backfill_it_under_one_dry_run_then_apply(target, operator, approver):
    plan = services.plan_create(actor=operator, document=add_then_backfill(target))

    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))

    assert dry.state == RunState.AWAITING_APPROVAL, failures(dry)
    fill = previews(dry, "fill")
    assert [p["rows_affected"] for p in fill] == [100, 100, 50]
    assert all(p["replayed"][0]["stage"] == "add" for p in fill)
    assert "replayed first: stage add" in fill[0]["summary"]
    # Stage 3 only counts domains if the upstream backfill was replayed before it.
    (count,) = previews(dry, "count")
    assert count["rows_affected"] == DOMAINS
    assert [r["stage"] for r in count["replayed"]] == ["add", "fill"]
    # Nothing was committed: no column, no table, no ledger.
    assert "domain" not in columns(target)
    with connect(target) as conn:
        assert not conn.table_exists("domain_counts")
        assert not conn.table_exists("hxo_ledger_batches")

    services.run_approve(run=dry, actor=approver, comment="reviewed")
    applied = drain(services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk))

    assert applied.state == RunState.SUCCEEDED, failures(applied)
    assert "domain" in {c.lower() for c in columns(target)}
    assert scalar(target, "SELECT COUNT(*) FROM accounts WHERE domain IS NULL") == 0
    assert scalar(target, "SELECT COUNT(DISTINCT domain) FROM accounts") == DOMAINS
    assert scalar(target, "SELECT SUM(n) FROM domain_counts") == ROWS
    assert scalar(target, "SELECT n FROM domain_counts WHERE domain = 'example3.com'") == 36


def test_a_stage_on_another_target_is_not_replayed(target, operator, sqlite_target):
    # The add stage runs on another database: the backfill here cannot see its column.
    sqlite_target("elsewhere")
    seed("elsewhere")
    document = add_then_backfill(target)
    document["stages"][0]["params"]["target"] = "elsewhere"
    document["stages"] = document["stages"][:2]
    plan = services.plan_create(actor=operator, document=document)

    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))

    assert dry.state == RunState.FAILED
    errors = failures(dry)
    assert errors and all(e["code"] == "sql_error" for e in errors), errors
    assert all("domain" in e["message"] for e in errors)
    assert "domain" not in columns("elsewhere")


def test_a_dry_run_replays_an_already_applied_upstream_stage_not_again(target, operator, approver):
    # After the apply, a second plan adds a stage that reads the column: the upstream batches
    # are in the ledger, so the dry-run does not replay them (it would fail: column exists).
    plan = services.plan_create(actor=operator, document=add_then_backfill(target))
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    services.run_approve(run=dry, actor=approver)
    drain(services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk))
    document = add_then_backfill(target, name="again")
    document["stages"][2]["params"]["statements"] = [
        "UPDATE accounts SET domain = upper(domain) WHERE domain LIKE 'example1%'"
    ]
    again = services.plan_create(actor=operator, document=document)

    dry2 = drain(services.run_start_dry_run(plan=again, actor=operator))

    assert dry2.state == RunState.AWAITING_APPROVAL, failures(dry2)
    (last,) = previews(dry2, "count")
    assert last["rows_affected"] == 36
    assert all(r["batches"] == 0 for r in last["replayed"])
    assert scalar(target, "SELECT COUNT(*) FROM accounts WHERE domain <> lower(domain)") == 0

"""Sample rows of a deploy.migrate dry-run (issue 14 §1): up to five rows before and after
each UPDATE, DELETE and INSERT ... SELECT, read in the rolled-back transaction with a keyed
SELECT, values truncated, the target's sensitive columns masked; shown as a diff table."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from runs_app import selectors, services
from runs_app.kinds.samples import MASK, SAMPLE_ROWS
from runs_app.models import Run, RunState
from tests.helpers import drain
from tests.runs_app.kinds.conftest import pg_target  # noqa: F401 (fixture)
from tests.runs_app.views.conftest import html

pytestmark = pytest.mark.django_db

LONG = "y" * 500


def make_target(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT, note TEXT, plan TEXT)"
        )
        conn.executemany(
            "INSERT INTO customers VALUES (?, ?, ?, ?)",
            [(i, f"user{i}@example.test", LONG if i == 2 else "n", "free") for i in range(1, 9)],
        )
        conn.execute("CREATE TABLE archive (id INTEGER PRIMARY KEY, customer INTEGER)")
        conn.execute("INSERT INTO archive (customer) VALUES (100)")
    conn.close()


@pytest.fixture
def target(tmp_path: Path, settings: Any) -> Path:
    path = tmp_path / "shop.sqlite3"
    make_target(path)
    settings.HXO_DATABASE_TARGETS = {
        **settings.HXO_DATABASE_TARGETS,
        "t": {"url": f"sqlite:///{path}", "sensitive": ["EMAIL"]},
    }
    return path


def dry_run(operator: Any, statements: list[str]) -> Run:
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "samples",
            "stages": [
                {
                    "id": "migrate",
                    "kind": "deploy.migrate",
                    "partitioner": "by_sql_batch",
                    "executor": "sql_migrate",
                    "params": {"target": "t", "statements": statements, "batch_size": 10},
                }
            ],
        },
    )
    run = drain(services.run_start_dry_run(plan=plan, actor=operator))
    assert run.state == RunState.AWAITING_APPROVAL, run.error
    return run


def samples(run: Run) -> list[dict[str, Any]]:
    return run.partitions.get().preview["samples"]


def test_update_delete_and_insert_select_are_sampled_before_and_after(operator, target):
    before = sqlite3.connect(target).execute("SELECT * FROM customers").fetchall()
    run = dry_run(
        operator,
        [
            "UPDATE customers SET plan = 'pro', email = 'x@y.test' WHERE id <= 7",
            "DELETE FROM customers WHERE id = 8",
            "INSERT INTO archive (customer) SELECT id FROM customers WHERE id <= 2",
            "CREATE TABLE scratch (a INTEGER)",
        ],
    )

    update, delete, insert = samples(run)
    assert update["verb"] == "update" and update["table"] == "customers"
    assert update["columns"] == ["id", "email", "note", "plan"]
    assert update["masked"] == ["email"]
    assert len(update["rows"]) == SAMPLE_ROWS  # 7 rows changed, 5 shown
    first = update["rows"][0]
    assert first["key"] == [1]
    assert first["before"] == [1, MASK, "n", "free"]
    assert first["after"] == [1, MASK, "n", "pro"]
    long_note = update["rows"][1]["before"][2]
    assert len(long_note) == 80 and long_note.endswith("…")
    assert "user1@example.test" not in str(run.partitions.get().preview)

    assert delete["rows"] == [{"key": [8], "before": [8, MASK, "n", "free"], "after": None}]
    assert insert["verb"] == "insert"
    assert [r["after"][1] for r in insert["rows"]] == [1, 2]
    assert all(r["before"] is None for r in insert["rows"])
    # Rolled back: the target is as it was, and the DDL statement has no sample.
    assert sqlite3.connect(target).execute("SELECT * FROM customers").fetchall() == before


def test_a_plain_url_target_still_works_and_masks_nothing(operator, tmp_path, settings):
    path = tmp_path / "plain.sqlite3"
    make_target(path)
    settings.HXO_DATABASE_TARGETS = {**settings.HXO_DATABASE_TARGETS, "t": f"sqlite:///{path}"}
    run = dry_run(operator, ["UPDATE customers SET plan = 'pro' WHERE id = 3"])

    (update,) = samples(run)
    assert update["masked"] == []
    assert update["rows"][0]["before"][1] == "user3@example.test"


def test_forms_that_cannot_be_sampled_say_why(operator, target):
    run = dry_run(
        operator,
        [
            "WITH old AS (SELECT id FROM customers WHERE id < 3) "
            "UPDATE customers SET plan = 'old' WHERE id IN (SELECT id FROM old)",
        ],
    )

    (cte,) = samples(run)
    assert cte["rows"] == [] and cte["reason"] == "a statement with a CTE is not sampled"
    assert selectors.change_summary(run)["stages"][0]["statements"][0]["sql"].startswith("WITH")


def test_the_review_shows_the_sample_rows_as_a_diff_table(client_for, operator, approver, target):
    run = dry_run(operator, ["UPDATE customers SET plan = 'pro' WHERE id <= 2"])

    body = html(client_for(approver).get(f"/runs/{run.pk}/"))
    table = body[body.index('data-testid="samples-0"') :]
    table = table[: table.index("</table>")]
    assert '<td class="changed">free → pro</td>' in table
    assert f'<td class="masked">{MASK}</td>' in table
    assert "user1@example.test" not in body


# Transactional: the drainer's heartbeat thread renews the lease on its own connection, which
# cannot see rows of a test's open transaction; a dry-run on PostgreSQL slower than one
# heartbeat (a loaded machine) then lost its lease and never finished.
@pytest.mark.django_db(transaction=True)
def test_postgresql_samples_by_primary_key_and_masks_sensitive_columns(
    operator,
    pg_target,  # noqa: F811
    settings,
):
    import psycopg

    with psycopg.connect(pg_target, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE customers (id bigint PRIMARY KEY, email text, plan text, blob bytea)"
        )
        conn.execute(
            "INSERT INTO customers SELECT g, 'u' || g || '@example.test', 'free', "
            "decode('00ff', 'hex') FROM generate_series(1, 8) g"
        )
        conn.execute("CREATE TABLE archive (id serial PRIMARY KEY, customer bigint)")
        conn.execute("CREATE TABLE nokey (a int)")
    settings.HXO_DATABASE_TARGETS = {
        **settings.HXO_DATABASE_TARGETS,
        "pg": {"url": pg_target, "sensitive": ["email"]},
    }
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "pg samples",
            "stages": [
                {
                    "id": "migrate",
                    "kind": "deploy.migrate",
                    "partitioner": "by_sql_batch",
                    "executor": "sql_migrate",
                    "params": {
                        "target": "pg",
                        "batch_size": 10,
                        "statements": [
                            "UPDATE customers AS c SET plan = 'pro' WHERE c.id > 5",
                            "DELETE FROM customers WHERE id = 1",
                            "INSERT INTO archive (customer) SELECT id FROM customers WHERE id < 4",
                            "UPDATE nokey SET a = 1 WHERE a = 0",
                        ],
                    },
                }
            ],
        },
    )
    run = drain(services.run_start_dry_run(plan=plan, actor=operator))
    assert run.state == RunState.AWAITING_APPROVAL, run.error

    update, delete, insert, nokey = samples(run)
    assert update["key"] == ["id"] and update["masked"] == ["email"]
    assert [(r["key"], r["before"][2], r["after"][2]) for r in update["rows"]] == [
        ([6], "free", "pro"),
        ([7], "free", "pro"),
        ([8], "free", "pro"),
    ]
    assert update["rows"][0]["before"][1] == MASK
    assert update["rows"][0]["before"][3] == "<2 bytes>"
    assert delete["rows"][0]["key"] == [1] and delete["rows"][0]["after"] is None
    assert [r["after"][1] for r in insert["rows"]] == [2, 3]
    assert nokey["reason"] == "nokey has no primary key"
    with psycopg.connect(pg_target) as conn:
        assert conn.execute("SELECT count(*) FROM archive").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM customers WHERE plan = 'pro'").fetchone()[0] == 0


def test_a_sensitive_value_copied_into_another_column_is_masked_there(operator, target):
    """Masking follows the value: a column set from an expression naming a sensitive column
    (read by the parser), an INSERT ... SELECT of one, and a cell that holds a sensitive
    value of the sampled rows, however it got there, are masked too (found by a tryout:
    `SET fax = email || ' / ' || phone` showed the email in `fax`)."""
    run = dry_run(
        operator,
        [
            "UPDATE customers SET note = email || ' / ' || plan WHERE id <= 2",
            "UPDATE customers SET plan = (SELECT upper(c2.email) FROM customers c2 "
            "WHERE c2.id = customers.id) WHERE id = 3",
            "UPDATE customers SET note = 'contact user4@example.test' WHERE id = 4",
            "INSERT INTO archive (customer) SELECT length(email) FROM customers WHERE id = 5",
            "UPDATE customers SET plan = 'pro' WHERE id = 6",
        ],
    )
    derived, subquery, literal, insert, plain = samples(run)
    assert derived["masked"] == ["email", "note"]
    assert derived["rows"][0]["after"] == [1, MASK, MASK, "free"]
    assert subquery["masked"] == ["email", "plan"]
    assert literal["masked"] == ["email", "note"]  # by value: the row's own email
    assert insert["masked"] == ["customer", "id"]  # an INSERT ... SELECT naming email
    assert plain["masked"] == ["email"] and plain["rows"][0]["after"][3] == "pro"
    shown = str([s["rows"] for s in samples(run)]).casefold()
    assert not any(f"user{i}@example.test" in shown for i in range(1, 9))


@pytest.mark.django_db(transaction=True)
def test_postgresql_backfill_batches_are_sampled(
    operator,
    pg_target,  # noqa: F811
    settings,
):
    """A backfill's WHERE keeps its named parameters when the sample SELECT is built: on
    PostgreSQL every batch said "its WHERE could not be read on its own" (sqlglot wrote
    `%(start)s`), on SQLite it worked."""
    import psycopg

    with psycopg.connect(pg_target, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id bigint PRIMARY KEY, email text, plan text)")
        conn.execute(
            "INSERT INTO customers SELECT g, 'u' || g || '@example.test', 'free' "
            "FROM generate_series(1, 12) g"
        )
    settings.HXO_DATABASE_TARGETS = {
        **settings.HXO_DATABASE_TARGETS,
        "pg": {"url": pg_target, "sensitive": ["email"]},
    }
    stage = {
        "id": "backfill",
        "kind": "deploy.migrate",
        "partitioner": "by_sql_batch",
        "executor": "sql_migrate",
        "params": {
            "target": "pg",
            "backfill": {
                "sql": "UPDATE customers SET plan = 'pro' WHERE id >= :start AND id < :end",
                "table": "customers",
                "key_column": "id",
                "batch_size": 6,
            },
        },
    }
    plan = services.plan_create(actor=operator, document={"name": "bf", "stages": [stage]})
    run = drain(services.run_start_dry_run(plan=plan, actor=operator))
    assert run.state == RunState.AWAITING_APPROVAL, run.error
    for partition in run.partitions.order_by("index"):
        [sample] = partition.preview["samples"]
        assert sample["reason"] == "", sample
        assert len(sample["rows"]) == 5 and sample["masked"] == ["email"]
        assert all(r["before"][2] == "free" and r["after"][2] == "pro" for r in sample["rows"])
    with psycopg.connect(pg_target) as conn:
        assert conn.execute("SELECT count(*) FROM customers WHERE plan = 'pro'").fetchone()[0] == 0


def test_a_row_whose_only_change_is_masked_reads_changed(operator, target):
    """A row whose only change is to a masked column said "unchanged" (both sides are MASK):
    the preview names the masked columns that changed, and the review shows the cell as a
    change without its values."""
    run = dry_run(operator, ["UPDATE customers SET email = upper(email) WHERE id <= 2"])
    [sample] = samples(run)
    assert [r["masked_changed"] for r in sample["rows"]] == [["email"], ["email"]]
    table = selectors.sample_table(sample)
    assert [r["state"] for r in table["rows"]] == ["changed", "changed"]
    email = table["rows"][0]["cells"][1]
    assert email == {"text": f"{MASK} → {MASK}", "changed": True, "masked": True}
    assert "example.test" not in str(sample["rows"]).lower()

"""The migration ledger keyed on content (issue 11 §3) and fencing that reaches the target
(§5), on real SQLite files and scratch PostgreSQL databases.

Every test counts effects where they land: the rows of the target's tables and the ledger's
own rows, never only an output or a state.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from typing import Any

import pytest
from django.test import Client

from blueprints_app.registry import EXECUTORS, ComponentError, LeaseLost
from runs_app.kinds.migrate import (
    BATCHES_TABLE,
    INTERVALS_TABLE,
    LEDGER_DDL,
    LEDGER_TABLE,
    LEDGER_TABLES,
    batch_sha256,
    uncovered,
)
from runs_app.targets import connect, get_target
from tests.helpers import drain
from tests.runs_app.kinds.test_kinds_migrate import backfill_stage, rows, statements_stage

pytestmark = pytest.mark.django_db

APPEND_X = "UPDATE items SET v = v || 'x' WHERE id >= :start AND id < :end"
APPEND_X_LAST = "UPDATE items SET v = v || 'x' WHERE id >= :start AND id <= :last"


def make_items(target: str, ids: list[int], *, key_type: str = "BIGINT") -> None:
    with connect(target, create=True) as conn:
        conn.begin()
        conn.execute(f"CREATE TABLE items (id {key_type} PRIMARY KEY, v VARCHAR(50) NOT NULL)")
        conn.executemany("INSERT INTO items (id, v) VALUES (:id, 'x')", [{"id": i} for i in ids])
        conn.commit()


def values(target: str) -> dict[int, str]:
    return dict(rows(target, "SELECT id, v FROM items ORDER BY id"))


def items_stage(target: str, batch_size: int, sql: str = APPEND_X) -> dict[str, Any]:
    stage = backfill_stage(target, batch_size=batch_size)
    stage["params"]["backfill"].update({"sql": sql, "table": "items", "key_column": "id"})
    return stage


def intervals(target: str) -> list[tuple[int, int, int]]:
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


def batches(target: str) -> list[tuple]:
    with connect(target) as conn:
        if not conn.table_exists(BATCHES_TABLE):
            return []
        return [
            tuple(r)
            for r in conn.execute(
                f"SELECT target, batch_sha256, rows_affected, run_id, partition_id, fence "
                f"FROM {BATCHES_TABLE} ORDER BY applied_at"
            ).fetchall()
        ]


def assert_disjoint(found: list[tuple[int, int, int]]) -> None:
    for (_a, b, _n), (c, _d, _m) in itertools.pairwise(found):
        assert b < c, found


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, sqlite_target) -> str:
    """One empty target per vendor: a SQLite file, or a scratch PostgreSQL database."""
    if request.param == "pg":
        request.getfixturevalue("pg_target")
        return "pg"
    path = sqlite_target("db")
    with connect("db", create=True):
        pass
    assert path.exists()
    return "db"


# --- statement lists: keyed by (target identity, SHA-256 of the batch) ---------------------


PRICES = ["UPDATE products SET price = price + 10 WHERE sku = 'A'"]


def make_products(target: str) -> None:
    with connect(target, create=True) as conn:
        conn.begin()
        conn.execute("CREATE TABLE products (sku VARCHAR(10) PRIMARY KEY, price INTEGER)")
        conn.execute("INSERT INTO products (sku, price) VALUES ('A', 100), ('B', 100)")
        conn.commit()


def price(target: str) -> int:
    return rows(target, "SELECT price FROM products WHERE sku = 'A'")[0][0]


def test_a_new_plan_digest_does_not_apply_a_statement_batch_again(driver, target):
    make_products(target)
    stage = statements_stage(target, PRICES)

    first = driver.run(stage, dry_run=False)
    other = hashlib.sha256(b"the same plan, its description edited").hexdigest()
    dry = driver.run(stage, dry_run=True, plan_digest=other)
    second = driver.run(stage, dry_run=False, plan_digest=other)

    assert price(target) == 110  # raised once
    assert first.results[0]["ledger"] == "applied"
    assert second.results[0]["ledger"] == "already_applied"
    assert second.results[0]["rows_affected"] == 1  # what the batch changed when it ran
    # The dry-run of that apply agreed with it, and says so.
    assert dry.results[0]["already_applied"] is True
    assert "already applied to this target" in dry.results[0]["summary"]
    [row] = batches(target)
    identity = get_target(target).identity
    assert row[0] == identity and row[2] == 1


def test_editing_only_the_description_never_applies_the_statements_again(
    operator, approver, sqlite_target, settings
):
    from runs_app import services
    from runs_app.models import Partition
    from tests.helpers import drain

    sqlite_target("shop")
    make_products("shop")
    document = {
        "name": "raise prices",
        "description": "first version",
        "stages": [
            {
                "id": "raise",
                "kind": "deploy.migrate",
                "partitioner": "by_sql_batch",
                "executor": "sql_migrate",
                "params": {"target": "shop", "statements": PRICES},
            }
        ],
    }
    plan = services.plan_create(actor=operator, document=document)

    def approved_apply(**kw: Any) -> Any:
        dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
        services.run_approve(run=dry, actor=approver)
        return dry, drain(services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk, **kw))

    _dry, first = approved_apply()
    services.plan_update(
        plan=plan, actor=operator, document={"description": "edited"}, partial=True
    )
    # force_rerun: no reuse of the first run's partitions, so only the ledger stands between
    # the edited plan and a second price raise.
    dry, second = approved_apply(force_rerun=True)

    assert first.state == second.state == "succeeded"
    assert price("shop") == 110
    assert len(batches("shop")) == 1
    [preview] = Partition.objects.filter(run=dry).values_list("preview", flat=True)
    assert preview["already_applied"] is True
    # The review page says so, where the approver reads it.
    reviewer = Client()
    reviewer.force_login(approver)
    page = reviewer.get(f"/runs/{dry.pk}/").content.decode()
    assert "batch 0: already applied to this target (1 row changed then)" in page
    [output] = Partition.objects.filter(run=second).values_list("output", flat=True)
    assert output["ledger"] == "already_applied"


def test_the_same_statements_on_another_target_are_applied_there(driver, sqlite_target):
    for name in ("one", "two"):
        sqlite_target(name)
        make_products(name)

    driver.run(statements_stage("one", PRICES), dry_run=False)
    run = driver.run(statements_stage("two", PRICES), dry_run=False)

    assert run.results[0]["ledger"] == "applied"
    assert price("one") == price("two") == 110
    assert batches("one")[0][0] != batches("two")[0][0]  # each keyed by its own identity


def test_two_names_for_one_database_share_its_ledger(driver, sqlite_target, tmp_path, settings):
    path = sqlite_target("one")
    make_products("one")
    link = tmp_path / "alias.sqlite3"
    link.symlink_to(path)
    settings.HXO_DATABASE_TARGETS = {**settings.HXO_DATABASE_TARGETS, "alias": f"sqlite:///{link}"}

    driver.run(statements_stage("one", PRICES), dry_run=False)
    run = driver.run(statements_stage("alias", PRICES), dry_run=False)

    assert get_target("alias").identity == get_target("one").identity
    assert run.results[0]["ledger"] == "already_applied"
    assert price("one") == 110


def test_a_moved_database_file_is_not_migrated_again(driver, sqlite_target, settings):
    # The ledger lives in the target: a file moved (or restored) to another path carries it,
    # so the same batch is already applied to these rows although the identity HXO resolves
    # for the target changed. Matching on the identity would raise the price twice.
    path = sqlite_target("one")
    make_products("one")
    driver.run(statements_stage("one", PRICES), dry_run=False)
    moved = path.with_name("moved.sqlite3")
    path.rename(moved)
    settings.HXO_DATABASE_TARGETS = {**settings.HXO_DATABASE_TARGETS, "one": f"sqlite:///{moved}"}

    run = driver.run(statements_stage("one", PRICES), dry_run=False)

    assert run.results[0]["ledger"] == "already_applied"
    assert price("one") == 110
    assert len(batches("one")) == 1


@pytest.mark.postgres
def test_one_postgresql_database_spelled_two_ways_is_migrated_once(driver, pg_target, settings):
    # localhost and 127.0.0.1 are two identities for one database: the backfill and the
    # statements each apply once, whichever spelling runs second.
    assert "127.0.0.1" in pg_target
    other = pg_target.replace("127.0.0.1", "localhost")
    settings.HXO_DATABASE_TARGETS = {**settings.HXO_DATABASE_TARGETS, "pg2": other}
    assert get_target("pg2").identity != get_target("pg").identity
    make_products("pg")
    make_items("pg", list(range(1, 21)))

    for name in ("pg", "pg2"):
        driver.run(statements_stage(name, PRICES), dry_run=False)
        driver.run(items_stage(name, batch_size=7), dry_run=False)

    assert price("pg") == 110
    assert set(values("pg").values()) == {"xx"}
    assert len(batches("pg")) == 1


def test_a_statement_list_with_a_repeated_batch_is_refused(driver, target):
    make_products(target)
    stage = statements_stage(target, [*PRICES, "SELECT 1", *PRICES])

    with pytest.raises(ComponentError) as info:
        driver.partition(stage)

    assert info.value.code == "duplicate_batch"
    assert info.value.path == "params.statements[2]"


def test_a_version_1_ledger_row_for_the_same_batch_is_honoured(driver, sqlite_target):
    # A target migrated before the content-keyed ledger: its hxo_ledger table records the
    # batch by plan digest and a digest of the batch's work.
    sqlite_target("old")
    make_products("old")
    stage = statements_stage("old", PRICES)
    legacy = hashlib.sha256(repr([(PRICES[0], [])]).encode()).hexdigest()
    with connect("old") as conn:
        conn.execute(
            f"CREATE TABLE {LEDGER_TABLE} (plan_digest VARCHAR(64) NOT NULL, stage_id "
            "VARCHAR(100) NOT NULL, batch_id INTEGER NOT NULL, batch_digest VARCHAR(64) NOT "
            "NULL, rows_affected BIGINT NOT NULL, run_id BIGINT, partition_id BIGINT, fence "
            "BIGINT, applied_at VARCHAR(40) NOT NULL, PRIMARY KEY (plan_digest, stage_id, "
            "batch_id))"
        )
        conn.execute(
            f"INSERT INTO {LEDGER_TABLE} VALUES ('p', 'schema', 0, :d, 1, 1, 1, 1, 'then')",
            {"d": legacy},
        )

    dry = driver.run(stage, dry_run=True)
    run = driver.run(stage, dry_run=False)

    assert dry.results[0]["already_applied"] is True
    assert run.results[0]["ledger"] == "already_applied"
    assert price("old") == 100


def test_a_dry_run_replays_only_the_earlier_batches_the_ledger_does_not_record(driver, target):
    make_products(target)
    first = ["CREATE TABLE log (n INTEGER)", "INSERT INTO log (n) VALUES (1)"]
    driver.run(statements_stage(target, first), dry_run=False)
    # The plan grows a third batch; its dry-run must not replay the two applied ones (the
    # table exists: a replayed CREATE would fail, a replayed INSERT would count twice).
    grown = [*first, "UPDATE log SET n = n + 1"]

    dry = driver.run(statements_stage(target, grown), dry_run=True)

    assert [r["already_applied"] for r in dry.results] == [True, True, False]
    assert dry.results[2]["rows_affected"] == 1
    assert rows(target, "SELECT n FROM log") == [(1,)]


# --- backfills: key intervals per (target identity, SHA-256 of the template) ---------------


def test_a_new_batch_size_never_applies_a_key_twice(driver, target):
    make_items(target, list(range(1, 601)))
    driver.run(items_stage(target, 100), dry_run=False)

    dry = driver.run(items_stage(target, 250), dry_run=True)
    again = driver.run(items_stage(target, 250), dry_run=False)

    assert set(values(target).values()) == {"xx"}  # once, not "xxx"
    assert all(r["already_applied"] for r in dry.results)
    assert {r["ledger"] for r in again.results} == {"already_applied"}
    assert sum(r["rows_affected"] for r in dry.results) == 0
    found = intervals(target)
    assert [(a, b) for a, b, _ in found] == [(i, i + 99) for i in range(1, 601, 100)]
    assert sum(n for *_, n in found) == 600


def test_a_moved_key_range_applies_the_new_keys_and_only_those(driver, target):
    make_items(target, list(range(1, 1001)))
    driver.run(items_stage(target, 100), dry_run=False)
    with connect(target) as conn:
        conn.execute("DELETE FROM items WHERE id <= 100")
        conn.executemany(
            "INSERT INTO items (id, v) VALUES (:id, 'x')", [{"id": i} for i in range(1001, 1151)]
        )

    # Batches of 250 from key 101: the fourth, 851..1100, is half applied already.
    dry = driver.run(items_stage(target, 250), dry_run=True)
    run = driver.run(items_stage(target, 250), dry_run=False)

    seen = values(target)
    assert {seen[i] for i in range(101, 1001)} == {"xx"}  # not applied again
    assert {seen[i] for i in range(1001, 1151)} == {"xx"}  # the new keys were not skipped
    changed = [r["rows_affected"] if r["ledger"] == "applied" else 0 for r in run.results]
    assert sum(changed) == 150
    # The preview said exactly that, batch by batch, and the apply did what it said.
    assert [r["rows_affected"] for r in dry.results] == changed
    assert [r["already_applied"] for r in dry.results] == [
        r["ledger"] == "already_applied" for r in run.results
    ]
    [partial] = [r for r in dry.results if r["keys_already_applied"] and r["to_apply"]]
    assert partial["to_apply"] == [[1001, 1100]]
    assert partial["keys_already_applied"] == 150
    assert "only keys 1001..1100" in partial["summary"]
    assert_disjoint(intervals(target))


def test_a_batch_applies_every_uncovered_piece_of_its_range(driver, target):
    # Earlier backfills with the same template applied three scattered intervals (each over
    # the table as it was then).
    for lo, hi in ((11, 20), (41, 50), (91, 100)):
        with connect(target, create=True) as conn:
            conn.execute("DROP TABLE IF EXISTS items")
        make_items(target, list(range(lo, hi + 1)))
        driver.run(items_stage(target, 1000), dry_run=False)
    with connect(target) as conn:
        conn.execute("DROP TABLE items")
    make_items(target, list(range(1, 101)))
    assert [(a, b) for a, b, _ in intervals(target)] == [(11, 20), (41, 50), (91, 100)]

    dry = driver.run(items_stage(target, 1000), dry_run=True)
    run = driver.run(items_stage(target, 1000), dry_run=False)

    assert dry.results[0]["to_apply"] == [[1, 10], [21, 40], [51, 90]]
    seen = values(target)
    assert [i for i, v in seen.items() if v == "xx"] == [
        *range(1, 11),
        *range(21, 41),
        *range(51, 91),
    ]
    assert run.results[0]["rows_affected"] == 70 == dry.results[0]["rows_affected"]
    found = intervals(target)
    assert_disjoint(found)
    assert sum(b - a + 1 for a, b, _ in found) == 100


@pytest.mark.parametrize(
    ("ids", "sql"),
    [
        ([2**63 - 3, 2**63 - 2, 2**63 - 1], APPEND_X_LAST),
        ([-(2**63), -(2**63) + 1, -(2**63) + 5], APPEND_X),
    ],
    ids=["top", "bottom"],
)
def test_key_ranges_hold_at_the_limits_of_64_bit_integers(driver, target, ids, sql):
    make_items(target, ids)
    size = 2
    dry = driver.run(items_stage(target, size, sql), dry_run=True)
    run = driver.run(items_stage(target, size, sql), dry_run=False)
    again = driver.run(items_stage(target, 3, sql), dry_run=False)

    assert sum(r["rows_affected"] for r in dry.results) == 3
    assert sum(r["rows_affected"] for r in run.results) == 3
    assert {r["ledger"] for r in again.results} <= {"already_applied"}
    assert set(values(target).values()) == {"xx"}


def test_an_exclusive_end_past_the_largest_key_is_refused_with_a_way_out(driver, target):
    make_items(target, [1, 2**63 - 1])

    with pytest.raises(ComponentError) as info:
        driver.partition(items_stage(target, 10))

    assert info.value.code == "key_out_of_range"
    assert ":last" in info.value.message
    assert set(values(target).values()) == {"x"}


def test_uncovered_subtracts_intervals_in_any_order():
    assert uncovered(1, 10, []) == [(1, 10)]
    assert uncovered(1, 10, [(1, 10, 0)]) == []
    assert uncovered(1, 10, [(0, 3, 0), (5, 5, 0), (9, 20, 0)]) == [(4, 4), (6, 8)]
    assert uncovered(1, 10, [(5, 5, 0), (0, 3, 0)]) == [(4, 4), (6, 10)]
    assert uncovered(-(2**63), 2**63 - 1, [(0, 2**63 - 1, 0)]) == [(-(2**63), -1)]


# --- key types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "value"),
    [("TEXT", "'a'"), ("REAL", "1.5"), ("NUMERIC", "1"), ("BLOB", "x'01'")],
)
def test_a_sqlite_key_without_integer_affinity_is_refused(driver, sqlite_target, declared, value):
    sqlite_target("db")
    with connect("db", create=True) as conn:
        conn.execute(f"CREATE TABLE items (id {declared}, v TEXT)")
        conn.execute(f"INSERT INTO items VALUES ({value}, 'x')")

    with pytest.raises(ComponentError) as info:
        driver.partition(items_stage("db", 10))

    assert info.value.code == "unsupported_key"
    assert info.value.path == "params.backfill.key_column"


def test_a_sqlite_integer_column_holding_text_is_refused(driver, sqlite_target):
    sqlite_target("db")
    with connect("db", create=True) as conn:
        conn.execute("CREATE TABLE items (id INTEGER, v TEXT)")
        conn.execute("INSERT INTO items VALUES (1, 'x'), ('abc', 'x')")

    with pytest.raises(ComponentError) as info:
        driver.partition(items_stage("db", 10))

    assert info.value.code == "unsupported_key"
    assert "text" in info.value.message


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("declared", "value"),
    [
        ("interval", "'1 day'"),
        ("point", "'(1,2)'"),
        ("numeric", "1"),
        ("text", "'a'"),
        ("real", "1"),
        ("timestamp", "now()"),
        ("int4range", "'[1,2)'"),
    ],
)
def test_a_postgresql_key_that_is_not_an_integer_type_is_refused(
    driver, pg_target, declared, value
):
    with connect("pg") as conn:
        conn.execute(f"CREATE TABLE items (id {declared}, v TEXT)")
        conn.execute(f"INSERT INTO items VALUES ({value}, 'x')")

    with pytest.raises(ComponentError) as info:
        driver.partition(items_stage("pg", 10))

    assert info.value.code == "unsupported_key"
    assert declared.split("(")[0] in info.value.message


@pytest.mark.postgres
@pytest.mark.parametrize("declared", ["smallint", "integer", "bigint", "serial", "positive"])
def test_a_postgresql_integer_key_or_a_domain_over_one_is_accepted(driver, pg_target, declared):
    with connect("pg") as conn:
        conn.execute("CREATE DOMAIN positive AS bigint CHECK (VALUE > 0)")
        conn.execute(f"CREATE TABLE items (id {declared} PRIMARY KEY, v TEXT NOT NULL)")
        conn.execute("INSERT INTO items VALUES (1, 'x'), (2, 'x')")

    run = driver.run(items_stage("pg", 1), dry_run=False)

    assert sum(r["rows_affected"] for r in run.results) == 2
    assert set(values("pg").values()) == {"xx"}


@pytest.mark.postgres
def test_the_api_answers_an_interval_key_with_a_4xx_not_a_500(
    pg_target, operator, settings
) -> None:
    from rest_framework.test import APIClient

    from hxo_site.authentication import token_for

    with connect("pg") as conn:
        conn.execute("CREATE TABLE items (id interval, v TEXT)")
        conn.execute("INSERT INTO items VALUES ('1 day', 'x')")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(operator).key}")
    stage = items_stage("pg", 10)
    response = client.post(
        "/api/v1/plans/", {"name": "interval key", "stages": [stage]}, format="json"
    )
    assert response.status_code == 201, response.json()

    dry = client.post(f"/api/v1/plans/{response.json()['id']}/dry-run/", {}, format="json")

    # The worker partitions the run: it fails with the partitioner's code and path.
    assert dry.status_code == 202, dry.content
    drain(dry.json()["id"])
    run = client.get(f"/api/v1/runs/{dry.json()['id']}/").json()
    assert run["state"] == "failed"
    body = run["error"]
    assert body["code"] == "partitioning_failed"
    [error] = body["errors"]
    assert error["code"] == "unsupported_key"
    assert error["path"] == "stages[0].params.backfill.key_column"
    assert "interval" in error["message"]


# --- concurrency: batches of one backfill at once -----------------------------------------


def test_concurrent_overlapping_batches_apply_each_key_once(driver, target):
    make_items(target, list(range(1, 401)))
    executor = EXECUTORS["sql_migrate"]()
    contexts = []
    # Two plans over the same keys with different batch sizes, run at once: their batches
    # overlap everywhere.
    for size in (100, 130):
        stage = items_stage(target, size)
        kind, manifest, data = driver.partition(stage)
        contexts += [
            driver.context(stage, kind, data, i, spec, dry_run=False)
            for i, spec in enumerate(manifest.partitions)
        ]
    errors: list[BaseException] = []

    def run(ctx: Any) -> None:
        try:
            executor.execute(ctx)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(ctx,)) for ctx in contexts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    assert errors == []
    assert set(values(target).values()) == {"xx"}
    found = intervals(target)
    assert_disjoint(found)
    assert sum(b - a + 1 for a, b, _ in found) == 400 == sum(n for *_, n in found)


# --- fencing at the target ----------------------------------------------------------------


def test_a_fence_lost_just_before_commit_commits_nothing(driver, target):
    make_items(target, list(range(1, 11)))
    make_products(target)
    executor = EXECUTORS["sql_migrate"]()

    def lost() -> None:
        raise LeaseLost("re-claimed")

    for stage in (items_stage(target, 100), statements_stage(target, PRICES)):
        kind, manifest, data = driver.partition(stage)
        ctx = driver.context(stage, kind, data, 0, manifest.partitions[0], dry_run=False)
        ctx.check_fence = lost
        with pytest.raises(LeaseLost):
            executor.execute(ctx)

    assert set(values(target).values()) == {"x"}
    assert price(target) == 100
    assert intervals(target) == [] and batches(target) == []


def test_ledger_rows_carry_the_run_partition_and_fence_that_wrote_them(driver, target):
    make_products(target)
    stage = statements_stage(target, PRICES)
    kind, manifest, data = driver.partition(stage)
    ctx = driver.context(stage, kind, data, 0, manifest.partitions[0], dry_run=False, fence=7)
    calls: list[int] = []
    ctx.check_fence = lambda: calls.append(1)

    EXECUTORS["sql_migrate"]().execute(ctx)

    [row] = batches(target)
    assert row[3:] == (1, 1, 7)
    assert calls == [1]  # asked once, right before the commit


@pytest.mark.postgres
def test_a_postgresql_transaction_left_idle_is_ended_by_the_server(pg_target, settings):
    import psycopg

    make_items("pg", [1])
    with connect("pg") as conn:
        conn.begin(idle_timeout_ms=300)
        conn.execute("UPDATE items SET v = 'stale' WHERE id = 1")
        time.sleep(1.0)  # a paused worker: the server does not wait for it
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT 1")
            conn.commit()

    assert values("pg") == {1: "x"}


def test_the_ledger_ddl_is_one_statement_per_table():
    assert len(LEDGER_DDL) == len(LEDGER_TABLES) == 3


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["backfill", "statements"])
def test_a_batch_waits_for_another_delivery_of_the_same_work_past_the_lock_timeout(
    driver, pg_target, mode
):
    # Another transaction holds the ledger's row for this work (another batch of the same
    # backfill, or a stale delivery of the same statements): the batch waits for it to end,
    # bounded by the statement timeout, instead of failing after lock_timeout_ms.
    make_items("pg", [1, 2])
    make_products("pg")
    stage = items_stage("pg", 10) if mode == "backfill" else statements_stage("pg", PRICES)
    stage["params"]["lock_timeout_ms"] = 200
    kind, manifest, data = driver.partition(stage)
    ctx = driver.context(stage, kind, data, 0, manifest.partitions[0], dry_run=False)
    identity = get_target("pg").identity
    done: list[Any] = []
    with connect("pg") as holder:
        for ddl in LEDGER_DDL:
            holder.execute(ddl)
        holder.begin()
        if mode == "backfill":
            holder.execute(
                "INSERT INTO hxo_ledger_backfills VALUES (:t, :h, 'sql', 'now')",
                {"t": identity, "h": hashlib.sha256(APPEND_X.encode()).hexdigest()},
            )
        else:
            holder.execute(
                "INSERT INTO hxo_ledger_batches VALUES (:t, :h, 1, 0, 9, 9, 9, 'now')",
                {"t": identity, "h": batch_sha256([(PRICES[0], None)])},
            )
        worker = threading.Thread(
            target=lambda: done.append(EXECUTORS["sql_migrate"]().execute(ctx))
        )
        worker.start()
        worker.join(timeout=1.0)  # five lock timeouts: it is still waiting, not failed
        assert worker.is_alive() and done == []
        holder.rollback()
    worker.join(timeout=60)

    assert done and done[0]["ledger"] == "applied"
    if mode == "backfill":
        assert set(values("pg").values()) == {"xx"}
    else:
        assert price("pg") == 110


# --- reuse: the recorded effect still exists ----------------------------------------------


@pytest.mark.parametrize("mode", ["statements", "backfill"])
def test_effect_exists_only_while_the_targets_ledger_records_the_batch(
    driver, target, sqlite_target, mode
):
    make_items(target, list(range(1, 11)))
    make_products(target)
    stage = items_stage(target, 100) if mode == "backfill" else statements_stage(target, PRICES)
    kind, manifest, data = driver.partition(stage)
    executor = EXECUTORS["sql_migrate"]()
    ctx = driver.context(stage, kind, data, 0, manifest.partitions[0], dry_run=False)
    output = executor.execute(ctx)
    assert output["effect"]["target"] == get_target(target).identity

    assert executor.effect_exists(ctx, output) is True
    # The same output claimed for another database (the plan pointed elsewhere): not there.
    sqlite_target("elsewhere")
    make_items("elsewhere", list(range(1, 11)))
    make_products("elsewhere")
    if mode == "backfill":
        other = items_stage("elsewhere", 100)
    else:
        other = statements_stage("elsewhere", PRICES)
    _k, theirs, their_data = driver.partition(other)
    other_ctx = driver.context(other, kind, their_data, 0, theirs.partitions[0], dry_run=False)
    assert executor.effect_exists(other_ctx, output) is False
    # The ledger row is gone (the database was restored from an older backup): not there.
    with connect(target) as conn:
        conn.execute(f"DELETE FROM {INTERVALS_TABLE if mode == 'backfill' else BATCHES_TABLE}")
    assert executor.effect_exists(ctx, output) is False

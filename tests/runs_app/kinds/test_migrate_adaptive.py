"""Adaptive sub-batches for deploy.migrate backfills (issue 15 §4, runs_app/kinds/adaptive.py),
on real SQLite files and scratch PostgreSQL databases.

The statement's cost per row is controlled by the rows themselves: each row carries a weight
`w`, and the backfill computes a digest of `w` bytes (SQLite: `hex(randomblob(w))`,
PostgreSQL: `md5(repeat('x', w))`), real work proportional to it. A cheap region followed by
an expensive one must make the sub-batches grow, then shrink; no duration is asserted, only
the direction of the sizes and their bounds. Exactness is counted at the target: every row's
counter `n` is 1, and the ledger's intervals are the recorded sub-batches, disjoint, covering
the range.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from django.test import Client

from blueprints_app.registry import EXECUTORS, ComponentError
from runs_app import services
from runs_app.kinds import adaptive
from runs_app.kinds.adaptive import Adaptive, Optimizer
from runs_app.models import Partition, RunState
from runs_app.targets import connect
from tests.helpers import drain
from tests.runs_app.kinds.test_migrate_ledger import assert_disjoint, intervals

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, sqlite_target) -> str:
    """One empty target per vendor: a SQLite file "db", or a scratch PostgreSQL "pg"."""
    if request.param == "pg":
        request.getfixturevalue("pg_target")
        return "pg"
    sqlite_target("db")
    return "db"


COST = {
    "sqlite": "length(hex(randomblob(w)))",
    "postgresql": "length(md5(repeat('x', w)))",
}


def make_weighted(target: str, weights: list[int], *, poison: int | None = None) -> None:
    """items(id, w, h, n): keys 1..len(weights); `n` may never reach 6, so a row created with
    n = 5 (`poison`) makes the backfill fail on it with a real constraint violation."""
    with connect(target, create=True) as conn:
        conn.begin()
        conn.execute(
            "CREATE TABLE items (id BIGINT PRIMARY KEY, w INTEGER NOT NULL, h INTEGER, "
            "n INTEGER NOT NULL CHECK (n < 6))"
        )
        conn.executemany(
            "INSERT INTO items (id, w, n) VALUES (:id, :w, :n)",
            [{"id": i, "w": w, "n": 5 if i == poison else 0} for i, w in enumerate(weights, 1)],
        )
        conn.commit()


def weighted_stage(target: str, batch_size: int, **bounds: int) -> dict[str, Any]:
    with connect(target) as conn:
        vendor = conn.vendor
    return {
        "id": "backfill",
        "kind": "deploy.migrate",
        "partitioner": "by_sql_batch",
        "executor": "sql_migrate",
        "params": {
            "target": target,
            "backfill": {
                "sql": f"UPDATE items SET h = {COST[vendor]}, n = n + 1 "
                "WHERE id >= :start AND id < :end",
                "table": "items",
                "key_column": "id",
                "batch_size": batch_size,
                **bounds,
            },
        },
    }


def counters(target: str) -> dict[int, int]:
    with connect(target) as conn:
        return dict(conn.execute("SELECT id, n FROM items ORDER BY id").fetchall())


def assert_exactly_once(target: str, keys: int, subs: list[list[int]]) -> None:
    """Every key changed once; the ledger's intervals are the sub-batches, covering 1..keys."""
    assert set(counters(target).values()) == {1}
    found = intervals(target)
    assert_disjoint(found)
    assert [[a, b, n] for a, b, n in found] == [s[:3] for s in subs]
    assert found[0][0] == 1 and found[-1][1] == keys
    assert sum(b - a + 1 for a, b, _ in found) == keys == sum(n for *_, n in found)


# --- the optimizer alone ------------------------------------------------------------------


def test_the_optimizer_grows_at_most_1_2x_shrinks_at_most_half_and_keeps_its_bounds():
    plan = Adaptive(target_ms=100, min_size=10, max_size=1000)
    opt = Optimizer(plan)
    sizes = [opt.size]
    for _ in range(40):  # 0.1 ms per key: ideal 1000 keys
        sizes.append(opt.observe(sizes[-1], 0.1 * sizes[-1]))
    # Converged into the dead band: predicted 90..100 ms, so 900..1,000 keys.
    assert sizes[0] == 10 and 900 <= sizes[-1] <= 1000
    assert all(b <= a * 1.2 + 1 for a, b in itertools.pairwise(sizes))
    for _ in range(10):  # now 10 ms per key: ideal 10 keys
        sizes.append(opt.observe(sizes[-1], 10 * sizes[-1]))
    assert sizes[-1] == 10
    assert all(10 <= s <= 1000 for s in sizes) and max(sizes) <= 1000
    shrinking = sizes[-10:]
    assert all(b >= a // 2 for a, b in itertools.pairwise(shrinking))


def test_a_size_inside_the_dead_band_stays():
    opt = Optimizer(Adaptive(target_ms=100, min_size=1, max_size=500))
    opt.size = 200
    assert opt.observe(200, 95) == 200  # 95 % of the target: leave it
    assert opt.observe(200, 50) == 240  # half the target: grow by the cap


# --- on real targets ----------------------------------------------------------------------


def test_sizes_grow_on_cheap_rows_shrink_on_dear_ones_and_each_key_applies_once(driver, target):
    # 2,500 cheap keys (a byte each), then 500 whose digest reads 500 KB each (a few ms per
    # row here: sub-batches of the largest size take well over the target; a cheap sub-batch
    # is a fraction of it even on a loaded machine, its transaction's overhead included).
    cheap, dear = 2500, 500
    make_weighted(target, [1] * cheap + [500_000] * dear)
    stage = weighted_stage(
        target, cheap + dear, target_batch_ms=150, min_batch_size=10, max_batch_size=300
    )

    run = driver.run(stage, dry_run=False)

    [out] = run.results
    subs = out["sub_batches"]
    sizes = [s[4] for s in subs]
    assert all(10 <= s <= 300 for s in sizes)
    assert sizes[0] == 10  # the cautious start
    in_cheap = [s[4] for s in subs if s[1] <= cheap]
    peak = max(in_cheap)
    assert peak >= 4 * sizes[0], sizes  # grew while the rows were cheap
    in_dear = [s[4] for s in subs if s[0] > cheap]
    assert in_dear and in_dear[-1] <= peak // 2, sizes  # and shrank once they were not
    assert out["adaptive"] == {"target_ms": 150, "min_size": 10, "max_size": 300}
    assert out["rows_affected"] == cheap + dear and out["ledger"] == "applied"
    assert out["key_range"] == [1, cheap + dear + 1]  # the approved range, as before
    assert_exactly_once(target, cheap + dear, subs)


def test_a_failure_mid_partition_keeps_the_committed_sub_batches_and_a_retry_does_only_the_rest(
    driver, target
):
    keys, poison = 1000, 537
    make_weighted(target, [1] * keys, poison=poison)
    stage = weighted_stage(target, keys, target_batch_ms=200, min_batch_size=10, max_batch_size=100)
    kind, manifest, data = driver.partition(stage)
    executor = EXECUTORS["sql_migrate"]()
    [spec] = manifest.partitions

    with pytest.raises(ComponentError) as failed:
        executor.execute(driver.context(stage, kind, data, 0, spec, dry_run=False, fence=1))

    assert failed.value.code == "sql_error" and failed.value.permanent
    assert "committed and ledgered: a retry applies only the rest" in failed.value.message
    done = intervals(target)
    assert_disjoint(done)
    assert done[0][0] == 1
    stopped = done[-1][1] + 1  # the first key of the sub-batch that was rolled back
    assert stopped <= poison
    n = counters(target)
    assert {n[i] for i in range(1, stopped)} == {1}
    assert {n[i] for i in range(stopped, keys + 1) if i != poison} == {0}

    # The row is put right; the partition's next attempt (another fence) finishes the range.
    with connect(target) as conn:
        conn.execute("UPDATE items SET n = 0 WHERE id = :id", {"id": poison})
    out = executor.execute(driver.context(stage, kind, data, 0, spec, dry_run=False, fence=2))

    assert out["sub_batches"][0][0] == stopped  # nothing before it ran again
    assert out["rows_affected"] == keys - stopped + 1
    assert set(counters(target).values()) == {1}
    found = intervals(target)
    assert_disjoint(found)
    assert sum(b - a + 1 for a, b, _ in found) == keys == sum(r for *_, r in found)
    # Once more (a redelivery): the ledger covers it all, nothing runs.
    again = executor.execute(driver.context(stage, kind, data, 0, spec, dry_run=False, fence=3))
    assert again["ledger"] == "already_applied" and again["sub_batches"] == []
    assert again["rows_affected"] == keys
    assert set(counters(target).values()) == {1}


def test_without_a_target_duration_a_batch_is_one_transaction_as_before(driver, target):
    make_weighted(target, [1] * 250)
    run = driver.run(weighted_stage(target, 100), dry_run=False)

    assert [(a, b) for a, b, _ in intervals(target)] == [(1, 100), (101, 200), (201, 250)]
    assert all("sub_batches" not in r for r in run.results)
    assert set(counters(target).values()) == {1}


def test_the_dry_run_is_one_rolled_back_pass_and_says_sizes_adapt_at_apply(driver, target):
    make_weighted(target, [1] * 300)
    stage = weighted_stage(target, 300, target_batch_ms=50, min_batch_size=20, max_batch_size=150)

    dry = driver.run(stage, dry_run=True)

    [out] = dry.results
    assert out["rows_affected"] == 300 and out["to_apply"] == [[1, 300]]
    assert (
        "applied in sub-batches of 20 to 150 keys, each sized to take about 50 ms"
        in (out["summary"])
    )
    assert set(counters(target).values()) == {0} and intervals(target) == []


def test_the_bounds_are_pinned_in_the_manifest_so_the_digest_covers_them(driver, target):
    make_weighted(target, [1] * 10)
    _, _, data = driver.partition(weighted_stage(target, 1000, target_batch_ms=500))
    # Defaults: the whole batch at most, 1 % of it at least.
    assert data["backfill"]["adaptive"] == {"target_ms": 500, "min_size": 10, "max_size": 1000}
    _, _, plain = driver.partition(weighted_stage(target, 1000))
    assert "adaptive" not in plain["backfill"]


# --- hostile params -----------------------------------------------------------------------


INVALID = "invalid_params"
HOSTILE = [
    ({"target_batch_ms": "fast"}, "params.backfill.target_batch_ms", "invalid_params"),
    ({"target_batch_ms": True}, "params.backfill.target_batch_ms", "invalid_params"),
    ({"target_batch_ms": 5}, "params.backfill.target_batch_ms", "invalid_params"),
    ({"target_batch_ms": 2**70}, "params.backfill.target_batch_ms", "invalid_params"),
    (
        {"target_batch_ms": 100, "min_batch_size": 0},
        "params.backfill.min_batch_size",
        "invalid_params",
    ),
    (
        {"target_batch_ms": 100, "max_batch_size": -3},
        "params.backfill.max_batch_size",
        "invalid_params",
    ),
    (
        {"target_batch_ms": 100, "min_batch_size": 80, "max_batch_size": 40},
        "params.backfill.min_batch_size",
        adaptive.ADAPTIVE_BOUNDS,
    ),
    (
        {"target_batch_ms": 100, "max_batch_size": 5000},
        "params.backfill.max_batch_size",
        adaptive.ADAPTIVE_BOUNDS,
    ),
    (  # max_batch_size defaults to batch_size (found by a tryout: this validated)
        {"target_batch_ms": 100, "min_batch_size": 5000, "batch_size": 100},
        "params.backfill.min_batch_size",
        adaptive.ADAPTIVE_BOUNDS,
    ),
    (
        {"target_batch_ms": 100, "min_batch_size": 1, "batch_size": 5000},
        "params.backfill.min_batch_size",
        adaptive.ADAPTIVE_TOO_MANY_SUB_BATCHES,
    ),
    (
        {"target_batch_ms": 30_000},
        "params.backfill.target_batch_ms",
        adaptive.ADAPTIVE_TARGET_ABOVE_TIMEOUT,
    ),
]


def api_stage(**backfill: Any) -> dict[str, Any]:
    return {
        "id": "backfill",
        "kind": "deploy.migrate",
        "partitioner": "by_sql_batch",
        "executor": "sql_migrate",
        "params": {
            "target": "db",
            "backfill": {
                "sql": "UPDATE items SET n = n + 1 WHERE id >= :start AND id < :end",
                "table": "items",
                "key_column": "id",
                "batch_size": 1000,
                **backfill,
            },
        },
    }


@pytest.mark.parametrize(("backfill", "path", "code"), HOSTILE)
def test_hostile_adaptive_params_are_a_400_naming_the_field(
    sqlite_target, api_client_for, operator, backfill, path, code
):
    sqlite_target("db")
    client = api_client_for(operator)
    stage = api_stage(**backfill)

    created = client.post("/api/v1/plans/", {"name": "a", "stages": [stage]}, format="json")
    checked = client.post("/api/v1/validate/", {"stage": stage}, format="json")

    assert created.status_code == 400, created.content
    assert created.json()["code"] == "validation_failed"
    assert (f"stages[0].{path}", code) in {(e["path"], e["code"]) for e in created.json()["errors"]}
    assert checked.status_code == 200 and checked.json()["valid"] is False
    assert path in {e["path"].split(".", 1)[1] for e in checked.json()["errors"]}


def test_bounds_without_a_target_duration_are_valid_with_a_warning(
    sqlite_target, api_client_for, operator
):
    sqlite_target("db")
    checked = api_client_for(operator).post(
        "/api/v1/validate/", {"stage": api_stage(min_batch_size=50)}, format="json"
    )

    body = checked.json()
    assert body["valid"] is True
    assert [(w["code"], w["path"].split(".", 1)[1]) for w in body["warnings"]] == [
        (adaptive.ADAPTIVE_UNUSED, "params.backfill.min_batch_size")
    ]


# --- through the engine, the review page and the API --------------------------------------


# Committed for real: the drainer's heartbeat thread must see the partitions it holds.
@pytest.mark.django_db(transaction=True)
def test_an_approved_adaptive_backfill_applies_once_and_shows_its_sub_batches(
    sqlite_target, operator, approver, api_client_for
):
    sqlite_target("db")
    make_weighted("db", [1] * 600)
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "adaptive",
            "stages": [weighted_stage("db", 300, target_batch_ms=200, min_batch_size=20)],
        },
    )
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    assert dry.state == RunState.AWAITING_APPROVAL, dry.error

    review = Client()
    review.force_login(approver)
    page = review.get(f"/runs/{dry.pk}/").content.decode()
    assert "the approval covers this SQL, the key range as a whole and the sub-batch bounds" in page
    assert "(20 to 300 keys, about 200 ms each)" in page

    services.run_approve(run=dry, actor=approver, comment="ok")
    run = drain(services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk))

    assert run.state == RunState.SUCCEEDED, run.error
    assert set(counters("db").values()) == {1}
    listed = api_client_for(operator).get(f"/api/v1/runs/{run.pk}/partitions/").json()
    subs = [s for p in listed["results"] for s in p["output"]["sub_batches"]]
    assert_exactly_once("db", 600, sorted(subs))
    assert Partition.objects.filter(stage__run=run).count() == 2  # the approved partitions
    first = Partition.objects.filter(stage__run=run).order_by("index").first()
    detail = review.get(f"/runs/{run.pk}/partitions/{first.pk}/").content.decode()
    assert 'data-testid="sub-batches"' in detail
    assert f"<code>1..{first.output['sub_batches'][0][1]}</code>" in detail
    receipt = api_client_for(operator).get(f"/api/v1/runs/{run.pk}/receipt/").json()
    assert receipt["verified"] is True

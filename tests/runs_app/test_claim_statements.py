"""The engine's hot path costs PostgreSQL a fixed number of statements per batch, not one per
partition: the claim, its log and the successes each go as one statement joining the batch's
arrays (`unnest`), every row still compared on its own fence (docs/scaling.md §1)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from runs_app import services
from runs_app.models import ClaimLog, Partition, PartitionState, RunState
from tests.helpers import drain, partitioned
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, effects, stage

pytestmark = pytest.mark.django_db(transaction=True)

ITEMS = 300


def plan_of(operator: Any, tmp_path: Path, name: str, stage_id: str, items: int) -> Any:
    """A one-stage plan of `items` test partitions that needs no approval."""
    stage_doc = stage(stage_id, tmp_path, items=items, kind=TEST_KIND_NOAPPROVAL)
    return services.plan_create(actor=operator, document={"name": name, "stages": [stage_doc]})


def test_a_batch_costs_postgresql_the_same_statements_whatever_its_size(
    test_kinds, tmp_path: Path, operator
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("SQLite's executemany runs in-process: no statement per row to save")
    plan = plan_of(operator, tmp_path, "p", "a", ITEMS)
    run = partitioned(services.run_apply(plan=plan, actor=operator))
    # Rows executed per statement on the partition and claim-log tables, executemany's rows
    # counted one by one (each is a statement the server parses, plans and runs).
    executed: Counter[str] = Counter()

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        head = " ".join(sql.split()[:3]).upper()
        if "RUNS_APP_PARTITION" in sql.upper() or "RUNS_APP_CLAIMLOG" in sql.upper():
            executed[head] += len(params) if many else 1
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        run = drain(run)

    assert run.state == RunState.SUCCEEDED
    assert sorted(effects(tmp_path, "a")) == list(range(ITEMS))
    assert Partition.objects.filter(run=run, state=PartitionState.SUCCEEDED).count() == ITEMS
    claims = ClaimLog.objects.filter(partition__run=run)
    assert claims.count() == ITEMS  # each partition claimed once, its log row written
    batches = claims.values("owner", "claimed_at").distinct().order_by().count()
    assert batches < ITEMS // 4  # the drainer did batch (the assertion below means something)
    updates = sum(n for head, n in executed.items() if head.startswith("UPDATE"))
    inserts = sum(n for head, n in executed.items() if head.startswith("INSERT"))
    # Per batch: the claim UPDATE and the success UPDATE, the ClaimLog INSERT; a per-row
    # statement anywhere would make these grow with ITEMS instead.
    assert updates <= 2 * batches + 5, executed
    assert inserts <= batches + 1, executed


def reltuples() -> float:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples FROM pg_class WHERE oid = %s::regclass",
            [Partition._meta.db_table],
        )
        return cursor.fetchone()[0]


def test_a_large_partitioning_refreshes_the_planners_statistics_before_claims(
    test_kinds, tmp_path: Path, operator
) -> None:
    """Statistics that predate a run's pending rows make the planner scan every pending row
    for a statement on a list of ids (165 ms instead of 2 ms measured): a run that writes
    ANALYZE_AT rows or more analyzes the table before its partitions become claimable."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's planner statistics; SQLite plans without them")
    table = Partition._meta.db_table
    with connection.cursor() as cursor:
        # Only this code may analyze the table meanwhile: an autoanalyze (the runs below
        # change far more than its threshold) would move the estimate too.
        cursor.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        cursor.execute(f"ANALYZE {table}")
    try:
        _partition_and_check(test_kinds, tmp_path, operator)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table} RESET (autovacuum_enabled)")


def _partition_and_check(test_kinds: Any, tmp_path: Path, operator: Any) -> None:
    from runs_app.engine import partitioning

    before = reltuples()
    items = partitioning.ANALYZE_AT + 500
    plan = plan_of(operator, tmp_path, "p", "a", items)
    run = partitioned(services.run_apply(plan=plan, actor=operator))

    assert Partition.objects.filter(run=run).count() == items
    # Analyzed before the last batch: all but it are counted (small tables are read whole).
    assert reltuples() >= max(before, 0) + items - partitioning.BATCH
    small = plan_of(operator, tmp_path, "q", "b", 10)
    counted = reltuples()
    partitioned(services.run_apply(plan=small, actor=operator))
    assert reltuples() == counted  # below ANALYZE_AT: left to autovacuum


def test_refreshing_statistics_never_waits_behind_another_analyze_or_vacuum(
    test_kinds,
) -> None:
    """ANALYZE's lock conflicts with another ANALYZE and with (auto)vacuum: the refresh skips
    a table it cannot lock at once (SKIP_LOCKED) instead of stalling the run's last batch;
    a waiting ANALYZE would hit the statement timeout here and come back False."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's ANALYZE")
    from django.db import connections

    from runs_app.engine import partitioning

    other = connections.create_connection("default")
    try:
        other.set_autocommit(False)
        with other.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {Partition._meta.db_table} IN SHARE UPDATE EXCLUSIVE MODE")
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = '5s'")
        try:
            assert partitioning.refresh_statistics(partitioning.ANALYZE_AT) is True
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET statement_timeout")
    finally:
        other.rollback()
        other.close()

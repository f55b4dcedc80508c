"""A replay copies the failed partitions in bounded transactions (issue 13 leftover): one
transaction copying 20,000 rows held SQLite's single writer lock for seconds."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from django.db import connection

from runs_app import services
from runs_app.engine import partitioning
from runs_app.models import Partition, RunState
from tests.helpers import drain
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, stage

pytestmark = pytest.mark.django_db(transaction=True)

FAILED = 20_000


def test_a_replay_of_20000_failed_partitions_writes_at_most_a_batch_per_transaction(
    test_kinds, tmp_path, operator, settings, monkeypatch
) -> None:
    settings.HXO_RETRY_BACKOFF_MS = 0
    settings.HXO_MAX_ATTEMPTS = 1
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "p",
            "stages": [stage("a", tmp_path, items=2, kind=TEST_KIND_NOAPPROVAL, fail={"0": 1})],
        },
    )
    run = drain(services.run_apply(plan=plan, actor=operator))
    assert run.state == RunState.FAILED
    # The parent grows to 20,000 failed partitions: copies of its failed one, as a large
    # stage whose batches all failed would leave.
    template = Partition.objects.get(run=run, state="failed")
    Partition.objects.filter(run=run).exclude(pk=template.pk).delete()
    Partition.objects.bulk_create(
        [
            Partition(
                run=run,
                stage=template.stage,
                index=i,
                wave=0,
                inputs=template.inputs,
                fingerprints=template.fingerprints,
                label=f"item {i}",
                weight=1,
                content_id=f"{i:064x}",
                state="failed",
            )
            for i in range(1, FAILED)
        ],
        batch_size=2000,
    )

    # Rows inserted into the partition table, per outermost atomic block (a transaction).
    # insert_partitions is the one writer of new partitions (PostgreSQL: COPY, which no
    # execute wrapper sees); any other INSERT into the table is counted apart and must not be.
    rows_by_transaction: dict[Any, int] = defaultdict(int)
    other_inserts: list[str] = []
    table = Partition._meta.db_table
    original = partitioning.insert_partitions

    def counting(run_id: int, rows: list[partitioning.NewPartition]) -> int:
        written = original(run_id, rows)
        assert connection.atomic_blocks, "insert_partitions outside a transaction"
        rows_by_transaction[connection.atomic_blocks[0]] += written
        return written

    def no_other_insert(execute, sql, params, many, context):
        if sql.lstrip().upper().startswith("INSERT") and f'"{table}"' in sql and not many:
            other_inserts.append(sql)
        return execute(sql, params, many, context)

    monkeypatch.setattr(partitioning, "insert_partitions", counting)
    with connection.execute_wrapper(no_other_insert):
        child = services.run_replay(run=run, actor=operator)

    assert other_inserts == []
    assert child.state == RunState.RUNNING
    assert Partition.objects.filter(run=child).count() == FAILED
    assert sum(rows_by_transaction.values()) == FAILED
    assert max(rows_by_transaction.values()) <= partitioning.BATCH
    assert len(rows_by_transaction) == FAILED // partitioning.BATCH
    stage_row = child.run_stages.get()
    assert (stage_row.total, stage_row.pending) == (FAILED, FAILED)

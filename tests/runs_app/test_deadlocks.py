"""Deadlocks on PostgreSQL: the engine's lock order (partitions by key, then stage rows by
key, then the run) and, where a cycle still forms, the retry of the transaction PostgreSQL
failed (`engine.deadlocks`). SQLite has one writer and no row locks: nothing to test there.

Seen in CI: a partition whose failure put its stage over budget cancelled the stage's pending
partitions while holding the stage row; a claim in flight held some of those partitions and
wanted the stage row. PostgreSQL failed the completion (40P01), the drainer stopped, and the
partition's real error was lost until its lease expired."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, connections, transaction

from runs_app import services, tasks
from runs_app.engine import claims, deadlocks
from runs_app.models import Partition, PartitionState, RunStage, StageState
from tests.helpers import lock_waiters, partitioned
from tests.runs_app.cluster import wait_for
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, stage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]


@pytest.fixture(autouse=True)
def postgresql_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks and deadlocks: PostgreSQL only (SQLite serialises writers)")


def test_a_transaction_failed_as_a_deadlock_runs_again(caplog) -> None:
    """Two transactions lock two rows in opposite orders: PostgreSQL fails one of them, and
    `retrying` runs it again, so both commit."""
    User = get_user_model()
    a = User.objects.create(username="row-a")
    b = User.objects.create(username="row-b")
    both_hold_one = threading.Barrier(2, timeout=30)
    tries: list[str] = []
    errors: list[BaseException] = []

    def crossing(name: str, first: int, second: int) -> None:
        def body() -> None:
            tries.append(name)
            with transaction.atomic():
                User.objects.filter(pk=first).update(first_name=name)
                if len(tries) <= 2:  # the first round only: meet, then cross
                    both_hold_one.wait()
                User.objects.filter(pk=second).update(last_name=name)

        try:
            deadlocks.retrying(body, what=f"crossing {name}")
        except BaseException as exc:  # reported to the test thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=crossing, args=("one", a.pk, b.pk)),
        threading.Thread(target=crossing, args=("two", b.pk, a.pk)),
    ]
    with caplog.at_level(logging.WARNING, logger="runs_app.engine.deadlocks"):
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

    assert errors == []
    assert len(tries) == 3  # one of the two ran again
    assert "deadlock detected" in caplog.text and "trying again (2 of 4)" in caplog.text
    a.refresh_from_db()
    b.refresh_from_db()
    assert {a.first_name, b.first_name} <= {"one", "two"} and a.last_name and b.last_name


def test_retrying_leaves_an_enclosing_transactions_failure_to_its_caller() -> None:
    calls = []

    def body() -> None:
        calls.append(1)
        with connection.cursor() as cur:
            cur.execute(
                "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40P01', MESSAGE = 'cycle'; END $$"
            )

    with pytest.raises(Exception, match="cycle"), transaction.atomic():
        deadlocks.retrying(body, what="inside a transaction")
    assert calls == [1]  # the enclosing transaction is aborted: only its owner may retry
    with pytest.raises(Exception, match="cycle"):
        deadlocks.retrying(body, what="alone", attempts=2)
    assert calls == [1, 1, 1]


def test_a_failure_over_budget_with_a_claim_in_flight_stops_the_stage_without_deadlock(
    test_kinds, operator, tmp_path: Path, settings
) -> None:
    settings.HXO_RETRY_BACKOFF_MS = 0
    items = 20
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "over budget",
            "stages": [
                stage("a", tmp_path, items=items, kind=TEST_KIND_NOAPPROVAL, fail={"0": 99})
            ],
        },
    )
    run = partitioned(services.run_apply(plan=plan, actor=operator))
    sa = RunStage.objects.get(run=run)
    zero = Partition.objects.get(stage=sa, index=0)
    # Only item 0 runs here; it fails until its attempts are spent (budget 0).
    Partition.objects.filter(stage=sa).exclude(pk=zero.pk).update(ready=False)
    in_flight = list(
        Partition.objects.filter(stage=sa, index__in=[5, 6, 7]).values_list("pk", flat=True)
    )
    holding, drained = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def claim_in_flight() -> None:
        """What a claim has done before its stage counters: its partitions locked."""
        try:
            with transaction.atomic():
                list(Partition.objects.select_for_update().filter(pk__in=in_flight))
                holding.set()
                wait_for(
                    lambda: drained.is_set() or lock_waiters() > 0,
                    "the drainer to finish or to wait",
                    timeout=60,
                )
                claims.count_moves(sa.pk, {"pending": -3, "running": 3})
                raise _Refused  # this claim is taken back (a pause, say)
        except _Refused:
            pass
        except BaseException as exc:  # reported to the test thread
            outcome["claim_error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=claim_in_flight)
    thread.start()
    assert holding.wait(30)
    try:
        tasks.drain(run.pk, budget_s=10)
    finally:
        drained.set()
        thread.join(60)

    assert "claim_error" not in outcome, outcome
    sa.refresh_from_db()
    zero.refresh_from_db()
    assert zero.state == PartitionState.FAILED
    assert "injected failure of item 0" in zero.error["message"]
    # The partitions the claim held were skipped, not waited for: the stage is stopped and
    # its worker (run here) cancels them once the claim has let go.
    assert sa.stopped_at is not None
    assert set(
        Partition.objects.filter(stage=sa, state=PartitionState.PENDING).values_list(
            "pk", flat=True
        )
    ) == set(in_flight)
    assert tasks.finish_stop(sa.pk)["done"] is True
    sa.refresh_from_db()
    assert (sa.state, sa.pending, sa.running, sa.failed, sa.cancelled) == (
        StageState.FAILED,
        0,
        0,
        1,
        items - 1,
    )


class _Refused(Exception):
    pass

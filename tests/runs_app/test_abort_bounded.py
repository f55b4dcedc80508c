"""Aborting a large run (issue 13's "runs start in milliseconds", the same fault on the way
out): the partitions are cancelled in bounded transactions, nothing is claimed in between, and
an abort interrupted between them is finished by the reconciler."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from runs_app import services, tasks
from runs_app.engine import claims, progress
from runs_app.models import (
    ClaimLog,
    Partition,
    PartitionState,
    Run,
    RunStage,
    RunState,
    StageState,
)
from tests.helpers import cancelled_rows_per_statement, lock_waiters, partitioned
from tests.runs_app.cluster import wait_for
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, effect_files, stage

pytestmark = pytest.mark.django_db(transaction=True)

ITEMS = 1000


def started(operator: Any, tmp_path: Path) -> Run:
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "big",
            "stages": [
                stage("a", tmp_path, items=ITEMS, kind=TEST_KIND_NOAPPROVAL),
                stage("b", tmp_path, items=3, kind=TEST_KIND_NOAPPROVAL, depends_on=["a"]),
            ],
        },
    )
    return partitioned(services.run_apply(plan=plan, actor=operator))


def test_an_abort_cancels_in_bounded_transactions_with_exact_counters(
    test_kinds, operator, tmp_path, monkeypatch
) -> None:
    run = started(operator, tmp_path)
    claims.claim_batch(run.pk, "worker-1", limit=2)  # two running, fenced out at once
    monkeypatch.setattr(progress, "CANCEL_BATCH", 100)

    with cancelled_rows_per_statement() as cancelled_per_statement:
        aborted = services.run_abort(run=run, actor=operator)
        # The request did one bounded batch and answered; a worker does the rest.
        assert aborted.state == RunState.ABORTED
        assert Partition.objects.filter(run=run, state=PartitionState.PENDING).exists()
        assert tasks.finish_abort(run.pk) == {"run": run.pk, "done": True}

    assert max(cancelled_per_statement) <= 100
    assert sum(cancelled_per_statement) == ITEMS + 3
    # One UPDATE per batch, stage and state, never one per partition: DISTINCT over stage ids
    # once also selected Partition.Meta.ordering and ran one empty UPDATE per row, 2,000 per
    # batch (a 100,000-partition abort timed out on PostgreSQL).
    assert 0 not in cancelled_per_statement, cancelled_per_statement
    assert len(cancelled_per_statement) <= ITEMS // 100 + 3
    assert not Partition.objects.filter(run=run, state=PartitionState.PENDING).exists()
    a, b = RunStage.objects.filter(run=run).order_by("position")
    assert (a.state, a.pending, a.running, a.cancelled) == (StageState.CANCELLED, 0, 0, ITEMS)
    assert (b.state, b.cancelled) == (StageState.CANCELLED, 3)
    assert effect_files(tmp_path, "a") == []


def test_nothing_is_claimed_for_an_aborted_run(test_kinds, operator, tmp_path) -> None:
    run = started(operator, tmp_path)
    # The abort's first transaction has committed, its bounded cancelling has not run yet.
    Run.objects.filter(pk=run.pk).update(state=RunState.ABORTED)

    assert claims.claim_batch(run.pk, "worker-1", limit=50) == []
    assert Partition.objects.filter(run=run, state=PartitionState.RUNNING).count() == 0


def test_the_reconciler_finishes_an_interrupted_abort(test_kinds, operator, tmp_path) -> None:
    run = started(operator, tmp_path)
    Run.objects.filter(pk=run.pk).update(state=RunState.ABORTED)  # died before cancelling

    report = tasks.reconcile()

    assert report["aborts_finished"] == [run.pk]
    assert not Partition.objects.filter(run=run, state=PartitionState.PENDING).exists()
    assert set(RunStage.objects.filter(run=run).values_list("state", flat=True)) == {
        StageState.CANCELLED
    }
    assert tasks.reconcile()["aborts_finished"] == []


def test_a_small_run_is_wholly_aborted_in_the_request(test_kinds, operator, tmp_path) -> None:
    """Up to one batch of partitions, the request ends the abort itself: every partition and
    stage cancelled when it answers, no worker needed."""
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "small",
            "stages": [stage("a", tmp_path, items=3, kind=TEST_KIND_NOAPPROVAL)],
        },
    )
    run = partitioned(services.run_apply(plan=plan, actor=operator))

    services.run_abort(run=run, actor=operator)

    assert not Partition.objects.filter(run=run, state=PartitionState.PENDING).exists()
    assert list(RunStage.objects.filter(run=run).values_list("state", flat=True)) == [
        StageState.CANCELLED
    ]
    assert progress.aborted_unfinished() == []


@pytest.mark.postgres
def test_an_abort_never_deadlocks_with_a_claim_in_flight(test_kinds, operator, tmp_path) -> None:
    """A claim holds its partitions and its stage's counters and stamps the run last (the
    engine's lock order); an abort that held the run's row while it cancelled waited on the
    stage the claim held while the claim waited on the run: PostgreSQL broke the deadlock by
    failing one of them (the API answered 503 `database_busy`). Now both finish."""
    if connection.vendor != "postgresql":
        pytest.skip("row locks: PostgreSQL only (SQLite serialises writers)")
    run = started(operator, tmp_path)
    claims.claim_batch(run.pk, "worker-1", limit=2)
    stage_a = RunStage.objects.get(run=run, stage_id="a")
    holding, done = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def claim_in_flight() -> None:
        try:
            with transaction.atomic():
                # What _claim has written before its run stamp: the stage's counters.
                claims.count_moves(stage_a.pk, {"pending": -1, "running": 1})
                holding.set()
                wait_for(lambda: lock_waiters() > 0, "the abort to wait", timeout=30)
                outcome["stamped"] = Run.objects.filter(pk=run.pk, state=RunState.RUNNING).update(
                    last_claim_at=timezone.now()
                )
                raise _TakeBack  # a refused claim rolls back
        except _TakeBack:
            pass
        except Exception as exc:
            outcome["claim_error"] = exc
        finally:
            connections.close_all()
            done.set()

    thread = threading.Thread(target=claim_in_flight)
    thread.start()
    assert holding.wait(30)
    aborted = services.run_abort(run=run, actor=operator)
    assert done.wait(60)
    thread.join(10)

    assert "claim_error" not in outcome, outcome
    # The abort locks partitions, then stage rows, then the run, as claims do: it waited for
    # the claim's stage row, and the claim stamped the run it had not locked yet (the claim
    # is ordered before the abort). Before, each waited for the other.
    assert outcome["stamped"] == 1
    assert aborted.state == RunState.ABORTED
    assert not Partition.objects.filter(run=run, state=PartitionState.RUNNING).exists()
    a = RunStage.objects.get(pk=stage_a.pk)
    assert (a.pending, a.running, a.cancelled) == (0, 0, ITEMS)


class _TakeBack(Exception):
    pass


def test_a_claim_that_read_a_stage_before_it_stopped_is_taken_back(
    test_kinds, operator, tmp_path, monkeypatch
) -> None:
    """A claim reads which stages are claimable, then moves their counters: a stage stopped
    in between (over its failure budget, its pending partitions being cancelled) refuses the
    claim at its counters (a compare-and-swap on `stopped_at`), as the run refuses a claim
    after a pause or an abort."""
    run = started(operator, tmp_path)
    a = RunStage.objects.get(run=run, stage_id="a")
    # The claim's read, taken before the stop committed: the stage is still claimable.
    monkeypatch.setattr(
        claims,
        "claimable",
        lambda run_id: Partition.objects.filter(run_id=run_id, ready=True, state="pending"),
    )
    RunStage.objects.filter(pk=a.pk).update(stopped_at=timezone.now())

    assert claims.claim_batch(run.pk, "worker-1", limit=5) == []

    a.refresh_from_db()
    assert (a.pending, a.running) == (ITEMS, 0)
    assert not Partition.objects.filter(run=run, state=PartitionState.RUNNING).exists()
    assert not ClaimLog.objects.filter(partition__run=run).exists()

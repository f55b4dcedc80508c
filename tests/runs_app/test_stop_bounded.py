"""Stopping a large stage (the abort's fault, on the failure path): a stage over its failure
budget, and a stage whose dependency failed, have their pending partitions cancelled in
bounded transactions; nothing of a stopped stage is claimed meanwhile; the counters end
exact; and a stop whose worker task was lost is finished by the reconciler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runs_app import services, tasks
from runs_app.engine import claims, progress
from runs_app.models import Partition, PartitionState, Run, RunStage, RunState, StageState
from tests.helpers import cancelled_rows_per_statement, partitioned
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, effect_files, stage

pytestmark = pytest.mark.django_db(transaction=True)

BATCH = 100


@pytest.fixture(autouse=True)
def small_batches(monkeypatch, settings) -> None:
    monkeypatch.setattr(progress, "CANCEL_BATCH", BATCH)
    settings.HXO_RETRY_BACKOFF_MS = 0


def drain_until_stopped(run: Run, stage_id: str) -> RunStage:
    """Drain in this thread until stage `stage_id` is stopped (the run does not finish: the
    rest of the stop is a worker's task, which no cluster runs here)."""
    for _ in range(20):
        tasks.drain(run.pk, budget_s=5)
        stopped = RunStage.objects.get(run=run, stage_id=stage_id)
        if stopped.stopped_at is not None:
            return stopped
    raise AssertionError(f"stage {stage_id} was not stopped")


def started(operator: Any, tmp_path: Path, *stages: dict[str, Any]) -> Run:
    plan = services.plan_create(actor=operator, document={"name": "big", "stages": list(stages)})
    return partitioned(services.run_apply(plan=plan, actor=operator))


def test_a_stage_whose_dependency_failed_is_cancelled_in_bounded_transactions(
    test_kinds, operator, tmp_path
) -> None:
    a = stage("a", tmp_path, items=1, kind=TEST_KIND_NOAPPROVAL, fail={"0": 99})
    b = stage("b", tmp_path, items=1000, kind=TEST_KIND_NOAPPROVAL, depends_on=["a"])
    run = started(operator, tmp_path, a, b)
    with cancelled_rows_per_statement() as seen:
        sb = drain_until_stopped(run, "b")
        # The failure's transaction cancelled one batch and stopped the stage; the run waits
        # for the worker that cancels the rest (its task is on the queue; none runs here).
        run.refresh_from_db()
        assert run.state == RunState.RUNNING
        assert sb.state == StageState.PENDING and sb.cancelled == BATCH
        assert tasks.finish_stop(sb.pk) == {"stage": sb.pk, "done": True}
    assert seen and max(seen) <= BATCH and sum(seen) == 1000
    assert 0 not in seen and len(seen) <= 1000 // BATCH + 1  # one UPDATE per batch
    run.refresh_from_db()
    sa, sb = RunStage.objects.filter(run=run).order_by("position")
    assert run.state == RunState.FAILED
    assert (sa.state, sa.failed) == (StageState.FAILED, 1)
    assert (sb.state, sb.pending, sb.running, sb.cancelled) == (StageState.CANCELLED, 0, 0, 1000)
    assert Partition.objects.filter(run=run, state=PartitionState.CANCELLED).count() == 1000
    assert effect_files(tmp_path, "b") == []


def test_a_stage_over_its_budget_stops_claiming_and_ends_with_exact_counts(
    test_kinds, operator, tmp_path
) -> None:
    items = 1000
    a = stage("a", tmp_path, items=items, kind=TEST_KIND_NOAPPROVAL, fail={"0": 99})
    run = started(operator, tmp_path, a)
    # Run item 0 alone until its attempts are spent: the stage goes over its budget (0).
    sa = RunStage.objects.get(run=run)
    zero = Partition.objects.get(stage=sa, index=0)
    Partition.objects.filter(stage=sa).exclude(pk=zero.pk).update(ready=False)
    with cancelled_rows_per_statement() as seen:
        sa = drain_until_stopped(run, "a")
        assert sa.stopped_at is not None and sa.failed == 1 and sa.cancelled == BATCH
        # Stopped: nothing of it is claimable, whatever is ready.
        Partition.objects.filter(stage=sa).update(ready=True)
        assert claims.claim_batch(run.pk, "worker-x", limit=50) == []
        assert claims.has_claimable(run.pk) is False
        assert tasks.finish_stop(sa.pk)["done"] is True
    assert max(seen) <= BATCH and sum(seen) == items - 1
    assert 0 not in seen and len(seen) <= items // BATCH + 1  # one UPDATE per batch
    run.refresh_from_db()
    sa.refresh_from_db()
    assert run.state == RunState.FAILED
    assert (sa.state, sa.pending, sa.running, sa.failed, sa.cancelled) == (
        StageState.FAILED,
        0,
        0,
        1,
        items - 1,
    )
    assert effect_files(tmp_path, "a") == []  # nothing ran after the stop


def test_the_reconciler_finishes_a_stop_whose_task_was_lost(test_kinds, operator, tmp_path):
    a = stage("a", tmp_path, items=1, kind=TEST_KIND_NOAPPROVAL, fail={"0": 99})
    b = stage("b", tmp_path, items=450, kind=TEST_KIND_NOAPPROVAL, depends_on=["a"])
    c = stage("c", tmp_path, items=2, kind=TEST_KIND_NOAPPROVAL, depends_on=["b"])
    run = started(operator, tmp_path, a, b, c)
    drain_until_stopped(run, "b")
    run.refresh_from_db()
    assert run.state == RunState.RUNNING  # b is stopped; its task sits on the queue
    assert progress.stopped_unfinished() == [RunStage.objects.get(run=run, stage_id="b").pk]

    report = tasks.reconcile()

    assert report["stops_finished"] == [RunStage.objects.get(run=run, stage_id="b").pk]
    run.refresh_from_db()
    states = dict(RunStage.objects.filter(run=run).values_list("stage_id", "state"))
    assert run.state == RunState.FAILED
    assert states == {"a": "failed", "b": "cancelled", "c": "cancelled"}
    assert not Partition.objects.filter(run=run, state=PartitionState.PENDING).exists()
    assert progress.stopped_unfinished() == []
    assert tasks.reconcile()["stops_finished"] == []

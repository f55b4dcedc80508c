"""The engine on a real django-q2 cluster (ORM broker, forked workers): delivery, killed
workers, lost wake-ups. Effects are counted, not just states."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from runs_app import services, tasks
from runs_app.engine import wakeups
from runs_app.models import ClaimLog, Partition, Run, RunState
from tests.helpers import partitioned
from tests.runs_app.cluster import running_cluster, wait_for
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, effect_files, effects, stage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]


def finished(run: Run) -> Run | None:
    run.refresh_from_db()
    return run if run.is_finished else None


def test_plan_runs_from_dry_run_to_receipt_on_a_cluster(
    test_kinds, tmp_path: Path, operator, approver, settings
) -> None:
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "three stages",
            "stages": [
                stage("a", tmp_path, items=6),
                stage("b", tmp_path, items=4, depends_on=["a"]),
                stage("c", tmp_path, items=2, depends_on=["b"]),
            ],
        },
    )
    with running_cluster(WORKERS=2):
        dry = services.run_start_dry_run(plan=plan, actor=operator)
        wait_for(lambda: finished(dry), "the dry-run")
        assert dry.state == RunState.AWAITING_APPROVAL
        services.run_approve(run=dry, actor=approver)
        run = services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk)
        wait_for(lambda: finished(run), "the apply")
    assert run.state == RunState.SUCCEEDED
    assert sorted(effects(tmp_path, "a")) == list(range(6))
    assert sorted(effects(tmp_path, "b")) == list(range(4))
    assert sorted(effects(tmp_path, "c")) == [0, 1]
    # No partition was claimed twice: one claim per partition, fence 1.
    claims = ClaimLog.objects.filter(partition__run=run)
    assert claims.count() == 12
    assert set(claims.values_list("fence", flat=True)) == {1}


def test_a_worker_killed_mid_partition_leaves_every_effect_exactly_once(
    test_kinds, tmp_path: Path, operator, settings
) -> None:
    settings.HXO_LEASE_MS = 1500
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "kill",
            "stages": [stage("a", tmp_path, items=5, kind=TEST_KIND_NOAPPROVAL, block=[2])],
        },
    )
    with running_cluster(WORKERS=2):
        run = services.run_apply(plan=plan, actor=operator)
        holding = tmp_path / "holding-2"
        wait_for(holding.exists, "the partition to be held")
        victim = Partition.objects.get(run=run, index=2)
        pid = int(victim.lease_owner.split(":")[1])
        assert pid != os.getpid()
        os.kill(pid, signal.SIGKILL)
        (tmp_path / "release-2").write_text("go")
        # The dead worker's lease runs out; the reconciler takes the partition back and wakes
        # the run; a live worker runs it again.
        wait_for(
            lambda: (
                tasks.reconcile().get("leases_expired")
                or Partition.objects.get(pk=victim.pk).attempts > 1
            ),
            "the lease to expire",
        )
        wait_for(lambda: finished(run), "the run after the kill")
    assert run.state == RunState.SUCCEEDED
    # Every partition's effect exists exactly once; the killed one ran again on a live worker.
    assert effect_files(tmp_path, "a") == [0, 1, 2, 3, 4]
    assert set(effects(tmp_path, "a")) == {0, 1, 2, 3, 4}
    assert not list(tmp_path.glob("effect-*.tmp-*"))
    victim.refresh_from_db()
    assert victim.attempts == 2
    fences = list(ClaimLog.objects.filter(partition=victim).values_list("fence", flat=True))
    assert len(fences) == len(set(fences)) == 2


def test_a_lost_wake_up_is_repaired_by_the_reconciler(
    test_kinds, tmp_path: Path, operator, monkeypatch
) -> None:
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "lost",
            "stages": [stage("a", tmp_path, items=4, kind=TEST_KIND_NOAPPROVAL)],
        },
    )
    with running_cluster(WORKERS=2):
        with monkeypatch.context() as m:
            # Partitioned here, and the wake-up of its drainers lost.
            m.setattr(wakeups, "enqueue_partitioner", lambda run_id: None)
            m.setattr(wakeups, "enqueue_drainers", lambda run_id, count=1: None)
            run = partitioned(services.run_apply(plan=plan, actor=operator))
        assert Partition.objects.filter(run=run, state="pending").count() == 4
        report = tasks.reconcile()
        assert run.pk in report["runs_woken"]
        wait_for(lambda: finished(run), "the run after the reconciler")
    assert run.state == RunState.SUCCEEDED
    assert sorted(effects(tmp_path, "a")) == [0, 1, 2, 3]


def test_a_lost_partitioning_wake_up_is_repaired_by_the_reconciler(
    test_kinds, tmp_path: Path, operator, monkeypatch
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    plan = services.plan_create(
        actor=operator,
        document={
            "name": "lost partitioning",
            "stages": [stage("a", tmp_path, items=4, kind=TEST_KIND_NOAPPROVAL)],
        },
    )
    with running_cluster(WORKERS=2):
        with monkeypatch.context() as m:
            m.setattr(wakeups, "enqueue_partitioner", lambda run_id: None)
            run = services.run_apply(plan=plan, actor=operator)
        assert not Partition.objects.filter(run=run).exists()
        assert tasks.reconcile()["runs_repartitioned"] == []  # too young to be lost
        Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(minutes=1))
        report = tasks.reconcile()
        assert report["runs_repartitioned"] == [run.pk]
        wait_for(lambda: finished(run), "the run after the reconciler")
    assert run.state == RunState.SUCCEEDED
    assert sorted(effects(tmp_path, "a")) == [0, 1, 2, 3]


def test_abort_cancels_pending_work_and_stops_the_running_partition(
    test_kinds, tmp_path: Path, operator, settings
) -> None:
    settings.HXO_LEASE_MS = 1500
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "abort",
            "stages": [stage("a", tmp_path, items=6, kind=TEST_KIND_NOAPPROVAL, block=[0])],
        },
    )
    with running_cluster(WORKERS=1):
        run = services.run_apply(plan=plan, actor=operator)
        wait_for((tmp_path / "holding-0").exists, "the partition to be held")
        services.run_abort(run=run, actor=operator)
        # The held partition sees the abort at its next heartbeat and writes nothing.
        wait_for(
            lambda: not Partition.objects.filter(run=run, state="running").exists(),
            "the running partition to stop",
        )
        run.refresh_from_db()
    assert run.state == RunState.ABORTED
    assert effects(tmp_path, "a") == []
    assert set(Partition.objects.filter(run=run).values_list("state", flat=True)) == {"cancelled"}
    stage_row = run.run_stages.get()
    assert stage_row.cancelled == 6 and stage_row.pending == 0 and stage_row.running == 0

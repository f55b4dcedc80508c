"""Pause, resume and live throttle on a real django-q2 cluster (forked workers): claims
counted in ClaimLog, effects counted in the files the test kind writes."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from django.utils import timezone

from runs_app import services
from runs_app.models import ClaimLog, Partition, Run, RunState
from tests.runs_app.cluster import running_cluster, wait_for
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, effect_files, effects, stage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]


def finished(run: Run) -> Run | None:
    run.refresh_from_db()
    return run if run.is_finished else None


def claimed(run: Run) -> int:
    return ClaimLog.objects.filter(partition__run=run).count()


def test_pause_mid_run_claims_nothing_running_partitions_finish_and_resume_completes(
    test_kinds, tmp_path: Path, operator
) -> None:
    items = 12
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "pause",
            "stages": [stage("a", tmp_path, items=items, kind=TEST_KIND_NOAPPROVAL, block=[0, 1])],
        },
    )
    with running_cluster(WORKERS=2):
        run = services.run_apply(plan=plan, actor=operator)
        # Items 0 and 1 hold both workers until released: pause while they run.
        for item in (0, 1):
            wait_for((tmp_path / f"holding-{item}").exists, f"partition {item} to be running")
        run = services.run_pause(run=run, actor=operator)
        at_pause = claimed(run)
        for item in (0, 1):
            (tmp_path / f"release-{item}").write_text("go")
        # Running partitions finish while paused...
        wait_for(
            lambda: not Partition.objects.filter(run=run, state="running").exists(),
            "the running partitions to finish",
        )
        # ...and nothing new is claimed across a window in which idle workers would have
        # claimed every partition left (drainers woken now find the run paused).
        from runs_app.engine import wakeups

        wakeups.enqueue_drainers(run.pk, 2)
        wait_for(
            lambda: (
                not Partition.objects.filter(run=run, state="running").exists()
                and _drainers_done(run)
            ),
            "the woken drainers to leave",
        )
        assert claimed(run) == at_pause
        assert not ClaimLog.objects.filter(partition__run=run, claimed_at__gte=run.paused_at)
        run.refresh_from_db()
        assert run.state == RunState.RUNNING and run.is_paused
        pending = Partition.objects.filter(run=run, state="pending").count()
        assert pending > 0, "the pause came too late to show anything"
        # The held partitions finished while paused.
        assert sorted(effects(tmp_path, "a")) == [0, 1]

        services.run_resume(run=run, actor=operator)
        wait_for(lambda: finished(run), "the run after resume")
    assert run.state == RunState.SUCCEEDED and not run.is_paused
    # Every effect exactly once; one claim per partition.
    assert effect_files(tmp_path, "a") == list(range(items))
    assert sorted(effects(tmp_path, "a")) == list(range(items))
    assert claimed(run) == items
    assert set(ClaimLog.objects.filter(partition__run=run).values_list("fence", flat=True)) == {1}
    [pause] = run.pauses
    assert pause["to"] is not None


def _drainers_done(run: Run) -> bool:
    """No django-q2 task for the run is queued or unfinished (the ORM broker's table)."""
    from django_q.models import OrmQ

    return not OrmQ.objects.exists()


def test_throttle_to_one_drainer_and_an_interval_spaces_claims_on_a_running_run(
    test_kinds, tmp_path: Path, operator, settings
) -> None:
    settings.HXO_MAX_CONCURRENCY = 4
    items = 8
    interval_ms = 150
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "throttle",
            "stages": [stage("a", tmp_path, items=items, kind=TEST_KIND_NOAPPROVAL, block=[0, 1])],
        },
    )
    with running_cluster(WORKERS=2):
        run = services.run_apply(plan=plan, actor=operator)
        for item in (0, 1):
            wait_for((tmp_path / f"holding-{item}").exists, f"partition {item} to be running")
        # Live: the run is running with two partitions held; nothing restarts.
        services.run_throttle(run=run, actor=operator, concurrency=1, min_interval_ms=interval_ms)
        since = timezone.now()
        assert claimed(run) == 2
        for item in (0, 1):
            (tmp_path / f"release-{item}").write_text("go")
        wait_for(lambda: finished(run), "the throttled run")
    assert run.state == RunState.SUCCEEDED
    assert effect_files(tmp_path, "a") == list(range(items))
    assert sorted(effects(tmp_path, "a")) == list(range(items))
    assert claimed(run) == items
    later = ClaimLog.objects.filter(partition__run=run, claimed_at__gt=since)
    stamps = list(later.order_by("claimed_at").values_list("claimed_at", flat=True))
    assert len(stamps) == items - 2
    # Spaced by the interval, read from the ClaimLog's own timestamps.
    gaps = [(b - a).total_seconds() * 1000 for a, b in itertools.pairwise(stamps)]
    assert min(gaps) >= interval_ms, gaps
    # One drainer at a time: each partition claimed since started after the previous ended.
    spans = list(
        Partition.objects.filter(claims__in=later)
        .order_by("started_at")
        .values_list("started_at", "finished_at")
    )
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, spans

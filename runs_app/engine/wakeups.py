"""Wake-ups: asking workers to drain a run. A message on the queue is only a hint (docs/
architecture.md, "The queue only wakes workers"): a lost one is re-sent by the reconciler,
a duplicate finds nothing to claim.

This module sits below both the engine and `runs_app.tasks`: the engine wakes workers through
it and `runs_app.tasks` imports the engine, never the other way round. The task is named by
its dotted path, so nothing here imports `runs_app.tasks`.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from runs_app.models import PartitionState, Run, RunState

log = logging.getLogger(__name__)

# The drain task's dotted path for django-q2 (the function lives in runs_app.tasks).
DRAIN_TASK = "runs_app.tasks.drain"
# The task that resolves a run's manifest and writes its partitions (runs_app.tasks).
PARTITION_TASK = "runs_app.tasks.partition"
ABORT_TASK = "runs_app.tasks.finish_abort"
STOP_TASK = "runs_app.tasks.finish_stop"


def _broker() -> Any:
    """The broker wake-ups enqueue through: with the ORM broker, `CallerOwnsConnection`;
    otherwise None (django-q2's `get_broker`, e.g. Redis)."""
    from django_q.conf import Conf

    if Conf.ORM and not Conf.BROKER_CLASS:
        return _caller_owns_connection()(list_key=Conf.CLUSTER_NAME)
    return None


@functools.cache  # one class; made on first use (django_q.models needs the app registry)
def _caller_owns_connection() -> type:
    """django-q2's ORM broker without the `close_old_connections()` it runs before each query
    outside a transaction. That call suits the cluster's long-lived broker thread; a wake-up
    is enqueued from a request or a worker task, whose connection Django (request start and
    end) or the task (`runs_app.tasks`) already manages. With SQLite's connections not kept
    (CONN_MAX_AGE 0) it closed and reopened the connection twice in every POST that starts
    a run, after its commit: bench/serving.py measured POST apply p50 20.7 -> 10.4 ms without
    those reconnects (load average 5.6 on 2 cores)."""
    from django_q.brokers.orm import ORM
    from django_q.conf import Conf
    from django_q.models import OrmQ

    class CallerOwnsConnection(ORM):
        @staticmethod
        def get_connection(list_key: str | None = None) -> Any:
            return OrmQ.objects.using(Conf.ORM)

    return CallerOwnsConnection


def enqueue_drainers(run_id: int, count: int = 1) -> None:
    """Put `count` (at least one) drain tasks for the run on the queue. Never raises: with the
    broker down the reconciler re-sends the wake-up later."""
    from django_q.tasks import async_task

    try:
        broker = _broker()
        for _ in range(max(count, 1)):
            async_task(DRAIN_TASK, run_id, group=f"run-{run_id}", broker=broker)
    except Exception:
        # The broker is down (Redis restarting...). A wake-up is only a hint: the run is in
        # our tables and the reconciler re-sends it, so the request or the drainer that asked
        # must not fail for it (an API client would see a 500 for a run that was created).
        log.warning(
            "could not enqueue a drainer for run %s; the reconciler will", run_id, exc_info=True
        )


def enqueue_partitioner(run_id: int) -> None:
    """Put one partition task for the run on the queue. Never raises: with the broker down
    the reconciler re-sends it (`runs_app.engine.partitioning.stuck_partitioning`)."""
    from django_q.tasks import async_task

    try:
        async_task(PARTITION_TASK, run_id, group=f"run-{run_id}", broker=_broker())
    except Exception:
        log.warning(
            "could not enqueue the partitioner of run %s; the reconciler will",
            run_id,
            exc_info=True,
        )


def enqueue_abort(run_id: int) -> None:
    """Put a task that finishes cancelling an aborted run on the queue. Never raises: with
    the broker down the reconciler finishes it (`progress.aborted_unfinished`)."""
    from django_q.tasks import async_task

    try:
        async_task(ABORT_TASK, run_id, group=f"run-{run_id}", broker=_broker())
    except Exception:
        log.warning(
            "could not enqueue the abort of run %s; the reconciler will", run_id, exc_info=True
        )


def enqueue_stop(stage_pk: int) -> None:
    """After the current transaction commits, put a task that cancels the rest of a stopped
    stage's pending partitions on the queue. Never raises: with the broker down the reconciler
    finishes it (`progress.stopped_unfinished`)."""
    from django_q.tasks import async_task

    def send() -> None:
        try:
            async_task(STOP_TASK, stage_pk, broker=_broker())
        except Exception:
            log.warning(
                "could not enqueue the stop of stage %s; the reconciler will",
                stage_pk,
                exc_info=True,
            )

    transaction.on_commit(send)


def wake_partitioner(run_id: int) -> None:
    """Ask a worker to partition the run, after the transaction that stored it commits."""
    # Looked up at call time, so a test can replace enqueue_partitioner on this module.
    transaction.on_commit(lambda: enqueue_partitioner(run_id))


def wake(run_id: int, ready: int = 1, *, concurrency: int | None = None) -> None:
    """Ask workers to drain the run, after the transaction commits: as many drainers as
    partitions became ready (`ready`), at most the run's `concurrency` (when the caller
    knows it: a resume, a throttle) and HXO_MAX_CONCURRENCY; none when `ready` <= 0."""
    if ready <= 0:
        return
    count = min(settings.HXO_MAX_CONCURRENCY, concurrency or ready, ready)
    # Looked up at call time, so a test can replace enqueue_drainers on this module.
    transaction.on_commit(lambda: enqueue_drainers(run_id, count))


def requeue_stuck() -> list[int]:
    """Ids of running runs with something claimable now: the reconciler wakes them again.
    A paused run is left alone (its resume wakes it)."""
    now = timezone.now()
    return list(
        Run.objects.filter(state=RunState.RUNNING, paused_at__isnull=True)
        .filter(
            Q(
                partitions__state=PartitionState.PENDING,
                partitions__ready=True,
                partitions__due_at__lte=now,
            )
        )
        .values_list("pk", flat=True)
        .order_by()
        .distinct()
    )

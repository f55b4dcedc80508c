"""django-q2 tasks: the entry points the queue calls. They take ids, call the engine, and
never raise: failures are HXO's business and are recorded in our tables (ack_failures=True;
docs/architecture.md, "The queue only wakes workers").

This module imports the engine (`runs_app.engine`); the engine never imports it back: it
wakes workers through `runs_app.engine.wakeups`, which names these tasks by dotted path."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, close_old_connections, transaction
from django.utils import timezone

from runs_app import metrics, services
from runs_app.engine import claims, execute, partitioning, progress, wakeups
from runs_app.engine.heartbeat import Heartbeat
from runs_app.models import Lease, Run, RunState

log = logging.getLogger(__name__)

RECONCILE_TASK = "runs_app.tasks.reconcile"
RECONCILER_SCHEDULE = "hxo-reconciler"

MAX_BATCH = 256
BATCH_TARGET_S = 0.25


def preload() -> None:
    """Import, in the process that forks the cluster's workers, what every worker would
    otherwise import on its first run: the URLconf, which a run's last completion loads to put
    the run's address in its notification (`notifications.run_url` → `reverse`), pulling in
    every view, DRF and drf-spectacular. Measured: 0.16 CPU-s per worker process, paid again
    after each `recycle`, about as much as indexing Font Awesome's 2,134 files
    (bench/profiles/engine.md). Forked workers share the imported modules copy-on-write:
    gunicorn's `preload_app`, for django-q2. Called by `RunsConfig.ready()` in `qcluster`
    and by the clusters the bench and the tests start in their own process."""
    from django.urls import reverse

    reverse("run", args=[1])  # imports the URLconf and builds its reverse map once


def partition(run_id: int) -> dict[str, Any]:
    """Resolve a `partitioning` run's manifest and write its stages and partitions
    (`services.run_partition`): the run ends `running` (its drainers woken after the last
    commit) or `failed` with its error. A duplicate or late delivery finds the run held or
    no longer partitioning and does nothing. Never raises: a crash mid-way leaves the run
    `partitioning`, and the reconciler sends it again (`partitioning.stuck_partitioning`).

    A run left `running` is then drained here too (`drain`, at most HXO_DRAIN_BUDGET_S,
    and only as long as a drain task would leave before the queue's timeout): this worker
    is free and the partitions are claimable now, while a wake-up reaches a worker one
    broker round trip later (the ORM broker polls every 50 ms), on the critical path of
    every run. The wake-ups sent stand for the other workers; a drainer over the run's
    concurrency leaves at once (`drain`). Returns {"run", "state", "partitions"}: the state
    after partitioning, and how many partitions this task then executed."""
    started = time.monotonic()
    state = None
    try:
        run = services.run_partition(run_id=run_id)
        state = run.state if run is not None else None
    except Exception:
        log.exception("partitioning of run %s stopped", run_id)
    finally:
        close_old_connections()
    done = 0
    if state == RunState.RUNNING:
        # With at least the margin a drain task has between its budget and the queue's
        # timeout (HXO_Q_TIMEOUT_S - HXO_DRAIN_BUDGET_S): a partition claimed just before the
        # budget ends must have as long to finish here as in any drainer before django-q's
        # timeout stops the task (its SIGALRM raises inside whatever runs). A partitioning
        # that took longer than the budget leaves the draining to the woken drainers.
        left = settings.HXO_Q_TIMEOUT_S - (time.monotonic() - started)
        margin = settings.HXO_Q_TIMEOUT_S - settings.HXO_DRAIN_BUDGET_S
        budget = min(float(settings.HXO_DRAIN_BUDGET_S), left - margin)
        if budget >= 1:
            done = drain(run_id, budget_s=budget)["partitions"]
    return {"run": run_id, "state": state, "partitions": done}


def finish_abort(run_id: int) -> dict[str, Any]:
    """Cancel what is left of an aborted run, 2,000 partitions per transaction
    (`progress.finish_abort`). Never raises: a crash leaves the rest to the reconciler."""
    done = _finishing(progress.finish_abort, run_id, f"the abort of run {run_id}")
    return {"run": run_id, "done": done}


def finish_stop(stage_pk: int) -> dict[str, Any]:
    """Cancel what is left of a stopped stage, 2,000 partitions per transaction, and end it
    (`progress.finish_stop`). Never raises: a crash leaves the rest to the reconciler."""
    done = _finishing(progress.finish_stop, stage_pk, f"the stop of stage {stage_pk}")
    return {"stage": stage_pk, "done": done}


def _finishing(finish: Any, pk: int, what: str) -> bool:
    """`finish(pk)` as a queue task runs it: its result, or False (logged) when it raised,
    and the worker's connection closed either way (the reconciler picks up the rest)."""
    try:
        return bool(finish(pk))
    except Exception:
        log.exception("finishing %s stopped", what)
        return False
    finally:
        close_old_connections()


def drain(run_id: int, budget_s: float | None = None) -> dict[str, Any]:
    """Claim and execute partitions of one run until none is claimable or the budget is spent.

    Claims come in batches sized so a batch holds about BATCH_TARGET_S of work: quick
    partitions share one claim and one completion transaction, slow ones go one at a time,
    and a batch of uneven partitions stops where their weights say its time is spent
    (`claims.BatchSizer`), so one drainer does not take the big ones while another idles.
    Spreading the queue's and the database's per-task cost over many partitions is what makes
    a partition cheap. Waits briefly for retries that fall due within the budget; re-enqueues
    itself when work remains at the end of the budget.
    """
    budget = settings.HXO_DRAIN_BUDGET_S if budget_s is None else budget_s
    deadline = time.monotonic() + budget
    owner = claims.new_owner()
    done = 0
    sizer = claims.BatchSizer(target_s=BATCH_TARGET_S, max_batch=MAX_BATCH)
    try:
        state = Run.objects.filter(pk=run_id).values_list("state", flat=True).first()
        if state == RunState.PARTITIONING:
            # Woken before its partitions exist (a wake-up of the reconciler's, or a caller
            # that drains right after starting the run): partition it here first. A run
            # another worker is partitioning is left to it (no lease: nothing happens).
            services.run_partition(run_id=run_id, owner=owner)
        execute.expire_leases(run_id=run_id)
        rc = execute.RunContext(run_id)
        buffer = execute.OutcomeBuffer()
        with Heartbeat(owner, run_id) as hb:
            while time.monotonic() < deadline:
                state = Run.objects.filter(pk=run_id).values_list("state", flat=True).first()
                if state != RunState.RUNNING:
                    break
                held = claims.claim_batch(run_id, owner, sizer.count, sizer)
                if not held:
                    if claims.crowded_out(run_id, owner):
                        # As many other drainers hold the run's partitions as it allows:
                        # they claim on to the end (or re-enqueue at their budget), so
                        # waiting here would only poll the database.
                        break
                    due = claims.next_due(run_id)
                    if due is None:
                        break
                    wait = (due - timezone.now()).total_seconds()
                    if wait > deadline - time.monotonic():
                        break
                    time.sleep(min(max(wait, 0.05), 1.0))
                    continue
                hb.hold(held)
                started = time.monotonic()
                execute.execute_claims(rc, held, hb, buffer)
                # Sized by the executors' time only: the completion below may wait for the
                # stage's counter row behind other hosts' claims, and counting that wait
                # shrank batches under contention (159 rows per claim at 1 cluster, 10 at 8:
                # docs/scaling.md), which made more transactions and more contention.
                sizer.observe(held, time.monotonic() - started)
                buffer.flush()  # the drainer writes its outcomes; the heartbeat only renews
                for c in held:
                    hb.release(c.partition_id)
                done += len(held)
            else:
                if claims.has_claimable(run_id):
                    wakeups.enqueue_drainers(run_id, 1)
    except Exception:
        # Never let the queue retry a drainer: the reconciler re-sends wake-ups.
        log.exception("drainer for run %s stopped", run_id)
    finally:
        close_old_connections()
    return {"run": run_id, "partitions": done}


def _take_lease(name: str, owner: str, seconds: float) -> bool:
    now = timezone.now()
    try:
        with transaction.atomic():
            Lease.objects.get_or_create(name=name)
    except IntegrityError:
        pass
    with transaction.atomic():
        from django.db.models import Q

        return bool(
            Lease.objects.filter(name=name)
            .filter(Q(expires_at__isnull=True) | Q(expires_at__lt=now) | Q(owner=owner))
            .update(owner=owner, expires_at=now + timedelta(seconds=seconds))
        )


def _release_lease(name: str, owner: str) -> None:
    Lease.objects.filter(name=name, owner=owner).update(expires_at=None, owner="")


def reconcile() -> dict[str, Any]:
    """Repair what lost or late wake-ups and dead workers leave behind. Two never overlap."""
    owner = claims.new_owner()
    if not _take_lease("reconciler", owner, seconds=120):
        skipped = {"skipped": "another reconciler holds the lease"}
        metrics.record_reconcile(skipped)
        return skipped
    report: dict[str, Any] = {}
    try:
        report["leases_expired"] = execute.expire_leases()
        report["runs_advanced"] = _advance_running_runs()
        woken = wakeups.requeue_stuck()
        for run_id in woken:
            wakeups.enqueue_drainers(run_id, settings.HXO_MAX_CONCURRENCY)
        report["runs_woken"] = woken
        # A run left in `partitioning` by a dead worker (or a lost wake-up): send it again;
        # the next worker discards the partial rows and partitions it from the start.
        stuck = partitioning.stuck_partitioning()
        for run_id in stuck:
            wakeups.enqueue_partitioner(run_id)
        report["runs_repartitioned"] = stuck
        # An abort whose request died between its bounded transactions: finish cancelling.
        aborted = progress.aborted_unfinished()
        for run_id in aborted:
            progress.finish_abort(run_id)
        report["aborts_finished"] = aborted
        # A stage stopped with more pending partitions than one transaction cancels, whose
        # worker died or whose task was lost: finish cancelling and end it.
        stopped = progress.stopped_unfinished()
        for stage_pk in stopped:
            progress.finish_stop(stage_pk)
        report["stops_finished"] = stopped
        # A replay whose copying request died (its copy lease lapsed): discard the pending
        # child so the parent may be replayed again.
        report["replays_discarded"] = services.discard_abandoned_replays()
        report["temp_files_removed"] = _cleanup_temp_files()
        report["queue_rows_pruned"] = _prune_queue()
        metrics.record_reconcile(report)
    finally:
        _release_lease("reconciler", owner)
        close_old_connections()
    return report


def _advance_running_runs() -> int:
    """Finish stages whose counters say they are done (a crash between two transactions)."""
    from runs_app.models import RunStage, StageState

    count = 0
    for stage in RunStage.objects.filter(
        state=StageState.RUNNING, pending=0, running=0, run__state=RunState.RUNNING
    ):
        with transaction.atomic():
            progress.finish_stage(stage)
            progress.advance_run(stage.run_id)
        count += 1
    for run_id in Run.objects.filter(state=RunState.RUNNING).values_list("pk", flat=True):
        with transaction.atomic():
            progress.advance_run(run_id)
    return count


def _cleanup_temp_files() -> int:
    from blueprints_app.registry import EXECUTORS

    removed = 0
    for cls in EXECUTORS.values():
        try:
            removed += cls().cleanup_stale()
        except Exception:
            log.exception("cleanup of %s failed", cls.name)
    return removed


def _prune_queue() -> int:
    """django-q2 keeps failed task rows forever; keep a week of them."""
    from django_q.models import Task

    cutoff = timezone.now() - timedelta(days=7)
    deleted, _ = Task.objects.filter(stopped__lt=cutoff).delete()
    return deleted


def ensure_reconciler_schedule() -> None:
    """Register the reconciler with django-q2's scheduler (idempotent)."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name=RECONCILER_SCHEDULE,
        defaults={
            "func": RECONCILE_TASK,
            "schedule_type": Schedule.MINUTES,
            "minutes": settings.HXO_RECONCILE_EVERY_MIN,
            "repeats": -1,
        },
    )

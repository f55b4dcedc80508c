"""Helpers shared by test modules (fixtures live in the conftest files)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

from django.db import connection

from runs_app import tasks
from runs_app.engine.heartbeat import Heartbeat
from runs_app.models import Run

DRAIN_ROUNDS = 200


def drain(
    run: Run | int,
    *,
    budget_s: float = 30,
    rounds: int = DRAIN_ROUNDS,
    deadline_s: float | None = None,
) -> Run:
    """Run the drainer in this thread until `run` (a Run or its id) is finished (awaiting
    approval counts); a run still `partitioning` is partitioned first, here (the drainer
    does that: `tasks.drain` → `services.run_partition`). Returns it refreshed (a Run
    passed in is refreshed in place). Raises AssertionError when it is still not finished
    after `rounds` drainer calls of at most `budget_s` seconds each, or once `deadline_s`
    seconds have passed (checked before each call).

    Inside a test's transaction (`django_db` without `transaction=True`) the drainer's
    closing of old connections is switched off: it would end that transaction. So are the
    heartbeat thread's lease renewals and its looks at watched partitions: the thread reads
    on a connection of its own, which
    cannot see the test's uncommitted claims, so each renewal found the partitions "gone"
    and marked them lost (`lease lost, result dropped`) whenever one ran longer than a renew
    interval, as on a loaded machine. Outside a transaction both work as in a worker."""
    current = run if isinstance(run, Run) else Run.objects.get(pk=run)
    in_test_transaction = connection.in_atomic_block
    deadline = None if deadline_s is None else time.monotonic() + deadline_s
    with contextlib.ExitStack() as stack:
        if in_test_transaction:
            stack.enter_context(mock.patch.object(tasks, "close_old_connections", lambda: None))
            stack.enter_context(mock.patch.object(Heartbeat, "renew", lambda self: None))
            # The same for the watch on partitions waiting on a target (`watch` reads them
            # through `_note_gone`).
            stack.enter_context(mock.patch.object(Heartbeat, "_note_gone", lambda self, ids: None))
        for _ in range(rounds):
            if deadline is not None and time.monotonic() >= deadline:
                break
            tasks.drain(current.pk, budget_s=budget_s)
            current.refresh_from_db()
            if current.is_finished:
                return current
    raise AssertionError(f"run {current.pk} did not finish: {current.state}")


def partitioned(run: Run | int) -> Run:
    """Partition a run that is still `partitioning` here, in this thread (what the worker's
    `tasks.partition` does), and return it refreshed: `running` with its partitions written
    and its first wave claimable, or `failed` with its error. For tests that claim or read
    partitions themselves instead of draining."""
    from runs_app import services

    pk = run.pk if isinstance(run, Run) else run
    services.run_partition(run_id=pk)
    return Run.objects.get(pk=pk)


@contextlib.contextmanager
def cancelled_rows_per_statement() -> Iterator[list[int]]:
    """While the block runs, the rows each UPDATE that cancels partitions changed (a list the
    block can read after it): what bounded cancelling (an abort, a stopped stage) is judged
    by."""
    from runs_app.models import PartitionState

    seen: list[int] = []

    def record(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        result = execute(sql, params, many, context)
        if sql.lstrip().upper().startswith('UPDATE "RUNS_APP_PARTITION"') and any(
            p == PartitionState.CANCELLED for p in params or ()
        ):
            seen.append(context["cursor"].rowcount)
        return result

    with connection.execute_wrapper(record):
        yield seen


def lock_waiters() -> int:
    """PostgreSQL sessions of this database waiting for a lock now (`pg_stat_activity`): what
    a test of lock order waits for before it closes a would-be cycle."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int(cur.fetchone()[0])


def running_run(operator: Any, stage: dict[str, Any], name: str = "run") -> Run:
    """A one-stage plan of `stage` (a stage document), applied by `operator` and partitioned
    here (`partitioned`): `running`, its first partitions claimable."""
    from runs_app import services

    plan = services.plan_create(actor=operator, document={"name": name, "stages": [stage]})
    run = partitioned(services.run_apply(plan=plan, actor=operator))
    assert run.state == "running", run.state
    return run

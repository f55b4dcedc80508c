"""Helpers shared by test modules (fixtures live in the conftest files)."""

from __future__ import annotations

import contextlib
import time
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

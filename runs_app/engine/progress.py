"""Progress: waves within a stage, starting and finishing stages, advancing and finishing runs.

Called inside the transaction that moved a partition to a final state (or by the services
and the reconciler), so a stage's counters, its state and the next wave's release move
together.
"""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from hxo_site.audit import audit
from runs_app import hashing, notifications
from runs_app.engine import wakeups
from runs_app.engine.claims import COUNTER, count_moves
from runs_app.engine.deadlocks import locked_pks, retrying
from runs_app.engine.receipts import stage_merkle_root
from runs_app.models import (
    Partition,
    PartitionState,
    Run,
    RunMode,
    RunStage,
    RunState,
    StageState,
)
from runs_app.models.engine import PARTITION_ACTIVE, STAGE_TERMINAL, STAGE_UNSUCCESSFUL
from runs_app.transitions import move_run, move_stage

P = PartitionState


def after_partition_change(stage_pk: int) -> None:
    """Called inside the transaction that moved a partition of the stage to a final state."""
    # Never the manifest here: it pins every file of the stage (700 KB of JSON for Django's
    # sdist), and decoding it after each partition was a tenth of a deploy.pack run.
    stage = RunStage.objects.defer("manifest").get(pk=stage_pk)
    if stage.state != StageState.RUNNING:
        return
    if stage.failed > stage.max_failed_partitions and stage.pending:
        stop_pending(stage.pk)
        stage.refresh_from_db()
    if stage.pending == 0 and stage.running == 0:
        finish_stage(stage)
        advance_run(stage.run_id)
    elif stage.current_wave < stage.max_wave:
        _maybe_next_wave(stage)


def _maybe_next_wave(stage: RunStage) -> None:
    unfinished = (
        Partition.objects.filter(stage_id=stage.pk, wave__lte=stage.current_wave)
        .filter(state__in=PARTITION_ACTIVE)
        .exists()
    )
    if unfinished:
        return
    nxt = (
        Partition.objects.filter(stage_id=stage.pk, wave__gt=stage.current_wave)
        .order_by("wave")
        .values_list("wave", flat=True)
        .first()
    )
    if nxt is None:
        return
    RunStage.objects.filter(pk=stage.pk, current_wave=stage.current_wave).update(current_wave=nxt)
    released = Partition.objects.filter(stage_id=stage.pk, wave=nxt, ready=False).update(ready=True)
    if released:
        wakeups.wake(stage.run_id, released)


def stop_pending(stage_pk: int) -> tuple[int, int]:
    """A stage went over its failure budget: end its pending partitions by what happened to
    each. One that was attempted and errored, waiting for its retry, **failed** (its error
    stands, its retry is given up); one never attempted is **cancelled**. So a stage whose
    five batches all met the same error says "5 failed", not "1 failed · 4 cancelled" (issue
    15 §2). Returns (failed, cancelled now); counters move in the caller's transaction.

    At most CANCEL_BATCH are cancelled in the caller's transaction (`_stop_bounded`): more
    would hold SQLite's write lock for seconds, as a 100,000-partition abort did. The rest
    are left to a worker, the stage marked stopped so nothing of it is claimed meanwhile."""
    # The caller holds the stage's row (its counters moved): partitions another transaction
    # holds (a claim in flight) are skipped, never waited for (engine.deadlocks); a skipped
    # one is left to `_stop_bounded`'s worker.
    waiting = locked_pks(
        Partition.objects.filter(
            stage_id=stage_pk, state=P.PENDING, attempts__gt=0, error__isnull=False
        ),
        skip_locked=True,
    )
    failed = (
        Partition.objects.filter(pk__in=waiting, state=P.PENDING).update(
            state=P.FAILED, fence=F("fence") + 1, lease_owner="", lease_expires_at=None
        )
        if waiting
        else 0
    )
    if failed:
        count_moves(stage_pk, {"pending": -failed, "failed": failed})
    return failed, _stop_bounded(stage_pk)


def _stop_bounded(stage_pk: int) -> int:
    """Cancel the stage's pending partitions if they fit one batch (CANCEL_BATCH); else mark
    the stage stopped (`RunStage.stopped_at`: `claims.claim_batch` skips it from this
    transaction on), cancel one batch, and have a worker cancel the rest after the commit
    (`finish_stop`). Returns how many were cancelled here.

    Called holding the stage's row, so partitions another transaction holds are skipped
    (`deadlocks.locked_pks(skip_locked=True)`), never waited for: waiting there deadlocked
    with a claim in flight, which holds its partitions and then wants the stage row.
    A skipped one also stops the stage: the worker cancels it once the claim has let go."""
    pending = Partition.objects.filter(stage_id=stage_pk, state=P.PENDING)
    ids = locked_pks(pending, skip_locked=True, limit=CANCEL_BATCH + 1)
    skipped = len(ids) <= CANCEL_BATCH and pending.exclude(pk__in=ids).exists()
    if len(ids) > CANCEL_BATCH or skipped:
        if RunStage.objects.filter(pk=stage_pk, stopped_at__isnull=True).update(
            stopped_at=timezone.now()
        ):
            wakeups.enqueue_stop(stage_pk)
        ids = ids[:CANCEL_BATCH]
    return cancel_partitions(Partition.objects.filter(pk__in=ids)) if ids else 0


def finish_stop(stage_pk: int, *, batch: int | None = None) -> bool:
    """Cancel what is left of a stopped stage (`_stop_bounded`), `batch` (CANCEL_BATCH)
    pending partitions per transaction, then end it as its transaction would have: a running
    stage over its budget ends `failed` once nothing of it runs (a partition still running
    ends it when it finishes, `after_partition_change`); a stage that never started (its
    dependency failed) ends `cancelled`; then the run advances. Idempotent, and called again
    by the reconciler after a crash (`stopped_unfinished`). Returns whether the stage ended."""
    batch = batch or CANCEL_BATCH
    pending = Partition.objects.filter(stage_id=stage_pk, state=P.PENDING)
    while _cancel_batch(pending, batch, what=f"stopping stage {stage_pk}") == batch:
        pass
    return retrying(lambda: _end_stopped(stage_pk), what=f"ending stopped stage {stage_pk}")


def _end_stopped(stage_pk: int) -> bool:
    with transaction.atomic():
        stage = RunStage.objects.select_for_update().defer("manifest").get(pk=stage_pk)
        if stage.state == StageState.PENDING:
            _cancel_stage(stage)
        elif stage.state == StageState.RUNNING and stage.pending == 0 and stage.running == 0:
            finish_stage(stage)
        else:
            return stage.state in STAGE_TERMINAL
        advance_run(stage.run_id)
        return True


def _cancel_batch(qs: Any, batch: int, *, what: str) -> int:
    """One transaction cancelling the first `batch` partitions of `qs` by key (retried on a
    deadlock, engine.deadlocks); returns how many keys it found (a full batch: call again)."""

    def body() -> int:
        with transaction.atomic():
            ids = list(qs.order_by("pk").values_list("pk", flat=True)[:batch])
            if ids:
                cancel_partitions(Partition.objects.filter(pk__in=ids))
            return len(ids)

    return retrying(body, what=what)


def stopped_unfinished() -> list[int]:
    """Stopped stages (`RunStage.stopped_at`) not ended yet whose pending partitions a worker
    has not cancelled (its task was lost, or it died): the reconciler finishes them."""
    return list(
        RunStage.objects.filter(stopped_at__isnull=False, state__in=_STOPPABLE, pending__gt=0)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def _cancel_stage(stage: RunStage) -> None:
    """End a stage that never started (a dependency of it failed) as `cancelled`, with its
    Merkle root (its partitions were cancelled: none has a leaf)."""
    move_stage(stage, StageState.CANCELLED)
    RunStage.objects.filter(pk=stage.pk).update(merkle_root=stage_merkle_root(stage))


def cancel_partitions(qs: Any, *, skip_locked: bool = False) -> int:
    """Cancel the pending (and fence out the running) partitions of `qs`, keeping counters
    exact; returns how many. Every row is locked first, in key order, then updated, then the
    stage counters move in stage order: the engine's lock order (engine.deadlocks), so this
    never waits on a stage row while holding some partitions another transaction wants.
    `skip_locked`: see `deadlocks.locked_pks`."""
    qs = qs.filter(state__in=PARTITION_ACTIVE)
    if connection.features.has_select_for_update:
        qs = qs.select_for_update(skip_locked=skip_locked, of=("self",))
    groups: dict[tuple[str, int], list[int]] = {}
    for pk, state, stage_pk in qs.order_by("pk").values_list("pk", "state", "stage_id"):
        groups.setdefault((state, stage_pk), []).append(pk)
    moves: dict[int, dict[str, int]] = {}
    now = timezone.now()
    for (state, stage_pk), pks in groups.items():
        n = Partition.objects.filter(pk__in=pks, state=state).update(
            state=P.CANCELLED,
            fence=F("fence") + 1,
            lease_owner="",
            lease_expires_at=None,
            finished_at=now,
        )
        stage_moves = moves.setdefault(stage_pk, {"cancelled": 0})
        stage_moves[COUNTER[state]] = stage_moves.get(COUNTER[state], 0) - n
        stage_moves["cancelled"] += n
    for stage_pk in sorted(moves):
        count_moves(stage_pk, moves[stage_pk])
    return sum(m["cancelled"] for m in moves.values())


# Rows one transaction of an abort, or of stopping a stage, cancels: a 100,000-partition
# abort in one UPDATE held SQLite's write lock for 30-37 s and concurrent plan saves got
# "database is locked".
CANCEL_BATCH = 2000
# Stage states a stop applies to: a running stage over its budget, or one never started.
_STOPPABLE = (StageState.PENDING, StageState.RUNNING)


def finish_abort(run_id: int, *, batch: int | None = None, max_batches: int | None = None) -> bool:
    """Cancel the active partitions of an aborted run in transactions of at most `batch`
    rows, then cancel its unfinished stages.

    The run is already `aborted` (services.run_abort moved it, then fenced out its running
    partitions), so no claim takes a pending partition in between (claims.claim_batch claims
    only for running runs, and re-checks the state last). Called again after a crash by
    the reconciler (`aborted_unfinished`): it picks up where it stopped. Counters move in the
    same transaction as their partitions, as everywhere. `batch` defaults to CANCEL_BATCH.

    With `max_batches`, stops after that many transactions; returns whether the abort is
    complete (every partition and stage ended)."""
    batch = batch or CANCEL_BATCH
    active = Partition.objects.filter(run_id=run_id, state__in=PARTITION_ACTIVE)
    done = 0
    while True:
        found = _cancel_batch(active, batch, what=f"aborting run {run_id}")
        done += 1
        if found < batch:
            break  # that was the last of them: end the stages now, in this call
        if max_batches is not None and done >= max_batches:
            return False
    retrying(lambda: _cancel_stages(run_id), what=f"ending the stages of aborted run {run_id}")
    return True


def _cancel_stages(run_id: int) -> None:
    with transaction.atomic():
        stages = RunStage.objects.filter(run_id=run_id).exclude(state__in=STAGE_TERMINAL)
        for stage in stages.order_by("pk"):
            move_stage(stage, StageState.CANCELLED)


def aborted_unfinished() -> list[int]:
    """Aborted runs with partitions or stages still active (an abort whose request or worker
    died between its transactions): the reconciler finishes them (finish_abort)."""
    partitions = Partition.objects.filter(run__state=RunState.ABORTED, state__in=PARTITION_ACTIVE)
    stages = RunStage.objects.filter(run__state=RunState.ABORTED).exclude(state__in=STAGE_TERMINAL)
    return sorted(
        set(partitions.values_list("run_id", flat=True).order_by().distinct())
        | set(stages.values_list("run_id", flat=True).order_by().distinct())
    )


def start_stage(stage: RunStage) -> None:
    """Move a pending stage to running and release its first wave (waking workers); a stage
    of no partitions finishes at once."""
    if not move_stage(stage, StageState.RUNNING):
        return
    first = (
        Partition.objects.filter(stage_id=stage.pk, state=P.PENDING)
        .order_by("wave")
        .values_list("wave", flat=True)
        .first()
    )
    if first is None:
        # Nothing to run (a stage of no partitions): finish at once.
        finish_stage(stage)
        return
    RunStage.objects.filter(pk=stage.pk).update(current_wave=first)
    released = Partition.objects.filter(stage_id=stage.pk, wave=first).update(ready=True)
    wakeups.wake(stage.run_id, released)


def finish_stage(stage: RunStage) -> None:
    """End a running stage: failed when more partitions failed than it allows, else
    succeeded; record its Merkle root and whether it breached its SLO."""
    stage.refresh_from_db()
    if stage.state != StageState.RUNNING:
        return
    over_budget = stage.failed > stage.max_failed_partitions
    target = StageState.FAILED if over_budget else StageState.SUCCEEDED
    move_stage(stage, target)
    root = stage_merkle_root(stage)
    elapsed_ms = _elapsed_ms(stage)
    breached = elapsed_ms > stage.slo_ms
    RunStage.objects.filter(pk=stage.pk).update(merkle_root=root, slo_breached=breached)
    if breached:
        Run.objects.filter(pk=stage.run_id).update(slo_breached=True)
        audit(
            actor=None,
            action="stage.slo_breached",
            object_type="run",
            object_id=stage.run_id,
            detail={"stage": stage.stage_id, "elapsed_ms": elapsed_ms, "slo_ms": stage.slo_ms},
        )
        notifications.slo_breached(stage, elapsed_ms)


def _elapsed_ms(stage: RunStage) -> int:
    # Paused time is not the stage's: a run paused for an hour has not breached its SLO.
    return stage.active_ms() or 0


def advance_run(run_id: int) -> None:
    """Start stages whose dependencies succeeded, cancel those whose dependencies did not,
    and finish the run when every stage has ended."""
    run = Run.objects.get(pk=run_id)
    if run.state != RunState.RUNNING:
        return
    while True:
        stages = list(RunStage.objects.filter(run_id=run_id).defer("manifest").order_by("position"))
        by_id = {s.stage_id: s for s in stages}
        changed = False
        for s in stages:
            if s.state != StageState.PENDING:
                continue
            if s.stopped_at is not None:
                continue  # being cancelled by a worker (finish_stop), which ends it
            deps = [by_id[d] for d in s.depends_on if d in by_id]
            if any(d.state in STAGE_UNSUCCESSFUL for d in deps):
                # Bounded: a stage of more than CANCEL_BATCH partitions is stopped here and
                # cancelled by a worker, which ends it and advances the run again.
                _stop_bounded(s.pk)
                s.refresh_from_db()
                if s.stopped_at is not None:
                    continue
                _cancel_stage(s)
                changed = True
            elif all(d.state == StageState.SUCCEEDED for d in deps):
                start_stage(s)
                changed = True
        if not changed:
            break
    stages = list(RunStage.objects.filter(run_id=run_id).defer("manifest"))
    if all(s.state in STAGE_TERMINAL for s in stages):
        finish_run(run, stages)


def finish_run(run: Run, stages: list[RunStage]) -> None:
    """End the run once every stage ended: failed, awaiting approval (a dry-run a kind
    requires) or succeeded, with the Merkle root over its stages' roots; audited."""
    ordered = sorted(stages, key=lambda s: s.position)
    root = hashing.merkle_root([s.merkle_root for s in ordered]) if ordered else ""
    ok = all(s.state == StageState.SUCCEEDED for s in ordered)
    if not ok:
        target = RunState.FAILED
    elif run.mode == RunMode.DRY_RUN and run.requires_approval:
        target = RunState.AWAITING_APPROVAL
    else:
        target = RunState.SUCCEEDED
    before = run.state
    if move_run(run, target):
        Run.objects.filter(pk=run.pk).update(merkle_root=root)
        audit(
            actor=None,
            action=f"run.{target}",
            obj=run,
            before={"state": before},
            after={"state": target, "merkle_root": root},
        )

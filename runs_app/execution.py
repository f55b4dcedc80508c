"""Executing partitions: fenced claims, leases and heartbeats, completion, retries, stage and
run progression, Merkle roots.

The database is the truth (notes/django-q2.md). A worker claims a partition in one short
transaction that bumps its fence; every later write of that worker (heartbeat, completion,
failure) is a compare-and-swap on (id, fence, state), so a worker that lost its lease changes
nothing. Stage counters move in the same transactions as partitions, so progress is one read.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from blueprints_app import codes
from blueprints_app.models import JobKind
from blueprints_app.registry import ExecutionContext, LeaseLost, get_executor
from blueprints_app.validation import schema_validator
from runs_app import hashing
from runs_app.audit import audit
from runs_app.models import (
    ClaimLog,
    Partition,
    PartitionState,
    Run,
    RunMode,
    RunStage,
    RunState,
    StageState,
)
from runs_app.transitions import move_run, move_stage

log = logging.getLogger(__name__)

P = PartitionState
COUNTER = {
    P.PENDING: "pending",
    P.RUNNING: "running",
    P.SUCCEEDED: "succeeded",
    P.FAILED: "failed",
    P.REUSED: "reused",
    P.CANCELLED: "cancelled",
}


class ShardTimeout(Exception):
    """The partition ran past HXO_SHARD_TIMEOUT_MS."""


class RunAborted(Exception):
    """The run was aborted while the partition ran."""


@dataclasses.dataclass(frozen=True)
class Claim:
    partition_id: int
    run_id: int
    stage_pk: int
    fence: int
    attempt: int
    owner: str


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _lease_delta() -> timedelta:
    return timedelta(milliseconds=settings.HXO_LEASE_MS)


def _count_moves(stage_pk: int, moves: dict[str, int]) -> None:
    """Apply counter deltas ({"pending": -1, "running": +1}) to a stage in one UPDATE."""
    updates = {name: F(name) + delta for name, delta in moves.items() if delta}
    if updates:
        RunStage.objects.filter(pk=stage_pk).update(**updates)


# --- Claims ---------------------------------------------------------------------------------


def _running_in_run(run_id: int) -> int:
    return sum(RunStage.objects.filter(run_id=run_id).values_list("running", flat=True))


def claim_next(run_id: int, owner: str) -> Claim | None:
    """Claim one claimable partition of the run, or None when there is none right now."""
    for _ in range(8):
        now = timezone.now()
        with transaction.atomic():
            if _running_in_run(run_id) >= settings.HXO_MAX_CONCURRENCY:
                return None
            qs = Partition.objects.filter(
                run_id=run_id, ready=True, state=P.PENDING, due_at__lte=now
            ).order_by("due_at")
            if connection.vendor == "postgresql":
                # Lock the row we pick and skip rows other workers hold: no two claimers wait
                # on each other. SQLite has no row locks: its IMMEDIATE transaction serialises.
                qs = qs.select_for_update(skip_locked=True, of=("self",))
            row = qs.values("id", "fence", "stage_id", "attempts").first()
            if row is None:
                return None
            fence = row["fence"] + 1
            changed = Partition.objects.filter(
                pk=row["id"], fence=row["fence"], state=P.PENDING
            ).update(
                state=P.RUNNING,
                fence=fence,
                attempts=F("attempts") + 1,
                lease_owner=owner,
                lease_expires_at=now + _lease_delta(),
                started_at=now,
                finished_at=None,
            )
            if not changed:
                continue  # somebody else took it between our read and our write
            _count_moves(row["stage_id"], {"pending": -1, "running": 1})
            ClaimLog.objects.create(
                partition_id=row["id"], fence=fence, owner=owner, claimed_at=now
            )
            return Claim(row["id"], run_id, row["stage_id"], fence, row["attempts"] + 1, owner)
    return None


def has_claimable(run_id: int, *, due_within_s: float = 0) -> bool:
    horizon = timezone.now() + timedelta(seconds=due_within_s)
    return Partition.objects.filter(
        run_id=run_id, ready=True, state=P.PENDING, due_at__lte=horizon
    ).exists()


def next_due(run_id: int) -> Any:
    return (
        Partition.objects.filter(run_id=run_id, ready=True, state=P.PENDING)
        .order_by("due_at")
        .values_list("due_at", flat=True)
        .first()
    )


# --- Heartbeats -----------------------------------------------------------------------------


class Heartbeat:
    """Extends the lease from a background thread while the executor works.

    The executor's `ctx.heartbeat()` raises LeaseLost, RunAborted or ShardTimeout when the
    thread saw the fence move, the run end or the time budget run out.
    """

    def __init__(self, claim: Claim) -> None:
        self.claim = claim
        self.started = time.monotonic()
        self.timeout_s = settings.HXO_SHARD_TIMEOUT_MS / 1000
        self.interval_s = max(settings.HXO_LEASE_MS / 3000, 0.2)
        self.lost = threading.Event()
        self.aborted = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hxo-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.interval_s):
                if time.monotonic() - self.started > self.timeout_s:
                    # Stop renewing: a hung executor's lease runs out and the reconciler
                    # takes the partition back.
                    return
                if not self.renew():
                    return
        finally:
            connection.close()

    def renew(self) -> bool:
        with transaction.atomic():
            changed = Partition.objects.filter(
                pk=self.claim.partition_id, fence=self.claim.fence, state=P.RUNNING
            ).update(lease_expires_at=timezone.now() + _lease_delta())
        if not changed:
            state = Run.objects.filter(pk=self.claim.run_id).values_list("state", flat=True).first()
            (self.aborted if state == RunState.ABORTED else self.lost).set()
        return bool(changed)

    def check(self) -> None:
        if self.aborted.is_set():
            raise RunAborted("the run was aborted")
        if self.lost.is_set():
            raise LeaseLost("another worker holds this partition now")
        if time.monotonic() - self.started > self.timeout_s:
            raise ShardTimeout(
                f"the partition ran longer than HXO_SHARD_TIMEOUT_MS "
                f"({settings.HXO_SHARD_TIMEOUT_MS} ms)"
            )


# --- Execution ------------------------------------------------------------------------------


def kind_from_snapshot(snapshot: dict[str, Any]) -> JobKind:
    """The job kind as pinned into the run (the registry row may have moved on since)."""
    fields = {f.name for f in JobKind._meta.get_fields()}
    return JobKind(**{k: v for k, v in snapshot.items() if k in fields})


def execute_claim(claim: Claim) -> str:
    """Run the executor for a claimed partition and record the outcome. Returns the state."""
    part = Partition.objects.select_related("stage", "run", "run__revision").get(
        pk=claim.partition_id
    )
    stage, run = part.stage, part.run
    kind = kind_from_snapshot(run.kind_snapshots[stage.kind])
    dry_run = run.mode == RunMode.DRY_RUN
    stage_doc = {
        "id": stage.stage_id,
        "kind": stage.kind,
        "partitioner": stage.partitioner,
        "executor": stage.executor,
        "params": stage.params,
        "depends_on": stage.depends_on,
        "non_idempotent": stage.non_idempotent,
    }
    started = time.monotonic()
    with Heartbeat(claim) as hb:
        ctx = ExecutionContext(
            run_id=run.pk,
            partition_id=part.pk,
            stage=stage_doc,
            kind=kind,
            inputs=part.inputs,
            fingerprints=part.fingerprints,
            manifest=stage.manifest,
            plan_digest=run.revision.digest,
            dry_run=dry_run,
            attempt=claim.attempt,
            fence=claim.fence,
            heartbeat=hb.check,
        )
        try:
            result = get_executor(stage.executor).execute(ctx)
            hb.check()
        except LeaseLost:
            log.info("partition %s: lease lost, result dropped", part.pk)
            return "lost"
        except RunAborted:
            return "aborted"
        except ShardTimeout as exc:
            return fail_partition(claim, {"code": "shard_timeout", "message": str(exc)})
        except Exception as exc:
            log.warning("partition %s failed: %s", part.pk, exc, exc_info=True)
            return fail_partition(
                claim,
                {
                    "code": getattr(exc, "code", "executor_error"),
                    "type": type(exc).__name__,
                    "message": str(exc)[:2000],
                },
            )
    duration_ms = int((time.monotonic() - started) * 1000)
    if not isinstance(result, dict):
        return fail_partition(
            claim, {"code": codes.INVALID_OUTPUT, "message": "the executor returned no object"}
        )
    if dry_run:
        return complete_partition(claim, preview=result, duration_ms=duration_ms)
    problem = output_problem(kind, result)
    if problem:
        return fail_partition(claim, {"code": codes.INVALID_OUTPUT, "message": problem})
    return complete_partition(claim, output=result, duration_ms=duration_ms)


def output_problem(kind: JobKind, output: dict[str, Any]) -> str | None:
    err = next(iter(schema_validator(kind.output_schema).iter_errors(output)), None)
    if err is not None:
        where = "/".join(str(p) for p in err.absolute_path) or "output"
        return f"output does not match the output schema of {kind.kind} at {where}: {err.message}"
    if output.get("status") != kind.result_status:
        return f"output status {output.get('status')!r} is not {kind.result_status!r}"
    return None


def complete_partition(
    claim: Claim, *, output: Any = None, preview: Any = None, duration_ms: int = 0
) -> str:
    with transaction.atomic():
        changed = Partition.objects.filter(
            pk=claim.partition_id, fence=claim.fence, state=P.RUNNING
        ).update(
            state=P.SUCCEEDED,
            output=output,
            preview=preview,
            error=None,
            finished_at=timezone.now(),
            duration_ms=duration_ms,
            lease_owner="",
            lease_expires_at=None,
        )
        if not changed:
            return "lost"
        _count_moves(claim.stage_pk, {"running": -1, "succeeded": 1})
        after_partition_change(claim.stage_pk)
    return P.SUCCEEDED


def fail_partition(claim: Claim, error: dict[str, Any]) -> str:
    """Record a failure: retry with backoff when idempotent and attempts are left."""
    with transaction.atomic():
        row = (
            Partition.objects.filter(pk=claim.partition_id, fence=claim.fence, state=P.RUNNING)
            .values("attempts", "non_idempotent")
            .first()
        )
        if row is None:
            return "lost"
        error = {**error, "attempt": row["attempts"]}
        now = timezone.now()
        if not row["non_idempotent"] and row["attempts"] < settings.HXO_MAX_ATTEMPTS:
            backoff_ms = settings.HXO_RETRY_BACKOFF_MS * 2 ** (row["attempts"] - 1)
            Partition.objects.filter(pk=claim.partition_id, fence=claim.fence).update(
                state=P.PENDING,
                error=error,
                due_at=now + timedelta(milliseconds=backoff_ms),
                lease_owner="",
                lease_expires_at=None,
                finished_at=now,
            )
            _count_moves(claim.stage_pk, {"running": -1, "pending": 1})
            return P.PENDING
        Partition.objects.filter(pk=claim.partition_id, fence=claim.fence).update(
            state=P.FAILED,
            error=error,
            lease_owner="",
            lease_expires_at=None,
            finished_at=now,
        )
        _count_moves(claim.stage_pk, {"running": -1, "failed": 1})
        after_partition_change(claim.stage_pk)
    return P.FAILED


def expire_leases(*, run_id: int | None = None, limit: int = 1000) -> int:
    """Take back partitions whose holder stopped renewing (killed worker, lost host).

    An idempotent one goes back to pending (fence bumped, so the old holder can write nothing);
    a non-idempotent one fails: it is never retried automatically.
    """
    now = timezone.now()
    qs = Partition.objects.filter(state=P.RUNNING, lease_expires_at__lt=now)
    if run_id is not None:
        qs = qs.filter(run_id=run_id)
    moved = 0
    for row in qs.values("id", "fence", "stage_id", "attempts", "non_idempotent")[:limit]:
        with transaction.atomic():
            error = {
                "code": "lease_expired",
                "message": "the worker holding this partition stopped renewing its lease",
                "attempt": row["attempts"],
            }
            retry = not row["non_idempotent"] and row["attempts"] < settings.HXO_MAX_ATTEMPTS
            target = P.PENDING if retry else P.FAILED
            changed = Partition.objects.filter(
                pk=row["id"], fence=row["fence"], state=P.RUNNING
            ).update(
                state=target,
                fence=F("fence") + 1,
                error=error,
                due_at=now,
                lease_owner="",
                lease_expires_at=None,
            )
            if changed:
                moved += 1
                _count_moves(row["stage_id"], {"running": -1, COUNTER[target]: 1})
                if target == P.FAILED:
                    after_partition_change(row["stage_id"])
    return moved


# --- Stage and run progression -------------------------------------------------------------


def after_partition_change(stage_pk: int) -> None:
    """Called inside the transaction that moved a partition of the stage to a final state."""
    stage = RunStage.objects.get(pk=stage_pk)
    if stage.state != StageState.RUNNING:
        return
    if stage.failed > stage.max_failed_partitions and stage.pending:
        cancel_partitions(Partition.objects.filter(stage_id=stage.pk, state=P.PENDING))
        stage.refresh_from_db()
    if stage.pending == 0 and stage.running == 0:
        finish_stage(stage)
        advance_run(stage.run_id)
    elif stage.current_wave < stage.max_wave:
        _maybe_next_wave(stage)


def _maybe_next_wave(stage: RunStage) -> None:
    unfinished = (
        Partition.objects.filter(stage_id=stage.pk, wave__lte=stage.current_wave)
        .filter(state__in=[P.PENDING, P.RUNNING])
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
        wake(stage.run_id, released)


def cancel_partitions(qs: Any) -> int:
    """Cancel pending (and fence out running) partitions, keeping counters exact."""
    total = 0
    for state in (P.PENDING, P.RUNNING):
        rows = list(qs.filter(state=state).values_list("stage_id").distinct())
        for (stage_pk,) in rows:
            n = qs.filter(state=state, stage_id=stage_pk).update(
                state=P.CANCELLED,
                fence=F("fence") + 1,
                lease_owner="",
                lease_expires_at=None,
                finished_at=timezone.now(),
            )
            _count_moves(stage_pk, {COUNTER[state]: -n, "cancelled": n})
            total += n
    return total


def start_stage(stage: RunStage) -> None:
    if not move_stage(stage, StageState.RUNNING):
        return
    first = (
        Partition.objects.filter(stage_id=stage.pk, state=P.PENDING)
        .order_by("wave")
        .values_list("wave", flat=True)
        .first()
    )
    if first is None:
        # Nothing to run (every partition reused, or none): finish at once.
        finish_stage(stage)
        return
    RunStage.objects.filter(pk=stage.pk).update(current_wave=first)
    released = Partition.objects.filter(stage_id=stage.pk, wave=first).update(ready=True)
    wake(stage.run_id, released)


def finish_stage(stage: RunStage) -> None:
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


def _elapsed_ms(stage: RunStage) -> int:
    if stage.started_at is None:
        return 0
    end = stage.finished_at or timezone.now()
    return int((end - stage.started_at).total_seconds() * 1000)


def advance_run(run_id: int) -> None:
    """Start stages whose dependencies succeeded, cancel those whose dependencies did not,
    and finish the run when every stage has ended."""
    run = Run.objects.get(pk=run_id)
    if run.state != RunState.RUNNING:
        return
    while True:
        stages = list(RunStage.objects.filter(run_id=run_id).order_by("position"))
        by_id = {s.stage_id: s for s in stages}
        changed = False
        for s in stages:
            if s.state != StageState.PENDING:
                continue
            deps = [by_id[d] for d in s.depends_on if d in by_id]
            if any(d.state in (StageState.FAILED, StageState.CANCELLED) for d in deps):
                cancel_partitions(Partition.objects.filter(stage_id=s.pk))
                s.refresh_from_db()
                move_stage(s, StageState.CANCELLED)
                RunStage.objects.filter(pk=s.pk).update(merkle_root=stage_merkle_root(s))
                changed = True
            elif all(d.state == StageState.SUCCEEDED for d in deps):
                start_stage(s)
                changed = True
        if not changed:
            break
    stages = list(RunStage.objects.filter(run_id=run_id))
    if all(
        s.state in (StageState.SUCCEEDED, StageState.FAILED, StageState.CANCELLED) for s in stages
    ):
        finish_run(run, stages)


def finish_run(run: Run, stages: list[RunStage]) -> None:
    ordered = sorted(stages, key=lambda s: s.position)
    root = hashing.merkle_root([s.merkle_root for s in ordered]) if ordered else ""
    ok = all(s.state == StageState.SUCCEEDED for s in ordered)
    if not ok:
        target = RunState.FAILED
    elif run.mode == RunMode.DRY_RUN and any(
        snap.get("require_dry_run") for snap in run.kind_snapshots.values()
    ):
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


# --- Merkle receipts ------------------------------------------------------------------------


def stage_leaves(stage: RunStage) -> list[str]:
    rows = (
        Partition.objects.filter(stage_id=stage.pk)
        .exclude(state__in=[P.CANCELLED, P.PENDING, P.RUNNING])
        .order_by("index")
        .values_list("cas_id", "output", "preview", "attempts", "state")
    )
    return [
        hashing.merkle_leaf(
            executor=stage.executor,
            cas=cas,
            output=(output if output is not None else preview)
            if state != P.FAILED
            else {"failed": True},
            attempt=attempts,
        )
        for cas, output, preview, attempts, state in rows.iterator(chunk_size=2000)
    ]


def stage_merkle_root(stage: RunStage) -> str:
    return hashing.merkle_root(stage_leaves(stage))


# --- Wake-ups -------------------------------------------------------------------------------


def wake(run_id: int, ready: int = 1) -> None:
    """Ask workers to drain the run, after the transaction commits (a message is only a hint:
    a lost one is re-sent by the reconciler, a duplicate finds nothing to claim)."""
    if ready <= 0:
        return
    count = min(settings.HXO_MAX_CONCURRENCY, ready)
    from runs_app.tasks import enqueue_drainers

    transaction.on_commit(lambda: enqueue_drainers(run_id, count))


def requeue_stuck() -> list[int]:
    """Runs that are running with something claimable: the reconciler wakes them again."""
    now = timezone.now()
    return list(
        Run.objects.filter(state=RunState.RUNNING)
        .filter(Q(partitions__state=P.PENDING, partitions__ready=True, partitions__due_at__lte=now))
        .values_list("pk", flat=True)
        .distinct()
    )

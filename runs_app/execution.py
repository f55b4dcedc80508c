"""Executing partitions: fenced claims, leases and heartbeats, completion, retries, stage and
run progression, Merkle roots.

The database is the truth (notes/django-q2.md). A worker claims a partition in one short
transaction that bumps its fence; every later write of that worker (heartbeat, completion,
failure) is a compare-and-swap on (id, fence, state), so a worker that lost its lease changes
nothing. Stage counters move in the same transactions as partitions, so progress is one read.

Reuse is decided here, by the worker that claimed the partition, never in the web request that
submitted the run: an idempotent partition of an apply whose CAS id already succeeded in an
earlier apply is reused only when its executor confirms the earlier effect still exists
(`Executor.effect_exists`), which may read files and databases. Otherwise it runs.
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

from blueprints_app.models import JobKind
from blueprints_app.registry import EXECUTORS, ExecutionContext, LeaseLost, get_executor
from blueprints_app.validation import schema_validator
from hxo_site import codes
from hxo_site.audit import audit
from runs_app import hashing
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
    non_idempotent: bool = False


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


TABLE = Partition._meta.db_table


def _prep_dt(value: Any) -> Any:
    return Partition._meta.get_field("started_at").get_db_prep_save(value, connection)


def _prep_json(field: str, value: Any) -> Any:
    return Partition._meta.get_field(field).get_db_prep_save(value, connection)


def _owners_in_run(run_id: int) -> set[str]:
    return set(
        Partition.objects.filter(run_id=run_id, state=P.RUNNING)
        .values_list("lease_owner", flat=True)
        .distinct()
    )


def claim_batch(run_id: int, owner: str, limit: int = 1) -> list[Claim]:
    """Claim up to `limit` claimable partitions of the run in one short transaction.

    HXO_MAX_CONCURRENCY bounds the drainers executing a run at once (each runs its claims one
    after another). Returns [] when nothing is claimable now or the run is at its limit.
    """
    now = timezone.now()
    with transaction.atomic():
        owners = _owners_in_run(run_id)
        if owner not in owners and len(owners) >= settings.HXO_MAX_CONCURRENCY:
            return []
        qs = Partition.objects.filter(
            run_id=run_id, ready=True, state=P.PENDING, due_at__lte=now
        ).order_by("due_at")
        if connection.vendor == "postgresql":
            # Lock the rows we pick and skip rows other workers hold: claimers never wait on
            # each other. SQLite has no row locks: its IMMEDIATE transaction serialises.
            qs = qs.select_for_update(skip_locked=True, of=("self",))
        rows = list(qs.values_list("id", "fence", "non_idempotent")[:limit])
        if not rows:
            return []
        # A non-idempotent partition is claimed alone: one that expires unstarted in a batch
        # would be failed, never retried.
        rows = rows[:1] if rows[0][2] else [r for r in rows if not r[2]]
        # Compare-and-swap on the fences we read (raw SQL: the ORM's query building would
        # cost more than the statement on this hot path). A row another claimer changed
        # since is left alone; the read-back below keeps only what this owner holds.
        expires, started = _prep_dt(now + _lease_delta()), _prep_dt(now)
        with connection.cursor() as cur:
            cur.executemany(
                f"UPDATE {TABLE} SET state = %s, fence = fence + 1, attempts = attempts + 1,"
                " lease_owner = %s, lease_expires_at = %s, started_at = %s, finished_at = NULL"
                " WHERE id = %s AND fence = %s AND state = %s",
                [(P.RUNNING, owner, expires, started, pk, f, P.PENDING) for pk, f, _ in rows],
            )
        read = {pk: fence + 1 for pk, fence, _ in rows}
        held = list(
            Partition.objects.filter(
                pk__in=list(read), lease_owner=owner, state=P.RUNNING
            ).values_list("id", "fence", "stage_id", "attempts", "non_idempotent")
        )
        claims = [
            Claim(pk, run_id, stage_pk, fence, attempts, owner, non_idempotent)
            for pk, fence, stage_pk, attempts, non_idempotent in held
            if read.get(pk) == fence
        ]
        per_stage: dict[int, int] = {}
        for c in claims:
            per_stage[c.stage_pk] = per_stage.get(c.stage_pk, 0) + 1
        for stage_pk, n in per_stage.items():
            _count_moves(stage_pk, {"pending": -n, "running": n})
        with connection.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {ClaimLog._meta.db_table} (partition_id, fence, owner, claimed_at)"
                " VALUES (%s, %s, %s, %s)",
                [(c.partition_id, c.fence, owner, started) for c in claims],
            )
    return claims


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
    """One background thread per drainer extends the leases of every partition it holds.

    An executor's `ctx.heartbeat()` raises LeaseLost, RunAborted or ShardTimeout when the
    thread saw the partition taken over, the run aborted, or the time budget run out.

    While an executor waits on a target (`ctx.stop_with(cancel)` registered), the thread
    also looks every WATCH_EVERY_S whether the partition is still this worker's and running
    (a read, no lease write), and calls `cancel(reason)` as soon as the run is aborted, the
    lease is lost or the time budget is spent: the target statement in flight is cancelled
    and rolled back then, not when it would have finished (issue 11 round 2, finding 2).
    """

    def __init__(self, owner: str, run_id: int, buffer: OutcomeBuffer | None = None) -> None:
        self.owner = owner
        self.run_id = run_id
        self.buffer = buffer
        self.done: set[int] = set()  # executed, outcome maybe still buffered: keep its lease
        self.interval_s = max(settings.HXO_LEASE_MS / 3000, 0.2)
        self.timeout_s = settings.HXO_SHARD_TIMEOUT_MS / 1000
        self.held: dict[int, float] = {}  # partition id → when its execution started
        self.lost: set[int] = set()
        self.aborted = threading.Event()
        # partition id → cancel(reason) while its executor waits on a target.
        self.cancellers: dict[int, Any] = {}
        self._last_watch = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hxo-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def hold(self, claims: list[Claim]) -> None:
        now = time.monotonic()
        with self._lock:
            for c in claims:
                self.held[c.partition_id] = now

    def started(self, partition_id: int) -> None:
        with self._lock:
            self.held[partition_id] = time.monotonic()

    def finished(self, partition_id: int) -> None:
        with self._lock:
            self.done.add(partition_id)

    def release(self, partition_id: int) -> None:
        with self._lock:
            self.held.pop(partition_id, None)
            self.lost.discard(partition_id)
            self.done.discard(partition_id)

    def _loop(self) -> None:
        last_renew = time.monotonic()
        try:
            while not self._stop.wait(min(FLUSH_AFTER_S, self.interval_s)):
                if self.buffer is not None:
                    self.buffer.flush(older_than=FLUSH_AFTER_S)
                if time.monotonic() - last_renew >= self.interval_s:
                    self.renew()
                    last_renew = time.monotonic()
                try:
                    self.watch()
                except Exception:  # a failed look must not stop the lease renewals
                    log.exception("heartbeat of %s: watching for stops failed", self.owner)
        except Exception:
            log.exception("heartbeat of %s stopped", self.owner)
        finally:
            connection.close()

    def renew(self) -> None:
        now = time.monotonic()
        with self._lock:
            # A partition past its time budget is not renewed: if its executor hangs without
            # calling heartbeat(), the lease runs out and the reconciler takes it back.
            ids = [
                pk for pk, t in self.held.items() if pk in self.done or now - t <= self.timeout_s
            ]
        if not ids:
            return
        with transaction.atomic():
            Partition.objects.filter(pk__in=ids, lease_owner=self.owner, state=P.RUNNING).update(
                lease_expires_at=timezone.now() + _lease_delta()
            )
            self._note_gone(ids)

    def _note_gone(self, ids: list[int]) -> None:
        """Record which of `ids` this drainer no longer holds (lost leases), and whether the
        run was aborted meanwhile. One read of the partitions, one of the run if any is gone."""
        still = set(
            Partition.objects.filter(
                pk__in=ids, lease_owner=self.owner, state=P.RUNNING
            ).values_list("id", flat=True)
        )
        gone = set(ids) - still
        if gone:
            state = Run.objects.filter(pk=self.run_id).values_list("state", flat=True).first()
            if state == RunState.ABORTED:
                self.aborted.set()
            with self._lock:
                self.lost |= gone

    def stop_with(self, partition_id: int) -> Any:
        """`ctx.stop_with` for one partition: register or (None) unregister its canceller."""

        def register(cancel: Any) -> None:
            with self._lock:
                if cancel is None:
                    self.cancellers.pop(partition_id, None)
                else:
                    self.cancellers[partition_id] = cancel
            if cancel is not None:
                self._last_watch = 0.0  # look at once on the next tick

        return register

    def _stop_reason(self, partition_id: int, now: float) -> str | None:
        if self.aborted.is_set():
            return "the run was aborted"
        if partition_id in self.lost:
            return "the lease was lost"
        started = self.held.get(partition_id)
        if started is not None and now - started > self.timeout_s:
            return "the partition's time budget (HXO_SHARD_TIMEOUT_MS) ran out"
        return None

    def watch(self) -> None:
        """Cancel what registered partitions wait on once they must stop (see the class)."""
        with self._lock:
            watched = list(self.cancellers)
        if not watched:
            return
        now = time.monotonic()
        if now - self._last_watch >= WATCH_EVERY_S:
            self._last_watch = now
            self._note_gone(watched)
        fire = []
        with self._lock:
            for pk in watched:
                reason = self._stop_reason(pk, now)
                if reason is not None and pk in self.cancellers:
                    fire.append((self.cancellers.pop(pk), reason))
        for cancel, reason in fire:
            try:
                cancel(reason)
            except Exception:
                log.exception("cancelling a partition's target statement failed")

    def checker(self, partition_id: int) -> Any:
        def check() -> None:
            if self.aborted.is_set():
                raise RunAborted("the run was aborted")
            if partition_id in self.lost:
                raise LeaseLost("another worker holds this partition now")
            started = self.held.get(partition_id)
            if started is not None and time.monotonic() - started > self.timeout_s:
                raise ShardTimeout(
                    f"the partition ran longer than HXO_SHARD_TIMEOUT_MS "
                    f"({settings.HXO_SHARD_TIMEOUT_MS} ms)"
                )

        return check


def check_fence(claim: Claim) -> None:
    """Raise LeaseLost unless this worker still holds the partition under its fence.

    A fresh compare-and-swap in HXO's database (never the heartbeat's cached answer) that
    also extends the lease by HXO_LEASE_MS: an executor calls it (as `ctx.check_fence()`)
    immediately before it commits an effect outside HXO's database, so the commit follows a
    proof of ownership that stays valid for a whole lease. A fence can only move on by a
    claim or a lease expiry, and both need the lease to have run out first.
    """
    held = Partition.objects.filter(
        pk=claim.partition_id, fence=claim.fence, state=P.RUNNING, lease_owner=claim.owner
    ).update(lease_expires_at=timezone.now() + _lease_delta())
    if held != 1:
        raise LeaseLost(
            f"partition {claim.partition_id} is no longer held under fence {claim.fence}"
        )


def recovered_output(executor: Any, ctx: ExecutionContext) -> dict[str, Any] | None:
    """The executor's `applied_output(ctx)` for an apply, or None (dry-runs have no effect to
    recover; an executor that cannot tell, or that fails to, recovers nothing)."""
    if ctx.dry_run:
        return None
    try:
        out = executor.applied_output(ctx)
    except Exception:
        log.warning("partition %s: applied_output failed", ctx.partition_id, exc_info=True)
        return None
    return out if isinstance(out, dict) else None


# --- Execution ------------------------------------------------------------------------------


def kind_from_snapshot(snapshot: dict[str, Any]) -> JobKind:
    """The job kind as pinned into the run (the registry row may have moved on since)."""
    fields = {f.name for f in JobKind._meta.get_fields()}
    return JobKind(**{k: v for k, v in snapshot.items() if k in fields})


@dataclasses.dataclass
class Outcome:
    claim: Claim
    state: str  # succeeded, reused, failed, lost, aborted
    output: Any = None
    preview: Any = None
    error: dict[str, Any] | None = None
    duration_ms: int = 0
    reused_from: int | None = None  # the earlier partition whose effect this one reuses


class RunContext:
    """What a drainer reads once per run instead of once per partition."""

    def __init__(self, run_id: int) -> None:
        self.run = Run.objects.select_related("revision").get(pk=run_id)
        self.dry_run = self.run.mode == RunMode.DRY_RUN
        self.kinds = {k: kind_from_snapshot(v) for k, v in self.run.kind_snapshots.items()}
        self.stages: dict[int, RunStage] = {}
        self.executors: dict[str, Any] = {}
        # Only a first apply reuses: a dry-run must look at the target itself, force_rerun
        # asks for no reuse, and a replay redoes exactly the partitions that failed.
        self.may_reuse = (
            self.run.mode == RunMode.APPLY and not self.run.force_rerun and not self.run.parent_id
        )

    def stage(self, stage_pk: int) -> RunStage:
        if stage_pk not in self.stages:
            self.stages[stage_pk] = RunStage.objects.get(pk=stage_pk)
        return self.stages[stage_pk]

    def executor(self, name: str) -> Any:
        if name not in self.executors:
            self.executors[name] = get_executor(name)
        return self.executors[name]


FLUSH_AFTER_S = 0.1
# While an executor waits on a target, how often the heartbeat thread reads whether its
# partition must stop (run aborted, lease lost): the bound on how long an aborted run's
# target statement keeps running (and its locks held).
WATCH_EVERY_S = 0.5


class OutcomeBuffer:
    """Outcomes of idempotent partitions, written in batches: one transaction for many quick
    partitions. The heartbeat thread flushes what is older than FLUSH_AFTER_S, so progress
    never lags a long partition. A worker killed before a flush leaves those partitions to
    run again after their lease, which idempotent executors make harmless (their effects are
    keyed by partition: content-addressed files, ledger rows, upserts)."""

    def __init__(self) -> None:
        self._items: list[Outcome] = []
        self._oldest = 0.0
        self._lock = threading.Lock()

    def add(self, outcome: Outcome) -> None:
        with self._lock:
            if not self._items:
                self._oldest = time.monotonic()
            self._items.append(outcome)

    def flush(self, *, older_than: float | None = None) -> None:
        with self._lock:
            if not self._items:
                return
            if older_than is not None and time.monotonic() - self._oldest < older_than:
                return
            items, self._items = self._items, []
        record_outcomes(items)


def execute_claims(
    rc: RunContext, claims: list[Claim], hb: Heartbeat, buffer: OutcomeBuffer
) -> None:
    """Execute claimed partitions one after another. A non-idempotent partition's outcome is
    written before anything else runs; idempotent ones go through the buffer."""
    rows = {
        pk: (inputs, fingerprints, cas)
        for pk, inputs, fingerprints, cas in Partition.objects.filter(
            pk__in=[c.partition_id for c in claims]
        ).values_list("id", "inputs", "fingerprints", "cas_id")
    }
    earlier = reuse_candidates(rc, claims, {pk: row[2] for pk, row in rows.items()})
    for claim in claims:
        if hb.aborted.is_set():
            break
        inputs, fingerprints, _cas = rows[claim.partition_id]
        hb.started(claim.partition_id)
        outcome = None
        if claim.partition_id in earlier:
            outcome = try_reuse(rc, claim, inputs, fingerprints, hb, *earlier[claim.partition_id])
        if outcome is None:
            outcome = execute_one(rc, claim, inputs, fingerprints, hb)
        if outcome.state in (P.SUCCEEDED, P.FAILED, P.REUSED):
            if claim.non_idempotent:
                buffer.flush()
                record_outcomes([outcome])
            else:
                buffer.add(outcome)
        hb.finished(claim.partition_id)


def build_context(
    rc: RunContext,
    claim: Claim,
    inputs: Any,
    fingerprints: Any,
    heartbeat: Any = None,
) -> ExecutionContext:
    """The executor's view of one claimed partition (heartbeat: a no-op unless given)."""
    stage = rc.stage(claim.stage_pk)
    stage_doc = {
        "id": stage.stage_id,
        "kind": stage.kind,
        "partitioner": stage.partitioner,
        "executor": stage.executor,
        "params": stage.params,
        "depends_on": stage.depends_on,
        "non_idempotent": stage.non_idempotent,
    }
    return ExecutionContext(
        run_id=rc.run.pk,
        partition_id=claim.partition_id,
        stage=stage_doc,
        kind=rc.kinds[stage.kind],
        inputs=inputs,
        fingerprints=fingerprints,
        manifest=stage.manifest,
        plan_digest=rc.run.revision.digest,
        dry_run=rc.dry_run,
        attempt=claim.attempt,
        fence=claim.fence,
        heartbeat=heartbeat or (lambda: None),
        check_fence=lambda: check_fence(claim),
    )


def execute_one(
    rc: RunContext, claim: Claim, inputs: Any, fingerprints: Any, hb: Heartbeat
) -> Outcome:
    stage = rc.stage(claim.stage_pk)
    kind = rc.kinds[stage.kind]
    check = hb.checker(claim.partition_id)
    ctx = build_context(rc, claim, inputs, fingerprints, check)
    ctx.stop_with = hb.stop_with(claim.partition_id)
    started = time.monotonic()
    try:
        result = rc.executor(stage.executor).execute(ctx)
        check()
    except LeaseLost:
        log.info("partition %s: lease lost, result dropped", claim.partition_id)
        return Outcome(claim, "lost")
    except RunAborted:
        return Outcome(claim, "aborted")
    except ShardTimeout as exc:
        return Outcome(claim, P.FAILED, error={"code": "shard_timeout", "message": str(exc)})
    except Exception as exc:
        log.warning("partition %s failed: %s", claim.partition_id, exc, exc_info=True)
        last = claim.non_idempotent or claim.attempt >= settings.HXO_MAX_ATTEMPTS
        recovered = recovered_output(rc.executor(stage.executor), ctx) if last else None
        if recovered is not None and output_problem(kind, recovered) is None:
            # The last attempt failed, yet the target records the effect (applied by an
            # earlier attempt whose outcome was lost): the partition succeeded.
            return Outcome(claim, P.SUCCEEDED, output=recovered)
        return Outcome(
            claim,
            P.FAILED,
            error={
                "code": getattr(exc, "code", "executor_error"),
                "type": type(exc).__name__,
                "message": str(exc)[:2000],
            },
        )
    duration_ms = int((time.monotonic() - started) * 1000)
    if not isinstance(result, dict):
        error = {"code": codes.INVALID_OUTPUT, "message": "the executor returned no object"}
        return Outcome(claim, P.FAILED, error=error, duration_ms=duration_ms)
    if rc.dry_run:
        return Outcome(claim, P.SUCCEEDED, preview=result, duration_ms=duration_ms)
    problem = output_problem(kind, result)
    if problem:
        error = {"code": codes.INVALID_OUTPUT, "message": problem}
        return Outcome(claim, P.FAILED, error=error, duration_ms=duration_ms)
    return Outcome(claim, P.SUCCEEDED, output=result, duration_ms=duration_ms)


def reuse_candidates(
    rc: RunContext, claims: list[Claim], cas_ids: dict[int, str]
) -> dict[int, tuple[int, dict[str, Any]]]:
    """Claimed partition id → (earlier partition id, its output) for every claimed idempotent
    partition whose CAS id succeeded in another apply; the newest such partition. Two queries
    for the whole batch of claims (the CAS id is indexed)."""
    if not rc.may_reuse:
        return {}
    wanted = {c.partition_id: cas_ids[c.partition_id] for c in claims if not c.non_idempotent}
    if not wanted:
        return {}
    newest: dict[str, int] = {}
    for cas, pk in (
        Partition.objects.filter(
            cas_id__in=set(wanted.values()),
            state=P.SUCCEEDED,
            run__mode=RunMode.APPLY,
            non_idempotent=False,
            output__isnull=False,
        )
        .exclude(run_id=rc.run.pk)
        .order_by("-id")
        .values_list("cas_id", "id")
    ):
        newest.setdefault(cas, pk)
    if not newest:
        return {}
    outputs = dict(
        Partition.objects.filter(pk__in=list(newest.values())).values_list("id", "output")
    )
    return {
        pid: (newest[cas], outputs[newest[cas]]) for pid, cas in wanted.items() if cas in newest
    }


def try_reuse(
    rc: RunContext,
    claim: Claim,
    inputs: Any,
    fingerprints: Any,
    hb: Heartbeat,
    earlier_id: int,
    output: dict[str, Any],
) -> Outcome | None:
    """A `reused` outcome when the executor confirms the earlier effect still exists, else None
    (the caller executes). The check runs under this worker's lease, like an execution."""
    stage = rc.stage(claim.stage_pk)
    ctx = build_context(rc, claim, inputs, fingerprints, hb.checker(claim.partition_id))
    started = time.monotonic()
    try:
        present = rc.executor(stage.executor).effect_exists(ctx, output) is True
        ctx.heartbeat()
    except LeaseLost:
        return Outcome(claim, "lost")
    except RunAborted:
        return Outcome(claim, "aborted")
    except Exception as exc:  # a check that cannot tell means: run it
        log.warning(
            "partition %s: effect check of %s failed, running it: %s",
            claim.partition_id,
            stage.executor,
            exc,
        )
        return None
    if not present:
        return None
    duration_ms = int((time.monotonic() - started) * 1000)
    return Outcome(claim, P.REUSED, output=output, duration_ms=duration_ms, reused_from=earlier_id)


def output_problem(kind: JobKind, output: dict[str, Any]) -> str | None:
    err = next(iter(schema_validator(kind.output_schema).iter_errors(output)), None)
    if err is not None:
        where = "/".join(str(p) for p in err.absolute_path) or "output"
        return f"output does not match the output schema of {kind.kind} at {where}: {err.message}"
    if output.get("status") != kind.result_status:
        return f"output status {output.get('status')!r} is not {kind.result_status!r}"
    return None


def record_outcomes(outcomes: list[Outcome]) -> None:
    """Write outcomes in one transaction; each write is fenced, so a claim this worker lost
    changes nothing. Failures retry with backoff while attempts are left (idempotent only)."""
    todo = [o for o in outcomes if o.state in (P.SUCCEEDED, P.REUSED, P.FAILED)]
    if not todo:
        return
    now = timezone.now()
    with transaction.atomic():
        moves: dict[int, dict[str, int]] = {}
        finals: set[int] = set()

        def moved(c: Claim, target: str) -> None:
            stage_moves = moves.setdefault(c.stage_pk, {})
            stage_moves["running"] = stage_moves.get("running", 0) - 1
            stage_moves[COUNTER[target]] = stage_moves.get(COUNTER[target], 0) + 1
            if target != P.PENDING:
                finals.add(c.stage_pk)

        # Succeeded and reused both end with an output; a reused one also names the earlier
        # partition whose effect it stands on.
        successes = [o for o in todo if o.state in (P.SUCCEEDED, P.REUSED)]
        if successes:
            sql = (
                f"UPDATE {TABLE} SET state = %s, output = %s, preview = %s, error = NULL,"
                " reused_from_id = %s, finished_at = %s, duration_ms = %s, lease_owner = '',"
                " lease_expires_at = NULL WHERE id = %s AND fence = %s AND state = %s"
            )
            finished = _prep_dt(now)
            params = [
                (
                    o.state,
                    _prep_json("output", o.output),
                    _prep_json("preview", o.preview),
                    o.reused_from,
                    finished,
                    o.duration_ms,
                    o.claim.partition_id,
                    o.claim.fence,
                    P.RUNNING,
                )
                for o in successes
            ]
            with connection.cursor() as cur:
                cur.executemany(sql, params)
                all_changed = cur.rowcount == len(successes)
            if all_changed:
                for o in successes:
                    moved(o.claim, o.state)
            else:
                # Some claim was lost meanwhile: find which of ours were written.
                written = set(
                    Partition.objects.filter(
                        pk__in=[o.claim.partition_id for o in successes],
                        state__in=[P.SUCCEEDED, P.REUSED],
                        finished_at=now,
                    ).values_list("id", "fence")
                )
                for o in successes:
                    if (o.claim.partition_id, o.claim.fence) in written:
                        moved(o.claim, o.state)
        for o in todo:
            if o.state != P.FAILED:
                continue
            c = o.claim
            mine = Partition.objects.filter(pk=c.partition_id, fence=c.fence, state=P.RUNNING)
            error = {**(o.error or {}), "attempt": c.attempt}
            if not c.non_idempotent and c.attempt < settings.HXO_MAX_ATTEMPTS:
                backoff_ms = settings.HXO_RETRY_BACKOFF_MS * 2 ** (c.attempt - 1)
                target = P.PENDING
                changed = mine.update(
                    state=P.PENDING,
                    error=error,
                    due_at=now + timedelta(milliseconds=backoff_ms),
                    duration_ms=o.duration_ms,
                    lease_owner="",
                    lease_expires_at=None,
                    finished_at=now,
                )
            else:
                target = P.FAILED
                changed = mine.update(
                    state=P.FAILED,
                    error=error,
                    duration_ms=o.duration_ms,
                    lease_owner="",
                    lease_expires_at=None,
                    finished_at=now,
                )
            if changed:
                moved(c, target)
        for stage_pk, delta in moves.items():
            _count_moves(stage_pk, delta)
        for stage_pk in finals:
            after_partition_change(stage_pk)


def expire_leases(*, run_id: int | None = None, limit: int = 1000) -> int:
    """Take back partitions whose holder stopped renewing (killed worker, lost host).

    An idempotent one goes back to pending (fence bumped, so the old holder can write nothing);
    a non-idempotent one, or one with no attempt left, fails: it is never retried
    automatically, unless its executor finds the effect already recorded at its target
    (`Executor.applied_output`, e.g. the migration ledger's row): then it succeeds with that
    output, since the holder committed and died before writing its outcome.
    """
    now = timezone.now()
    qs = Partition.objects.filter(state=P.RUNNING, lease_expires_at__lt=now)
    if run_id is not None:
        qs = qs.filter(run_id=run_id)
    moved = 0
    contexts: dict[int, RunContext] = {}
    fields = ("id", "run_id", "fence", "stage_id", "attempts", "non_idempotent")
    for row in qs.values(*fields)[:limit]:
        retry = not row["non_idempotent"] and row["attempts"] < settings.HXO_MAX_ATTEMPTS
        # Asked outside the transaction (it may reach a target database); the fenced update
        # below makes it count only if the row has not moved on meanwhile.
        recovered = None if retry else _recover_expired(row, contexts)
        with transaction.atomic():
            mine = Partition.objects.filter(pk=row["id"], fence=row["fence"], state=P.RUNNING)
            if recovered is not None:
                target = P.SUCCEEDED
                changed = mine.update(
                    state=P.SUCCEEDED,
                    fence=F("fence") + 1,
                    output=recovered,
                    error=None,
                    finished_at=now,
                    lease_owner="",
                    lease_expires_at=None,
                )
            else:
                error = {
                    "code": "lease_expired",
                    "message": "the worker holding this partition stopped renewing its lease",
                    "attempt": row["attempts"],
                }
                target = P.PENDING if retry else P.FAILED
                changed = mine.update(
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
                if target != P.PENDING:
                    after_partition_change(row["stage_id"])
    return moved


def _recover_expired(row: dict[str, Any], contexts: dict[int, RunContext]) -> Any:
    """The recorded effect's output of an expired partition that would fail, or None."""
    try:
        if row["run_id"] not in contexts:
            contexts[row["run_id"]] = RunContext(row["run_id"])
        rc = contexts[row["run_id"]]
        if rc.dry_run:
            return None
        inputs, fingerprints, attempts = Partition.objects.values_list(
            "inputs", "fingerprints", "attempts"
        ).get(pk=row["id"])
        claim = Claim(row["id"], row["run_id"], row["stage_id"], row["fence"], attempts, "")
        stage = rc.stage(row["stage_id"])
        ctx = build_context(rc, claim, inputs, fingerprints)
        output = recovered_output(rc.executor(stage.executor), ctx)
        if output is None or output_problem(rc.kinds[stage.kind], output) is not None:
            return None
        return output
    except Exception:
        log.warning("partition %s: could not ask for its effect", row["id"], exc_info=True)
        return None


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
        # Nothing to run (a stage of no partitions): finish at once.
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


# The receipt's effect check: at most this many missing partitions are named.
MISSING_LISTED = 20
# Effect check reasons.
EFFECT_MISSING = "effect_missing"
EFFECT_CHECK_FAILED = "effect_check_failed"
NO_OUTPUT = "no_output"


def check_effects(run: Run, *, thorough: bool = False, budget_s: float | None = None) -> dict:
    """Ask each executor whether the effect every finished partition of an apply recorded is
    still there, as the output says (`Executor.effect_exists`), for the run's receipt.

    A reused partition stands on the effect of the partition it reused: its output is that
    partition's output, checked the same way. A dry-run has no effects: nothing is checked.
    `thorough` is passed on as `ctx.thorough` (hash every byte again instead of trusting an
    unchanged stat identity). `budget_s` bounds the time spent: the check stops after the
    partition that crossed it, and says so (`complete: False`).

    Returns `{"checked", "missing", "complete", "thorough", "missing_partitions": [{"stage",
    "index", "reason"}, ... at most MISSING_LISTED]}`; reasons: EFFECT_MISSING (the executor
    said no), EFFECT_CHECK_FAILED (it raised: cannot vouch), NO_OUTPUT. Read only.
    """
    result: dict[str, Any] = {
        "checked": 0,
        "missing": 0,
        "complete": True,
        "thorough": thorough,
        "missing_partitions": [],
    }
    if run.mode != RunMode.APPLY:
        return result
    deadline = None if budget_s is None else time.monotonic() + budget_s
    stages = {s.pk: s for s in run.run_stages.all()}
    kinds = {k: kind_from_snapshot(v) for k, v in run.kind_snapshots.items()}
    unpinned = {s.kind for s in stages.values()} - set(kinds)
    if unpinned:  # a run made before kinds were pinned: the registry's row, if any
        kinds.update({k.kind: k for k in JobKind.objects.filter(kind__in=unpinned)})
    # An executor no longer installed (a plugin removed) cannot vouch for its effects.
    executors = {
        s.executor: get_executor(s.executor) if s.executor in EXECUTORS else None
        for s in stages.values()
    }

    def missing(stage: RunStage, index: int, reason: str) -> None:
        result["missing"] += 1
        if len(result["missing_partitions"]) < MISSING_LISTED:
            result["missing_partitions"].append(
                {"stage": stage.stage_id, "index": index, "reason": reason}
            )

    # One query for the whole run; stage rows are created in position order, so ordering by
    # stage id walks the stages in plan order (selectors.partitions_of).
    rows = (
        Partition.objects.filter(stage_id__in=list(stages), state__in=[P.SUCCEEDED, P.REUSED])
        .order_by("stage_id", "index")
        .values_list(
            "pk", "stage_id", "index", "inputs", "fingerprints", "output", "attempts", "fence"
        )
    )
    for pk, stage_pk, index, inputs, fingerprints, output, attempts, fence in rows.iterator(
        chunk_size=500
    ):
        stage = stages[stage_pk]
        kind, executor = kinds.get(stage.kind), executors[stage.executor]
        if deadline is not None and time.monotonic() > deadline:
            result["complete"] = False
            return result
        result["checked"] += 1
        if not isinstance(output, dict):
            missing(stage, index, NO_OUTPUT)
            continue
        if kind is None or executor is None:
            missing(stage, index, EFFECT_CHECK_FAILED)
            continue
        ctx = ExecutionContext(
            run_id=run.pk,
            partition_id=pk,
            stage={
                "id": stage.stage_id,
                "kind": stage.kind,
                "partitioner": stage.partitioner,
                "executor": stage.executor,
                "params": stage.params,
                "depends_on": stage.depends_on,
                "non_idempotent": stage.non_idempotent,
            },
            kind=kind,
            inputs=inputs,
            fingerprints=fingerprints,
            manifest=stage.manifest,
            plan_digest=run.revision.digest,
            dry_run=False,
            attempt=attempts,
            fence=fence,
            thorough=thorough,
        )
        try:
            present = executor.effect_exists(ctx, output) is True
        except Exception as exc:  # a check that cannot tell cannot vouch
            if len(result["missing_partitions"]) < MISSING_LISTED:  # not 10,000 lines
                log.warning("run %s partition %s: effect check failed: %s", run.pk, pk, exc)
            missing(stage, index, EFFECT_CHECK_FAILED)
            continue
        if not present:
            missing(stage, index, EFFECT_MISSING)
    return result


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

"""Execution: running claimed partitions, reusing earlier effects, recording outcomes under
the fence, retries, and taking back partitions whose holder stopped renewing its lease.

Reuse is decided here, by the worker that claimed the partition, never in the web request that
submitted the run: an idempotent partition of an apply whose content id already succeeded in
an earlier apply is reused only when its executor confirms the earlier effect still exists
(`Executor.effect_exists`), which may read files and databases. Otherwise it runs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sqlite3
import time
from datetime import timedelta
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from blueprints_app.models import JobKind
from blueprints_app.registry import (
    ComponentError,
    ExecutionContext,
    LeaseLost,
    Throttled,
    get_executor,
)
from blueprints_app.validation import schema_validator
from hxo_site import codes
from runs_app.engine import health, logs
from runs_app.engine.claims import COUNTER, TABLE, Claim, count_moves, prep_dt, prep_json
from runs_app.engine.deadlocks import locked_pks, retrying
from runs_app.engine.errors import PartitionTimeout, RunAborted
from runs_app.engine.heartbeat import Heartbeat, check_fence
from runs_app.engine.progress import after_partition_change
from runs_app.engine.receipts import kind_from_snapshot
from runs_app.manifest import run_stage_document, topological_order
from runs_app.models import Partition, PartitionState, Run, RunMode, RunStage
from runs_app.models.engine import PARTITION_COMPLETED, PARTITION_DONE
from runs_app.targets import classify_db_error

log = logging.getLogger(__name__)

# The database drivers whose errors `classify_db_error` reads (raised as they are by an
# executor that talks to a target directly).
DB_DRIVER_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)

P = PartitionState


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


@dataclasses.dataclass
class Outcome:
    """What executing (or reusing) one claimed partition came to, before it is recorded."""

    claim: Claim
    state: str  # succeeded, reused, failed, lost, aborted, throttled
    output: Any = None
    preview: Any = None
    error: dict[str, Any] | None = None
    duration_ms: int = 0
    reused_from: int | None = None  # the earlier partition whose effect this one reuses
    # What the executor logged on the worker's thread while it ran (engine.logs), and how
    # many older lines the capture's bounds dropped.
    log_lines: list[str] = dataclasses.field(default_factory=list)
    log_dropped: int = 0
    # A `throttled` outcome's reason: released by `engine.health`, never recorded as an end.
    throttled: Throttled | None = None


class RunContext:
    """What a drainer reads once per run instead of once per partition."""

    def __init__(self, run_id: int) -> None:
        self.run = Run.objects.select_related("revision").get(pk=run_id)
        self.dry_run = self.run.mode == RunMode.DRY_RUN
        self.kinds = {k: kind_from_snapshot(v) for k, v in self.run.kind_snapshots.items()}
        self.stages: dict[int, RunStage] = {}
        self.executors: dict[str, Any] = {}
        self._all_stages: list[RunStage] | None = None
        # Only a first apply reuses: a dry-run must look at the target itself, force_rerun
        # asks for no reuse, and a replay redoes exactly the partitions that failed.
        self.may_reuse = (
            self.run.mode == RunMode.APPLY and not self.run.force_rerun and not self.run.parent_id
        )

    def stage(self, stage_pk: int) -> RunStage:
        """The run's stage row, read once per drainer."""
        if stage_pk not in self.stages:
            self.stages[stage_pk] = RunStage.objects.get(pk=stage_pk)
        return self.stages[stage_pk]

    def upstream(self, stage_pk: int) -> list[dict[str, Any]]:
        """`ExecutionContext.upstream` of the stage `stage_pk`: the stages it depends on,
        directly or not, in topological order, each its run stage document with its pinned
        `manifest`. The run's stages are read once per drainer, on first call."""
        if self._all_stages is None:
            self._all_stages = list(RunStage.objects.filter(run=self.run).order_by("position"))
        by_id = {s.stage_id: s for s in self._all_stages}
        wanted: set[str] = set()
        todo = [s for s in self._all_stages if s.pk == stage_pk]
        while todo:
            for dep in todo.pop().depends_on or []:
                if dep in by_id and dep not in wanted:
                    wanted.add(dep)
                    todo.append(by_id[dep])
        docs = [run_stage_document(s) for s in self._all_stages]
        return [
            {**docs[i], "manifest": self._all_stages[i].manifest}
            for i in topological_order(docs)
            if self._all_stages[i].stage_id in wanted
        ]

    def executor(self, name: str) -> Any:
        """The registered executor instance, made once per drainer."""
        if name not in self.executors:
            self.executors[name] = get_executor(name)
        return self.executors[name]


# Buffered outcomes older than this are written before the drainer starts another partition.
FLUSH_AFTER_S = 0.1


class OutcomeBuffer:
    """Outcomes of idempotent partitions, written in batches: one transaction for many quick
    partitions. Only the drainer flushes it, on its own thread and connection: before it
    starts a partition when what waits is older than FLUSH_AFTER_S (so progress lags by at
    most one partition), before a non-idempotent outcome, and at the end of every batch of
    claims. The heartbeat thread keeps the leases of buffered partitions renewed meanwhile
    (`Heartbeat.finished`), and every write stays fenced (`record_outcomes`). A worker killed
    before a flush leaves those partitions to run again after their lease, which idempotent
    executors make harmless (their effects are keyed by partition: content-addressed files,
    ledger rows, upserts)."""

    def __init__(self) -> None:
        self._items: list[Outcome] = []
        self._oldest = 0.0

    def add(self, outcome: Outcome) -> None:
        """Keep an outcome until the next flush."""
        if not self._items:
            self._oldest = time.monotonic()
        self._items.append(outcome)

    def flush(self, *, older_than: float | None = None) -> None:
        """Record what is buffered in one transaction (`record_outcomes`); with `older_than`
        (seconds), only when the oldest buffered outcome is at least that old."""
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
    written before anything else runs; idempotent ones go through the buffer, which the
    caller flushes after the batch."""
    rows = {
        pk: (inputs, fingerprints, content_id)
        for pk, inputs, fingerprints, content_id in Partition.objects.filter(
            pk__in=[c.partition_id for c in claims]
        ).values_list("id", "inputs", "fingerprints", "content_id")
    }
    earlier = reuse_candidates(rc, claims, {pk: row[2] for pk, row in rows.items()})
    for claim in claims:
        if hb.aborted.is_set():
            break
        # What finished a while ago is written before a partition that may take long.
        buffer.flush(older_than=FLUSH_AFTER_S)
        inputs, fingerprints, _content_id = rows[claim.partition_id]
        hb.started(claim.partition_id)
        outcome = None
        if claim.partition_id in earlier:
            outcome = try_reuse(rc, claim, inputs, fingerprints, hb, *earlier[claim.partition_id])
        if outcome is None:
            outcome = execute_one(rc, claim, inputs, fingerprints, hb)
        if outcome.throttled is not None:
            buffer.flush()
            t = outcome.throttled
            health.release(
                claim,
                reason=t.reason,
                retry_after_ms=t.retry_after_ms,
                detail=t.detail,
                log_lines=outcome.log_lines,
                log_dropped=outcome.log_dropped,
            )
        elif outcome.state in PARTITION_COMPLETED:
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
    return ExecutionContext(
        run_id=rc.run.pk,
        partition_id=claim.partition_id,
        stage=run_stage_document(stage),
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
        upstream=lambda: rc.upstream(claim.stage_pk),
        throttle_passed=lambda: health.passed(claim.stage_pk, rc.run.pk),
    )


def execute_one(
    rc: RunContext, claim: Claim, inputs: Any, fingerprints: Any, hb: Heartbeat
) -> Outcome:
    """Run one claimed partition's executor and judge its result: succeeded (an output that
    matches the kind's output schema and result status; a dry-run's preview), failed (with
    an error code; `shard_timeout` past HXO_PARTITION_TIMEOUT_MS), or `lost`/`aborted` (not
    recorded). A failing last attempt whose effect the target records succeeds with it.

    What is logged on this thread meanwhile (the executor's records, the traceback of an
    unexpected error) rides on the outcome (`log_lines`), bounded by `engine.logs`, and is
    stored with the partition when the outcome is."""
    with logs.capture() as captured:
        outcome = _execute_one(rc, claim, inputs, fingerprints, hb)
    outcome.log_lines = captured.lines
    outcome.log_dropped = captured.dropped
    return outcome


def _execute_one(
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
    except Throttled as exc:  # before any effect: not a failure, no attempt spent
        return Outcome(claim, "throttled", throttled=exc)
    except PartitionTimeout as exc:
        return Outcome(claim, P.FAILED, error={"code": "shard_timeout", "message": str(exc)})
    except Exception as exc:
        log.warning("partition %s failed: %s", claim.partition_id, exc, exc_info=True)
        permanent = is_permanent(exc)
        last = permanent or claim.non_idempotent or claim.attempt >= settings.HXO_MAX_ATTEMPTS
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
                "permanent": permanent,
            },
        )
    duration_ms = int((time.monotonic() - started) * 1000)
    # The same code given the same inputs returns the same wrong output: no retry.
    if not isinstance(result, dict):
        error = {
            "code": codes.INVALID_OUTPUT,
            "message": "the executor returned no object",
            "permanent": True,
        }
        return Outcome(claim, P.FAILED, error=error, duration_ms=duration_ms)
    if rc.dry_run:
        return Outcome(claim, P.SUCCEEDED, preview=result, duration_ms=duration_ms)
    problem = output_problem(kind, result)
    if problem:
        error = {"code": codes.INVALID_OUTPUT, "message": problem, "permanent": True}
        return Outcome(claim, P.FAILED, error=error, duration_ms=duration_ms)
    return Outcome(claim, P.SUCCEEDED, output=result, duration_ms=duration_ms)


def is_permanent(exc: BaseException) -> bool:
    """Whether trying `exc`'s partition again cannot help: a `ComponentError` says so itself
    (`permanent`), a database driver's error as `runs_app.targets.classify_db_error` reads
    its SQLSTATE or SQLite result code. Anything else is transient (retried with backoff)."""
    if isinstance(exc, ComponentError):
        return exc.permanent
    if isinstance(exc, DB_DRIVER_ERRORS):
        return classify_db_error(exc).permanent
    return False


def reuse_candidates(
    rc: RunContext, claims: list[Claim], content_ids: dict[int, str]
) -> dict[int, tuple[int, dict[str, Any]]]:
    """Claimed partition id → (earlier partition id, its output) for every claimed idempotent
    partition whose content id succeeded in another apply; the newest such partition. Two
    queries for the whole batch of claims (the content id is indexed)."""
    if not rc.may_reuse:
        return {}
    wanted = {c.partition_id: content_ids[c.partition_id] for c in claims if not c.non_idempotent}
    if not wanted:
        return {}
    newest: dict[str, int] = {}
    for content_id, pk in (
        Partition.objects.filter(
            content_id__in=set(wanted.values()),
            state=P.SUCCEEDED,
            run__mode=RunMode.APPLY,
            non_idempotent=False,
            output__isnull=False,
        )
        .exclude(run_id=rc.run.pk)
        .order_by("-id")
        .values_list("content_id", "id")
    ):
        newest.setdefault(content_id, pk)
    if not newest:
        return {}
    outputs = dict(
        Partition.objects.filter(pk__in=list(newest.values())).values_list("id", "output")
    )
    return {
        pid: (newest[cid], outputs[newest[cid]]) for pid, cid in wanted.items() if cid in newest
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
    """Why an apply's output does not fit the kind (schema or result status), or None."""
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
    # Partition rows in key order, then stage rows in key order (engine.deadlocks).
    todo = sorted(
        (o for o in outcomes if o.state in PARTITION_COMPLETED), key=lambda o: o.claim.partition_id
    )
    if not todo:
        return
    retrying(lambda: _record(todo), what="recording outcomes")


def _record(todo: list[Outcome]) -> None:
    now = timezone.now()
    with transaction.atomic():
        # Every row first, in key order (engine.deadlocks): the writes below go successes
        # first, then failures, which is not key order.
        locked_pks(Partition.objects.filter(pk__in=[o.claim.partition_id for o in todo]))
        moves: dict[int, dict[str, int]] = {}
        finals: set[int] = set()
        written: set[int] = set()

        def moved(c: Claim, target: str) -> None:
            written.add(c.partition_id)
            stage_moves = moves.setdefault(c.stage_pk, {})
            stage_moves["running"] = stage_moves.get("running", 0) - 1
            stage_moves[COUNTER[target]] = stage_moves.get(COUNTER[target], 0) + 1
            if target != P.PENDING:
                finals.add(c.stage_pk)

        # Succeeded and reused both end with an output; a reused one also names the earlier
        # partition whose effect it stands on.
        successes = [o for o in todo if o.state in PARTITION_DONE]
        if successes:
            with connection.cursor() as cur:
                _write_successes(cur, successes, prep_dt(now))
                all_changed = cur.rowcount == len(successes)
            if all_changed:
                for o in successes:
                    moved(o.claim, o.state)
            else:
                # Some claim was lost meanwhile: find which of ours were written.
                written = set(
                    Partition.objects.filter(
                        pk__in=[o.claim.partition_id for o in successes],
                        state__in=PARTITION_DONE,
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
            permanent = bool(error.get("permanent"))
            if not (permanent or c.non_idempotent) and c.attempt < settings.HXO_MAX_ATTEMPTS:
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
        for stage_pk in sorted(moves):
            count_moves(stage_pk, moves[stage_pk])
        # Only the lines of outcomes written under their fence: a holder fenced out would
        # otherwise mix its lines into the log of the attempt that replaced it.
        logs.store(
            [
                (o.claim.partition_id, o.claim.attempt, o.log_lines, o.log_dropped)
                for o in todo
                if o.claim.partition_id in written
            ]
        )
        for stage_pk in finals:
            after_partition_change(stage_pk)


def _write_successes(cur: Any, successes: list[Outcome], finished: Any) -> None:
    """The fenced completion of every successful outcome: state, output, preview, where it
    was reused from, times; each row only where it still holds this claim's fence and is
    running (the cursor's rowcount says how many did). On PostgreSQL one UPDATE joins the
    batch as arrays (`unnest`): psycopg's executemany sends one statement per row, a round
    trip each (bench/profiles/orchestration.md); SQLite's runs in-process."""
    if connection.vendor == "postgresql":
        cur.execute(
            f"UPDATE {TABLE} AS p SET state = v.state, output = v.output,"
            " preview = v.preview, error = NULL, reused_from_id = v.reused_from,"
            " finished_at = %s, duration_ms = v.duration_ms, lease_owner = '',"
            " lease_expires_at = NULL"
            " FROM unnest(%s::bigint[], %s::bigint[], %s::varchar[], %s::varchar[],"
            " %s::jsonb[], %s::jsonb[], %s::bigint[], %s::integer[])"
            " AS v(id, fence, was, state, output, preview, reused_from, duration_ms)"
            # `was` (running) is a column, not a constant: see claims._claim on the plan.
            " WHERE p.id = v.id AND p.fence = v.fence AND p.state = v.was",
            [
                finished,
                [o.claim.partition_id for o in successes],
                [o.claim.fence for o in successes],
                [P.RUNNING] * len(successes),
                [o.state for o in successes],
                [prep_json("output", o.output) for o in successes],
                [prep_json("preview", o.preview) for o in successes],
                [o.reused_from for o in successes],
                [o.duration_ms for o in successes],
            ],
        )
        return
    cur.executemany(
        f"UPDATE {TABLE} SET state = %s, output = %s, preview = %s, error = NULL,"
        " reused_from_id = %s, finished_at = %s, duration_ms = %s, lease_owner = '',"
        " lease_expires_at = NULL WHERE id = %s AND fence = %s AND state = %s",
        [
            (
                o.state,
                prep_json("output", o.output),
                prep_json("preview", o.preview),
                o.reused_from,
                finished,
                o.duration_ms,
                o.claim.partition_id,
                o.claim.fence,
                P.RUNNING,
            )
            for o in successes
        ],
    )


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
        take_back = functools.partial(_take_back, row, recovered, retry, now)
        if retrying(take_back, what=f"taking back partition {row['id']}"):
            moved += 1
    return moved


def _take_back(row: dict[str, Any], recovered: Any, retry: bool, now: Any) -> bool:
    """One expired partition back to pending, failed, or succeeded with its recovered output,
    fenced on the fence read: False when the row moved on meanwhile."""
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
            count_moves(row["stage_id"], {"running": -1, COUNTER[target]: 1})
            if target != P.PENDING:
                after_partition_change(row["stage_id"])
        return bool(changed)


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

"""Partitioning in a worker: a resolved manifest written as stages and partitions in bounded
transactions, under a lease, and the switch of the run from `partitioning` to `running`.

A run is created by the request in state `partitioning` with no stages; a worker resolves its
manifest (`runs_app.services.run_partition`) and calls `write_manifest`. SQLite has one writer
at a time, so one transaction that inserts 100,000 rows would block every other writer (plan
saves, claims) for seconds: rows go in batches of at most `BATCH` per transaction instead, and
other writers get the lock between them. Nothing written is claimable before the last batch:
partitions are inserted with `ready=False`, and only `progress.start_stage` (called when the
run is `running`) releases them; the last batch's transaction is the one that moves the run
to `running`. So a crash leaves a run in `partitioning` with some rows and no claimable
partition; the reconciler re-sends it (`stuck_partitioning`), and the next worker deletes the
partial rows (`discard_partial`) and writes everything again: resolving is deterministic for
unchanged inputs, and when inputs changed the new rows are what the digest then covers.

Two workers never write one run's rows: each batch renews a per-run lease (`Lease` row
`partitioning:<run id>`) with a compare-and-swap on its owner and re-reads the run's state
under its row lock; a worker that lost the lease or whose run was aborted writes nothing more.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from hxo_site.audit import audit
from runs_app.engine import progress
from runs_app.manifest import ResolvedManifest, ResolvedStage
from runs_app.models import Lease, Partition, Run, RunStage, RunState
from runs_app.transitions import move_run

logger = logging.getLogger(__name__)

# Rows per transaction: ~2,000 partition rows take tens of milliseconds to insert on SQLite,
# so no other writer waits longer than that for the database lock.
BATCH = 2000
# How long a run may sit in `partitioning` without a lease before the reconciler re-sends it
# (a request's own wake-up normally starts a worker well within this).
GRACE = timedelta(seconds=10)


class PartitioningLost(Exception):
    """The worker lost its lease, or the run left `partitioning` (aborted): stop writing."""


def lease_name(run_id: int) -> str:
    """The `Lease` row that says which worker partitions run `run_id`."""
    return f"partitioning:{run_id}"


def lease_ttl() -> timedelta:
    """A partitioning lease lasts as long as django-q2 lets one task run (HXO_Q_TIMEOUT_S):
    a worker still alive holds it; one killed by the guard has lost it by then."""
    return timedelta(seconds=settings.HXO_Q_TIMEOUT_S)


def take_lease(run_id: int, owner: str) -> bool:
    """Take (or renew) run `run_id`'s partitioning lease for `owner`; False when another live
    worker holds it. A compare-and-swap on the lease row: free, expired, or already ours."""
    name = lease_name(run_id)
    now = timezone.now()
    try:
        with transaction.atomic():
            Lease.objects.get_or_create(name=name)
    except IntegrityError:
        pass  # made by a concurrent worker: the update below decides
    with transaction.atomic():
        return bool(
            Lease.objects.filter(name=name)
            .filter(Q(expires_at__isnull=True) | Q(expires_at__lt=now) | Q(owner=owner))
            .update(owner=owner, expires_at=now + lease_ttl())
        )


def release_lease(run_id: int, owner: str) -> None:
    """Drop the lease row if `owner` holds it (a finished or failed partitioning)."""
    Lease.objects.filter(name=lease_name(run_id), owner=owner).delete()


def _fenced(run_id: int, owner: str) -> Run:
    """Inside a transaction: renew the lease (compare-and-swap on its owner) and lock the run,
    which must still be `partitioning`; raises PartitioningLost otherwise."""
    renewed = Lease.objects.filter(name=lease_name(run_id), owner=owner).update(
        expires_at=timezone.now() + lease_ttl()
    )
    run = Run.objects.select_for_update().filter(pk=run_id).first()
    if not renewed or run is None or run.state != RunState.PARTITIONING:
        raise PartitioningLost(f"run {run_id}: partitioning lease lost or run not partitioning")
    return run


def discard_partial(run_id: int, owner: str) -> int:
    """Delete what an earlier, interrupted worker wrote for the run (partitions, then stages),
    `BATCH` partitions per transaction, each under the lease. Returns partitions deleted."""
    deleted = 0
    while True:
        with transaction.atomic():
            _fenced(run_id, owner)
            pks = list(Partition.objects.filter(run_id=run_id).values_list("pk", flat=True)[:BATCH])
            if not pks:
                RunStage.objects.filter(run_id=run_id).delete()
                Run.objects.filter(pk=run_id).update(partition_total=None)
                return deleted
            Partition.objects.filter(pk__in=pks).delete()
            deleted += len(pks)


def _stage_row(run: Run, rs: ResolvedStage, executors_idempotent: dict[str, bool]) -> RunStage:
    doc = rs.stage
    non_idempotent = bool(doc.get("non_idempotent")) or not executors_idempotent[doc["executor"]]
    return RunStage(
        run=run,
        stage_id=rs.stage_id,
        position=rs.position,
        kind=rs.kind.kind,
        kind_version=rs.kind.version,
        partitioner=doc["partitioner"],
        executor=doc["executor"],
        depends_on=list(doc.get("depends_on", [])),
        params=doc.get("params") or {},
        non_idempotent=non_idempotent,
        max_failed_partitions=doc.get("max_failed_partitions") or 0,
        slo_ms=doc.get("slo_ms") or rs.kind.default_slo_ms,
        manifest=rs.data,
        content_root=rs.content_root,
        # Counted up batch by batch, in the transactions that insert the rows.
        total=0,
        pending=0,
        max_wave=max((s.wave for s in rs.specs), default=0),
        weight=sum(s.weight for s in rs.specs),
    )


@dataclass(frozen=True, slots=True)
class NewPartition:
    """One partition row to insert: the fields a partitioner or a replay decides. Every
    other column gets its model default (`state` pending, `fence` 0, `due_at` now, ...)."""

    stage_pk: int
    index: int
    wave: int
    inputs: Any
    fingerprints: dict[str, str]
    label: str
    weight: int
    content_id: str
    non_idempotent: bool
    ready: bool = False  # released by progress.start_stage once the run is running


# NewPartition's fields, in order, as Partition's column attributes.
_DECIDED = (
    "stage_id",
    "index",
    "wave",
    "inputs",
    "fingerprints",
    "label",
    "weight",
    "content_id",
    "non_idempotent",
    "ready",
)


def _rows(resolved: ResolvedManifest, stages: dict[str, RunStage]) -> Iterator[NewPartition]:
    for rs in resolved.stages:
        stage = stages[rs.stage_id]
        for i, spec in enumerate(rs.specs):
            yield NewPartition(
                stage_pk=stage.pk,
                index=i,
                wave=spec.wave,
                inputs=spec.inputs,
                fingerprints=spec.fingerprints,
                label=spec.label[:300],
                weight=spec.weight,
                content_id=rs.content_ids[i],
                non_idempotent=stage.non_idempotent,
            )


def _insert_statement() -> tuple[str, list[Any]]:
    """The INSERT of one partition row, and each column's source: a NewPartition field name
    (str), or a value prepared once for the batch (the column's model default, `run_id`
    added per call). Built from the model, so a column added to Partition with a default
    needs nothing here; one without a default and not nullable fails loudly."""
    columns: list[str] = []
    sources: list[Any] = []
    for field in Partition._meta.concrete_fields:
        if field.primary_key:
            continue
        columns.append(connection.ops.quote_name(field.column))
        if field.attname == "run_id" or field.attname in _DECIDED:
            sources.append(field.attname)
        elif field.has_default():
            sources.append(_Prepared(field.get_db_prep_save(field.get_default(), connection)))
        elif field.null:
            sources.append(_Prepared(None))
        else:  # pragma: no cover - a schema change this function must learn about
            raise TypeError(f"Partition.{field.attname} has no default: insert_partitions")
    table = connection.ops.quote_name(Partition._meta.db_table)
    marks = ", ".join(["%s"] * len(columns))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", sources


def _copy(cursor: Any, insert_sql: str, params: list[tuple[Any, ...]]) -> None:
    """PostgreSQL: the rows through `COPY ... FROM STDIN` (psycopg 3's `Cursor.copy`), the
    database's bulk-load path: one statement for the batch instead of one bind and execute
    per row, which costs 5x more here (bench/profiles/planning.md)."""
    head = insert_sql[len("INSERT INTO ") : insert_sql.index(" VALUES")]
    # The raw psycopg cursor skips Django's error translation: restore it, so a failure is
    # a django.db IntegrityError or OperationalError (what `deadlocks.retrying` and every
    # `except` around the writes expect) and the connection knows an error occurred.
    with connection.wrap_database_errors, cursor.copy(f"COPY {head} FROM STDIN") as copy:
        for row in params:
            copy.write_row(row)


@dataclass(frozen=True, slots=True)
class _Prepared:
    value: Any


def insert_partitions(run_id: int, rows: Iterable[NewPartition]) -> int:
    """Insert `rows` (at most BATCH: call it once per transaction) as partitions of run
    `run_id`, and add them to their stages' `total` and `pending` counters in the same
    transaction. Returns the rows inserted.

    One prepared INSERT per batch instead of `bulk_create` (SQLite: `executemany`;
    PostgreSQL: `COPY`, see `_copy`): Django's compiler
    prepares every one of the model's 24 columns of every row (and SQLite's 999-parameter
    limit cuts the batch into 41-row statements), which was most of a 100,000-partition
    planning's time (bench/profiles/planning.md). Here the two JSON columns go through the
    field's own `get_db_prep_save` (so PostgreSQL gets jsonb, SQLite JSON text, exactly as
    the ORM writes them), the decided scalars are passed as they are, and every other column
    gets its model default, prepared once per batch (`due_at`: one `now` for the batch).
    """
    sql, sources = _insert_statement()
    fields = {f: Partition._meta.get_field(f) for f in ("inputs", "fingerprints")}
    prep_inputs = fields["inputs"].get_db_prep_save
    prep_fingerprints = fields["fingerprints"].get_db_prep_save
    params: list[tuple[Any, ...]] = []
    added: dict[int, int] = {}
    for row in rows:
        decided = {
            "run_id": run_id,
            "stage_id": row.stage_pk,
            "index": row.index,
            "wave": row.wave,
            "inputs": prep_inputs(row.inputs, connection),
            "fingerprints": prep_fingerprints(row.fingerprints, connection),
            "label": row.label,
            "weight": row.weight,
            "content_id": row.content_id,
            "non_idempotent": row.non_idempotent,
            "ready": row.ready,
        }
        params.append(
            tuple(src.value if isinstance(src, _Prepared) else decided[src] for src in sources)
        )
        added[row.stage_pk] = added.get(row.stage_pk, 0) + 1
    if params:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                _copy(cursor.cursor, sql, params)
            else:
                cursor.executemany(sql, params)
    for stage_pk, n in added.items():
        RunStage.objects.filter(pk=stage_pk).update(total=F("total") + n, pending=F("pending") + n)
    return len(params)


# Rows written by one run (or replay) from which PostgreSQL's statistics of the partition
# table are refreshed before its partitions become claimable.
ANALYZE_AT = BATCH


def refresh_statistics(rows_written: int) -> bool:
    """PostgreSQL: `ANALYZE` the partition table once a run has written `rows_written` ≥
    ANALYZE_AT new rows (in its own transaction, or a savepoint of the caller's); True when
    it ran, False when not asked to or when it failed (logged, never raised).

    Why: until autovacuum gets to it (up to a minute, and only past 10% of the table
    changed), the planner's statistics predate the new pending rows. A statement that
    filters on `state` and a list of ids, as cancelling, stopping and reading claims back
    do, then takes the state index and scans every pending row of the table: measured
    165 ms instead of 2 ms for 2,000 ids (bench/profiles/orchestration.md). ANALYZE samples
    a bounded number of rows (300 times `default_statistics_target`), about a tenth of a
    second, and takes a lock that blocks no reader or writer. SQLite plans without
    statistics."""
    if connection.vendor != "postgresql" or rows_written < ANALYZE_AT:
        return False
    # Best effort: statistics are an optimisation and must never fail or stall a run.
    # SKIP_LOCKED: ANALYZE's lock conflicts with another ANALYZE and with (auto)vacuum of
    # the table, so it would wait behind them; then autovacuum's statistics will do.
    table = connection.ops.quote_name(Partition._meta.db_table)
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"ANALYZE (SKIP_LOCKED) {table}")
    except DatabaseError:
        logger.warning("ANALYZE of %s failed; planner statistics left to autovacuum", table)
        return False
    return True


def write_manifest(
    run_id: int, resolved: ResolvedManifest, owner: str, executors_idempotent: dict[str, bool]
) -> Run:
    """Write `resolved` as the run's stages and partitions and move it to `running`.

    The first transaction writes the stage rows (counters at 0) and the expected total
    (`Run.partition_total`, the progress the pages show); then partitions go in batches of
    `BATCH`, each transaction adding its rows to the stage counters; the last batch's
    transaction also sets the run's digest, moves it to `running` and starts its first stages
    (`progress.advance_run`, which wakes drainers after the commit). Every transaction renews
    the lease and checks the run is still `partitioning` (PartitioningLost otherwise, and
    what was written stays for the next worker's `discard_partial` or the abort's record).
    `executors_idempotent`: executor name → whether it is idempotent (the registry's word).
    """
    with transaction.atomic():
        run = _fenced(run_id, owner)
        stages: dict[str, RunStage] = {}
        for rs in resolved.stages:
            stage = _stage_row(run, rs, executors_idempotent)
            stage.save()
            stages[rs.stage_id] = stage
        Run.objects.filter(pk=run_id).update(partition_total=resolved.partition_count)
    rows = _rows(resolved, stages)
    batch: list[NewPartition] = []
    last = False
    while not last:
        batch = []
        for row in rows:
            batch.append(row)
            if len(batch) >= BATCH:
                break
        # The generator is exhausted when it gave fewer than BATCH rows; an exact multiple
        # ends with one empty batch, which is the switch alone.
        last = len(batch) < BATCH
        if last:
            # Before the switch that wakes drainers: their claims are planned on these.
            refresh_statistics(resolved.partition_count - len(batch))
        with transaction.atomic():
            run = _fenced(run_id, owner)
            if batch:
                insert_partitions(run_id, batch)
            if last:
                Run.objects.filter(pk=run_id).update(digest=resolved.digest)
                run.digest = resolved.digest
                move_run(run, RunState.RUNNING)
                progress.advance_run(run_id)
                audit(
                    actor=None,
                    action="run.partitioned",
                    obj=run,
                    before={"state": RunState.PARTITIONING},
                    after={
                        "state": run.state,
                        "digest": resolved.digest,
                        "partitions": resolved.partition_count,
                    },
                )
    return run


def fail_partitioning(run_id: int, owner: str, error: dict[str, Any]) -> Run | None:
    """Fail a `partitioning` run with `error` (`{"code", "message", ...}`: shown on the run
    page and in the API); partial rows are deleted first, so a failed run holds none. Returns
    the run, or None when the lease was lost or the run left `partitioning` meanwhile."""
    try:
        discard_partial(run_id, owner)
        with transaction.atomic():
            run = _fenced(run_id, owner)
            Run.objects.filter(pk=run_id).update(error=error)
            run.error = error
            move_run(run, RunState.FAILED)
            audit(
                actor=None,
                action="run.failed",
                obj=run,
                before={"state": RunState.PARTITIONING},
                after={"state": run.state},
                detail={"error": {k: v for k, v in error.items() if k != "diff"}},
            )
        return run
    except PartitioningLost:
        return None


def stuck_partitioning() -> list[int]:
    """Ids of runs in `partitioning` that no live worker holds and that are older than
    GRACE: a worker died (or its wake-up was lost); the reconciler sends them again."""
    now = timezone.now()
    held = {
        int(name.split(":", 1)[1])
        for name in Lease.objects.filter(
            name__startswith="partitioning:", expires_at__gte=now
        ).values_list("name", flat=True)
    }
    return [
        pk
        for pk in Run.objects.filter(
            state=RunState.PARTITIONING, created_at__lt=now - GRACE
        ).values_list("pk", flat=True)
        if pk not in held
    ]

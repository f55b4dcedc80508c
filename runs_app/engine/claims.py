"""Claims: a worker takes partitions under a fencing token, in one short transaction.

Claiming bumps each partition's fence; every later write of the claimer (lease renewal,
completion, failure) is a compare-and-swap on (id, fence, state), so a worker that lost its
claim changes nothing (docs/exactly-once.md §5). The stage counters move in the same
transaction as the partitions.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from runs_app.models import ClaimLog, Partition, PartitionState, RunStage

P = PartitionState
# A partition state → the RunStage counter that counts it.
COUNTER = {
    P.PENDING: "pending",
    P.RUNNING: "running",
    P.SUCCEEDED: "succeeded",
    P.FAILED: "failed",
    P.REUSED: "reused",
    P.CANCELLED: "cancelled",
}


@dataclasses.dataclass(frozen=True)
class Claim:
    """One partition this worker holds: writes about it are fenced on `fence`."""

    partition_id: int
    run_id: int
    stage_pk: int
    fence: int
    attempt: int
    owner: str
    non_idempotent: bool = False


def new_owner() -> str:
    """A worker's name for its claims: host, process id and a random suffix, unique per
    drainer (two drainers of one process never share a lease)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lease_delta() -> timedelta:
    """How long a claim or a renewal holds a partition (HXO_LEASE_MS)."""
    return timedelta(milliseconds=settings.HXO_LEASE_MS)


def count_moves(stage_pk: int, moves: dict[str, int]) -> None:
    """Apply counter deltas ({"pending": -1, "running": +1}) to a stage in one UPDATE."""
    updates = {name: F(name) + delta for name, delta in moves.items() if delta}
    if updates:
        RunStage.objects.filter(pk=stage_pk).update(**updates)


# Raw SQL on the hot paths (claims, completions) names the table itself.
TABLE = Partition._meta.db_table


def prep_dt(value: Any) -> Any:
    """A datetime as the database driver takes it in raw SQL."""
    return Partition._meta.get_field("started_at").get_db_prep_save(value, connection)


def prep_json(field: str, value: Any) -> Any:
    """A JSON field's value as the database driver takes it in raw SQL."""
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
        expires, started = prep_dt(now + lease_delta()), prep_dt(now)
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
            count_moves(stage_pk, {"pending": -n, "running": n})
        with connection.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {ClaimLog._meta.db_table} (partition_id, fence, owner, claimed_at)"
                " VALUES (%s, %s, %s, %s)",
                [(c.partition_id, c.fence, owner, started) for c in claims],
            )
    return claims


def has_claimable(run_id: int, *, due_within_s: float = 0) -> bool:
    """Whether a ready pending partition of the run falls due within `due_within_s` seconds."""
    horizon = timezone.now() + timedelta(seconds=due_within_s)
    return Partition.objects.filter(
        run_id=run_id, ready=True, state=P.PENDING, due_at__lte=horizon
    ).exists()


def next_due(run_id: int) -> Any:
    """When the run's next ready pending partition falls due (a datetime), or None."""
    return (
        Partition.objects.filter(run_id=run_id, ready=True, state=P.PENDING)
        .order_by("due_at")
        .values_list("due_at", flat=True)
        .first()
    )

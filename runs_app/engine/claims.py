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
from django.db import connection, models, transaction
from django.db.models import F
from django.utils import timezone

from runs_app.engine.deadlocks import retrying
from runs_app.models import ClaimLog, Partition, PartitionState, Run, RunStage, RunState

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
    # The partition's weight as its partitioner measured it (bytes, rows, modules...: the
    # unit is the stage's); what `BatchSizer` spreads a batch's time over.
    weight: int = 0


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


def claimable(run_id: int) -> Any:
    """The run's ready pending partitions (a QuerySet), less those of stopped stages
    (`RunStage.stopped_at`: over their failure budget or after a failed dependency, their
    pending partitions are being cancelled in bounded transactions and must not run) and of
    held ones (`RunStage.held_until` in the future: waiting for their target's health).
    One small query for those stages, and no join on the hot path when there are none."""
    qs = Partition.objects.filter(run_id=run_id, ready=True, state=P.PENDING)
    left_out = list(
        RunStage.objects.filter(run_id=run_id)
        .filter(models.Q(stopped_at__isnull=False) | models.Q(held_until__gt=timezone.now()))
        .values_list("pk", flat=True)
    )
    return qs.exclude(stage_id__in=left_out) if left_out else qs


def _held_until(run_id: int) -> Any:
    """The earliest end of a hold on a stage of the run that has pending partitions (a
    datetime), or None: when a drainer should look again."""
    return (
        RunStage.objects.filter(run_id=run_id, held_until__gt=timezone.now(), pending__gt=0)
        .filter(stopped_at__isnull=True)
        .order_by("held_until")
        .values_list("held_until", flat=True)
        .first()
    )


def _owners_in_run(run_id: int) -> set[str]:
    return set(
        Partition.objects.filter(run_id=run_id, state=P.RUNNING)
        .values_list("lease_owner", flat=True)
        .order_by()
        .distinct()
    )


# Below this much estimated work, what is left to claim is taken whole, not shared
# (`BatchSizer.fits`): a claim and a completion cost a few milliseconds each.
SHARE_MIN_S = 0.05


@dataclasses.dataclass
class BatchSizer:
    """How much a drainer's next claim takes: about `target_s` seconds of executor time.

    Two estimates, both learnt from the drainer's own batches (`observe`):
    - `count` partitions per claim, from the seconds per partition of the last batch, within
      `max_batch` (the limit `claim_batch` reads up to). Alone, this sizes partitions of equal
      cost well (no-op partitions: a few hundred per claim) and uneven ones badly: after two
      small packages of a `by_module` stage took 20 ms each, one drainer claimed the twelve
      left, `django.contrib` among them, and the other drainer idled (deploy.prime on Django:
      1.85 s of executing for 1.5 CPU-s on two workers, bench/profiles/prime.md).
    - seconds per unit of weight, per stage (`Partition.weight`: bytes, rows, modules, as the
      stage's partitioner measures it; units differ between stages, so rates are not shared).
      `fits` cuts the rows `claim_batch` read at the first partition that would take the
      batch's estimated time past `target_s`. A weighted partition of a stage not yet seen
      counts as a whole batch: it is claimed first or in the next claim, then its stage has a
      rate. Weightless partitions cost nothing here (the count bounds them).
    - what is left, shared at the end of a run (`fits(share=)`).
    A small partition's fixed cost makes its stage's rate look high, so the estimate errs
    toward smaller batches: one more claim transaction, never an idle worker beside a full
    one. The same idea as GitLab's batched background migrations, which resize their next
    batch from the last one's duration against a target interval.
    """

    target_s: float
    max_batch: int
    count: int = 1
    per_weight: dict[int, float] = dataclasses.field(default_factory=dict)
    # Seconds per partition of the last batch (None before the first).
    per_partition: float | None = None

    def _cost(self, stage_pk: int, weight: int) -> float:
        """Estimated seconds of one partition: by its stage's rate and its weight; a weighted
        partition of a stage not seen yet, a whole batch; a weightless one, the last batch's
        seconds per partition (0 before the first)."""
        if weight > 0:
            rate = self.per_weight.get(stage_pk)
            return self.target_s if rate is None else rate * weight
        return self.per_partition or 0.0

    def fits(self, rows: list[tuple[Any, ...]], *, share: int = 1) -> int:
        """How many of `rows` (claim order; (id, fence, non_idempotent, stage pk, weight))
        the batch takes: at least one of a non-empty list.

        `share` > 1 when `rows` are all that is claimable now (`claim_batch` found fewer
        rows than its limit; on SQLite it reads one row past the limit, so a read that is
        exactly the limit counts too): the batch then also takes at most 1/`share` of
        what is left (by weight, or by count when weightless), so the last partitions are
        spread over `share` drainers instead of ending in one drainer's batch while the
        others idle: guided self-scheduling (Polychronopoulos
        and Kuck, IEEE Trans. Computers 36(12), 1987), which takes ceil(remaining / P) of
        a loop's iterations per grab. Only when what is left is estimated at SHARE_MIN_S or
        more: a tail of quick partitions is over sooner in one batch than in the extra
        claims splitting it would cost."""
        n = len(rows)
        spent = 0.0
        for i, (_, _, _, stage_pk, weight) in enumerate(rows):
            if weight <= 0:
                continue
            cost = self._cost(stage_pk, weight)
            if i and spent + cost > self.target_s:
                n = i
                break
            spent += cost
        if share <= 1 or len(rows) <= 1:
            return n
        if sum(self._cost(row[3], row[4]) for row in rows) < SHARE_MIN_S:
            return n
        weights = [max(row[4], 0) for row in rows]
        left = sum(weights)
        if left <= 0:
            return min(n, -(-len(rows) // share))
        taken = 0
        for i, weight in enumerate(weights[:n]):
            if i and (taken + weight) * share > left:
                return i
            taken += weight
        return n

    def observe(self, held: list[Claim], elapsed_s: float) -> None:
        """Learn from one executed batch: `held` took `elapsed_s` seconds of executor time
        (claims and completions left out: they wait on other hosts, docs/scaling.md)."""
        if not held:
            return
        per = elapsed_s / len(held)
        self.per_partition = per
        self.count = max(1, min(self.max_batch, int(self.target_s / max(per, 1e-4))))
        by_stage: dict[int, int] = {}
        for c in held:
            by_stage[c.stage_pk] = by_stage.get(c.stage_pk, 0) + max(c.weight, 0)
        weighted = {stage_pk: w for stage_pk, w in by_stage.items() if w > 0}
        # A batch of one stage's weighted partitions teaches that stage's rate. A mixed one
        # teaches none: its time cannot be split between stages whose units differ (bytes
        # and modules), and a stage left unknown is claimed one partition at a time until a
        # batch of its own says.
        if len(weighted) == 1:
            [(stage_pk, weight)] = weighted.items()
            self.per_weight[stage_pk] = elapsed_s / weight


class _Refused(Exception):
    """Raised inside a claim's transaction to take its writes back: the run was paused, or
    another drainer claimed within `min_interval_ms`, after this one read the run."""


@dataclasses.dataclass(frozen=True)
class Throttle:
    """What a run allows a claim now (`Run` fields read at each claim, so a pause or a new
    throttle applies to the next claim without restarting anything)."""

    paused: bool
    # Claims only for a running run: an aborted one's pending partitions are cancelled in
    # bounded transactions after the abort (progress.finish_abort), never claimed between.
    running: bool
    concurrency: int  # drainers executing the run at once, within HXO_MAX_CONCURRENCY
    min_interval: timedelta  # least time between two claims of the run
    last_claim_at: Any  # datetime | None

    @classmethod
    def of(cls, run_id: int) -> Throttle | None:
        """The run's throttle, or None when there is no such run."""
        row = (
            Run.objects.filter(pk=run_id)
            .values_list(
                "paused_at", "max_concurrency", "min_interval_ms", "last_claim_at", "state"
            )
            .first()
        )
        if row is None:
            return None
        paused_at, concurrency, interval_ms, last, state = row
        cap = settings.HXO_MAX_CONCURRENCY
        return cls(
            paused=paused_at is not None,
            running=state == RunState.RUNNING,
            concurrency=min(concurrency or cap, cap),
            min_interval=timedelta(milliseconds=interval_ms or 0),
            last_claim_at=last,
        )

    def next_claim_at(self) -> Any:
        """The earliest time the interval allows the next claim (None: any time)."""
        if not self.min_interval or self.last_claim_at is None:
            return None
        return self.last_claim_at + self.min_interval


def claim_batch(
    run_id: int, owner: str, limit: int = 1, sizer: BatchSizer | None = None
) -> list[Claim]:
    """Claim up to `limit` claimable partitions of the run in one short transaction.

    With a `sizer` (a drainer's `BatchSizer`), the batch also stops before the partition
    whose estimated time would take it past the sizer's target: the next partitions in claim
    order are read with their stage and weight, and the batch is their longest prefix that
    fits (never fewer than one).

    The run's live throttle bounds it (`Throttle`, read in the same transaction): a paused
    run claims nothing; at most `concurrency` drainers (the run's `max_concurrency`, within
    HXO_MAX_CONCURRENCY) execute a run at once, each running its claims one after another;
    with `min_interval_ms` a claim takes one partition, and not before that long after the
    run's previous claim. Returns [] when nothing is claimable now, the run is paused, at its
    limit or inside its interval.
    """

    def body() -> list[Claim]:
        try:
            with transaction.atomic():
                return _claim(run_id, owner, limit, sizer)
        except _Refused:
            return []

    return retrying(body, what=f"claiming for run {run_id}")


def _claim(run_id: int, owner: str, limit: int, sizer: BatchSizer | None) -> list[Claim]:
    # Read inside the transaction: on SQLite its IMMEDIATE lock orders this claim wholly
    # before or after a pause, so `now` is after every write that committed before.
    now = timezone.now()
    throttle = Throttle.of(run_id)
    if throttle is None or throttle.paused or not throttle.running:
        return []
    after = throttle.next_claim_at()
    if after is not None and now < after:
        return []
    if throttle.min_interval:
        limit = 1
    owners = _owners_in_run(run_id)
    if owner not in owners and len(owners) >= throttle.concurrency:
        return []
    qs = claimable(run_id).filter(due_at__lte=now).order_by("due_at")
    if connection.vendor == "postgresql":
        # Lock the rows we pick and skip rows other workers hold: claimers never wait on
        # each other. SQLite has no row locks: its IMMEDIATE transaction serialises.
        qs = qs.select_for_update(skip_locked=True, of=("self",))
    # On SQLite a drainer's read takes one row past its limit, to know whether what it sees
    # is all that is claimable now (then it is shared: `BatchSizer.fits`). Not on
    # PostgreSQL: FOR UPDATE SKIP LOCKED would lock that row too, and a claimer beside this
    # one would skip it and claim out of order (a partition behind it first); there, only a
    # read that found fewer rows than its limit is known to be the tail.
    extra = 1 if sizer is not None and connection.vendor != "postgresql" else 0
    read_rows = list(
        qs.values_list("id", "fence", "non_idempotent", "stage_id", "weight")[: limit + extra]
    )
    if not read_rows:
        return []
    if sizer is not None:
        # Shared among the drainers holding the run's partitions now and this one, at least
        # two unless the run allows one: the run's concurrency would split it into more
        # parts than there are workers to take them (HXO_MAX_CONCURRENCY is 4, a host has
        # 2 workers), each part a claim and a completion.
        drainers = min(throttle.concurrency, max(2, len(owners | {owner})))
        share = drainers if len(read_rows) < limit + extra else 1
        read_rows = read_rows[:limit]
        read_rows = read_rows[: sizer.fits(read_rows, share=share)]
    # A non-idempotent partition is claimed alone: one that expires unstarted in a batch
    # would be failed, never retried.
    read_rows = read_rows[:1] if read_rows[0][2] else [r for r in read_rows if not r[2]]
    rows = [(pk, fence, ni) for pk, fence, ni, _, _ in read_rows]
    weights = {pk: weight for pk, _, _, _, weight in read_rows}
    # Compare-and-swap on the fences we read (raw SQL: the ORM's query building would
    # cost more than the statement on this hot path). A row another claimer changed
    # since is left alone; the read-back below keeps only what this owner holds.
    expires, started = prep_dt(now + lease_delta()), prep_dt(now)
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            # One statement for the batch, each row still compared on its own read fence:
            # psycopg's executemany sends one UPDATE per row, a round trip each, which was
            # a third of a drainer's time (bench/profiles/orchestration.md).
            # The expected state is a column of the batch like the fence, not a constant: a
            # constant `state = 'pending'` lets the planner pick the state index (stale
            # statistics on a freshly partitioned table say few rows are pending) and scan
            # every pending row of the table per claim (118 ms instead of 0.5 ms measured).
            cur.execute(
                f"UPDATE {TABLE} AS p SET state = %s, fence = p.fence + 1,"
                " attempts = p.attempts + 1, lease_owner = %s, lease_expires_at = %s,"
                " started_at = %s, finished_at = NULL"
                " FROM unnest(%s::bigint[], %s::bigint[], %s::varchar[]) AS v(id, fence, state)"
                " WHERE p.id = v.id AND p.fence = v.fence AND p.state = v.state",
                [
                    P.RUNNING,
                    owner,
                    expires,
                    started,
                    [pk for pk, _, _ in rows],
                    [f for _, f, _ in rows],
                    [P.PENDING] * len(rows),
                ],
            )
        else:  # SQLite: executemany runs in-process, no round trips to save
            cur.executemany(
                f"UPDATE {TABLE} SET state = %s, fence = fence + 1, attempts = attempts + 1,"
                " lease_owner = %s, lease_expires_at = %s, started_at = %s, finished_at = NULL"
                " WHERE id = %s AND fence = %s AND state = %s",
                [(P.RUNNING, owner, expires, started, pk, f, P.PENDING) for pk, f, _ in rows],
            )
    read = {pk: fence + 1 for pk, fence, _ in rows}
    held = list(
        Partition.objects.filter(pk__in=list(read), lease_owner=owner, state=P.RUNNING).values_list(
            "id", "fence", "stage_id", "attempts", "non_idempotent"
        )
    )
    claims = [
        Claim(pk, run_id, stage_pk, fence, attempts, owner, non_idempotent, weights.get(pk, 0))
        for pk, fence, stage_pk, attempts, non_idempotent in held
        if read.get(pk) == fence
    ]
    if not claims:
        return []
    # The claim log first: it locks no row another claimer wants. The stage counters and the
    # run stamp (rows every claimer and completion of the run updates) come last, in the
    # order completions lock them, so each is held only until the commit just after
    # (docs/scaling.md: the stage row is what one run's claimers queue on).
    log = ClaimLog._meta.db_table
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            cur.execute(
                f"INSERT INTO {log} (partition_id, fence, owner, claimed_at)"
                " SELECT v.id, v.fence, %s, %s FROM unnest(%s::bigint[], %s::bigint[])"
                " AS v(id, fence)",
                [owner, started, [c.partition_id for c in claims], [c.fence for c in claims]],
            )
        else:
            cur.executemany(
                f"INSERT INTO {log} (partition_id, fence, owner, claimed_at)"
                " VALUES (%s, %s, %s, %s)",
                [(c.partition_id, c.fence, owner, started) for c in claims],
            )
    per_stage: dict[int, int] = {}
    for c in claims:
        per_stage[c.stage_pk] = per_stage.get(c.stage_pk, 0) + 1
    for stage_pk in sorted(per_stage):  # stage rows in key order (engine.deadlocks)
        n = per_stage[stage_pk]
        # A compare-and-swap like the run's: a stage stopped (over its failure budget) after
        # this claim read it takes the claim back; `progress.finish_stop` cancels the rest.
        moved = RunStage.objects.filter(pk=stage_pk, stopped_at__isnull=True).update(
            pending=F("pending") - n, running=F("running") + n
        )
        if not moved:
            raise _Refused
    _stamp_run(run_id, now, throttle)
    return claims


def _stamp_run(run_id: int, now: Any, throttle: Throttle) -> None:
    """Record the claim on the run, by a compare-and-swap that also re-checks the state, the
    pause and the interval: an abort, a pause (or another drainer's claim) that committed
    after this claim read the run takes this claim back (`_Refused`).

    Why a write on every claim: on PostgreSQL (READ COMMITTED) the read above may predate an
    abort or a pause committing meanwhile; this UPDATE waits for its row lock and re-reads the
    row, so no claim commits after either. It runs after the partitions and the stage
    counters, the order completions lock them in (partitions, stages, then the run when it
    finishes), so the two never deadlock; whoever writes partitions or stages lets the run's
    row go first (services.run_abort)."""
    qs = Run.objects.filter(pk=run_id, state=RunState.RUNNING, paused_at__isnull=True)
    if throttle.min_interval:
        qs = qs.filter(
            models.Q(last_claim_at__isnull=True)
            | models.Q(last_claim_at__lte=now - throttle.min_interval)
        )
    if not qs.update(last_claim_at=now):
        raise _Refused


def crowded_out(run_id: int, owner: str) -> bool:
    """Whether `owner` may not claim in the run now because as many other drainers hold its
    partitions as its concurrency allows (`Throttle.concurrency`): the refusal `claim_batch`
    makes, read outside its transaction (a drainer asks after an empty claim)."""
    throttle = Throttle.of(run_id)
    if throttle is None:
        return False
    owners = _owners_in_run(run_id)
    return owner not in owners and len(owners) >= throttle.concurrency


def has_claimable(run_id: int, *, due_within_s: float = 0) -> bool:
    """Whether a ready pending partition of the run falls due within `due_within_s` seconds
    (never while the run is paused)."""
    horizon = timezone.now() + timedelta(seconds=due_within_s)
    if Run.objects.filter(pk=run_id, paused_at__isnull=False).exists():
        return False
    return claimable(run_id).filter(due_at__lte=horizon).exists()


def next_due(run_id: int) -> Any:
    """When the run may next claim (a datetime): its next ready pending partition's due
    time, or later when its `min_interval_ms` says so; None when nothing is pending or the
    run is paused (a drainer stops; the resume wakes new ones)."""
    throttle = Throttle.of(run_id)
    if throttle is None or throttle.paused:
        return None
    due = claimable(run_id).order_by("due_at").values_list("due_at", flat=True).first()
    held = _held_until(run_id)
    if held is not None and (due is None or held < due):
        due = held  # a held stage's partitions are claimable again then
    after = throttle.next_claim_at()
    if due is None or after is None:
        return due
    return max(due, after)

"""The engine's tables: they are the truth; the queue only wakes workers (docs/architecture.md,
"The queue only wakes workers")."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone


class RunMode(models.TextChoices):
    DRY_RUN = "dry_run", "Dry-run"
    APPLY = "apply", "Apply"


class RunState(models.TextChoices):
    PENDING = "pending"
    PARTITIONING = "partitioning"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABORTED = "aborted"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    REJECTED = "rejected"


RUN_TERMINAL = {
    RunState.SUCCEEDED,
    RunState.FAILED,
    RunState.ABORTED,
    RunState.APPROVED,
    RunState.REJECTED,
}
# A run in one of these states has finished executing (awaiting_approval included).
RUN_FINISHED = RUN_TERMINAL | {RunState.AWAITING_APPROVAL}
# Not finished yet: may still claim partitions, so an abort applies (the rest of the states
# are RUN_FINISHED).
RUN_ACTIVE = {RunState.PENDING, RunState.PARTITIONING, RunState.RUNNING}
# The state PRODUCT.md's run states name beside `running` ("running (⇄ paused)"): what the API,
# the dashboard and the CLI show for a running run whose pause flag is set (`Run.public_state`).
# It is not a stored state: the engine, the state machine, notifications and /metrics keep
# seeing `running`, so an abort, a resume or a claim of a paused run needs no transition.
PAUSED = "paused"
# Every value `Run.public_state` takes: the filter choices of the API and the dashboard.
RUN_PUBLIC_STATES = [*RunState.values[:3], PAUSED, *RunState.values[3:]]
# Finished executing without waiting on a decision: a replay may start from these.
RUN_REPLAYABLE = {RunState.SUCCEEDED, RunState.FAILED, RunState.ABORTED}
# Ended without the change it asked for (the CLI's exit status).
RUN_UNSUCCESSFUL = {RunState.FAILED, RunState.ABORTED, RunState.REJECTED}


class StageState(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


STAGE_TERMINAL = {StageState.SUCCEEDED, StageState.FAILED, StageState.CANCELLED}
# Ended without success: the stages that depend on it are cancelled.
STAGE_UNSUCCESSFUL = {StageState.FAILED, StageState.CANCELLED}


class PartitionState(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REUSED = "reused"
    CANCELLED = "cancelled"


PARTITION_ACTIVE = {PartitionState.PENDING, PartitionState.RUNNING}
PARTITION_DONE = {PartitionState.SUCCEEDED, PartitionState.REUSED}
# What a completion records: a result, or a failure (cancellation is not a completion).
PARTITION_COMPLETED = PARTITION_DONE | {PartitionState.FAILED}
# Ended without a result: what a replay runs again.
PARTITION_REDO = {PartitionState.FAILED, PartitionState.CANCELLED}
PARTITION_TERMINAL = PARTITION_DONE | PARTITION_REDO


class Plan(models.Model):
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # The number of the newest revision; bumped under a row lock so that concurrent edits
    # become ordered revisions.
    latest_number = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-updated_at", "-id"]

    def __str__(self) -> str:
        return self.name

    @property
    def latest_revision(self) -> PlanRevision:
        return self.revisions.get(number=self.latest_number)


class PlanRevision(models.Model):
    """An immutable saved version of a plan document."""

    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="revisions")
    number = models.PositiveIntegerField()
    document = models.JSONField()
    digest = models.CharField(max_length=64)
    # kind → version the document was validated against.
    kind_versions = models.JSONField(default=dict)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    comment = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["plan", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "number"], name="revision_unique_number")
        ]

    def __str__(self) -> str:
        return f"{self.plan_id}#{self.number}"

    @property
    def stages(self) -> list[dict[str, Any]]:
        return list(self.document.get("stages", []))


class Run(models.Model):
    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="runs")
    revision = models.ForeignKey(PlanRevision, on_delete=models.PROTECT, related_name="runs")
    mode = models.CharField(max_length=10, choices=RunMode.choices)
    state = models.CharField(max_length=20, choices=RunState.choices, default=RunState.PENDING)
    digest = models.CharField(max_length=64, blank=True, default="")
    # kind → JobKind.snapshot() at run start: what the run was validated and executed under.
    kind_snapshots = models.JSONField(default=dict)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replays"
    )
    # For an apply: the approved dry-run it executes.
    dry_run = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="applies"
    )
    # For an apply that is not a replay: the dry-run whose approval it consumed, the root of
    # the named dry-run's replay lineage. Unique: one approval, one apply (runs_app.policies).
    consumed_dry_run = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="consumed_by"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)
    # services.request_fingerprint of the request the key was first used with: the same key
    # with another request is refused, never answered with this run.
    idempotency_fingerprint = models.CharField(max_length=64, blank=True, default="")
    force_rerun = models.BooleanField(default=False)
    required_approvals = models.PositiveSmallIntegerField(default=1)
    merkle_root = models.CharField(max_length=64, blank=True, default="")
    slo_breached = models.BooleanField(default=False)
    # Why the run failed before any partition ran (`{"code", "message", ...}`: a partitioning
    # error, or `stale_plan` with its `diff`), shown on the run page and in the API.
    error = models.JSONField(null=True, blank=True)
    # Partitions the manifest resolved to, set by the worker that writes them (null until
    # then): with the stages' totals, the progress of a run in `partitioning`.
    partition_total = models.PositiveIntegerField(null=True, blank=True)
    # Pause (a flag beside the state, not a state: a paused run is still `running` to the
    # state machine, the notifications and the metrics; it only claims nothing new). Set
    # while paused; `pauses` keeps every interval, [{"from": iso, "to": iso | None, "by"}],
    # so that SLO clocks can leave paused time out (`paused_ms_between`).
    paused_at = models.DateTimeField(null=True, blank=True)
    pauses = models.JSONField(default=list, blank=True)
    # Live throttle, read by every claim (runs_app.engine.claims.claim_batch): drainers
    # executing the run at once (null: HXO_MAX_CONCURRENCY, which also caps it), and the
    # least time between two claims of the run (0: none).
    max_concurrency = models.PositiveSmallIntegerField(null=True, blank=True)
    min_interval_ms = models.PositiveIntegerField(default=0)
    # When a partition of the run was last claimed: what `min_interval_ms` is measured from.
    last_claim_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(state__in=RunState.values), name="run_state_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(max_concurrency__isnull=True) | models.Q(max_concurrency__gte=1),
                name="run_max_concurrency_positive",
            ),
            models.UniqueConstraint(
                fields=["requested_by", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="run_unique_idempotency_key",
            ),
            # One approval, one apply: concurrent applies of one approved dry-run meet here.
            models.UniqueConstraint(
                fields=["consumed_dry_run"],
                condition=models.Q(consumed_dry_run__isnull=False),
                name="run_one_apply_per_approval",
            ),
            # One replay per run: a replay that failed again is itself replayed.
            models.UniqueConstraint(
                fields=["parent"],
                condition=models.Q(parent__isnull=False),
                name="run_one_replay_per_run",
            ),
        ]
        indexes = [models.Index(fields=["plan", "mode", "state"])]

    def __str__(self) -> str:
        return f"run {self.pk} ({self.mode}, {self.state})"

    @property
    def is_finished(self) -> bool:
        return self.state in RUN_FINISHED

    @property
    def requires_approval(self) -> bool:
        """Whether a kind of this run, as pinned when it started (`kind_snapshots`), requires
        a reviewed dry-run: such a dry-run ends `awaiting_approval` instead of `succeeded`,
        and an apply from it needs its approval."""
        return any(snap.get("require_dry_run") for snap in self.kind_snapshots.values())

    @property
    def is_paused(self) -> bool:
        return self.paused_at is not None

    @property
    def public_state(self) -> str:
        """The run's state as PRODUCT.md names it: `paused` for a `running` run whose pause
        flag is set, else the stored state. A run paused while `pending` or `partitioning`
        shows that state (it turns `paused` once it is running), with `paused: true`."""
        if self.state == RunState.RUNNING and self.paused_at is not None:
            return PAUSED
        return self.state

    def paused_ms_between(self, start: dt.datetime, end: dt.datetime | None = None) -> int:
        """Milliseconds of [start, end) (end: now) the run spent paused, from `pauses`; an
        open interval (the run is paused now) counts up to `end`. What SLO clocks subtract
        (the idea: GitLab's batched migrations and Shopify's maintenance_tasks report the
        time a paused job did not run apart from its runtime)."""
        end = end or timezone.now()
        total = 0.0
        for interval in self.pauses or []:
            lo = max(start, dt.datetime.fromisoformat(interval["from"]))
            hi = min(end, dt.datetime.fromisoformat(interval["to"]) if interval["to"] else end)
            if hi > lo:
                total += (hi - lo).total_seconds()
        return int(total * 1000)

    def pauses_closed(self, now: dt.datetime) -> list[dict[str, Any]]:
        """`pauses` with the open interval (if any) ended at `now`: what a resume, an abort
        or the end of the run stores."""
        return [
            {**interval, "to": interval["to"] or now.isoformat()} for interval in self.pauses or []
        ]


class RunStage(models.Model):
    """A stage of a run, with counters kept in the same transactions as partition moves so
    that progress costs one indexed read whatever the number of partitions."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="run_stages")
    stage_id = models.CharField(max_length=100)
    position = models.PositiveIntegerField()
    kind = models.CharField(max_length=100)
    kind_version = models.PositiveIntegerField(default=1)
    partitioner = models.CharField(max_length=100)
    executor = models.CharField(max_length=100)
    depends_on = models.JSONField(default=list)
    params = models.JSONField(default=dict)
    non_idempotent = models.BooleanField(default=False)
    max_failed_partitions = models.PositiveIntegerField(default=0)
    slo_ms = models.PositiveIntegerField()
    state = models.CharField(max_length=20, choices=StageState.choices, default=StageState.PENDING)
    # Stage-level data the partitioner pinned (file lists, statements...).
    manifest = models.JSONField(default=dict)
    content_root = models.CharField(max_length=64, blank=True, default="")
    current_wave = models.IntegerField(default=-1)
    max_wave = models.IntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    pending = models.IntegerField(default=0)
    running = models.IntegerField(default=0)
    succeeded = models.IntegerField(default=0)
    failed = models.IntegerField(default=0)
    reused = models.IntegerField(default=0)
    cancelled = models.IntegerField(default=0)
    weight = models.BigIntegerField(default=0)
    merkle_root = models.CharField(max_length=64, blank=True, default="")
    slo_breached = models.BooleanField(default=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When the stage was stopped with more pending partitions than one transaction cancels
    # (over its failure budget, or a dependency failed): from then on nothing of it is
    # claimed, and a worker cancels the rest in bounded transactions (progress.finish_stop).
    stopped_at = models.DateTimeField(null=True, blank=True)
    # While the stage waits for its target to be healthy (runs_app.engine.health):
    # {"reason", "since" (ISO 8601), "target", "checks": [...], "retry_after_ms"}; null when
    # it does not wait. Written on enter, cleared when a partition passes the gate again.
    health_wait = models.JSONField(null=True, blank=True, default=None)
    # Until when nothing of the stage is claimed (a health wait's next check): one row,
    # read by `claims.claimable`, instead of moving every pending partition's `due_at`.
    held_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "position"]
        constraints = [
            models.UniqueConstraint(fields=["run", "stage_id"], name="runstage_unique_id"),
            models.CheckConstraint(
                condition=models.Q(state__in=StageState.values), name="runstage_state_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(
                    pending__gte=0,
                    running__gte=0,
                    succeeded__gte=0,
                    failed__gte=0,
                    reused__gte=0,
                    cancelled__gte=0,
                ),
                name="runstage_counts_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.run_id}/{self.stage_id}"

    def active_ms(self) -> int | None:
        """Milliseconds the stage has run (start to finish, or to now), less the time its
        run was paused meanwhile (`Run.paused_ms_between`): what its SLO is measured on.
        None before it started. Reads `self.run` (one query unless it is loaded)."""
        if self.started_at is None:
            return None
        end = self.finished_at or timezone.now()
        wall = int((end - self.started_at).total_seconds() * 1000)
        return max(0, wall - self.run.paused_ms_between(self.started_at, end))

    @property
    def counts(self) -> dict[str, int]:
        return {
            "total": self.total,
            "pending": self.pending,
            "running": self.running,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "reused": self.reused,
            "cancelled": self.cancelled,
        }


class Partition(models.Model):
    # No single-column indexes on `run` and `stage`: the composite indexes below start with
    # them and serve every lookup by either alone. Each index is written again by every
    # non-HOT update (a claim and a completion change `state`, which is indexed), so a
    # redundant one costs every partition's claim and completion, not only its insert.
    run = models.ForeignKey(
        Run, on_delete=models.CASCADE, related_name="partitions", db_index=False
    )
    stage = models.ForeignKey(
        RunStage, on_delete=models.CASCADE, related_name="partitions", db_index=False
    )
    index = models.PositiveIntegerField()
    wave = models.IntegerField(default=0)
    # Claimable only when its stage runs and its wave has been reached.
    ready = models.BooleanField(default=False)
    inputs = models.JSONField()
    fingerprints = models.JSONField(default=dict)
    label = models.CharField(max_length=300, blank=True, default="")
    weight = models.BigIntegerField(default=0)
    # Indexed in Meta (equality only: reuse looks content ids up), not by db_index, which on
    # PostgreSQL also builds a `varchar_pattern_ops` index for LIKE that nothing queries.
    content_id = models.CharField(max_length=64)
    non_idempotent = models.BooleanField(default=False)
    state = models.CharField(
        max_length=20, choices=PartitionState.choices, default=PartitionState.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    fence = models.PositiveBigIntegerField(default=0)
    lease_owner = models.CharField(max_length=200, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # Not before this time (retry backoff); never null so the claim index orders by it.
    due_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    preview = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    reused_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["stage_id", "index"]
        constraints = [
            models.UniqueConstraint(fields=["stage", "index"], name="partition_unique_index"),
            models.CheckConstraint(
                condition=models.Q(state__in=PartitionState.values), name="partition_state_valid"
            ),
        ]
        indexes = [
            # The claim query: claimable partitions of one run.
            models.Index(fields=["run", "ready", "state", "due_at"], name="partition_claim"),
            # Lease expiry scans by the reconciler.
            models.Index(fields=["state", "lease_expires_at"], name="partition_lease"),
            # Partition table filters.
            models.Index(fields=["run", "stage", "state", "index"], name="partition_filter"),
            models.Index(fields=["stage", "wave", "state"], name="partition_wave"),
            # Reuse: an earlier partition with the same content id (engine.execute).
            models.Index(fields=["content_id"], name="partition_content_id"),
        ]

    def __str__(self) -> str:
        return f"{self.stage_id}[{self.index}]"


# The bounds of a partition's log (`PartitionLog`): what a page and an API answer can carry
# whatever an executor prints. The newest lines are kept (the end of a log says why it
# failed); the oldest are dropped first.
PARTITION_LOG_MAX_LINES = 200
PARTITION_LOG_MAX_BYTES = 64 * 1024


class PartitionLog(models.Model):
    """What an executor logged while it ran a partition (Python logging records of the worker
    thread during `engine.execute.execute_one`, tracebacks of unexpected errors included), one
    row per partition, every attempt appended under a header line, bounded to the last
    PARTITION_LOG_MAX_LINES lines and PARTITION_LOG_MAX_BYTES bytes of UTF-8. Kept apart from
    `Partition` so the claim and progress queries never read it; no row when nothing logged."""

    partition = models.OneToOneField(
        Partition, on_delete=models.CASCADE, primary_key=True, related_name="log"
    )
    # Lines joined by "\n", each "<ISO-8601 UTC time> <LEVEL> <logger>: <message>"; a
    # traceback's lines follow its record's line.
    text = models.TextField(default="", blank=True)
    # Lines dropped (the oldest) to keep within the bounds, over every attempt.
    dropped_lines = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"log of partition {self.partition_id}"

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n") if self.text else []


class ClaimLog(models.Model):
    """Every claim with its fence: the history that shows no partition was claimed twice."""

    partition = models.ForeignKey(Partition, on_delete=models.CASCADE, related_name="claims")
    fence = models.PositiveBigIntegerField()
    owner = models.CharField(max_length=200)
    claimed_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["partition", "fence"], name="claim_unique_fence")
        ]

    def __str__(self) -> str:
        return f"{self.partition_id}@{self.fence}"


class Approval(models.Model):
    class Decision(models.TextChoices):
        APPROVE = "approve"
        REJECT = "reject"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="approvals")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decision = models.CharField(max_length=10, choices=Decision.choices)
    comment = models.TextField(blank=True, default="")
    # The dry-run digest the decision was made on; an approval never covers another digest.
    digest = models.CharField(max_length=64)
    # The high-severity findings (runs_app.sqllint) the approver acknowledged, as
    # {"stage", "path", "rule"}; empty when there were none or the kind needs no ack.
    acknowledged_findings = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["run", "user"], name="approval_one_per_user")
        ]

    def __str__(self) -> str:
        return f"{self.decision} of run {self.run_id}"


class Lease(models.Model):
    """A named lease (the reconciler's), taken with compare-and-swap so two never overlap."""

    name = models.CharField(max_length=100, primary_key=True)
    owner = models.CharField(max_length=200, blank=True, default="")
    expires_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.name

"""Reads that span models: run progress, receipts, run diffs, review totals.

Views, the API and the CLI share these so a page and its endpoint never disagree, and so
query counts stay flat whatever the number of partitions (counters live on RunStage).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db.models import (
    BigIntegerField,
    Case,
    Count,
    F,
    Max,
    Min,
    Prefetch,
    Q,
    QuerySet,
    Sum,
    TextField,
    Value,
    When,
    prefetch_related_objects,
)
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce, Concat
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from blueprints_app.registry import ComponentError, describe_weight
from hxo_site.models import AuditEvent
from runs_app import hashing, sqllint
from runs_app.engine.receipts import check_effects, stage_leaves
from runs_app.kinds.base import resolve_params
from runs_app.kinds.migrate import BySqlBatch
from runs_app.models import (
    PAUSED,
    Partition,
    PartitionLog,
    PartitionState,
    Plan,
    PlanRevision,
    Run,
    RunMode,
    RunStage,
    RunState,
)
from runs_app.models.engine import PARTITION_LOG_MAX_BYTES, PARTITION_LOG_MAX_LINES
from runs_app.targets import get_target


def run_with_stages(run_id: int) -> Run:
    return (
        Run.objects.select_related("plan", "revision", "requested_by", "parent", "dry_run")
        .prefetch_related("run_stages", "approvals__user")
        .get(pk=run_id)
    )


def partitioning_progress(run: Run, stages: Iterable[RunStage]) -> dict[str, Any] | None:
    """How far the worker partitioning `run` got: `{"written", "total", "percent"}`, where
    `written` is the partitions stored so far (the stages' totals, which each batch's
    transaction raises) and `total` what the manifest resolved to (null while the worker is
    still resolving it); None when the run is not `partitioning`. `stages`: the run's stage
    rows the caller already has (no query here)."""
    if run.state != RunState.PARTITIONING:
        return None
    written = sum(s.total for s in stages)
    total = run.partition_total
    percent = int(100 * written / total) if total else 0
    return {"written": written, "total": total, "percent": min(percent, 100)}


def stage_elapsed_ms(stage: RunStage) -> int | None:
    """The stage's SLO clock in ms: its running time less the time its run was paused
    (`RunStage.active_ms`), None before it started."""
    return stage.active_ms()


def run_control(run: Run) -> dict[str, Any]:
    """A run's pause and throttle as the run page and the API show them (no query):
    {"paused": bool, "paused_at": datetime | None, "paused_ms": total ms paused so far
    (the open interval counted to now), "pauses": [{"from", "to", "by"}],
    "throttle": {"concurrency": the run's setting or None, "effective_concurrency": what
    claims obey (capped by HXO_MAX_CONCURRENCY), "max_concurrency": that cap,
    "min_interval_ms": int}}."""
    cap = settings.HXO_MAX_CONCURRENCY
    start = run.created_at or timezone.now()
    return {
        "paused": run.is_paused,
        "paused_at": run.paused_at,
        "paused_ms": run.paused_ms_between(start) if run.pauses else 0,
        "pauses": list(run.pauses or []),
        "throttle": {
            "concurrency": run.max_concurrency,
            "effective_concurrency": min(run.max_concurrency or cap, cap),
            "max_concurrency": cap,
            "min_interval_ms": run.min_interval_ms,
        },
    }


def stage_errors(stages: Iterable[RunStage]) -> dict[int, list[dict[str, Any]]]:
    """Why the stages' partitions failed, grouped per stage by error code, in one grouped
    query (none when no stage counts a failure): RunStage pk → [{"code", "count",
    "permanent", "example"}], most frequent first, where `example` is one of the messages
    (the smallest) and `permanent` whether any of them was permanent (failed at once, not
    retried). Stages without failed partitions are absent."""
    failing = [s.pk for s in stages if s.failed]
    if not failing:
        return {}
    rows = (
        Partition.objects.filter(stage_id__in=failing, state=PartitionState.FAILED)
        .annotate(
            code=KT("error__code"), message=KT("error__message"), permanent=KT("error__permanent")
        )
        .values("stage_id", "code")
        .annotate(count=Count("id"), example=Min("message"), any_permanent=Max("permanent"))
        .order_by("stage_id", "-count", "code")
    )
    out: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["stage_id"], []).append(
            {
                "code": row["code"] or "unknown",
                "count": row["count"],
                # JSON true reads as 1 on SQLite and as the text 'true' on PostgreSQL.
                "permanent": row["any_permanent"] in (1, True, "1", "true"),
                "example": (row["example"] or "")[:500],
            }
        )
    return out


def partition_log(partition: Partition) -> dict[str, Any]:
    """A partition's log as the API and its page show it: `{"run", "stage", "index",
    "partition", "state", "attempts", "lines": [str], "dropped_lines", "max_lines",
    "max_bytes", "updated_at"}`; `lines` is empty (and `updated_at` null) when the executor
    logged nothing. Each line is "<UTC time> <LEVEL> <logger>: <message>" or a traceback's
    line; `dropped_lines` counts the oldest lines the bounds let go. One query."""
    row = PartitionLog.objects.filter(partition_id=partition.pk).first()
    return {
        "run": partition.run_id,
        "stage": partition.stage.stage_id,
        "index": partition.index,
        "partition": partition.pk,
        "state": partition.state,
        "attempts": partition.attempts,
        "lines": row.lines if row else [],
        "dropped_lines": row.dropped_lines if row else 0,
        "max_lines": PARTITION_LOG_MAX_LINES,
        "max_bytes": PARTITION_LOG_MAX_BYTES,
        "updated_at": row.updated_at if row else None,
    }


def stage_progress(stage: RunStage, errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One stage's progress as the run page and the API show it; `errors`: the stage's entry
    of `stage_errors` (failed partitions grouped by error code), [] when not given."""
    elapsed = stage_elapsed_ms(stage)
    done = stage.succeeded + stage.failed + stage.reused + stage.cancelled
    return {
        "id": stage.stage_id,
        "kind": stage.kind,
        "kind_version": stage.kind_version,
        "partitioner": stage.partitioner,
        "executor": stage.executor,
        "depends_on": stage.depends_on,
        "state": stage.state,
        "counts": stage.counts,
        "percent": int(100 * done / stage.total) if stage.total else 100,
        "weight": stage.weight,
        "weight_label": describe_weight(stage.partitioner, stage.weight, stage.params),
        "started_at": stage.started_at,
        "finished_at": stage.finished_at,
        "elapsed_ms": elapsed,
        "slo_ms": stage.slo_ms,
        # Live: a running stage past its SLO is breached before it ends.
        "slo_breached": stage.slo_breached or (elapsed is not None and elapsed > stage.slo_ms),
        "merkle_root": stage.merkle_root,
        "non_idempotent": stage.non_idempotent,
        "errors_by_code": errors or [],
        # While the stage waits for its target's health checks (engine.health): the reason,
        # since when, the checks that failed; None otherwise (a stage that ended while it
        # waited, aborted say, waits no more).
        "health_wait": stage.health_wait if stage.state == "running" else None,
    }


def run_totals(run: Run) -> dict[str, int]:
    totals: dict[str, int] = {}
    for stage in run.run_stages.all():
        for name, value in stage.counts.items():
            totals[name] = totals.get(name, 0) + value
    return totals


class CountedRows:
    """A queryset whose count comes from the stage counters: a paginator over 100,000
    partitions then costs one indexed page read, not a COUNT(*) over the run."""

    ordered = True

    def __init__(self, qs: QuerySet[Partition], total: int) -> None:
        self.qs = qs
        self.total = total

    def count(self) -> int:
        return self.total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, key: Any) -> Any:
        return self.qs[key]

    def __iter__(self) -> Any:
        return iter(self.qs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.qs, name)


def partitions_of(run: Run, *, stage: str | None = None, state: str | None = None) -> CountedRows:
    """A run's partitions in stage order, then index, optionally of one stage and state.

    Filtering on the run's stage ids and ordering by (stage, index) walks the
    (stage, index) unique index in order; ordering through the stage's position would sort
    every partition of the run. Stage rows are created in position order, so their ids are
    in that order too.
    """
    stages = sorted(run.run_stages.all(), key=lambda s: s.position)
    if stage:
        stages = [s for s in stages if s.stage_id == stage]
    qs = Partition.objects.filter(stage_id__in=[s.pk for s in stages]).select_related("stage")
    if state:
        qs = qs.filter(state=state)
    total = sum(getattr(s, state) if state else s.total for s in stages)
    return CountedRows(qs.order_by("stage_id", "index"), total)


def receipt(run: Run, *, thorough: bool = False) -> dict[str, Any]:
    """Recompute every Merkle root from the stored results and compare with the recorded
    ones, then ask each executor whether every recorded effect is still there
    (`runs_app.engine.receipts.check_effects`, bounded by HXO_RECEIPT_EFFECTS_BUDGET_S seconds).

    `verified` is True only when both hold: `merkle_verified` (the stored results are those
    the run recorded) and every effect was checked and found (`effects`). An effect check
    cut short by the time budget cannot vouch: `effects.complete` is False and `verified`
    is False. `thorough` makes executors hash every byte instead of trusting files whose
    stat identity is unchanged since they were written (docs/exactly-once.md §2)."""
    stages = []
    verified = bool(run.merkle_root)
    roots = []
    for stage in run.run_stages.all().order_by("position"):
        leaves = stage_leaves(stage)
        root = hashing.merkle_root(leaves)
        ok = root == stage.merkle_root
        verified = verified and ok
        roots.append(root)
        stages.append(
            {
                "id": stage.stage_id,
                "root": root,
                "recorded_root": stage.merkle_root,
                "verified": ok,
                "leaves": leaves,
            }
        )
    merkle_root = hashing.merkle_root(roots) if roots else ""
    merkle_verified = verified and merkle_root == run.merkle_root
    effects = check_effects(run, thorough=thorough, budget_s=settings.HXO_RECEIPT_EFFECTS_BUDGET_S)
    return {
        "run": run.pk,
        "merkle_root": merkle_root,
        "recorded_merkle_root": run.merkle_root,
        "stages": stages,
        "verified": merkle_verified and effects["complete"] and effects["missing"] == 0,
        "merkle_verified": merkle_verified,
        "effects": effects,
    }


MAX_DIFF_ROWS = 200


def diff_runs(run: Run, against: Run) -> dict[str, Any]:
    """Manifest and result differences between two runs, stage by stage, by partition index."""
    mine = {s.stage_id: s for s in run.run_stages.all()}
    theirs = {s.stage_id: s for s in against.run_stages.all()}
    out: dict[str, Any] = {
        "run": run.pk,
        "against": against.pk,
        "same_digest": run.digest == against.digest,
        "revision": {"run": run.revision.number, "against": against.revision.number},
        "stages": [],
    }
    for sid in sorted(set(mine) | set(theirs)):
        if sid not in theirs:
            out["stages"].append({"id": sid, "change": "added"})
            continue
        if sid not in mine:
            out["stages"].append({"id": sid, "change": "removed"})
            continue
        a = {
            row[0]: row[1:]
            for row in Partition.objects.filter(stage=mine[sid]).values_list(
                "index", "content_id", "inputs", "fingerprints", "output", "state"
            )
        }
        b = {
            row[0]: row[1:]
            for row in Partition.objects.filter(stage=theirs[sid]).values_list(
                "index", "content_id", "inputs", "fingerprints", "output", "state"
            )
        }
        changed = []
        for index in sorted(set(a) | set(b)):
            if index not in a or index not in b:
                changed.append({"index": index, "change": "added" if index in a else "removed"})
            else:
                (cid_a, in_a, fp_a, out_a, st_a), (cid_b, in_b, fp_b, out_b, st_b) = (
                    a[index],
                    b[index],
                )
                item: dict[str, Any] = {}
                if cid_a != cid_b:
                    # "cas_id": the API's name for the content id (clients rely on it).
                    item["cas_id"] = {"run": cid_a, "against": cid_b}
                if in_a != in_b:
                    item["inputs"] = {"run": in_a, "against": in_b}
                if fp_a != fp_b:
                    item["fingerprints"] = sorted(
                        k for k in set(fp_a) | set(fp_b) if fp_a.get(k) != fp_b.get(k)
                    )
                if out_a != out_b:
                    item["output"] = {"run": out_a, "against": out_b}
                if st_a != st_b:
                    item["state"] = {"run": st_a, "against": st_b}
                if item:
                    changed.append({"index": index, "change": "changed", **item})
            if len(changed) >= MAX_DIFF_ROWS:
                break
        entry = {
            "id": sid,
            "change": "changed" if changed else "same",
            "partitions": {"run": len(a), "against": len(b)},
            "changed_partitions": changed,
        }
        out["stages"].append(entry)
    return out


# --- Dashboard reads (the HTML views) -------------------------------------------------------
# Appended for runs_app.views; every one costs a fixed number of queries whatever the number
# of partitions, so the run page and its partials stay flat (tests/runs_app/views).

TIMELINE_MAX_BARS = 120  # partitions drawn per stage; bigger stages are sampled evenly


@dataclasses.dataclass
class TimelineBar:
    index: int
    label: str
    state: str
    attempts: int
    start_ms: int
    end_ms: int


@dataclasses.dataclass
class TimelineStage:
    stage_id: str
    state: str
    total: int
    slo_ms: int
    start_ms: int | None
    end_ms: int | None
    bars: list[TimelineBar]
    sampled: bool  # True when only every `step`-th partition is drawn
    step: int


@dataclasses.dataclass
class Timeline:
    span_ms: int
    stages: list[TimelineStage]

    @property
    def empty(self) -> bool:
        return not any(s.bars or s.start_ms is not None for s in self.stages)


def run_timeline(run: Run, *, max_bars: int = TIMELINE_MAX_BARS) -> Timeline:
    """Partitions per stage on one time axis, for the Gantt chart: two queries at most.

    A stage with more than `max_bars` partitions is sampled (every n-th by index), so the
    rows read and the SVG drawn are bounded; the stage's own span is always exact.
    """
    stages = sorted(run.run_stages.all(), key=lambda s: s.position)
    now = timezone.now()
    starts = [s.started_at for s in stages if s.started_at is not None]
    origin = min(starts) if starts else (run.started_at or run.created_at)

    def ms(value: Any) -> int:
        return max(0, int(((value or now) - origin).total_seconds() * 1000))

    condition = Q()
    steps: dict[int, int] = {}
    for s in stages:
        if s.started_at is None or not s.total:
            continue
        step = max(1, math.ceil(s.total / max_bars))
        steps[s.pk] = step
        if step == 1:
            condition |= Q(stage_id=s.pk)
        else:
            condition |= Q(stage_id=s.pk, index__in=list(range(0, s.total, step)))
    bars: dict[int, list[TimelineBar]] = {pk: [] for pk in steps}
    if steps:
        rows = (
            Partition.objects.filter(run=run, started_at__isnull=False)
            .filter(condition)
            .order_by("stage_id", "index")
            .values_list(
                "stage_id", "index", "label", "state", "attempts", "started_at", "finished_at"
            )
        )
        for stage_pk, index, label, state, attempts, started, finished in rows:
            bars[stage_pk].append(
                TimelineBar(index, label, state, attempts, ms(started), ms(finished))
            )
    out = []
    span = 0
    for s in stages:
        start = ms(s.started_at) if s.started_at else None
        end = ms(s.finished_at) if s.started_at else None
        drawn = bars.get(s.pk, [])
        span = max([span, end or 0, *(b.end_ms for b in drawn)])
        out.append(
            TimelineStage(
                stage_id=s.stage_id,
                state=s.state,
                total=s.total,
                slo_ms=s.slo_ms,
                start_ms=start,
                end_ms=end,
                bars=drawn,
                sampled=steps.get(s.pk, 1) > 1,
                step=steps.get(s.pk, 1),
            )
        )
    return Timeline(span_ms=max(span, 1), stages=out)


def partition_rows(run: Run, *, stage: str | None = None, state: str | None = None) -> CountedRows:
    """The partition table: `partitions_of` without the big JSON columns; the preview summary,
    the output status and the error come out of the JSON in the database."""
    rows = partitions_of(run, stage=stage, state=state)
    rows.qs = rows.qs.defer(
        "inputs", "fingerprints", "output", "preview", "error", "stage__manifest"
    ).annotate(
        preview_summary=KT("preview__summary"),
        # An output that counts rows (sql_migrate) says how many: "migrated" alone told the
        # operator nothing (issue 15 §7). Built in the database like the other columns.
        output_status=Case(
            When(
                output__has_key="rows_affected",
                then=Concat(
                    KT("output__status"),
                    Value(" (rows affected: "),
                    KT("output__rows_affected"),
                    Value(")"),
                    output_field=TextField(),
                ),
            ),
            default=KT("output__status"),
            output_field=TextField(),
        ),
        error_code=KT("error__code"),
        error_message=KT("error__message"),
    )
    return rows


def review_totals(run: Run) -> dict[str, Any]:
    """Totals for the dry-run review: partitions, weight, the SLO budget against the dry-run."""
    stages = list(run.run_stages.all())
    elapsed = [stage_elapsed_ms(s) for s in stages]
    return {
        "stages": len(stages),
        "partitions": sum(s.total for s in stages),
        "weight": sum(s.weight for s in stages),
        "slo_ms": sum(s.slo_ms for s in stages),
        "elapsed_ms": sum(e or 0 for e in elapsed),
        "slo_breached": any(stage_progress(s)["slo_breached"] for s in stages),
        "counts": run_totals(run),
    }


def run_findings(run: Run, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """The SQL lint findings (runs_app.sqllint) of a run's `by_sql_batch` stages, read from
    the params the run pinned and the vendor its manifest resolved (the target's, while the
    run is still partitioning). With the run's `change_summary` (which read the previews),
    each stage also gets its PostgreSQL row estimates as `row_estimate` findings
    (`sqllint.estimate_findings`), at no extra query.

    Shape: {"stages": [{"id", "kind", "vendor", "findings": [LintFinding, ...]}] (stages with
    findings only, in plan order), "counts": {"high", "warning", "info"}, "highest": the
    highest severity or None, "high": [(stage id, kind, LintFinding)]}.
    """
    stages: list[dict[str, Any]] = []
    counts = dict.fromkeys(sqllint.SEVERITIES, 0)
    high: list[tuple[str, str, sqllint.LintFinding]] = []
    for stage in sorted(run.run_stages.all(), key=lambda s: s.position):
        if stage.partitioner != BySqlBatch.name or not isinstance(stage.params, dict):
            continue
        vendor = (stage.manifest or {}).get("vendor")
        if not vendor:
            try:
                vendor = get_target(resolve_params(BySqlBatch, stage.params)["target"]).vendor
            except ComponentError:
                continue  # the partitioner reports the unknown target
        found = sqllint.lint_params(stage.params, vendor)
        if summary is not None:
            found.extend(_estimate_findings(stage.stage_id, summary))
        for f in found:
            counts[f.severity] += 1
            if f.severity == sqllint.HIGH:
                high.append((stage.stage_id, stage.kind, f))
        if found:
            stages.append(
                {"id": stage.stage_id, "kind": stage.kind, "vendor": vendor, "findings": found}
            )
    highest = next((s for s in reversed(sqllint.SEVERITIES) if counts[s]), None)
    return {"stages": stages, "counts": counts, "highest": highest, "high": high}


def _estimate_findings(stage_id: str, summary: dict[str, Any]) -> list[sqllint.LintFinding]:
    """`row_estimate` findings of one migrate stage from its change summary."""
    for s in summary.get("stages") or []:
        if s.get("id") != stage_id or s.get("unit") != "rows":
            continue
        if s.get("mode") == "backfill":
            estimates = [e for b in s.get("batches") or [] for e in b["estimates"]]
            return sqllint.estimate_findings(
                estimates, sql=s["backfill"]["sql"], path="params.backfill.sql", backfill=True
            )
        statements = [st for st in s.get("statements") or [] if st.get("estimate")]
        return [
            f
            for st in statements
            for f in sqllint.estimate_findings(
                [st["estimate"]], sql=st["sql"], path=f"params.statements[{st['index']}]"
            )
        ]
    return []


def runs_awaiting_decision(user: Any) -> list[Run]:
    """Dry-runs awaiting approval on which `user` has not decided yet, newest first.

    Whether the four-eyes rule lets them decide is `policies.runs_to_decide` (two more
    queries, whatever the number of runs: the plans' revisions and successful applies).
    """
    return list(
        Run.objects.filter(mode=RunMode.DRY_RUN, state=RunState.AWAITING_APPROVAL)
        .exclude(approvals__user=user)
        .select_related("plan", "revision", "revision__author", "requested_by")
        .prefetch_related("approvals")
        .order_by("-id")
    )


def latest_dry_run(plan: Plan, revision: PlanRevision) -> Run | None:
    """The newest dry-run of this revision that finished without failing (an apply candidate)."""
    return (
        Run.objects.filter(
            plan=plan,
            revision=revision,
            mode=RunMode.DRY_RUN,
            state__in=[RunState.APPROVED, RunState.SUCCEEDED, RunState.AWAITING_APPROVAL],
        )
        .order_by("-id")
        .first()
    )


def plans_using_kind(kind: str) -> list[Plan]:
    """Plans whose latest revision has a stage of `kind` (read in Python: JSON containment
    queries are not portable to SQLite)."""
    revisions = (
        PlanRevision.objects.filter(number=F("plan__latest_number"))
        .select_related("plan")
        .only("document", "plan__name", "plan__updated_at", "plan__latest_number")
        .order_by("plan__name", "plan_id")
    )
    return [
        r.plan
        for r in revisions.iterator(chunk_size=500)
        if any(isinstance(s, dict) and s.get("kind") == kind for s in r.stages)
    ]


# --- List filters -----------------------------------------------------------------------------
# One filter function per list that both the dashboard and the API filter, so a page and its
# endpoint list the same rows for the same values. Each caller parses its own parameters (a
# form, or the API's strict parsers) and adds its own select_related for what it renders.


def plans_with_latest_revision() -> QuerySet[Plan]:
    """Plans as `GET /api/v1/plans/` lists them (latest update first), each with its creator
    and its latest revision loaded: `plan.latest_revisions` is a one-item list. Three
    queries for a page whatever its number of plans, revisions or runs."""
    latest = PlanRevision.objects.filter(number=F("plan__latest_number"))
    return (
        Plan.objects.select_related("created_by")
        .prefetch_related(Prefetch("revisions", queryset=latest, to_attr="latest_revisions"))
        .order_by("-updated_at", "-id")
    )


def runs(
    *, plan: int | None = None, state: str | None = None, mode: str | None = None
) -> QuerySet[Run]:
    """Runs newest first, optionally of one plan (its id), in one public state (a `RunState`
    or `paused`, as `Run.public_state` names them) and one `RunMode`.

    Values are exact: `running` lists running runs that are not paused, `paused` the running
    runs that are; an empty or None value does not filter."""
    qs = Run.objects.all()
    if plan is not None:
        qs = qs.filter(plan__pk=plan)
    if state == PAUSED:
        qs = qs.filter(state=RunState.RUNNING, paused_at__isnull=False)
    elif state == RunState.RUNNING:
        qs = qs.filter(state=state, paused_at__isnull=True)
    elif state:
        qs = qs.filter(state=state)
    if mode:
        qs = qs.filter(mode=mode)
    return qs.order_by("-id")


def audit_events(
    *,
    actor: str | None = None,
    action: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    since: datetime.datetime | None = None,
    until: datetime.datetime | None = None,
) -> QuerySet[AuditEvent]:
    """Audit events newest first (`at`, then id), filtered as `GET /api/v1/audit/` documents:

    - `actor`: the actor's username, exactly (usernames are case-sensitive);
    - `action`: actions starting with this (`run.` lists every run action, `run.apply` that one);
    - `object_type`, `object_id`: exactly;
    - `since`, `until`: `at` within these bounds, both inclusive (aware datetimes).

    An empty or None value does not filter."""
    qs = AuditEvent.objects.all()
    if actor:
        qs = qs.filter(actor_name=actor)
    if action:
        qs = qs.filter(action__startswith=action)
    if object_type:
        qs = qs.filter(object_type=object_type)
    if object_id:
        qs = qs.filter(object_id=object_id)
    if since is not None:
        qs = qs.filter(at__gte=since)
    if until is not None:
        qs = qs.filter(at__lte=until)
    return qs.order_by("-at", "-id")


def audit_filter_choices() -> tuple[list[str], list[str]]:
    """The audit page's Action and Object type options: each distinct value once, sorted.

    `order_by()` first: AuditEvent's default ordering (`-at`, `-id`) would otherwise join the
    SELECT DISTINCT and make every event distinct (issue 15 §7: 51 options for 12 actions)."""
    events = AuditEvent.objects.order_by()
    actions = list(events.values_list("action", flat=True).distinct().order_by("action"))
    types = list(events.values_list("object_type", flat=True).distinct().order_by("object_type"))
    return actions, types


def document_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A readable structural diff of two plan documents: plan fields, then stages by id."""
    out: dict[str, Any] = {"fields": [], "stages": []}
    for field in ("name", "description"):
        if old.get(field, "") != new.get(field, ""):
            out["fields"].append({"field": field, "from": old.get(field), "to": new.get(field)})
    old_stages = {s.get("id"): (i, s) for i, s in enumerate(old.get("stages", []))}
    new_stages = {s.get("id"): (i, s) for i, s in enumerate(new.get("stages", []))}
    for sid, (i, stage) in new_stages.items():
        if sid not in old_stages:
            out["stages"].append({"id": sid, "change": "added", "position": i, "stage": stage})
            continue
        j, before = old_stages[sid]
        changes = []
        keys = sorted((set(before) | set(stage)) - {"id", "params"})
        for key in keys:
            if before.get(key) != stage.get(key):
                changes.append({"field": key, "from": before.get(key), "to": stage.get(key)})
        old_params, new_params = before.get("params") or {}, stage.get("params") or {}
        for key in sorted(set(old_params) | set(new_params)):
            if old_params.get(key) != new_params.get(key):
                changes.append(
                    {
                        "field": f"params.{key}",
                        "from": old_params.get(key),
                        "to": new_params.get(key),
                    }
                )
        entry: dict[str, Any] = {"id": sid, "change": "changed" if changes else "same"}
        if i != j:
            entry["moved"] = {"from": j + 1, "to": i + 1}
            entry["change"] = "changed"
        entry["changes"] = changes
        out["stages"].append(entry)
    for sid, (i, stage) in old_stages.items():
        if sid not in new_stages:
            out["stages"].append({"id": sid, "change": "removed", "position": i, "stage": stage})
    out["changed"] = bool(out["fields"]) or any(s["change"] != "same" for s in out["stages"])
    return out


# --- The plan page's history grid and stage graph --------------------------------------------

HISTORY_RUNS = 25


@dataclasses.dataclass
class HistoryCell:
    """One stage in one run: `state` is None when that run had no such stage."""

    run: Run
    stage_id: str
    state: str | None


@dataclasses.dataclass
class PlanHistory:
    """Recent runs by stages (Airflow's Grid view): `runs` oldest first (the newest at the
    right), `rows` one per stage id (`(stage_id, [HistoryCell per run])`): the latest
    revision's stages in plan order, then ids only older runs had."""

    runs: list[Run]
    rows: list[tuple[str, list[HistoryCell]]]

    @property
    def latest(self) -> Run | None:
        return self.runs[-1] if self.runs else None

    def latest_states(self) -> dict[str, str]:
        """stage id → its state in the newest run (empty when the plan never ran)."""
        if not self.runs:
            return {}
        return {stage_id: cells[-1].state for stage_id, cells in self.rows if cells[-1].state}


def plan_history(plan: Plan, revision: PlanRevision, *, limit: int = HISTORY_RUNS) -> PlanHistory:
    """The last `limit` runs of `plan` and each stage's state in each: two queries whatever
    the number of runs or stages (the runs, then their stages' ids and states)."""
    runs = list(
        Run.objects.filter(plan=plan)
        .only("id", "mode", "state", "created_at", "plan_id")
        .order_by("-id")[:limit]
    )
    runs.reverse()
    states: dict[tuple[int, str], str] = {}
    seen: list[str] = []
    if runs:
        for run_id, stage_id, state in (
            RunStage.objects.filter(run_id__in=[r.pk for r in runs])
            .order_by("position")
            .values_list("run_id", "stage_id", "state")
        ):
            states[(run_id, stage_id)] = state
            if stage_id not in seen:
                seen.append(stage_id)
    order = [s["id"] for s in revision.stages]
    order += [s for s in seen if s not in order]
    rows = [
        (stage_id, [HistoryCell(r, stage_id, states.get((r.pk, stage_id))) for r in runs])
        for stage_id in order
    ]
    return PlanHistory(runs=runs, rows=rows)


# --- The change set of a dry-run (issue 14 §1) ---------------------------------------------
# What the apply would change, per stage and in total, in each kind's own terms, read from the
# previews the dry-run's executors returned (runs_app/kinds/*: `_dry_run`/`ctx.dry_run`).
# Numbers that every preview carries are summed in SQL (exact whatever the partition count);
# lists inside previews (assets, pages, modules, per-statement rows) are read from at most
# CHANGE_SUMMARY_PREVIEWS partitions per stage, and `complete` says when that cap was hit.
# Queries: one for the stages, two per stage, and two for the last applied run when a stage
# packs files: flat in partitions (tests/runs_app/views/test_change_summary.py counts them).

CHANGE_SUMMARY_PREVIEWS = 2000
CHANGE_SUMMARY_NAMES = 20  # failing modules, tables... listed by name per stage
# Statements of a stage listed one by one (with their rows, samples and estimates); the rest
# are counted (`statements_total`) and read in the plan's JSON. A 7,500-statement dry-run made
# the run's API answer 944 KB, which `hxo --wait` fetched every second.
CHANGE_SUMMARY_STATEMENTS = 1000


def _sum(path: str) -> Any:
    """SUM of an integer preview field, cast in SQL (KT reads it as text), 0 when none."""
    return Coalesce(Sum(Cast(KT(path), BigIntegerField())), 0)


def _tables(statements: list[str], vendor: str) -> list[str]:
    """Tables the statements name (read with sqlglot, in the target's dialect), sorted; a
    statement sqlglot cannot read adds nothing (the SQL policy has already accepted it).
    Remembered per process for the same statements: a stage's statements never change, and
    parsing thousands of them again on every poll of a run took most of a second."""
    return list(_tables_of(tuple(statements), vendor))


@functools.lru_cache(maxsize=32)
def _tables_of(statements: tuple[str, ...], vendor: str) -> tuple[str, ...]:
    return tuple(_parse_tables(statements, vendor))


def _parse_tables(statements: tuple[str, ...], vendor: str) -> list[str]:
    import sqlglot
    from sqlglot import exp

    dialect = "postgres" if vendor == "postgresql" else "sqlite"
    found: set[str] = set()
    for sql in statements:
        try:
            for tree in sqlglot.parse(sql, read=dialect):
                if tree is None:
                    continue
                for table in tree.find_all(exp.Table):
                    if table.name:
                        found.add(".".join(p for p in (table.db, table.name) if p))
        except sqlglot.errors.SqlglotError:
            continue
    return sorted(found)


def _previews(stage: RunStage, *fields: str) -> tuple[list[dict[str, Any]], bool]:
    """Up to CHANGE_SUMMARY_PREVIEWS partitions' `fields` (keys of the preview, decoded), in
    index order; and whether that was all of the stage's partitions."""
    values = {f.replace(".", "__"): f"preview__{f.replace('.', '__')}" for f in fields}
    qs = (
        Partition.objects.filter(stage=stage, preview__isnull=False)
        .order_by("index")
        .values("index", "inputs__offset", **{k: F(v) for k, v in values.items()})
    )
    rows = list(qs[: CHANGE_SUMMARY_PREVIEWS + 1])
    complete = len(rows) <= CHANGE_SUMMARY_PREVIEWS
    return rows[:CHANGE_SUMMARY_PREVIEWS], complete


def _tally(rows: list[dict[str, Any]], key: str, field: str = "action") -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        for item in row.get(key) or []:
            if isinstance(item, dict):
                name = str(item.get(field))
                counts[name] = counts.get(name, 0) + 1
    return counts


def sample_table(sample: dict[str, Any]) -> dict[str, Any]:
    """A dry-run's sample rows of one statement (`runs_app.kinds.samples.record`) as the
    review's diff table: {"verb", "table", "key" (names), "columns", "masked", "reason",
    "rows": [{"key", "state": changed/unchanged/deleted/inserted, "cells": [{"text",
    "changed", "masked"}]}]}; a changed cell's text is "before → after"."""
    masked = set(sample.get("masked") or [])
    columns = list(sample.get("columns") or [])
    table_rows = []
    for row in sample.get("rows") or []:
        before, after = row.get("before"), row.get("after")
        masked_changed = set(row.get("masked_changed") or [])
        cells = []
        for i, name in enumerate(columns):
            old = before[i] if before is not None and i < len(before) else None
            new = after[i] if after is not None and i < len(after) else None
            changed = (
                before is not None and after is not None and (old != new or name in masked_changed)
            )
            shown = new if before is None else old
            text = f"{_cell(old)} → {_cell(new)}" if changed else _cell(shown)
            cells.append({"text": text, "changed": changed, "masked": name in masked})
        if before is None:
            state = "inserted"
        elif after is None:
            state = "deleted"
        else:
            state = "changed" if any(c["changed"] for c in cells) else "unchanged"
        table_rows.append({"key": row.get("key"), "state": state, "cells": cells})
    return {
        "verb": sample.get("verb"),
        "table": sample.get("table"),
        "key": sample.get("key") or [],
        "columns": columns,
        "masked": sorted(masked),
        "reason": sample.get("reason") or "",
        "rows": table_rows,
    }


def _cell(value: Any) -> str:
    return "NULL" if value is None else str(value)


def _migrate_summary(stage: RunStage) -> dict[str, Any]:
    manifest = stage.manifest or {}
    vendor = str(manifest.get("vendor") or "")
    sums = Partition.objects.filter(stage=stage).aggregate(
        rows=_sum("preview__rows_affected"),
        already=Count("pk", filter=Q(preview__already_applied=True)),
    )
    out: dict[str, Any] = {
        "unit": "rows",
        "rows": sums["rows"],
        "batches_already_applied": sums["already"],
        "vendor": vendor,
        "mode": manifest.get("mode"),
    }
    if manifest.get("mode") == "backfill":
        backfill = manifest.get("backfill") or {}
        out["backfill"] = {
            "sql": backfill.get("sql", ""),
            "table": backfill.get("table"),
            "key_column": backfill.get("key_column"),
            "key_range": [backfill.get("key_min"), backfill.get("key_max")],
            "batch_size": backfill.get("batch_size"),
        }
        if backfill.get("adaptive"):
            # Adaptive sub-batches (kinds.adaptive): the bounds the approval covers.
            out["backfill"]["adaptive"] = backfill["adaptive"]
        rows, complete = _previews(stage, "rows_affected", "to_apply", "samples", "row_estimates")
        end_param = backfill.get("end_param", "end")
        out["backfill"]["end_param"] = end_param
        # The bound parameters each key interval runs with (migrate.Batch.bound's rule).
        out["batches"] = [
            {
                "index": r["index"],
                "to_apply": r["to_apply"] or [],
                "params": [
                    {"start": a, end_param: b if end_param == "last" else b + 1}
                    for a, b in (r["to_apply"] or [])
                ],
                "rows": r["rows_affected"],
                "samples": [sample_table(x) for x in r.get("samples") or [] if isinstance(x, dict)],
                "estimates": _estimates(r.get("row_estimates")),
            }
            for r in rows
        ]
        estimated = [e for b in out["batches"] for e in b["estimates"]]
        out["tables"] = [backfill["table"]] if backfill.get("table") else []
    else:
        statements = list(manifest.get("statements") or [])
        per: list[int | None] = [None] * len(statements)
        batch_of: list[int | None] = [None] * len(statements)
        sampled: dict[int, dict[str, Any]] = {}
        rows, complete = _previews(
            stage, "rows_per_statement", "already_applied", "samples", "row_estimates"
        )
        estimate_of: dict[int, dict[str, Any]] = {}
        for r in rows:
            offset = r.get("inputs__offset")
            if not isinstance(offset, int):
                continue
            for i, n in enumerate(r.get("rows_per_statement") or []):
                if 0 <= offset + i < len(statements):
                    per[offset + i] = n
                    batch_of[offset + i] = r["index"]
            for sample in r.get("samples") or []:
                if isinstance(sample, dict) and isinstance(sample.get("statement"), int):
                    sampled[sample["statement"]] = sample_table(sample)
            for e in _estimates(r.get("row_estimates")):
                estimate_of[e["statement"]] = e
        out["statements"] = [
            {
                "index": i,
                "sql": sql,
                "rows": per[i],
                "batch": batch_of[i],
                "samples": sampled.get(i),
                "estimate": estimate_of.get(i),
            }
            for i, sql in enumerate(statements[:CHANGE_SUMMARY_STATEMENTS])
        ]
        out["statements_total"] = len(statements)
        estimated = list(estimate_of.values())
        out["tables"] = _tables(statements, vendor)
    out["complete"] = complete
    # PostgreSQL: the planner's estimates summed over the statements (or key intervals) it
    # could estimate; None when there are none (SQLite, no DML, nothing left to apply).
    known = [e["estimated_rows"] for e in estimated if e["estimated_rows"] is not None]
    out["estimated_rows"] = sum(known) if known else None
    out["estimate_errors"] = sum(1 for e in estimated if e["error"])
    tables = ", ".join(out["tables"][:CHANGE_SUMMARY_NAMES]) or "no table"
    out["line"] = f"would change {out['rows']} row{'s' if out['rows'] != 1 else ''} in {tables}"
    if out["estimated_rows"] is not None:
        out["line"] += f" (the planner estimated {out['estimated_rows']})"
    return out


def _estimates(stored: Any) -> list[dict[str, Any]]:
    """A preview's `row_estimates` (`migrate._run`) as the review shows them: each
    {"statement", "verb", "params", "estimated_rows", "rows", "error"}, entries of another
    shape (a preview from before estimates, hand-edited JSON) left out."""
    out = []
    for e in stored if isinstance(stored, list) else []:
        if not isinstance(e, dict) or not isinstance(e.get("statement"), int):
            continue
        estimated = e.get("estimated_rows")
        rows = e.get("rows")
        out.append(
            {
                "statement": e["statement"],
                "verb": str(e.get("verb") or ""),
                "params": e.get("params") if isinstance(e.get("params"), dict) else None,
                "estimated_rows": estimated if isinstance(estimated, int) else None,
                "rows": rows if isinstance(rows, int) else None,
                "error": str(e["error"]) if e.get("error") else None,
            }
        )
    return out


def _pack_summary(stage: RunStage, against: RunStage | None) -> dict[str, Any]:
    """Files against the same stage of the last applied run, by path and SHA-256 (the
    manifest's pinned rows are `[path, bytes, sha256, mode]`); archives to write: partitions
    whose archive is not in artifact storage yet."""
    sums = Partition.objects.filter(stage=stage).aggregate(
        to_write=Count("pk", filter=Q(preview__archive_exists=False)),
        exists=Count("pk", filter=Q(preview__archive_exists=True)),
    )
    mine = {r[0]: (r[1], r[2]) for r in (stage.manifest or {}).get("files") or []}
    theirs = (
        {r[0]: (r[1], r[2]) for r in (against.manifest or {}).get("files") or []}
        if against is not None
        else {}
    )
    files: dict[str, dict[str, int]] = {
        k: {"count": 0, "bytes": 0} for k in ("added", "changed", "removed", "unchanged")
    }
    for path, (size, sha) in mine.items():
        old = theirs.get(path)
        key = "added" if old is None else ("unchanged" if old[1] == sha else "changed")
        files[key]["count"] += 1
        files[key]["bytes"] += int(size)
    for path, (size, _sha) in theirs.items():
        if path not in mine:
            files["removed"]["count"] += 1
            files["removed"]["bytes"] += int(size)
    f = files
    line = (
        f"{f['added']['count']} files added ({filesizeformat(f['added']['bytes'])}), "
        f"{f['changed']['count']} changed ({filesizeformat(f['changed']['bytes'])}), "
        f"{f['removed']['count']} removed; {sums['to_write']} archive"
        f"{'s' if sums['to_write'] != 1 else ''} to write"
    )
    return {
        "unit": "files",
        "files": files,
        "against_run": against.run_id if against is not None else None,
        "archives_to_write": sums["to_write"],
        "archives_existing": sums["exists"],
        "complete": True,
        "line": line,
    }


def _prime_summary(stage: RunStage) -> dict[str, Any]:
    compile_key = "to_compile" if stage.executor == "prime_caches" else "entries_to_write"
    verb = "compile" if stage.executor == "prime_caches" else "register"
    sums = Partition.objects.filter(stage=stage).aggregate(
        todo=_sum(f"preview__{compile_key}"), up_to_date=_sum("preview__up_to_date")
    )
    rows, complete = _previews(stage, "failed_modules")
    failed = [
        str(m.get("module"))
        for r in rows
        for m in (r.get("failed_modules") or [])
        if isinstance(m, dict)
    ]
    return {
        "unit": "modules",
        "verb": verb,
        "modules": {verb: sums["todo"], "up_to_date": sums["up_to_date"], "fail": len(failed)},
        "failing": failed[:CHANGE_SUMMARY_NAMES],
        "complete": complete,
        "line": f"{sums['todo']} modules to {verb}, {sums['up_to_date']} up to date, "
        f"{len(failed)} will fail",
    }


def _assets_summary(stage: RunStage) -> dict[str, Any]:
    if stage.kind == "assets.stage":
        sums = Partition.objects.filter(stage=stage).aggregate(
            bytes=_sum("preview__bytes_to_copy"), count=_sum("preview__assets_count")
        )
        rows, complete = _previews(stage, "assets", "assets_truncated")
        tally = _tally(rows, "assets")
        return {
            "unit": "assets",
            "assets": {
                "copy": tally.get("copy", 0),
                "already_staged": tally.get("already_staged", 0),
            },
            "bytes": sums["bytes"],
            "complete": complete and not any(r.get("assets_truncated") for r in rows),
            "line": f"{tally.get('copy', 0)} assets to copy ({filesizeformat(sums['bytes'])}), "
            f"{tally.get('already_staged', 0)} already staged",
        }
    sums = Partition.objects.filter(stage=stage).aggregate(
        bytes=_sum("preview__bytes"), count=_sum("preview__assets_count")
    )
    rows, complete = _previews(stage, "assets", "assets_truncated", "to_remove")
    tally = _tally(rows, "assets")
    removed = sum(len(r.get("to_remove") or []) for r in rows)
    counts = {
        "new": tally.get("add", 0),
        "changed": tally.get("update", 0),
        "unchanged": tally.get("unchanged", 0),
        "removed": removed,
    }
    return {
        "unit": "assets",
        "assets": counts,
        "bytes": sums["bytes"],
        "complete": complete and not any(r.get("assets_truncated") for r in rows),
        "line": f"{counts['new']} assets new, {counts['changed']} changed, "
        f"{counts['removed']} removed ({filesizeformat(sums['bytes'])} indexed)",
    }


def _docs_summary(stage: RunStage) -> dict[str, Any]:
    rows, complete = _previews(stage, "pages", "pages_truncated", "to_remove", "failed_pages")
    tally = _tally(rows, "pages")
    counts = {
        "new": tally.get("add", 0),
        "changed": tally.get("update", 0),
        "unchanged": tally.get("unchanged", 0),
        "removed": sum(len(r.get("to_remove") or []) for r in rows),
        "unreadable": sum(len(r.get("failed_pages") or []) for r in rows),
    }
    return {
        "unit": "pages",
        "pages": counts,
        "complete": complete and not any(r.get("pages_truncated") for r in rows),
        "line": f"{counts['new']} pages new, {counts['changed']} changed, "
        f"{counts['removed']} removed",
    }


def change_summary(run: Run) -> dict[str, Any] | None:
    """What the apply of this dry-run would change, per stage and in total.

    None for an apply run, or a dry-run still partitioning. Shape: {"stages": [{"id", "kind",
    "executor", "unit", "line" (one sentence), "complete", ...the kind's own figures}],
    "totals": {"rows", "files_added", "files_changed", "files_removed", "archives",
    "modules_to_write", "modules_failing", "assets_new", "assets_changed", "assets_removed",
    "pages_new", "pages_changed", "pages_removed"}, "line": the totals in one sentence,
    "complete": False when a stage had more previews than CHANGE_SUMMARY_PREVIEWS or a
    preview listed only part of its items}. Kind terms by executor: `sql_migrate` rows per
    statement (`statements[].rows`, None where a statement was only checked) or a backfill's
    template, key range and batch size, and `tables`; `pack_backend` files and bytes
    added/changed/removed against the last applied run's same stage (`services.last_applied_run`'s
    rule: the newest succeeded apply of the plan), `archives_to_write`; `warm_registry` /
    `prime_caches` modules to register or compile and `failing`; `index_assets` assets
    new/changed/removed and bytes; `docs_index` pages new/changed/removed/unreadable.
    """
    if run.mode != RunMode.DRY_RUN or run.state in (RunState.PENDING, RunState.PARTITIONING):
        return None
    stages = sorted(run.run_stages.all(), key=lambda s: s.position)
    against: dict[str, RunStage] | None = None
    out_stages: list[dict[str, Any]] = []
    totals: dict[str, int] = {}

    def add(key: str, n: int | None) -> None:
        totals[key] = totals.get(key, 0) + int(n or 0)

    for stage in stages:
        if stage.executor == "sql_migrate":
            body = _migrate_summary(stage)
            add("rows", body["rows"])
        elif stage.executor == "pack_backend":
            if against is None:
                last = (
                    Run.objects.filter(
                        plan_id=run.plan_id, mode=RunMode.APPLY, state=RunState.SUCCEEDED
                    )
                    .exclude(pk=run.pk)
                    .order_by("-id")
                    .first()
                )
                against = (
                    {s.stage_id: s for s in RunStage.objects.filter(run=last)}
                    if last is not None
                    else {}
                )
            body = _pack_summary(stage, against.get(stage.stage_id))
            for k in ("added", "changed", "removed"):
                add(f"files_{k}", body["files"][k]["count"])
            add("archives", body["archives_to_write"])
        elif stage.executor in ("warm_registry", "prime_caches"):
            body = _prime_summary(stage)
            add("modules_to_write", body["modules"][body["verb"]])
            add("modules_failing", body["modules"]["fail"])
        elif stage.executor == "index_assets":
            body = _assets_summary(stage)
            for k in ("new", "changed", "removed"):
                if k in body["assets"]:
                    add(f"assets_{k}", body["assets"][k])
            if "copy" in body["assets"]:
                # Only assets.stage copies: an index-only review must not say "0 to copy".
                add("assets_to_copy", body["assets"]["copy"])
        elif stage.executor == "docs_index":
            body = _docs_summary(stage)
            for k in ("new", "changed", "removed"):
                add(f"pages_{k}", body["pages"][k])
        else:
            # A plugin's executor: its previews' own sentences are in the partition table.
            body = {"unit": None, "complete": True, "line": f"{stage.total} partitions"}
        failed = stage.failed
        if failed:
            body["line"] += f" ({failed} partition{'s' if failed != 1 else ''} failed to preview)"
        out_stages.append(
            {"id": stage.stage_id, "kind": stage.kind, "executor": stage.executor, **body}
        )
    words = {
        "rows": "rows changed",
        "files_added": "files added",
        "files_changed": "files changed",
        "files_removed": "files removed",
        "archives": "archives to write",
        "modules_to_write": "modules to compile or register",
        "modules_failing": "module failures (per stage)",
        "assets_new": "assets new",
        "assets_changed": "assets changed",
        "assets_removed": "assets removed",
        "assets_to_copy": "assets to copy",
        "pages_new": "pages new",
        "pages_changed": "pages changed",
        "pages_removed": "pages removed",
    }
    line = ", ".join(f"{totals[k]} {w}" for k, w in words.items() if k in totals)
    return {
        "stages": out_stages,
        "totals": totals,
        "line": line or "nothing to change",
        "complete": all(s["complete"] for s in out_stages),
    }


@dataclasses.dataclass
class InboxRow:
    """One dry-run of the approvals inbox: who asked, since when it waits, what it would
    change (`change_summary`'s line) and its SQL findings' highest severity."""

    run: Run
    reason: str | None  # why the four-eyes rule keeps the user from deciding, or None
    kinds: list[str]
    waiting_since: datetime.datetime | None
    change_line: str
    highest_finding: str | None


def approvals_inbox(
    waiting: list[tuple[Run, str | None]], *, kind: str | None = None
) -> list[InboxRow]:
    """`policies.runs_to_decide`'s runs as inbox rows, only those with a stage of `kind` when
    given. The stages of all the runs are read in one query; each run's change summary then
    costs two queries per stage (flat in partitions), its findings none (the linter is pure).
    Waiting since: when the dry-run finished, i.e. started waiting for a decision."""
    runs = [run for run, _reason in waiting]
    # One query for every run's stages; change_summary and run_findings read them from here.
    prefetch_related_objects(
        runs, Prefetch("run_stages", queryset=RunStage.objects.order_by("position"))
    )
    rows = []
    for run, reason in waiting:
        kinds = sorted({s.kind for s in run.run_stages.all()})
        if kind is not None and kind not in kinds:
            continue
        summary = change_summary(run)
        rows.append(
            InboxRow(
                run=run,
                reason=reason,
                kinds=kinds,
                waiting_since=run.finished_at,
                change_line=summary["line"] if summary else "",
                highest_finding=run_findings(run, summary)["highest"],
            )
        )
    return rows

"""Prometheus metrics, computed from HXO's tables when Prometheus scrapes `GET /metrics`.

Why from the tables and not in-process counters: web requests, drainers and the reconciler
run in many processes on several hosts (gunicorn workers, qcluster workers). Counters kept in
memory would each see a slice and vanish on restart; prometheus_client's multiprocess mode
shares files between the processes of one host only. The tables already hold every claim,
completion and retry, written by the fenced transactions of the engine, so any web process can
answer for the whole cluster (a custom collector, as prometheus_client's docs suggest for
"proxying" metrics from another system).

What a scrape costs, bounded whatever the history:

- counts by state or kind come from the per-stage counters (`RunStage`) and runs, grouped in
  the database (one row per state or kind comes back);
- claims, retries and the two histograms of a stage whose run has finished are computed once
  and kept in `StageRollup` (at most `ROLLUP_BATCH` stages per scrape), then summed from one
  small row per stage; only the partitions of runs still active are aggregated live;
- a fixed number of queries whatever the number of runs and partitions: 7, plus 2 while
  runs are active and 4 while finished stages are rolled up (tests/runs_app/test_metrics.py
  holds it flat; bench/metrics.py measures it: 6 ms over 100,000 partitions on SQLite).

Claim latency is the time from when a partition could first be claimed to its latest claim:
`claimed_at - max(due_at, stage.started_at)` (a retry's `due_at` is its backoff's end). A
partition of a later wave waits for the earlier waves, and that wait is counted too.
"""

from __future__ import annotations

import bisect
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Case, Count, Exists, F, OuterRef, Q, Sum, Value, When
from django.utils import timezone
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from runs_app.models import (
    ClaimLog,
    MetricCounter,
    Partition,
    Run,
    RunStage,
    RunState,
    StageRollup,
    StageState,
)
from runs_app.models.engine import PARTITION_COMPLETED, RUN_FINISHED

log = logging.getLogger(__name__)

# Upper bounds of the histogram buckets, in seconds (+Inf is implied). Partitions run from
# milliseconds (a page indexed) to many minutes (a large SQL batch under HXO's 5-minute
# default timeout); claims wait from milliseconds to the length of the waves before them.
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600,
)  # fmt: skip
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
)  # fmt: skip
# Bumped when the buckets or what a rollup counts change: older rollups are recomputed.
ROLLUP_VERSION = 1
# Stages rolled up per scrape: bounds a scrape after an upgrade over a long history (the
# backlog joins the counters over the next scrapes, oldest first).
ROLLUP_BATCH = 200

# Counters of events that leave no row (MetricCounter names).
RECONCILER_PASSES = "reconciler_passes"
RECONCILER_SKIPPED = "reconciler_skipped"
RECONCILER_LEASES_EXPIRED = "reconciler_leases_expired"
RECONCILER_RUNS_WOKEN = "reconciler_runs_woken"
RECONCILER_RUNS_ADVANCED = "reconciler_runs_advanced"


@dataclass
class Histogram:
    """Cumulative bucket counts (one per finite bound), count and sum in seconds."""

    bounds: tuple[float, ...]
    buckets: list[int] = field(default_factory=list)
    count: int = 0
    sum: float = 0.0

    def __post_init__(self) -> None:
        if not self.buckets:
            self.buckets = [0] * len(self.bounds)

    def observe(self, seconds: float) -> None:
        """Count one observation (seconds) in every bucket whose bound is >= it."""
        for i in range(bisect.bisect_left(self.bounds, seconds), len(self.bounds)):
            self.buckets[i] += 1
        self.count += 1
        self.sum += seconds

    def add(self, other: Histogram | dict[str, Any]) -> None:
        """Add another histogram over the same bounds (or its `as_json()`)."""
        data = other.as_json() if isinstance(other, Histogram) else other
        if not data:
            return
        for i, n in enumerate(data["buckets"]):
            self.buckets[i] += n
        self.count += data["count"]
        self.sum += data["sum"]

    def as_json(self) -> dict[str, Any]:
        return {"buckets": list(self.buckets), "count": self.count, "sum": self.sum}

    def samples(self) -> list[tuple[str, float]]:
        """prometheus_client's `buckets` argument: (upper bound, cumulative count), +Inf last."""
        return [(_le(b), n) for b, n in zip(self.bounds, self.buckets, strict=True)] + [
            ("+Inf", self.count)
        ]


@dataclass
class StageFigures:
    """What one stage adds to the claim counters and the histograms."""

    kind: str
    executor: str
    claims: int = 0
    retries: int = 0
    durations: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS_S))
    latencies: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_S))


def _le(bound: float) -> str:
    return repr(float(bound))


def stage_figures(stages: Iterable[tuple[int, str, str]]) -> dict[int, StageFigures]:
    """Claims, retries, durations and claim latencies of stages given as (pk, kind,
    executor): two queries whatever their number, rows proportional to their partitions.

    Durations are those of partitions whose latest attempt completed (succeeded, failed or
    reused), from the engine's `duration_ms`; claims are every attempt (`attempts`, bumped by
    each claim), retries the attempts after the first."""
    figures = {pk: StageFigures(kind, executor) for pk, kind, executor in stages}
    if not figures:
        return {}
    completed = Q(state__in=PARTITION_COMPLETED, duration_ms__isnull=False)
    bucket_columns = {
        f"le{i}": Count("pk", filter=completed & Q(duration_ms__lte=bound * 1000))
        for i, bound in enumerate(DURATION_BUCKETS_S)
    }
    rows = (
        Partition.objects.filter(stage_id__in=list(figures))
        .values("stage_id")
        .order_by()
        .annotate(
            claims=Sum("attempts"),
            retries=Sum(Case(When(attempts__gt=1, then=F("attempts") - 1), default=Value(0))),
            done=Count("pk", filter=completed),
            total_ms=Sum("duration_ms", filter=completed),
            **bucket_columns,
        )
    )
    for row in rows:
        fig = figures[row["stage_id"]]
        fig.claims = int(row["claims"] or 0)
        fig.retries = int(row["retries"] or 0)
        fig.durations.buckets = [int(row[f"le{i}"]) for i in range(len(DURATION_BUCKETS_S))]
        fig.durations.count = int(row["done"])
        fig.durations.sum = (row["total_ms"] or 0) / 1000
    latest_claims = ClaimLog.objects.filter(
        partition__stage_id__in=list(figures), fence=F("partition__fence")
    ).values_list(
        "partition__stage_id", "claimed_at", "partition__due_at", "partition__stage__started_at"
    )
    for stage_pk, claimed_at, due_at, stage_started in latest_claims.iterator(chunk_size=5000):
        if due_at > claimed_at:
            # Sent back to pending after this claim (a retry's backoff): not yet re-claimed.
            continue
        ready = max(due_at, stage_started) if stage_started else due_at
        figures[stage_pk].latencies.observe(max((claimed_at - ready).total_seconds(), 0.0))
    return figures


def roll_up_finished_stages(limit: int = ROLLUP_BATCH) -> int:
    """Compute and keep the figures of up to `limit` stages of finished runs that have no
    rollup of this `ROLLUP_VERSION`, oldest first; returns how many. Safe to run from several
    processes at once (a row already written by another wins)."""
    current = StageRollup.objects.filter(stage=OuterRef("pk"), version=ROLLUP_VERSION)
    todo = list(
        RunStage.objects.filter(run__state__in=RUN_FINISHED)
        .filter(~Exists(current))
        .order_by("pk")
        .values_list("pk", "kind", "executor")[:limit]
    )
    if not todo:
        return 0
    figures = stage_figures(todo)
    with transaction.atomic():
        StageRollup.objects.filter(stage_id__in=list(figures)).exclude(
            version=ROLLUP_VERSION
        ).delete()
        StageRollup.objects.bulk_create(
            [
                StageRollup(
                    stage_id=pk,
                    version=ROLLUP_VERSION,
                    kind=fig.kind,
                    executor=fig.executor,
                    claims=fig.claims,
                    retries=fig.retries,
                    durations=fig.durations.as_json(),
                    claim_latencies=fig.latencies.as_json(),
                )
                for pk, fig in figures.items()
            ],
            ignore_conflicts=True,
        )
    return len(figures)


def bump(name: str, by: int = 1) -> None:
    """Add `by` to the named counter, in the database (every process adds to one number)."""
    now = timezone.now()
    if MetricCounter.objects.filter(name=name).update(value=F("value") + by, updated_at=now):
        return
    try:
        with transaction.atomic():
            MetricCounter.objects.create(name=name, value=by)
    except IntegrityError:  # created meanwhile by another process
        MetricCounter.objects.filter(name=name).update(value=F("value") + by, updated_at=now)


def record_reconcile(report: dict[str, Any]) -> None:
    """Count a reconciler pass from its report (`runs_app.tasks.reconcile`'s return value):
    a pass, or a skip when another reconciler held the lease, and what the pass repaired."""
    if "skipped" in report:
        bump(RECONCILER_SKIPPED)
        return
    bump(RECONCILER_PASSES)
    for name, key in (
        (RECONCILER_LEASES_EXPIRED, "leases_expired"),
        (RECONCILER_RUNS_WOKEN, "runs_woken"),
        (RECONCILER_RUNS_ADVANCED, "runs_advanced"),
    ):
        value = report.get(key) or 0
        value = len(value) if isinstance(value, list | tuple | set) else int(value)
        if value:
            bump(name, value)


def queue_depth() -> int:
    """Wake-ups waiting in django-q2's queue (OrmQ rows or the Redis list's length)."""
    from django_q.brokers import get_broker

    return int(get_broker().queue_size())


class HxoCollector:
    """A prometheus_client collector reading HXO's tables at each `collect()` (a scrape).

    Register it on a `CollectorRegistry` per scrape; `describe()` is empty so registering
    does not run the queries. Metric names: README, "Metrics"."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._runs()
        yield from self._partitions()
        yield from self._reconciler()
        yield from self._queue()

    def _runs(self) -> Iterator[Metric]:
        by_state = dict.fromkeys(RunState.values, 0)
        breached = 0
        for row in (
            Run.objects.values("state")
            .order_by()
            .annotate(n=Count("pk"), breached=Count("pk", filter=Q(slo_breached=True)))
        ):
            by_state[row["state"]] = row["n"]
            breached += row["breached"]
        runs = GaugeMetricFamily("hxo_runs", "Runs by state.", labels=["state"])
        for state, n in by_state.items():
            runs.add_metric([state], n)
        yield runs
        yield CounterMetricFamily(
            "hxo_run_slo_breaches", "Runs that breached a stage's SLO.", value=breached
        )

    def _partitions(self) -> Iterator[Metric]:
        states = ("succeeded", "failed", "reused", "cancelled", "pending", "running")
        per_kind = (
            RunStage.objects.values("kind")
            .order_by()
            .annotate(
                breached=Count("pk", filter=Q(slo_breached=True)),
                **{state: Sum(state) for state in states},
            )
        )
        finished: dict[str, CounterMetricFamily] = {
            state: CounterMetricFamily(
                f"hxo_partitions_{state}",
                f"Partitions that ended {state}, by job kind.",
                labels=["kind"],
            )
            for state in ("succeeded", "failed", "reused", "cancelled")
        }
        current = GaugeMetricFamily(
            "hxo_partitions",
            "Partitions pending or running now, by job kind.",
            labels=["kind", "state"],
        )
        breaches = CounterMetricFamily(
            "hxo_stage_slo_breaches",
            "Stages that breached their SLO, by job kind.",
            labels=["kind"],
        )
        for row in per_kind:
            for state, family in finished.items():
                family.add_metric([row["kind"]], int(row[state] or 0))
            for state in ("pending", "running"):
                current.add_metric([row["kind"], state], int(row[state] or 0))
            breaches.add_metric([row["kind"]], row["breached"])
        yield from finished.values()
        yield current
        yield breaches

        roll_up_finished_stages()
        claims: dict[str, int] = defaultdict(int)
        retries: dict[str, int] = defaultdict(int)
        durations: dict[tuple[str, str], Histogram] = defaultdict(
            lambda: Histogram(DURATION_BUCKETS_S)
        )
        latencies: dict[str, Histogram] = defaultdict(lambda: Histogram(LATENCY_BUCKETS_S))
        rollups = StageRollup.objects.filter(version=ROLLUP_VERSION).values_list(
            "kind", "executor", "claims", "retries", "durations", "claim_latencies"
        )
        for kind, executor, n_claims, n_retries, dur, lat in rollups.iterator(chunk_size=2000):
            claims[kind] += n_claims
            retries[kind] += n_retries
            durations[(kind, executor)].add(dur)
            latencies[kind].add(lat)
        # Stages of active runs: aggregated live (their partitions still move).
        live = list(
            # Every run not finished (a state added later included), so no stage is ever
            # neither live nor rolled up.
            RunStage.objects.exclude(run__state__in=RUN_FINISHED).values_list(
                "pk", "kind", "executor", "state", "started_at", "slo_ms"
            )
        )
        over_slo: dict[str, int] = defaultdict(int)
        now = timezone.now()
        for _pk, kind, _executor, state, started_at, slo_ms in live:
            running = state == StageState.RUNNING and started_at is not None
            if running and (now - started_at).total_seconds() * 1000 > slo_ms:
                over_slo[kind] += 1
        for fig in stage_figures((pk, kind, ex) for pk, kind, ex, *_ in live).values():
            claims[fig.kind] += fig.claims
            retries[fig.kind] += fig.retries
            durations[(fig.kind, fig.executor)].add(fig.durations)
            latencies[fig.kind].add(fig.latencies)

        claimed = CounterMetricFamily(
            "hxo_partitions_claimed",
            "Claims of partitions (every attempt), by job kind.",
            labels=["kind"],
        )
        retried = CounterMetricFamily(
            "hxo_partitions_retried",
            "Claims after a partition's first (retries and expired leases), by job kind.",
            labels=["kind"],
        )
        for kind in sorted(claims):
            claimed.add_metric([kind], claims[kind])
            retried.add_metric([kind], retries[kind])
        yield claimed
        yield retried
        duration = HistogramMetricFamily(
            "hxo_partition_duration_seconds",
            "Duration of a partition's completed attempt, by job kind and executor.",
            labels=["kind", "executor"],
        )
        for (kind, executor), hist in sorted(durations.items()):
            duration.add_metric([kind, executor], hist.samples(), hist.sum)
        yield duration
        latency = HistogramMetricFamily(
            "hxo_partition_claim_latency_seconds",
            "From when a partition could be claimed to its latest claim, by job kind.",
            labels=["kind"],
        )
        for kind, hist in sorted(latencies.items()):
            latency.add_metric([kind], hist.samples(), hist.sum)
        yield latency
        stages_over = GaugeMetricFamily(
            "hxo_stages_over_slo",
            "Running stages past their SLO now, by job kind.",
            labels=["kind"],
        )
        for kind, n in sorted(over_slo.items()):
            stages_over.add_metric([kind], n)
        yield stages_over

    def _reconciler(self) -> Iterator[Metric]:
        rows = {c.name: c for c in MetricCounter.objects.all()}

        def value(name: str) -> int:
            return rows[name].value if name in rows else 0

        for name, help_text in (
            (RECONCILER_PASSES, "Reconciler passes."),
            (RECONCILER_SKIPPED, "Reconciler runs skipped: another held the lease."),
            (RECONCILER_LEASES_EXPIRED, "Partition leases the reconciler expired."),
            (RECONCILER_RUNS_WOKEN, "Runs the reconciler re-sent wake-ups for."),
            (RECONCILER_RUNS_ADVANCED, "Stages the reconciler finished after a crash."),
        ):
            yield CounterMetricFamily(f"hxo_{name}", help_text, value=value(name))
        last = GaugeMetricFamily(
            "hxo_reconciler_last_pass_timestamp_seconds",
            "When the last reconciler pass ended (Unix time; 0: never).",
        )
        passes = rows.get(RECONCILER_PASSES)
        last.add_metric([], passes.updated_at.timestamp() if passes else 0)
        yield last

    def _queue(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("hxo_queue_up", "1 when the queue's broker answered the scrape.")
        try:
            depth = queue_depth()
        except Exception:  # a broker outage must not fail the whole scrape
            log.warning("metrics: the queue's broker did not answer", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily(
            "hxo_queue_depth", "Wake-up tasks waiting in django-q2's queue.", value=depth
        )


def exposition(accept: str = "") -> tuple[bytes, str]:
    """The metrics of one scrape and their content type, in the format the `Accept` header
    asks for (prometheus_client's negotiation): OpenMetrics when asked (Prometheus asks for
    it first), else Prometheus' text format 0.0.4."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    registry = CollectorRegistry()
    registry.register(HxoCollector())  # type: ignore[arg-type]
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


__all__ = [
    "HxoCollector",
    "bump",
    "exposition",
    "queue_depth",
    "record_reconcile",
    "roll_up_finished_stages",
    "stage_figures",
]

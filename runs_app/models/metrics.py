"""What `GET /metrics` reads besides the engine's tables (runs_app/metrics.py).

- `StageRollup`: per finished stage, its claims, retries and histogram counts, computed once
  when the stage and its run have finished (nothing of theirs changes after that), so a
  scrape sums one small row per finished stage instead of scanning every partition ever run.
- `MetricCounter`: named counters of events that leave no row behind (reconciler passes),
  incremented in the database so every process adds to the same number.
"""

from __future__ import annotations

from django.db import models

from runs_app.models.engine import RunStage


class StageRollup(models.Model):
    stage = models.OneToOneField(
        RunStage, primary_key=True, on_delete=models.CASCADE, related_name="rollup"
    )
    # runs_app.metrics.ROLLUP_VERSION when computed: a change of buckets recomputes the rows.
    version = models.PositiveSmallIntegerField()
    kind = models.CharField(max_length=100)
    executor = models.CharField(max_length=100)
    claims = models.BigIntegerField(default=0)
    retries = models.BigIntegerField(default=0)
    # {"counts": [per bucket, not cumulative, the last one +Inf], "sum": seconds}
    durations = models.JSONField(default=dict)
    claim_latencies = models.JSONField(default=dict)
    computed_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"rollup of stage {self.stage_id}"


class MetricCounter(models.Model):
    name = models.CharField(max_length=100, primary_key=True)
    value = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name}={self.value}"

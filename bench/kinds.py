"""Bench-only job kinds: N no-op partitions, so the bench measures HXO itself."""

from __future__ import annotations

from typing import Any

from blueprints_app.registry import (
    Executor,
    PartitionContext,
    Partitioner,
    PartitionSpec,
    StageManifest,
    register_executor,
    register_partitioner,
)

BENCH_KIND = "bench.noop"


@register_partitioner
class CountPartitioner(Partitioner):
    name = "bench_count"
    description = "N partitions with nothing to read"
    params_schema = {
        "type": "object",
        "properties": {"items": {"type": "integer", "minimum": 0, "maximum": 1_000_000}},
        "required": ["items"],
    }

    def partition(self, ctx: PartitionContext) -> StageManifest:
        kind = ctx.kind.kind
        return StageManifest(
            partitions=[
                PartitionSpec(inputs={"item": i, "stage_kind": kind}, weight=1)
                for i in range(ctx.params["items"])
            ]
        )


@register_executor
class NoopExecutor(Executor):
    name = "bench_noop"
    description = "returns at once"

    def execute(self, ctx: Any) -> dict[str, Any]:
        if ctx.dry_run:
            return {"summary": "nothing"}
        return {"status": "done", "item": ctx.inputs["item"]}

    def effect_exists(self, ctx: Any, output: dict[str, Any]) -> bool:
        return True  # it has no effect, so none can be missing


def noop_task(i: int) -> int:
    """The raw django-q2 baseline: one task per unit of work."""
    return i


def ensure_bench_kind() -> None:
    from blueprints_app.models import JobKind

    JobKind.objects.update_or_create(
        kind=BENCH_KIND,
        defaults={
            "description": "bench no-op",
            "partitioners": ["bench_count"],
            "executors": ["bench_noop"],
            "default_slo_ms": 600000,
            "input_schema": {
                "type": "object",
                "properties": {"item": {"type": "integer"}, "stage_kind": {"type": "string"}},
                "required": ["item", "stage_kind"],
            },
            "output_schema": {
                "type": "object",
                "properties": {"status": {"const": "done"}, "item": {"type": "integer"}},
                "required": ["status", "item"],
            },
            "result_status": "done",
        },
    )

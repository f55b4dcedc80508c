"""Test-only job kinds: components whose effects the tests can count.

`test_items` makes N partitions; `test_append` appends one line per partition to a real file
(its effect), with failure and blocking switches read from the stage params so a test can
make a partition fail, or hold it while the test kills the worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from blueprints_app.models import JobKind
from blueprints_app.registry import (
    Executor,
    PartitionContext,
    Partitioner,
    PartitionSpec,
    StageManifest,
    register_executor,
    register_partitioner,
)

log = logging.getLogger("hxo.test_append")

TEST_KIND = "test.echo"
TEST_KIND_NOAPPROVAL = "test.quick"


@register_partitioner
class ItemsPartitioner(Partitioner):
    name = "test_items"
    description = "N partitions over a directory the test owns"
    params_schema = {
        "type": "object",
        "properties": {
            "items": {"type": "integer", "minimum": 0, "maximum": 200000},
            "dir": {"type": "string"},
            "fail": {"type": "object"},
            "fail_dry_run": {"type": "object"},
            "block": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 200000},
            },
            "salt": {"type": "string"},
            # Lines each execution logs (INFO, on the worker's thread): a partition's log.
            "log_lines": {"type": "integer", "minimum": 0, "maximum": 100000},
        },
        "required": ["items", "dir"],
        "additionalProperties": False,
    }

    @classmethod
    def describe_weight(cls, weight: int, params: Mapping[str, Any] | None = None) -> str:
        return f"{int(weight or 0):,}"  # one per item, not bytes

    def partition(self, ctx: PartitionContext) -> StageManifest:
        params = ctx.params
        src = Path(params["dir"]) / "source.txt"
        fingerprint = src.read_text() if src.exists() else ""
        return StageManifest(
            partitions=[
                PartitionSpec(
                    inputs={"item": i, "stage_kind": ctx.kind.kind},
                    fingerprints={"source.txt": fingerprint},
                    weight=1,
                    label=f"item {i}",
                )
                for i in range(params["items"])
            ],
            data={"salt": params.get("salt", "")},
        )


def _effects(ctx: Any) -> Path:
    return Path(ctx.params["dir"]) / f"effects-{ctx.stage['id']}.log"


@register_executor
class AppendExecutor(Executor):
    name = "test_append"
    description = "appends a line per partition"
    idempotent = True

    def execute(self, ctx: Any) -> dict[str, Any]:
        item = ctx.inputs["item"]
        for n in range(int(ctx.params.get("log_lines") or 0)):
            log.info("item %s attempt %s line %s", item, ctx.attempt, n)
        fails = int((ctx.params.get("fail") or {}).get(str(item), 0))
        if fails and not ctx.dry_run:
            # Count executions across runs in a file, so a replay sees the failure healed.
            counter = Path(ctx.params["dir"]) / f"tries-{ctx.stage['id']}-{item}"
            tries = int(counter.read_text()) + 1 if counter.exists() else 1
            counter.write_text(str(tries))
            if tries <= fails:
                raise RuntimeError(f"injected failure of item {item}, try {tries}")
        dry_fails = int((ctx.params.get("fail_dry_run") or {}).get(str(item), 0))
        if dry_fails and ctx.dry_run:
            # The same, for dry-runs: a review that failed and is replayed.
            counter = Path(ctx.params["dir"]) / f"dry-tries-{ctx.stage['id']}-{item}"
            tries = int(counter.read_text()) + 1 if counter.exists() else 1
            counter.write_text(str(tries))
            if tries <= dry_fails:
                raise RuntimeError(f"injected dry-run failure of item {item}, try {tries}")
        if item in (ctx.params.get("block") or []) and not ctx.dry_run:
            # Hold the partition (heartbeating) until the test releases it by a file.
            release = Path(ctx.params["dir"]) / f"release-{item}"
            (Path(ctx.params["dir"]) / f"holding-{item}").write_text(str(ctx.attempt))
            deadline = time.monotonic() + 120
            while not release.exists() and time.monotonic() < deadline:
                ctx.heartbeat()
                time.sleep(0.05)
        if ctx.dry_run:
            return {"summary": f"would append item {item}", "item": item}
        # Every execution is logged (what tests count when nothing crashed)...
        with _effects(ctx).open("a") as fh:
            fh.write(f"{item}\n")
        if self.idempotent:
            # ...and the effect proper is keyed by partition, as real executors do: a file per
            # item written to a temporary name and renamed, so running twice changes nothing.
            final = Path(ctx.params["dir"]) / f"effect-{ctx.stage['id']}-{item}"
            if not final.exists():
                tmp = final.with_name(f"{final.name}.tmp-{ctx.partition_id}-{ctx.fence}")
                tmp.write_text(str(item))
                tmp.rename(final)
        return {"status": "done", "item": item}

    def effect_exists(self, ctx: Any, output: dict[str, Any]) -> bool:
        """The keyed effect file of this stage and item is there."""
        item = ctx.inputs["item"]
        return (Path(ctx.params["dir"]) / f"effect-{ctx.stage['id']}-{item}").is_file()


@register_executor
class AppendOnceExecutor(AppendExecutor):
    name = "test_append_once"
    description = "appends a line per partition; not safe to repeat"
    idempotent = False


def make_test_kinds() -> None:
    schema_in = {
        "type": "object",
        "properties": {"item": {"type": "integer"}, "stage_kind": {"type": "string"}},
        "required": ["item", "stage_kind"],
    }
    schema_out = {
        "type": "object",
        "properties": {"status": {"const": "done"}, "item": {"type": "integer"}},
        "required": ["status", "item"],
    }
    for kind, require_dry_run in ((TEST_KIND, True), (TEST_KIND_NOAPPROVAL, False)):
        JobKind.objects.update_or_create(
            kind=kind,
            defaults={
                "description": "test kind",
                "partitioners": ["test_items"],
                "executors": ["test_append", "test_append_once"],
                "allow_non_idempotent": True,
                "require_dry_run": require_dry_run,
                "default_slo_ms": 60000,
                "input_schema": schema_in,
                "output_schema": schema_out,
                "result_status": "done",
            },
        )


def stage(
    sid: str,
    directory: Path,
    *,
    items: int = 3,
    kind: str = TEST_KIND,
    depends_on: list[str] | None = None,
    executor: str = "test_append",
    **params: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": sid,
        "kind": kind,
        "partitioner": "test_items",
        "executor": executor,
        "params": {"items": items, "dir": str(directory), **params},
        "depends_on": depends_on or [],
    }
    if executor == "test_append_once":
        doc["non_idempotent"] = True
    return doc


def effects(directory: Path, sid: str) -> list[int]:
    """Items in the order they were executed, one line per execution."""
    path = directory / f"effects-{sid}.log"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def effect_files(directory: Path, sid: str) -> list[int]:
    """Items whose keyed effect exists (each at most once by construction)."""
    return sorted(int(p.name.rsplit("-", 1)[1]) for p in directory.glob(f"effect-{sid}-*"))

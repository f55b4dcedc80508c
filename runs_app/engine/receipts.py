"""Receipts: Merkle leaves and roots over finished partitions, and the receipt's check that
every recorded effect of an apply is still there. Read only; `runs_app.selectors` builds the
receipt from these.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from blueprints_app.models import JobKind
from blueprints_app.registry import EXECUTORS, ExecutionContext, get_executor
from runs_app import hashing
from runs_app.manifest import run_stage_document
from runs_app.models import Partition, PartitionState, Run, RunMode, RunStage
from runs_app.models.engine import PARTITION_COMPLETED, PARTITION_DONE

log = logging.getLogger(__name__)

P = PartitionState


def kind_from_snapshot(snapshot: dict[str, Any]) -> JobKind:
    """The job kind as pinned into the run (the registry row may have moved on since); an
    unsaved JobKind built from the snapshot's known fields."""
    fields = {f.name for f in JobKind._meta.get_fields()}
    return JobKind(**{k: v for k, v in snapshot.items() if k in fields})


def stage_leaves(stage: RunStage) -> list[str]:
    """The Merkle leaves of the stage's finished partitions, in partition order (hex SHA-256
    each, `hashing.merkle_leaf`); pending, running and cancelled partitions have none."""
    rows = (
        Partition.objects.filter(stage_id=stage.pk)
        .filter(state__in=PARTITION_COMPLETED)
        .order_by("index")
        .values_list("content_id", "output", "preview", "attempts", "state")
    )
    return [
        hashing.merkle_leaf(
            executor=stage.executor,
            content_id=content_id,
            output=(output if output is not None else preview)
            if state != P.FAILED
            else {"failed": True},
            attempt=attempts,
        )
        for content_id, output, preview, attempts, state in rows.iterator(chunk_size=2000)
    ]


def stage_merkle_root(stage: RunStage) -> str:
    """The Merkle root over `stage_leaves` (hex SHA-256)."""
    return hashing.merkle_root(stage_leaves(stage))


# The receipt's effect check: at most this many missing partitions are named.
MISSING_LISTED = 20
# Effect check reasons.
EFFECT_MISSING = "effect_missing"
EFFECT_CHECK_FAILED = "effect_check_failed"
NO_OUTPUT = "no_output"


def check_effects(run: Run, *, thorough: bool = False, budget_s: float | None = None) -> dict:
    """Ask each executor whether the effect every finished partition of an apply recorded is
    still there, as the output says (`Executor.effect_exists`), for the run's receipt.

    A reused partition stands on the effect of the partition it reused: its output is that
    partition's output, checked the same way. A dry-run has no effects: nothing is checked.
    `thorough` is passed on as `ctx.thorough` (hash every byte again instead of trusting an
    unchanged stat identity). `budget_s` bounds the time spent: the check stops after the
    partition that crossed it, and says so (`complete: False`).

    Returns `{"checked", "missing", "complete", "thorough", "missing_partitions": [{"stage",
    "index", "reason"}, ... at most MISSING_LISTED]}`; reasons: EFFECT_MISSING (the executor
    said no), EFFECT_CHECK_FAILED (it raised: cannot vouch), NO_OUTPUT. Read only.
    """
    result: dict[str, Any] = {
        "checked": 0,
        "missing": 0,
        "complete": True,
        "thorough": thorough,
        "missing_partitions": [],
    }
    if run.mode != RunMode.APPLY:
        return result
    deadline = None if budget_s is None else time.monotonic() + budget_s
    stages = {s.pk: s for s in run.run_stages.all()}
    kinds = {k: kind_from_snapshot(v) for k, v in run.kind_snapshots.items()}
    unpinned = {s.kind for s in stages.values()} - set(kinds)
    if unpinned:  # a run made before kinds were pinned: the registry's row, if any
        kinds.update({k.kind: k for k in JobKind.objects.filter(kind__in=unpinned)})
    # An executor no longer installed (a plugin removed) cannot vouch for its effects.
    executors = {
        s.executor: get_executor(s.executor) if s.executor in EXECUTORS else None
        for s in stages.values()
    }

    def missing(stage: RunStage, index: int, reason: str) -> None:
        result["missing"] += 1
        if len(result["missing_partitions"]) < MISSING_LISTED:
            result["missing_partitions"].append(
                {"stage": stage.stage_id, "index": index, "reason": reason}
            )

    # One query for the whole run; stage rows are created in position order, so ordering by
    # stage id walks the stages in plan order (selectors.partitions_of).
    rows = (
        Partition.objects.filter(stage_id__in=list(stages), state__in=PARTITION_DONE)
        .order_by("stage_id", "index")
        .values_list(
            "pk", "stage_id", "index", "inputs", "fingerprints", "output", "attempts", "fence"
        )
    )
    for pk, stage_pk, index, inputs, fingerprints, output, attempts, fence in rows.iterator(
        chunk_size=500
    ):
        stage = stages[stage_pk]
        kind, executor = kinds.get(stage.kind), executors[stage.executor]
        if deadline is not None and time.monotonic() > deadline:
            result["complete"] = False
            return result
        result["checked"] += 1
        if not isinstance(output, dict):
            missing(stage, index, NO_OUTPUT)
            continue
        if kind is None or executor is None:
            missing(stage, index, EFFECT_CHECK_FAILED)
            continue
        ctx = ExecutionContext(
            run_id=run.pk,
            partition_id=pk,
            stage=run_stage_document(stage),
            kind=kind,
            inputs=inputs,
            fingerprints=fingerprints,
            manifest=stage.manifest,
            plan_digest=run.revision.digest,
            dry_run=False,
            attempt=attempts,
            fence=fence,
            thorough=thorough,
        )
        try:
            present = executor.effect_exists(ctx, output) is True
        except Exception as exc:  # a check that cannot tell cannot vouch
            if len(result["missing_partitions"]) < MISSING_LISTED:  # not 10,000 lines
                log.warning("run %s partition %s: effect check failed: %s", run.pk, pk, exc)
            missing(stage, index, EFFECT_CHECK_FAILED)
            continue
        if not present:
            missing(stage, index, EFFECT_MISSING)
    return result

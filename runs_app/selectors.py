"""Reads that span models: run progress, receipts, run diffs, review totals.

Views, the API and the CLI share these so a page and its endpoint never disagree, and so
query counts stay flat whatever the number of partitions (counters live on RunStage).
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from runs_app import hashing
from runs_app.execution import stage_leaves
from runs_app.models import Partition, Run, RunStage


def run_with_stages(run_id: int) -> Run:
    return (
        Run.objects.select_related("plan", "revision", "requested_by", "parent", "dry_run")
        .prefetch_related("run_stages", "approvals__user")
        .get(pk=run_id)
    )


def stage_elapsed_ms(stage: RunStage) -> int | None:
    if stage.started_at is None:
        return None
    end = stage.finished_at or timezone.now()
    return int((end - stage.started_at).total_seconds() * 1000)


def stage_progress(stage: RunStage) -> dict[str, Any]:
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
        "started_at": stage.started_at,
        "finished_at": stage.finished_at,
        "elapsed_ms": elapsed,
        "slo_ms": stage.slo_ms,
        # Live: a running stage past its SLO is breached before it ends.
        "slo_breached": stage.slo_breached or (elapsed is not None and elapsed > stage.slo_ms),
        "merkle_root": stage.merkle_root,
        "non_idempotent": stage.non_idempotent,
    }


def run_totals(run: Run) -> dict[str, int]:
    totals: dict[str, int] = {}
    for stage in run.run_stages.all():
        for name, value in stage.counts.items():
            totals[name] = totals.get(name, 0) + value
    return totals


def partitions_of(
    run: Run, *, stage: str | None = None, state: str | None = None
) -> QuerySet[Partition]:
    qs = Partition.objects.filter(run=run).select_related("stage")
    if stage:
        qs = qs.filter(stage__stage_id=stage)
    if state:
        qs = qs.filter(state=state)
    return qs.order_by("stage__position", "index")


def receipt(run: Run) -> dict[str, Any]:
    """Recompute every Merkle root from the stored results and compare with the recorded ones."""
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
    verified = verified and merkle_root == run.merkle_root
    return {
        "run": run.pk,
        "merkle_root": merkle_root,
        "recorded_merkle_root": run.merkle_root,
        "stages": stages,
        "verified": verified,
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
                "index", "cas_id", "inputs", "fingerprints", "output", "state"
            )
        }
        b = {
            row[0]: row[1:]
            for row in Partition.objects.filter(stage=theirs[sid]).values_list(
                "index", "cas_id", "inputs", "fingerprints", "output", "state"
            )
        }
        changed = []
        for index in sorted(set(a) | set(b)):
            if index not in a or index not in b:
                changed.append({"index": index, "change": "added" if index in a else "removed"})
            else:
                (cas_a, in_a, fp_a, out_a, st_a), (cas_b, in_b, fp_b, out_b, st_b) = (
                    a[index],
                    b[index],
                )
                item: dict[str, Any] = {}
                if cas_a != cas_b:
                    item["cas_id"] = {"run": cas_a, "against": cas_b}
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

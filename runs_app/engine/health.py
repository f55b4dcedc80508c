"""Health waits: a stage held while its target is unhealthy, and resumed when it is not.

An executor that finds its target unhealthy before it has any effect raises
`blueprints_app.registry.Throttled` (deploy.migrate: `runs_app.kinds.dbhealth`). That is not a
failure, so it spends nothing: `release` puts the claimed partition back to pending under its
fence with the attempt the claim counted given back, holds the stage until `retry_after_ms`
from now (`RunStage.held_until`, which `claims.claimable` honours, so no new claim of the stage
is made meanwhile, and `claims.next_due` lets drainers sleep until then or leave), and marks
the stage waiting (`RunStage.health_wait`, shown by the run page and the API) with an audit
event `stage.health_wait` when the wait begins. `passed` ends the wait when a partition of the
stage gets through the gate again: `stage.health_resumed`, and a line in that partition's log.

Why a stage hold and not the run's pause flag: the wait is the stage's, not the run's (another
stage on a healthy target keeps going), and the reconciler already re-wakes a run whose
partitions are due, so a wait needs no timer of its own.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from hxo_site.audit import audit
from runs_app.engine import logs
from runs_app.engine.claims import Claim, count_moves
from runs_app.models import Partition, PartitionState, RunStage

log = logging.getLogger(__name__)

P = PartitionState

ACTION_WAIT = "stage.health_wait"
ACTION_RESUMED = "stage.health_resumed"


def release(
    claim: Claim,
    *,
    reason: str,
    retry_after_ms: int,
    detail: Any = None,
    log_lines: list[str] | None = None,
    log_dropped: int = 0,
) -> bool:
    """Put a throttled claim back: pending again, its attempt given back, due (with the rest
    of its stage's pending partitions) `retry_after_ms` from now; the stage marked waiting.
    One transaction, fenced on the claim: a holder that lost its claim changes nothing.
    Returns whether the partition was released."""
    now = timezone.now()
    not_before = now + timedelta(milliseconds=retry_after_ms)
    with transaction.atomic():
        changed = Partition.objects.filter(
            pk=claim.partition_id, fence=claim.fence, state=P.RUNNING
        ).update(
            state=P.PENDING,
            attempts=F("attempts") - 1,
            due_at=not_before,
            lease_owner="",
            lease_expires_at=None,
        )
        if not changed:
            return False
        count_moves(claim.stage_pk, {"running": -1, "pending": 1})
        # The stage claims nothing new until then: one row says so (`claims.claimable`
        # leaves a held stage out); moving every pending partition's `due_at` instead was an
        # UPDATE of the whole stage at each check (100,000 rows for a large backfill).
        RunStage.objects.filter(pk=claim.stage_pk).update(held_until=not_before)
        wait = {
            "reason": reason,
            "since": now.isoformat(),
            "checked_at": now.isoformat(),
            "retry_after_ms": retry_after_ms,
            **(detail if isinstance(detail, dict) else {}),
        }
        began = RunStage.objects.filter(pk=claim.stage_pk, health_wait__isnull=True).update(
            health_wait=wait
        )
        if began:
            audit(
                actor=None,
                action=ACTION_WAIT,
                object_type="run",
                object_id=claim.run_id,
                after={"stage": _stage_id(claim.stage_pk), "reason": reason},
                detail=detail,
            )
        else:
            # Still waiting: the newest reason, the wait's first moment kept.
            current = RunStage.objects.filter(pk=claim.stage_pk).values_list(
                "health_wait", flat=True
            )
            old = current.first() or {}
            RunStage.objects.filter(pk=claim.stage_pk).update(
                health_wait={**wait, "since": old.get("since", wait["since"])}
            )
        logs.store([(claim.partition_id, claim.attempt, list(log_lines or []), log_dropped)])
    return True


def passed(stage_pk: int, run_id: int) -> None:
    """A partition of the stage got through its gate: end the stage's wait if it waited, with
    the audit event and a log line (captured into the passing partition's log). One query
    when the stage was not waiting."""
    wait = (
        RunStage.objects.filter(pk=stage_pk, health_wait__isnull=False)
        .values_list("health_wait", flat=True)
        .first()
    )
    if wait is None:
        return
    with transaction.atomic():
        ended = RunStage.objects.filter(pk=stage_pk, health_wait__isnull=False).update(
            health_wait=None, held_until=None
        )
        if not ended:
            return  # another drainer ended it
        waited_s = _seconds_since(wait.get("since"))
        audit(
            actor=None,
            action=ACTION_RESUMED,
            object_type="run",
            object_id=run_id,
            before={"stage": _stage_id(stage_pk), "reason": wait.get("reason")},
            detail={"waited_s": waited_s, "target": wait.get("target")},
        )
    log.info(
        "health checks pass again on target %r: resuming after %s s (%s)",
        wait.get("target"),
        waited_s,
        wait.get("reason"),
    )


def _stage_id(stage_pk: int) -> str:
    return RunStage.objects.filter(pk=stage_pk).values_list("stage_id", flat=True).first() or ""


def _seconds_since(iso: Any) -> float | None:
    try:
        return round((timezone.now() - datetime.fromisoformat(iso)).total_seconds(), 1)
    except (TypeError, ValueError):
        return None

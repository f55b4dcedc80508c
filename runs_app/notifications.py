"""The events runs emit, and their payloads (README, "Notifications").

Called by `runs_app.transitions.move_run` (every run state change goes through it) and by the
engine when a stage breaches its SLO, inside the transaction of the change, so that the event
commits or rolls back with it (`notify_app.outbox.emit`). Building a payload reads only the
run's own rows; sending happens later, never in the run's way.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.urls import reverse

from notify_app.outbox import emit
from runs_app.models import Approval, Run, RunStage, RunState

# Run state → event. Pending, partitioning, running and aborted emit nothing (an abort is a
# person's own act; the events are what someone else needs to hear about).
RUN_EVENTS: dict[str, str] = {
    RunState.AWAITING_APPROVAL: "run.awaiting_approval",
    RunState.APPROVED: "run.approved",
    RunState.REJECTED: "run.rejected",
    RunState.FAILED: "run.failed",
    RunState.SUCCEEDED: "run.succeeded",
}


def run_url(run_id: int) -> str:
    """The run's page under HXO_PUBLIC_URL."""
    return settings.HXO_PUBLIC_URL + reverse("run", args=[run_id])


def run_payload(run: Run) -> dict[str, Any]:
    """`{"run": {...}}`: id, url, mode, state, plan {id, name}, revision, digest, kinds,
    requested_by, required_approvals, approvals [{user, decision, comment, at}], slo_breached,
    error, created_at, started_at, finished_at (ISO 8601)."""
    approvals = [
        {
            "user": a.user.get_username() if a.user else None,
            "decision": a.decision,
            "comment": a.comment,
            "at": a.created_at.isoformat(),
        }
        for a in Approval.objects.filter(run_id=run.pk).select_related("user").order_by("pk")
    ]
    plan = run.plan
    return {
        "run": {
            "id": run.pk,
            "url": run_url(run.pk),
            "mode": run.mode,
            "state": run.state,
            "plan": {"id": plan.pk, "name": plan.name},
            "revision": run.revision.number,
            "digest": run.digest,
            "kinds": sorted(run.kind_snapshots or {}),
            "requested_by": run.requested_by.get_username() if run.requested_by else None,
            "required_approvals": run.required_approvals,
            "approvals": approvals,
            "slo_breached": run.slo_breached,
            "error": run.error,
            "created_at": run.created_at.isoformat() if run.created_at else None,
            "started_at": run.started_at.isoformat() if run.started_at else None,
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        }
    }


def run_moved(run: Run, target: str) -> None:
    """Emit the event of a run's move to `target`, if it has one; once per run and state."""
    name = RUN_EVENTS.get(target)
    if name is None:
        return
    # One read for the run with its plan, revision and requester (already moved: same
    # transaction), rather than one per relation.
    fresh = Run.objects.select_related("plan", "revision", "requested_by").get(pk=run.pk)
    emit(name, key=f"run:{run.pk}:{target}", payload=run_payload(fresh))


def slo_breached(stage: RunStage, elapsed_ms: int) -> None:
    """Emit `slo.breached` for a stage that ran `elapsed_ms` against its `slo_ms`: the run's
    payload plus `stage` {id, kind, slo_ms, elapsed_ms}; once per stage."""
    run = Run.objects.select_related("plan", "revision", "requested_by").get(pk=stage.run_id)
    payload = run_payload(run)
    payload["stage"] = {
        "id": stage.stage_id,
        "kind": stage.kind,
        "slo_ms": stage.slo_ms,
        "elapsed_ms": elapsed_ms,
    }
    emit("slo.breached", key=f"stage:{stage.pk}:slo", payload=payload)

"""The state machines of runs and stages: one function each moves a row and refuses illegal
moves. Partitions move by fenced compare-and-swap updates in `runs_app.engine` (claims,
execute, progress), each naming the state it moves from in its WHERE clause; their state
machine is drawn in docs/architecture.md ("States")."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from runs_app import notifications
from runs_app.models import Run, RunStage, RunState, StageState

R = RunState
RUN_MOVES: dict[str, set[str]] = {
    R.PENDING: {R.PARTITIONING, R.ABORTED, R.FAILED},
    R.PARTITIONING: {R.RUNNING, R.FAILED, R.ABORTED},
    R.RUNNING: {R.SUCCEEDED, R.FAILED, R.ABORTED, R.AWAITING_APPROVAL},
    R.AWAITING_APPROVAL: {R.APPROVED, R.REJECTED},
    R.SUCCEEDED: set(),
    R.FAILED: set(),
    R.ABORTED: set(),
    R.APPROVED: set(),
    R.REJECTED: set(),
}

S = StageState
STAGE_MOVES: dict[str, set[str]] = {
    S.PENDING: {S.RUNNING, S.CANCELLED},
    S.RUNNING: {S.SUCCEEDED, S.FAILED, S.CANCELLED},
    S.SUCCEEDED: set(),
    S.FAILED: set(),
    S.CANCELLED: set(),
}


class IllegalTransition(Exception):
    def __init__(self, what: str, current: str, target: str) -> None:
        super().__init__(f"{what} cannot move from {current} to {target}")
        self.current = current
        self.target = target


def move_run(run: Run, target: str) -> bool:
    """Move `run` to `target` with a compare-and-swap on its state.

    Returns False when another process moved it first (the caller re-reads); raises
    IllegalTransition when the move is not in the state machine. The move's event
    (`runs_app.notifications.RUN_EVENTS`) is written in the same transaction: only the
    process whose update won emits it, and a rollback takes it back.
    """
    current = run.state
    if target not in RUN_MOVES[current]:
        raise IllegalTransition(f"run {run.pk}", current, target)
    now = timezone.now()
    fields: dict[str, object] = {"state": target}
    if target == R.RUNNING:
        fields["started_at"] = now
    if target in {R.SUCCEEDED, R.FAILED, R.ABORTED, R.AWAITING_APPROVAL}:
        fields["finished_at"] = now
    # The caller's transaction when there is one (no savepoint); else one of its own.
    with transaction.atomic(savepoint=False):
        changed = Run.objects.filter(pk=run.pk, state=current).update(**fields)
        if changed:
            if target in {R.SUCCEEDED, R.FAILED, R.ABORTED, R.AWAITING_APPROVAL}:
                fields.update(_end_pause(run, now))
            for name, value in fields.items():
                setattr(run, name, value)
            notifications.run_moved(run, target)
    return bool(changed)


def _end_pause(run: Run, now: object) -> dict[str, object]:
    """A run that stops executing while paused (aborted, or its last running partitions
    finished) is no longer paused: its open pause interval ends now. Read again after the
    move: a pause may have committed since `run` was read."""
    fresh = Run.objects.filter(pk=run.pk, paused_at__isnull=False).first()
    if fresh is None:
        return {}
    ended = {"paused_at": None, "pauses": fresh.pauses_closed(now)}  # type: ignore[arg-type]
    Run.objects.filter(pk=run.pk).update(**ended)
    return ended


def move_stage(stage: RunStage, target: str) -> bool:
    current = stage.state
    if target not in STAGE_MOVES[current]:
        raise IllegalTransition(f"stage {stage.stage_id}", current, target)
    now = timezone.now()
    fields: dict[str, object] = {"state": target}
    if target == S.RUNNING:
        fields["started_at"] = now
    else:
        fields["finished_at"] = now
    changed = RunStage.objects.filter(pk=stage.pk, state=current).update(**fields)
    if changed:
        for name, value in fields.items():
            setattr(stage, name, value)
    return bool(changed)

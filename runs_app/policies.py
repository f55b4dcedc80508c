"""Who may decide on a dry-run, and whether an approval still lets an apply through.

One place for rules the services enforce and the pages show, so that a page never offers an
action the service refuses (issue 11 §4):

- Four-eyes over every author: nobody who wrote a revision of the plan since its last
  successful apply (up to the revision under review), nor anyone who requested the dry-run or
  a dry-run it replays, may decide on it, unless `HXO_ALLOW_SELF_APPROVAL`.
- One approval, one apply: an apply that names a dry-run consumes the approval of that
  dry-run's replay lineage (`Run.consumed_dry_run`, unique in the database).
- An approval expires `HXO_APPROVAL_TTL_HOURS` after it was given.
- An approval covers the partitions its dry-run reviewed: an apply of a replayed dry-run
  covers the whole manifest only when every partition of the lineage's first dry-run is held
  by an approved dry-run of the same digest.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.utils import timezone

from blueprints_app import codes
from runs_app.errors import ServiceError
from runs_app.models import Approval, Partition, PlanRevision, Run, RunMode, RunState

# How many uncovered partitions a refusal lists (the count is always complete).
MAX_LISTED = 20


# --- Lineage ------------------------------------------------------------------------------


def lineage(run: Run) -> list[Run]:
    """`run` and the runs it replays, the first (the root) first. One query per level."""
    chain = [run]
    seen = {run.pk}
    while chain[0].parent_id is not None and chain[0].parent_id not in seen:
        parent = Run.objects.filter(pk=chain[0].parent_id).first()
        if parent is None:
            break
        seen.add(parent.pk)
        chain.insert(0, parent)
    return chain


def lineage_root(run: Run) -> Run:
    return lineage(run)[0]


def descendants(root: Run) -> list[Run]:
    """The root and its replays, in order (a run has at most one replay: run_one_replay_per_run)."""
    chain = [root]
    while True:
        child = Run.objects.filter(parent=chain[-1]).order_by("id").first()
        if child is None or child.pk in {r.pk for r in chain}:
            return chain
        chain.append(child)


# --- Four-eyes ------------------------------------------------------------------------------


def _reasons(
    runs: list[Run], user: Any, *, revisions: dict[int, list[tuple[int, int | None]]]
) -> dict[int, str | None]:
    applied: dict[int, list[int]] = {}
    plan_ids = {r.plan_id for r in runs}
    for plan_id, number in Run.objects.filter(
        plan_id__in=plan_ids, mode=RunMode.APPLY, state=RunState.SUCCEEDED
    ).values_list("plan_id", "revision__number"):
        applied.setdefault(plan_id, []).append(number)
    # Requesters of the dry-runs each run replays (replays of dry-runs are rare: one query).
    parent_requesters: dict[int, list[tuple[int, int | None]]] = {}
    for run in runs:
        if run.parent_id is not None:
            parent_requesters[run.pk] = [(r.pk, r.requested_by_id) for r in lineage(run)[:-1]]
    out: dict[int, str | None] = {}
    for run in runs:
        out[run.pk] = None
        if settings.HXO_ALLOW_SELF_APPROVAL:
            continue
        number = run.revision.number
        if run.revision.author_id == user.pk:
            out[run.pk] = f"revision {number}: you wrote this revision of the plan"
            continue
        if run.requested_by_id == user.pk:
            out[run.pk] = "you requested this dry-run"
            continue
        since = max((n for n in applied.get(run.plan_id, []) if n <= number), default=0)
        mine = [
            n
            for n, author in revisions.get(run.plan_id, [])
            if since < n <= number and author == user.pk
        ]
        if mine:
            out[run.pk] = (
                f"you wrote revision {max(mine)} of the plan, and no apply of the plan has "
                "succeeded since"
            )
            continue
        earlier = next(
            (pk for pk, requester in parent_requesters.get(run.pk, []) if requester == user.pk),
            None,
        )
        if earlier is not None:
            out[run.pk] = f"you requested dry-run #{earlier}, which this one replays"
    return out


def decision_reasons(runs: Iterable[Run], user: Any) -> dict[int, str | None]:
    """For each dry-run (its `revision` loaded), why `user` may not decide on it, or None.

    Queries: one for the plans' revisions, one for their successful applies, and one per
    replay level of replayed dry-runs, whatever the number of runs.
    """
    runs = list(runs)
    if not runs:
        return {}
    revisions: dict[int, list[tuple[int, int | None]]] = {}
    for plan_id, number, author in PlanRevision.objects.filter(
        plan_id__in={r.plan_id for r in runs}
    ).values_list("plan_id", "number", "author_id"):
        revisions.setdefault(plan_id, []).append((number, author))
    return _reasons(runs, user, revisions=revisions)


def self_approval_reason(run: Run, actor: Any) -> str | None:
    """Why `actor` may not decide on `run` (four-eyes), or None. See the module docstring."""
    return decision_reasons([run], actor)[run.pk]


def runs_to_decide(user: Any) -> tuple[list[tuple[Run, None]], list[tuple[Run, str]]]:
    """Dry-runs awaiting a decision that `user` has not made: (those they may decide,
    those the four-eyes rule keeps them from, with the reason). Newest first. The one list
    behind the approvals inbox, the home page and the navigation badge."""
    from runs_app.selectors import runs_awaiting_decision

    waiting = runs_awaiting_decision(user)
    reasons = decision_reasons(waiting, user)
    mine: list[tuple[Run, None]] = []
    others: list[tuple[Run, str]] = []
    for run in waiting:
        reason = reasons[run.pk]
        if reason:
            others.append((run, reason))
        else:
            mine.append((run, None))
    return mine, others


# --- Approvals an apply relies on -----------------------------------------------------------


def approval_ttl() -> dt.timedelta:
    return dt.timedelta(hours=settings.HXO_APPROVAL_TTL_HOURS)


def live_approvers(run: Run, *, now: dt.datetime | None = None) -> int:
    """Distinct users whose approval of `run`'s digest is younger than the TTL."""
    since = (now or timezone.now()) - approval_ttl()
    return (
        Approval.objects.filter(
            run=run, decision=Approval.Decision.APPROVE, digest=run.digest, created_at__gte=since
        )
        .values("user")
        .distinct()
        .count()
    )


def uncovered_partitions(dry_run: Run) -> tuple[list[tuple[str, int]], int]:
    """Partitions of the lineage's manifest that no approved dry-run of the same digest
    reviewed: ([(stage_id, index)...], manifest size). The manifest is the root's (the first
    dry-run holds every partition; replays hold subsets of it)."""
    root = lineage_root(dry_run)
    if root.pk == dry_run.pk and dry_run.state == RunState.APPROVED:
        # A dry-run that is not a replay reviewed all of it (no need to read the partitions).
        return [], sum(dry_run.run_stages.values_list("total", flat=True))
    manifest = set(Partition.objects.filter(run=root).values_list("stage__stage_id", "index"))
    approved = [
        r.pk
        for r in descendants(root)
        if r.mode == RunMode.DRY_RUN and r.state == RunState.APPROVED and r.digest == dry_run.digest
    ]
    covered = set(
        Partition.objects.filter(run_id__in=approved).values_list("stage__stage_id", "index")
    )
    return sorted(manifest - covered), len(manifest)


def apply_refusal(dry_run: Run, *, approval_required: bool) -> ServiceError | None:
    """Why an apply naming `dry_run` (in an applicable state) may not start, or None.

    Codes (HTTP 409): `approval_used` (`extra["run"]`: the apply that used it),
    `approval_expired`, `approval_incomplete` (`errors`: the partitions not covered).
    """
    root = lineage_root(dry_run)
    used = Run.objects.filter(consumed_dry_run=root).order_by("id").first()
    if used is not None:
        return approval_used(dry_run, used)
    if not approval_required:
        return None
    if dry_run.state == RunState.APPROVED and live_approvers(dry_run) < dry_run.required_approvals:
        hours = settings.HXO_APPROVAL_TTL_HOURS
        return ServiceError(
            f"the approval of dry-run {dry_run.pk} expired: approvals cover an apply for "
            f"{hours} hours (HXO_APPROVAL_TTL_HOURS); start a new dry-run",
            code=codes.APPROVAL_EXPIRED,
            status=409,
            errors=[{"path": "dry_run", "code": codes.APPROVAL_EXPIRED, "message": "expired"}],
        )
    missing, total = uncovered_partitions(dry_run)
    if missing:
        return ServiceError(
            f"the approvals of dry-run {dry_run.pk} cover {total - len(missing)} of {total} "
            "partitions of the plan: an apply runs all of them, so every one needs an "
            "approved dry-run; start a new dry-run of the whole plan",
            code=codes.APPROVAL_INCOMPLETE,
            status=409,
            errors=[
                {
                    "path": f"stages.{stage_id}.partitions[{index}]",
                    "code": codes.APPROVAL_INCOMPLETE,
                    "message": "no approved dry-run reviewed this partition",
                }
                for stage_id, index in missing[:MAX_LISTED]
            ],
            extra={"covered": total - len(missing), "total": total},
        )
    return None


def approval_used(dry_run: Run, used: Run) -> ServiceError:
    return ServiceError(
        f"the approval of dry-run {dry_run.pk} was already used by apply run {used.pk}: an "
        "approval covers one apply (a replay of that run finishes it)",
        code=codes.APPROVAL_USED,
        status=409,
        errors=[
            {"path": "dry_run", "code": codes.APPROVAL_USED, "message": f"used by run {used.pk}"}
        ],
        extra={"run": used.pk},
    )

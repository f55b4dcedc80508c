"""The rules of a run: who may abort, replay, apply a dry-run or decide on one, and why not.

One place for rules the services enforce and the pages show, so that a page never offers an
action the service refuses. Each rule is a function returning a `Decision`: the services
raise its refusal (`Decision.enforce`, with the API's error code and status), the run and
plan pages render it (a button, or the sentence saying why not). The rules:

- Abort (`may_abort`): hxo:abort, and the run has not finished (`RUN_ACTIVE`).
- Pause, resume, throttle (`may_pause`, `may_resume`, `may_throttle`): hxo:abort (whoever
  may stop a run may slow it or hold it; no new capability to grant), and the run has not
  finished; a pause needs a run that is not paused, a resume one that is.
- Replay (`may_replay`): hxo:replay, a finished run (`RUN_REPLAYABLE`) with failed or
  cancelled partitions, no replay of it yet, hxo:force-merge when one of them is
  non-idempotent, and hxo:submit (a replay is checked like a new run).
- Apply a dry-run (`may_apply`): the dry-run is approved (or merely succeeded when no kind
  requires a dry-run), and its approval is unused, not expired and covers every partition.
- Decide (`may_decide`): hxo:approve, the dry-run awaits approval, the user has not decided
  yet, and the four-eyes rule below lets them.

The approvals behind them (docs/exactly-once.md, section 4):

- Four-eyes over every author: nobody who shaped what the dry-run would run (wrote a stage's
  content, or removed a stage, that no apply reviewed by someone else has run since; see
  `shapers`), nor anyone who requested the dry-run or a dry-run it replays, may decide on
  it, unless `HXO_ALLOW_SELF_APPROVAL`.
- One approval, one apply: an apply that names a dry-run consumes the approval of that
  dry-run's replay lineage (`Run.consumed_dry_run`, unique in the database).
- An approval expires `HXO_APPROVAL_TTL_HOURS` after it was given.
- An approval covers the partitions its dry-run reviewed: an apply of a replayed dry-run
  covers the whole manifest only when every partition of the lineage's first dry-run is held
  by an approved dry-run of the same digest.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from blueprints_app.models import JobKind
from hxo_site import codes
from hxo_site.capabilities import has_capability
from hxo_site.errors import ServiceError
from runs_app.hashing import canonical_json
from runs_app.models import (
    Approval,
    Partition,
    PlanRevision,
    Run,
    RunMode,
    RunStage,
    RunState,
)
from runs_app.models.engine import RUN_ACTIVE, RUN_REPLAYABLE
from runs_app.selectors import run_findings, runs_awaiting_decision

# How many uncovered partitions a refusal lists (the count is always complete).
MAX_LISTED = 20


# --- Decisions ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Decision:
    """Whether a user may do something to a run, and if not, why.

    `reason` is the sentence a page shows next to the refused action, or "" when the page
    does not offer the action at all (the user lacks the capability, or the action does not
    apply to a run in this state). `code`, `status`, `message`, `errors` and `extra` are the
    refusal a service raises (`error()`): the API's error code, the HTTP status and the
    detail, exactly as the API has always answered them.
    """

    allowed: bool
    reason: str = ""
    code: str = ""
    message: str = ""
    status: int = 409
    errors: list[dict[str, str]] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def shown(self) -> bool:
        """The page offers the action: enabled when allowed, else disabled with `reason`."""
        return self.allowed or bool(self.reason)

    def error(self) -> ServiceError:
        """The refusal as the services raise it. Only for a refused decision."""
        assert not self.allowed, "an allowed decision has no refusal"
        return ServiceError(
            self.message,
            code=self.code,
            status=self.status,
            errors=list(self.errors),
            extra=dict(self.extra),
        )

    def enforce(self) -> None:
        """Raise the refusal (`ServiceError`) unless allowed."""
        if not self.allowed:
            raise self.error()

    @classmethod
    def refused(cls, error: ServiceError, reason: str = "") -> Decision:
        """A refusal carrying a service's `error` as it is, with the page's `reason`."""
        return cls(
            allowed=False,
            reason=reason,
            code=error.code,
            message=error.message,
            status=error.status,
            errors=list(error.errors),
            extra=dict(error.extra),
        )


ALLOWED = Decision(allowed=True)


def _refuse(code: str, message: str, *, reason: str = "", status: int = 409) -> Decision:
    return Decision(allowed=False, reason=reason, code=code, message=message, status=status)


def capability(user: Any, name: str, *, reason: str = "") -> Decision:
    """`user` holds hxo:`name`; refused: 403 `permission_denied` (the page shows `reason`).

    Raises KeyError for an unknown capability name."""
    if has_capability(user, name):
        return ALLOWED
    return _refuse(
        codes.PERMISSION_DENIED,
        f"this needs the hxo:{name} capability",
        reason=reason,
        status=403,
    )


# --- Abort ----------------------------------------------------------------------------------


def may_abort(user: Any, run: Run) -> Decision:
    """hxo:abort (403 `permission_denied`), and `run` has not finished (409 `invalid_state`).

    The service asks with the run's row locked, so the state is the one it moves from."""
    decision = capability(user, "abort")
    if not decision.allowed:
        return decision
    if run.state not in RUN_ACTIVE:
        return _refuse(
            codes.INVALID_STATE, f"run {run.pk} is {run.state}: only a running run can be aborted"
        )
    return _not_copying(run)


def _not_copying(run: Run) -> Decision:
    """409 `replay_in_progress` for a replay whose partitions are still being copied (a
    child run still `pending`): it is not whole yet. Aborting it would have made a partial
    copy final (its parent then `already_replayed`, the rest never replayable); its copy
    either finishes and starts it, or dies and the reconciler discards it."""
    if run.parent_id is not None and run.state == RunState.PENDING:
        return _refuse(
            codes.REPLAY_IN_PROGRESS,
            f"run {run.pk} is a replay still being stored: act on it once it runs",
        )
    return ALLOWED


# --- Pause, resume, throttle ----------------------------------------------------------------


def _operable(user: Any, run: Run, verb: str) -> Decision:
    # hxo:abort: pausing and throttling are milder than aborting, and an operator who may
    # abort a runaway run must be able to slow it down first (README, "Pausing and
    # throttling a run").
    decision = capability(user, "abort")
    if not decision.allowed:
        return decision
    if run.state not in RUN_ACTIVE:
        return _refuse(
            codes.INVALID_STATE,
            f"run {run.pk} is {run.state}: only a run that has not finished can be {verb}",
        )
    return _not_copying(run)


def may_pause(user: Any, run: Run) -> Decision:
    """hxo:abort (403), a run that has not finished (409 `invalid_state`) and is not paused
    (409 `already_paused`). Asked again under the run's row lock by the service."""
    decision = _operable(user, run, "paused")
    if decision.allowed and run.paused_at is not None:
        return _refuse(codes.ALREADY_PAUSED, f"run {run.pk} is already paused")
    return decision


def may_resume(user: Any, run: Run) -> Decision:
    """hxo:abort (403), a run that has not finished (409 `invalid_state`) and is paused
    (409 `not_paused`)."""
    decision = _operable(user, run, "resumed")
    if decision.allowed and run.paused_at is None:
        return _refuse(codes.NOT_PAUSED, f"run {run.pk} is not paused")
    return decision


def may_throttle(user: Any, run: Run) -> Decision:
    """hxo:abort (403) and a run that has not finished (409 `invalid_state`); a paused run
    may be throttled (the throttle applies when it resumes)."""
    return _operable(user, run, "throttled")


# --- Replay ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReplayScope:
    """What a replay of a run would hold: `partitions`, whether the run has failed or
    cancelled partitions at all, and whether one of them is `non_idempotent`."""

    partitions: bool
    non_idempotent: bool

    @classmethod
    def of_stages(cls, stages: Iterable[RunStage]) -> ReplayScope:
        """From the stages' counters (no query when the stages are loaded): for the pages."""
        redo = [s for s in stages if s.failed or s.cancelled]
        return cls(partitions=bool(redo), non_idempotent=any(s.non_idempotent for s in redo))

    @classmethod
    def of_partitions(cls, partitions: QuerySet[Partition]) -> ReplayScope:
        """From the partitions a replay would copy (two queries): for the service."""
        exists = partitions.exists()
        return cls(
            partitions=exists,
            non_idempotent=exists and partitions.filter(non_idempotent=True).exists(),
        )


def replay_conflict(run: Run) -> Decision:
    """A run has at most one replay: refused while it runs (409 `replay_in_progress`) and
    after it finished (409 `already_replayed`); `extra["run"]` names it either way. One
    query."""
    child = Run.objects.filter(parent=run).only("id", "state").first()
    if child is None:
        return ALLOWED
    # The pages say the same for both: the way on is that replay.
    reason = f"This run was replayed by run #{child.pk}: replay that run instead."
    if not child.is_finished:
        code = codes.REPLAY_IN_PROGRESS
        message = f"run {run.pk} is being replayed by run {child.pk}: wait for it to finish"
    else:
        code = codes.ALREADY_REPLAYED
        message = f"run {run.pk} was replayed by run {child.pk}: replay run {child.pk} instead"
    return Decision(
        allowed=False,
        reason=reason,
        code=code,
        message=message,
        errors=[{"path": "run", "code": code, "message": f"run {child.pk}"}],
        extra={"run": child.pk},
    )


def may_replay(user: Any, run: Run, scope: ReplayScope) -> Decision:
    """May `user` replay `run`, whose failed and cancelled partitions are `scope`?

    In the order the service refuses: hxo:replay (403 `permission_denied`); a finished run
    (409 `invalid_state`); something to replay (409 `nothing_to_replay`); no replay of it
    yet (`replay_conflict`); hxo:force-merge when a partition to replay is non-idempotent
    (403 `force_merge_required`); hxo:submit (403 `permission_denied`). Passing these, the
    service still checks the revision like a new run (sunset kinds and components)."""
    decision = capability(user, "replay")
    if not decision.allowed:
        return decision
    if run.state not in RUN_REPLAYABLE:
        return _refuse(
            codes.INVALID_STATE, f"run {run.pk} is {run.state}: only a finished run can be replayed"
        )
    if not scope.partitions:
        return _refuse(
            codes.NOTHING_TO_REPLAY, "nothing to replay: no failed or cancelled partitions"
        )
    decision = replay_conflict(run)
    if not decision.allowed:
        return decision
    if scope.non_idempotent and not has_capability(user, "force-merge"):
        return _refuse(
            codes.FORCE_MERGE_REQUIRED,
            "the replay holds non-idempotent partitions: it needs hxo:force-merge",
            reason="The partitions to replay are non-idempotent: a replay needs the "
            "hxo:force-merge capability.",
            status=403,
        )
    return capability(
        user,
        "submit",
        reason="A replay is checked like a new run: it needs the hxo:submit capability.",
    )


# --- Apply a dry-run ------------------------------------------------------------------------


def dry_run_required(revision: PlanRevision, kinds: Mapping[str, Any]) -> list[str]:
    """The job kinds of `revision` that require an approved dry-run before an apply, sorted
    (`[]`: the revision may be applied at once). `kinds` maps a kind's name to its `JobKind`
    (or a version of it) as the revision pins it (`blueprints_app.versions.kinds_at`); a kind
    missing from it is left out (the validator reports it)."""
    return sorted(
        {
            stage["kind"]
            for stage in revision.stages
            if stage["kind"] in kinds and kinds[stage["kind"]].require_dry_run
        }
    )


def may_apply(
    dry_run: Run, *, approval_required: bool, latest_number: int | None = None
) -> Decision:
    """May an apply run what `dry_run` reviewed?

    `approval_required`: a kind of the plan requires a dry-run (then only an approved one
    lets an apply through; otherwise a succeeded one does too). `latest_number`: the plan's
    latest revision number, for a page that cannot afford the service's digest check (a
    dry-run of an older revision is refused as 409 `stale_plan`). Refusals (409):
    `dry_run_not_approved`, then those of `apply_refusal` (`approval_used`,
    `approval_expired`, `approval_incomplete`). hxo:submit is the caller's to check (the
    service checks it with the plan's validity). Queries: none for a refused state (the
    approvals of a dry-run awaiting them are counted from its prefetched `approvals`), else
    those of `apply_refusal`."""
    acceptable = (
        {RunState.APPROVED} if approval_required else {RunState.APPROVED, RunState.SUCCEEDED}
    )
    if dry_run.state not in acceptable:
        reason = ""
        if dry_run.state == RunState.AWAITING_APPROVAL:
            approved = sum(
                1 for a in dry_run.approvals.all() if a.decision == Approval.Decision.APPROVE
            )
            reason = (
                "Apply becomes possible once the dry-run is approved "
                f"({approved} of {dry_run.required_approvals} approvals)."
            )
        elif dry_run.state == RunState.REJECTED:
            reason = "This dry-run was rejected: change the plan and dry-run again."
        return _refuse(
            codes.DRY_RUN_NOT_APPROVED,
            f"dry-run {dry_run.pk} is {dry_run.state}, not approved",
            reason=reason,
        )
    if latest_number is not None and dry_run.revision.number != latest_number:
        number = dry_run.revision.number
        return _refuse(
            codes.STALE_PLAN,
            f"the plan changed since dry-run {dry_run.pk}: it is at revision {latest_number}, "
            f"the dry-run is of revision {number}",
            reason=f"The plan changed since this dry-run (it is at revision {latest_number}, "
            f"this dry-run is of revision {number}): start a new dry-run.",
        )
    refusal = apply_refusal(dry_run, approval_required=approval_required)
    if refusal is not None:
        # The service's own sentence (used, expired, partly covered), as a page sentence.
        reason = f"{refusal.message[0].upper()}{refusal.message[1:]}."
        return Decision.refused(refusal, reason)
    return ALLOWED


# --- Decide on a dry-run ----------------------------------------------------------------------


def four_eyes(user: Any, run: Run) -> Decision:
    """The four-eyes rule (see "Four-eyes" below): refused, 403 `self_approval_forbidden`."""
    why = self_approval_reason(run, user)
    if not why:
        return ALLOWED
    return _refuse(
        codes.SELF_APPROVAL_FORBIDDEN,
        f"four-eyes rule: {why}",
        reason=f"You cannot decide on this dry-run: {why} (four-eyes rule).",
        status=403,
    )


def decision_open(run: Run, *, mine: Approval | None, decision: str | None = None) -> Decision:
    """`run` awaits approval (409 `invalid_state`) and `mine`, the user's own decision on it
    if any, is not another decision than `decision` (409 `already_decided`; the same decision
    again is allowed: it counts once). The pages pass no `decision`: any decision made closes
    it for that user. Neither refusal has a page sentence: the page shows the run's state or
    the user's decision instead."""
    if run.state != RunState.AWAITING_APPROVAL:
        return _refuse(codes.INVALID_STATE, f"run {run.pk} is {run.state}, not awaiting approval")
    if mine is not None and mine.decision != decision:
        return _refuse(
            codes.ALREADY_DECIDED, f"you already decided on run {run.pk}: {mine.decision}"
        )
    return ALLOWED


def review_current(run: Run, digest: str | None) -> Decision:
    """A decision names the digest of the review it was made on, or none (the API's older
    clients): another digest than the run's is refused, 409 `stale_review` with
    `extra["digest"]` the run's, so the approver opens the review again."""
    if digest is None or digest == run.digest:
        return ALLOWED
    return Decision(
        allowed=False,
        code=codes.STALE_REVIEW,
        message=f"this decision was made on a review of digest {digest[:12]}, not on run "
        f"{run.pk}'s digest {run.digest[:12]}: open the review again",
        status=409,
        errors=[{"path": "digest", "code": codes.STALE_REVIEW, "message": "stale"}],
        extra={"digest": run.digest},
    )


def may_decide(user: Any, run: Run, *, mine: Approval | None) -> Decision:
    """May `user` approve or reject `run`? hxo:approve, `decision_open`, then `four_eyes`
    (queried only for a dry-run the user could otherwise decide on). `mine`: the user's own
    approval of `run`, if any.

    The service asks the four-eyes rule first, before it locks the run (a refused author is
    audited whatever the run's state), and `decision_open` under the lock."""
    decision = capability(user, "approve")
    if not decision.allowed:
        return decision
    decision = decision_open(run, mine=mine)
    if not decision.allowed:
        return decision
    return four_eyes(user, run)


# --- Lineage ------------------------------------------------------------------------------


def findings_to_acknowledge(run: Run) -> list[dict[str, str]]:
    """The high-severity findings of `run` (selectors.run_findings) in stages whose kind's
    safety policy requires an approver to acknowledge them (`JobKind.require_findings_ack`,
    read live: a policy tightened after the dry-run applies to its decision), as
    {"stage", "path", "rule", "message"}."""
    high = run_findings(run)["high"]
    if not high:
        return []
    strict = set(
        JobKind.objects.filter(
            kind__in={kind for _, kind, _ in high}, require_findings_ack=True
        ).values_list("kind", flat=True)
    )
    return [
        {"stage": stage, "path": f.path, "rule": f.rule, "message": f.message}
        for stage, kind, f in high
        if kind in strict
    ]


def findings_acknowledged(required: list[dict[str, str]], *, acknowledged: bool) -> Decision:
    """Approving needs `acknowledged` when `required` (findings_to_acknowledge) is not empty;
    refused with 400 `findings_not_acknowledged` naming the field `acknowledge_findings`."""
    if not required or acknowledged:
        return ALLOWED
    listed = "; ".join(f"{f['stage']} {f['path']}: {f['rule']}" for f in required[:MAX_LISTED])
    return dataclasses.replace(
        _refuse(
            codes.FINDINGS_NOT_ACKNOWLEDGED,
            f"this dry-run has {len(required)} high-severity finding"
            f"{'s' if len(required) != 1 else ''} that the approver must acknowledge "
            f"({listed})",
            reason="Tick that you have read the high-severity findings.",
            status=400,
        ),
        errors=[
            {
                "path": "acknowledge_findings",
                "code": codes.FINDINGS_NOT_ACKNOWLEDGED,
                "message": "acknowledge the high-severity findings to approve",
            }
        ],
    )


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


# --- Four-eyes ---------------------------------------------------------------------------
#
# Who shaped what a dry-run would run is decided on content, not on a window of revisions: a
# later apply of other content clears nobody (issue 11 round 2, finding 5). A stage's content
# is its canonical JSON without its id; its fragments are that whole content, the stage under
# its id, and every string leaf of its params (a SQL statement, a path) under its kind, so
# content moved to another stage id, or kept verbatim inside an edited stage, keeps its
# authors. A fragment is cleared up to the newest revision that an apply reviewed by someone
# (its dry-run approved) ran successfully with that fragment in it; the authors of every
# later revision (up to the one under review) in which the fragment appeared, changed or
# re-appeared, and of every revision since the plan's last successful apply that removed a
# stage, are the shapers of the dry-run. A revision that changed only the name or the
# description shapes nothing that runs.


def _string_leaves(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _string_leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _string_leaves(item)


def stage_fragments(document: dict[str, Any]) -> dict[str, set[str]]:
    """What runs in a plan document, as {stage id: fragments}; each fragment a string key.

    Fragments of a stage: `content:<canonical JSON without the id>` (its kind, partitioner,
    executor, params, depends_on and limits), `stage:<id>:<that JSON>`, and
    `leaf:<kind>:<string>` for every string anywhere in its params (spacing and case folded,
    so that a re-spaced statement is still the same one)."""
    out: dict[str, set[str]] = {}
    for stage in document.get("stages") or []:
        if not isinstance(stage, dict):
            continue
        sid = str(stage.get("id", ""))
        content = canonical_json({k: v for k, v in stage.items() if k != "id"})
        kind = str(stage.get("kind", ""))
        fragments = {f"content:{content}", f"stage:{sid}:{content}"}
        # Leaves compare with spacing and case folded: re-spacing a statement keeps its author.
        fragments.update(
            f"leaf:{kind}:{' '.join(leaf.split()).casefold()}"
            for leaf in _string_leaves(stage.get("params"))
        )
        out[sid] = fragments
    return out


def shapers(
    history: list[tuple[int, int | None, dict[str, Any]]],
    number: int,
    reviewed_applies: Iterable[int],
    applies: Iterable[int],
) -> dict[int, int]:
    """{user id: newest revision number by which they shaped revision `number`'s stages}.

    `history`: the plan's revisions as (number, author id, document), any order;
    `reviewed_applies`: revision numbers that a successful apply of an approved dry-run ran;
    `applies`: revision numbers of every successful apply. Only revisions up to `number`
    count (later ones are not what is under review)."""
    docs = {n: (author, stage_fragments(doc)) for n, author, doc in history if n <= number}
    if number not in docs:
        return {}
    numbers = sorted(docs)
    flat = {n: set().union(*docs[n][1].values()) if docs[n][1] else set() for n in numbers}
    reviewed = sorted({n for n in reviewed_applies if n in docs})
    out: dict[int, int] = {}

    def shaped(author: int | None, n: int) -> None:
        if author is not None:
            out[author] = max(out.get(author, 0), n)

    for fragment in flat[number]:
        cleared = max((n for n in reviewed if fragment in flat[n]), default=0)
        previous: set[str] = set()
        for n in numbers:
            if n > cleared and fragment in flat[n] and fragment not in previous:
                shaped(docs[n][0], n)
            previous = flat[n]
    # A stage whose content changed in place under the same id (the leaves above catch what
    # was kept; this catches the author of what was there before, e.g. one statement edited).
    for sid, fragments in docs[number][1].items():
        exact = f"stage:{sid}:"
        mine = next(f for f in fragments if f.startswith(exact))
        cleared = max((n for n in reviewed if mine in flat[n]), default=0)
        before: str | None = None
        for n in numbers:
            now = next((f for f in docs[n][1].get(sid, ()) if f.startswith(exact)), None)
            if n > cleared and now is not None and now != before:
                shaped(docs[n][0], n)
            before = now
    # A removal changes what runs: its author shaped every later revision until an apply.
    last_apply = max((n for n in applies if n in docs), default=0)
    for previous_n, n in itertools.pairwise(numbers):
        if n > last_apply and set(docs[previous_n][1]) - set(docs[n][1]):
            shaped(docs[n][0], n)
    return out


def _reasons(
    runs: list[Run],
    user: Any,
    *,
    revisions: dict[int, list[tuple[int, int | None, dict[str, Any]]]],
) -> dict[int, str | None]:
    applied: dict[int, list[int]] = {}
    reviewed: dict[int, list[int]] = {}
    plan_ids = {r.plan_id for r in runs}
    rows = list(
        Run.objects.filter(
            plan_id__in=plan_ids, mode=RunMode.APPLY, state=RunState.SUCCEEDED
        ).values_list("plan_id", "revision__number", "dry_run_id")
    )
    approved = set(
        Approval.objects.filter(
            run_id__in={d for _, _, d in rows if d is not None},
            decision=Approval.Decision.APPROVE,
        ).values_list("run_id", flat=True)
    )
    for plan_id, number, dry_run_id in rows:
        applied.setdefault(plan_id, []).append(number)
        if dry_run_id in approved:
            reviewed.setdefault(plan_id, []).append(number)
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
        shaped = shapers(
            revisions.get(run.plan_id, []),
            number,
            reviewed.get(run.plan_id, []),
            applied.get(run.plan_id, []),
        )
        if shaped.get(user.pk) == number:
            out[run.pk] = f"revision {number}: you wrote this revision of the plan"
            continue
        if user.pk in shaped:
            out[run.pk] = (
                f"you wrote revision {shaped[user.pk]} of the plan, which shaped stages this "
                f"dry-run of revision {number} would run, and no apply reviewed by someone "
                "else has run that content since"
            )
            continue
        if run.requested_by_id == user.pk:
            out[run.pk] = "you requested this dry-run"
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

    Nobody who requested the dry-run (or one it replays), nor any shaper of its stages
    (`shapers`), may decide, unless `HXO_ALLOW_SELF_APPROVAL`. Queries: one for the plans'
    revisions, two for their successful applies and the approvals behind them, and one per
    replay level of replayed dry-runs, whatever the number of runs.
    """
    runs = list(runs)
    if not runs:
        return {}
    revisions: dict[int, list[tuple[int, int | None, dict[str, Any]]]] = {}
    for plan_id, number, author, document in PlanRevision.objects.filter(
        plan_id__in={r.plan_id for r in runs}
    ).values_list("plan_id", "number", "author_id", "document"):
        revisions.setdefault(plan_id, []).append((number, author, document or {}))
    return _reasons(runs, user, revisions=revisions)


def self_approval_reason(run: Run, actor: Any) -> str | None:
    """Why `actor` may not decide on `run` (four-eyes), or None. See the module docstring."""
    return decision_reasons([run], actor)[run.pk]


def runs_to_decide(user: Any) -> tuple[list[tuple[Run, None]], list[tuple[Run, str]]]:
    """Dry-runs awaiting a decision that `user` has not made: (those they may decide,
    those the four-eyes rule keeps them from, with the reason). Newest first. The one list
    behind the approvals inbox, the home page and the navigation badge."""

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
        .order_by()
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

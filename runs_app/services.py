"""Every write to plans and runs: `<entity>_<action>(*, ...)`, atomic, audited.

Views, the API and the CLI call these and nothing else to change state. Each checks the
actor's capabilities itself, so no caller can forget to.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from blueprints_app.evolution import DocumentMigration, migrate_document
from blueprints_app.registry import EXECUTORS
from blueprints_app.validation import ValidationResult, load_kinds, validate_plan
from blueprints_app.versions import kinds_at
from hxo_site import codes
from hxo_site.audit import audit
from hxo_site.errors import ServiceError
from runs_app import policies
from runs_app.engine import claims, partitioning, progress, wakeups
from runs_app.engine.deadlocks import retrying
from runs_app.hashing import canonical_json, document_digest, sha256_hex
from runs_app.manifest import (
    diff_against_run,
    plan_document,
    resolve_manifest,
    stale_without_partitioning,
)
from runs_app.models import (
    Approval,
    Lease,
    Partition,
    PartitionState,
    Plan,
    PlanRevision,
    Run,
    RunMode,
    RunStage,
    RunState,
)
from runs_app.models.engine import PARTITION_REDO
from runs_app.transitions import move_run

BULK = 2000

log = logging.getLogger(__name__)


def _require(actor: Any, capability: str) -> None:
    """403 `permission_denied` unless `actor` holds hxo:`capability`."""
    policies.capability(actor, capability).enforce()


def _invalid(result: ValidationResult) -> ServiceError:
    errors = [i.as_dict() for i in result.errors]
    if any(e["code"] == codes.FORCE_MERGE_REQUIRED for e in errors):
        return ServiceError(
            "a non-idempotent stage needs the hxo:force-merge capability",
            code=codes.FORCE_MERGE_REQUIRED,
            status=403,
            errors=errors,
        )
    return ServiceError("the plan is not valid", code=codes.VALIDATION_FAILED, errors=errors)


# --- Plans ----------------------------------------------------------------------------------


def _new_revision(plan: Plan, document: dict[str, Any], actor: Any, comment: str) -> PlanRevision:
    kinds = load_kinds()
    number = plan.latest_number + 1
    revision = PlanRevision.objects.create(
        plan=plan,
        number=number,
        document=document,
        digest=document_digest(document),
        kind_versions={s["kind"]: kinds[s["kind"]].version for s in document["stages"]},
        author=actor if getattr(actor, "is_authenticated", False) else None,
        comment=comment[:500],
    )
    Plan.objects.filter(pk=plan.pk).update(
        latest_number=number, name=document["name"], description=document["description"]
    )
    plan.latest_number = number
    plan.name = document["name"]
    plan.description = document["description"]
    return revision


def plan_create(
    *, actor: Any, document: Any, client_ip: str | None = None, comment: str = ""
) -> Plan:
    _require(actor, "plan")
    # Authoring a non-idempotent stage is allowed; running it needs hxo:force-merge (submit).
    result = validate_plan(document)
    if not result.valid:
        raise _invalid(result)
    document = plan_document(document)
    with transaction.atomic():
        plan = Plan.objects.create(
            name=document["name"], description=document["description"], created_by=actor
        )
        revision = _new_revision(plan, document, actor, comment)
        audit(
            actor=actor,
            action="plan.create",
            obj=plan,
            client_ip=client_ip,
            after={"revision": revision.number, "digest": revision.digest},
        )
    return plan


def plan_update(
    *,
    plan: Plan,
    actor: Any,
    document: Any,
    client_ip: str | None = None,
    comment: str = "",
    partial: bool = False,
    if_match: list[str] | None = None,
) -> PlanRevision:
    """A new immutable revision of `plan`; returns it (or the latest one when nothing changed).

    `partial` merges `document`'s top-level fields into the latest revision's document (a
    PATCH). The read, the merge, the validation and the write all happen under the plan's row
    lock (`select_for_update` on PostgreSQL; SQLite's IMMEDIATE transactions take the database
    write lock at BEGIN), so two concurrent PATCHes of different fields become two consecutive
    revisions that both keep each other's change: no lost update.

    `if_match` lists entity tags (revision digests, as the API's `ETag`; `*` matches any): when
    given and the latest revision's digest is not among them, nothing is written and
    `precondition_failed` (412) is raised: the optimistic form of the same guarantee, for a
    client that read, edited and writes back a whole document (RFC 9110 §13.1.1).
    """
    _require(actor, "plan")
    with transaction.atomic():
        locked = Plan.objects.select_for_update().get(pk=plan.pk)
        previous = locked.revisions.get(number=locked.latest_number)
        if if_match is not None and "*" not in if_match and previous.digest not in if_match:
            raise ServiceError(
                f"plan {plan.pk} changed: its latest revision is {previous.number} "
                f"({previous.digest}), not the one the If-Match header names",
                code=codes.PRECONDITION_FAILED,
                status=412,
                errors=[
                    {
                        "path": "If-Match",
                        "code": codes.PRECONDITION_FAILED,
                        "message": "does not name the latest revision's digest",
                    }
                ],
                extra={"revision": previous.number, "digest": previous.digest},
            )
        if partial and isinstance(document, dict):
            document = {**previous.document, **document}
        result = validate_plan(document)
        if not result.valid:
            raise _invalid(result)
        document = plan_document(document)
        if previous.digest == document_digest(document):
            return previous  # nothing changed: no new revision
        revision = _new_revision(locked, document, actor, comment)
        audit(
            actor=actor,
            action="plan.update",
            obj=locked,
            client_ip=client_ip,
            before={"revision": previous.number, "digest": previous.digest},
            after={"revision": revision.number, "digest": revision.digest},
        )
    plan.refresh_from_db()
    return revision


@dataclasses.dataclass
class PlanMigration:
    """What `plan_migrate` did (or, on a dry-run, would do) to one plan."""

    plan: Plan
    from_revision: PlanRevision
    migration: DocumentMigration
    dry_run: bool
    revision: PlanRevision | None = None  # the new revision, when one was written

    @property
    def status(self) -> str:
        if not self.migration.changed:
            return "up_to_date"
        if not self.migration.valid:
            return "needs_attention"
        return "would_migrate" if self.dry_run else "migrated"

    def as_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.pk,
            "name": self.plan.name,
            "status": self.status,
            "dry_run": self.dry_run,
            "from_revision": self.from_revision.number,
            "revision": self.revision.number if self.revision else None,
            "kind_versions": {"from": self.migration.pinned, "to": self.migration.kind_versions},
            "changes": [c.as_dict() for c in self.migration.changes],
            "errors": [i.as_dict() for i in self.migration.result.errors],
            "warnings": [i.as_dict() for i in self.migration.result.warnings],
        }


def plan_migrate(
    *, plan: Plan, actor: Any, dry_run: bool = False, client_ip: str | None = None
) -> PlanMigration:
    """Bring the plan's latest revision to the current kind versions as a new revision.

    The declared migration steps (blueprints_app.evolution) rewrite the document; the result
    must validate against the current registry or nothing is written (`migration_failed`,
    409, with the errors). A plan whose only change is its pins still gets a new revision:
    pins are what it runs under. The new revision has a new run digest (the versions are part
    of it), so no approval of an earlier dry-run covers it. `dry_run` reports and writes
    nothing.
    """
    _require(actor, "plan")
    with transaction.atomic():
        locked = plan if dry_run else Plan.objects.select_for_update().get(pk=plan.pk)
        previous = locked.revisions.get(number=locked.latest_number)
        migration = migrate_document(previous.document, previous.kind_versions)
        report = PlanMigration(
            plan=locked, from_revision=previous, migration=migration, dry_run=dry_run
        )
        if dry_run or not migration.changed:
            return report
        if not migration.valid:
            raise ServiceError(
                f"plan {plan.pk} cannot be migrated automatically: the result is not valid",
                code=codes.MIGRATION_FAILED,
                status=409,
                errors=[i.as_dict() for i in migration.result.errors],
                extra={"changes": [c.as_dict() for c in migration.changes]},
            )
        summary = "; ".join(c.message for c in migration.changes)
        revision = _new_revision(
            locked, plan_document(migration.document), actor, f"migrated: {summary}"
        )
        report.revision = revision
        audit(
            actor=actor,
            action="plan.migrate",
            obj=locked,
            client_ip=client_ip,
            before={
                "revision": previous.number,
                "digest": previous.digest,
                "kind_versions": previous.kind_versions,
            },
            after={
                "revision": revision.number,
                "digest": revision.digest,
                "kind_versions": revision.kind_versions,
            },
            detail={"changes": [c.as_dict() for c in migration.changes]},
        )
    plan.refresh_from_db()
    return report


# --- Runs -----------------------------------------------------------------------------------


def request_fingerprint(*, method: str, path: str, body: Any) -> str:
    """SHA-256 hex over canonical JSON of `[method, path, body]`: what an `Idempotency-Key`
    is bound to (the IETF httpapi Idempotency-Key draft, §2.2 "Idempotency Fingerprint").

    Services build it from the canonical request (the API path and the body with its defaults
    filled in), not from bytes on the wire, so the API, the browser forms and the CLI agree:
    `{"dry_run": 5}` and `{"dry_run": 5, "force_rerun": false}` are the same request.
    """
    return sha256_hex(canonical_json([method.upper(), path, body]))


def _existing_for_key(
    actor: Any, key: str | None, plan: Plan, mode: str, fingerprint: str
) -> Run | None:
    """The run an earlier request with this key made, or None. A key names one request: the
    same key with another method, path or body is refused (422 `idempotency_key_reused`)
    rather than answered with a run that is not what this request asks for."""
    if not key:
        return None
    run = Run.objects.filter(requested_by=actor, idempotency_key=key).first()
    if run is None:
        return None
    if run.idempotency_fingerprint:
        reused = run.idempotency_fingerprint != fingerprint
    else:  # a run from before fingerprints were stored: compare what it recorded
        reused = run.plan_id != plan.pk or run.mode != mode
    if reused:
        raise ServiceError(
            f"this Idempotency-Key was already used for another request (run {run.pk}); "
            "use a new key for a different request",
            code=codes.IDEMPOTENCY_KEY_REUSED,
            status=422,
            errors=[
                {
                    "path": "Idempotency-Key",
                    "code": codes.IDEMPOTENCY_KEY_REUSED,
                    "message": "used before with another method, path or body",
                }
            ],
            extra={"run": run.pk},
        )
    return run


SUNSET_CODES = (codes.KIND_SUNSET, codes.COMPONENT_SUNSET)


def _check_submit(actor: Any, revision: PlanRevision) -> None:
    """The revision validates under the kind versions it pins; a sunset kind, version or
    component refuses the run with its own code (409): the plan was valid, the registry moved
    on, and the way out is `plan_migrate` or an edit."""
    _require(actor, "submit")
    result = validate_plan(revision.document, user=actor, pinned_versions=revision.kind_versions)
    if not result.valid:
        sunset = [i for i in result.errors if i.code in SUNSET_CODES]
        if sunset:
            raise ServiceError(
                sunset[0].message,
                code=sunset[0].code,
                status=409,
                errors=[i.as_dict() for i in result.errors],
            )
        raise _invalid(result)


def _audit_force_merge(actor: Any, run: Run, revision: PlanRevision, client_ip: str | None) -> None:
    stages = [s["id"] for s in revision.stages if s.get("non_idempotent")]
    if stages:
        audit(
            actor=actor,
            action="run.force_merge",
            obj=run,
            client_ip=client_ip,
            detail={"stages": stages},
        )


def _create_run(
    *,
    plan: Plan,
    revision: PlanRevision,
    kinds: dict[str, Any],
    mode: str,
    actor: Any,
    idempotency_key: str | None,
    dry_run: Run | None = None,
    force_rerun: bool = False,
    consumed_dry_run: Run | None = None,
    fingerprint: str = "",
) -> Run:
    """Store a run in state `partitioning` and ask a worker to partition it (after the
    commit). Inside a transaction. No stage or partition is written here: the worker
    resolves the manifest and writes them in bounded transactions (`run_partition`), so the
    request answers in milliseconds whatever the size of the manifest.

    `kinds`: the registry at the revision's pinned versions (`kinds_at`); the run pins the
    snapshots of the kinds its stages use. `consumed_dry_run` (an apply's approval lineage
    root) is unique among runs: the insert fails with IntegrityError when another apply
    already used that approval."""
    used = {s["kind"]: kinds[s["kind"]] for s in revision.stages if s["kind"] in kinds}
    run = Run.objects.create(
        plan=plan,
        revision=revision,
        mode=mode,
        state=RunState.PENDING,
        kind_snapshots={name: k.snapshot() for name, k in used.items()},
        requested_by=actor,
        idempotency_key=idempotency_key or None,
        idempotency_fingerprint=fingerprint if idempotency_key else "",
        dry_run=dry_run,
        consumed_dry_run=consumed_dry_run,
        force_rerun=force_rerun,
        required_approvals=max((k.required_approvals for k in used.values()), default=1),
    )
    move_run(run, RunState.PARTITIONING)
    wakeups.wake_partitioner(run.pk)
    return run


def run_partition(*, run_id: int, owner: str | None = None) -> Run | None:
    """Resolve a `partitioning` run's manifest and write it; the worker's half of a start.

    Takes the run's partitioning lease (None when another live worker holds it, or the run
    is not `partitioning`), discards rows an interrupted worker left, resolves the revision
    under its pinned kind versions (outside any transaction: partitioners read files and
    databases), and then either fails the run with `error` = `{"code", "message",
    "errors"?}` (a partitioning error: a workspace gone, a partitioner raising, too many
    partitions...) or, for an apply that names a dry-run whose digest differs, `stale_plan`
    with `diff` (`manifest.diff_against_run`), `dry_run_digest` and `digest`; or writes the
    stages and partitions in bounded transactions and moves the run to `running`
    (`engine.partitioning.write_manifest`). A stale apply keeps the approval it consumed:
    one approval, one apply attempt, so an approval cannot be replayed after files changed
    (its digest no longer matches anyway: a new dry-run is the way on).
    """
    owner = owner or claims.new_owner()
    run = Run.objects.filter(pk=run_id).select_related("revision", "dry_run").first()
    if run is None or run.state != RunState.PARTITIONING:
        return None
    if not partitioning.take_lease(run_id, owner):
        return None
    try:
        partitioning.discard_partial(run_id, owner)
        try:
            resolved = resolve_manifest(run.revision, kinds_at(run.revision.kind_versions))
        except ServiceError as exc:
            return partitioning.fail_partitioning(
                run_id,
                owner,
                {"code": exc.code, "message": exc.message, "errors": exc.errors or []},
            )
        except Exception as exc:  # a partitioner's bug must fail the run, not hang it
            log.exception("partitioning run %s failed", run_id)
            return partitioning.fail_partitioning(
                run_id,
                owner,
                {
                    "code": codes.PARTITIONING_FAILED,
                    "message": f"partitioning failed: {type(exc).__name__}: {exc}",
                    "errors": [],
                },
            )
        dry_run = run.dry_run
        if dry_run is not None and resolved.digest != dry_run.digest:
            diff = diff_against_run(dry_run, resolved)
            failed = partitioning.fail_partitioning(
                run_id,
                owner,
                {
                    "code": codes.STALE_PLAN,
                    "message": "the plan, its files or its kinds changed since the dry-run "
                    "was approved",
                    "diff": diff,
                    "dry_run": dry_run.pk,
                    "dry_run_digest": dry_run.digest,
                    "digest": resolved.digest,
                },
            )
            return failed
        idempotent = {name: cls.idempotent for name, cls in EXECUTORS.items()}
        return partitioning.write_manifest(run_id, resolved, owner, idempotent)
    except partitioning.PartitioningLost:
        return None
    finally:
        partitioning.release_lease(run_id, owner)


def run_start_dry_run(
    *,
    plan: Plan,
    actor: Any,
    idempotency_key: str | None = None,
    client_ip: str | None = None,
) -> Run:
    """Start a dry-run of the plan's latest revision: the run in state `partitioning`,
    stored at once; a worker partitions it (`run_partition`) and the engine runs it.

    Refusals stay synchronous: hxo:submit, validity under the pinned kind versions
    (`validation_failed`, 409 for a sunset kind or component), hxo:force-merge for a
    non-idempotent stage (403); the same `idempotency_key` returns the run it made, and with
    another request 422 `idempotency_key_reused`. A partitioning error fails the run."""
    fingerprint = request_fingerprint(
        method="POST", path=f"/api/v1/plans/{plan.pk}/dry-run/", body={}
    )
    existing = _existing_for_key(actor, idempotency_key, plan, RunMode.DRY_RUN, fingerprint)
    if existing is not None:
        return existing
    revision = plan.latest_revision
    _check_submit(actor, revision)
    kinds = kinds_at(revision.kind_versions)
    try:
        with transaction.atomic():
            run = _create_run(
                plan=plan,
                revision=revision,
                kinds=kinds,
                mode=RunMode.DRY_RUN,
                actor=actor,
                idempotency_key=idempotency_key,
                fingerprint=fingerprint,
            )
            audit(
                actor=actor,
                action="run.dry_run",
                obj=run,
                client_ip=client_ip,
                after={"state": run.state, "revision": revision.number},
            )
    except IntegrityError:
        existing = _existing_for_key(actor, idempotency_key, plan, RunMode.DRY_RUN, fingerprint)
        if existing is None:
            raise
        return existing
    return run


def run_apply(
    *,
    plan: Plan,
    actor: Any,
    dry_run_id: int | None = None,
    idempotency_key: str | None = None,
    force_rerun: bool = False,
    client_ip: str | None = None,
) -> Run:
    """Apply the plan's latest revision. Where a kind requires a dry-run, only an approved
    dry-run of the very same digest lets it through; anything changed since is stale.

    A named dry-run is consumed: its replay lineage's root is stored in
    `Run.consumed_dry_run`, unique in the database, and the root's row is locked while the
    apply is stored, so of concurrent applies of one approval exactly one is created.
    Refusals (409): `dry_run_required`, `dry_run_not_approved`, `approval_used` (extra
    `run`: the apply that used it), `approval_expired`, `approval_incomplete` (a replayed
    dry-run whose approvals do not cover every partition), `stale_plan` (extra `diff`) for
    what is known without partitioning (`manifest.stale_without_partitioning`: the plan
    edited, a kind version or policy moved, a workspace or target re-pointed). Files or rows
    changed since the dry-run are found by the worker that partitions the apply: the run then
    fails with `error.code` `stale_plan` and `error.diff` (`run_partition`), and the approval
    stays consumed. The same `idempotency_key` with another request: 422
    `idempotency_key_reused`. Returns the run in state `partitioning`.
    """
    fingerprint = request_fingerprint(
        method="POST",
        path=f"/api/v1/plans/{plan.pk}/apply/",
        body={"dry_run": dry_run_id, "force_rerun": bool(force_rerun)},
    )
    existing = _existing_for_key(actor, idempotency_key, plan, RunMode.APPLY, fingerprint)
    if existing is not None:
        return existing
    revision = plan.latest_revision
    _check_submit(actor, revision)
    kinds = kinds_at(revision.kind_versions)
    needs = policies.dry_run_required(revision, kinds)
    dry_run: Run | None = None
    if dry_run_id is not None:
        dry_run = Run.objects.filter(pk=dry_run_id, plan=plan, mode=RunMode.DRY_RUN).first()
        if dry_run is None:
            raise ServiceError(
                f"run {dry_run_id} is not a dry-run of this plan",
                code=codes.INVALID_VALUE,
                errors=[{"path": "dry_run", "code": codes.INVALID_VALUE, "message": "not found"}],
            )
    if needs and dry_run is None:
        _refuse(actor, plan, client_ip, codes.DRY_RUN_REQUIRED)
        raise ServiceError(
            f"{', '.join(needs)} {'requires' if len(needs) == 1 else 'require'} an approved "
            "dry-run: name it in 'dry_run'",
            code=codes.DRY_RUN_REQUIRED,
            status=409,
        )
    consumed: Run | None = None
    if dry_run is not None:
        applicable = policies.may_apply(dry_run, approval_required=bool(needs))
        if not applicable.allowed:
            detail = (
                None
                if applicable.code == codes.DRY_RUN_NOT_APPROVED
                else {"dry_run": dry_run.pk, **applicable.extra}
            )
            _refuse(actor, plan, client_ip, applicable.code, detail)
            applicable.enforce()
        consumed = policies.lineage_root(dry_run)
    if dry_run is not None:
        # What is cheap to know stays a synchronous 409: the plan was edited, a kind's version
        # or policy moved, a workspace or target was re-pointed. Changed files and rows are
        # only known once the worker has partitioned: that apply fails with `stale_plan`.
        diff = stale_without_partitioning(dry_run, revision, kinds)
        if diff is not None:
            _refuse(actor, plan, client_ip, codes.STALE_PLAN, {"dry_run": dry_run.pk, "diff": diff})
            raise ServiceError(
                "the plan, its files or its kinds changed since the dry-run was approved",
                code=codes.STALE_PLAN,
                status=409,
                extra={"diff": diff, "dry_run_digest": dry_run.digest},
            )
    used: Run | None = None
    try:
        with transaction.atomic():
            if consumed is not None:
                # Serialise applies of one approval on its dry-run's row, then look again.
                Run.objects.select_for_update().filter(pk=consumed.pk).first()
                used = Run.objects.filter(consumed_dry_run=consumed).first()
                if used is not None:
                    raise _ApprovalUsed
            run = _create_run(
                plan=plan,
                revision=revision,
                kinds=kinds,
                mode=RunMode.APPLY,
                actor=actor,
                idempotency_key=idempotency_key,
                dry_run=dry_run,
                force_rerun=force_rerun,
                consumed_dry_run=consumed,
                fingerprint=fingerprint,
            )
            audit(
                actor=actor,
                action="run.apply",
                obj=run,
                client_ip=client_ip,
                after={"state": run.state, "dry_run": dry_run_id},
            )
            _audit_force_merge(actor, run, revision, client_ip)
        return run
    except _ApprovalUsed:
        pass
    except IntegrityError:
        existing = _existing_for_key(actor, idempotency_key, plan, RunMode.APPLY, fingerprint)
        if existing is not None:
            return existing
        used = Run.objects.filter(consumed_dry_run=consumed).first() if consumed else None
        if used is None:
            raise
    assert dry_run is not None and used is not None
    refusal = policies.approval_used(dry_run, used)
    _refuse(actor, plan, client_ip, refusal.code, {"dry_run": dry_run.pk, "run": used.pk})
    raise refusal


class _ApprovalUsed(Exception):
    """Leaves the apply's transaction when another apply consumed the approval first."""


def _refuse(actor: Any, plan: Plan, client_ip: str | None, code: str, detail: Any = None) -> None:
    """Refusals of privileged actions are audited too (outside the refused transaction)."""
    audit(
        actor=actor,
        action=f"refused.{code}",
        obj=plan,
        client_ip=client_ip,
        detail=detail,
    )


def run_approve(
    *,
    run: Run,
    actor: Any,
    comment: str = "",
    client_ip: str | None = None,
    acknowledge_findings: bool = False,
    digest: str | None = None,
) -> Run:
    """Approve a dry-run. Where a stage's kind requires it, `acknowledge_findings` must say
    the approver read the high-severity SQL findings (400 `findings_not_acknowledged`); the
    findings acknowledged are recorded with the approval and in the audit event. `digest`,
    when given, is the run digest the approver reviewed: another one is refused (409
    `stale_review`), so a decision form rendered for another review cannot approve this."""
    return _decide(
        run=run,
        actor=actor,
        decision=Approval.Decision.APPROVE,
        comment=comment,
        client_ip=client_ip,
        acknowledge_findings=acknowledge_findings,
        digest=digest,
    )


def run_reject(
    *,
    run: Run,
    actor: Any,
    comment: str = "",
    client_ip: str | None = None,
    digest: str | None = None,
) -> Run:
    """Reject a dry-run; `digest` as for `run_approve`."""
    return _decide(
        run=run,
        actor=actor,
        decision=Approval.Decision.REJECT,
        comment=comment,
        client_ip=client_ip,
        digest=digest,
    )


def _decide(
    *,
    run: Run,
    actor: Any,
    decision: str,
    comment: str,
    client_ip: str | None,
    acknowledge_findings: bool = False,
    digest: str | None = None,
) -> Run:
    _require(actor, "approve")
    if not isinstance(comment, str) or len(comment) > 5000 or "\x00" in comment:
        raise ServiceError(
            "the comment must be text of at most 5000 characters",
            code=codes.INVALID_VALUE,
            errors=[{"path": "comment", "code": codes.INVALID_VALUE, "message": "invalid"}],
        )
    # Four-eyes before the lock: a refused author is audited whatever the run's state.
    eyes = policies.four_eyes(actor, run)
    if not eyes.allowed:
        _refuse(actor, run.plan, client_ip, eyes.code, {"run": run.pk})
        eyes.enforce()
    acknowledged: list[dict[str, str]] = []
    if decision == Approval.Decision.APPROVE:
        # Linting is pure and the pinned params do not change: judged outside the lock.
        required = policies.findings_to_acknowledge(run)
        ack = policies.findings_acknowledged(required, acknowledged=acknowledge_findings is True)
        if not ack.allowed:
            _refuse(actor, run.plan, client_ip, ack.code, {"run": run.pk})
            ack.enforce()
        acknowledged = required if acknowledge_findings is True else []
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        mine = Approval.objects.filter(run=locked, user=actor).first()
        policies.decision_open(locked, mine=mine, decision=decision).enforce()
        # Judged under the lock: the digest the decision binds to is the one read here.
        policies.review_current(locked, digest).enforce()
        if mine is not None:
            return locked  # the same decision twice counts once
        Approval.objects.create(
            run=locked,
            user=actor,
            decision=decision,
            comment=comment,
            digest=locked.digest,
            acknowledged_findings=acknowledged,
        )
        before = locked.state
        if decision == Approval.Decision.REJECT:
            move_run(locked, RunState.REJECTED)
        else:
            approvers = (
                Approval.objects.filter(
                    run=locked, decision=Approval.Decision.APPROVE, digest=locked.digest
                )
                .values("user")
                .order_by()
                .distinct()
                .count()
            )
            if approvers >= locked.required_approvals:
                move_run(locked, RunState.APPROVED)
        audit(
            actor=actor,
            action=f"run.{decision}",
            obj=locked,
            client_ip=client_ip,
            before={"state": before},
            after={"state": locked.state},
            detail={"comment": comment, "acknowledged_findings": acknowledged}
            if acknowledged
            else {"comment": comment},
        )
    return locked


def run_abort(*, run: Run, actor: Any, client_ip: str | None = None) -> Run:
    """Stop new claims and cancel pending partitions; running ones are fenced out and stop at
    their next heartbeat.

    One transaction fences out the running partitions (at most the run's concurrency), then
    locks the run's row and moves it to `aborted`, in the engine's lock order: partitions,
    stage counters, then the run (engine.deadlocks; an abort that locked the run first
    deadlocked with claims on PostgreSQL, 503 `database_busy`). No claim commits after it
    (`claims._stamp_run` claims only for a running run), and no running executor records an
    outcome after it (fenced). Pending partitions are then cancelled in bounded batches
    (`progress.finish_abort`: the first here, the rest by a worker; after a crash, the
    reconciler, `progress.aborted_unfinished`).

    Refusals (`policies.may_abort`): 403 without hxo:abort, 409 `invalid_state` for a finished
    run (asked again under the lock: the fencing is then rolled back with it). Audited as
    `run.abort` with the partitions it cancels."""
    policies.may_abort(actor, run).enforce()
    running = Partition.objects.filter(run_id=run.pk, state=PartitionState.RUNNING)

    def abort() -> Run:
        with transaction.atomic():
            fenced = progress.cancel_partitions(running)
            locked = Run.objects.select_for_update().get(pk=run.pk)
            policies.may_abort(actor, locked).enforce()
            before = locked.state
            # A paused run aborts as any other (move_run ends its pause interval).
            move_run(locked, RunState.ABORTED)
            pending = Partition.objects.filter(run=locked, state=PartitionState.PENDING)
            audit(
                actor=actor,
                action="run.abort",
                obj=locked,
                client_ip=client_ip,
                before={"state": before},
                after={"state": locked.state},
                detail={"cancelled_partitions": fenced + pending.count()},
            )
            return locked

    locked = retrying(abort, what=f"aborting run {run.pk}")
    # One bounded batch here (a run of up to 2,000 partitions ends in this request); a larger
    # one is finished by a worker, so the request answers at once.
    if not progress.finish_abort(locked.pk, max_batches=1):
        wakeups.enqueue_abort(locked.pk)
    locked.refresh_from_db()
    return locked


def run_pause(*, run: Run, actor: Any, client_ip: str | None = None) -> Run:
    """Pause a run that has not finished: it claims nothing new from the next claim on
    (`claims.claim_batch` reads the flag in its transaction, and a claim that read the run
    before the pause committed is taken back), while partitions already running finish and
    are recorded as usual. The run stays in its state (`running`...): `paused_at` is a flag,
    and the interval is opened in `Run.pauses` so SLO clocks leave it out.

    Refusals (`policies.may_pause`): 403 without hxo:abort, 409 `invalid_state` for a finished
    run, 409 `already_paused`. Audited as `run.pause`."""
    policies.may_pause(actor, run).enforce()
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        policies.may_pause(actor, locked).enforce()
        # Taken after the lock: later than every claim that committed before it (see
        # claims._stamp_run), so "claimed after paused_at" means "claimed while paused".
        now = timezone.now()
        by = getattr(actor, "username", "") or ""
        pauses = [*(locked.pauses or []), {"from": now.isoformat(), "to": None, "by": by}]
        Run.objects.filter(pk=locked.pk).update(paused_at=now, pauses=pauses)
        locked.paused_at, locked.pauses = now, pauses
        running = Partition.objects.filter(run=locked, state=PartitionState.RUNNING).count()
        audit(
            actor=actor,
            action="run.pause",
            obj=locked,
            client_ip=client_ip,
            before={"paused": False},
            after={"paused": True, "paused_at": now.isoformat()},
            detail={"running_partitions": running},
        )
    return locked


def run_resume(*, run: Run, actor: Any, client_ip: str | None = None) -> Run:
    """Resume a paused run: close its pause interval and wake its drainers (after commit, as
    many as its throttle allows and it has ready partitions). Refusals (`policies.may_resume`):
    403 without hxo:abort, 409 `invalid_state` for a finished run, 409 `not_paused`. Audited as
    `run.resume` with the paused milliseconds."""
    policies.may_resume(actor, run).enforce()
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        policies.may_resume(actor, locked).enforce()
        now = timezone.now()
        paused_ms = int((now - locked.paused_at).total_seconds() * 1000)
        pauses = locked.pauses_closed(now)
        Run.objects.filter(pk=locked.pk).update(paused_at=None, pauses=pauses)
        locked.paused_at, locked.pauses = None, pauses
        ready = Partition.objects.filter(
            run=locked, ready=True, state=PartitionState.PENDING
        ).count()
        wakeups.wake(locked.pk, ready, concurrency=locked.max_concurrency)
        audit(
            actor=actor,
            action="run.resume",
            obj=locked,
            client_ip=client_ip,
            before={"paused": True},
            after={"paused": False},
            detail={"paused_ms": paused_ms, "ready_partitions": ready},
        )
    return locked


# Bounds of a live throttle. An interval longer than a drainer's budget (HXO_DRAIN_BUDGET_S,
# 60 s by default) would leave each next claim to the reconciler's pass: a minute at most.
MAX_MIN_INTERVAL_MS = 60_000
UNSET: Any = object()


def run_throttle(
    *,
    run: Run,
    actor: Any,
    concurrency: int | None = UNSET,
    min_interval_ms: int = UNSET,
    client_ip: str | None = None,
) -> Run:
    """Change a run's live throttle; the next claim of any drainer obeys it, nothing restarts.

    `concurrency`: drainers executing the run at once, 1..HXO_MAX_CONCURRENCY (the global
    cap), or None for the cap itself; `min_interval_ms`: least time between two claims of the
    run, 0..MAX_MIN_INTERVAL_MS (0: none; with an interval each claim takes one partition).
    Omitted arguments keep their value. Raising the concurrency wakes the extra drainers.

    Refusals: 400 `validation_failed` with an `errors` entry per field (`path` the field name,
    code `invalid_value`) when out of bounds or when neither is given; 403 without hxo:abort;
    409 `invalid_state` for a finished run. Audited as `run.throttle` (before and after)."""
    errors = []
    if concurrency is UNSET and min_interval_ms is UNSET:
        errors.append(
            {
                "path": "",
                "code": codes.REQUIRED,
                "message": "give concurrency, min_interval_ms or both",
            }
        )
    cap = settings.HXO_MAX_CONCURRENCY
    if concurrency is not UNSET and concurrency is not None and not 1 <= concurrency <= cap:
        errors.append(
            {
                "path": "concurrency",
                "code": codes.INVALID_VALUE,
                "message": f"must be between 1 and {cap} (HXO_MAX_CONCURRENCY), or null",
            }
        )
    if min_interval_ms is not UNSET and not 0 <= min_interval_ms <= MAX_MIN_INTERVAL_MS:
        errors.append(
            {
                "path": "min_interval_ms",
                "code": codes.INVALID_VALUE,
                "message": f"must be between 0 and {MAX_MIN_INTERVAL_MS}",
            }
        )
    if errors:
        raise ServiceError(
            "the throttle is not valid", code=codes.VALIDATION_FAILED, status=400, errors=errors
        )
    policies.may_throttle(actor, run).enforce()
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        policies.may_throttle(actor, locked).enforce()
        before = {"concurrency": locked.max_concurrency, "min_interval_ms": locked.min_interval_ms}
        if concurrency is not UNSET:
            locked.max_concurrency = concurrency
        if min_interval_ms is not UNSET:
            locked.min_interval_ms = min_interval_ms
        locked.save(update_fields=["max_concurrency", "min_interval_ms"])
        after = {"concurrency": locked.max_concurrency, "min_interval_ms": locked.min_interval_ms}
        if locked.paused_at is None and (locked.max_concurrency or cap) > (
            before["concurrency"] or cap
        ):
            ready = Partition.objects.filter(
                run=locked, ready=True, state=PartitionState.PENDING
            ).count()
            wakeups.wake(locked.pk, ready, concurrency=locked.max_concurrency)
        audit(
            actor=actor,
            action="run.throttle",
            obj=locked,
            client_ip=client_ip,
            before=before,
            after=after,
        )
    return locked


def run_replay(*, run: Run, actor: Any, client_ip: str | None = None) -> Run:
    """A child run holding only the failed (and the cancelled) partitions; it keeps the
    approval lineage of its parent (`dry_run`) and pins the same manifest entries. A replay
    of an apply finishes the approved work: it consumes no approval.

    A replay passes the checks a new run of the revision passes (`_check_submit`: hxo:submit,
    sunset kinds and components with their own codes, force-merge for declared non-idempotent
    stages), and non-idempotent partitions need hxo:force-merge. A run has at most one
    replay (unique `Run.parent`; the parent row is locked while the child is stored):
    another replay is 409 `replay_in_progress` while that one runs and `already_replayed`
    (extra `run`: the replay to replay instead) after it finished.
    """
    _require(actor, "replay")  # before the partitions are read
    parts = Partition.objects.filter(run=run, state__in=PARTITION_REDO)
    allowed = policies.may_replay(actor, run, policies.ReplayScope.of_partitions(parts))
    if not allowed.allowed:
        if allowed.code == codes.FORCE_MERGE_REQUIRED:
            _refuse(actor, run.plan, client_ip, allowed.code, {"run": run.pk})
        allowed.enforce()
    _check_submit(actor, run.revision)
    try:
        return _create_replay(run, parts, actor, client_ip)
    except ReplayAbandoned:
        # The copy stalled past its lease and the reconciler discarded it: nothing is left.
        raise ServiceError(
            "The replay took too long to store and was discarded; ask for it again.",
            code=codes.REPLAY_ABANDONED,
            status=503,
            extra={"run": run.pk},
        ) from None
    except IntegrityError:
        # The unique parent: another replay was stored first.
        policies.replay_conflict(run).enforce()
        raise


def _create_replay(run: Run, parts: Any, actor: Any, client_ip: str | None) -> Run:
    """Store the replay of `run` holding `parts` (its failed and cancelled partitions).

    In bounded transactions, as the partitioning worker writes a manifest
    (runs_app.engine.partitioning): SQLite has one writer, and one transaction copying
    20,000 partitions held every other writer (plan saves, claims) for seconds (issue 13).
    The first transaction stores the child `pending` with its stages (counters at 0) under
    the parent's row lock, which with the unique `Run.parent` keeps replays one per run;
    then `partitioning.BATCH` partitions per transaction (not claimable: `ready` is False
    until the run starts); the last one moves the child to `running` and audits. A child in
    `pending` is touched by no worker; when copying fails, what was written is deleted again
    (batch by batch) and the error raised. When the process copying dies (a killed web
    worker), nothing raises: the copy holds a lease (`replay_lease_name`, renewed by every
    batch, dropped when the child starts) and the reconciler discards a pending replay whose
    lease lapsed (`discard_abandoned_replays`), so its parent may be replayed again."""
    owner = f"replay-copy:{uuid.uuid4().hex}"
    with transaction.atomic():
        Run.objects.select_for_update().filter(pk=run.pk).first()
        policies.replay_conflict(run).enforce()
        total = parts.count()
        child = Run.objects.create(
            plan=run.plan,
            revision=run.revision,
            mode=run.mode,
            state=RunState.PENDING,
            digest=run.digest,
            kind_snapshots=run.kind_snapshots,
            parent=run,
            dry_run=run.dry_run,
            requested_by=actor,
            required_approvals=run.required_approvals,
            partition_total=total,
        )
        stage_pks = set(parts.values_list("stage_id", flat=True))
        old_stages = list(RunStage.objects.filter(pk__in=stage_pks).order_by("position"))
        kept = {s.stage_id for s in old_stages}
        new_stage_by_old = {
            old.pk: RunStage.objects.create(
                run=child,
                stage_id=old.stage_id,
                position=old.position,
                kind=old.kind,
                kind_version=old.kind_version,
                partitioner=old.partitioner,
                executor=old.executor,
                depends_on=[d for d in old.depends_on if d in kept],
                params=old.params,
                non_idempotent=old.non_idempotent,
                max_failed_partitions=old.max_failed_partitions,
                slo_ms=old.slo_ms,
                manifest=old.manifest,
                content_root=old.content_root,
                # Counted up by partitioning.insert_partitions, batch by batch.
                total=0,
                pending=0,
                max_wave=old.max_wave,
            )
            for old in old_stages
        }
        Lease.objects.create(
            name=replay_lease_name(child.pk),
            owner=owner,
            expires_at=timezone.now() + REPLAY_LEASE,
        )
    try:
        last_pk = 0
        while True:
            with transaction.atomic():
                _renew_replay_lease(child.pk, owner)
                # Keyset paging on the parent's ids: each batch reads what it copies.
                batch = list(parts.filter(pk__gt=last_pk).order_by("pk")[: partitioning.BATCH])
                if not batch:
                    break
                partitioning.insert_partitions(
                    child.pk,
                    [
                        partitioning.NewPartition(
                            stage_pk=new_stage_by_old[p.stage_id].pk,
                            index=p.index,
                            wave=p.wave,
                            inputs=p.inputs,
                            fingerprints=p.fingerprints,
                            label=p.label,
                            weight=p.weight,
                            content_id=p.content_id,
                            non_idempotent=p.non_idempotent,
                        )
                        for p in batch
                    ],
                )
                last_pk = batch[-1].pk
        partitioning.refresh_statistics(total)  # before its partitions become claimable
        with transaction.atomic():
            _renew_replay_lease(child.pk, owner)
            Lease.objects.filter(name=replay_lease_name(child.pk)).delete()
            child = Run.objects.select_for_update().get(pk=child.pk)
            move_run(child, RunState.PARTITIONING)
            move_run(child, RunState.RUNNING)
            progress.advance_run(child.pk)
            audit(
                actor=actor,
                action="run.replay",
                obj=child,
                client_ip=client_ip,
                detail={"parent": run.pk, "partitions": total},
            )
            if parts.filter(non_idempotent=True).exists():
                audit(
                    actor=actor,
                    action="run.force_merge",
                    obj=child,
                    client_ip=client_ip,
                    detail={"replay_of": run.pk},
                )
    except BaseException:
        _discard_replay(child.pk)
        raise
    return child


# How long a replay's copy may go without finishing a batch (each takes well under a second)
# before the reconciler takes its process for dead and discards the pending child.
REPLAY_LEASE = timedelta(seconds=60)


class ReplayAbandoned(Exception):
    """The replay's copy lease lapsed and the reconciler discarded the child: stop copying."""


def replay_lease_name(child_pk: int) -> str:
    """The `Lease` row held while a replay's partitions are copied into child `child_pk`."""
    return f"replay-copy:{child_pk}"


def _renew_replay_lease(child_pk: int, owner: str) -> None:
    """Inside a transaction: renew the copy's lease (compare-and-swap on its owner); raises
    ReplayAbandoned when it is gone (the reconciler discarded the child meanwhile)."""
    renewed = Lease.objects.filter(name=replay_lease_name(child_pk), owner=owner).update(
        expires_at=timezone.now() + REPLAY_LEASE
    )
    if not renewed:
        raise ReplayAbandoned(f"replay {child_pk}: the copy's lease lapsed")


def discard_abandoned_replays() -> list[int]:
    """The reconciler's repair of replays whose copying process died: every `pending` child
    run (it has a parent) whose copy lease (`replay_lease_name`) lapsed or is missing is
    deleted with what was copied (`_discard_replay`), its lease row too, and audited as
    `run.replay_discarded` on the parent, so the parent can be replayed again (the unique
    `Run.parent` had kept that refused with `replay_in_progress`). Returns the children's ids.

    A copy in progress renews its lease with every batch, so only a dead one is touched; a
    copy that comes back after its lease lapsed finds the lease gone and stops
    (ReplayAbandoned) before it writes again."""
    now = timezone.now()
    live = {
        name.split(":", 1)[1]
        for name in Lease.objects.filter(
            name__startswith="replay-copy:", expires_at__gte=now
        ).values_list("name", flat=True)
    }
    discarded = []
    for child_pk, parent_pk in Run.objects.filter(
        state=RunState.PENDING, parent__isnull=False
    ).values_list("pk", "parent_id"):
        if str(child_pk) in live:
            continue
        Lease.objects.filter(name=replay_lease_name(child_pk)).delete()
        copied = Partition.objects.filter(run_id=child_pk).count()
        _discard_replay(child_pk)
        audit(
            actor=None,
            action="run.replay_discarded",
            obj=Run.objects.get(pk=parent_pk),
            detail={"replay": child_pk, "partitions_copied": copied, "why": "copy abandoned"},
        )
        discarded.append(child_pk)
    return discarded


def _discard_replay(child_pk: int) -> None:
    """Delete a replay whose copying failed: its partitions `partitioning.BATCH` per
    transaction, then the run (its stages cascade), so a new replay may be asked for."""
    while True:
        with transaction.atomic():
            pks = list(
                Partition.objects.filter(run_id=child_pk).values_list("pk", flat=True)[
                    : partitioning.BATCH
                ]
            )
            if not pks:
                break
            Partition.objects.filter(pk__in=pks).delete()
    Run.objects.filter(pk=child_pk, state=RunState.PENDING).delete()


def last_applied_run(plan: Plan, *, before: Run | None = None) -> Run | None:
    qs = Run.objects.filter(plan=plan, mode=RunMode.APPLY, state=RunState.SUCCEEDED)
    if before is not None:
        qs = qs.exclude(pk=before.pk)
    return qs.order_by("-id").first()

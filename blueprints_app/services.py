"""Writes to the job-kind registry and to users' roles.

Every registry write (admin, API, `hxo_load_registry`, `hxo_registry import`) goes through
`job_kind_save` and `job_kind_delete`, so that versioning of registry edits has one place to
live: a change to a contract field (`models.VERSIONED_FIELDS`) makes a new version, and every
version's contract is kept in `JobKindVersion` for the plans pinned to it. Every write that
changes something records one audit event (who, what, when, from where, the changed fields
before and after); one that loosens a kind's safety policy is `registry.safety_loosened`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser, Group
from django.db import transaction
from django.db.models import Max

from blueprints_app.models import VERSIONED_FIELDS, JobKind, JobKindVersion, contract_snapshot
from blueprints_app.validation import ValidationResult, validate_job_kind
from hxo_site import codes
from hxo_site.audit import audit
from hxo_site.capabilities import ROLES

# The fields validate_job_kind reads; callers merge their edits over the stored values.
JOB_KIND_CHECKED_FIELDS = (
    "kind",
    "partitioners",
    "executors",
    "input_schema",
    "output_schema",
    "replaced_by",
    "required_approvals",
    "default_slo_ms",
)


class JobKindInvalid(Exception):
    """A registry write refused by the validator; `result` holds the structured errors."""

    def __init__(self, result: ValidationResult) -> None:
        super().__init__("; ".join(f"{i.path}: {i.message}" for i in result.errors))
        self.result = result


def job_kind_data(job_kind: JobKind) -> dict[str, Any]:
    """The stored values the validator reads, as a plain dict."""
    return {field: getattr(job_kind, field) for field in JOB_KIND_CHECKED_FIELDS}


def _invalid(path: str, code: str, message: str) -> JobKindInvalid:
    result = ValidationResult()
    result.error(path, code, message)
    return JobKindInvalid(result)


def _author(user: Any) -> Any:
    return user if getattr(user, "is_authenticated", False) else None


def contract_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The contract fields that differ between two snapshots, in VERSIONED_FIELDS order."""
    return [f for f in VERSIONED_FIELDS if before.get(f) != after.get(f)]


# Fields of a kind row an audit event compares (everything an admin or the API can set).
AUDITED_FIELDS = (
    "kind",
    "description",
    *VERSIONED_FIELDS,
    "version",
    "deprecated",
    "sunset_at",
    "replaced_by",
)
# Audit actions of registry writes (hxo_site.models.AuditEvent.action).
KIND_CREATED = "registry.kind_create"
KIND_UPDATED = "registry.kind_update"
KIND_DELETED = "registry.kind_delete"
SAFETY_LOOSENED = "registry.safety_loosened"
VERSION_UPDATED = "registry.version_update"
VERSION_IMPORTED = "registry.version_import"


def _json(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return list(value) if isinstance(value, tuple) else value


def _row(obj: Any, fields: Iterable[str]) -> dict[str, Any]:
    return {f: _json(getattr(obj, f)) for f in fields}


def safety_loosened(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The safety-policy fields whose change lets more through: `require_dry_run` switched
    off, `allow_non_idempotent` switched on, fewer `required_approvals`."""
    out = []
    if before.get("require_dry_run") and not after.get("require_dry_run"):
        out.append("require_dry_run")
    if not before.get("allow_non_idempotent") and after.get("allow_non_idempotent"):
        out.append("allow_non_idempotent")
    if (after.get("required_approvals") or 0) < (before.get("required_approvals") or 0):
        out.append("required_approvals")
    return out


def audit_registry_write(
    *,
    action: str,
    user: Any,
    via: str,
    client_ip: str | None,
    object_type: str,
    object_id: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    """One audit event for a registry write, with only the fields that changed (all of them
    for a create or a delete). No event when nothing changed."""
    if before is not None and after is not None:
        changed = [f for f in after if before.get(f) != after.get(f)]
        if not changed:
            return
        before = {f: before.get(f) for f in changed}
        after = {f: after[f] for f in changed}
    detail: dict[str, Any] = {"via": via}
    loosened = safety_loosened(before or {}, after or {}) if before and after else []
    if loosened:
        action = SAFETY_LOOSENED
        detail["loosened"] = loosened
    audit(
        actor=user if _author(user) is not None else (f"system ({via})" if via else None),
        action=action,
        object_type=object_type,
        object_id=object_id,
        client_ip=client_ip,
        before=before,
        after=after,
        detail=detail,
    )


def latest_history_version(kind: str) -> int:
    return JobKindVersion.objects.filter(kind=kind).aggregate(m=Max("version"))["m"] or 0


@transaction.atomic
def job_kind_save(
    *,
    job_kind: JobKind,
    user: Any = None,
    changed_fields: Iterable[str] = (),
    version: int | None = None,
    via: str = "",
    client_ip: str | None = None,
) -> JobKind:
    """Validate and store a new or edited job kind, versioning contract changes.

    What changed is worked out against the stored row, so no caller can forget a field;
    `changed_fields` (what a form or serializer saw change) is not needed for that. A change to
    a contract field makes a new version: the version before keeps its history row, and the new
    one gets its own. A new kind starts at 1, or after the last version of a deleted kind of the
    same name, so an old pin never means a different contract.

    `version` is for imports: the version number the exported registry had, kept so that
    revisions pinned elsewhere mean the same here. It may not go backwards.

    `via` (api, admin, import, hxo_load_registry) and `client_ip` go into the audit event.
    """
    result = validate_job_kind(job_kind_data(job_kind))
    if not result.valid:
        raise JobKindInvalid(result)
    stored = (
        JobKind.objects.select_for_update().filter(pk=job_kind.pk).first()
        if job_kind.pk is not None
        else None
    )
    last = latest_history_version(job_kind.kind)
    previous = contract_snapshot(stored) if stored is not None else None
    audit_before = _row(stored, AUDITED_FIELDS) if stored is not None else None
    if previous is None:
        changed = list(VERSIONED_FIELDS)
        floor = last + 1
    else:
        changed = contract_changes(previous, contract_snapshot(job_kind))
        floor = max(stored.version, last) + 1 if changed else stored.version
    if version is not None:
        if version < floor:
            raise _invalid(
                "version",
                codes.INVALID_VALUE,
                f"version {version} of {job_kind.kind} would go backwards: "
                f"the registry needs at least {floor}",
            )
        floor = version
    job_kind.version = floor
    job_kind.save()
    if stored is not None and previous is not None and job_kind.version != stored.version:
        # The version before may predate history (rows written outside this service).
        JobKindVersion.objects.get_or_create(
            kind=stored.kind, version=stored.version, defaults={"contract": previous}
        )
    JobKindVersion.objects.get_or_create(
        kind=job_kind.kind,
        version=job_kind.version,
        defaults={
            "contract": contract_snapshot(job_kind),
            "changed_fields": [] if stored is None else changed,
            "created_by": _author(user),
        },
    )
    audit_registry_write(
        action=KIND_CREATED if stored is None else KIND_UPDATED,
        user=user,
        via=via,
        client_ip=client_ip,
        object_type="jobkind",
        object_id=job_kind.kind,
        before=audit_before,
        after=_row(job_kind, AUDITED_FIELDS),
    )
    return job_kind


def check_version_update(
    row: JobKindVersion, *, sunset_at: Any = ..., migration: Any = ...
) -> ValidationResult:
    """What is wrong with setting a version's sunset or migration steps (`...`: unchanged).

    The current version cannot be sunset on its own (sunset the kind, which stops every
    version): a version's sunset is the grace period of plans that still pin it after a newer
    one was published.
    """
    from blueprints_app.evolution import check_steps

    result = ValidationResult()
    current = JobKind.objects.filter(kind=row.kind).values_list("version", flat=True).first()
    sunsetting = sunset_at is not ... and sunset_at is not None
    if sunsetting and current is not None and row.version >= current:
        result.error(
            "sunset_at",
            codes.INVALID_VALUE,
            f"version {row.version} is the current version of {row.kind}: set the kind's "
            "own sunset_at instead",
        )
    if migration is not ...:
        result.errors.extend(check_steps(migration, kind=row.kind, path="migration"))
    return result


@transaction.atomic
def job_kind_version_update(
    *,
    row: JobKindVersion,
    user: Any = None,
    sunset_at: Any = ...,
    migration: Any = ...,
    via: str = "",
    client_ip: str | None = None,
) -> JobKindVersion:
    """Set when an older version stops running, or the steps that migrate plans off it.

    Only what is passed changes; the contract of a version is history and never changes.
    """
    result = check_version_update(row, sunset_at=sunset_at, migration=migration)
    if not result.valid:
        raise JobKindInvalid(result)
    # Before: the stored row (an admin form has already set its values on `row`).
    stored = JobKindVersion.objects.select_for_update().filter(pk=row.pk).first()
    fields = ("sunset_at", "migration")
    before = _row(stored, fields) if stored is not None else None
    if sunset_at is not ...:
        row.sunset_at = sunset_at
    if migration is not ...:
        row.migration = migration
    row.save(update_fields=["sunset_at", "migration"])
    audit_registry_write(
        action=VERSION_UPDATED,
        user=user,
        via=via,
        client_ip=client_ip,
        object_type="jobkindversion",
        object_id=f"{row.kind}@{row.version}",
        before=before,
        after=_row(row, fields),
    )
    return row


@transaction.atomic
def job_kind_delete(
    *, job_kind: JobKind, user: Any = None, via: str = "", client_ip: str | None = None
) -> None:
    before = _row(job_kind, AUDITED_FIELDS)
    job_kind.delete()
    audit_registry_write(
        action=KIND_DELETED,
        user=user,
        via=via,
        client_ip=client_ip,
        object_type="jobkind",
        object_id=before["kind"],
        before=before,
        after=None,
    )


@transaction.atomic
def user_set_role(
    *,
    username: str,
    role: str | None,
    password: str | None = None,
    staff: bool | None = None,
) -> tuple[AbstractUser, bool]:
    """Create or update `username`, changing only what is asked for.

    `role` (one of `ROLES`) makes the user hold exactly that role group; groups that are not
    roles are kept. `None` keeps an existing user's role and is refused for a new user (a user
    without a role can do nothing). `staff` sets whether a non-admiral may log in to the admin;
    `None` keeps it (new users: not staff). Admirals are always staff: they edit the registry in
    the admin. `password` sets the password; `None` keeps it (new users get an unusable one:
    token-only). Returns `(user, created)`.

    Raises ValueError for an unknown role, a new user without a role, or a missing role group
    (migrations not run).
    """
    if role is not None and role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")
    User = get_user_model()
    with transaction.atomic():
        user = User.objects.filter(username=username).first()
        created = user is None
        if created and role is None:
            raise ValueError(f"user {username!r} does not exist: give --role to create it")
        if created:
            user = User(username=username)
        if role is not None:
            try:
                group = Group.objects.get(name=role)
            except Group.DoesNotExist:
                missing = f"the {role!r} group is missing: run `manage.py migrate`"
                raise ValueError(missing) from None
        if staff is not None:
            user.is_staff = staff
        if role == "admiral":
            user.is_staff = True
        elif role is not None and staff is None and not created:
            # Leaving the admiral role takes the admin away unless --staff says otherwise.
            user.is_staff = user.is_staff and not user.groups.filter(name="admiral").exists()
        user.is_active = True
        if password is not None:
            user.set_password(password)
        elif created:
            user.set_unusable_password()
        user.save()
        if role is not None:
            user.groups.remove(*Group.objects.filter(name__in=[r for r in ROLES if r != role]))
            user.groups.add(group)
    return user, created

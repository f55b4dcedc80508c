"""Writes to the job-kind registry and to users' roles.

Every registry write (admin, API, `hxo_load_registry`) goes through `job_kind_save` and
`job_kind_delete`, so that versioning and auditing of registry edits have one place to live.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser, Group
from django.db import transaction

from blueprints_app.capabilities import ROLES
from blueprints_app.models import JobKind
from blueprints_app.validation import ValidationResult, validate_job_kind

# The fields validate_job_kind reads; callers merge their edits over the stored values.
JOB_KIND_CHECKED_FIELDS = (
    "kind",
    "partitioners",
    "executors",
    "input_schema",
    "output_schema",
    "replaced_by",
)


class JobKindInvalid(Exception):
    """A registry write refused by the validator; `result` holds the structured errors."""

    def __init__(self, result: ValidationResult) -> None:
        super().__init__("; ".join(f"{i.path}: {i.message}" for i in result.errors))
        self.result = result


def job_kind_data(job_kind: JobKind) -> dict[str, Any]:
    """The stored values the validator reads, as a plain dict."""
    return {field: getattr(job_kind, field) for field in JOB_KIND_CHECKED_FIELDS}


@transaction.atomic
def job_kind_save(
    *, job_kind: JobKind, user: Any = None, changed_fields: Iterable[str] = ()
) -> JobKind:
    """Validate and store a new or edited job kind.

    `changed_fields` names what the edit changed. Nothing is bumped yet: versioning (a later
    issue) increments `job_kind.version` here when a contract field is among them.
    """
    result = validate_job_kind(job_kind_data(job_kind))
    if not result.valid:
        raise JobKindInvalid(result)
    job_kind.save()
    return job_kind


@transaction.atomic
def job_kind_delete(*, job_kind: JobKind, user: Any = None) -> None:
    job_kind.delete()


@transaction.atomic
def user_set_role(
    *,
    username: str,
    role: str,
    password: str | None = None,
    staff: bool = False,
) -> tuple[AbstractUser, bool]:
    """Create or update `username` so that it holds exactly the role group `role`.

    Groups that are not roles are kept. Admirals are staff (they edit the registry in the
    admin); other roles are staff only when `staff` is set. A new user without a password gets
    an unusable one (token-only). Returns the user and whether it was created.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")
    User = get_user_model()
    user, created = User.objects.get_or_create(username=username)
    user.is_staff = role == "admiral" or staff
    user.is_active = True
    if password is not None:
        user.set_password(password)
    elif created:
        user.set_unusable_password()
    user.save()
    others = Group.objects.filter(name__in=[r for r in ROLES if r != role])
    user.groups.remove(*others)
    try:
        user.groups.add(Group.objects.get(name=role))
    except Group.DoesNotExist:
        raise ValueError(f"the {role!r} group is missing: run `manage.py migrate`") from None
    return user, created

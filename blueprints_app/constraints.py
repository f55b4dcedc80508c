"""Every database constraint of the registry's models, as a field error a person can act on.

Django reports a violated `CheckConstraint` or `UniqueConstraint` as "Constraint
“jobkind_approvals_gte_1” is violated.", a form-wide error naming an identifier nobody sees
elsewhere; a save that skips validation gets an IntegrityError (a 500). `MESSAGES` maps each
constraint of `JobKind` and `JobKindVersion` to the field it is about, a stable code and a
sentence; `FriendlyConstraints.validate_constraints` (every `full_clean`, so every admin form)
and `constraint_issues` (the one validator, so the API and imports) report through it.
`tests/blueprints_app/test_registry_compat.py` fails when a constraint is added without an
entry here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import DatabaseError, models, router
from django.db.models import Value

from hxo_site import codes


@dataclasses.dataclass(frozen=True)
class ConstraintMessage:
    field: str
    code: str
    message: str


# (model label, constraint name) → where and how to say it.
MESSAGES: dict[tuple[str, str], ConstraintMessage] = {
    ("blueprints_app.JobKind", "jobkind_approvals_gte_1"): ConstraintMessage(
        "required_approvals",
        codes.INVALID_VALUE,
        "at least 1 approval is required: a dry-run nobody has to approve is not reviewed "
        "(use require_dry_run off to skip the dry-run instead)",
    ),
    ("blueprints_app.JobKind", "jobkind_slo_positive"): ConstraintMessage(
        "default_slo_ms", codes.INVALID_VALUE, "the SLO is at least 1 millisecond"
    ),
    ("blueprints_app.JobKindVersion", "jobkindversion_unique"): ConstraintMessage(
        "version",
        codes.INVALID_VALUE,
        "this version of the kind already exists; versions are never reused",
    ),
    ("blueprints_app.JobKindVersion", "jobkindversion_version_gte_1"): ConstraintMessage(
        "version", codes.INVALID_VALUE, "versions start at 1"
    ),
}


def message_for(model: type[models.Model], constraint: models.BaseConstraint) -> ConstraintMessage:
    """The entry of `MESSAGES` for a constraint of `model` (KeyError when there is none)."""
    return MESSAGES[(model._meta.label, constraint.name)]


class FriendlyConstraints(models.Model):
    """A model whose constraint violations are field errors with `MESSAGES`' words."""

    class Meta:
        abstract = True

    def validate_constraints(self, exclude: Any = None) -> None:
        errors: dict[str, list[ValidationError]] = {}
        using = router.db_for_write(type(self), instance=self)
        for constraint in self._meta.constraints:
            try:
                constraint.validate(type(self), self, exclude=exclude, using=using)
            except ValidationError as exc:
                entry = MESSAGES.get((self._meta.label, constraint.name))
                if entry is None:
                    errors.setdefault(NON_FIELD_ERRORS, []).extend(exc.error_list)
                else:
                    errors.setdefault(entry.field, []).append(
                        ValidationError(entry.message, code=entry.code)
                    )
        if errors:
            raise ValidationError(errors)


def constraint_issues(
    model: type[models.Model], data: Mapping[str, Any]
) -> list[tuple[str, str, str]]:
    """`(field, code, message)` for each CheckConstraint of `model` that `data` (field →
    value; missing fields are not judged) would violate.

    The condition is evaluated by the database (`Q.check`), so the rule has one source, the
    model's Meta. A value of the wrong type is left to the field's own validation.
    """
    found = []
    for constraint in model._meta.constraints:
        if not isinstance(constraint, models.CheckConstraint):
            continue
        names = {child[0].split("__", 1)[0] for child in constraint.condition.children}
        if not names or any(data.get(n) is None for n in names):
            continue
        if any(not isinstance(data[n], int) or isinstance(data[n], bool) for n in names):
            continue
        try:
            ok = constraint.condition.check({n: Value(data[n]) for n in names})
        except (DatabaseError, TypeError, ValueError):
            continue
        if not ok:
            entry = message_for(model, constraint)
            found.append((entry.field, entry.code, entry.message))
    return found

"""Versions of job kinds and the lifecycle of code components.

A plan revision pins the version of every kind it uses (`PlanRevision.kind_versions`). While
that version is not sunset, the revision validates, resolves and runs under the contract of
the version it was written for, read from the history (`JobKindVersion`), even after a registry
admin published a newer one: the contract's "Backward Compatibility". `kinds_at` builds those
pinned kinds; the validator, manifest resolution and the run's `kind_snapshots` all take them.

Safety never goes backwards with a pin: a pinned kind runs under the stricter of its own and
the current safety policy, so tightening `require_dry_run`, `allow_non_idempotent` or
`required_approvals` applies at once to every plan, old or new.

Partitioners and executors carry their lifecycle as class variables (`deprecated`,
`sunset_at`, `replaced_by`); `component_lifecycle` reads them the same way for both.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from django.utils import timezone

from blueprints_app.models import VERSIONED_FIELDS, JobKind, JobKindVersion


def load_current_kinds() -> dict[str, JobKind]:
    return JobKind.objects.in_bulk(field_name="kind")


def pinned_kind(current: JobKind, row: JobKindVersion) -> JobKind:
    """`current` as it was at `row.version`: an unsaved JobKind for reading only.

    Description and deprecation come from the current row (they are facts about the kind, not
    part of a version); the contract fields from the history, with safety tightened to the
    current policy where that is stricter.
    """
    contract = row.contract
    kind = JobKind(
        pk=current.pk,
        kind=current.kind,
        description=current.description,
        version=row.version,
        deprecated=current.deprecated,
        sunset_at=current.sunset_at,
        replaced_by=current.replaced_by,
        created_at=current.created_at,
        updated_at=current.updated_at,
    )
    for field in VERSIONED_FIELDS:
        setattr(kind, field, contract.get(field, getattr(current, field)))
    pinned_policy = safety_policy(kind)
    kind.allow_non_idempotent = bool(kind.allow_non_idempotent and current.allow_non_idempotent)
    kind.require_dry_run = bool(kind.require_dry_run or current.require_dry_run)
    kind.required_approvals = max(kind.required_approvals, current.required_approvals)
    kind.current_version = current.version
    kind.version_sunset_at = row.sunset_at
    kind.safety_tightened = safety_policy(kind) != pinned_policy
    return kind


def safety_policy(kind: JobKind) -> list[Any]:
    """What a pin may never weaken: [allow_non_idempotent, require_dry_run, approvals]."""
    return [kind.allow_non_idempotent, kind.require_dry_run, kind.required_approvals]


def kinds_at(
    pinned: Mapping[str, Any] | None, kinds: Mapping[str, JobKind] | None = None
) -> dict[str, JobKind]:
    """The registry as a revision pinned it: current kinds, with pinned older versions swapped
    in from the history.

    A pinned version missing from the history (a row changed outside `job_kind_save`) falls
    back to the current contract, which is what HXO did before it kept versions; a pin newer
    than the registry (an import rolled back) does too.
    """
    result = dict(kinds) if kinds is not None else load_current_kinds()
    wanted = {
        name: version
        for name, version in (pinned or {}).items()
        if name in result
        and isinstance(version, int)
        and not isinstance(version, bool)
        and version != result[name].version
    }
    if not wanted:
        return result
    rows = JobKindVersion.objects.filter(
        kind__in=list(wanted), version__in=set(wanted.values())
    ).only("kind", "version", "contract", "sunset_at")
    for row in rows:
        if wanted.get(row.kind) == row.version and row.version < result[row.kind].version:
            result[row.kind] = pinned_kind(result[row.kind], row)
    return result


def pinned_versions_of(kinds: Mapping[str, JobKind], names: list[str]) -> dict[str, int]:
    return {name: kinds[name].version for name in names if name in kinds}


# --- Component lifecycle ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Lifecycle:
    deprecated: bool
    sunset_at: dt.datetime | None
    replaced_by: str

    @property
    def sunset(self) -> bool:
        return self.sunset_at is not None and self.sunset_at <= timezone.now()

    @property
    def announced(self) -> bool:
        """Deprecated, or with a sunset date (which is a deprecation with a deadline)."""
        return self.deprecated or self.sunset_at is not None


def as_aware(value: Any) -> dt.datetime | None:
    """A class variable's sunset as an aware datetime: a date means midnight UTC that day, a
    naive datetime is UTC, an ISO string is parsed. Anything else is a programming error."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if isinstance(value, dt.datetime):
        return value if timezone.is_aware(value) else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    raise TypeError(f"sunset_at must be a date, a datetime or an ISO string, not {value!r}")


def component_lifecycle(cls: type) -> Lifecycle:
    return Lifecycle(
        deprecated=bool(getattr(cls, "deprecated", False)),
        sunset_at=as_aware(getattr(cls, "sunset_at", None)),
        replaced_by=str(getattr(cls, "replaced_by", "") or ""),
    )

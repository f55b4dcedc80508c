"""Reads of the registry that span rows: the deprecation timeline and version histories."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from django.utils import timezone

from blueprints_app.models import JobKind, JobKindVersion
from blueprints_app.registry import EXECUTORS, PARTITIONERS
from blueprints_app.versions import component_lifecycle


@dataclasses.dataclass(frozen=True)
class TimelineEvent:
    """A sunset on the registry's timeline: of a kind, an older version, or a component."""

    at: dt.datetime
    what: str  # "kind", "version", "partitioner", "executor"
    name: str
    kind: str  # the job kind the event is about, for links ("" for components)
    replaced_by: str = ""

    @property
    def past(self) -> bool:
        return self.at <= timezone.now()


def registry_timeline(kinds: list[JobKind] | None = None) -> list[TimelineEvent]:
    """Every sunset the registry knows of, oldest first: the kinds' own, their older versions'
    and those of the components the kinds allow."""
    kinds = kinds if kinds is not None else list(JobKind.objects.order_by("kind"))
    events: list[TimelineEvent] = []
    current = {k.kind: k.version for k in kinds}
    for k in kinds:
        if k.sunset_at:
            events.append(TimelineEvent(k.sunset_at, "kind", k.kind, k.kind, k.replaced_by))
    for row in JobKindVersion.objects.filter(sunset_at__isnull=False, kind__in=list(current)):
        if row.version < current[row.kind]:
            events.append(
                TimelineEvent(row.sunset_at, "version", f"{row.kind} v{row.version}", row.kind)
            )
    used = {
        ("partitioner", name) for k in kinds for name in k.partitioners if name in PARTITIONERS
    } | {("executor", name) for k in kinds for name in k.executors if name in EXECUTORS}
    for what, name in sorted(used):
        life = component_lifecycle((PARTITIONERS if what == "partitioner" else EXECUTORS)[name])
        if life.sunset_at:
            events.append(TimelineEvent(life.sunset_at, what, name, "", life.replaced_by))
    return sorted(events, key=lambda e: (e.at, e.what, e.name))


def kind_versions(kind: JobKind) -> list[dict[str, Any]]:
    """The versions of `kind`, newest first, with the state a pinned plan would meet."""
    now = timezone.now()
    rows = JobKindVersion.objects.filter(kind=kind.kind).select_related("created_by")
    return [
        {
            "row": row,
            "current": row.version == kind.version,
            "sunset": bool(row.sunset_at and row.sunset_at <= now),
            "steps": len(row.migration or []),
        }
        for row in rows.order_by("-version")
    ]


def component_rows_lifecycle(cls: type | None) -> dict[str, Any]:
    if cls is None:
        return {"deprecated": False, "sunset_at": None, "replaced_by": "", "sunset": False}
    life = component_lifecycle(cls)
    return {
        "deprecated": life.announced,
        "sunset_at": life.sunset_at,
        "replaced_by": life.replaced_by,
        "sunset": life.sunset,
    }

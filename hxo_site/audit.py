"""Audit events: who did what, when, from where, before and after."""

from __future__ import annotations

from typing import Any

from hxo_site.models import AuditEvent


def audit(
    *,
    actor: Any,
    action: str,
    obj: Any = None,
    object_type: str = "",
    object_id: Any = "",
    client_ip: str | None = None,
    before: Any = None,
    after: Any = None,
    detail: Any = None,
) -> AuditEvent:
    if obj is not None:
        object_type = object_type or obj._meta.model_name
        object_id = object_id or obj.pk
    user = actor if getattr(actor, "is_authenticated", False) else None
    return AuditEvent.objects.create(
        actor=user,
        actor_name=user.get_username() if user else (str(actor) if actor else "system"),
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        client_ip=client_ip or None,
        before=before,
        after=after,
        detail=detail,
    )

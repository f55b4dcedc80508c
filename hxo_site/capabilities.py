"""Capabilities (`hxo:<name>`) and roles, and the checks views and the API call.

Capabilities are Django permissions on `blueprints_app.Capability`; roles are groups made by a
migration. Every view and endpoint checks capabilities server-side through `has_capability`.
The permissions keep the registry app's label (`APP_LABEL`, a name, not an import): moving them
would rename every granted permission.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

APP_LABEL = "blueprints_app"

# API name → permission codename.
CAPABILITIES: dict[str, str] = {
    "plan": "plan",
    "submit": "submit",
    "approve": "approve",
    "abort": "abort",
    "replay": "replay",
    "view": "view",
    "audit": "audit",
    "force-merge": "force_merge",
}

ROLES: dict[str, list[str]] = {
    "admiral": list(CAPABILITIES),
    "operator": ["plan", "submit", "abort", "replay", "view"],
    "approver": ["approve", "view", "audit"],
    "viewer": ["view", "audit"],
}


def has_capability(user: AbstractBaseUser | AnonymousUser | Any, capability: str) -> bool:
    if capability not in CAPABILITIES:
        raise KeyError(f"unknown capability {capability!r}")
    if not getattr(user, "is_authenticated", False) or not getattr(user, "is_active", False):
        return False
    return user.has_perm(f"{APP_LABEL}.{CAPABILITIES[capability]}")


def user_capabilities(user: Any) -> list[str]:
    return [f"hxo:{name}" for name in CAPABILITIES if has_capability(user, name)]


def user_role(user: Any) -> str:
    """The role shown in the page header: the first group that is a role, else a summary."""
    if not getattr(user, "is_authenticated", False):
        return "anonymous"
    names = {g.name for g in user.groups.all()}
    for role in ROLES:
        if role in names:
            return role
    if user.is_superuser:
        return "admiral"
    return "no role"


def can_edit_registry(user: Any) -> bool:
    """Registry admins: staff with the JobKind change permission."""
    return bool(
        getattr(user, "is_authenticated", False)
        and user.is_active
        and user.is_staff
        and user.has_perm(f"{APP_LABEL}.change_jobkind")
    )

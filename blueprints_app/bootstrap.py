"""Idempotent loaders for the rows HXO cannot run without: the contract's job kinds, the
capability permissions and the role groups. Migrations call them with the historical app
registry; tests that flush the database call them with the live one."""

from __future__ import annotations

from typing import Any

from blueprints_app.capabilities import CAPABILITIES, ROLES
from blueprints_app.contract import contract_kinds

CAPABILITY_LABELS = {
    "plan": "author and edit plans",
    "submit": "start dry-runs and applies",
    "approve": "approve or reject dry-runs",
    "abort": "abort runs",
    "replay": "replay failed partitions",
    "view": "see plans and runs",
    "audit": "read the audit log",
    "force-merge": "run non-idempotent stages",
}


def _apps(apps: Any) -> Any:
    if apps is None:
        from django.apps import apps as live

        return live
    return apps


def load_contract(apps: Any = None, *, reset: bool = False) -> list[str]:
    """Create the contract's kinds that are missing (or overwrite them with `reset`)."""
    JobKind = _apps(apps).get_model("blueprints_app", "JobKind")
    created = []
    for entry in contract_kinds():
        if reset:
            _, was_created = JobKind.objects.update_or_create(kind=entry["kind"], defaults=entry)
        else:
            _, was_created = JobKind.objects.get_or_create(kind=entry["kind"], defaults=entry)
        if was_created or reset:
            created.append(entry["kind"])
    return created


def create_roles(apps: Any = None) -> None:
    apps = _apps(apps)
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    # Permissions are normally made after migrate; the groups need them now.
    ct, _ = ContentType.objects.get_or_create(app_label="blueprints_app", model="capability")
    perms = {}
    for api_name, codename in CAPABILITIES.items():
        perms[api_name], _ = Permission.objects.get_or_create(
            content_type=ct,
            codename=codename,
            defaults={"name": f"hxo:{api_name} — {CAPABILITY_LABELS[api_name]}"},
        )
    for role, caps in ROLES.items():
        group, _ = Group.objects.get_or_create(name=role)
        group.permissions.add(*(perms[c] for c in caps))
    # Admirals are registry admins: they get the job-kind model permissions too.
    jk_ct, _ = ContentType.objects.get_or_create(app_label="blueprints_app", model="jobkind")
    admiral = Group.objects.get(name="admiral")
    for action in ("add", "change", "delete", "view"):
        perm, _ = Permission.objects.get_or_create(
            content_type=jk_ct,
            codename=f"{action}_jobkind",
            defaults={"name": f"Can {action} job kind"},
        )
        admiral.permissions.add(perm)

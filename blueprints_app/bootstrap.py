"""Idempotent loaders for the rows HXO cannot run without: the contract's job kinds, the
capability permissions and the role groups. Migrations call them with the historical app
registry; tests that flush the database call them with the live one."""

from __future__ import annotations

from typing import Any

from blueprints_app.contract import FINDINGS_ACK_KINDS, contract_kinds
from blueprints_app.models import VERSIONED_FIELDS, contract_snapshot
from hxo_site.capabilities import CAPABILITIES, ROLES

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


def _has_field(model: Any, name: str) -> bool:
    """Whether `model` (possibly a historical model in a migration) has field `name`."""
    return any(f.name == name for f in model._meta.get_fields())


def load_contract(apps: Any = None, *, reset: bool = False) -> list[str]:
    """Create the contract's kinds that are missing (or overwrite them with `reset`), each
    with the history row of its version.

    Like `job_kind_save`, which migrations cannot call: a reset that changes a contract field
    is a new version, and a kind deleted and loaded again continues its numbering. Migration
    0002 runs before the history table exists; 0004 fills it in for what 0002 loaded.
    """
    registry = _apps(apps)
    JobKind = registry.get_model("blueprints_app", "JobKind")
    try:
        History = registry.get_model("blueprints_app", "JobKindVersion")
    except LookupError:
        History = None
    created = []
    for entry in contract_kinds():
        name = entry["kind"]
        row = JobKind.objects.filter(kind=name).first()
        last = History.objects.filter(kind=name).order_by("-version").first() if History else None
        changed: list[str] = []
        if row is None:
            row = JobKind.objects.create(**entry, version=last.version + 1 if last else 1)
            if name in FINDINGS_ACK_KINDS and _has_field(JobKind, "require_findings_ack"):
                # HXO's addition to the contract's policy, as migration 0005 sets it.
                JobKind.objects.filter(pk=row.pk).update(require_findings_ack=True)
            created.append(name)
        elif reset:
            changed = [f for f in VERSIONED_FIELDS if getattr(row, f) != entry[f]]
            if changed and History is not None:
                History.objects.get_or_create(
                    kind=name, version=row.version, defaults={"contract": contract_snapshot(row)}
                )
            if changed:
                row.version = max(row.version, last.version if last else 0) + 1
            for field, value in entry.items():
                setattr(row, field, value)
            row.save()
            created.append(name)
        if History is not None:
            History.objects.get_or_create(
                kind=name,
                version=row.version,
                defaults={"contract": contract_snapshot(row), "changed_fields": changed},
            )
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

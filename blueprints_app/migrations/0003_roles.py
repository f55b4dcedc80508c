"""Create the capability permissions and the default role groups."""

from __future__ import annotations

from django.db import migrations

from blueprints_app.capabilities import CAPABILITIES, ROLES

LABELS = {
    "plan": "author and edit plans",
    "submit": "start dry-runs and applies",
    "approve": "approve or reject dry-runs",
    "abort": "abort runs",
    "replay": "replay failed partitions",
    "view": "see plans and runs",
    "audit": "read the audit log",
    "force-merge": "run non-idempotent stages",
}


def create_roles(apps, schema_editor):
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
            defaults={"name": f"hxo:{api_name} — {LABELS[api_name]}"},
        )
    for role, caps in ROLES.items():
        group, _ = Group.objects.get_or_create(name=role)
        group.permissions.add(*(perms[c] for c in caps))
    # Registry admins edit job kinds: admirals get the model permissions too.
    jk_ct, _ = ContentType.objects.get_or_create(app_label="blueprints_app", model="jobkind")
    for action in ("add", "change", "delete", "view"):
        perm, _ = Permission.objects.get_or_create(
            content_type=jk_ct,
            codename=f"{action}_jobkind",
            defaults={"name": f"Can {action} job kind"},
        )
        Group.objects.get(name="admiral").permissions.add(perm)


def drop_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=list(ROLES)).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("blueprints_app", "0002_load_contract"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(create_roles, drop_roles)]

"""Create the capability permissions and the default role groups."""

from __future__ import annotations

from django.db import migrations

from blueprints_app.bootstrap import create_roles
from hxo_site.capabilities import ROLES


def create(apps, schema_editor):
    create_roles(apps)


def drop_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=list(ROLES)).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("blueprints_app", "0002_load_contract"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(create, drop_roles)]

"""Load the six job kinds of the blueprint contract, exactly as the contract lists them."""

from __future__ import annotations

from django.db import migrations

from blueprints_app.bootstrap import load_contract
from blueprints_app.contract import contract_kinds


def load(apps, schema_editor):
    load_contract(apps)


def unload(apps, schema_editor):
    JobKind = apps.get_model("blueprints_app", "JobKind")
    JobKind.objects.filter(kind__in=[e["kind"] for e in contract_kinds()]).delete()


class Migration(migrations.Migration):
    dependencies = [("blueprints_app", "0001_initial")]
    operations = [migrations.RunPython(load, unload)]

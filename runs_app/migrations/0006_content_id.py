"""Rename the content-addressed identifiers: "CAS" read as both content-addressed id and
compare-and-swap. The columns keep their data; the REST API still calls them `cas_id`."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("runs_app", "0005_auditevent_to_hxo_site"),
    ]

    operations = [
        migrations.RenameField(model_name="partition", old_name="cas_id", new_name="content_id"),
        migrations.RenameField(model_name="runstage", old_name="cas_root", new_name="content_root"),
    ]

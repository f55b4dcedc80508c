"""The audit log in its own app (hxo_site), both apps' plumbing.

The table is new; runs_app's migration 0005 copies the rows of the old runs_app table into it
and drops that one.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="AuditEvent",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("at", models.DateTimeField(auto_now_add=True, db_index=True)),
                ("actor_name", models.CharField(blank=True, default="", max_length=150)),
                ("action", models.CharField(db_index=True, max_length=100)),
                ("object_type", models.CharField(max_length=50)),
                ("object_id", models.CharField(max_length=64)),
                ("client_ip", models.GenericIPAddressField(blank=True, null=True)),
                ("before", models.JSONField(blank=True, null=True)),
                ("after", models.JSONField(blank=True, null=True)),
                ("detail", models.JSONField(blank=True, null=True)),
                (
                    "actor",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ["-at", "-id"],
                "indexes": [
                    models.Index(
                        fields=["object_type", "object_id"], name="hxo_site_au_object__f31117_idx"
                    )
                ],
            },
        ),
    ]

"""One approval, one apply; one replay per run (issue 11 §4).

`Run.consumed_dry_run` names the dry-run whose approval an apply used, unique: concurrent
applies of one approval meet at this index and exactly one is stored. `Run.parent` becomes
unique: a run has at most one replay, and a replay that failed again is itself replayed.
Databases that already hold several replays of one run get them chained (each extra replay
becomes the replay of the newest run of the first chain), so the lineage is kept.
"""

import django.db.models.deletion
from django.db import migrations, models
from django.db.models import Count


def chain_extra_replays(apps, schema_editor):
    Run = apps.get_model("runs_app", "Run")
    while True:
        row = (
            Run.objects.filter(parent__isnull=False)
            .values("parent")
            .annotate(n=Count("id"))
            .filter(n__gt=1)
            .order_by("parent")
            .first()
        )
        if row is None:
            return
        children = list(Run.objects.filter(parent_id=row["parent"]).order_by("id"))
        extra, leaf = children[-1], children[0]
        while (following := Run.objects.filter(parent=leaf).order_by("id").first()) is not None:
            leaf = following
        extra.parent = leaf
        extra.save(update_fields=["parent"])


class Migration(migrations.Migration):
    dependencies = [
        ("runs_app", "0002_search_indexes"),
    ]

    operations = [
        migrations.AddField(
            model_name="run",
            name="consumed_dry_run",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="consumed_by",
                to="runs_app.run",
            ),
        ),
        migrations.AddConstraint(
            model_name="run",
            constraint=models.UniqueConstraint(
                condition=models.Q(("consumed_dry_run__isnull", False)),
                fields=("consumed_dry_run",),
                name="run_one_apply_per_approval",
            ),
        ),
        migrations.RunPython(chain_extra_replays, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="run",
            constraint=models.UniqueConstraint(
                condition=models.Q(("parent__isnull", False)),
                fields=("parent",),
                name="run_one_replay_per_run",
            ),
        ),
    ]

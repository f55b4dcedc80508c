"""Drop the partition table's redundant single-column indexes.

`run_id` and `stage_id` lead composite indexes (partition_claim, partition_filter;
partition_unique_index, partition_wave) that serve every lookup by either alone, and
`content_id`'s db_index also built, on PostgreSQL, a `varchar_pattern_ops` twin for LIKE
that nothing queries. Every non-HOT update (each claim and completion changes the indexed
`state`) writes an entry into every index, so these cost every partition's claim and
completion as well as its insert (bench/profiles/planning.md).

The fields change in Django's state only; the database drops just those indexes, found by
introspection. Letting AlterField do it would rebuild the whole partition table three times
on SQLite (a table remake per altered field).
"""

import django.db.models.deletion
from django.db import migrations, models

TABLE = "runs_app_partition"


def drop_single_column_indexes(apps, schema_editor) -> None:
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, TABLE)
    for name, info in constraints.items():
        if (
            info["index"]
            and not info["unique"]
            and not info["primary_key"]
            and info["columns"] in (["run_id"], ["stage_id"], ["content_id"])
        ):
            schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(name)}")


def create_single_column_indexes(apps, schema_editor) -> None:
    for column in ("run_id", "stage_id", "content_id"):
        name = schema_editor.quote_name(f"{TABLE}_{column}_single")
        table = schema_editor.quote_name(TABLE)
        schema_editor.execute(f"CREATE INDEX {name} ON {table} ({column})")


class Migration(migrations.Migration):
    dependencies = [
        ("runs_app", "0016_runstage_health_wait"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="partition",
                    name="content_id",
                    field=models.CharField(max_length=64),
                ),
                migrations.AlterField(
                    model_name="partition",
                    name="run",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="partitions",
                        to="runs_app.run",
                    ),
                ),
                migrations.AlterField(
                    model_name="partition",
                    name="stage",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="partitions",
                        to="runs_app.runstage",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunPython(drop_single_column_indexes, create_single_column_indexes),
            ],
        ),
        migrations.AddIndex(
            model_name="partition",
            index=models.Index(fields=["content_id"], name="partition_content_id"),
        ),
    ]

"""Drop the partition table's redundant single-column indexes.

`run_id` and `stage_id` lead composite indexes (partition_claim, partition_filter;
partition_unique_index, partition_wave) that serve every lookup by either alone, and
`content_id`'s db_index also built, on PostgreSQL, a `varchar_pattern_ops` twin for LIKE
that nothing queries. Every non-HOT update (each claim and completion changes the indexed
`state`) writes an entry into every index, so these cost every partition's claim and
completion as well as its insert (bench/profiles/planning.md).

The fields change in Django's state only; the database drops just those indexes, found by
introspection, and renames content_id's plain index to the new name. Letting AlterField
and AddIndex do it would rebuild the whole partition table three times on SQLite (a table
remake per altered field) and, on PostgreSQL, rebuild the content_id index while holding
the table's exclusive lock.
"""

import django.db.models.deletion
from django.db import migrations, models

TABLE = "runs_app_partition"


INDEX = "partition_content_id"


def drop_single_column_indexes(apps, schema_editor) -> None:
    """Drop the run_id and stage_id indexes and content_id's LIKE twin; keep content_id's
    plain index under its new name. On PostgreSQL that is a rename (a catalog change), not
    a drop and a rebuild: a DROP INDEX holds the table's exclusive lock until the
    migration commits, so rebuilding would stop every claim and page for the whole build."""
    connection = schema_editor.connection
    quote = schema_editor.quote_name
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, TABLE)
    kept = False
    for name, info in constraints.items():
        if not info["index"] or info["unique"] or info["primary_key"]:
            continue
        if info["columns"] in (["run_id"], ["stage_id"]) or (
            info["columns"] == ["content_id"] and (kept or name.endswith("_like"))
        ):
            schema_editor.execute(f"DROP INDEX IF EXISTS {quote(name)}")
        elif info["columns"] == ["content_id"] and connection.vendor == "postgresql":
            schema_editor.execute(f"ALTER INDEX {quote(name)} RENAME TO {quote(INDEX)}")
            kept = True
        elif info["columns"] == ["content_id"]:  # SQLite has no ALTER INDEX: built below
            schema_editor.execute(f"DROP INDEX IF EXISTS {quote(name)}")
    if not kept:
        schema_editor.execute(f"CREATE INDEX {quote(INDEX)} ON {quote(TABLE)} (content_id)")


def create_single_column_indexes(apps, schema_editor) -> None:
    quote = schema_editor.quote_name
    schema_editor.execute(f"DROP INDEX IF EXISTS {quote(INDEX)}")
    for column in ("run_id", "stage_id", "content_id"):
        name = quote(f"{TABLE}_{column}_single")
        schema_editor.execute(f"CREATE INDEX {name} ON {quote(TABLE)} ({column})")


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
                migrations.AddIndex(
                    model_name="partition",
                    index=models.Index(fields=["content_id"], name=INDEX),
                ),
            ],
            database_operations=[
                migrations.RunPython(drop_single_column_indexes, create_single_column_indexes),
            ],
        ),
    ]

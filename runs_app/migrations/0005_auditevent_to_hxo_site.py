"""The audit log moves to hxo_site: its rows are copied, ids kept, and runs_app's model dropped.

hxo_site's 0001 made the new table. The copy is one INSERT ... SELECT (an audit log can be
long), after which PostgreSQL's id sequence of the new table is moved past the copied ids, or
the next event would collide with a copied one. Backwards, the rows go back the same way and
the new table is emptied, so migrating forward again copies them once.
"""

from __future__ import annotations

from typing import Any

from django.core.management.color import no_style
from django.db import migrations


def _move(apps: Any, schema_editor: Any, *, source: str, target: str) -> None:
    old = apps.get_model(source, "AuditEvent")
    new = apps.get_model(target, "AuditEvent")
    connection = schema_editor.connection
    quote = schema_editor.quote_name
    columns = ", ".join(quote(f.column) for f in new._meta.concrete_fields)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {quote(new._meta.db_table)} ({columns}) "
            f"SELECT {columns} FROM {quote(old._meta.db_table)}"
        )
        cursor.execute(f"DELETE FROM {quote(old._meta.db_table)}")
        for sql in connection.ops.sequence_reset_sql(no_style(), [new]):
            cursor.execute(sql)


def forwards(apps: Any, schema_editor: Any) -> None:
    _move(apps, schema_editor, source="runs_app", target="hxo_site")


def backwards(apps: Any, schema_editor: Any) -> None:
    _move(apps, schema_editor, source="hxo_site", target="runs_app")


class Migration(migrations.Migration):
    dependencies = [
        ("runs_app", "0004_input_idempotency_fingerprint"),
        ("hxo_site", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(forwards, backwards),
        migrations.DeleteModel(name="AuditEvent"),
    ]

"""PostgreSQL docs search finds a word inside dotted and slashed names.

PostgreSQL's default text-search parser reads `deploy.pack`, `django.db.models`, `docs/api`
or `user@host` as one token (a host, a file, an email), so "deploy" did not find a page that
only says `deploy.pack`, where SQLite's unicode61 tokenizer splits at the dot. `hxo_unaccent`,
applied to the indexed text and to every query alike, now also turns `.`, `/`, `\\`, `:` and
`@` into spaces (other characters are left to the parser: combining marks must stay inside
words), and the expression index is rebuilt. SQLite is unchanged.
"""

from __future__ import annotations

from django.db import migrations

SEPARATORS = "./\\:@"
SPACES = " " * len(SEPARATORS)


def _body(schema_editor, *, split: bool) -> str:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
            "ON n.oid = e.extnamespace WHERE e.extname = 'unaccent'"
        )
        row = cursor.fetchone()
    folded = f"{row[0]}.unaccent('{row[0]}.unaccent'::regdictionary, $1)" if row else "$1"
    # Final sigma as sigma (as in 0008), then the separators as spaces.
    text = f"translate({folded}, '\u03c2', '\u03c3')"
    if split:
        text = f"translate({text}, $sep${SEPARATORS}$sep$, '{SPACES}')"
    return f"SELECT {text}"


def _replace(schema_editor, *, split: bool) -> None:
    schema_editor.execute(
        "CREATE OR REPLACE FUNCTION hxo_unaccent(text) RETURNS text "
        f"LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ {_body(schema_editor, split=split)} $$"
    )
    # The index holds values of the old function: rebuild it.
    schema_editor.execute("REINDEX INDEX runs_app_docpage_search")


def forward(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        _replace(schema_editor, split=True)


def reverse(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        _replace(schema_editor, split=False)


class Migration(migrations.Migration):
    dependencies = [
        ("runs_app", "0013_run_pause_and_throttle"),
    ]

    operations = [migrations.RunPython(forward, reverse)]

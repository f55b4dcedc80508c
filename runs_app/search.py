"""Searching the indexes that assets.index and docs.index write.

Documentation pages use the database's full-text search: SQLite FTS5 with BM25 ranking (title
weighted over headings over body), or PostgreSQL `websearch_to_tsquery` against the GIN
expression index of migration 0002, ranked by `ts_rank_cd`. Without either, a LIKE scan keeps
search working, unranked but correct. Assets are searched by name and path substrings (a
"logo" query should find `brand-logo@2x.png`), ranked by where the words match.

Hits carry a `snippet` (plain text) and a `snippet_html` (the same text HTML-escaped, with
matches in `<mark>`), so a page can show highlights without trusting indexed content.
"""

from __future__ import annotations

import html
import re
from typing import Any

from django.db import connection
from django.db.models import Q, QuerySet

from runs_app.models import AssetIndexEntry, DocPage

QUERY_REQUIRED = "query_required"
QUERY_TOO_LONG = "query_too_long"
MAX_QUERY_LENGTH = 200
MAX_HITS = 200

FTS_TABLE = "runs_app_docpage_fts"
# Must stay identical to the indexed expression in migration 0002, or PostgreSQL won't use it.
PG_DOCUMENT = (
    "setweight(to_tsvector('english'::regconfig, title), 'A') || "
    "setweight(to_tsvector('english'::regconfig, headings), 'B') || "
    "setweight(to_tsvector('english'::regconfig, body), 'D')"
)
# Private-use characters mark matches inside the database; they can't occur in indexed text
# that came from our extractor's output, and are turned into <mark> after escaping.
_START, _STOP = "\ue000", "\ue001"
_WORD = re.compile(r"\w+", re.UNICODE)


class SearchError(ValueError):
    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


def clean_query(q: Any) -> str:
    if not isinstance(q, str) or not q.strip():
        raise SearchError("a search needs a query: ?q=words", code=QUERY_REQUIRED)
    q = q.strip()
    if len(q) > MAX_QUERY_LENGTH:
        raise SearchError(
            f"the query is longer than {MAX_QUERY_LENGTH} characters", code=QUERY_TOO_LONG
        )
    return q


def _snippets(marked: str) -> dict[str, str]:
    plain = marked.replace(_START, "").replace(_STOP, "")
    escaped = html.escape(marked).replace(_START, "<mark>").replace(_STOP, "</mark>")
    return {"snippet": plain, "snippet_html": escaped}


def _mark_words(text: str, words: list[str], *, width: int = 0) -> str:
    """`text` with each occurrence of `words` (case-insensitive) between the markers;
    with `width`, cut to about that many characters around the first match."""
    if not words:
        return text[:width] if width else text
    pattern = re.compile("|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)), re.I)
    if width:
        first = pattern.search(text)
        start = max(0, (first.start() if first else 0) - width // 3)
        cut = text[start : start + width]
        text = ("…" if start else "") + cut + ("…" if start + width < len(text) else "")
    return pattern.sub(lambda m: f"{_START}{m.group(0)}{_STOP}", text)


def _fts5_available() -> bool:
    if connection.vendor != "sqlite":
        return False
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = %s", [FTS_TABLE]
        )
        return cursor.fetchone() is not None


def _fts5_query(q: str) -> str:
    """User words as an FTS5 query: each word quoted (no operator injection, no syntax
    errors); a query in double quotes is a phrase, otherwise all words must match."""
    words = _WORD.findall(q)
    if not words:
        return ""
    if len(q) > 1 and q.startswith('"') and q.endswith('"'):
        return '"' + " ".join(words) + '"'
    return " AND ".join(f'"{w}"' for w in words)


def search_docs(q: str, limit: int = 20, *, workspace: str | None = None) -> list[dict[str, Any]]:
    """Documentation pages matching `q`, best first, each with a highlighted snippet."""
    q = clean_query(q)
    limit = max(1, min(int(limit), MAX_HITS))
    if connection.vendor == "postgresql":
        rows = _docs_postgresql(q, limit, workspace)
    elif _fts5_available():
        rows = _docs_sqlite(q, limit, workspace)
    else:
        rows = _docs_fallback(q, limit, workspace)
    hits = []
    for row in rows:
        hits.append(
            {
                "workspace": row["workspace"],
                "route": row["route"],
                "path": row["path"],
                "title": row["title"],
                "score": round(float(row["score"]), 6),
                **_snippets(row["snippet"]),
            }
        )
    return hits


def count_docs(q: str, *, workspace: str | None = None) -> int:
    """How many documentation pages match `q` (the same match as search_docs, without its
    MAX_HITS cap): one COUNT over the full-text index, no ranking and no snippets."""
    q = clean_query(q)
    if connection.vendor == "postgresql":
        where = "" if workspace is None else " AND d.workspace = %s"
        sql = (
            "SELECT count(*) FROM runs_app_docpage d "
            f"WHERE ({PG_DOCUMENT}) @@ websearch_to_tsquery('english', %s){where}"
        )
        return _count(sql, [q] + ([] if workspace is None else [workspace]))
    if _fts5_available():
        match = _fts5_query(q)
        if not match:
            return 0
        if workspace is None:
            return _count(f"SELECT count(*) FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH %s", [match])
        return _count(
            f"SELECT count(*) FROM {FTS_TABLE} JOIN runs_app_docpage w "
            f"ON w.id = {FTS_TABLE}.rowid WHERE {FTS_TABLE} MATCH %s AND w.workspace = %s",
            [match, workspace],
        )
    words = _WORD.findall(q)
    return _docs_fallback_pages(words, workspace).count() if words else 0


def count_assets(q: str, *, workspace: str | None = None) -> int:
    """How many indexed assets match `q` (the same match as search_assets, uncapped)."""
    return _asset_entries(clean_query(q), workspace).count()


def _count(sql: str, params: list[Any]) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.fetchone()[0])


def _fetch(sql: str, params: list[Any]) -> list[dict[str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _docs_sqlite(q: str, limit: int, workspace: str | None) -> list[dict[str, Any]]:
    match = _fts5_query(q)
    if not match:
        return []
    # Rank in a subquery that touches only the FTS index, then join and build snippets for
    # the few rows kept: SQLite evaluates result columns before sorting, so a snippet in the
    # ranking query would be made for every matching page (all 10,000 for a common word).
    # `rank` is bm25 weighted title 10, headings 4, body 1 (set in migration 0002); lower is
    # better.
    if workspace is None:
        ranked = (
            f"SELECT rowid AS id, rank FROM {FTS_TABLE} "
            f"WHERE {FTS_TABLE} MATCH %s ORDER BY rank LIMIT %s"
        )
        params: list[Any] = [match, limit]
    else:
        ranked = (
            f"SELECT {FTS_TABLE}.rowid AS id, {FTS_TABLE}.rank AS rank "
            f"FROM {FTS_TABLE} JOIN runs_app_docpage w ON w.id = {FTS_TABLE}.rowid "
            f"WHERE {FTS_TABLE} MATCH %s AND w.workspace = %s ORDER BY rank LIMIT %s"
        )
        params = [match, workspace, limit]
    top = _fetch(ranked, params)
    if not top:
        return []
    rows = {
        r["id"]: r
        for r in _fetch(
            "SELECT id, workspace, route, path, title FROM runs_app_docpage WHERE id IN ("
            + ", ".join(["%s"] * len(top))
            + ")",
            [r["id"] for r in top],
        )
    }
    hits = []
    with connection.cursor() as cursor:
        for r in top:
            # A rowid equality lets FTS5 seek to the one row instead of walking every match.
            cursor.execute(
                f"SELECT snippet({FTS_TABLE}, 2, '{_START}', '{_STOP}', '…', 24) "
                f"FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH %s AND rowid = %s",
                [match, r["id"]],
            )
            found = cursor.fetchone()
            page = rows[r["id"]]
            hits.append({**page, "score": -r["rank"], "snippet": found[0] if found else ""})
    hits.sort(key=lambda h: (-h["score"], h["route"]))
    return hits


def _docs_postgresql(q: str, limit: int, workspace: str | None) -> list[dict[str, Any]]:
    where = "" if workspace is None else " AND d.workspace = %s"
    params: list[Any] = [q] + ([] if workspace is None else [workspace]) + [limit]
    options = f"StartSel={_START}, StopSel={_STOP}, MaxWords=35, MinWords=15, MaxFragments=1"
    return _fetch(
        f"""
        WITH query AS (SELECT websearch_to_tsquery('english', %s) AS tsq)
        SELECT d.workspace, d.route, d.path, d.title,
               ts_rank_cd({PG_DOCUMENT}, query.tsq) AS score,
               ts_headline('english', d.body, query.tsq, '{options}') AS snippet
        FROM runs_app_docpage d, query
        WHERE ({PG_DOCUMENT}) @@ query.tsq{where}
        ORDER BY score DESC, d.route
        LIMIT %s
        """,
        params,
    )


def _docs_fallback(q: str, limit: int, workspace: str | None) -> list[dict[str, Any]]:
    words = _WORD.findall(q)
    if not words:
        return []
    rows = []
    for page in _docs_fallback_pages(words, workspace)[: MAX_HITS * 5]:
        score = sum(
            10 * page.title.lower().count(w.lower())
            + 4 * page.headings.lower().count(w.lower())
            + page.body.lower().count(w.lower())
            for w in words
        )
        rows.append(
            {
                "workspace": page.workspace,
                "route": page.route,
                "path": page.path,
                "title": page.title,
                "score": score,
                "snippet": _mark_words(page.body, words, width=200),
            }
        )
    rows.sort(key=lambda r: (-r["score"], r["route"]))
    return rows[:limit]


def _docs_fallback_pages(words: list[str], workspace: str | None) -> QuerySet[DocPage]:
    qs = DocPage.objects.all() if workspace is None else DocPage.objects.filter(workspace=workspace)
    for w in words:
        qs = qs.filter(Q(title__icontains=w) | Q(headings__icontains=w) | Q(body__icontains=w))
    return qs


def _asset_entries(q: str, workspace: str | None) -> QuerySet[AssetIndexEntry]:
    qs = AssetIndexEntry.objects.all()
    if workspace is not None:
        qs = qs.filter(workspace=workspace)
    for w in (w.lower() for w in re.findall(r"[^\s]+", q)):
        qs = qs.filter(Q(path__icontains=w) | Q(media_type__icontains=w) | Q(bucket__iexact=w))
    return qs


def search_assets(q: str, limit: int = 20, *, workspace: str | None = None) -> list[dict[str, Any]]:
    """Indexed assets whose path, media type or bucket contains every word of `q`."""
    q = clean_query(q)
    limit = max(1, min(int(limit), MAX_HITS))
    words = [w.lower() for w in re.findall(r"[^\s]+", q)]
    qs = _asset_entries(q, workspace)
    hits = []
    for entry in qs.order_by("name", "path")[: MAX_HITS * 5]:
        name = entry.name.lower()
        score = 0.0
        for w in words:
            if name.rsplit(".", 1)[0] == w:
                score += 8  # the whole name (without suffix)
            elif name.startswith(w):
                score += 5
            elif w in name:
                score += 3
            elif w in entry.path.lower():
                score += 1
            else:
                score += 0.5  # matched the media type or bucket only
        hits.append(
            {
                "workspace": entry.workspace,
                "path": entry.path,
                "name": entry.name,
                "bucket": entry.bucket,
                "media_type": entry.media_type,
                "size": entry.size,
                "sha256": entry.sha256,
                "width": entry.width,
                "height": entry.height,
                "score": score,
                **_snippets(_mark_words(entry.path, words)),
            }
        )
    hits.sort(key=lambda h: (-h["score"], len(h["path"]), h["path"]))
    return hits[:limit]

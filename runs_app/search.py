"""Searching the indexes that assets.index and docs.index write.

Documentation pages use the database's full-text search, in every script:

- SQLite: an FTS5 index (migration 0007) whose tokenizer folds Latin accents
  (`unicode61 remove_diacritics 2`), keeps combining marks inside words (a Devanagari word is
  one token) and stems English (`porter`); its triggers fold Greek and Cyrillic accents
  (`fold`, the same table here for queries). BM25 ranks title over headings over body.
- PostgreSQL: the GIN expression index over `to_tsvector('simple', hxo_unaccent(...))`,
  queried with `plainto_tsquery`/`phraseto_tsquery('simple', ...)` and ranked by `ts_rank_cd` (whole
  words: no stemming, so every language matches alike).
- Scripts written without spaces (CJK, Thai, Lao, Khmer, Myanmar) are one "word" per
  sentence to both tokenizers, so their text is also kept apart (`DocPage.spaceless`) and
  matched as a substring: a trigram index (SQLite FTS5 `trigram`, PostgreSQL `pg_trgm`) for
  runs of 3 characters or more; a run of 1 or 2 characters (`東京`) is a `LIKE` over that column
  alone (usually small), bounded by the time limit like every query.
- Without FTS5, a LIKE scan keeps search working, unranked but correct.

Every query runs under a time limit (`HXO_SEARCH_TIMEOUT_MS`: an sqlite3 progress handler,
PostgreSQL `SET LOCAL statement_timeout`); past it, SearchError `search_timeout`. Snippets are
computed here, in Python, over at most SNIPPET_WINDOW characters of the stored text (SQLite's
`snippet()` and PostgreSQL's `ts_headline` grow with the page and the matches, and SQLite's
ignores interrupts). Assets are searched by name and path substrings (a "logo" query should
find `brand-logo@2x.png`), ranked by where the words match.

Hits carry a `snippet` (plain text) and a `snippet_html` (the same text HTML-escaped, with
matches in `<mark>`), so a page can show highlights without trusting indexed content.
"""

from __future__ import annotations

import html
import re
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Q, QuerySet

from runs_app.models import AssetIndexEntry, DocPage

QUERY_REQUIRED = "query_required"
QUERY_TOO_LONG = "query_too_long"
SEARCH_TIMEOUT = "search_timeout"
MAX_QUERY_LENGTH = 200
MAX_HITS = 200
# Characters of a page's stored text that a snippet looks at (its start): the work per hit
# does not grow with the page.
SNIPPET_WINDOW = 100_000
SNIPPET_WIDTH = 200
# sqlite3 calls the progress handler every this many virtual-machine instructions.
PROGRESS_STEPS = 1_000

FTS_TABLE = "runs_app_docpage_fts"
SPACELESS_TABLE = "runs_app_docpage_spaceless"
# Must stay identical to the indexed expression in migration 0007, or PostgreSQL won't use it.
PG_DOCUMENT = (
    "setweight(to_tsvector('simple'::regconfig, hxo_unaccent(title)), 'A') || "
    "setweight(to_tsvector('simple'::regconfig, hxo_unaccent(headings)), 'B') || "
    "setweight(to_tsvector('simple'::regconfig, hxo_unaccent(body)), 'D')"
)
# Scripts written without spaces between words: Thai, Lao, Myanmar, Khmer, the Japanese
# iteration marks, kana, CJK ideographs (and their extensions and compatibility forms),
# half-width katakana. Hangul is written with spaces and stays with the word index.
SPACELESS_CLASS = (
    "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3005-\u3007\u3040-\u30ff\u31f0-\u31ff"
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0002fa1f"
)
_SPACELESS_RUN = re.compile(f"[{SPACELESS_CLASS}]+")
# Private-use characters mark matches; they can't occur in indexed text that came from our
# extractor's output, and are turned into <mark> after escaping.
_START, _STOP = "\ue000", "\ue001"
_WORD = re.compile(r"\w+", re.UNICODE)


# The Cyrillic letters folded: ё and the grave-accented Ѐ, Ѝ. Other Cyrillic marks make
# letters of their own (й, ї, ѓ) and are kept, as PostgreSQL's unaccent keeps й.
_CYRILLIC_FOLDED = "ЀЁЍѐёѝ"


def _fold_table() -> dict[int, str]:
    """Accented letter → its base letter, one character each (so folding keeps offsets), as
    NFD decomposes them: Latin (U+0080-U+024F, U+1E00-U+1EFF), Greek letters (U+0386-U+03CE:
    tonos, dialytika; final sigma as sigma) and the Cyrillic letters of _CYRILLIC_FOLDED."""
    table: dict[int, str] = {}
    for c in [*range(0x80, 0x250), *range(0x1E00, 0x1F00), *range(0x386, 0x3CF)]:
        if unicodedata.category(chr(c))[0] != "L":
            continue
        parts = unicodedata.normalize("NFD", chr(c))
        base = "".join(p for p in parts if not 0x300 <= ord(p) <= 0x36F)
        if len(parts) > 1 and len(base) == 1:
            table[c] = base
    for ch in _CYRILLIC_FOLDED:
        table[ord(ch)] = unicodedata.normalize("NFD", ch)[0]
    # Final sigma is sigma: "ΑΛΗΘΕΙΑΣ" lower-cases to a medial sigma, the text ends in a final.
    table[0x3C2] = "\u03c3"
    return table


_FOLD = _fold_table()


def fold(text: str) -> str:
    """`text` with accents folded (`Развёртывание` → `Развертывание`, `ώρα` → `ωρα`,
    `café` → `cafe`); same length, character for character."""
    return text.translate(_FOLD)


def greek_cyrillic_folds() -> list[tuple[str, str]]:
    """The Greek and Cyrillic pairs of `fold` but final sigma, in code point order: the pairs
    migration 0007's SQLite triggers fold with replace()."""
    # Not final sigma: SQLite's unicode61 already folds it, and the triggers' replace() chain
    # is near the depth SQLite's parser allows.
    return [(chr(c), b) for c, b in sorted(_FOLD.items()) if 0x370 <= c < 0x500 and c != 0x3C2]


def spaceless(*texts: str) -> str:
    """The runs of `texts` in scripts written without spaces, a space between runs and a line
    per text; "" for text without any (the DocPage.spaceless column)."""
    return "\n".join(" ".join(_SPACELESS_RUN.findall(t)) for t in texts).strip()


def terms(q: str) -> list[str]:
    """The words of `q`: runs of letters, digits and combining marks (a Devanagari vowel sign
    is part of its word, as the index's tokenizer keeps it), everything else a separator."""
    out: list[str] = []
    current: list[str] = []
    for ch in q:
        if unicodedata.category(ch)[0] in "LNM" or unicodedata.category(ch) == "Co":
            current.append(ch)
        elif current:
            out.append("".join(current))
            current = []
    if current:
        out.append("".join(current))
    return out


class SearchError(ValueError):
    """A search that cannot be answered; `code` says why (QUERY_REQUIRED, QUERY_TOO_LONG,
    SEARCH_TIMEOUT)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


def clean_query(q: Any) -> str:
    """`q` stripped; SearchError QUERY_REQUIRED when it is not a non-blank string,
    QUERY_TOO_LONG past MAX_QUERY_LENGTH characters."""
    if not isinstance(q, str) or not q.strip():
        raise SearchError("a search needs a query: ?q=words", code=QUERY_REQUIRED)
    q = q.strip()
    if len(q) > MAX_QUERY_LENGTH:
        raise SearchError(
            f"the query is longer than {MAX_QUERY_LENGTH} characters", code=QUERY_TOO_LONG
        )
    return q


@dataclass
class ParsedQuery:
    """A docs query split for the indexes: `words` for the word index (folded), `runs` of
    scripts without spaces for the substring index, `phrase` when `q` was in double quotes."""

    words: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    phrase: bool = False

    @property
    def empty(self) -> bool:
        return not self.words and not self.runs

    @property
    def needles(self) -> list[str]:
        """What a snippet marks: every word and run, lower case."""
        return [t.lower() for t in self.words + self.runs]


def parse_query(q: str) -> ParsedQuery:
    """Split a cleaned query. A word holding text of a script without spaces contributes its
    runs of that script only (the word index keeps `Python入門` as one token, so its Latin part
    alone would not match)."""
    parsed = ParsedQuery(phrase=len(q) > 1 and q.startswith('"') and q.endswith('"'))
    for term in terms(fold(q)):
        runs = _SPACELESS_RUN.findall(term)
        if runs:
            parsed.runs.extend(r for r in runs if r not in parsed.runs)
        else:
            parsed.words.append(term)
    return parsed


def _snippets(marked: str) -> dict[str, str]:
    plain = marked.replace(_START, "").replace(_STOP, "")
    escaped = html.escape(marked).replace(_START, "<mark>").replace(_STOP, "</mark>")
    return {"snippet": plain, "snippet_html": escaped}


def _mark_words(
    text: str, words: list[str], *, width: int = 0, anchor: re.Pattern[str] | None = None
) -> str:
    """`text` with each occurrence of `words` (case- and accent-insensitive) between the
    markers; with `width`, cut to about that many characters around the first match of
    `anchor` (folded, lower case), else of the longest word (the most specific), else of any.

    Matching runs on `fold(text).lower()`, which has the same length as `text` for all but a
    few letters (İ): when lengths differ, matching falls back to `text.lower()`."""
    if not words:
        return text[:width] + ("…" if width and len(text) > width else "") if width else text
    needles = sorted({fold(w).lower() for w in words if w}, key=len, reverse=True)
    # A word matches at a word's start (its stem: "ledger" marks "ledgers", "or" does not mark
    # "vectors"); a run of a script without spaces matches anywhere.
    pattern = re.compile("|".join(_needle(w) for w in needles))
    haystack = fold(text).lower()
    if len(haystack) != len(text):
        haystack = text.lower() if len(text.lower()) == len(text) else text
    prefix = suffix = ""
    if width:
        first = (anchor.search(haystack) if anchor else None) or re.search(
            _needle(needles[0]), haystack
        )
        first = first or pattern.search(haystack)
        start = max(0, (first.start() if first else 0) - width // 3)
        prefix = "…" if start else ""
        suffix = "…" if start + width < len(text) else ""
        text, haystack = text[start : start + width], haystack[start : start + width]
    out, last = [], 0
    for m in pattern.finditer(haystack):
        out.append(text[last : m.start()])
        out.append(f"{_START}{text[m.start() : m.end()]}{_STOP}")
        last = m.end()
    out.append(text[last:])
    return prefix + "".join(out) + suffix


def _needle(word: str) -> str:
    return re.escape(word) if _SPACELESS_RUN.search(word) else r"(?<!\w)" + re.escape(word)


def snippet(body: str, parsed: ParsedQuery) -> str:
    """A marked snippet of about SNIPPET_WIDTH characters around the first match in the first
    SNIPPET_WINDOW characters of `body` (the page's start when none matches there)."""
    window = body[:SNIPPET_WINDOW]
    anchor = None
    if parsed.phrase and len(parsed.words) > 1:
        anchor = re.compile(r"\W+".join(re.escape(w.lower()) for w in parsed.words))
    marked = _mark_words(window, parsed.needles, width=SNIPPET_WIDTH, anchor=anchor)
    if len(body) > SNIPPET_WINDOW and not marked.endswith("…"):
        marked += "…"
    return marked


# --- The time limit -----------------------------------------------------------------------


def _timeout_ms() -> int:
    return int(getattr(settings, "HXO_SEARCH_TIMEOUT_MS", 2_000))


def _timed_out() -> SearchError:
    return SearchError(
        f"the search took longer than {_timeout_ms()} ms and was stopped; try more specific words",
        code=SEARCH_TIMEOUT,
    )


@contextmanager
def bounded() -> Iterator[None]:
    """Every query inside runs under HXO_SEARCH_TIMEOUT_MS, in total on SQLite (a progress
    handler interrupts the statement: SQLite checks it every PROGRESS_STEPS instructions, so
    even a statement scanning a huge page stops), per statement on PostgreSQL
    (`SET LOCAL statement_timeout` in a transaction, restored after). Raises SearchError
    SEARCH_TIMEOUT past it."""
    limit = _timeout_ms()
    if connection.vendor == "sqlite":
        connection.ensure_connection()
        raw = connection.connection
        deadline = time.monotonic() + limit / 1000
        raw.set_progress_handler(lambda: int(time.monotonic() > deadline), PROGRESS_STEPS)
        try:
            yield
        except DatabaseError as exc:
            if "interrupted" in str(exc):
                raise _timed_out() from None
            raise
        finally:
            raw.set_progress_handler(None, PROGRESS_STEPS)
        return
    if connection.vendor != "postgresql":
        yield
        return
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SELECT current_setting('statement_timeout')")
                before = cursor.fetchone()[0]
                cursor.execute(f"SET LOCAL statement_timeout = {max(1, limit)}")
            yield
            with connection.cursor() as cursor:
                # SET LOCAL lasts until the outermost transaction ends: put it back for
                # whatever else runs in it (a test's transaction, an outer atomic block).
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", [before])
    except DatabaseError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == "57014":  # query_canceled
            raise _timed_out() from None
        raise


# --- Documentation pages ------------------------------------------------------------------


def _fts5_available() -> bool:
    if connection.vendor != "sqlite":
        return False
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = %s", [FTS_TABLE]
        )
        return cursor.fetchone() is not None


def _fts5_query(parsed: ParsedQuery) -> str:
    """The words as an FTS5 query: each word quoted (no operator injection, no syntax errors);
    a phrase in double quotes stays a phrase, otherwise all words must match."""
    if not parsed.words:
        return ""
    if parsed.phrase:
        return '"' + " ".join(parsed.words) + '"'
    return " AND ".join(f'"{w}"' for w in parsed.words)


def search_docs(q: str, limit: int = 20, *, workspace: str | None = None) -> list[dict[str, Any]]:
    """Documentation pages matching `q`, best first (at most `limit`, at most MAX_HITS), each
    {"workspace", "route", "path", "title", "score", "snippet", "snippet_html"}.

    Raises SearchError for an empty or overlong query, and SEARCH_TIMEOUT past
    HXO_SEARCH_TIMEOUT_MS."""
    q = clean_query(q)
    parsed = parse_query(q)
    limit = max(1, min(int(limit), MAX_HITS))
    if parsed.empty:
        return []
    with bounded():
        if connection.vendor == "postgresql":
            rows = _docs_postgresql(parsed, limit, workspace)
        elif _fts5_available():
            rows = _docs_sqlite(parsed, limit, workspace)
        else:
            rows = _docs_fallback(parsed, limit, workspace)
    return [
        {
            "workspace": row["workspace"],
            "route": row["route"],
            "path": row["path"],
            "title": row["title"],
            "score": round(float(row["score"]), 6),
            **_snippets(snippet(row["body"], parsed)),
        }
        for row in rows
    ]


def count_docs(q: str, *, workspace: str | None = None) -> int:
    """How many documentation pages match `q` (the same match as search_docs, without its
    MAX_HITS cap): one COUNT over the indexes, no ranking and no snippets. Raises as
    search_docs does."""
    parsed = parse_query(clean_query(q))
    if parsed.empty:
        return 0
    with bounded():
        if connection.vendor == "postgresql":
            where, params = _pg_where(parsed, workspace)
            return _count(f"SELECT count(*) FROM runs_app_docpage d WHERE {where}", params)
        if _fts5_available():
            sql, params = _sqlite_matches(parsed, workspace)
            return _count(f"SELECT count(*) FROM ({sql})", params)
        return _docs_fallback_pages(parsed, workspace).count()


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


def _like(run: str) -> str:
    # Runs hold only letters of the spaceless scripts: no LIKE wildcards to escape.
    return f"%{run}%"


def _sqlite_matches(parsed: ParsedQuery, workspace: str | None) -> tuple[str, list[Any]]:
    """SQL selecting (id, rank) of the matching pages (lower rank is better), and its params.

    The word index drives when there are words (BM25: title 10, headings 4, body 1, set in
    migration 0007), else the trigram index when a run has 3 characters or more (BM25), else
    the pages (rank 0); every other condition is a rowid set."""
    conds: list[str] = []
    params: list[Any] = []
    long_runs = [r for r in parsed.runs if len(r) >= 3]
    short_runs = [r for r in parsed.runs if len(r) < 3]
    if parsed.words:
        table, id_col, rank = FTS_TABLE, f"{FTS_TABLE}.rowid", f"{FTS_TABLE}.rank"
        conds.append(f"{FTS_TABLE} MATCH %s")
        params.append(_fts5_query(parsed))
        if long_runs:
            conds.append(
                f"{id_col} IN (SELECT rowid FROM {SPACELESS_TABLE} "
                f"WHERE {SPACELESS_TABLE} MATCH %s)"
            )
            params.append(" AND ".join(f'"{r}"' for r in long_runs))
    elif long_runs:
        table, id_col, rank = SPACELESS_TABLE, f"{SPACELESS_TABLE}.rowid", "rank"
        conds.append(f"{SPACELESS_TABLE} MATCH %s")
        params.append(" AND ".join(f'"{r}"' for r in long_runs))
    else:
        table, id_col, rank = "runs_app_docpage", "runs_app_docpage.id", "0"
    for run in short_runs:
        conds.append(f"{id_col} IN (SELECT id FROM runs_app_docpage WHERE spaceless LIKE %s)")
        params.append(_like(run))
    if workspace is not None:
        conds.append(f"{id_col} IN (SELECT id FROM runs_app_docpage WHERE workspace = %s)")
        params.append(workspace)
    return (
        f"SELECT {id_col} AS id, {rank} AS rank FROM {table} WHERE " + " AND ".join(conds),
        params,
    )


def _docs_sqlite(parsed: ParsedQuery, limit: int, workspace: str | None) -> list[dict[str, Any]]:
    # Rank over the indexes only, then read the few rows kept (their text's start only).
    matches, params = _sqlite_matches(parsed, workspace)
    top = _fetch(f"{matches} ORDER BY rank, id LIMIT %s", [*params, limit])
    if not top:
        return []
    rows = {
        r["id"]: r
        for r in _fetch(
            "SELECT id, workspace, route, path, title, substr(body, 1, %s) AS body "
            "FROM runs_app_docpage WHERE id IN (" + ", ".join(["%s"] * len(top)) + ")",
            [SNIPPET_WINDOW, *(r["id"] for r in top)],
        )
    }
    hits = [{**rows[r["id"]], "score": -float(r["rank"])} for r in top if r["id"] in rows]
    hits.sort(key=lambda h: (-h["score"], h["route"]))
    return hits


def _pg_where(parsed: ParsedQuery, workspace: str | None) -> tuple[str, list[Any]]:
    conds: list[str] = []
    params: list[Any] = []
    if parsed.words:
        conds.append(f"({PG_DOCUMENT}) @@ {_pg_tsquery(parsed)}")
        params.append(" ".join(parsed.words))
    for run in parsed.runs:
        conds.append("d.spaceless LIKE %s")  # the pg_trgm index serves 3 characters or more
        params.append(_like(run))
    if workspace is not None:
        conds.append("d.workspace = %s")
        params.append(workspace)
    return " AND ".join(conds), params


def _pg_tsquery(parsed: ParsedQuery) -> str:
    """The tsquery of the words (one %s): every word (plainto_tsquery), or the phrase
    (phraseto_tsquery); neither reads operators (`or`, `-`) in the user's words."""
    function = "phraseto_tsquery" if parsed.phrase else "plainto_tsquery"
    return f"{function}('simple', hxo_unaccent(%s))"


def _docs_postgresql(
    parsed: ParsedQuery, limit: int, workspace: str | None
) -> list[dict[str, Any]]:
    where, params = _pg_where(parsed, workspace)
    score = f"ts_rank_cd({PG_DOCUMENT}, {_pg_tsquery(parsed)})" if parsed.words else "0"
    score_params = [" ".join(parsed.words)] if parsed.words else []
    return _fetch(
        f"""
        SELECT d.workspace, d.route, d.path, d.title, left(d.body, %s) AS body,
               {score} AS score
        FROM runs_app_docpage d
        WHERE {where}
        ORDER BY score DESC, d.route
        LIMIT %s
        """,
        [SNIPPET_WINDOW, *score_params, *params, limit],
    )


def _docs_fallback(parsed: ParsedQuery, limit: int, workspace: str | None) -> list[dict[str, Any]]:
    rows = []
    needles = parsed.needles
    for page in _docs_fallback_pages(parsed, workspace)[: MAX_HITS * 5]:
        score = sum(
            10 * page.title.lower().count(w)
            + 4 * page.headings.lower().count(w)
            + page.body[:SNIPPET_WINDOW].lower().count(w)
            for w in needles
        )
        rows.append(
            {
                "workspace": page.workspace,
                "route": page.route,
                "path": page.path,
                "title": page.title,
                "score": score,
                "body": page.body[:SNIPPET_WINDOW],
            }
        )
    rows.sort(key=lambda r: (-r["score"], r["route"]))
    return rows[:limit]


def _docs_fallback_pages(parsed: ParsedQuery, workspace: str | None) -> QuerySet[DocPage]:
    qs = DocPage.objects.all() if workspace is None else DocPage.objects.filter(workspace=workspace)
    for w in parsed.needles:
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

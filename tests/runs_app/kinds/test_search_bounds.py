"""Every docs search request is bounded: the text indexed per page is capped (and the page
says so), snippets look at a bounded window, and each query has a time limit that answers
503 `search_timeout` instead of holding the worker. Runs on SQLite and on PostgreSQL.

The time limit is shown by its code path, not by wall-clock asserts: the limit is set to
0 ms, so the first check of the progress handler (SQLite) or the statement timeout
(PostgreSQL: 1 ms, the least it takes) stops a query over thousands of matching pages."""

from __future__ import annotations

import pytest
from django.db import connection
from django.utils import timezone

from runs_app import search
from runs_app.models import DocPage
from runs_app.search import SEARCH_TIMEOUT, SearchError, search_docs
from tests.runs_app.kinds.test_kinds_docs import docs_stage

pytestmark = pytest.mark.django_db

DOCS = "/api/v1/search/docs/"
TERM = "wombat"


def test_a_40_mb_page_is_indexed_up_to_the_cap_and_says_so(driver, workspace, settings):
    settings.HXO_DOCS_MAX_INDEXED_CHARS = 100_000
    line = f"The {TERM} digs a burrow and the {TERM} sleeps in it, {TERM} after {TERM}.\n"
    big = workspace / "docs" / "huge.md"
    big.parent.mkdir(parents=True, exist_ok=True)
    with big.open("w") as f:
        f.write("# Huge page\n\n")
        f.write(line * (40_000_000 // len(line)))
        f.write("\nThe last line names a quokka.\n")
    (workspace / "docs" / "small.md").write_text(f"# Small\n\nOne {TERM}.\n")
    assert big.stat().st_size > 40_000_000

    run = driver.run(docs_stage("t"), dry_run=False)

    (result,) = run.results
    assert result["truncated_pages"] == ["docs/huge.md"]
    huge = DocPage.objects.get(route="/docs/huge/")
    assert huge.truncated and not DocPage.objects.get(route="/docs/small/").truncated
    assert len(huge.body) + len(huge.headings) <= 100_000
    assert huge.body.startswith(f"The {TERM} digs")
    # Past the cap the page is not searchable, as documented.
    assert search_docs("quokka") == []
    hits = search_docs(TERM)
    assert {h["route"] for h in hits} == {"/docs/huge/", "/docs/small/"}
    for hit in hits:
        # A snippet is a window of about SNIPPET_WIDTH characters, whatever the page's size.
        assert len(hit["snippet"]) <= search.SNIPPET_WIDTH + 2
        assert f"<mark>{TERM}</mark>" in hit["snippet_html"]


def test_a_dry_run_reports_the_cut(driver, workspace, settings):
    settings.HXO_DOCS_MAX_INDEXED_CHARS = 1_000
    (workspace / "docs").mkdir()
    (workspace / "docs" / "long.md").write_text("# Long\n\n" + "word " * 2_000)

    preview = driver.run(docs_stage("t"), dry_run=True)

    assert preview.results[0]["pages"][0]["truncated"] is True
    assert DocPage.objects.count() == 0


@pytest.fixture
def many_pages():
    """3,000 pages that all hold the term, Latin and Japanese: ranking them all, or reading
    6 million characters for a LIKE, is far more work than a 0 ms limit (SQLite: one progress
    check, 1,000 instructions) or a 1 ms statement timeout (PostgreSQL) lets through."""
    now = timezone.now()
    DocPage.objects.bulk_create(
        DocPage(
            workspace="demo",
            route=f"/docs/many/p{i:04d}/",
            prefix="/docs/many/",
            path=f"docs/many/p{i:04d}.md",
            title=f"Page {i}",
            body=f"The {TERM} and the 東京の案内 again. " * 40,
            # The match at the end: a LIKE reads every character of every row.
            spaceless="案内" * 1_000 + "東京の案内",
            sha256="0" * 64,
            indexed_at=now,
        )
        for i in range(3_000)
    )


@pytest.mark.parametrize("query", [TERM, "東京", "東京の案内", f"{TERM} 東京"])
def test_a_query_past_the_time_limit_is_stopped_with_its_code(many_pages, settings, query):
    settings.HXO_SEARCH_TIMEOUT_MS = 0

    with pytest.raises(SearchError) as info:
        search_docs(query)
    assert info.value.code == SEARCH_TIMEOUT
    with pytest.raises(SearchError) as info:
        search.count_docs(query)
    assert info.value.code == SEARCH_TIMEOUT

    # The limit goes with the request: the connection answers the next one in full.
    settings.HXO_SEARCH_TIMEOUT_MS = 60_000
    assert len(search_docs(query, limit=search.MAX_HITS)) == search.MAX_HITS
    assert search.count_docs(query) == 3_000
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:  # no progress handler left behind
            cursor.execute("SELECT count(*) FROM runs_app_docpage WHERE body LIKE '%wombat%'")
            assert cursor.fetchone()[0] == 3_000
    else:
        with connection.cursor() as cursor:
            cursor.execute("SHOW statement_timeout")
            assert cursor.fetchone()[0] == "0"


def test_the_api_answers_a_timeout_with_503_and_its_code(
    many_pages, settings, api_client_for, viewer
):
    settings.HXO_SEARCH_TIMEOUT_MS = 0

    response = api_client_for(viewer).get(DOCS, {"q": TERM})

    assert response.status_code == 503
    assert response.json()["code"] == SEARCH_TIMEOUT
    settings.HXO_SEARCH_TIMEOUT_MS = 60_000
    body = api_client_for(viewer).get(DOCS, {"q": TERM}).json()
    assert body["count"] == 3_000


def test_a_snippet_looks_at_a_bounded_window_of_the_text():
    parsed = search.parse_query(TERM)
    body = "x " * search.SNIPPET_WINDOW + TERM

    marked = search.snippet(body, parsed)

    # The match past the window is not looked for: the snippet is the page's start.
    assert TERM not in marked and marked.endswith("…")
    assert len(marked) <= search.SNIPPET_WIDTH + 2

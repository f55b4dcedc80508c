"""docs.index: the route map, Markdown extraction, docs_index and full-text search, on the
real demo documentation (read in place: indexing only reads the workspace)."""

from __future__ import annotations

import pytest

from runs_app.kinds.docs import extract, route_of
from runs_app.models import DocPage
from runs_app.search import QUERY_REQUIRED, SearchError, search_docs
from tests.runs_app.kinds.conftest import DEMO_WORKSPACE, write_files

pytestmark = pytest.mark.django_db

PHRASE = "the ledger keeps a batch from being applied twice"


def docs_stage(workspace: str = "demo", **params):
    return {
        "id": "docs",
        "kind": "docs.index",
        "partitioner": "by_route_map",
        "executor": "docs_index",
        "params": {"workspace": workspace, **params},
    }


@pytest.fixture
def demo_docs(settings, scratch):
    """The shipped demo workspace registered as "demo", read in place."""
    settings.HXO_WORKSPACES = {"demo": str(DEMO_WORKSPACE.resolve())}


def test_routes_map_pages_and_section_indexes():
    assert route_of("index.md", "/docs/") == "/docs/"
    assert route_of("api/orders.md", "/docs/") == "/docs/api/orders/"
    assert route_of("api/index.md", "/docs/") == "/docs/api/"
    assert route_of("guides/README.md", "/help/") == "/help/guides/"


def test_by_route_map_partitions_by_top_level_prefix(driver, demo_docs):
    _kind, manifest, data = driver.partition(docs_stage())

    prefixes = [p.inputs["route"] for p in manifest.partitions]
    assert prefixes == [
        "/docs/",
        "/docs/api/",
        "/docs/architecture/",
        "/docs/getting-started/",
        "/docs/operations/",
        "/docs/reference/",
    ]
    assert len(data["pages"]) >= 30
    api = manifest.partitions[prefixes.index("/docs/api/")]
    assert "docs/api/orders.md" in api.fingerprints


def test_markdown_extraction_keeps_title_headings_and_text_without_syntax():
    page = extract(
        "---\ntitle: Front matter wins\n---\n# Heading one\n\nSome **bold** and `code` with a "
        "[link](http://x) and ![alt text](i.png).\n\nSetext\n------\n\n```python\nx = 1\n```\n"
        "| a | b |\n|---|---|\n| c | d |\n",
        "fallback",
    )

    assert page["title"] == "Front matter wins"
    assert page["headings"] == ["Heading one", "Setext"]
    assert "Some bold and code with a link and alt text." in page["body"]
    assert "x = 1" in page["body"]
    assert "**" not in page["body"] and "](" not in page["body"] and "---" not in page["body"]
    assert extract("no heading here", "Fallback Title")["title"] == "Fallback Title"


def test_a_code_block_indented_in_a_list_keeps_every_later_heading():
    # npm's docs: a fenced block inside a list item, opened 4 spaces in and closed 3 spaces in.
    page = extract(
        "# Install\n\n1. Run:\n\n    ```bash\n    npm install\n   ```\n\n"
        "2. Then `npm test`.\n\n"
        "## Configure\n\nSet **it**.\n\nUse it\n------\n\n### Done\n",
        "fallback",
    )

    assert page["title"] == "Install"
    assert page["headings"] == ["Install", "Configure", "Use it", "Done"]
    assert "npm install" in page["body"] and "npm test" in page["body"]
    assert "Set it." in page["body"]
    assert "```" not in page["body"]


def test_indexing_the_demo_docs_makes_a_phrase_searchable(driver, demo_docs):
    run = driver.run(docs_stage(), dry_run=False)

    pages = sorted(DEMO_WORKSPACE.joinpath("docs").rglob("*.md"))
    assert sum(r["docs_indexed"] for r in run.results) == len(pages) == DocPage.objects.count()
    backfill = DocPage.objects.get(route="/docs/operations/email-domain-backfill/")
    assert backfill.title == "The email-domain backfill"
    assert "Exactly once" in backfill.heading_list

    hits = search_docs(f'"{PHRASE}"')

    assert hits[0]["route"] == "/docs/operations/email-domain-backfill/"
    assert "<mark>" in hits[0]["snippet_html"]
    assert "ledger" in hits[0]["snippet"].lower()


def test_search_ranks_a_title_match_above_a_passing_mention(driver, demo_docs):
    driver.run(docs_stage(), dry_run=False)

    hits = search_docs("glossary")

    assert hits[0]["route"] == "/docs/reference/glossary/"
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert search_docs("zyzzyva-not-a-word") == []


def test_search_refuses_an_empty_query():
    with pytest.raises(SearchError) as info:
        search_docs("   ")

    assert info.value.code == QUERY_REQUIRED


def test_query_syntax_characters_are_words_not_operators(driver, demo_docs):
    driver.run(docs_stage(), dry_run=False)

    # FTS5 would read these as query syntax (and fail on the unbalanced quote and paren).
    # No page has the word "near": as a word it matches nothing (as FTS5's NEAR it would fail).
    assert search_docs('ledger" OR "NEAR(') == []
    quoted = [h["route"] for h in search_docs('ledger" "row(')]
    assert quoted and quoted == [h["route"] for h in search_docs("ledger row")]
    assert search_docs("ledger (")[0]["route"] == search_docs("ledger")[0]["route"]
    assert search_docs("*") == []


def test_a_docs_dry_run_reports_pages_and_leaves_no_index_entry(driver, demo_docs, scratch):
    run = driver.run(docs_stage(), dry_run=True)

    assert sum(len(r["pages"]) for r in run.results) >= 30
    assert all(p["action"] == "add" for r in run.results for p in r["pages"])
    assert DocPage.objects.count() == 0
    assert search_docs("ledger") == []


def test_reindexing_updates_changed_pages_and_removes_deleted_ones(driver, workspace):
    write_files(
        workspace,
        {
            "docs/index.md": "# Home\n\nWelcome.\n",
            "docs/guide/one.md": "# One\n\nThe first quokka.\n",
            "docs/guide/two.md": "# Two\n\nThe second page.\n",
        },
    )
    driver.run(docs_stage("t"), dry_run=False)
    assert [h["route"] for h in search_docs("quokka")] == ["/docs/guide/one/"]
    ids = dict(DocPage.objects.values_list("route", "id"))

    (workspace / "docs/guide/two.md").unlink()
    (workspace / "docs/guide/one.md").write_text("# One\n\nNow about a wombat.\n")
    run = driver.run(docs_stage("t"), dry_run=False)

    assert sorted(DocPage.objects.values_list("route", flat=True)) == ["/docs/", "/docs/guide/one/"]
    assert DocPage.objects.get(route="/docs/guide/one/").id == ids["/docs/guide/one/"]
    assert search_docs("quokka") == []
    assert [h["route"] for h in search_docs("wombat")] == ["/docs/guide/one/"]
    assert sum(r["removed"] for r in run.results) == 1

"""docs.index on real documentation trees, through the engine, then the search API.

click's `docs/` is a Sphinx tree of 23 `.rst` pages (with Sphinx-only directives and roles:
`rst-class`, `currentmodule`, `:func:`, `:ref:`); the requests sdist holds Markdown
(README.md, HISTORY.md, and a README.md in test folders). The pages indexed are the pages of
the tree, each page has the title of its first heading, and a known heading finds its page
through `GET /api/v1/search/docs/`. A dry-run indexes nothing; a folder removed from the tree
leaves the index on the next run.
"""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

import pytest

from runs_app.models import DocPage
from tests.realmaterial.conftest import outputs_of, plan_of, previews_of, stage
from tests.realmaterial.material import find_files

pytestmark = [pytest.mark.real_material, pytest.mark.django_db(transaction=True)]

SEARCH = "/api/v1/search/docs/"


def routes_of(root: Path, suffixes: tuple[str, ...], index_stems: tuple[str, ...]) -> set[str]:
    """Sphinx-style routes of the pages under root: `/docs/<path without suffix>/`, an index
    page is its folder."""
    routes = set()
    for rel in find_files(root):
        path = PurePosixPath(rel)
        if path.suffix not in suffixes:
            continue
        parts = list(path.with_suffix("").parts)
        if parts[-1].lower() in index_stems:
            parts.pop()
        routes.add("/docs/" + "".join(f"{p}/" for p in parts))
    return routes


def search(client, q: str, workspace: str) -> list[dict]:
    response = client.get(SEARCH, {"q": q, "workspace": workspace})
    assert response.status_code == 200, response.content
    return response.json()["results"]


def test_a_sphinx_tree_is_indexed_page_for_page_and_found_by_its_headings(
    workspace_of, scratch, engine, api_client_for, viewer
):
    root = workspace_of("click")
    document = plan_of(
        "docs-click",
        stage("docs.index", "by_route_map", "docs_index", workspace="click", root="docs"),
    )

    def nothing_indexed() -> None:
        assert DocPage.objects.count() == 0

    dry, run = engine.run(document, unchanged=nothing_indexed)

    expected = routes_of(root / "docs", (".rst",), ("index",))
    assert len(expected) == 23
    pages = dict(DocPage.objects.filter(workspace="click").values_list("route", "title"))
    assert set(pages) == expected
    assert sum(o["docs_indexed"] for o in outputs_of(run)) == 23
    assert all(o["failed_pages"] == [] for o in outputs_of(run))
    assert sum(len(p["pages"]) for p in previews_of(dry)) == 23
    assert pages["/docs/"] == "Welcome to Click"
    assert pages["/docs/options/"] == "Options"
    assert pages["/docs/shell-completion/"] == "Shell Completion"
    # No page's text kept reST markup of Sphinx's roles.
    bodies = DocPage.objects.filter(workspace="click").values_list("body", flat=True)
    assert not any(":func:`" in body or ".. currentmodule::" in body for body in bodies)

    client = api_client_for(viewer)
    hits = search(client, "Multi Value Options", "click")
    assert "/docs/options/" in [h["route"] for h in hits[:3]]
    hits = search(client, "Shell Completion", "click")
    assert "/docs/shell-completion/" in [h["route"] for h in hits[:3]]


def test_markdown_pages_of_an_sdist_are_indexed_and_found(
    workspace_of, scratch, engine, api_client_for, viewer
):
    root = workspace_of("requests")
    document = plan_of(
        "docs-requests",
        stage("docs.index", "by_route_map", "docs_index", workspace="requests", root="."),
    )

    def nothing_indexed() -> None:
        assert DocPage.objects.count() == 0

    engine.run(document, unchanged=nothing_indexed)

    expected = routes_of(root, (".md",), ("index", "readme"))
    # README.md and HISTORY.md, and the README.md files of the test certificates' folders.
    assert {"/docs/", "/docs/HISTORY/", "/docs/tests/certs/mtls/"} <= expected
    pages = dict(DocPage.objects.filter(workspace="requests").values_list("route", "title"))
    assert set(pages) == expected
    assert pages["/docs/HISTORY/"] == "Release History"
    headings = DocPage.objects.get(workspace="requests", route="/docs/HISTORY/").headings
    # One heading per release: HISTORY.md has one `x.y.z (date)` section per version.
    assert "2.32.3 (2024-05-29)" in headings.splitlines()
    assert len(headings.splitlines()) > 150

    hits = search(api_client_for(viewer), "Release History", "requests")
    assert hits and hits[0]["route"] == "/docs/HISTORY/"


def test_a_folder_removed_from_the_tree_leaves_the_index_on_the_next_run(
    workspace_of, scratch, engine, api_client_for, viewer
):
    root = workspace_of("requests")
    document = plan_of(
        "docs-requests",
        stage("docs.index", "by_route_map", "docs_index", workspace="requests", root="."),
    )
    engine.run(document)
    assert DocPage.objects.filter(route__startswith="/docs/tests/").count() == 3

    shutil.rmtree(root / "tests")
    engine.run(document)

    routes = set(DocPage.objects.filter(workspace="requests").values_list("route", flat=True))
    assert routes == routes_of(root, (".md",), ("index", "readme")) == {"/docs/", "/docs/HISTORY/"}
    hits = search(api_client_for(viewer), "certificates", "requests")
    assert not [h for h in hits if h["route"].startswith("/docs/tests/")]

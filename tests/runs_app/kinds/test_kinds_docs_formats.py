"""docs.index on pages as real projects write them: a Sphinx tree (reST, `.txt` pages, Sphinx's
own directives and roles), pages that cannot be read, BOMs, CR line endings, YAML front
matter, and a removed directory. Effects are asserted: DocPage rows and what search finds."""

from __future__ import annotations

import pytest

from blueprints_app.registry import ComponentError
from runs_app.kinds.docs import NO_READABLE_PAGE, extract, route_of
from runs_app.models import DocPage
from runs_app.search import search_docs
from tests.runs_app.kinds.conftest import write_files
from tests.runs_app.kinds.test_kinds_docs import docs_stage

pytestmark = pytest.mark.django_db

SPHINX_TREE: dict[str, str | bytes] = {
    "docs/conf.py": "project = 'Quokka'\nextensions = ['sphinx.ext.autodoc']\n",
    "docs/index.rst": """
        Welcome to Quokka
        =================

        .. toctree::
           :maxdepth: 2
           :caption: Contents

           usage
           topics/install

        Quokka counts marsupials.
        """,
    "docs/usage.rst": """
        .. _usage:

        Using Quokka
        ============

        Read :ref:`the install guide <install>` first, then :doc:`topics/install`, and see
        :class:`~quokka.core.Counter` and :py:func:`quokka.count`.

        .. note:: The numbat mode is experimental.

        .. versionadded:: 2.0
           The wombat filter appeared.

        .. code-block:: python

           import platypus

        Configuration
        -------------

        .. setting:: QUOKKA_LIMIT

        Sets the bilby limit.
        """,
    "docs/topics/install.txt": """
        .. _install:

        Installing Quokka
        =================

        Run the echidna installer.

        .. deprecated:: 1.5
           The old dunnart script.
        """,
    "docs/topics/index.txt": "Topics\n======\n\nAll the topics.\n",
    "docs/_static/notes.txt": "Not reST-worthy but inside the Sphinx tree.\n",
}


def test_sphinx_routes_drop_the_suffix_and_index_is_the_folder():
    assert route_of("usage.rst", "/docs/", "rst") == "/docs/usage/"
    assert route_of("topics/index.txt", "/docs/", "rst") == "/docs/topics/"
    assert route_of("topics/README.rst", "/docs/", "rst") == "/docs/topics/README/"
    assert route_of("topics/README.md", "/docs/") == "/docs/topics/"


def test_a_sphinx_tree_indexes_every_page_with_titles_routes_and_directive_text(driver, workspace):
    write_files(workspace, SPHINX_TREE)
    # A .txt outside any Sphinx tree is not a page.
    write_files(workspace, {"notes/todo.txt": "Not a page.\n"})

    run = driver.run(docs_stage("t"), dry_run=False)

    titles = dict(DocPage.objects.values_list("route", "title"))
    assert titles == {
        "/docs/": "Welcome to Quokka",
        "/docs/usage/": "Using Quokka",
        "/docs/topics/install/": "Installing Quokka",
        "/docs/topics/": "Topics",
        "/docs/_static/notes/": "Notes",
    }
    assert all(r["failed_pages"] == [] for r in run.results)
    usage = DocPage.objects.get(route="/docs/usage/")
    assert usage.heading_list == ["Using Quokka", "Configuration"]
    # Roles keep the text a reader sees; the toctree's page list is not prose.
    assert "the install guide" in usage.body and "Counter" in usage.body
    assert "quokka.count" in usage.body and ":ref:" not in usage.body
    assert "usage" not in DocPage.objects.get(route="/docs/").body.split()
    # Text inside directives is searchable, each on its page.
    for word, route in [
        ("numbat", "/docs/usage/"),
        ("wombat", "/docs/usage/"),
        ("platypus", "/docs/usage/"),
        ("bilby", "/docs/usage/"),
        ("echidna", "/docs/topics/install/"),
        ("dunnart", "/docs/topics/install/"),
        ("marsupials", "/docs/"),
    ]:
        assert [h["route"] for h in search_docs(word)] == [route], word


def test_rst_never_reads_files_nor_passes_raw_html(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("kookaburra\n")
    page = extract(
        f"Title\n=====\n\n.. include:: {secret}\n\n.. raw:: html\n\n   <b>galah</b>\n\n"
        f".. csv-table:: x\n   :file: {secret}\n\nAfter.\n",
        "fallback",
        "rst",
    )

    assert "kookaburra" not in page["body"] and "galah" not in page["body"]
    assert page["title"] == "Title" and "After." in page["body"]


def test_a_page_that_cannot_be_read_is_reported_and_the_rest_index(driver, workspace):
    write_files(
        workspace,
        {
            "docs/good.md": "# Good\n\nA readable koala.\n",
            "docs/broken.md": b"\x00\x01\x02 binary \x00",
        },
    )

    run = driver.run(docs_stage("t"), dry_run=False)

    assert list(DocPage.objects.values_list("route", flat=True)) == ["/docs/good/"]
    preview = driver.run(docs_stage("t"), dry_run=True)
    assert "1 unreadable" in preview.results[0]["summary"]
    assert [f["path"] for f in preview.results[0]["failed_pages"]] == ["docs/broken.md"]
    (failed,) = run.results[0]["failed_pages"]
    assert failed["path"] == "docs/broken.md" and "binary" in failed["reason"]
    assert [h["route"] for h in search_docs("koala")] == ["/docs/good/"]


def test_a_tree_where_no_page_can_be_read_fails_the_partition(driver, workspace):
    write_files(
        workspace,
        {"docs/a.md": b"\x00\x00", "docs/b.rst": b"Title\n=====\n\x00\n"},
    )

    with pytest.raises(ComponentError) as info:
        driver.run(docs_stage("t"), dry_run=False)

    assert info.value.code == NO_READABLE_PAGE
    assert "docs/a.md" in info.value.message and "docs/b.rst" in info.value.message
    assert DocPage.objects.count() == 0


def test_a_tree_with_no_page_in_a_format_read_is_an_error_not_an_empty_success(driver, workspace):
    write_files(workspace, {"docs/page.adoc": "= AsciiDoc\n", "docs/notes.txt": "no conf.py\n"})

    with pytest.raises(ComponentError) as info:
        driver.partition(docs_stage("t"))

    assert info.value.code == NO_READABLE_PAGE


def test_bom_cr_line_endings_and_a_folded_front_matter_title(driver, workspace):
    write_files(
        workspace,
        {
            "docs/bom.md": "\ufeff---\ntitle: Byte order\n---\n# Heading kept\n\nThe bandicoot.\n",
            "docs/cr.md": b"# Old Mac\r\rThe quoll line.\r\r## Second\r",
            "docs/crlf.rst": b"\xef\xbb\xbfWindows page\r\n============\r\n\r\nThe potoroo.\r\n",
            "docs/folded.md": (
                "---\ntitle: >\n  A folded\n  long title\nauthor: x\n---\n\nThe bettong.\n"
            ),
        },
    )

    driver.run(docs_stage("t"), dry_run=False)

    pages = {p.route: p for p in DocPage.objects.all()}
    assert pages["/docs/bom/"].title == "Byte order"
    assert pages["/docs/bom/"].heading_list == ["Heading kept"]
    assert pages["/docs/cr/"].title == "Old Mac"
    assert pages["/docs/cr/"].heading_list == ["Old Mac", "Second"]
    assert pages["/docs/crlf/"].title == "Windows page"
    assert pages["/docs/folded/"].title == "A folded long title"
    assert "author" not in pages["/docs/folded/"].body
    for word, route in [
        ("bandicoot", "/docs/bom/"),
        ("quoll", "/docs/cr/"),
        ("potoroo", "/docs/crlf/"),
        ("bettong", "/docs/folded/"),
    ]:
        assert [h["route"] for h in search_docs(word)] == [route], word


def test_removing_a_directory_and_reindexing_removes_its_pages(driver, workspace):
    write_files(
        workspace,
        {
            "docs/index.md": "# Home\n\nWelcome.\n",
            "docs/guide/one.md": "# One\n\nThe first cassowary.\n",
            "docs/guide/two.md": "# Two\n\nThe second cassowary.\n",
            "docs/api/ref.md": "# Ref\n\nThe emu reference.\n",
        },
    )
    driver.run(docs_stage("t"), dry_run=False)
    assert len(search_docs("cassowary")) == 2

    for name in ("one.md", "two.md"):
        (workspace / "docs/guide" / name).unlink()
    (workspace / "docs/guide").rmdir()
    preview = driver.run(docs_stage("t"), dry_run=True)
    assert all(r["gone_prefixes"] == ["/docs/guide/"] for r in preview.results)
    assert DocPage.objects.filter(prefix="/docs/guide/").count() == 2

    run = driver.run(docs_stage("t"), dry_run=False)

    assert sorted(DocPage.objects.values_list("route", flat=True)) == ["/docs/", "/docs/api/ref/"]
    assert search_docs("cassowary") == []
    assert [h["route"] for h in search_docs("emu")] == ["/docs/api/ref/"]
    assert sum(r["removed"] for r in run.results) == 2


def test_a_page_that_is_not_utf8_is_a_page_failure_not_replacement_characters(driver, workspace):
    write_files(
        workspace,
        {
            "docs/latin1.md": "# Caf\u00e9\n\nCr\u00e8me br\u00fbl\u00e9e.\n".encode("latin-1"),
            "docs/utf16.md": "\ufeff# Wide page\n\nSaved by Notepad.\n".encode("utf-16-le"),
            "docs/good.md": "# Good\n\nA numbat.\n",
        },
    )

    preview = driver.run(docs_stage("t"), dry_run=True)
    run = driver.run(docs_stage("t"), dry_run=False)

    for result in (preview.results[0], run.results[0]):
        (failed,) = result["failed_pages"]
        assert failed["path"] == "docs/latin1.md"
        assert "not UTF-8" in failed["reason"] and "offset 5" in failed["reason"]
    assert sorted(DocPage.objects.values_list("route", flat=True)) == [
        "/docs/good/",
        "/docs/utf16/",
    ]
    assert DocPage.objects.get(route="/docs/utf16/").title == "Wide page"
    assert not DocPage.objects.filter(body__contains="\ufffd").exists()


def test_a_partition_of_undecodable_pages_fails_permanently(driver, workspace):
    write_files(workspace, {"docs/a.md": b"\xfd\xfe not text", "docs/b.md": b"\xc3\x28"})

    with pytest.raises(ComponentError) as info:
        driver.run(docs_stage("t"), dry_run=False)

    # Permanent: the engine fails it at once instead of retrying bytes that cannot change.
    assert info.value.code == NO_READABLE_PAGE and info.value.permanent
    assert "not UTF-8" in info.value.message


def test_a_parser_failure_on_one_markdown_page_is_that_pages_failure(driver, workspace):
    # Deeply nested YAML in the front matter: PyYAML recurses past Python's limit.
    nested = "---\ntitle: " + "[" * 5_000 + "]" * 5_000 + "\n---\n# Deep\n"
    write_files(workspace, {"docs/deep.md": nested, "docs/ok.md": "# Ok\n\nFine.\n"})

    run = driver.run(docs_stage("t"), dry_run=False)

    (failed,) = run.results[0]["failed_pages"]
    assert failed["path"] == "docs/deep.md" and "could not be parsed" in failed["reason"]
    assert list(DocPage.objects.values_list("route", flat=True)) == ["/docs/ok/"]


def test_build_output_dependencies_and_hidden_folders_are_not_pages(driver, workspace):
    write_files(
        workspace,
        {
            **{k: v for k, v in SPHINX_TREE.items() if k != "docs/_static/notes.txt"},
            "docs/_build/html/_sources/usage.rst.txt": "Built copy\n==========\n",
            "docs/_build/html/index.md": "# Built\n",
            "docs/node_modules/pkg/README.md": "# A dependency\n",
            "docs/.tox/py311/README.md": "# Tox\n",
            "docs/.github/ISSUE_TEMPLATE.md": "# Issue\n",
            "docs/topics/.hidden/page.md": "# Hidden\n",
        },
    )

    _kind, _manifest, data = driver.partition(docs_stage("t"))

    paths = sorted(p["path"] for p in data["pages"])
    assert paths == [
        "docs/index.rst",
        "docs/topics/index.txt",
        "docs/topics/install.txt",
        "docs/usage.rst",
    ]
    assert data["skipped_dirs"] == {
        ".github": 1,
        ".tox": 1,
        "_build": 2,
        "node_modules": 1,
        "topics/.hidden": 1,
    }


def test_markdown_nested_deeper_than_the_parser_goes_is_reported_truncated() -> None:
    """Found by the tryout: 20,000 `> ` then a word was indexed with an empty body and reported
    nowhere (markdown-it stops nesting at maxNesting and drops what is deeper)."""
    from runs_app.kinds.docs import read_page

    deep = read_page(("> " * 20_000 + "deepquote\n").encode(), "Deep")
    shallow = read_page(("> " * 5 + "deepquote\n").encode(), "Shallow")

    assert deep["truncated"] is True
    assert shallow["truncated"] is False and "deepquote" in shallow["body"]
    assert "nesting_cut" not in deep

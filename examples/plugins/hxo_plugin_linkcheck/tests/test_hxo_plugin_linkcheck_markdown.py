"""Links, anchors and targets of Markdown pages (no files, no database)."""

from __future__ import annotations

import textwrap

import pytest
from hxo_plugin_linkcheck.markdown import anchor_matches, anchors, classify, links, slugify

PAGE = textwrap.dedent(
    """\
    # Title

    See [one](a.md), ![img](img/x.png "a title") and [two](<b c.md>) and
    [wiki](https://en.wikipedia.org/wiki/Foo_(bar)) and <mailto:x@example.com>.

    [ref]: ../ref.md#part
    <a href="html.md">html</a> <img src='pic.png'>

    `[code span](not-a-link.md)`

    ~~~
    [fenced](not-a-link-either.md)
    ~~~
    """
)


def test_links_are_found_with_their_lines_outside_code():
    assert [(link.line, link.target) for link in links(PAGE)] == [
        (3, "a.md"),
        (3, "img/x.png"),
        (3, "b c.md"),
        (4, "https://en.wikipedia.org/wiki/Foo_(bar)"),
        (4, "mailto:x@example.com"),
        (6, "../ref.md#part"),
        (7, "html.md"),
        (7, "pic.png"),
    ]


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Hello, World!", "hello-world"),
        ("API `v2` *beta*", "api-v2-beta"),
        ("Über Größe", "über-größe"),
        ("[Link](x.md) text", "link-text"),
        ("snake_case and-dash", "snake_case-and-dash"),
    ],
)
def test_headings_slug_as_on_github(heading, slug):
    assert slugify(heading) == slug


def test_anchors_are_slugs_numbered_repeats_explicit_ids_and_html_ids():
    text = textwrap.dedent(
        """\
        # Intro
        ## Intro
        Setext heading
        --------------
        ## Custom {#my-id}
        <a id="legacy"></a> <span name="old-name"></span>
        ```
        # not a heading
        ```
        - a list item
        ---
        """
    )

    assert anchors(text) == {
        "intro",
        "intro-1",
        "setext-heading",
        "my-id",
        "legacy",
        "old-name",
    }


def test_anchor_matching_forgives_case():
    assert anchor_matches("Intro", {"intro"})
    assert not anchor_matches("outro", {"intro"})


@pytest.mark.parametrize(
    ("target", "kind", "path", "fragment"),
    [
        ("https://x.org/a", "external", "", ""),
        ("//cdn.example.com/x.js", "external", "", ""),
        ("", "empty", "", ""),
        ("#Top%20part", "anchor", "", "Top part"),
        ("/docs/guides/#x", "route", "/docs/guides/", "x"),
        ("install.md#req", "path", "docs/guides/install.md", "req"),
        ("../api/", "path", "docs/api/", ""),
        ("../../../etc/passwd", "path", "../etc/passwd", ""),
        ("my%20page.md?plain=1", "path", "docs/guides/my page.md", ""),
    ],
)
def test_targets_resolve_against_the_page_directory(target, kind, path, fragment):
    resolved = classify(target, "docs/guides/index.md")

    assert (resolved.kind, resolved.path, resolved.fragment) == (kind, path, fragment)

"""Plan descriptions as Markdown, rendered safely.

markdown-it-py parses CommonMark; we decide what may come out: raw HTML in the source is
escaped (`html: False`), an image shows its alt text only (a description must not make the
browser fetch anything), and a link keeps its `href` only when it is http(s) or relative (a path, a
query, a fragment). Any other scheme (`javascript:`, `data:`, `vbscript:`, `file:`...) leaves the
link's text as plain text. Links get `rel="nofollow noopener noreferrer"`.
"""

from __future__ import annotations

import functools
from urllib.parse import urlsplit

from django.utils.safestring import SafeString, mark_safe
from django.utils.text import Truncator
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml

ALLOWED_SCHEMES = {"http", "https"}
LINK_REL = "nofollow noopener noreferrer"


def link_allowed(url: str) -> bool:
    """Whether `url` may be a link's href: http(s) absolute, or relative (a path, a query or a
    fragment). Control characters and whitespace that browsers strip before reading the
    scheme (`java\\nscript:`) are removed first, so they cannot hide one."""
    cleaned = "".join(ch for ch in url if ch > " " and ch != "\x7f")
    try:
        parts = urlsplit(cleaned)
    except ValueError:
        return False
    if parts.scheme:
        return parts.scheme.lower() in ALLOWED_SCHEMES and bool(parts.netloc)
    # No scheme: a relative reference, but not "//host" (protocol-relative leaves the site)
    # and no colon before the first slash, which some browsers read as a scheme.
    head = cleaned.split("/", 1)[0]
    return not cleaned.startswith("//") and not cleaned.startswith("\\") and ":" not in head


@functools.cache
def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False})
    md.validateLink = link_allowed  # a refused link is left as its literal text

    def render_link_open(self, tokens, idx, options, env):  # type: ignore[no-untyped-def]
        tokens[idx].attrSet("rel", LINK_REL)
        return self.renderToken(tokens, idx, options, env)

    def render_image(self, tokens, idx, options, env):  # type: ignore[no-untyped-def]
        # An image would make every reader's browser fetch its URL: show its alt text.
        return escapeHtml(tokens[idx].content)

    md.add_render_rule("link_open", render_link_open)
    md.add_render_rule("image", render_image)
    return md


def render_markdown(text: str | None) -> SafeString:
    """`text` (Markdown, CommonMark) as HTML safe to insert in a page; "" for empty text."""
    if not text:
        return mark_safe("")
    return mark_safe(_parser().render(text))  # escaped by markdown-it (html off)


def render_summary(text: str | None, chars: int = 90) -> SafeString:
    """The first paragraph of `text` rendered inline (emphasis, code, links; no blocks), cut to
    `chars` visible characters without breaking the HTML: for one line in a list."""
    if not text:
        return mark_safe("")
    first = text.strip().split("\n\n", 1)[0].replace("\n", " ")
    html = _parser().renderInline(first)
    return mark_safe(Truncator(html).chars(chars, html=True))

"""reStructuredText pages for docs.index, parsed with docutils the way Sphinx trees write them.

Sphinx adds directives and roles docutils does not know (`.. toctree::`, `.. versionadded::`,
`:ref:`, `:doc:`, `:class:`, a project's own `.. setting::`...). Without Sphinx they would be
errors that drop their text; here every name docutils does not know resolves to a permissive
handler while a page is parsed (the way Sphinx itself swaps the lookups in, in
`sphinx.util.docutils.sphinx_domains`): a directive keeps its argument and its content as
text, a role keeps its title. Docutils runs with no file insertion (`.. include::`, `:file:`
options), no raw passthrough, no configuration files and its messages in a string, so a page
cannot read the machine's files nor write to stderr. A message at level SEVERE (4) or above
is the page's failure (`PageError`), not the partition's.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from docutils import nodes, utils
from docutils.core import publish_doctree
from docutils.parsers.rst import Directive, directives, roles

# Directives whose content is not prose: a list of page names, index entries, settings.
NOT_PROSE = frozenset(
    {
        "toctree",
        "index",
        "highlight",
        "literalinclude",
        "tabularcolumns",
        "currentmodule",
        "default-role",
        "default-domain",
        "autosummary",
    }
)
# Directives whose content is code: kept verbatim, as the Markdown reader keeps code blocks.
CODE = frozenset(
    {"code-block", "sourcecode", "doctest", "testcode", "testoutput", "console", "prompt"}
)
SEVERE = 4


class PageError(Exception):
    """A page that cannot be read (the reason is the message); the rest of its tree goes on."""


class _AnyOption(dict):
    """An option spec that accepts every option (`:maxdepth: 2`, `:caption: x`) as a string,
    so an unknown directive's options never turn into content or errors. Non-empty: docutils
    only parses options when the spec is truthy."""

    def __init__(self) -> None:
        super().__init__({"class": directives.unchanged})

    def __missing__(self, key: str) -> Any:
        return directives.unchanged


class AnyDirective(Directive):
    """Stands for a directive docutils does not know: its argument line and its content are
    kept as text (content parsed as reST, code directives verbatim, NOT_PROSE ones dropped)."""

    optional_arguments = 1
    final_argument_whitespace = True
    has_content = True
    option_spec = _AnyOption()

    def run(self) -> list[nodes.Node]:
        name = self.name.lower().rsplit(":", 1)[-1]
        if name in NOT_PROSE:
            return []
        out: list[nodes.Node] = []
        if self.arguments and name not in CODE:
            out.append(nodes.paragraph(self.arguments[0], self.arguments[0]))
        if not self.content:
            return out
        if name in CODE:
            text = "\n".join(self.content)
            out.append(nodes.literal_block(text, text))
        else:
            box = nodes.container()
            self.state.nested_parse(self.content, self.content_offset, box)
            out.append(box)
        return out


_EXPLICIT_TITLE = re.compile(r"^(.+?)\s*<([^<>]*)>$", re.DOTALL)


def any_role(
    name: str,
    rawtext: str,
    text: str,
    lineno: int,
    inliner: Any,
    options: dict[str, Any] | None = None,
    content: list[str] | None = None,
) -> tuple[list[nodes.Node], list[nodes.system_message]]:
    """Stands for a role docutils does not know: the text a reader sees. `:ref:`Title <x>``
    gives "Title"; `:class:`~a.b.C`` gives "C" (Sphinx shows the last part); `!x` gives x."""
    text = utils.unescape(text)
    match = _EXPLICIT_TITLE.match(text)
    if match:
        text = match.group(1)
    else:
        text = text.lstrip("!")
        if text.startswith("~"):
            text = re.split(r"[.:]", text[1:])[-1]
    return [nodes.literal(rawtext, text)], []


_LOOKUP = threading.Lock()


@contextmanager
def _permissive() -> Iterator[None]:
    """Unknown directives and roles resolve to AnyDirective and any_role while a page parses.

    Docutils looks both up through module functions; they are swapped back afterwards so
    nothing else in the process sees the change (a lock keeps parses from interleaving)."""
    find_directive, find_role = directives.directive, roles.role

    def directive(name: str, language: Any, document: Any) -> tuple[Any, list]:
        found, messages = find_directive(name, language, document)
        return (found, messages) if found is not None else (AnyDirective, [])

    def role(name: str, language: Any, lineno: int, reporter: Any) -> tuple[Any, list]:
        found, messages = find_role(name, language, lineno, reporter)
        return (found, messages) if found is not None else (any_role, [])

    with _LOOKUP:
        directives.directive, roles.role = directive, role
        try:
            yield
        finally:
            directives.directive, roles.role = find_directive, find_role


def _settings(stream: io.StringIO) -> dict[str, Any]:
    return {
        "_disable_config": True,  # no docutils.conf from the machine
        "file_insertion_enabled": False,  # no `.. include::`, no `:file:`/`:url:` options
        "raw_enabled": False,
        "halt_level": 5,  # never stop a page: failures are read from the messages
        "report_level": SEVERE,  # only what fails a page is reported
        "warning_stream": stream,
        "traceback": True,  # exceptions propagate instead of sys.exit()
        "syntax_highlight": "none",  # code is text here, no Pygments
        "input_encoding": "unicode",
        "smart_quotes": False,
        "line_length_limit": 100_000,
    }


# Blocks whose text is the page's body text, each one a paragraph of it.
_TEXT_BLOCKS = (
    nodes.paragraph,
    nodes.literal_block,
    nodes.doctest_block,
    nodes.line,
    nodes.rubric,
    nodes.term,
    nodes.caption,
    nodes.attribution,
    nodes.field_name,
)
_SKIPPED = (nodes.system_message, nodes.comment, nodes.raw, nodes.substitution_definition)


def _blocks(node: nodes.Node, headings: list[str], lines: list[str]) -> None:
    for child in node.children:
        if isinstance(child, _SKIPPED):
            continue
        if isinstance(child, nodes.title):
            text = child.astext().strip()
            if isinstance(node, (nodes.section, nodes.document)):
                headings.append(text)
            else:  # an admonition's or a topic's title is text of the page
                lines.extend([text, ""])
        elif isinstance(child, nodes.literal_block | nodes.doctest_block):
            lines.extend(line.strip() for line in child.astext().splitlines())
            lines.append("")
        elif isinstance(child, _TEXT_BLOCKS):
            lines.extend([" ".join(child.astext().split()), ""])
        elif isinstance(child, nodes.Element):
            _blocks(child, headings, lines)


def extract_rst(page: str, fallback_title: str) -> dict[str, Any]:
    """Title, headings and plain text of a reStructuredText page (already normalised text).

    Returns {"title", "headings", "body"}: the title is docutils' document title, else the first
    section title, else `fallback_title`; headings are the section titles in order (the
    document title first); body is the text of paragraphs, list items, tables, admonitions and
    code, blocks separated by a blank line. Raises PageError for a message at level SEVERE or
    above, or when docutils itself fails on the page.
    """
    stream = io.StringIO()
    try:
        with _permissive():
            document = publish_doctree(page, settings_overrides=_settings(stream))
    except Exception as exc:  # docutils' own failure on this page, whatever it is
        raise PageError(f"reStructuredText could not be parsed: {exc}") from exc
    severe = [m for m in document.findall(nodes.system_message) if m.get("level", 0) >= SEVERE]
    if severe:
        first = severe[0]
        raise PageError(
            f"reStructuredText line {first.get('line', '?')}: "
            + " ".join(first.children[0].astext().split())
            if first.children
            else "reStructuredText: severe error"
        )
    if stream.getvalue().strip():
        raise PageError(" ".join(stream.getvalue().split())[:500])
    headings: list[str] = []
    lines: list[str] = []
    _blocks(document, headings, lines)
    title = headings[0] if headings else fallback_title
    return {
        "title": title,
        "headings": [h for h in headings if h],
        "body": re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip(),
    }

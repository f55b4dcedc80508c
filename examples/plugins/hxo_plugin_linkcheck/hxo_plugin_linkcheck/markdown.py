"""Links and anchors of a Markdown page, and how a link target resolves in a docs tree.

Pure functions (no Django, no files) so they are tested on strings. What counts as a link:
inline links and images `[text](dest "title")`, reference definitions `[id]: dest`,
autolinks `<https://...>` and HTML `href`/`src` attributes, outside fenced code blocks and
code spans. Anchors are GitHub's heading slugs (lower case, punctuation dropped, spaces to
hyphens, repeats numbered `-1`, `-2`), explicit `{#id}` heading attributes, and HTML `id` /
`name` attributes.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from urllib.parse import unquote

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
ATX = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*?)[ \t]*#*[ \t]*$")
SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
CODE_SPAN = re.compile(r"(`+)(?:.+?)\1")
# [text](dest) and ![alt](dest); dest is <...> or runs to whitespace or the closing paren,
# allowing one level of balanced parentheses (wiki-style URLs).
INLINE = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>\n]*>|(?:[^\s()]|\([^\s()]*\))*)"
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)"
)
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>\n]*>|\S+)")
AUTOLINK = re.compile(r"<((?:https?|ftp|mailto):[^>\s]+)>")
HTML_LINK = re.compile(r"""\b(?:href|src)\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
HTML_ID = re.compile(r"""<[a-z][^>]*\b(?:id|name)\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
ATTR_ID = re.compile(r"\s*\{[^}]*#([A-Za-z][\w:.-]*)[^}]*\}\s*$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# Markup that is not text of a heading. Underscores stay: `snake_case` is text, and GitHub keeps
# them in slugs.
INLINE_MARKUP = re.compile(r"!?\[([^\]]*)\]\([^)]*\)|<[^>]+>|[*~`]")


@dataclasses.dataclass(frozen=True)
class Link:
    line: int  # 1-based
    target: str


def _lines_outside_code(text: str) -> list[tuple[int, str]]:
    """(line number, line) for lines outside fenced code, with code spans blanked out."""
    found = []
    fence = ""
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        match = FENCE.match(line)
        if fence:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = ""
            continue
        if match:
            fence = match.group(1)
            continue
        found.append((number, CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)))
    return found


def links(text: str) -> list[Link]:
    """Every link target of the page, in order, with its line."""
    found = []
    for number, line in _lines_outside_code(text):
        ref = REFERENCE.match(line)
        if ref:
            found.append(Link(number, ref.group(1).strip("<>")))
            continue
        for match in INLINE.finditer(line):
            found.append(Link(number, match.group(1).strip("<>")))
        for match in AUTOLINK.finditer(line):
            found.append(Link(number, match.group(1)))
        for match in HTML_LINK.finditer(line):
            value = match.group(1) if match.group(1) is not None else match.group(2)
            found.append(Link(number, value))
    return found


def slugify(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = INLINE_MARKUP.sub(lambda m: m.group(1) or "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a link may name on this page."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    lines = _lines_outside_code(text)
    for i, (number, line) in enumerate(lines):
        heading = None
        atx = ATX.match(line)
        if atx:
            heading = atx.group(1)
        elif (
            i + 1 < len(lines)
            and line.strip()
            and lines[i + 1][0] == number + 1
            and SETEXT.match(lines[i + 1][1])
            and not re.match(r"^\s*([-*+]|\d+[.)])\s", line)
        ):
            heading = line.strip()
        for match in HTML_ID.finditer(line):
            found.add(match.group(1) if match.group(1) is not None else match.group(2))
        if heading is None:
            continue
        explicit = ATTR_ID.search(heading)
        if explicit:  # `{#id}` replaces the heading's own slug (Pandoc, MkDocs attr_list)
            found.add(explicit.group(1))
            continue
        slug = slugify(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a link points: `kind` is external, anchor (this page), route, path, or empty."""

    kind: str
    path: str = ""  # a workspace-relative path (kind "path"), or a route (kind "route")
    fragment: str = ""


def classify(target: str, page_path: str) -> Target:
    """Split a link target; relative paths are resolved against the page's directory.

    A path that climbs out of the workspace keeps its leading `..` so the caller can refuse it.
    """
    target = target.strip()
    if not target:
        return Target("empty")
    if target.startswith("//") or SCHEME.match(target):
        return Target("external")
    path, _, fragment = target.partition("#")
    path = path.split("?", 1)[0]
    fragment = unquote(fragment)
    if not path:
        return Target("anchor", fragment=fragment)
    path = unquote(path)
    if path.startswith("/"):
        return Target("route", path=path, fragment=fragment)
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(page_path), path))
    if path.endswith("/") and joined != ".":
        joined += "/"
    return Target("path", path=joined, fragment=fragment)


def anchor_matches(fragment: str, known: set[str]) -> bool:
    return fragment in known or fragment.lower() in {a.lower() for a in known}

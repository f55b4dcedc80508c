"""docs.index: the `by_route_map` partitioner and the `docs_index` executor.

The route map turns a documentation tree into routes. Markdown pages (`.md`, `.markdown`, and
`.mdx` read as Markdown): `docs/guides/deploy.md` → `/docs/guides/deploy/`,
`docs/guides/index.md` (or README.md) → `/docs/guides/`. reStructuredText pages (`.rst`, and
`.txt` inside a Sphinx tree: a folder holding `conf.py`, from the page's folder up to the
stage's root) follow Sphinx's routes: the path without its suffix, `index` is the folder.
Partitions are the top-level route prefixes (`/docs/guides/`; pages directly in the root share
`/docs/`). The executor extracts title, headings and plain text from each page and upserts
`DocPage` rows by (workspace, route); the full-text index follows the table (FTS5 triggers on
SQLite, a GIN expression index on PostgreSQL; see migration 0002 and `runs_app.search`). A
partition owns its prefix, so pages removed from the tree are removed from the index; a page
that cannot be read is reported (`failed_pages`) and the rest are indexed, but a partition
none of whose pages could be read fails.
"""

from __future__ import annotations

import codecs
import html
import re
from pathlib import PurePosixPath
from typing import Any

import yaml
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.html import strip_tags
from markdown_it import MarkdownIt
from markdown_it.token import Token

from blueprints_app.registry import (
    ComponentError,
    ExecutionContext,
    Executor,
    PartitionContext,
    PartitionSpec,
    StageManifest,
    fields_schema,
    register_executor,
    register_partitioner,
)
from runs_app.kinds.base import (
    INVALID_INPUTS,
    database_identity,
    digest_of,
    plural,
    require_input,
    require_manifest,
)
from runs_app.kinds.files import (
    Beat,
    fingerprints,
    pin,
    pinned_workspace,
    read_verified,
    refused_report,
)
from runs_app.kinds.rst import PageError, extract_rst
from runs_app.kinds.workspace import WorkspacePartitioner
from runs_app.models import DocPage
from runs_app.search import spaceless

MARKDOWN = "markdown"
RST = "rst"
MARKDOWN_SUFFIXES = (".md", ".markdown", ".mdx")
RST_SUFFIXES = (".rst",)
SPHINX_SUFFIXES = (".rst", ".txt")  # Sphinx trees (Django's docs) also write reST as .txt
SPHINX_CONF = "conf.py"
INDEX_STEMS = {MARKDOWN: ("index", "readme"), RST: ("index",)}
PREVIEW_PAGES = 500
# Error code of a partition none of whose pages could be read.
NO_READABLE_PAGE = "no_readable_page"
# Folders that are not documentation pages: a Sphinx build's output (`_build/`, default in
# Sphinx's exclude_patterns), tool environments, dependencies. Hidden folders (`.git`,
# `.venv`, `.tox`) are skipped too. Skipped folders are listed in the manifest.
SKIPPED_DIRS = frozenset({"_build", "node_modules", "__pycache__", "site-packages"})
# Source characters parsed per page, as a multiple of the indexed cap: markup is a fraction
# of a page, so this is enough to fill the cap, and parsing stays bounded too.
SOURCE_FACTOR = 4


def skipped_dir(rel_to_root: str) -> str | None:
    """The folder (relative to the root) that keeps a page out of the tree: the first of its
    folders that is hidden (starts with ".") or in SKIPPED_DIRS; None for a page to index."""
    parts = PurePosixPath(rel_to_root).parts[:-1]
    for i, part in enumerate(parts):
        if part.startswith(".") or part in SKIPPED_DIRS:
            return "/".join(parts[: i + 1])
    return None


def decode_page(data: bytes) -> str:
    """The text of a page's bytes: UTF-8 (with or without a BOM), or UTF-16 with its BOM.

    Raises PageError (a per-page failure, never retried: the bytes will not change) for bytes
    that are not text in those encodings, naming the first bad byte and its offset."""
    try:
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return data.decode("utf-16")
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1].hex()
        raise PageError(
            f"not UTF-8 text: byte 0x{bad} at offset {exc.start} ({exc.encoding}: "
            f"{exc.reason}); save the page as UTF-8"
        ) from None


def max_indexed_chars() -> int:
    """HXO_DOCS_MAX_INDEXED_CHARS: the most characters of headings and body indexed per page."""
    return int(getattr(settings, "HXO_DOCS_MAX_INDEXED_CHARS", 1_000_000))


def read_page(data: bytes, fallback_title: str, fmt: str = MARKDOWN) -> dict[str, Any]:
    """A page's bytes as its index row: `extract`'s {"title", "headings", "body", "words"}
    plus "truncated" (the text was cut at max_indexed_chars(): at most SOURCE_FACTOR times it
    of the source is parsed, at a line end, then headings and body are cut to the cap) and
    "spaceless" (its text in scripts written without spaces, for the substring index).

    Raises PageError for bytes that are not text (decode_page) or a page the parser rejects.
    """
    cap = max_indexed_chars()
    text = decode_page(data)
    truncated = False
    if len(text) > cap * SOURCE_FACTOR:
        cut = text.rfind("\n", 0, cap * SOURCE_FACTOR)
        text = text[: cut if cut > 0 else cap * SOURCE_FACTOR]
        truncated = True
    info = extract(text, fallback_title, fmt)
    # Markdown nested deeper than the parser goes (markdown-it's maxNesting) loses what is
    # inside: the page is indexed with what could be read and reported as truncated.
    truncated = info.pop("nesting_cut", False) or truncated
    headings, kept = [], 0
    for heading in info["headings"]:
        if kept + len(heading) + 1 > cap:
            truncated = True
            break
        headings.append(heading)
        kept += len(heading) + 1
    room = max(0, cap - kept)
    if len(info["body"]) > room:
        info["body"] = info["body"][:room]
        info["words"] = len(re.findall(r"\w+", info["body"]))
        truncated = True
    info["headings"] = headings
    info["truncated"] = truncated
    info["spaceless"] = spaceless(info["title"], "\n".join(headings), info["body"])
    return info


def page_format(rel_to_root: str, sphinx_dirs: set[str]) -> str | None:
    """The format of a file of the tree, by suffix: MARKDOWN, RST, or None (not a page).

    `rel_to_root` is relative to the stage's root; `sphinx_dirs` are the folders (relative to
    the root, "." for the root) that hold a Sphinx `conf.py`: a `.txt` file is a reST page
    when its folder or one of its ancestors up to the root is one of them.
    """
    path = PurePosixPath(rel_to_root)
    suffix = path.suffix.lower()
    if suffix in MARKDOWN_SUFFIXES:
        return MARKDOWN
    if suffix in RST_SUFFIXES:
        return RST
    if suffix in SPHINX_SUFFIXES and any(str(p) in sphinx_dirs for p in path.parents):
        return RST
    return None


def route_of(rel_to_root: str, base_route: str, fmt: str = MARKDOWN) -> str:
    """The route of a page: `base_route` + its path without the suffix, as folders; an index
    page (`index`, or `README` for Markdown) is its folder's route."""
    path = PurePosixPath(rel_to_root)
    parts = list(path.with_suffix("").parts)
    if parts and parts[-1].lower() in INDEX_STEMS[fmt]:
        parts.pop()
    return base_route + "".join(f"{p}/" for p in parts)


def prefix_of(rel_to_root: str, base_route: str) -> str:
    parts = PurePosixPath(rel_to_root).parts
    return f"{base_route}{parts[0]}/" if len(parts) > 1 else base_route


# --- Markdown to text ---------------------------------------------------------------------

# CommonMark, plus the two GitHub extensions docs trees use most (tables, ~~strikethrough~~),
# both built into markdown-it-py. Raw HTML stays off the page text: its tags are dropped.
_MARKDOWN = MarkdownIt("commonmark").enable(["table", "strikethrough"])
# Blocks after which the text continues in a new paragraph.
_BLOCK_ENDS = {"paragraph_close", "heading_close", "table_close", "blockquote_close"}


def normalise(source: str) -> str:
    """A page as text to parse: a leading UTF-8 byte order mark dropped, and `\\r\\n` and lone
    `\\r` line endings made `\\n` (both parsers see only `\\n`)."""
    return source.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def front_matter(source: str) -> tuple[str, str]:
    """(title, the page without its front matter) of a page that opens with YAML front
    matter between `---` lines (closed by `---` or `...`); ("", page) otherwise.

    The block is read with PyYAML's safe loader, so quoted, folded (`title: >`) and literal
    titles read as YAML says; a block that is not YAML, or has no text `title`, gives "" (the
    block is still not part of the page). Whitespace inside the title is collapsed.
    """
    lines = source.split("\n")
    if not lines or lines[0].strip() != "---":
        return "", source
    for end in range(1, len(lines)):
        if lines[end].strip() in ("---", "..."):
            try:
                meta = yaml.safe_load("\n".join(lines[1:end]))
            except yaml.YAMLError:
                meta = None
            title = meta.get("title") if isinstance(meta, dict) else None
            if not isinstance(title, str | int | float) or isinstance(title, bool):
                title = ""
            return " ".join(str(title).split()), "\n".join(lines[end + 1 :])
    return "", source


def inline_text(token: Token) -> str:
    """The plain text of an inline token: text, code spans and image alt texts; link
    destinations and HTML tags dropped (entities are already decoded by the parser)."""
    parts: list[str] = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type == "image":
            parts.append(inline_text(child))  # the alt text, parsed as inline content
        elif child.type in ("softbreak", "hardbreak"):
            parts.append("\n")
    return "".join(parts).strip()


def extract(source: str, fallback_title: str, fmt: str = MARKDOWN) -> dict[str, Any]:
    """Title, headings and plain text of a page: {"title", "headings", "body", "words"}.

    The text is normalised first (BOM, line endings). Markdown (`fmt` MARKDOWN) is parsed as
    CommonMark: the title is the front matter's `title`, else the first level-1 heading, else
    the first heading, else `fallback_title`. reStructuredText (`fmt` RST) is parsed with
    docutils (`runs_app.kinds.rst.extract_rst`): the document title, else the first section
    title. Titles are at most 300 characters. The body keeps the text of paragraphs, list
    items, quotes and table cells, and the content of code blocks (code is searchable text
    too), without markup; blocks are separated by a blank line.

    Raises PageError when the page cannot be read: a NUL character (a binary file, not text),
    a reST page docutils reports as severe, or a parser failure on the page.
    """
    text = normalise(source)
    if "\x00" in text:
        raise PageError("a binary file, not text (it holds NUL bytes)")
    if fmt == RST:
        info = extract_rst(text, fallback_title)
    else:
        try:
            info = _extract_markdown(text, fallback_title)
        except Exception as exc:  # the parser's failure on this page (deep nesting...)
            raise PageError(f"Markdown could not be parsed: {type(exc).__name__}: {exc}") from exc
    info["title"] = info["title"][:300]
    info["words"] = len(re.findall(r"\w+", info["body"]))
    return info


def _extract_markdown(source: str, fallback_title: str) -> dict[str, Any]:
    title, page = front_matter(source)
    headings: list[tuple[int, str]] = []
    lines: list[str] = []
    level = 0  # inside a heading of this level
    tokens = _MARKDOWN.parse(page)
    deepest = _MARKDOWN.options.maxNesting - 1
    for token in tokens:
        if token.type == "heading_open":
            level = int(token.tag[1])
        elif token.type == "heading_close":
            level = 0
        elif token.type == "inline":
            text = inline_text(token)
            if level:
                headings.append((level, text))
            else:
                lines.append(text)
        elif token.type in ("fence", "code_block"):
            lines.extend(line.strip() for line in token.content.splitlines())
            lines.append("")
        elif token.type == "html_block":
            lines.append(html.unescape(strip_tags(token.content)).strip())
            lines.append("")
        elif token.type in _BLOCK_ENDS and not token.hidden:
            lines.append("")
    if not title:
        h1 = [text for lvl, text in headings if lvl == 1]
        title = h1[0] if h1 else (headings[0][1] if headings else fallback_title)
    return {
        "title": title,
        "headings": [text for _level, text in headings if text],
        "body": re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip(),
        # The parser stops nesting at maxNesting and drops what is deeper (silently).
        "nesting_cut": any(token.level >= deepest for token in tokens),
    }


@register_partitioner
class ByRouteMap(WorkspacePartitioner):
    name = "by_route_map"
    inputs_schema = fields_schema({"route": "string", "stage_kind": "string"})
    description = (
        "Maps a documentation tree (Markdown, reStructuredText, Sphinx) to routes and makes one "
        "partition per top-level route prefix."
    )
    root_default = "docs"
    root_help = "Directory of the documentation tree (Markdown, reStructuredText or Sphinx)."
    file_filters = False  # every page of the tree is routed: a route map has no holes

    @classmethod
    def own_params(cls) -> dict[str, Any]:
        return {
            "base_route": {
                "type": "string",
                "pattern": "^/([A-Za-z0-9._~-]+/)*$",
                "default": "/docs/",
                "maxLength": 200,
                "title": "Base route",
                "description": "Route of the root page; every route starts with it.",
            },
        }

    def partition(self, ctx: PartitionContext) -> StageManifest:
        params, ws, root_rel, listed = self.workspace_files(ctx.params)
        base = params["base_route"]

        def inner(rel: str) -> str:
            return rel if root_rel == "." else str(PurePosixPath(rel).relative_to(root_rel))

        sphinx_dirs = {
            str(PurePosixPath(inner(f.rel)).parent)
            for f in listed
            if PurePosixPath(f.rel).name == SPHINX_CONF
        }
        skipped: dict[str, int] = {}
        kept = []
        for f in listed:
            folder = skipped_dir(inner(f.rel))
            if folder is None:
                kept.append(f)
            else:
                skipped[folder] = skipped.get(folder, 0) + 1
        formats = {f.rel: page_format(inner(f.rel), sphinx_dirs) for f in kept}
        files = [f for f in kept if formats[f.rel]]
        if not files:
            # An empty success would hide a tree in a format HXO does not read.
            raise ComponentError(
                f"no documentation page under {root_rel!r} (pages are .md, .markdown, .mdx, "
                ".rst, and .txt in a Sphinx tree: a folder with conf.py)",
                code=NO_READABLE_PAGE,
                path="params.root",
            )
        pages = []
        for row in pin(files):
            fmt = formats[row[0]]
            pages.append(
                {
                    "path": row[0],
                    "format": fmt,
                    "route": route_of(inner(row[0]), base, fmt),
                    "prefix": prefix_of(inner(row[0]), base),
                    "size": row[1],
                    "sha256": row[2],
                    "row": row,
                }
            )
        # Two files mapping to one route (guide.md and guide/index.md): the first path wins,
        # deterministically, and the other is reported in the manifest.
        seen: dict[str, dict] = {}
        shadowed = []
        for page in sorted(pages, key=lambda p: p["path"]):
            if page["route"] in seen:
                shadowed.append(page["path"])
            else:
                seen[page["route"]] = page
        pages = sorted(seen.values(), key=lambda p: p["route"])
        prefixes: dict[str, list[dict]] = {}
        for page in pages:
            prefixes.setdefault(page["prefix"], []).append(page)
        specs = []
        for prefix, members in sorted(prefixes.items()):
            size = sum(p["size"] for p in members)
            specs.append(
                PartitionSpec(
                    inputs={"route": prefix, "stage_kind": ctx.kind.kind},
                    fingerprints=fingerprints(p["row"] for p in members),
                    weight=size,
                    label=f"{prefix}: {plural(len(members), 'page')}, {filesizeformat(size)}",
                )
            )
        return StageManifest(
            partitions=specs,
            data={
                "partitioner": self.name,
                "workspace": ws.name,
                "root": root_rel,
                "base_route": base,
                "pages": [{k: v for k, v in p.items() if k != "row"} for p in pages],
                # Every prefix of the tree: pages of a prefix not in it are gone from the tree.
                "prefixes": sorted(prefixes),
                "shadowed": shadowed,
                # Folders not indexed (build output, dependencies, hidden): files in each.
                "skipped_dirs": dict(sorted(skipped.items())[:PREVIEW_PAGES]),
            },
        )


@register_executor
class DocsIndex(Executor):
    name = "docs_index"
    inputs_schema = fields_schema({"route": "string"})
    output_schema = fields_schema(
        {
            "status": {"type": "string", "const": "indexed"},
            "route": "string",
            "docs_indexed": "integer",
        }
    )
    description = (
        "Extracts title, headings and text of Markdown and reStructuredText pages into the "
        "full-text index "
        "(SQLite FTS5 or PostgreSQL full-text search), upserting by route."
    )
    idempotent = True
    supports_dry_run = True

    def effect_exists(self, ctx: ExecutionContext, output: dict[str, Any]) -> bool:
        """Every page of the partition's route prefix has its row in the docs index of HXO's
        database (the recorded one) for this workspace, with the pinned SHA-256: the rows the
        full-text index follows."""
        effect = output.get("effect")
        if not isinstance(effect, dict) or effect.get("database") != database_identity():
            return False
        ws = pinned_workspace(ctx)
        pages = _pages(ctx)
        found = _page_rows(ws.name, [p["route"] for p in pages])
        unreadable = set(effect.get("failed_routes", ()))  # reported, and not in the index
        expected = {(p["route"], p["sha256"]) for p in pages if p["route"] not in unreadable}
        if {(f[0], f[-1]) for f in found} != expected:
            return False
        if _gone_prefixes(ws.name, ctx).exists():
            return False
        if effect.get("pages_digest") != _pages_digest(pages):
            return False
        # Every column the apply wrote, not only the hash: a row whose title or text was
        # changed since is not the effect (older outputs lack the digest).
        recorded = effect.get("content_digest")
        return recorded is None or recorded == digest_of(found)

    def execute(self, ctx: ExecutionContext) -> dict[str, Any]:
        ws = pinned_workspace(ctx)
        prefix = require_input(ctx, "route", str)
        pages = _pages(ctx)
        existing = dict(
            DocPage.objects.filter(workspace=ws.name, prefix=prefix).values_list("route", "sha256")
        )
        routes = {p["route"] for p in pages}
        stale = sorted(r for r in existing if r not in routes)
        beat = Beat(ctx)
        extracted = []
        failed: list[dict[str, str]] = []
        for page in pages:
            beat()
            data = read_verified(ws, (page["path"], page["size"], page["sha256"], 0o644))
            fallback = PurePosixPath(page["path"]).stem.replace("-", " ").replace("_", " ")
            try:
                info = read_page(
                    data,
                    fallback.title(),
                    page.get("format", MARKDOWN),  # manifests before reST have no format
                )
            except PageError as exc:
                # One page that cannot be read does not stop its prefix; it is reported.
                failed.append({"path": page["path"], "route": page["route"], "reason": str(exc)})
                continue
            extracted.append((page, info))
        if not extracted:
            raise ComponentError(
                f"{prefix}: none of its {plural(len(pages), 'page')} could be read: "
                + "; ".join(f"{f['path']}: {f['reason']}" for f in failed[:5]),
                code=NO_READABLE_PAGE,
                # The pages are pinned by SHA-256: a retry reads the same bytes and fails alike.
                permanent=True,
                path="inputs.route",
            )
        # A page that cannot be read now is not left in the index with what it said before.
        failed_routes = sorted(f["route"] for f in failed if f["route"] in existing)
        gone = _gone_prefixes(ws.name, ctx)
        if ctx.dry_run:
            actions = [
                {
                    "route": page["route"],
                    "path": page["path"],
                    "title": info["title"],
                    "headings": len(info["headings"]),
                    "words": info["words"],
                    "truncated": info["truncated"],
                    "action": "unchanged"
                    if existing.get(page["route"]) == page["sha256"]
                    else ("update" if page["route"] in existing else "add"),
                }
                for page, info in extracted
            ]
            changes = sum(a["action"] != "unchanged" for a in actions)
            return {
                "summary": f"{prefix}: would index {plural(len(extracted), 'page')} "
                f"({changes} new or changed"
                + (f", {len(stale)} to remove" if stale else "")
                + (f", {len(failed)} unreadable" if failed else "")
                + ")",
                "pages": actions[:PREVIEW_PAGES],
                "pages_truncated": len(actions) > PREVIEW_PAGES,
                "to_remove": stale + failed_routes,
                "failed_pages": failed,
                **refused_report(ctx),
                "gone_prefixes": sorted(set(gone.values_list("prefix", flat=True))),
            }
        now = timezone.now()
        with transaction.atomic():
            removed, _ = DocPage.objects.filter(
                workspace=ws.name, prefix=prefix, route__in=stale + failed_routes
            ).delete()
            removed += gone.delete()[0]
            for page, info in extracted:
                # update_or_create, not bulk upsert: the FTS5 triggers must see each change.
                DocPage.objects.update_or_create(
                    workspace=ws.name,
                    route=page["route"],
                    defaults={
                        "prefix": prefix,
                        "path": page["path"],
                        "title": info["title"],
                        "headings": "\n".join(info["headings"]),
                        "body": info["body"],
                        "words": info["words"],
                        "truncated": info["truncated"],
                        "spaceless": info["spaceless"],
                        "size": page["size"],
                        "sha256": page["sha256"],
                        "indexed_at": now,
                        "run_id": ctx.run_id,
                        "partition_id": ctx.partition_id,
                    },
                )
            content = digest_of(_page_rows(ws.name, [p["route"] for p in pages]))
            beat(force=True)  # LeaseLost here rolls every page of the partition back
        return {
            "status": "indexed",
            "route": prefix,
            "docs_indexed": len(extracted),
            **refused_report(ctx),
            "words": sum(info["words"] for _page, info in extracted),
            "removed": removed,
            "failed_pages": failed,
            # Pages whose text was cut at HXO_DOCS_MAX_INDEXED_CHARS (the rest is not found).
            "truncated_pages": [page["path"] for page, info in extracted if info["truncated"]],
            "effect": {
                "database": database_identity(),
                "table": DocPage._meta.db_table,
                "workspace": ws.name,
                "pages": len(pages),
                "pages_digest": _pages_digest(pages),
                "content_digest": content,
                "failed_routes": sorted(f["route"] for f in failed),
            },
        }


def _pages(ctx: ExecutionContext) -> list[dict[str, Any]]:
    """The manifest's pages under the partition's route prefix (at least one)."""
    prefix = require_input(ctx, "route", str)
    pages = [p for p in require_manifest(ctx, "pages") if p["prefix"] == prefix]
    if not pages:
        raise ComponentError(
            f"no page of the manifest has the route prefix {prefix!r}",
            code=INVALID_INPUTS,
            permanent=True,
            path="inputs.route",
        )
    return pages


def _gone_prefixes(workspace: str, ctx: ExecutionContext) -> QuerySet[DocPage]:
    """Rows of this stage's tree (its root, its base route) whose route prefix is no longer in
    the tree: the manifest's `prefixes` are every prefix the partitioner saw, so a removed
    directory's pages are found here. Every partition removes them, in its own transaction, so
    whichever commits first does it and the others find nothing (idempotent). A manifest
    without `prefixes` (written before it was recorded) removes nothing."""
    prefixes = ctx.manifest.get("prefixes")
    if not isinstance(prefixes, list):
        return DocPage.objects.none()
    base = require_manifest(ctx, "base_route")
    root = require_manifest(ctx, "root")
    rows = DocPage.objects.filter(workspace=workspace, prefix__startswith=base).exclude(
        prefix__in=prefixes
    )
    return rows if root == "." else rows.filter(path__startswith=f"{root}/")


PAGE_COLUMNS = ("route", "prefix", "path", "title", "headings", "body", "words", "size", "sha256")


def _page_rows(workspace: str, routes: list[str]) -> list[list[Any]]:
    """The docs index rows of `routes` as stored now: every column the apply writes except
    when and by whom (PAGE_COLUMNS, the SHA-256 last), ordered by route."""
    return [
        list(row)
        for row in DocPage.objects.filter(workspace=workspace, route__in=routes)
        .order_by("route")
        .values_list(*PAGE_COLUMNS)
    ]


def _pages_digest(pages: list[dict[str, Any]]) -> str:
    return digest_of(sorted([p["route"], p["path"], p["sha256"]] for p in pages))

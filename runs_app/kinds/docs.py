"""docs.index: the `by_route_map` partitioner and the `docs_index` executor.

The route map turns a Markdown tree into routes: `docs/guides/deploy.md` → `/docs/guides/deploy/`,
`docs/guides/index.md` (or README.md) → `/docs/guides/`. Partitions are the top-level route
prefixes (`/docs/guides/`; pages directly in the root share `/docs/`). The executor extracts
title, headings and plain text from each page and upserts `DocPage` rows by (workspace, route);
the full-text index follows the table (FTS5 triggers on SQLite, a GIN expression index on
PostgreSQL; see migration 0002 and `runs_app.search`). A partition owns its prefix, so pages
removed from the tree are removed from the index.
"""

from __future__ import annotations

import html
import re
from pathlib import PurePosixPath
from typing import Any

from django.db import transaction
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
from runs_app.kinds.files import Beat, fingerprints, pin, pinned_workspace, read_verified
from runs_app.kinds.workspace import WorkspacePartitioner
from runs_app.models import DocPage

PAGE_SUFFIXES = (".md", ".markdown")
INDEX_STEMS = ("index", "readme")
PREVIEW_PAGES = 500


def route_of(rel_to_root: str, base_route: str) -> str:
    path = PurePosixPath(rel_to_root)
    parts = list(path.with_suffix("").parts)
    if parts and parts[-1].lower() in INDEX_STEMS:
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


def front_matter(source: str) -> tuple[str, str]:
    """(title, the page without its front matter) of a page that opens with YAML front
    matter between `---` lines (closed by `---` or `...`); ("", page) otherwise.

    Only `title:` is read, as a plain one-line value (quotes around it dropped).
    """
    lines = source.split("\n")
    if not lines or lines[0].strip() != "---":
        return "", source
    for end in range(1, len(lines)):
        if lines[end].strip() in ("---", "..."):
            title = ""
            for meta in lines[1:end]:
                key, _, value = meta.partition(":")
                if key.strip().lower() == "title" and value.strip():
                    title = value.strip().strip("\"'")
            return title, "\n".join(lines[end + 1 :])
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


def extract(source: str, fallback_title: str) -> dict[str, Any]:
    """Title, headings and plain text of a Markdown page, parsed as CommonMark.

    The title is the front matter's `title`, else the first level-1 heading, else the first
    heading, else `fallback_title` (at most 300 characters). The body keeps the text of
    paragraphs, list items, quotes and table cells, and the content of code blocks (code is
    searchable text too), without Markdown syntax; blocks are separated by a blank line.
    """
    title, page = front_matter(source.replace("\r\n", "\n"))
    headings: list[tuple[int, str]] = []
    lines: list[str] = []
    level = 0  # inside a heading of this level
    for token in _MARKDOWN.parse(page):
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
    paragraphs = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return {
        "title": title[:300],
        "headings": [text for _level, text in headings if text],
        "body": paragraphs,
        "words": len(re.findall(r"\w+", paragraphs)),
    }


@register_partitioner
class ByRouteMap(WorkspacePartitioner):
    name = "by_route_map"
    description = (
        "Maps a Markdown documentation tree to routes and makes one partition per top-level "
        "route prefix."
    )
    root_default = "docs"
    root_help = "Directory of the Markdown documentation tree."
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
        files = [f for f in listed if PurePosixPath(f.rel).suffix.lower() in PAGE_SUFFIXES]
        pages = []
        for row in pin(files):
            inner = row[0] if root_rel == "." else str(PurePosixPath(row[0]).relative_to(root_rel))
            pages.append(
                {
                    "path": row[0],
                    "route": route_of(inner, base),
                    "prefix": prefix_of(inner, base),
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
                "shadowed": shadowed,
            },
        )


@register_executor
class DocsIndex(Executor):
    name = "docs_index"
    description = (
        "Extracts title, headings and text of Markdown pages into the full-text index "
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
        if {(f[0], f[-1]) for f in found} != {(p["route"], p["sha256"]) for p in pages}:
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
        for page in pages:
            beat()
            data = read_verified(ws, (page["path"], page["size"], page["sha256"], 0o644))
            fallback = PurePosixPath(page["path"]).stem.replace("-", " ").replace("_", " ")
            extracted.append((page, extract(data.decode("utf-8", "replace"), fallback.title())))
        if ctx.dry_run:
            actions = [
                {
                    "route": page["route"],
                    "path": page["path"],
                    "title": info["title"],
                    "headings": len(info["headings"]),
                    "words": info["words"],
                    "action": "unchanged"
                    if existing.get(page["route"]) == page["sha256"]
                    else ("update" if page["route"] in existing else "add"),
                }
                for page, info in extracted
            ]
            changes = sum(a["action"] != "unchanged" for a in actions)
            return {
                "summary": f"{prefix}: would index {plural(len(pages), 'page')} "
                f"({changes} new or changed" + (f", {len(stale)} to remove" if stale else "") + ")",
                "pages": actions[:PREVIEW_PAGES],
                "pages_truncated": len(actions) > PREVIEW_PAGES,
                "to_remove": stale,
            }
        now = timezone.now()
        with transaction.atomic():
            removed, _ = DocPage.objects.filter(
                workspace=ws.name, prefix=prefix, route__in=stale
            ).delete()
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
            "words": sum(info["words"] for _page, info in extracted),
            "removed": removed,
            "effect": {
                "database": database_identity(),
                "table": DocPage._meta.db_table,
                "workspace": ws.name,
                "pages": len(pages),
                "pages_digest": _pages_digest(pages),
                "content_digest": content,
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

"""`docs.linkcheck`: the partitioner `by_doc_pages` and the executor `docs_linkcheck`.

Importing this module registers both (the entry point `hxo.plugins: linkcheck` names it).

The partitioner maps a workspace's Markdown tree to routes exactly as `docs.index` does
(`by_route_map`), so a link check and the index agree on what `/docs/guides/` is, then splits
each top-level route prefix into chunks of at most `pages_per_partition` pages. It pins every
page's hash and the list of the tree's other files: link targets are judged against what the
dry-run saw, and a page changed since refuses the apply (`workspace_changed`).

The executor reads its pages (hash-checked, through the workspace, so a symlink out of it is
refused), and checks every link: relative paths and `/docs/...` routes must name a page or a
file of the workspace, `#anchors` must exist on the page they point to. External links are
counted and never fetched: executors do not leave registered workspaces. The apply writes the
partition's report into artifact storage under a content-addressed name and, with
`fail_on_broken` (the default), fails the partition when a link is broken, so a release plan
that puts `docs.linkcheck` before `docs.index` never indexes broken documentation. Its output
names the report by storage location and SHA-256 (`effect`), and `effect_exists` checks the
report is still there with that hash before HXO reuses a partition in a later apply.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from django.core.files.storage import storages
from django.template.defaultfilters import filesizeformat

from blueprints_app.registry import (
    ComponentError,
    ExecutionContext,
    Executor,
    PartitionContext,
    Partitioner,
    PartitionSpec,
    StageManifest,
    register_executor,
    register_partitioner,
)
from hxo_plugin_linkcheck import markdown
from runs_app.kinds.base import (
    INVALID_INPUTS,
    plural,
    publish,
    require_input,
    require_manifest,
    resolve_params,
    storage_effect,
    stored_object_matches,
)
from runs_app.kinds.docs import INDEX_STEMS, MARKDOWN, MARKDOWN_SUFFIXES, ByRouteMap
from runs_app.kinds.files import Beat, pinned_workspace, read_verified
from runs_app.workspaces import PATH_ESCAPE, Workspace, get_workspace

KIND = "docs.linkcheck"
BROKEN_LINKS = "broken_links"
MAX_LISTED = 200  # broken links listed in one partition's output; the report holds them all

# The job kind as a registry admin enters it in the admin (or imports kind.json).
KIND_DEFINITION: dict[str, Any] = {
    "kind": KIND,
    "description": "Check the links and anchors of a workspace's Markdown documentation",
    "partitioners": ["by_doc_pages"],
    "executors": ["docs_linkcheck"],
    "allow_non_idempotent": False,
    "require_dry_run": False,
    "default_slo_ms": 30000,
    "input_schema": {
        "type": "object",
        "properties": {
            "route": {"type": "string"},
            "chunk": {"type": "integer", "minimum": 0},
            "stage_kind": {"type": "string"},
        },
        "required": ["route", "chunk", "stage_kind"],
    },
    "output_schema": {
        "type": "object",
        "properties": {
            "status": {"type": "string", "const": "checked"},
            "route": {"type": "string"},
            "chunk": {"type": "integer"},
            "pages_checked": {"type": "integer"},
            "links_checked": {"type": "integer"},
            "broken": {"type": "integer"},
        },
        "required": ["status", "route", "chunk", "pages_checked", "links_checked", "broken"],
    },
    "result_status": "checked",
}


def _tree_digest(pages: list[dict[str, Any]], files: list[str]) -> str:
    """One fingerprint for everything a link may point at: a partition's result depends on
    the other pages' anchors too, so reusing it needs all of them unchanged."""
    rows = [[p["path"], p["sha256"]] for p in pages]
    return hashlib.sha256(json.dumps([rows, files], separators=(",", ":")).encode()).hexdigest()


@register_partitioner
class ByDocPages(Partitioner):
    name = "by_doc_pages"
    description = (
        "Maps a Markdown documentation tree to routes (as by_route_map does) and makes one "
        "partition per top-level route prefix and chunk of at most pages_per_partition pages."
    )

    @classmethod
    def get_params_schema(cls) -> dict[str, Any]:
        base = ByRouteMap.get_params_schema()
        return {
            **base,
            "properties": {
                **base["properties"],
                "pages_per_partition": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 1000,
                    "default": 50,
                    "title": "Pages per partition",
                    "description": "At most this many pages are checked by one partition.",
                },
                "check_anchors": {
                    "type": "boolean",
                    "default": True,
                    "title": "Check anchors",
                    "description": "A #fragment must name a heading or an id of its page.",
                },
                "fail_on_broken": {
                    "type": "boolean",
                    "default": True,
                    "title": "Fail on broken links",
                    "description": "The apply fails a partition that finds a broken link.",
                },
                "ignore": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1, "maxLength": 200},
                    "maxItems": 50,
                    "default": [],
                    "title": "Ignore",
                    "description": "Link targets matching one of these globs are not checked.",
                },
            },
        }

    def partition(self, ctx: PartitionContext) -> StageManifest:
        params = resolve_params(type(self), ctx.params)
        mapped = ByRouteMap().partition(
            PartitionContext(
                stage={
                    **ctx.stage,
                    "params": {k: params[k] for k in ("workspace", "root", "base_route")},
                },
                kind=ctx.kind,
            )
        )
        data = mapped.data
        ws = get_workspace(data["workspace"])
        pages: list[dict[str, Any]] = data["pages"]
        page_paths = {p["path"] for p in pages}
        files = sorted(f.rel for f in ws.list_files(params["root"]) if f.rel not in page_paths)
        tree = _tree_digest(pages, files)
        size = params["pages_per_partition"]
        by_prefix: dict[str, list[dict[str, Any]]] = {}
        for page in pages:
            by_prefix.setdefault(page["prefix"], []).append(page)
        specs = []
        for prefix, members in sorted(by_prefix.items()):
            for chunk, start in enumerate(range(0, len(members), size)):
                own = members[start : start + size]
                weight = sum(p["size"] for p in own)
                specs.append(
                    PartitionSpec(
                        inputs={"route": prefix, "chunk": chunk, "stage_kind": ctx.kind.kind},
                        fingerprints={
                            f"tree:{data['root']}": tree,
                            **{p["path"]: p["sha256"] for p in own},
                        },
                        weight=weight,
                        label=f"{prefix} #{chunk}: {plural(len(own), 'page')}, "
                        f"{filesizeformat(weight)}",
                    )
                )
        return StageManifest(
            partitions=specs,
            data={
                **data,
                "partitioner": self.name,
                "files": files,
                "pages_per_partition": size,
                "check_anchors": params["check_anchors"],
                "fail_on_broken": params["fail_on_broken"],
                "ignore": params["ignore"],
            },
        )


class Checker:
    """Judges link targets against the pinned tree; reads (and caches) target pages."""

    def __init__(self, ws: Workspace, manifest: dict[str, Any], beat: Callable[[], None]):
        self.ws = ws
        self.root = manifest["root"]
        self.base_route = manifest["base_route"]
        self.pages = {p["path"]: p for p in manifest["pages"]}
        self.routes = {p["route"]: p for p in manifest["pages"]}
        self.files = set(manifest.get("files", []))
        self.dirs = {str(PurePosixPath(f).parent) for f in [*self.files, *self.pages]}
        self.check_anchors = bool(manifest.get("check_anchors", True))
        self.ignore = list(manifest.get("ignore", []))
        self.beat = beat
        self._texts: dict[str, str] = {}
        self._anchors: dict[str, set[str]] = {}

    def text(self, path: str) -> str:
        if path not in self._texts:
            page = self.pages[path]
            self.beat()
            data = read_verified(self.ws, (path, page["size"], page["sha256"], 0o644))
            self._texts[path] = data.decode("utf-8", "replace")
        return self._texts[path]

    def anchors(self, path: str) -> set[str]:
        if path not in self._anchors:
            self._anchors[path] = markdown.anchors(self.text(path))
        return self._anchors[path]

    def _inside_root(self, path: str) -> bool:
        return self.root == "." or path == self.root or path.startswith(self.root + "/")

    def find(self, path: str) -> tuple[str, str]:
        """("page", path) | ("file", path) | ("missing", why) | ("escape", why)."""
        if path == ".." or path.startswith("../"):
            return "escape", "leaves the workspace"
        bare = path.rstrip("/") or "."
        if bare in self.pages:
            return "page", bare
        if bare in self.files:
            return "file", bare
        for stem in INDEX_STEMS[MARKDOWN]:
            for name in {stem, stem.upper()}:
                for suffix in MARKDOWN_SUFFIXES:
                    candidate = f"{bare}/{name}{suffix}" if bare != "." else f"{name}{suffix}"
                    if candidate in self.pages:
                        return "page", candidate
        for suffix in MARKDOWN_SUFFIXES:
            if not path.endswith("/") and bare + suffix in self.pages:
                return "page", bare + suffix
        if bare in self.dirs:
            return "file", bare  # a directory of the tree
        if self._inside_root(bare):
            return "missing", "no such page or file"
        # Outside the pinned tree but maybe in the workspace (../backend/app.py): look, through
        # the workspace's confinement.
        try:
            self.ws.resolve(bare, path="link", must_exist=True)
        except ComponentError as exc:
            if exc.code == PATH_ESCAPE:
                return "escape", "resolves outside the workspace"
            return "missing", "no such file in the workspace"
        return "file", bare

    def check_page(self, path: str) -> dict[str, Any]:
        counts = {"links": 0, "external": 0, "skipped": 0}
        broken: list[dict[str, Any]] = []

        def bad(link: markdown.Link, reason: str) -> None:
            broken.append(
                {"page": path, "line": link.line, "target": link.target, "reason": reason}
            )

        for link in markdown.links(self.text(path)):
            if any(fnmatch.fnmatchcase(link.target, p) for p in self.ignore):
                counts["skipped"] += 1
                continue
            counts["links"] += 1
            target = markdown.classify(link.target, path)
            if target.kind == "external":
                counts["external"] += 1
                continue
            if target.kind == "empty":
                bad(link, "empty link")
                continue
            page: str | None = path if target.kind == "anchor" else None
            if target.kind == "route":
                route = target.path
                if not route.startswith(self.base_route):
                    counts["skipped"] += 1  # a route of the site outside the docs
                    continue
                if not route.endswith("/") and "." not in route.rsplit("/", 1)[-1]:
                    route += "/"
                found = self.routes.get(route)
                if found is None:
                    bad(link, f"no page has the route {route}")
                    continue
                page = found["path"]
            elif target.kind == "path":
                what, where = self.find(target.path)
                if what in ("missing", "escape"):
                    bad(link, where)
                    continue
                page = where if what == "page" else None
            if (
                self.check_anchors
                and target.fragment
                and page is not None
                and not markdown.anchor_matches(target.fragment, self.anchors(page))
            ):
                bad(link, f"no anchor #{target.fragment} in {page}")
        return {**counts, "broken": broken}


def _report_name(ws: Workspace, body: bytes) -> str:
    return f"linkcheck/{ws.name}/{hashlib.sha256(body).hexdigest()}.json"


@register_executor
class DocsLinkcheck(Executor):
    name = "docs_linkcheck"
    description = (
        "Checks the links and anchors of Markdown pages against the pinned documentation tree "
        "(external links are counted, never fetched); the apply stores a report in artifact "
        "storage and fails on broken links unless fail_on_broken is off."
    )
    idempotent = True
    supports_dry_run = True

    def execute(self, ctx: ExecutionContext) -> dict[str, Any]:
        ws = pinned_workspace(ctx)
        prefix = require_input(ctx, "route", str)
        chunk = require_input(ctx, "chunk", int)
        size = require_manifest(ctx, "pages_per_partition")
        members = [p for p in require_manifest(ctx, "pages") if p["prefix"] == prefix]
        mine = members[chunk * size : (chunk + 1) * size]
        if not mine:
            raise ComponentError(
                f"the manifest has no chunk {chunk} of route prefix {prefix!r}",
                code=INVALID_INPUTS,
                path="inputs.chunk",
            )
        beat = Beat(ctx)
        checker = Checker(ws, ctx.manifest, beat)
        totals = {"links": 0, "external": 0, "skipped": 0}
        broken: list[dict[str, Any]] = []
        for page in mine:
            beat()
            found = checker.check_page(page["path"])
            broken += found.pop("broken")
            for key, value in found.items():
                totals[key] += value
        result = {
            "route": prefix,
            "chunk": chunk,
            "pages_checked": len(mine),
            "links_checked": totals["links"],
            "external": totals["external"],
            "skipped": totals["skipped"],
            "broken": len(broken),
            "broken_links": broken[:MAX_LISTED],
            "broken_links_truncated": len(broken) > MAX_LISTED,
        }
        fail = bool(broken) and bool(ctx.manifest.get("fail_on_broken", True))
        if ctx.dry_run:
            verdict = f", {len(broken)} broken" if broken else ", none broken"
            then = " (the apply would fail)" if fail else ""
            return {
                "summary": f"{prefix} #{chunk}: would check {plural(len(mine), 'page')} and "
                f"{plural(totals['links'], 'link')}{verdict}{then}",
                **result,
            }
        body = json.dumps(
            {
                "workspace": ws.name,
                "route": prefix,
                "chunk": chunk,
                "pages": [[p["path"], p["sha256"]] for p in mine],
                "broken_links": broken,
            },
            indent=1,
            sort_keys=True,
        ).encode()
        name = _report_name(ws, body)
        sha = hashlib.sha256(body).hexdigest()
        publish(
            storages["artifacts"], name, ctx, lambda f: f.write(body), size=len(body), sha256=sha
        )
        if fail:
            first = broken[0]
            raise ComponentError(
                f"{plural(len(broken), 'broken link')} under {prefix} (report: {name}); first: "
                f"{first['page']}:{first['line']} {first['target']} ({first['reason']})",
                code=BROKEN_LINKS,
            )
        effect = storage_effect("artifacts", name, sha, len(body))
        return {"status": "checked", "report": name, **result, "effect": effect}

    def effect_exists(self, ctx: ExecutionContext, output: dict[str, Any]) -> bool:
        """The partition's report is in artifact storage (the recorded location) with its
        size and SHA-256 (a report is small: it is hashed again)."""
        effect = output.get("effect")
        if not isinstance(effect, dict) or effect.get("name") != output.get("report"):
            return False
        return stored_object_matches(
            "artifacts",
            effect.get("name"),
            size=effect.get("bytes"),
            sha256=effect.get("sha256"),
            location=effect.get("location"),
            thorough=True,  # a report is small: always hashed again, never trusted by stat
        )

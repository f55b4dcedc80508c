"""assets.index and assets.stage: the `by_asset_bucket` partitioner and the `index_assets` executor.

One executor serves both kinds (the contract says staging "reuses indexing logic"), choosing
by the stage's kind:

- assets.index records path, size, SHA-256, media type and pixel dimensions (`image_size`:
  PNG, JPEG, GIF, WebP, AVIF, ICO and BMP headers read by Pillow, SVG from its root element)
  in the `AssetIndexEntry` table (upsert by workspace and path); a bucket partition also
  drops the rows of its bucket whose files are gone;
- assets.stage copies each asset into the "staging" storage under a content-hashed name in
  the workspace's own folder (`<workspace>/images/logo.<hash16>.png`) and writes a manifest
  of what it staged, itself content-addressed (`<workspace>/_manifests/<bucket>.<hash16>.json`).
  Existing names are never rewritten; two workspaces never share a folder.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import mimetypes
import re
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser, ParseError
from django.core.files.storage import Storage, storages
from django.db import connection, transaction
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from PIL import Image, UnidentifiedImageError

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
    cleanup_tmp_files,
    database_identity,
    digest_of,
    plural,
    publish,
    require_input,
    stats_digest,
    storage_effect,
    storage_effect_matches,
    storage_identity,
    storage_root,
    stored_object_matches,
)
from runs_app.kinds.files import (
    Beat,
    fingerprints,
    pin,
    pinned_range,
    pinned_stats,
    pinned_workspace,
    refused_report,
    stream_verified,
    verify_pinned,
)
from runs_app.kinds.workspace import WorkspacePartitioner
from runs_app.models import AssetIndexEntry

UNSUPPORTED_KIND = "unsupported_kind"
PREVIEW_ASSETS = 500

BUCKETS: dict[str, tuple[str, ...]] = {
    "images": (".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg", ".ico", ".avif", ".bmp"),
    "styles": (".css", ".scss", ".sass", ".less"),
    "scripts": (".js", ".mjs", ".cjs", ".ts", ".map"),
    "fonts": (".woff", ".woff2", ".ttf", ".otf", ".eot"),
    "media": (".mp4", ".webm", ".mp3", ".wav", ".ogg", ".oga", ".m4a", ".mov", ".flac"),
    "other": (),
}
BUCKET_NAMES = list(BUCKETS)

# The platform's mime.types differs between hosts (and Python 3.11's table lacks YAML, WebP,
# AVIF, web manifests and source maps): these keep index rows identical everywhere. IANA
# registrations where there is one (application/yaml: RFC 9512; font/*: RFC 8081).
MEDIA_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
    ".ico": "image/vnd.microsoft.icon",
    ".avif": "image/avif",
    ".bmp": "image/bmp",
    ".css": "text/css",
    ".scss": "text/x-scss",
    ".sass": "text/x-sass",
    ".less": "text/x-less",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".cjs": "text/javascript",
    ".ts": "text/x-typescript",
    ".map": "application/json",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".eot": "application/vnd.ms-fontobject",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mov": "video/quicktime",
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".m4a": "audio/mp4",
    ".flac": "audio/flac",
    ".json": "application/json",
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".html": "text/html",
    ".xml": "application/xml",
    ".webmanifest": "application/manifest+json",
    ".yml": "application/yaml",
    ".yaml": "application/yaml",
    ".toml": "application/toml",
    ".csv": "text/csv",
    ".wasm": "application/wasm",
    ".apng": "image/apng",
    ".svgz": "image/svg+xml",
    ".pdf": "application/pdf",
    ".htm": "text/html",
    ".rst": "text/x-rst",
    ".mdx": "text/markdown",
}


def suffix_of(rel: str) -> str:
    """`PurePosixPath(rel).suffix`, lower-cased, by string operations (called several times
    per file: pathlib's parsing was a third of assets.index's per-file cost)."""
    name = rel.rpartition("/")[2]
    i = name.rfind(".")
    return name[i:].lower() if 0 < i < len(name) - 1 else ""


def name_of(rel: str) -> str:
    """`PurePosixPath(rel).name` of a normalised relative path."""
    return rel.rpartition("/")[2]


def bucket_of(rel: str) -> str:
    suffix = suffix_of(rel)
    for bucket, suffixes in BUCKETS.items():
        if suffix in suffixes:
            return bucket
    return "other"


def media_type(rel: str) -> str:
    suffix = suffix_of(rel)
    if suffix in MEDIA_TYPES:
        return MEDIA_TYPES[suffix]
    name = name_of(rel)
    if ":" not in rel and name.find(".", 1) == name.rfind("."):
        # One suffix, no URL scheme: guess_type's answer depends on the suffix alone.
        return _guess_by_suffix(name[name.rfind(".") :] if "." in name[1:] else "")
    guessed, _encoding = mimetypes.guess_type(rel, strict=True)
    return guessed or "application/octet-stream"


@functools.lru_cache(maxsize=1024)
def _guess_by_suffix(suffix: str) -> str:
    guessed, _encoding = mimetypes.guess_type(f"x{suffix}", strict=True)
    return guessed or "application/octet-stream"


# Formats Pillow measures here, whatever the file's suffix says (the content decides).
PILLOW_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "AVIF", "ICO", "BMP")
# Bytes of a file handed to the measuring: JPEG frame headers may sit after large EXIF blocks
# and an SVG root element after a long comment; WebP, AVIF and ICO are parsed by their
# libraries from the whole file, so a file of these up to WHOLE_FILE_MAX is given whole.
HEAD_BYTES = 256 * 1024
WHOLE_FILE_SUFFIXES = (".webp", ".avif", ".ico")
WHOLE_FILE_MAX = 32 * 1024 * 1024


# Files whose pixel size is read: those whose suffix names an image format. Others are never
# opened by the apply (their stat vouches for them), so a PNG named `.bin` gets no size.
MEASURED_SUFFIXES = frozenset(BUCKETS["images"]) | {".apng"}


def head_bytes(rel: str, size: int) -> int:
    """How many leading bytes of the file `rel` (of `size` bytes) `image_size` needs."""
    if suffix_of(rel) in WHOLE_FILE_SUFFIXES and size <= WHOLE_FILE_MAX:
        return size
    return HEAD_BYTES


def image_size(data: bytes, name: str = "") -> tuple[int, int] | None:
    """(width, height) in pixels of an image given its first bytes, or None.

    Raster formats (PILLOW_FORMATS) are recognised by content and measured by Pillow from
    the header alone: `Image.open` is lazy and no pixel is decoded. A header claiming more
    than twice Pillow's MAX_IMAGE_PIXELS is refused by Pillow (DecompressionBombError) and
    gives None, as do truncated or unknown data. SVG (a `.svg` name, or data that starts
    like XML) is measured by `svg_size`. An ICO's size is its largest entry's.
    """
    # A prefix no format accepts would only make Image.open raise UnidentifiedImageError,
    # at far greater cost: straight to the SVG check.
    if _pillow_may_read(data):
        try:
            return _pillow_size(data)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
            pass
        except Exception:
            # A format plugin's parser on hostile bytes: the asset gets no size, the
            # partition goes on (the bytes were verified against the pinned hash already).
            return None
    if name.lower().endswith(".svg") or b"<svg" in data[:4096]:
        return svg_size(data)
    return None


@functools.cache
def _pillow_accepts() -> tuple[Callable[[bytes], Any], ...]:
    """The `_accept(prefix)` checks Pillow's own `Image.open` runs for PILLOW_FORMATS, in
    that order (a format whose plugin is missing is skipped: Pillow could not open it
    either). A plugin registered without a check accepts anything."""
    Image.init()
    accepts = []
    for fmt in PILLOW_FORMATS:
        entry = Image.OPEN.get(fmt)
        if entry is not None:
            accepts.append(entry[1] or (lambda _prefix: True))
    return tuple(accepts)


def _pillow_may_read(data: bytes) -> bool:
    """Whether `Image.open(data, formats=PILLOW_FORMATS)` would get past identification:
    the same checks on the same 16-byte prefix, without Pillow's file object, plugin loop
    and exception per non-image (Image.open on every file was a sixth of assets.index's
    executor time on Django's sdist, where few files are images). A check answering a
    warning string (not an acceptance for Pillow) sends the data to Pillow, which refuses it.
    """
    prefix = data[:16]
    return any(accept(prefix) for accept in _pillow_accepts())


def _pillow_size(data: bytes) -> tuple[int, int] | None:
    """Pillow's measure of `data` (raises what Image.open raises; image_size catches it)."""
    with Image.open(io.BytesIO(data), formats=PILLOW_FORMATS) as im:
        width, height = im.size
    return (width, height) if width > 0 and height > 0 else None


# CSS absolute units in CSS pixels (CSS Values 3, "absolute lengths"); no unit is user units,
# which an SVG without a viewBox maps 1:1 to pixels. em, ex, % and viewport units depend on
# where the image is shown: such a length falls back to the viewBox.
_SVG_UNITS = {
    "": 1.0,
    "px": 1.0,
    "pt": 96 / 72,
    "pc": 16.0,
    "in": 96.0,
    "cm": 96 / 2.54,
    "mm": 96 / 25.4,
    "q": 96 / 101.6,
}
_SVG_LENGTH = re.compile(r"\s*\+?((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z%]*)\s*")
_SVG_NAMESPACE = "{http://www.w3.org/2000/svg}"


def _svg_length(value: str | None) -> float | None:
    match = _SVG_LENGTH.fullmatch(value or "")
    if match is None or match.group(2).lower() not in _SVG_UNITS:
        return None
    px = float(match.group(1)) * _SVG_UNITS[match.group(2).lower()]
    return px if px > 0 else None


def _svg_view_box(value: str | None) -> tuple[float, float] | None:
    parts = re.split(r"[\s,]+", (value or "").strip())
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        return None
    if len(numbers) != 4 or numbers[2] <= 0 or numbers[3] <= 0:
        return None
    return numbers[2], numbers[3]


class _RootFound(Exception):
    """Raised by `_RootElement.start` to stop the parser at the root element."""


class _RootElement:
    """A parser target keeping the root element's tag and attributes, then stopping.

    defusedxml's parser with this target instead of its `iterparse`: Python 3.11's iterparse
    defines a class (an abc.Iterator) on every call, which was half the cost of measuring an
    SVG (Font Awesome: 2,049 SVGs, 0.39 s of an 0.75 s apply)."""

    tag: str | None = None
    attrib: dict[str, str]

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        self.tag, self.attrib = tag, attrib
        raise _RootFound

    def close(self) -> None:
        return None


def svg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of an SVG in CSS pixels, rounded, from its root `<svg>` element.

    `width`/`height` with an absolute unit (px, pt, pc, in, cm, mm, Q, or none) win; a
    missing or relative one (%, em...) comes from the `viewBox` (its aspect ratio scales the
    other side when only one is given), as a browser sizes an SVG without a container
    (SVG 2, "Intrinsic sizing properties of the viewport of SVG images"). None when the
    root is not `svg`, has neither, or the XML is refused: parsed with defusedxml, so entity
    declarations (billion laughs) and external references raise instead of expanding, and
    parsing stops at the root element, so a large or truncated file costs no more.
    """
    target = _RootElement()
    parser = DefusedXMLParser(target=target)
    try:
        parser.feed(data)
    except _RootFound:
        pass
    except (ParseError, DefusedXmlException, ValueError):
        return None
    if target.tag not in (f"{_SVG_NAMESPACE}svg", "svg"):
        return None
    attrib = target.attrib
    width, height = _svg_length(attrib.get("width")), _svg_length(attrib.get("height"))
    box = _svg_view_box(attrib.get("viewBox"))
    if box is not None:
        if width is None and height is None:
            width, height = box
        elif width is None:
            width = height * box[0] / box[1]  # type: ignore[operator]
        elif height is None:
            height = width * box[1] / box[0]
    if width is None or height is None:
        return None
    return max(1, round(width)), max(1, round(height))


@register_partitioner
class ByAssetBucket(WorkspacePartitioner):
    name = "by_asset_bucket"
    inputs_schema = fields_schema(
        {
            "bucket": "string",
            "stage_kind": "string",
            "partition_id": "integer",
            "file_range_start": "integer",
            "file_range_end": "integer",
            "owns_bucket": "boolean",
        }
    )
    description = (
        "One partition per asset bucket (images, styles, scripts, fonts, media, other) of a "
        "workspace directory, by file extension."
    )
    root_default = "assets"
    root_help = "Directory holding the static assets."

    @classmethod
    def own_params(cls) -> dict[str, Any]:
        return {
            "buckets": {
                "type": "array",
                "items": {"type": "string", "enum": BUCKET_NAMES},
                "uniqueItems": True,
                "minItems": 1,
                "default": BUCKET_NAMES,
                "title": "Buckets",
                "description": "Which buckets to make partitions for.",
            },
        }

    def partition(self, ctx: PartitionContext) -> StageManifest:
        params, ws, root_rel, files = self.workspace_files(ctx.params)
        wanted = [b for b in BUCKET_NAMES if b in params["buckets"]]
        by_bucket: dict[str, list] = {b: [] for b in wanted}
        for f in files:
            bucket = bucket_of(f.rel)
            if bucket in by_bucket:
                by_bucket[bucket].append(f)
        pinned = pin(f for b in wanted for f in by_bucket[b])
        specs, start = [], 0
        for bucket in wanted:
            count = len(by_bucket[bucket])
            if not count:
                continue
            rows = pinned[start : start + count]
            size = sum(r[1] for r in rows)
            specs.append(
                PartitionSpec(
                    inputs={
                        "bucket": bucket,
                        "stage_kind": ctx.kind.kind,
                        "partition_id": len(specs),
                        "file_range_start": start,
                        "file_range_end": start + count,
                        # The partition holds every file of its bucket under root: it may
                        # prune index rows whose files are gone.
                        "owns_bucket": True,
                    },
                    fingerprints=fingerprints(rows),
                    weight=size,
                    label=f"{bucket}: {plural(count, 'file')}, {filesizeformat(size)}",
                )
            )
            start += count
        return StageManifest(
            partitions=specs,
            data={
                "partitioner": self.name,
                "workspace": ws.name,
                "root": root_rel,
                "files": pinned,
            },
        )


_UPSERT_COLUMNS = (
    "workspace, path, name, bucket, size, sha256, media_type, width, height, indexed_at, "
    "run_id, partition_id"
)
_UPSERT_SQL = (
    f"INSERT INTO {AssetIndexEntry._meta.db_table} ({_UPSERT_COLUMNS}) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (workspace, path) DO UPDATE SET name = excluded.name, "
    "bucket = excluded.bucket, size = excluded.size, sha256 = excluded.sha256, "
    "media_type = excluded.media_type, width = excluded.width, height = excluded.height, "
    "indexed_at = excluded.indexed_at, run_id = excluded.run_id, "
    "partition_id = excluded.partition_id"
)


def _upsert(entries: Sequence[tuple[Any, ...]], now: Any, run_id: int, partition_id: int) -> None:
    """Upsert by the stable id (workspace, path): a second delivery rewrites the rows with the
    same values instead of adding any. One statement for the whole partition (SQLite and
    PostgreSQL share the ON CONFLICT syntax); the ORM's bulk upsert cost more than the hashing."""
    stamp = AssetIndexEntry._meta.get_field("indexed_at").get_db_prep_save(now, connection)
    with connection.cursor() as cursor:
        cursor.executemany(_UPSERT_SQL, [(*e, stamp, run_id, partition_id) for e in entries])


# A workspace name usable as one path segment of any storage (local or S3 key) as it is.
_PLAIN_FOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def staging_folder(workspace: str) -> str:
    """The folder of staging storage holding one workspace's copies and manifests.

    The workspace's name when it is a plain path segment (letters, digits, `.`, `_`, `-`,
    not starting with a dot), else `ws-<first 16 hex of its SHA-256>`: a name from settings
    never becomes `..`, a separator or an absolute path. Per workspace, so two workspaces
    with the same relative paths (`css/site.css`) never share a folder, while plans over one
    workspace share its copies (a content-hashed name is the same bytes whoever staged it).
    """
    if _PLAIN_FOLDER.fullmatch(workspace):
        return workspace
    return f"ws-{hashlib.sha256(workspace.encode()).hexdigest()[:16]}"


def staged_name(workspace: str, root_rel: str, rel: str, sha: str) -> str:
    """`<workspace folder>/<path under root>/<stem>.<first 16 hex of sha256><suffix>`:
    cache-busting names, one folder per workspace (`staging_folder`)."""
    path = PurePosixPath(rel)
    if root_rel != ".":
        path = path.relative_to(root_rel)
    return f"{staging_folder(workspace)}/{path.with_name(f'{path.stem}.{sha[:16]}{path.suffix}')}"


def manifest_name(workspace: str, bucket: str, digest: str) -> str:
    """`<workspace folder>/_manifests/<bucket>.<first 16 hex of the manifest's sha256>.json`."""
    return f"{staging_folder(workspace)}/_manifests/{bucket}.{digest[:16]}.json"


STAGING = "staging"


def _copies_stat_digest(names: Sequence[str]) -> str | None:
    """`stats_digest` of staged copies; None in a remote storage or when one is missing."""
    root = storage_root(_staging())
    if root is None:
        return None
    return stats_digest(_staging().path(name) for name in names)


def _staging() -> Storage:
    return storages[STAGING]


INDEX_COLUMNS = ("path", "name", "bucket", "size", "sha256", "media_type", "width", "height")


def _index_rows(workspace: str, paths: Sequence[str]) -> list[list[Any]]:
    """The asset index rows of `paths` as stored now: every column the apply writes except
    when and by whom (INDEX_COLUMNS), ordered by path as Python orders strings (code
    points; a PostgreSQL collation may order otherwise), as `_index` digests them."""
    return sorted(
        (
            list(row)
            for row in AssetIndexEntry.objects.filter(
                workspace=workspace, path__in=list(paths)
            ).values_list(*INDEX_COLUMNS)
        ),
        key=lambda r: r[0],
    )


def _rows_digest(rows: Sequence[Sequence[Any]]) -> str:
    """Digest of the index rows a partition stands for: (path, size, SHA-256) of its files."""
    return digest_of(sorted([r[0], r[1], r[2]] for r in rows))


@register_executor
class IndexAssets(Executor):
    name = "index_assets"
    inputs_schema = fields_schema(
        {"bucket": "string", "file_range_start": "integer", "file_range_end": "integer"},
        {"owns_bucket": "boolean"},
    )
    # An apply's output per kind it serves (execute() refuses any other kind).
    OUTPUTS = {
        "assets.index": fields_schema(
            {
                "status": {"type": "string", "const": "indexed"},
                "bucket": "string",
                "assets_indexed": "integer",
            }
        ),
        "assets.stage": fields_schema(
            {
                "status": {"type": "string", "const": "staged"},
                "bucket": "string",
                "assets_staged": "integer",
            }
        ),
    }

    @classmethod
    def get_output_schema(cls, kind: str) -> dict[str, Any] | None:
        return cls.OUTPUTS.get(kind)

    description = (
        "assets.index: records path, size, SHA-256, media type and image dimensions in the "
        "asset index. assets.stage: copies assets into staging storage under content-hashed "
        "names and writes a manifest."
    )
    idempotent = True
    supports_dry_run = True

    def execute(self, ctx: ExecutionContext) -> dict[str, Any]:
        kind = ctx.kind.kind
        if kind == "assets.index":
            return self._index(ctx)
        if kind == "assets.stage":
            return self._stage(ctx)
        raise ComponentError(
            f"index_assets serves assets.index and assets.stage, not {kind}",
            code=UNSUPPORTED_KIND,
            permanent=True,
            path="stage.kind",
        )

    def effect_exists(self, ctx: ExecutionContext, output: dict[str, Any]) -> bool:
        """assets.index: every pinned file of the partition has its index row in HXO's
        database (the recorded one), with the pinned size and SHA-256. assets.stage: every
        staged copy is in staging storage (the recorded location) with the pinned content,
        and the partition's manifest is there with its SHA-256.

        Staged copies are hashed again only when needed: while the stat identities of all of
        them (`base.stats_digest`) are those recorded when the apply wrote or hash-verified
        them, none was written since; otherwise (or with `ctx.thorough`, or in a remote
        storage) each is hashed and compared with the pinned SHA-256 its name carries, so a
        same-size damaged copy is never reused."""
        effect = output.get("effect")
        if not isinstance(effect, dict):
            return False
        rows = pinned_range(ctx)
        if ctx.kind.kind == "assets.index":
            if effect.get("database") != database_identity():
                return False
            ws = pinned_workspace(ctx)
            wanted = {(r[0], r[1], r[2]) for r in rows}
            found = _index_rows(ws.name, [r[0] for r in rows])
            if {(f[0], f[3], f[4]) for f in found} != wanted or len(found) != len(wanted):
                return False
            if effect.get("rows_digest") != _rows_digest(rows):
                return False
            # Every column the apply wrote, not only the hash: a row whose media type or
            # size in pixels changed since is not the effect (older outputs lack it).
            recorded = effect.get("content_digest")
            return recorded is None or recorded == digest_of(found)
        if ctx.kind.kind == "assets.stage":
            if effect.get("location") != storage_identity(STAGING):
                return False
            if not storage_effect_matches(STAGING, effect.get("manifest"), thorough=ctx.thorough):
                return False
            root_rel = str(ctx.manifest.get("root", "."))
            workspace = str(ctx.manifest.get("workspace", ""))
            names = [(staged_name(workspace, root_rel, r[0], r[2]), r) for r in rows]
            recorded = effect.get("copies_stat_digest")
            if (
                not ctx.thorough
                and isinstance(recorded, str)
                and _copies_stat_digest([n for n, _r in names]) == recorded
            ):
                return True
            return all(
                stored_object_matches(STAGING, name, size=r[1], sha256=r[2]) for name, r in names
            )
        return False

    # --- assets.index --------------------------------------------------------------------

    def _index(self, ctx: ExecutionContext) -> dict[str, Any]:
        ws = pinned_workspace(ctx)
        rows = pinned_range(ctx)
        bucket = require_input(ctx, "bucket", str)
        owns = ctx.inputs.get("owns_bucket") is True
        root_rel = str(ctx.manifest.get("root", "."))
        if ctx.dry_run:
            existing = dict(
                AssetIndexEntry.objects.filter(
                    workspace=ws.name, path__in=[r[0] for r in rows]
                ).values_list("path", "sha256")
            )
            actions = [
                {
                    "path": r[0],
                    "bytes": r[1],
                    "media_type": media_type(r[0]),
                    "action": "unchanged"
                    if existing.get(r[0]) == r[2]
                    else ("update" if r[0] in existing else "add"),
                }
                for r in rows
            ]
            stale = self._stale(ws.name, bucket, root_rel, rows) if owns else []
            changes = sum(a["action"] != "unchanged" for a in actions)
            return {
                "summary": f"{bucket}: would index {plural(len(rows), 'asset')} "
                f"({filesizeformat(sum(r[1] for r in rows))}; {changes} new or changed"
                + (f", {len(stale)} to remove" if stale else "")
                + ")",
                "assets": actions[:PREVIEW_ASSETS],
                "assets_truncated": len(actions) > PREVIEW_ASSETS,
                "assets_count": len(rows),
                "bytes": sum(r[1] for r in rows),
                "to_remove": stale[:PREVIEW_ASSETS],
                **refused_report(ctx),
            }
        beat = Beat(ctx)
        now = timezone.now()
        entries = []
        # One read of each file on the apply's path: partitioning hashed it; here its stat
        # vouches for it (files.verify_pinned), and only images are opened, for their header.
        for row, token in zip(rows, pinned_stats(ctx, rows), strict=True):
            beat()
            rel, size = row[0], row[1]
            measured = suffix_of(rel) in MEASURED_SUFFIXES
            head = verify_pinned(ws, row, token, head=head_bytes(rel, size) if measured else 0)
            dims = image_size(head, rel) if measured else None
            entries.append(
                (
                    ws.name,
                    rel,
                    name_of(rel),
                    bucket_of(rel),
                    size,
                    row[2],
                    media_type(rel),
                    dims[0] if dims else None,
                    dims[1] if dims else None,
                )
            )
        with transaction.atomic():
            removed = 0
            if owns:
                stale = self._stale(ws.name, bucket, root_rel, rows)
                removed, _ = AssetIndexEntry.objects.filter(
                    workspace=ws.name, path__in=stale
                ).delete()
            _upsert(entries, now, ctx.run_id, ctx.partition_id)
            # What _index_rows reads back for these paths, without reading it: the rows
            # just written, in INDEX_COLUMNS order and by path (ints, text and NULLs come
            # back from both databases as written).
            content = digest_of(sorted([list(e[1:]) for e in entries], key=lambda r: r[0]))
            beat(force=True)  # LeaseLost here rolls the upsert back
        return {
            "status": "indexed",
            "bucket": bucket,
            "assets_indexed": len(entries),
            "bytes": sum(e[4] for e in entries),
            "images_measured": sum(e[7] is not None for e in entries),
            "removed": removed,
            **refused_report(ctx),
            "effect": {
                "database": database_identity(),
                "table": AssetIndexEntry._meta.db_table,
                "workspace": ws.name,
                "rows": len(entries),
                "rows_digest": _rows_digest(rows),
                "content_digest": content,
            },
        }

    @staticmethod
    def _stale(workspace: str, bucket: str, root_rel: str, rows: Sequence[Sequence]) -> list:
        qs = AssetIndexEntry.objects.filter(workspace=workspace, bucket=bucket)
        if root_rel != ".":
            qs = qs.filter(path__startswith=f"{root_rel}/")
        present = {r[0] for r in rows}
        return sorted(p for p in qs.values_list("path", flat=True) if p not in present)

    # --- assets.stage --------------------------------------------------------------------

    def _stage(self, ctx: ExecutionContext) -> dict[str, Any]:
        ws = pinned_workspace(ctx)
        rows = pinned_range(ctx)
        bucket = require_input(ctx, "bucket", str)
        root_rel = str(ctx.manifest.get("root", "."))
        storage = _staging()
        plan = [(r, staged_name(ws.name, root_rel, r[0], r[2])) for r in rows]
        if ctx.dry_run:
            actions = [
                {
                    "path": r[0],
                    "staged_as": name,
                    "bytes": r[1],
                    "action": "already_staged" if storage.exists(name) else "copy",
                }
                for r, name in plan
            ]
            to_copy = [a for a in actions if a["action"] == "copy"]
            return {
                "summary": f"{bucket}: would copy {plural(len(to_copy), 'asset')} "
                f"({filesizeformat(sum(a['bytes'] for a in to_copy))}); "
                f"{len(actions) - len(to_copy)} already staged",
                "assets": actions[:PREVIEW_ASSETS],
                "assets_truncated": len(actions) > PREVIEW_ASSETS,
                "assets_count": len(actions),
                "bytes_to_copy": sum(a["bytes"] for a in to_copy),
                **refused_report(ctx),
            }
        beat = Beat(ctx)
        copied = copied_bytes = 0
        entries = []
        for (rel, size, sha, mode), name in plan:
            beat()
            entry = (rel, size, sha, mode)
            # A staged copy that is not the pinned content (another size, or the same size
            # with other bytes) is damaged: copied again. Hashing an existing copy reads it
            # once, which costs less than copying it; an apply only runs here when the
            # effect check found something missing or changed, or on force_rerun.
            if publish(
                storage,
                name,
                ctx,
                lambda f, entry=entry: stream_verified(ws, entry, f),
                size=size,
                sha256=sha,
            ):
                copied += 1
                copied_bytes += size
            entries.append(
                {
                    "source": rel,
                    "staged": name,
                    "sha256": sha,
                    "size": size,
                    "media_type": media_type(rel),
                }
            )
        manifest = json.dumps(
            {"workspace": ws.name, "root": root_rel, "bucket": bucket, "assets": entries},
            sort_keys=True,
            indent=1,
        ).encode()
        digest = hashlib.sha256(manifest).hexdigest()
        manifest_at = manifest_name(ws.name, bucket, digest)
        beat(force=True)
        publish(
            storage,
            manifest_at,
            ctx,
            lambda f: f.write(manifest),
            size=len(manifest),
            sha256=digest,
        )
        return {
            "status": "staged",
            "bucket": bucket,
            "assets_staged": len(entries),
            "manifest": manifest_at,
            "copied": copied,
            "bytes_copied": copied_bytes,
            "already_staged": len(entries) - copied,
            **refused_report(ctx),
            "effect": {
                "location": storage_identity(STAGING),
                "manifest": storage_effect(STAGING, manifest_at, digest, len(manifest)),
                "assets": len(entries),
                "assets_digest": digest_of([[e["staged"], e["sha256"]] for e in entries]),
                # Every copy was just written or hash-verified: their stat identities vouch
                # for their content until one is written again (None: remote storage).
                "copies_stat_digest": _copies_stat_digest([name for _r, name in plan]),
            },
        }

    def cleanup_stale(self) -> int:
        return cleanup_tmp_files(storage_root(_staging()))

"""deploy.pack: `by_filesize`, `by_module` and the `pack_backend` executor.

`by_filesize` also serves assets.index/assets.stage and `by_module` also serves deploy.prime,
so their partitions carry the inputs of every kind that may use them (extra inputs are allowed
by the contract's schemas).

An archive is a reproducible gzip-compressed tar: entries sorted as pinned, mtime 0, owner
0/0 with empty owner names, modes normalised to 0644/0755, and a gzip header without name or
time. The deflate stream is zlib-ng's (`zlib_ng`, the maintained SIMD fork of zlib): at the
same level it compresses source trees about twice as fast as zlib, and any gunzip reads it.
The same files (and the same zlib-ng version) give byte-identical archives, stored in the
"artifacts" storage under `pack/<workspace>/<sha256>.tar.gz`. A small pointer
`pack/<workspace>/inputs/<input digest>` maps what was packed to the archive, so a second
apply of the same files compresses nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import IO, Any

from django.core.files.storage import Storage, storages
from django.template.defaultfilters import filesizeformat
from zlib_ng import zlib_ng

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
from runs_app.kinds import prime as prime_kind
from runs_app.kinds import pygraph
from runs_app.kinds.base import (
    atomic_local_file,
    cleanup_tmp_files,
    plural,
    publish,
    require_input,
    storage_effect,
    storage_effect_matches,
    storage_root,
    stored_object_matches,
)
from runs_app.kinds.files import (
    Beat,
    HashingWriter,
    bins_by_size,
    changed,
    fingerprints,
    pin,
    pinned_range,
    pinned_workspace,
    refused_report,
)
from runs_app.kinds.workspace import WorkspacePartitioner
from runs_app.workspaces import Workspace

MIB = 1024 * 1024
# Bump when the archive layout or its compressor changes: old pointers stop matching.
# 2: deflate by zlib-ng instead of zlib (other bytes for the same files).
ARCHIVE_FORMAT = 2
PREVIEW_FILES = 500  # files listed in a dry-run preview; totals always cover all of them

# Level 5, not gzip's 6: on source trees it compresses faster for archives about 1% larger
# (zlib-ng on the tar of Django 5.2's sdist, 52 MB, one core: level 5 146 MB/s, 10.84 MB;
# level 6 120 MB/s, 10.78 MB; zlib's level 6 61 MB/s, 10.73 MB; `gzip -6` 50 MB/s).
COMPRESS_LEVEL = {
    "type": "integer",
    "minimum": 1,
    "maximum": 9,
    "default": 5,
    "title": "gzip level",
    "description": "Compression level of deploy.pack archives (1 fastest, 9 smallest).",
    # by_filesize also partitions assets.index and assets.stage, which archive nothing: the
    # editor shows this field for deploy.pack only (runs_app.editor.layout.schema_for_kind).
    "x-hxo-kinds": ["deploy.pack"],
}


def _range_inputs(
    kind: str, index: int, start: int, end: int, chunk_mb: int, bucket: str
) -> dict[str, Any]:
    return {
        "partition_id": index,
        "file_range_start": start,
        "file_range_end": end,
        "chunk_size_mb": chunk_mb,
        "bucket": bucket,
        "stage_kind": kind,
    }


@register_partitioner
class ByFilesize(WorkspacePartitioner):
    name = "by_filesize"
    inputs_schema = fields_schema(
        {
            "partition_id": "integer",
            "file_range_start": "integer",
            "file_range_end": "integer",
            "chunk_size_mb": "integer",
            "bucket": "string",
            "stage_kind": "string",
        }
    )
    description = (
        "Bins of about chunk_size_mb over the sorted file list of a workspace directory "
        "(deploy.pack, assets.index, assets.stage)."
    )

    @classmethod
    def own_params(cls) -> dict[str, Any]:
        return {
            "chunk_size_mb": {
                "type": "integer",
                "minimum": 1,
                "maximum": 4096,
                "default": 1,
                "title": "Chunk size (MiB)",
                "description": "Target bytes per partition; a larger file is alone.",
            },
            "max_files": {
                "type": "integer",
                "minimum": 1,
                "maximum": 100_000,
                "default": 1000,
                "title": "Files per partition",
                "description": "At most this many files per partition.",
            },
            "compress_level": COMPRESS_LEVEL,
        }

    def partition(self, ctx: PartitionContext) -> StageManifest:
        params, ws, root_rel, files = self.workspace_files(ctx.params)
        pinned = pin(files)
        chunk_mb = params["chunk_size_mb"]
        kind = ctx.kind.kind
        specs = []
        for i, (start, end) in enumerate(bins_by_size(pinned, chunk_mb * MIB, params["max_files"])):
            rows = pinned[start:end]
            size = sum(r[1] for r in rows)
            specs.append(
                PartitionSpec(
                    inputs=_range_inputs(kind, i, start, end, chunk_mb, f"chunk-{i:04d}"),
                    fingerprints=fingerprints(rows),
                    weight=size,
                    label=f"{rows[0][0]} … {rows[-1][0]}: "
                    f"{plural(len(rows), 'file')}, {filesizeformat(size)}",
                )
            )
        return StageManifest(
            partitions=specs,
            data={
                "partitioner": self.name,
                "workspace": ws.name,
                "root": root_rel,
                "compress_level": params["compress_level"],
                "files": pinned,
            },
        )


def module_groups(ws: Workspace, root_rel: str, files: list) -> dict[str, list]:
    """Top-level packages under `root_rel` → their files; files directly in it form one group."""
    _base, prefix = pygraph.import_root(ws, root_rel)
    groups: dict[str, list] = {}
    for f in files:
        rel = PurePosixPath(f.rel)
        inner = rel if root_rel == "." else rel.relative_to(root_rel)
        if len(inner.parts) > 1:
            child = inner.parts[0]
            group = f"{prefix}.{child}" if prefix else child
        else:
            group = prefix or "(top-level)"
        groups.setdefault(group, []).append(f)
    return dict(sorted(groups.items()))


@register_partitioner
class ByModule(WorkspacePartitioner):
    name = "by_module"
    inputs_schema = fields_schema(
        {
            "partition_id": "integer",
            "file_range_start": "integer",
            "file_range_end": "integer",
            "chunk_size_mb": "integer",
            "bucket": "string",
            "stage_kind": "string",
            "module": "string",
        }
    )
    description = (
        "One partition per top-level package of a Python source tree (deploy.pack, "
        "deploy.prime); modules directly in the root form one more."
    )
    root_default = "backend"
    root_help = "Directory holding the Python packages (a package itself or not)."

    @classmethod
    def own_params(cls) -> dict[str, Any]:
        # deploy.prime's params (target interpreter, package roots, on_module_error) are
        # read only when this partitioner serves deploy.prime.
        return {"compress_level": COMPRESS_LEVEL, **prime_kind.prime_params()}

    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> list[ComponentError]:
        return prime_kind.validate_prime_params(cls, params)

    def partition(self, ctx: PartitionContext) -> StageManifest:
        params, ws, root_rel, files = self.workspace_files(ctx.params)
        kind = ctx.kind.kind
        prime = kind == "deploy.prime"
        groups = module_groups(ws, root_rel, files)
        ordered = [f for members in groups.values() for f in members]
        pinned = pin(ordered)
        by_rel = {row[0]: row for row in pinned}
        if prime:
            discovery, depth, prime_data = prime_kind.prime_manifest(
                ctx, params, ws, root_rel, ordered
            )
            modules = discovery.modules
        else:
            modules, prime_data = pygraph.discover(ws, root_rel, ordered), {}
            depth = pygraph.depths({m.name: m.internal for m in modules.values()})
        module_rows = {m.name: m.row(by_rel[m.rel][2], depth[m.name]) for m in modules.values()}
        rel_to_module = {m.rel: m.name for m in modules.values()}
        specs, group_modules, start = [], {}, 0
        for name, members in groups.items():
            end = start + len(members)
            rows = pinned[start:end]
            names = [rel_to_module[f.rel] for f in members if f.rel in rel_to_module]
            group_modules[name] = names
            if prime and not names:
                start = end
                continue  # nothing to prime in a package of templates or data files
            fp_rows = [r for r in rows if r[0] in rel_to_module] if prime else rows
            size = sum(r[1] for r in fp_rows)
            inputs = _range_inputs(kind, len(specs), start, end, math.ceil(size / MIB), name)
            inputs["module"] = name
            specs.append(
                PartitionSpec(
                    inputs=inputs,
                    fingerprints=fingerprints(fp_rows),
                    weight=size,
                    label=f"{name}: {plural(len(names), 'module')}, "
                    f"{plural(len(rows), 'file')}, {filesizeformat(size)}",
                )
            )
            start = end
        return StageManifest(
            partitions=specs,
            data={
                "partitioner": self.name,
                "workspace": ws.name,
                "root": root_rel,
                "compress_level": params["compress_level"],
                "files": pinned,
                "modules": module_rows,
                "groups": group_modules,
                **prime_data,
            },
        )


# --- the executor -------------------------------------------------------------------------


ARTIFACTS = "artifacts"


def _artifacts() -> Storage:
    return storages[ARTIFACTS]


def _input_digest(rows: list, level: int) -> str:
    """What an archive is made of: layout version, level and the pinned rows (path, size,
    hash, mode). Equal digests mean byte-identical archives."""
    doc = {"format": ARCHIVE_FORMAT, "level": level, "entries": rows}
    return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()


class GzipStream:
    """A write-only gzip stream over `out`, compressed by zlib-ng at `level`.

    The header zlib-ng writes for `wbits=31` has no file name and mtime 0, so equal input
    gives equal bytes. Small writes (a 512-byte tar header, a short file, its padding) are
    gathered in one buffer and compressed COMPRESS_CHUNK at a time: one deflate call per
    member costs more than the copying. `tell()` is the uncompressed offset.
    """

    COMPRESS_CHUNK = 1 << 20

    def __init__(self, out: IO[bytes], level: int) -> None:
        self.out = out
        self.deflate = zlib_ng.compressobj(level, zlib_ng.DEFLATED, 31)
        self.pending = bytearray()
        self.offset = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        # Even a large write joins the buffer: zlib-ng's output at levels above 1 depends on
        # where its input is cut, and these cuts (at least COMPRESS_CHUNK, after the write
        # that crossed it) are the ones archives were written with before: same bytes.
        self.pending += data
        self.offset += len(data)
        if len(self.pending) >= self.COMPRESS_CHUNK:
            self._compress()
        return len(data)

    def tell(self) -> int:
        return self.offset

    def _compress(self) -> None:
        if self.pending:
            self.out.write(self.deflate.compress(self.pending))
            self.pending.clear()

    def close(self) -> None:
        """Compress what is pending and write the gzip trailer (CRC-32 and size)."""
        self._compress()
        self.out.write(self.deflate.flush())


# --- tar members --------------------------------------------------------------------------
# Every member is a regular file with mtime 0, owner 0/0, empty owner names and mode 0644 or
# 0755, so its 512-byte ustar header varies only in name, mode, size and checksum. tarfile
# spends about 40 us of Python per member building it (a TarInfo copy, a pax check, a dozen
# field encoders, a checksum over a 512-tuple): on Django's 6,869 files that was a fifth of
# deploy.pack's work besides deflate. `_member_header` fills the fixed template instead for
# the members whose header tarfile would write as plain ustar (ASCII name of at most 100
# bytes, size below 8 GiB) and asks tarfile for the others (pax records for long or
# non-ASCII names, huge sizes). tests/runs_app/kinds/test_kinds_pack.py checks both give
# tarfile's bytes, so archives are the same bytes as when tarfile wrote every header.
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
USTAR_NAME_MAX = 100
USTAR_SIZE_LIMIT = 8**11  # 11 octal digits
# uid, gid ("0000000\0" each) | size | mtime 0 | checksum placeholder | type "0" (regular)
_UID_GID = b"0000000\x00" * 2
_MTIME_0 = b"00000000000\x00"
# linkname, "ustar\0" "00", uname, gname, devmajor, devminor, prefix: empty; then padding
_TAIL = b"\x00" * 100 + tarfile.POSIX_MAGIC + b"\x00" * (32 + 32 + 8 + 8 + 155) + b"\x00" * 12
# What the fixed fields add to the checksum: the placeholder (8 spaces), "0" and the tail.
_CHKSUM_REST = 8 * ord(" ") + ord("0") + sum(_TAIL)


def _member_header(rel: str, size: int, mode: int) -> bytes:
    """The tar header tarfile writes (PAX format, utf-8) for a normalised regular file."""
    try:
        name = rel.encode("ascii")
    except UnicodeEncodeError:
        name = b""
    if not name or len(name) > USTAR_NAME_MAX or size >= USTAR_SIZE_LIMIT:
        return _tarfile_header(rel, size, mode)
    head = b"".join(
        (
            name.ljust(USTAR_NAME_MAX, b"\x00"),
            b"%07o\x00" % (mode & 0o7777),
            _UID_GID,
            b"%011o\x00" % size,
            _MTIME_0,
        )
    )
    # The checksum is the byte sum of the header with its own field as eight spaces, written
    # as six octal digits, NUL, space (tarfile's and POSIX's layout).
    chksum = sum(head) + _CHKSUM_REST
    return head + b"%06o\x00 " % chksum + b"0" + _TAIL


def _tarfile_header(rel: str, size: int, mode: int) -> bytes:
    info = tarfile.TarInfo(rel)
    info.size = size
    info.mtime = 0
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _copy_member(ws: Workspace, rel: str, size: int, sha: str, gz: GzipStream) -> None:
    """Stream one pinned file into `gz` after its header, checking its SHA-256 on the way
    (the one read of it): other bytes, fewer or more than pinned raise `workspace_changed`.
    A file is read in one call up to COMPRESS_CHUNK, in chunks of that size beyond."""
    digest = hashlib.sha256()
    with ws.open_file(rel, path="manifest.files") as src:
        left = size
        while left > 0:
            data = src.read(min(left, GzipStream.COMPRESS_CHUNK))
            if not data:
                raise changed(rel)  # shorter than pinned
            digest.update(data)
            gz.write(data)
            left -= len(data)
        if src.read(1):
            raise changed(rel)  # longer than pinned
    if digest.hexdigest() != sha:
        raise changed(rel)
    if size % BLOCK:
        gz.write(bytes(BLOCK - size % BLOCK))


def _write_archive(ws: Workspace, rows: list, level: int, out: IO[bytes], beat: Beat) -> None:
    """Write the pinned `rows` as one reproducible tar.gz into `out`, reading each file once:
    its SHA-256 is checked while it streams into the archive, and a file that changed since
    partitioning (other bytes, shorter, longer) raises `workspace_changed`.

    The bytes are those `tarfile.open(mode="w", format=PAX_FORMAT)` writes for the same
    members: a header per file, its data padded to 512 bytes, two zero blocks, and zeros up
    to a whole 10,240-byte record."""
    gz = GzipStream(out, level)
    for rel, size, sha, mode in rows:
        beat()
        gz.write(_member_header(rel, size, mode))
        _copy_member(ws, rel, size, sha, gz)
    # Two writes, as tarfile makes them: GzipStream's cuts (and so the bytes) stay the same.
    gz.write(bytes(2 * BLOCK))
    if gz.tell() % RECORD:
        gz.write(bytes(RECORD - gz.tell() % RECORD))
    gz.close()


@register_executor
class PackBackend(Executor):
    name = "pack_backend"
    inputs_schema = fields_schema(
        {"partition_id": "integer", "file_range_start": "integer", "file_range_end": "integer"}
    )
    output_schema = fields_schema(
        {
            "status": {"type": "string", "const": "packed"},
            "partition_id": "integer",
            "files_processed": "integer",
            "archive": "string",
            "digest": "string",
            "bytes": "integer",
            "source_bytes": "integer",
            "effect": "object",
        }
    )
    description = (
        "Writes one reproducible tar.gz per partition into artifact storage, named by its "
        "SHA-256; an identical archive is never rewritten."
    )
    idempotent = True
    supports_dry_run = True

    def execute(self, ctx: ExecutionContext) -> dict[str, Any]:
        ws = pinned_workspace(ctx)
        rows = pinned_range(ctx)
        partition_id = require_input(ctx, "partition_id", int)
        level = int(ctx.manifest.get("compress_level", COMPRESS_LEVEL["default"]))
        source_bytes = sum(r[1] for r in rows)
        storage = _artifacts()
        prefix = f"pack/{ws.name}"
        pointer_name = f"{prefix}/inputs/{_input_digest(rows, level)}.json"
        existing = _read_pointer(storage, pointer_name)
        if ctx.dry_run:
            return {
                "summary": (
                    f"would pack {plural(len(rows), 'file')} ({filesizeformat(source_bytes)}) "
                    f"into one archive"
                    + (" (already packed: nothing to write)" if existing else "")
                ),
                **refused_report(ctx),
                "files_count": len(rows),
                "bytes": source_bytes,
                "files": [{"path": r[0], "bytes": r[1]} for r in rows[:PREVIEW_FILES]],
                "files_truncated": len(rows) > PREVIEW_FILES,
                "compress_level": level,
                "archive_exists": existing is not None,
                "archive": existing["archive"] if existing else None,
            }
        beat = Beat(ctx)
        if existing is None:
            existing = self._pack(ctx, ws, rows, level, storage, prefix, beat)
            beat(force=True)
            pointer = json.dumps(existing).encode()
            publish(
                storage,
                pointer_name,
                ctx,
                lambda f: f.write(pointer),
                size=len(pointer),
                sha256=hashlib.sha256(pointer).hexdigest(),
            )
        else:
            beat(force=True)
        return {
            "status": "packed",
            "partition_id": partition_id,
            "files_processed": len(rows),
            "archive": existing["archive"],
            "digest": existing["sha256"],
            "bytes": existing["bytes"],
            **refused_report(ctx),
            "source_bytes": source_bytes,
            "effect": storage_effect(
                ARTIFACTS, existing["archive"], existing["sha256"], existing["bytes"]
            ),
        }

    def effect_exists(self, ctx: ExecutionContext, output: dict[str, Any]) -> bool:
        """The archive is in artifact storage, at the recorded location, with the recorded
        size and SHA-256. While its stat identity is the one recorded when it was written
        (or hash-verified) it has not been written since, and is not read again; otherwise
        (or with `ctx.thorough`, or in a remote storage) the whole archive is hashed, so a
        truncated or overwritten archive never passes (`base.storage_effect_matches`)."""
        return storage_effect_matches(ARTIFACTS, output.get("effect"), thorough=ctx.thorough)

    def _pack(
        self,
        ctx: ExecutionContext,
        ws: Workspace,
        rows: list,
        level: int,
        storage: Storage,
        prefix: str,
        beat: Beat,
    ) -> dict[str, Any]:
        root = storage_root(storage)
        staging = (root / prefix) if root is not None else _local_tmp_dir() / prefix
        with atomic_local_file(staging / "archive.tar.gz", ctx) as (tmp, f):
            writer = HashingWriter(f)
            _write_archive(ws, rows, level, writer, beat)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
            f.close()
            sha = writer.digest.hexdigest()
            name = f"{prefix}/{sha}.tar.gz"
            beat(force=True)  # a lost lease stops us before anything becomes visible
            if stored_object_matches(ARTIFACTS, name, size=writer.count, sha256=sha):
                pass  # identical bytes are already there: never rewrite them
            elif root is not None:
                # Absent, or damaged under its content name: put the right bytes there.
                os.replace(tmp, Path(storage.path(name)))
            else:
                if storage.exists(name):
                    storage.delete(name)  # damaged: a remote save would pick another name
                with open(tmp, "rb") as src:
                    storage.save(name, src)  # type: ignore[arg-type]
        return {"archive": name, "sha256": sha, "bytes": writer.count}

    def cleanup_stale(self) -> int:
        root = storage_root(_artifacts())
        return cleanup_tmp_files(root / "pack" if root else None) + cleanup_tmp_files(
            _local_tmp_dir()
        )


def _local_tmp_dir() -> Path:
    from django.conf import settings

    return Path(settings.VAR_DIR) / "tmp"


def _read_pointer(storage: Storage, name: str) -> dict[str, Any] | None:
    """The archive recorded for these inputs, if the pointer and the archive both exist."""
    if not storage.exists(name):
        return None
    try:
        with storage.open(name, "rb") as f:
            pointer = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if not isinstance(pointer, dict):
        return None
    # The archive must be there with the recorded bytes: one deleted or damaged since is
    # packed again (hashing it costs far less than compressing it).
    if not stored_object_matches(
        ARTIFACTS, pointer.get("archive"), size=pointer.get("bytes"), sha256=pointer.get("sha256")
    ):
        return None
    return pointer

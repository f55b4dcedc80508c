"""Workspace files as partitioners pin them and executors read them back.

A partitioner pins the file list of a stage into the manifest as `[path, size, sha256, mode]`
rows (sorted, paths relative to the workspace root); partitions address it by index range
`[file_range_start, file_range_end)`. The executor re-reads each file through the workspace
(so a file that became an escaping symlink is refused) and checks its hash while streaming it,
so what is applied is exactly what the dry-run saw and the approver approved.

An executor that needs no file's bytes beyond a header (assets.index) may verify by stat
instead (`verify_pinned`): `pin` also records, for each file it hashed, a stat token
(`stat_token`: device, inode, size, mtime_ns and ctime_ns of the descriptor it read, the
same before and after the read), kept in the manifest as `file_stats` (`FILE_STATS`), which
the run digest leaves out (`runs_app.manifest.UNPINNED_DATA`). A file whose stat still
gives its token is the file that was hashed; any other is hashed again. The idea and its
limits are git's index ("racy git", Documentation/technical/racy-git.txt): a write in the
same clock tick as the hashing keeps the timestamps, so a file changed less than
`RACY_WINDOW_NS` before it was hashed gets no token (it is always hashed again). What stat
cannot see: a rewrite that also puts back ctime, which only a change of the system clock
(or a file system that does not keep ctime) allows; `utime` restoring the mtime moves ctime.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from blueprints_app.registry import FILE_STATS, ComponentError, ExecutionContext
from runs_app.forking import in_two
from runs_app.kinds.base import INVALID_INPUTS, require_input, require_manifest
from runs_app.kinds.workspace import REFUSED_FILES
from runs_app.workspaces import (
    WORKSPACE_CHANGED,
    Workspace,
    WorkspaceFile,
    get_workspace,
    open_regular,
    sha256_fd,
)

MODE_FILE = 0o644
MODE_EXEC = 0o755

# One pinned file: [rel, size, sha256, mode].
Pinned = list[Any]


# A file changed less than this before it was hashed gets no stat token: a later write in
# the same timestamp tick would leave its stat as it was (coarse kernel clocks tick every few
# milliseconds; FAT keeps 2 s mtimes, NFS the server's clock). Tests lower it (a module
# constant), as the files they write are always younger.
RACY_WINDOW_NS = 3_000_000_000


class PinnedFiles(list):
    """`pin`'s rows (a plain list of `[rel, size, sha256, mode]`), with `stats`: the stat
    token of each row (`stat_token`) or None where the file's stat cannot vouch for it.
    A workspace partitioner that puts these rows into its manifest as `files` gets the
    tokens added as `file_stats` (runs_app.kinds.workspace)."""

    stats: list[str | None]


def stat_token(st: os.stat_result) -> str:
    """A short digest of what identifies a file's content to its file system: device, inode,
    size, mtime_ns and ctime_ns (16 hex; compared for equality only)."""
    key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def _pin_one(f: WorkspaceFile) -> tuple[Pinned, str | None]:
    """(row, stat token or None) of one file, hashed through one descriptor: the stat before
    and after the read must agree, and the file must be older than RACY_WINDOW_NS, for the
    token to stand for the bytes hashed."""
    started = time.time_ns()
    with open_regular(f.path, rel=f.rel, path="params.root") as fh:
        fd = fh.fileno()
        before = os.fstat(fd)
        # As `sha256_file` reads: file_digest allocates a 256 KiB buffer per call
        # (Django's 6,869 files: 0.10 CPU-s that way, 0.08 s this way).
        digest = sha256_fd(fd)
        after = os.fstat(fd)
    token: str | None = stat_token(before)
    if (
        token != stat_token(after)
        or before.st_size != f.size  # changed since the listing: the row's size is stale
        or max(before.st_mtime_ns, before.st_ctime_ns) >= started - RACY_WINDOW_NS
    ):
        token = None
    return [f.rel, f.size, digest, MODE_EXEC if f.mode & 0o111 else MODE_FILE], token


def pin(files: Iterable[WorkspaceFile]) -> PinnedFiles:
    """Hash every file once, at partition time: the hashes are the content fingerprints; the
    rows carry their stat tokens (`PinnedFiles.stats`).

    Partitioning a big tree is bound by hashing, and it happens before any partition can
    start, while the other workers wait. On two cores a forked child hashes the second half
    of the files by size (`runs_app.forking.in_two`; below PIN_PARALLEL_MIN of work, in this
    process). Each half hashes on threads, which overlap reads and hashlib's GIL-free
    digests of large buffers (small files are mostly Python per file, which threads cannot
    overlap: hence the fork). Raises what `_pin_one` raises for a file (ComponentError).
    """
    pairs = in_two(
        list(files), _pin_threaded, cost=lambda f: f.size + PIN_FILE_COST, min_cost=PIN_PARALLEL_MIN
    )
    rows = PinnedFiles(row for row, _token in pairs)
    rows.stats = [token for _row, token in pairs]
    return rows


# What hashing a file costs besides its bytes (opening, two fstat, the row), in bytes of
# SHA-256 at about 1 GB/s: ~30 µs. Below PIN_PARALLEL_MIN of work a fork costs more than it
# saves (a worker's page tables copied, a pipe, the results marshalled).
PIN_FILE_COST = 32 * 1024
PIN_PARALLEL_MIN = 16 * 1024 * 1024


def _pin_threaded(files: list[WorkspaceFile]) -> list[tuple[Pinned, str | None]]:
    workers = min(4, os.cpu_count() or 1)
    if len(files) < 64 or workers == 1:
        return [_pin_one(f) for f in files]
    # A few slices per thread, not a future per file: most files are small.
    step = max(1, len(files) // (workers * 4))
    slices = [files[i : i + step] for i in range(0, len(files), step)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [pair for pairs in pool.map(_pin_slice, slices) for pair in pairs]


def _pin_slice(files: list[WorkspaceFile]) -> list[tuple[Pinned, str | None]]:
    return [_pin_one(f) for f in files]


def fingerprint(entry: Sequence[Any]) -> str:
    """A file's fingerprint: its SHA-256, marked when executable (a chmod must show too)."""
    return entry[2] if entry[3] == MODE_FILE else f"{entry[2]}+x"


def fingerprints(entries: Iterable[Sequence[Any]]) -> dict[str, str]:
    return {e[0]: fingerprint(e) for e in entries}


def bins_by_size(
    entries: Sequence[Sequence[Any]], chunk_bytes: int, max_files: int
) -> list[tuple[int, int]]:
    """Consecutive index ranges of about `chunk_bytes` (a larger file gets a range of its own)."""
    ranges: list[tuple[int, int]] = []
    start, size = 0, 0
    for i, entry in enumerate(entries):
        if i > start and (size + entry[1] > chunk_bytes or i - start >= max_files):
            ranges.append((start, i))
            start, size = i, 0
        size += entry[1]
    if start < len(entries):
        ranges.append((start, len(entries)))
    return ranges


def pinned_workspace(ctx: ExecutionContext) -> Workspace:
    return get_workspace(require_manifest(ctx, "workspace"), path="manifest.workspace")


# At most this many refused files are named in one partition's output (the count is exact).
REFUSED_SHOWN = 20


def refused_report(ctx: ExecutionContext) -> dict[str, Any]:
    """What the stage's file listing refused, for a partition's output (dry-run and apply).

    `{"refused_files": [{"path", "code", "reason"}, ...] (at most REFUSED_SHOWN),
    "refused_files_count": n}` when the manifest names refused files
    (`runs_app.kinds.workspace.REFUSED_FILES`: symlinks and hard links to files outside the
    workspace), else `{}`: a clean tree's outputs keep their shape. Every partition reports
    the stage's list, so whichever output a reader opens says what the stage left out.
    """
    refused = ctx.manifest.get(REFUSED_FILES) or []
    if not isinstance(refused, list) or not refused:
        return {}
    return {"refused_files": refused[:REFUSED_SHOWN], "refused_files_count": len(refused)}


def pinned_range(ctx: ExecutionContext) -> list[Pinned]:
    """The manifest's file rows this partition owns, after checking the range."""
    files = require_manifest(ctx, "files")
    start = require_input(ctx, "file_range_start", int)
    end = require_input(ctx, "file_range_end", int)
    if not 0 <= start <= end <= len(files):
        raise ComponentError(
            f"file range [{start}, {end}) is outside the pinned list of {len(files)} files",
            code=INVALID_INPUTS,
            permanent=True,
            path="inputs.file_range_end",
        )
    return files[start:end]


class HashingReader:
    """A read-only file wrapper that hashes what passes through (one read of each file)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.digest.update(data)
        self.count += len(data)
        return data


class HashingWriter:
    """A write-only file wrapper that hashes what passes through (the archive's digest)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.count += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def changed(rel: str) -> ComponentError:
    return ComponentError(
        f"{rel} changed since the manifest was made; re-run the dry-run",
        code=WORKSPACE_CHANGED,
        path="manifest.files",
    )


def read_verified(ws: Workspace, entry: Sequence[Any]) -> bytes:
    """A pinned file's bytes, refused unless they still match the pinned hash."""
    data = ws.read_file(entry[0], path="manifest.files")
    if hashlib.sha256(data).hexdigest() != entry[2]:
        raise changed(entry[0])
    return data


def stream_verified(
    ws: Workspace, entry: Sequence[Any], out: IO[bytes] | None = None, *, head: int = 0
) -> bytes:
    """Stream a pinned file (into `out`, when given) in 1 MiB chunks, checking its hash.

    Returns its first `head` bytes (for header parsing) without holding the whole file in
    memory: media files may be large. Raises `workspace_changed` on any difference; a caller
    writing to a temporary file lets that exception remove it.
    """
    digest = hashlib.sha256()
    first = b""
    size = 0
    with ws.open_file(entry[0], path="manifest.files") as f:
        while chunk := f.read(1 << 20):
            if len(first) < head:
                first += chunk[: head - len(first)]
            digest.update(chunk)
            size += len(chunk)
            if out is not None:
                out.write(chunk)
    if size != entry[1] or digest.hexdigest() != entry[2]:
        raise changed(entry[0])
    return first


def verify_pinned(
    ws: Workspace, entry: Sequence[Any], token: str | None, *, head: int = 0
) -> bytes:
    """A pinned file's first `head` bytes, after checking it is still the file that was
    hashed: by its stat when `token` (its stat token from `pin`) is given and still matches,
    reading only the header (nothing at all for `head` 0); otherwise by reading it whole and
    checking its size and SHA-256 (`stream_verified`). Raises `workspace_changed` on any
    difference, `path_escape` for a file that became a symlink out of the workspace.

    The trade-off (module docstring): a rewrite that restores both mtime and ctime is not
    seen; one that changes either is, and so is a file swapped for another (inode).
    """
    if token is not None:
        if head <= 0:
            if stat_token(ws.stat_file(entry[0], path="manifest.files")) == token:
                return b""
        else:
            with ws.open_file(entry[0], path="manifest.files") as f:
                # The descriptor's stat, not the name's: what is read is what was checked.
                if stat_token(os.fstat(f.fileno())) == token:
                    return f.read(head)
    return stream_verified(ws, entry, head=head)


def pinned_stats(ctx: ExecutionContext, rows: Sequence[Pinned]) -> list[str | None]:
    """The stat tokens of `rows` (this partition's `pinned_range`), in their order; None for
    every row when the manifest holds none that line up with its files (a manifest made
    before tokens, or by a partitioner that records none): each file is then hashed."""
    files = ctx.manifest.get("files")
    stats = ctx.manifest.get(FILE_STATS)
    start = ctx.inputs.get("file_range_start")
    if (
        isinstance(stats, list)
        and isinstance(files, list)
        and len(stats) == len(files)
        and isinstance(start, int)
    ):
        return [s if isinstance(s, str) else None for s in stats[start : start + len(rows)]]
    return [None] * len(rows)


class Beat:
    """Calls ctx.heartbeat() at most every `every_s` (it may write to the database)."""

    def __init__(self, ctx: ExecutionContext, every_s: float = 1.0) -> None:
        self.ctx = ctx
        self.every_s = every_s
        self.last = time.monotonic()

    def __call__(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.every_s:
            self.ctx.heartbeat()
            self.last = now

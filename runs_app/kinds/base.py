"""What every built-in partitioner and executor shares: params, error codes, atomic publishing.

Publishing is how executors stay exactly-once when a partition is delivered twice: a result is
written under a temporary name owned by one attempt (`<final>.tmp-<partition>-<fence>`) and then
renamed onto a content-addressed final name. A second delivery either finds the final name
already there (and writes nothing) or produces byte-identical content; a dead attempt leaves
only a `*.tmp-*` file that `cleanup_stale` removes.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, storages
from django.db import connection

from blueprints_app.registry import ComponentError, ExecutionContext, Partitioner
from blueprints_app.validation import python_values, schema_errors
from runs_app.targets import target_names
from runs_app.workspaces import workspace_names

INVALID_PARAMS = "invalid_params"
INVALID_INPUTS = "invalid_inputs"
INVALID_MANIFEST = "invalid_manifest"

# A temporary file untouched for this long belongs to a dead attempt: live writers append to
# theirs continuously, and leases are far shorter (HXO_LEASE_MS, 30 s by default).
STALE_AFTER_S = 15 * 60
TMP_MARKER = ".tmp-"


# --- params ------------------------------------------------------------------------------


def workspace_param(description: str = "A workspace registered in HXO_WORKSPACES") -> dict:
    names = workspace_names()
    schema: dict[str, Any] = {
        "type": "string",
        "enum": names,
        "title": "Workspace",
        "description": description,
        "x-hxo-widget": "workspace",
    }
    if "demo" in names:
        schema["default"] = "demo"
    return schema


def target_param(description: str = "A database registered in HXO_DATABASE_TARGETS") -> dict:
    names = target_names()
    schema: dict[str, Any] = {
        "type": "string",
        "enum": names,
        "title": "Database target",
        "description": description,
        "x-hxo-widget": "target",
    }
    if "demo" in names:
        schema["default"] = "demo"
    return schema


def required_unless_default(name: str) -> list[str]:
    """`workspace`/`target` may be left out when a "demo" one is registered to default to
    (the contract's own example stage names none); otherwise a plan must name one."""
    names = workspace_names() if name == "workspace" else target_names()
    return [] if "demo" in names else [name]


def subdir_param(default: str, description: str) -> dict:
    return {
        "type": "string",
        "default": default,
        "minLength": 1,
        "maxLength": 500,
        "title": "Directory",
        "description": description,
        "x-hxo-widget": "workspace-path",
    }


GLOBS_PARAM = {
    "type": "array",
    "items": {"type": "string", "minLength": 1, "maxLength": 200},
    "maxItems": 50,
    "default": [],
}


def resolve_params(partitioner: type[Partitioner], params: Any) -> dict[str, Any]:
    """Params validated against the partitioner's schema, with top-level defaults filled in
    and integral floats as ints (`python_values`: `"batch_size": 1.0` is the integer 1).

    The validator already checked them when the plan was saved; checking again here keeps a
    partitioner safe when called directly, or after settings changed (a workspace removed).
    """
    if not isinstance(params, dict):
        raise ComponentError(
            "params must be a JSON object", code=INVALID_PARAMS, permanent=True, path="params"
        )
    schema = partitioner.get_params_schema()
    errors = schema_errors(schema, params, "params")
    if errors:
        first = errors[0]
        raise ComponentError(first.message, code=INVALID_PARAMS, permanent=True, path=first.path)
    resolved = python_values(params)
    for name, prop in schema.get("properties", {}).items():
        if name not in resolved and "default" in prop:
            resolved[name] = copy.deepcopy(prop["default"])
    return resolved


def require_input(ctx: ExecutionContext, name: str, typ: type) -> Any:
    value = ctx.inputs.get(name)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ComponentError(
            f"partition input {name!r} must be {typ.__name__}",
            code=INVALID_INPUTS,
            permanent=True,
            path=f"inputs.{name}",
        )
    return value


def require_manifest(ctx: ExecutionContext, name: str) -> Any:
    if name not in ctx.manifest:
        raise ComponentError(
            f"the stage manifest has no {name!r}: was it made by another partitioner?",
            code=INVALID_MANIFEST,
            permanent=True,
            path=f"manifest.{name}",
        )
    return ctx.manifest[name]


# --- presentation -------------------------------------------------------------------------


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --- publishing ---------------------------------------------------------------------------


def storage_root(storage: Storage) -> Path | None:
    """The local directory behind a storage, when it has one (FileSystemStorage)."""
    try:
        return Path(storage.path(""))
    except NotImplementedError:
        return None


def tmp_suffix(ctx: ExecutionContext) -> str:
    return f"{TMP_MARKER}{ctx.partition_id}-{ctx.fence}"


@contextlib.contextmanager
def atomic_local_file(final: Path, ctx: ExecutionContext) -> Iterator[tuple[Path, IO[bytes]]]:
    """A temporary file beside `final` for this attempt; removed unless the caller renamed it.

    The caller writes, then `os.replace`s it (or leaves it to be deleted when the content
    turned out to exist already). Any exception, LeaseLost included, removes it.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + tmp_suffix(ctx))
    f = open(tmp, "wb")  # noqa: SIM115 (closed below, before any rename)
    try:
        yield tmp, f
    finally:
        f.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def publish(
    storage: Storage,
    name: str,
    ctx: ExecutionContext,
    write: Callable[[IO[bytes]], object],
    *,
    size: int | None = None,
    sha256: str | None = None,
) -> bool:
    """Store the content `write` produces under `name` unless `name` exists; True if written.

    `name` must be content-addressed: an existing object of that name holds the same bytes,
    so it is never rewritten. When the caller knows the content's `size` (and `sha256`), an
    existing object that does not match them is damaged, and is replaced: an apply that runs
    because the effect check found it damaged then restores it instead of leaving it so.
    """
    damaged = False
    if storage.exists(name):
        if (size is None and sha256 is None) or object_matches(
            storage, name, size=size, sha256=sha256
        ):
            return False
        damaged = True
    root = storage_root(storage)
    if root is not None:
        final = Path(storage.path(name))
        with atomic_local_file(final, ctx) as (tmp, f):
            write(f)
            f.flush()
            os.fsync(f.fileno())
            f.close()
            if final.exists() and not damaged:  # another delivery won the race, same bytes
                return False
            os.replace(tmp, final)
        return True
    # A remote storage (S3...): stage locally, then upload once; the name is the content.
    local_tmp = Path(settings.VAR_DIR) / "tmp" / (name.replace("/", "_"))
    with atomic_local_file(local_tmp, ctx) as (tmp, f):
        write(f)
        f.close()
        if damaged:
            storage.delete(name)  # a save over an existing name would pick another name
        with open(tmp, "rb") as src:
            storage.save(name, File(src))
    return True


def cleanup_tmp_files(root: Path | None, *, older_than_s: float = STALE_AFTER_S) -> int:
    """Remove `*.tmp-*` files under `root` untouched for `older_than_s`; returns the count."""
    if root is None or not root.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if TMP_MARKER not in name:
                continue
            path = Path(dirpath) / name
            try:
                if path.lstat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
    return removed


def stage_kind(ctx: Any) -> str:
    return ctx.kind.kind


# --- effects: what an output says it did, and whether that still exists --------------------
#
# An apply's output carries `effect`: where the effect lives (a storage, HXO's database, a
# cache, a target) by identity, never by alias alone, and a digest of what is there. The
# Merkle leaf covers the output, so a verified receipt vouches for these. `effect_exists`
# (blueprints_app.registry.Executor) compares them with what is there now before a reuse.


def digest_of(value: Any) -> str:
    """SHA-256 of the canonical JSON of `value` (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def storage_identity(alias: str) -> str:
    """Where a storage alias keeps its files: `file:<real path>` for a local one, the backend
    class with its bucket and location otherwise (never credentials)."""
    storage = storages[alias]
    root = storage_root(storage)
    if root is not None:
        return f"file:{os.path.realpath(root)}"
    cls = type(storage)
    bucket = getattr(storage, "bucket_name", "") or ""
    location = getattr(storage, "location", "") or ""
    return f"{cls.__module__}.{cls.__qualname__}:{bucket}/{location}"


def database_identity() -> str:
    """HXO's own database (where the asset and docs indexes live), as Target.identity does
    for targets: the SQLite file's real path, or PostgreSQL host, port and database name."""
    cfg = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:{os.path.realpath(str(cfg['NAME']))}"
    host = cfg.get("HOST") or "localhost"
    return f"{connection.vendor}://{host}:{cfg.get('PORT') or 5432}/{cfg.get('NAME', '')}"


def cache_identity(alias: str) -> str:
    """A cache alias's backend and location (the registry cache's directory or server)."""
    cfg = settings.CACHES[alias]
    location = cfg.get("LOCATION", "")
    if isinstance(location, (list, tuple)):
        location = ",".join(str(x) for x in location)
    if "filebased" in cfg.get("BACKEND", "").lower():
        location = os.path.realpath(str(location))
    return f"{cfg.get('BACKEND', '')}:{location}"


def storage_effect(alias: str, name: str, sha256: str, size: int) -> dict[str, Any]:
    """The `effect` of one content-addressed object written to a storage.

    Called right after the object was written or hash-verified, so its `stat` (`file_stat`;
    None in a remote storage) vouches for these bytes until the file is written again."""
    return {
        "storage": alias,
        "location": storage_identity(alias),
        "name": name,
        "sha256": sha256,
        "bytes": size,
        "stat": storage_stat(alias, name),
    }


def storage_effect_matches(alias: str, effect: Any, *, thorough: bool = False) -> bool:
    """Whether the object a `storage_effect` describes is there, as recorded: present at the
    recorded location with its size, and either its stat identity unchanged since it was
    recorded or its SHA-256 the recorded one (always hashed when `thorough`)."""
    if not isinstance(effect, dict):
        return False
    return stored_object_matches(
        alias,
        effect.get("name"),
        size=effect.get("bytes"),
        sha256=effect.get("sha256"),
        location=effect.get("location"),
        stat=effect.get("stat"),
        thorough=thorough,
    )


def file_stat(path: str | os.PathLike[str]) -> list[int] | None:
    """A file's stat identity `[size, mtime_ns, ctime_ns, inode]`, or None when it is not a
    regular file (or cannot be read).

    Recorded when HXO writes (or hash-verifies) a file, and compared before trusting it
    again without hashing: any write to the file, a replacement by another file, and even a
    `touch -d` that sets mtime back, all change ctime or the inode, and a user cannot set
    ctime back (only the clock can). Same rule as git's index and rsync's quick check, with
    ctime and inode added so that a same-size, same-mtime rewrite is still caught."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def storage_stat(alias: str, name: str) -> list[int] | None:
    """`file_stat` of object `name` in storage `alias`; None for a remote storage (S3...),
    whose objects are then always hashed to be checked."""
    root = storage_root(storages[alias])
    if root is None:
        return None
    return file_stat(storages[alias].path(name))


def stats_digest(paths: Iterable[str | os.PathLike[str]]) -> str | None:
    """Digest of the stat identities of `paths`, in order; None when one is missing."""
    rows = []
    for path in paths:
        st = file_stat(path)
        if st is None:
            return None
        rows.append([str(path), st])
    return digest_of(rows)


def stored_object_matches(
    alias: str,
    name: Any,
    *,
    size: Any = None,
    sha256: Any = None,
    location: Any = None,
    stat: Any = None,
    thorough: bool = False,
) -> bool:
    """Whether `name` exists in storage `alias` (still at `location`, when given) with `size`
    bytes and, when `sha256` is given, exactly that content. Read only; any error reading
    counts as not there.

    `stat`: the `file_stat` recorded when the object was written or last hashed. When the
    object's stat identity is still that one, it has not been written since and is not
    hashed again (unless `thorough`); otherwise it is hashed."""
    if location is not None and location != storage_identity(alias):
        return False
    if (
        not thorough
        and isinstance(stat, list)
        and isinstance(name, str)
        and name
        and storage_stat(alias, name) == stat
        and (size is None or stat[0] == size)
    ):
        return True
    return object_matches(storages[alias], name, size=size, sha256=sha256)


def object_matches(storage: Storage, name: Any, *, size: Any = None, sha256: Any = None) -> bool:
    """`stored_object_matches` for a storage object: present, `size` bytes when given, and
    that SHA-256 when given (streamed, 1 MiB at a time)."""
    if not isinstance(name, str) or not name:
        return False
    try:
        if not storage.exists(name):
            return False
        if size is not None and storage.size(name) != size:
            return False
        if sha256 is None:
            return True
        digest = hashlib.sha256()
        with storage.open(name, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == sha256

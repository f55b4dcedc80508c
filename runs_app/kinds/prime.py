"""deploy.prime: the `by_dag_depth` partitioner and the `warm_registry` / `prime_caches` executors.

`by_dag_depth` makes one partition per module, in wave = its depth in the workspace's import
graph (leaves first), so a module is primed after everything it imports. `by_module` (in
pack.py) also serves this kind, one partition per top-level package.

`warm_registry` writes one registry entry per module (imports, public names, source hash) into
the "hxo-registry" cache alias; `prime_caches` compiles modules to checked-hash bytecode
(PEP 552) under `<HXO_BYTECODE_DIR>/<workspace>/` (default `VAR_DIR/cache/bytecode`), never into the
workspace. Both skip modules whose entry or bytecode already matches the source hash. Neither
imports nor runs workspace code: `ast.parse` and `py_compile` only.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.util
import os
import py_compile
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from django.conf import settings
from django.core.cache import BaseCache, caches
from django.template.defaultfilters import filesizeformat

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
from runs_app.kinds import pygraph
from runs_app.kinds.base import (
    INVALID_INPUTS,
    atomic_local_file,
    cache_identity,
    cleanup_tmp_files,
    digest_of,
    plural,
    require_input,
    require_manifest,
)
from runs_app.kinds.files import (
    Beat,
    changed,
    fingerprints,
    pin,
    pinned_workspace,
    refused_report,
)
from runs_app.kinds.workspace import WorkspacePartitioner
from runs_app.workspaces import Workspace

SYNTAX_ERROR = "syntax_error"
REGISTRY_CACHE = "hxo-registry"
REGISTRY_FORMAT = 1
# Flags word of a PEP 552 pyc: bit 0 = hash-based, bit 1 = check the source hash on import.
PYC_CHECKED_HASH = 0b11


@register_partitioner
class ByDagDepth(WorkspacePartitioner):
    name = "by_dag_depth"
    description = (
        "One partition per Python module, in waves by depth in the import graph (leaves "
        "first): a module runs after the modules it imports."
    )
    root_default = "backend"
    root_help = "Directory holding the Python packages (a package itself or not)."

    def partition(self, ctx: PartitionContext) -> StageManifest:
        _params, ws, root_rel, files = self.workspace_files(ctx.params)
        py_files = [f for f in files if f.rel.endswith(".py")]
        modules = pygraph.discover(ws, root_rel, py_files)
        module_rels = {m.rel for m in modules.values()}
        pinned = {row[0]: row for row in pin(f for f in py_files if f.rel in module_rels)}
        depth = pygraph.depths({m.name: m.internal for m in modules.values()})
        rows: dict[str, Any] = {}
        specs = []
        for name in sorted(modules, key=lambda n: (depth[n], n)):
            info = modules[name]
            row = pinned[info.rel]
            rows[name] = info.row(row[2], depth[name])
            specs.append(
                PartitionSpec(
                    inputs={"module": name, "stage_kind": ctx.kind.kind},
                    fingerprints=fingerprints([row]),
                    wave=depth[name],
                    weight=row[1],
                    label=f"depth {depth[name]}: {name} "
                    f"({plural(len(info.internal), 'internal import')})",
                )
            )
        return StageManifest(
            partitions=specs,
            data={
                "partitioner": self.name,
                "workspace": ws.name,
                "root": root_rel,
                "modules": rows,
                "groups": {name: [name] for name in rows},
                "max_depth": max(depth.values(), default=0),
            },
        )


# --- shared by both executors -------------------------------------------------------------


def _group(ctx: ExecutionContext) -> list[tuple[str, dict[str, Any]]]:
    module = require_input(ctx, "module", str)
    groups = require_manifest(ctx, "groups")
    modules = require_manifest(ctx, "modules")
    if module not in groups:
        raise ComponentError(
            f"{module!r} is not a module group of this stage's manifest",
            code=INVALID_INPUTS,
            permanent=True,
            path="inputs.module",
        )
    return [(name, modules[name]) for name in groups[module]]


def _source(ws: Workspace, name: str, row: dict[str, Any]) -> bytes:
    """A pinned module's source, refused if it no longer matches the hash in the manifest."""
    data = ws.read_file(row["path"], path=f"manifest.modules.{name}")
    if hashlib.sha256(data).hexdigest() != row["sha256"]:
        raise changed(row["path"])
    return data


def _parse(source: bytes, name: str, rel: str) -> ast.Module:
    try:
        return ast.parse(source, filename=rel)
    except (SyntaxError, ValueError) as exc:
        raise ComponentError(
            f"{name} ({rel}) does not parse: {exc}",
            code=SYNTAX_ERROR,
            permanent=True,
            path=f"manifest.modules.{name}",
        ) from None


# --- warm_registry ------------------------------------------------------------------------


def registry_key(workspace: str, module: str) -> str:
    return f"hxo.registry:{workspace}:{module}"


def registry() -> BaseCache:
    return caches[REGISTRY_CACHE]


def registry_entry(ws: str, name: str, row: dict[str, Any], source: bytes) -> dict[str, Any]:
    """The registry entry of one module, sealed with `entry_digest` (the digest of the rest
    of it), so that an entry changed after it was written is not taken as current."""
    tree = _parse(source, name, row["path"])
    doc = ast.get_docstring(tree) or ""
    entry = {
        "format": REGISTRY_FORMAT,
        "workspace": ws,
        "module": name,
        "path": row["path"],
        "is_package": row["is_package"],
        "source_sha256": row["sha256"],
        "imports": pygraph.parse_imports(source, name, row["is_package"], row["path"]),
        "internal_imports": list(row["internal"]),
        "public_names": pygraph.public_names(tree),
        "classes": sorted(n.name for n in tree.body if isinstance(n, ast.ClassDef)),
        "functions": sorted(
            n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        ),
        "docstring": doc.strip().splitlines()[0] if doc.strip() else "",
        "lines": source.count(b"\n") + (0 if source.endswith(b"\n") or not source else 1),
        "depth": row.get("depth", 0),
    }
    entry["entry_digest"] = digest_of(entry)
    return entry


def _current(entry: Any, sha: str) -> bool:
    """An entry of this format for source `sha`, unchanged since it was written (its seal):
    a damaged entry with the right source hash is written again, not kept."""
    if not (
        isinstance(entry, dict)
        and entry.get("format") == REGISTRY_FORMAT
        and entry.get("source_sha256") == sha
    ):
        return False
    body = {k: v for k, v in entry.items() if k != "entry_digest"}
    return entry.get("entry_digest") == digest_of(body)


def _entries_digest(cache: BaseCache, keys: list[str], found: dict | None = None) -> str:
    """Digest of the registry entries under `keys` as the cache holds them now."""
    found = cache.get_many(keys) if found is None else found
    return digest_of([[key, found.get(key)] for key in keys])


@register_executor
class WarmRegistry(Executor):
    name = "warm_registry"
    description = (
        "Parses modules (never imports them) and writes one registry entry per module "
        "(imports, public names, source hash) into the hxo-registry cache; skips current ones."
    )
    idempotent = True
    supports_dry_run = True

    def execute(self, ctx: ExecutionContext) -> dict[str, Any]:
        ws = pinned_workspace(ctx)
        module = require_input(ctx, "module", str)
        group = _group(ctx)
        cache = registry()
        beat = Beat(ctx)
        plan = []
        for name, row in group:
            key = registry_key(ws.name, name)
            plan.append((name, row, key, _current(cache.get(key), row["sha256"])))
        if ctx.dry_run:
            to_write = [name for name, _row, _key, current in plan if not current]
            return {
                "summary": f"{module}: would write {plural(len(to_write), 'registry entry')}"
                f" ({len(plan) - len(to_write)} up to date)",
                "modules": [
                    {"module": name, "key": key, "action": "up_to_date" if current else "write"}
                    for name, _row, key, current in plan
                ],
                **refused_report(ctx),
                "entries_to_write": len(to_write),
                "up_to_date": len(plan) - len(to_write),
            }
        entries = {}
        for name, row, key, current in plan:
            beat()
            source = _source(ws, name, row)  # verified even when current: the entry must match
            if not current:
                entries[key] = registry_entry(ws.name, name, row, source)
        beat(force=True)
        # One write at the end: a lost lease leaves no entry of this partition behind.
        if entries:
            cache.set_many(entries, timeout=None)
        keys = [key for _name, _row, key, _current in plan]
        return {
            "status": "warmed",
            "module": module,
            "cache_entries": len(plan),
            "written": len(entries),
            **refused_report(ctx),
            "up_to_date": len(plan) - len(entries),
            "effect": {
                "cache": REGISTRY_CACHE,
                "location": cache_identity(REGISTRY_CACHE),
                "keys": len(keys),
                "entries_digest": _entries_digest(cache, keys),
            },
        }

    def effect_exists(self, ctx: ExecutionContext, output: dict[str, Any]) -> bool:
        """Every module of the group has its entry in the registry cache (at the recorded
        location), current for the pinned source hash, and the entries are exactly the ones
        recorded (their digest)."""
        effect = output.get("effect")
        if not isinstance(effect, dict) or effect.get("location") != cache_identity(REGISTRY_CACHE):
            return False
        ws = pinned_workspace(ctx)
        group = _group(ctx)
        keys = [registry_key(ws.name, name) for name, _row in group]
        found = registry().get_many(keys)
        if not all(_current(found.get(registry_key(ws.name, n)), r["sha256"]) for n, r in group):
            return False
        return _entries_digest(registry(), keys, found) == effect.get("entries_digest")


# --- prime_caches -------------------------------------------------------------------------


def bytecode_root() -> Path:
    """Where `prime_caches` writes bytecode: `HXO_BYTECODE_DIR` (default
    `VAR_DIR/cache/bytecode`, declared in settings)."""
    return Path(settings.HXO_BYTECODE_DIR)


def pyc_path(ws: str, rel: str) -> Path:
    """Where the bytecode of workspace file `rel` goes: the importlib layout, under our root."""
    tag = sys.implementation.cache_tag
    if tag is None:  # pragma: no cover (an interpreter without bytecode caching)
        raise ComponentError(
            "this interpreter writes no bytecode", code="unsupported", permanent=True
        )
    source = PurePosixPath(rel)
    return bytecode_root() / ws / source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"


def pyc_header(source: bytes) -> bytes:
    return (
        importlib.util.MAGIC_NUMBER
        + PYC_CHECKED_HASH.to_bytes(4, "little")
        + importlib.util.source_hash(source)
    )


def compile_pyc(source: bytes, origin: Path, out: Path, ctx: ExecutionContext) -> bytes:
    """Compile `source` (already checked against its pinned hash) into the checked-hash pyc
    `out` (PEP 552) with py_compile, and return the pyc's bytes.

    py_compile reads its source from a path: the checked bytes are written beside `out`
    under this attempt's temporary name (removed on return), so what is compiled is exactly
    what was pinned, whatever happens to the workspace file meanwhile. `origin`, the
    module's path in the workspace, is the code's `co_filename`. py_compile writes `out`
    atomically (its own temporary name starts with `out`'s, which already carries ours, so
    `cleanup_stale` finds it after a crash). Raises the compiler's SyntaxError (or
    ValueError) when `source` parses but does not compile.
    """
    with atomic_local_file(out.with_name(f"{origin.name}.source"), ctx) as (src, f):
        f.write(source)
        f.close()
        try:
            py_compile.compile(
                str(src),
                cfile=str(out),
                dfile=str(origin),
                doraise=True,
                optimize=0,
                invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
            )
        except py_compile.PyCompileError as exc:
            raise exc.exc_value from None
    return out.read_bytes()


def pyc_sidecar(path: Path) -> Path:
    """Where the SHA-256 of the bytes HXO wrote to the bytecode file `path` is kept."""
    return path.with_name(path.name + ".sha256")


def _pyc_current(path: Path, header: bytes) -> bool:
    """Whether `path` is the bytecode HXO compiled from the source whose header is `header`:
    the header matches, and the whole file is the bytes HXO wrote (their SHA-256, recorded
    beside it at write time). A header alone would keep a pyc whose body was damaged after
    it was written; compiling again to compare is what the check exists to save (and
    marshal's output is not byte-stable across processes), so the write-time digest is the
    reference. Bytecode is small: reading it whole costs little."""
    try:
        data = path.read_bytes()
        recorded = pyc_sidecar(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return False
    return data[: len(header)] == header and hashlib.sha256(data).hexdigest() == recorded


def _bytecode_digest(root: Path, targets: list[Path]) -> str | None:
    """Digest of the bytecode files (relative path, SHA-256 of the bytes); None if one is
    missing."""
    rows = []
    for target in targets:
        try:
            data = target.read_bytes()
        except OSError:
            return None
        rows.append([str(target.relative_to(root)), hashlib.sha256(data).hexdigest()])
    return digest_of(rows)


@register_executor
class PrimeCaches(Executor):
    name = "prime_caches"
    description = (
        "Compiles modules to checked-hash bytecode (PEP 552) in HXO's cache directory, never "
        "into the workspace; skips modules whose bytecode matches the source."
    )
    idempotent = True
    supports_dry_run = True

    def execute(self, ctx: ExecutionContext) -> dict[str, Any]:
        ws = pinned_workspace(ctx)
        module = require_input(ctx, "module", str)
        group = _group(ctx)
        beat = Beat(ctx)
        plan = []
        for name, row in group:
            source = _source(ws, name, row)
            target = pyc_path(ws.name, row["path"])
            header = pyc_header(source)
            plan.append((name, row, source, target, header, _pyc_current(target, header)))
        root = bytecode_root()
        if ctx.dry_run:
            todo = [p for p in plan if not p[5]]
            return {
                "summary": f"{module}: would compile {plural(len(todo), 'module')}"
                f" ({len(plan) - len(todo)} up to date)",
                "modules": [
                    {
                        "module": name,
                        "pyc": str(target.relative_to(root)),
                        "action": "up_to_date" if current else "compile",
                    }
                    for name, _row, _src, target, _hdr, current in plan
                ],
                **refused_report(ctx),
                "to_compile": len(todo),
                "up_to_date": len(plan) - len(todo),
            }
        written = 0
        compiled: list[tuple[Path, Path, bytes]] = []
        with contextlib.ExitStack() as temporaries:
            # Compile everything first: a syntax error fails the partition before any write.
            for name, row, source, target, _header, current in plan:
                beat()
                if current:
                    continue
                _parse(source, name, row["path"])
                # This attempt's name for the pyc, removed on the way out unless renamed;
                # closed at once (py_compile replaces the file), so no descriptor is held
                # per module of a large package.
                tmp, reserved = temporaries.enter_context(atomic_local_file(target, ctx))
                reserved.close()
                data = compile_pyc(source, ws.root / row["path"], tmp, ctx)
                compiled.append((target, tmp, data))
            beat(force=True)
            for target, tmp, data in compiled:
                os.replace(tmp, target)
                # The digest after the file: a crash between the two leaves a digest that
                # does not match, so the module is compiled again, never trusted.
                digest = hashlib.sha256(data).hexdigest().encode()
                with atomic_local_file(pyc_sidecar(target), ctx) as (side, f):
                    f.write(digest)
                    f.close()
                    os.replace(side, pyc_sidecar(target))
                written += len(data)
        targets = [target for _n, _r, _s, target, _h, _c in plan]
        return {
            "status": "warmed",
            "module": module,
            "cache_entries": len(plan),
            "compiled": len(compiled),
            "up_to_date": len(plan) - len(compiled),
            **refused_report(ctx),
            "bytes": written,
            "summary": f"{module}: compiled {plural(len(compiled), 'module')} "
            f"({filesizeformat(written)})",
            "effect": {
                "root": os.path.realpath(root),
                "files": len(targets),
                "files_digest": _bytecode_digest(root, targets),
            },
        }

    def effect_exists(self, ctx: ExecutionContext, output: dict[str, Any]) -> bool:
        """Every module of the group has its bytecode file under the recorded root, with
        the header of the pinned source (checked-hash pyc), and the files are byte for byte
        the ones recorded (a digest over all of them: bytecode is small, reading it is
        cheap next to compiling)."""
        effect = output.get("effect")
        root = bytecode_root()
        if not isinstance(effect, dict) or effect.get("root") != os.path.realpath(root):
            return False
        ws = pinned_workspace(ctx)
        targets = []
        for name, row in _group(ctx):
            target = pyc_path(ws.name, row["path"])
            if not _pyc_current(target, pyc_header(_source(ws, name, row))):
                return False
            targets.append(target)
        return _bytecode_digest(root, targets) == effect.get("files_digest")

    def cleanup_stale(self) -> int:
        return cleanup_tmp_files(bytecode_root())

"""deploy.prime: the `by_dag_depth` partitioner and the `warm_registry` / `prime_caches` executors.

`by_dag_depth` makes one partition per module, in wave = its depth in the workspace's import
graph (leaves first), so a module is primed after everything it imports. `by_module` (in
pack.py) also serves this kind, one partition per top-level package. Both name modules as
Python imports them (`pygraph.discover_tree`: PEP 420, src layouts, migration names) and pin
in the manifest the files they skipped (`skipped`), the modules that will not compile for the
target interpreter (`failed_modules`, with file and line) and the import cycles (`cycles`).

`warm_registry` writes one registry entry per module (imports, public names, source hash) into
the `RegistryEntry` table (a table because a cache evicts); `prime_caches` compiles modules to
checked-hash bytecode (PEP 552) for the stage's target interpreter (`pyinterp`) under
`<HXO_BYTECODE_DIR>/<workspace>/` (default `VAR_DIR/cache/bytecode`), never into the
workspace. Both skip modules whose entry or bytecode already matches the source hash. A module
that does not parse or compile is a per-module failure (`failed_modules` in the output); the
partition succeeds for the others unless the stage says `on_module_error: "fail"`. Neither
imports nor runs workspace code: `ast.parse` and `compile` only (in a subprocess of the target
interpreter, `py_compile`).
"""

from __future__ import annotations

import _imp
import ast
import contextlib
import hashlib
import marshal
import os
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from django.conf import settings
from django.db import connections, transaction
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

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
from runs_app.kinds import pygraph, pyinterp
from runs_app.kinds.base import (
    INVALID_INPUTS,
    atomic_local_file,
    cleanup_tmp_files,
    digest_of,
    plural,
    require_input,
    require_manifest,
    resolve_params,
    tmp_suffix,
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
from runs_app.models import RegistryEntry
from runs_app.workspaces import Workspace

SYNTAX_ERROR = "syntax_error"
REGISTRY_FORMAT = 1
# Flags word of a PEP 552 pyc: bit 0 = hash-based, bit 1 = check the source hash on import.
PYC_CHECKED_HASH = 0b11


def prime_params() -> dict[str, Any]:
    """The params deploy.prime's partitioners take after the workspace ones."""
    return pyinterp.prime_params()


def validate_prime_params(partitioner: type, params: dict[str, Any]) -> list[ComponentError]:
    """Plan-time checks a schema cannot make: the target interpreter is installed here."""
    try:
        resolved = resolve_params(partitioner, params)
    except ComponentError:
        return []  # the schema errors are reported already
    return pyinterp.validate(resolved)


def failed_module(name: str, rel: str, error: dict[str, Any]) -> dict[str, Any]:
    """One entry of `failed_modules`: {module, file, line, error, type}."""
    return {
        "module": name,
        "file": rel,
        "line": error.get("line"),
        "error": error.get("message", ""),
        "type": error.get("type", "SyntaxError"),
    }


def _target_check(interp: pyinterp.Interpreter, ws: Workspace, discovery: Any) -> None:
    """For another interpreter, its own compiler decides which modules fail (HXO's parser
    knows only its own grammar, and `feature_version` is best effort): one subprocess
    compiles every module without writing. A module HXO cannot parse but the target can
    keeps no error; its imports are unknown to the graph (`imports_unread`)."""
    infos = list(discovery.modules.values())
    verdicts = pyinterp.compile_batch(interp, [(ws.root / m.rel, None, m.rel) for m in infos])
    for info, verdict in zip(infos, verdicts, strict=True):
        if verdict is None and info.error:
            info.imports_unread = info.parse_error
            info.error, info.parse_error = None, ""
        elif verdict is not None:
            info.error = verdict
            info.parse_error = f"{verdict['type']}: {verdict['message']} (line {verdict['line']})"


def prime_manifest(
    ctx: PartitionContext, params: dict[str, Any], ws: Workspace, root_rel: str, files: list
) -> tuple[Any, dict[str, int], dict[str, Any]]:
    """(discovery, depths, manifest data common to prime's partitioners) for a stage.

    The target interpreter (`pyinterp.resolve`, permanent error when it is not installed)
    gives the grammar modules are parsed with; modules that will not compile are in
    `failed_modules`, files that are not modules in `skipped`, import cycles in `cycles`.
    """
    interp = pyinterp.resolve(params)
    running = sys.version_info[:2]
    # warm_registry's entries are read from the same parse as the graph (`registry_facts`):
    # a module is parsed once per run, not once here and again by the executor.
    facts = ctx.stage.get("executor") == WarmRegistry.name
    discovery = pygraph.discover_tree(
        ws,
        root_rel,
        files,
        package_roots=params.get("package_roots") or None,
        feature_version=interp.version if interp.version <= running else None,
        summaries=facts,
    )
    if not interp.is_running:
        _target_check(interp, ws, discovery)
    graph = {m.name: m.internal for m in discovery.modules.values()}
    depth = pygraph.depths(graph)
    failed = [failed_module(m.name, m.rel, m.error) for m in discovery.modules.values() if m.error]
    data = {
        "interpreter": interp.as_json(),
        "on_module_error": params.get("on_module_error", "skip"),
        "import_roots": discovery.roots,
        "skipped": discovery.skipped,
        "failed_modules": sorted(failed, key=lambda f: f["module"]),
        "cycles": pygraph.cycles(graph, depth),
    }
    if facts:
        data["registry_facts"] = {
            m.name: m.summary for m in discovery.modules.values() if m.summary and not m.error
        }
    return discovery, depth, data


@register_partitioner
class ByDagDepth(WorkspacePartitioner):
    name = "by_dag_depth"
    inputs_schema = fields_schema({"module": "string", "stage_kind": "string"})
    description = (
        "One partition per Python module, in waves by depth in the import graph (leaves "
        "first): a module runs after the modules it imports. Only imports that run when a "
        "module is imported make edges; import cycles share one wave."
    )
    root_default = "backend"
    root_help = "Directory holding the Python packages (a package itself or not)."

    @classmethod
    def own_params(cls) -> dict[str, Any]:
        return prime_params()

    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> list[ComponentError]:
        return validate_prime_params(cls, params)

    def partition(self, ctx: PartitionContext) -> StageManifest:
        params, ws, root_rel, files = self.workspace_files(ctx.params)
        py_files = [f for f in files if f.rel.endswith(".py")]
        discovery, depth, extra = prime_manifest(ctx, params, ws, root_rel, files)
        modules = discovery.modules
        module_rels = {m.rel for m in modules.values()}
        pinned = {row[0]: row for row in pin(f for f in py_files if f.rel in module_rels)}
        cycle_of = {m: c["size"] for c in extra["cycles"] for m in c["modules"]}
        rows: dict[str, Any] = {}
        specs = []
        for name in sorted(modules, key=lambda n: (depth[n], n)):
            info = modules[name]
            row = pinned[info.rel]
            rows[name] = info.row(row[2], depth[name])
            note = f", in an import cycle of {cycle_of[name]}" if name in cycle_of else ""
            if info.error:
                note = f", does not compile (line {info.error.get('line')})"
            specs.append(
                PartitionSpec(
                    inputs={"module": name, "stage_kind": ctx.kind.kind},
                    fingerprints=fingerprints([row]),
                    wave=depth[name],
                    weight=row[1],
                    label=f"depth {depth[name]}: {name} "
                    f"({plural(len(info.internal), 'internal import')}{note})",
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
                **extra,
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
    """The module's syntax tree; ModuleFailed when it does not parse."""
    try:
        return pygraph.parse_module(source, rel)
    except pygraph.PARSE_ERRORS as exc:
        raise ModuleFailed(failed_module(name, rel, pygraph.error_record(exc))) from None


class ModuleFailed(Exception):
    """One module cannot be parsed or compiled: a per-module failure (`failed_modules`),
    never an exception that leaves the executor (the engine would retry it as transient)."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(record["error"])
        self.record = record


def _known_failures(group: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The group's modules the partitioner found would not compile (their manifest `error`)."""
    return [failed_module(n, r["path"], r["error"]) for n, r in group if r.get("error")]


def _on_module_error(ctx: ExecutionContext) -> str:
    value = ctx.manifest.get("on_module_error", "skip")
    return value if value in ("skip", "fail") else "skip"


def _failures_text(failed: list[dict[str, Any]], limit: int = 3) -> str:
    """`a.py:12 invalid syntax; ...` for a summary line (the first `limit`)."""
    shown = [f"{f['file']}:{f['line'] or '?'} {f['error']}" for f in failed[:limit]]
    more = f" and {len(failed) - limit} more" if len(failed) > limit else ""
    return "; ".join(s.replace("\n", " ") for s in shown) + more


def _fail_partition(module: str, failed: list[dict[str, Any]]) -> ComponentError:
    """What `on_module_error: fail` raises: a permanent syntax_error naming the modules."""
    first = failed[0]
    return ComponentError(
        f"{module}: {plural(len(failed), 'module')} "
        f"{'does' if len(failed) == 1 else 'do'} not compile: {_failures_text(failed)}",
        code=SYNTAX_ERROR,
        permanent=True,
        path=f"manifest.modules.{first['module']}",
    )


# --- warm_registry ------------------------------------------------------------------------


def registry_location() -> str:
    """Where registry entries live: the `RegistryEntry` table of HXO's default database
    (vendor and name), recorded in an effect so a moved database is not taken as holding it."""
    conn = connections[RegistryEntry.objects.db]
    return f"table:{RegistryEntry._meta.db_table}@{conn.vendor}:{conn.settings_dict.get('NAME')}"


def registry_get(workspace: str, modules: list[str]) -> dict[str, dict[str, Any]]:
    """module → stored entry document, for those of `modules` that have one."""
    found: dict[str, dict[str, Any]] = {}
    for i in range(0, len(modules), 500):  # bounded IN lists (SQLite's variable limit)
        rows = RegistryEntry.objects.filter(workspace=workspace, module__in=modules[i : i + 500])
        found.update(rows.values_list("module", "entry"))
    return found


def registry_entry(
    ws: str,
    name: str,
    row: dict[str, Any],
    source: bytes,
    facts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The registry entry of one module, sealed with `entry_digest` (the digest of the rest
    of it), so that an entry changed after it was written is not taken as current.

    `imports` are the imports that run when the module is imported; `deferred_imports` the
    others (inside functions, `if TYPE_CHECKING:`). `facts` is the partitioner's
    `registry_facts` entry for the module (`pygraph.summarize` of its parse at partition
    time, with the SHA-256 of the bytes parsed): used when it is of `source` (the pinned
    hash), so the module is not parsed again; else the source is parsed here. Raises
    ModuleFailed when the source does not parse."""
    if _facts_of(facts, row["sha256"]):
        summary, imports = facts, list(row["imports"])
    else:
        with pygraph.gc_paused():
            tree = _parse(source, name, row["path"])
            summary = pygraph.summarize(tree, name, row["is_package"], row["path"])
            imports = pygraph.flat_imports(
                pygraph.import_records(tree, name, row["is_package"], row["path"])
            )
            del tree
    entry = {
        "format": REGISTRY_FORMAT,
        "workspace": ws,
        "module": name,
        "path": row["path"],
        "is_package": row["is_package"],
        "source_sha256": row["sha256"],
        "imports": imports,
        "deferred_imports": list(summary["deferred_imports"]),
        "internal_imports": list(row["internal"]),
        "public_names": list(summary["public_names"]),
        "classes": list(summary["classes"]),
        "functions": list(summary["functions"]),
        "docstring": summary["docstring"],
        "lines": source.count(b"\n") + (0 if source.endswith(b"\n") or not source else 1),
        "depth": row.get("depth"),
    }
    entry["entry_digest"] = digest_of(entry)
    return entry


FACT_KEYS = ("sha256", "deferred_imports", "public_names", "classes", "functions", "docstring")


def _facts_of(facts: Any, sha: str) -> bool:
    """Whether `facts` (a manifest's `registry_facts` entry) is usable for source `sha`:
    every key present, taken from the same bytes (the digest of what was parsed), the
    lists lists of strings. Anything else (an older manifest, another source) is parsed."""
    if not isinstance(facts, dict) or facts.get("sha256") != sha:
        return False
    if not all(k in facts for k in FACT_KEYS) or not isinstance(facts["docstring"], str):
        return False
    return all(
        isinstance(facts[k], list) and all(isinstance(x, str) for x in facts[k])
        for k in ("deferred_imports", "public_names", "classes", "functions")
    )


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


def _entries_digest(found: dict[str, Any], modules: list[str]) -> str:
    """Digest of the registry entries of `modules` as the table holds them now."""
    return digest_of([[m, found.get(m)] for m in modules])


@register_executor
class WarmRegistry(Executor):
    name = "warm_registry"
    inputs_schema = fields_schema({"module": "string"})
    output_schema = fields_schema(
        {
            "status": {"type": "string", "const": "warmed"},
            "module": "string",
            "cache_entries": "integer",
        }
    )
    description = (
        "Parses modules (never imports them) and writes one registry entry per module "
        "(imports, public names, source hash) into HXO's registry table; skips current ones "
        "and reports modules that do not parse in failed_modules."
    )
    idempotent = True
    supports_dry_run = True

    def execute(self, ctx: ExecutionContext) -> dict[str, Any]:
        ws = pinned_workspace(ctx)
        module = require_input(ctx, "module", str)
        group = _group(ctx)
        beat = Beat(ctx)
        known = {f["module"]: f for f in _known_failures(group)}
        stored = registry_get(ws.name, [name for name, _row in group])
        plan = [
            (name, row, _current(stored.get(name), row["sha256"]))
            for name, row in group
            if name not in known
        ]
        if ctx.dry_run:
            to_write = [name for name, _row, current in plan if not current]
            failed = list(known.values())
            fails = f"; {len(failed)} will fail: {_failures_text(failed)}" if failed else ""
            return {
                "summary": f"{module}: would write {plural(len(to_write), 'registry entry')}"
                f" ({len(plan) - len(to_write)} up to date){fails}",
                "modules": [
                    {"module": name, "action": "up_to_date" if current else "write"}
                    for name, _row, current in plan
                ]
                + [{"module": name, "action": "fail"} for name in known],
                **refused_report(ctx),
                "entries_to_write": len(to_write),
                "up_to_date": len(plan) - len(to_write),
                "failed_modules": failed,
            }
        failed = list(known.values())
        entries: dict[str, dict[str, Any]] = {}
        facts = ctx.manifest.get("registry_facts")
        facts = facts if isinstance(facts, dict) else {}
        for name, row, current in plan:
            beat()
            source = _source(ws, name, row)  # verified even when current: the entry must match
            if current:
                continue
            try:
                entries[name] = registry_entry(ws.name, name, row, source, facts.get(name))
            except ModuleFailed as exc:
                failed.append(exc.record)
        if failed and _on_module_error(ctx) == "fail":
            raise _fail_partition(module, failed)
        beat(force=True)
        if entries:
            # One transaction at the end: a lost lease leaves no entry of this partition.
            ctx.check_fence()
            now = timezone.now()
            objs = [
                RegistryEntry(
                    workspace=ws.name,
                    module=name,
                    path=entry["path"],
                    source_sha256=entry["source_sha256"],
                    entry=entry,
                    entry_digest=entry["entry_digest"],
                    written_at=now,
                    run_id=ctx.run_id,
                    partition_id=ctx.partition_id,
                )
                for name, entry in entries.items()
            ]
            with transaction.atomic(using=RegistryEntry.objects.db):
                RegistryEntry.objects.bulk_create(
                    objs,
                    batch_size=500,
                    update_conflicts=True,
                    unique_fields=["workspace", "module"],
                    update_fields=[
                        "path",
                        "source_sha256",
                        "entry",
                        "entry_digest",
                        "written_at",
                        "run_id",
                        "partition_id",
                    ],
                )
        names = [name for name, _row, _current in plan]
        # Counted after writing: what the output reports is what the table holds.
        found = registry_get(ws.name, names)
        present = sum(_current(found.get(n), r["sha256"]) for n, r, _c in plan)
        return {
            "status": "warmed",
            "module": module,
            "cache_entries": present,
            "modules": len(group),
            "written": len(entries),
            **refused_report(ctx),
            "up_to_date": len(plan) - len(entries),
            "failed_modules": sorted(failed, key=lambda f: f["module"]),
            "summary": f"{module}: {plural(present, 'registry entry')} current "
            f"({len(entries)} written)"
            + (f"; {len(failed)} failed: {_failures_text(failed)}" if failed else ""),
            "effect": {
                "store": "registry",
                "location": registry_location(),
                "keys": len(names),
                "modules_digest": digest_of(names),
                "entries_digest": _entries_digest(found, names),
            },
        }

    def effect_exists(self, ctx: ExecutionContext, output: dict[str, Any]) -> bool:
        """Every module the apply registered has its entry in the registry table (at the
        recorded location), current for the pinned source hash, and the entries are exactly
        the ones recorded (their digest)."""
        effect = output.get("effect")
        if not isinstance(effect, dict) or effect.get("location") != registry_location():
            return False
        ws = pinned_workspace(ctx)
        failed = {f.get("module") for f in output.get("failed_modules") or []}
        group = [(n, r) for n, r in _group(ctx) if n not in failed]
        names = [n for n, _r in group]
        if digest_of(names) != effect.get("modules_digest"):
            return False
        found = registry_get(ws.name, names)
        if not all(_current(found.get(n), r["sha256"]) for n, r in group):
            return False
        return _entries_digest(found, names) == effect.get("entries_digest")


# --- prime_caches -------------------------------------------------------------------------


def _interpreter(ctx: ExecutionContext) -> pyinterp.Interpreter:
    """The interpreter the manifest pinned (the running one for manifests made before
    targets existed); a permanent error if it is no longer the one installed at its path."""
    pinned = ctx.manifest.get("interpreter")
    if pinned is None:
        return pyinterp.running()
    interp = pyinterp.Interpreter.from_json(pinned)
    if interp.is_running:
        return interp
    # probe() is cached per process: an interpreter removed since must still be seen.
    gone = not os.access(interp.executable, os.X_OK)
    now = None if gone else pyinterp.probe(interp.executable)
    if now is None or now.magic != interp.magic or now.cache_tag != interp.cache_tag:
        raise ComponentError(
            f"Python {interp.label} is no longer installed as it was when the stage was "
            "partitioned: re-run the dry-run",
            code=pyinterp.INTERPRETER_NOT_FOUND,
            permanent=True,
            path="manifest.interpreter",
        )
    return interp


def bytecode_root() -> Path:
    """Where `prime_caches` writes bytecode: `HXO_BYTECODE_DIR` (default
    `VAR_DIR/cache/bytecode`, declared in settings)."""
    return Path(settings.HXO_BYTECODE_DIR)


def pyc_path(ws: str, rel: str, interp: pyinterp.Interpreter | None = None) -> Path:
    """Where the bytecode of workspace file `rel` goes: the importlib layout (with the
    target interpreter's cache tag, default the running one), under our root."""
    tag = (interp or pyinterp.running()).cache_tag
    if not tag:  # pragma: no cover (an interpreter without bytecode caching)
        raise ComponentError(
            "this interpreter writes no bytecode", code="unsupported", permanent=True
        )
    source = PurePosixPath(rel)
    return bytecode_root() / ws / source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"


def pyc_header(source: bytes, interp: pyinterp.Interpreter | None = None) -> bytes:
    """The 16-byte header of a checked-hash pyc of `source` for `interp` (PEP 552): its
    magic number, the flags, and the source hash keyed by that magic number (what
    `importlib.util.source_hash` computes inside that interpreter; the keyed SipHash is the
    same function in every CPython 3.7+, only the key differs)."""
    magic = (interp or pyinterp.running()).magic
    key = int.from_bytes(magic, "little")
    return magic + PYC_CHECKED_HASH.to_bytes(4, "little") + _imp.source_hash(key, source)


def compile_pyc(source: bytes, origin: Path, header: bytes) -> bytes:
    """The checked-hash pyc (PEP 552) of `source` (already checked against its pinned hash)
    for the running interpreter, in memory: `header` (`pyc_header`) and the marshalled code.

    This is what `py_compile.compile` writes (`compile(..., dont_inherit=True)` at
    optimization 0, then `importlib._bootstrap_external._code_to_hash_pyc`: magic, flags,
    source hash, `marshal.dumps(code)`), without its files: py_compile reads its source
    from a path and writes the pyc itself, which cost a temporary copy of the source, a
    temporary pyc and a read-back per module, more than the compiling (profile in
    bench/profiles/prime.md). `origin`, the module's path in the workspace, is the code's
    `co_filename`. Raises one of pygraph.PARSE_ERRORS when `source` does not compile.
    """
    code = compile(source, str(origin), "exec", dont_inherit=True, optimize=0)
    return header + marshal.dumps(code)


def write_replacing(final: Path, data: bytes, ctx: ExecutionContext) -> None:
    """Write `data` to `final` atomically: under this attempt's temporary name beside it
    (`tmp_suffix`, which `cleanup_stale` finds after a crash), then `os.replace`. The
    temporary file is removed on any error. The directory must exist."""
    tmp = final.with_name(final.name + tmp_suffix(ctx))
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def compile_foreign(
    interp: pyinterp.Interpreter,
    jobs: list[tuple[str, str, bytes, Path, Path]],
    ctx: ExecutionContext,
) -> dict[str, dict[str, Any] | bytes]:
    """Compile (name, rel, source, origin, target) jobs with another interpreter in one
    subprocess (`pyinterp.compile_batch`): name → the pyc's bytes, or its error record.
    The checked sources are written beside `target` under this attempt's temporary names,
    and the interpreter writes each pyc under another; both are removed on return (the
    caller writes the bytes to `target`, as for the running interpreter)."""
    results: dict[str, dict[str, Any] | bytes] = {}
    with contextlib.ExitStack() as stack:
        batch, outs = [], []
        for _name, _rel, source, origin, target in jobs:
            src, f = stack.enter_context(
                atomic_local_file(target.with_name(f"{origin.name}.source"), ctx)
            )
            f.write(source)
            f.close()
            # Closed at once (the compiler replaces the file): no descriptor held per module.
            out, reserved = stack.enter_context(atomic_local_file(target, ctx))
            reserved.close()
            batch.append((src, out, str(origin)))
            outs.append(out)
        try:
            verdicts = pyinterp.compile_batch(interp, batch, ctx.stop_with)
        except ComponentError:
            ctx.heartbeat()  # a subprocess killed by stop_with: the reason, not its exit
            raise
        for (name, *_rest), out, verdict in zip(jobs, outs, verdicts, strict=True):
            results[name] = out.read_bytes() if verdict is None else verdict
    return results


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


def _bytecode_state(root: Path, kept: list[tuple[Path, bytes]]) -> tuple[int, str | None]:
    """(how many of the (bytecode file, expected header) pairs are current, as
    `_pyc_current` says, and `_bytecode_digest` of the files), reading each file once."""
    present, rows = 0, []
    for target, header in kept:
        try:
            data = target.read_bytes()
        except OSError:
            data = None
        if data is not None:
            digest = hashlib.sha256(data).hexdigest()
            rows.append([str(target.relative_to(root)), digest])
            try:
                recorded = pyc_sidecar(target).read_text().strip()
            except (OSError, UnicodeDecodeError):
                recorded = None
            present += data[: len(header)] == header and digest == recorded
    return present, (digest_of(rows) if len(rows) == len(kept) else None)


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
    inputs_schema = fields_schema({"module": "string"})
    output_schema = fields_schema(
        {
            "status": {"type": "string", "const": "warmed"},
            "module": "string",
            "cache_entries": "integer",
        }
    )
    description = (
        "Compiles modules to checked-hash bytecode (PEP 552) for the stage's target Python "
        "in HXO's cache directory, never into the workspace; skips modules whose bytecode "
        "matches the source and reports modules that do not compile in failed_modules."
    )
    idempotent = True
    supports_dry_run = True

    def execute(self, ctx: ExecutionContext) -> dict[str, Any]:
        ws = pinned_workspace(ctx)
        module = require_input(ctx, "module", str)
        group = _group(ctx)
        interp = _interpreter(ctx)
        beat = Beat(ctx)
        known = {f["module"]: f for f in _known_failures(group)}
        plan = []
        for name, row in group:
            if name in known:
                continue
            source = _source(ws, name, row)
            target = pyc_path(ws.name, row["path"], interp)
            header = pyc_header(source, interp)
            plan.append((name, row, source, target, header, _pyc_current(target, header)))
        root = bytecode_root()
        failed = list(known.values())
        if ctx.dry_run:
            todo = [p for p in plan if not p[5]]
            fails = f"; {len(failed)} will fail: {_failures_text(failed)}" if failed else ""
            return {
                "summary": f"{module}: would compile {plural(len(todo), 'module')}"
                f" ({len(plan) - len(todo)} up to date) for Python "
                f"{interp.version[0]}.{interp.version[1]}{fails}",
                "modules": [
                    {
                        "module": name,
                        "pyc": str(target.relative_to(root)),
                        "action": "up_to_date" if current else "compile",
                    }
                    for name, _row, _src, target, _hdr, current in plan
                ]
                + [{"module": name, "action": "fail"} for name in known],
                **refused_report(ctx),
                "to_compile": len(todo),
                "up_to_date": len(plan) - len(todo),
                "failed_modules": failed,
                "interpreter": interp.as_json(),
            }
        written = 0
        compiled: list[tuple[Path, bytes]] = []
        # Compile everything in memory first: a lost lease (or on_module_error: fail) writes
        # nothing.
        todo = [(n, r, s, t, h) for n, r, s, t, h, current in plan if not current]
        if interp.is_running:
            for name, row, source, target, header in todo:
                beat()
                try:
                    data = compile_pyc(source, ws.root / row["path"], header)
                except pygraph.PARSE_ERRORS as exc:
                    failed.append(failed_module(name, row["path"], pygraph.error_record(exc)))
                    continue
                compiled.append((target, data))
        else:
            jobs = [(n, r["path"], s, ws.root / r["path"], t) for n, r, s, t, _h in todo]
            results = compile_foreign(interp, jobs, ctx)
            for name, row, _src, target, _header in todo:
                result = results[name]
                if isinstance(result, bytes):
                    compiled.append((target, result))
                else:
                    failed.append(failed_module(name, row["path"], result))
        if failed and _on_module_error(ctx) == "fail":
            raise _fail_partition(module, failed)
        beat(force=True)
        made: set[Path] = set()
        for target, data in compiled:
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.parent)
            write_replacing(target, data, ctx)
            # The digest after the file: a crash between the two leaves a digest that does
            # not match, so the module is compiled again, never trusted.
            write_replacing(pyc_sidecar(target), hashlib.sha256(data).hexdigest().encode(), ctx)
            written += len(data)
        failed_names = {f["module"] for f in failed}
        kept = [(p[3], p[4]) for p in plan if p[0] not in failed_names]
        targets = [target for target, _header in kept]
        # Counted from the files (one read each): what the output reports is what is there.
        present, files_digest = _bytecode_state(root, kept)
        return {
            "status": "warmed",
            "module": module,
            "cache_entries": present,
            "modules": len(group),
            "compiled": len(compiled),
            "up_to_date": len(plan) - len(compiled) - (len(failed) - len(known)),
            **refused_report(ctx),
            "bytes": written,
            "failed_modules": sorted(failed, key=lambda f: f["module"]),
            "interpreter": interp.as_json(),
            "summary": f"{module}: compiled {plural(len(compiled), 'module')} "
            f"({filesizeformat(written)}) for Python {interp.version[0]}.{interp.version[1]}"
            + (f"; {len(failed)} failed: {_failures_text(failed)}" if failed else ""),
            "effect": {
                "root": os.path.realpath(root),
                "files": len(targets),
                "files_digest": files_digest,
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
        interp = _interpreter(ctx)
        failed = {f.get("module") for f in output.get("failed_modules") or []}
        targets = []
        for name, row in _group(ctx):
            if name in failed:
                continue
            target = pyc_path(ws.name, row["path"], interp)
            if not _pyc_current(target, pyc_header(_source(ws, name, row), interp)):
                return False
            targets.append(target)
        return _bytecode_digest(root, targets) == effect.get("files_digest")

    def cleanup_stale(self) -> int:
        return cleanup_tmp_files(bytecode_root())

"""Python modules of a workspace and their import graph, read with `ast` only.

Workspace code is never imported or executed: a module's imports and public names come from
its syntax tree. Depths in the import graph put leaves (modules importing nothing inside the
workspace) at depth 0; a module sits one level above the deepest module it imports. Import
cycles, which real code has, are collapsed first (Tarjan's strongly connected components), so
every module of a cycle gets the same depth.
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import dataclasses
import gc
import hashlib
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from runs_app.forking import in_two
from runs_app.workspaces import Workspace, WorkspaceFile, open_regular

# What a module that does not parse is recorded with; RecursionError is what CPython raises for
# code nested too deeply to compile ("too many nested parentheses" is a SyntaxError already).
PARSE_ERRORS = (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, MemoryError)
PROJECT_FILES = ("pyproject.toml", "setup.cfg", "setup.py")
# A module's own name (the last part): what importlib can import. Migrations (`0001_initial`)
# start with a digit and are still modules; a dot or a dash in a file name is not importable.
MODULE_STEM = re.compile(r"^\w+$")


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while syntax trees are built and read.

    `ast.parse` allocates hundreds of thousands of GC-tracked nodes for a large package; each
    700 allocations start a collection, and the older generations' ones traverse the whole
    heap of a worker that has Django loaded: measured on Django's 883 modules in such a
    process, 1.2 s of CPU with the collector against 0.8 s without (bench/profiles/prime.md).
    Syntax trees hold no reference cycles (nodes have no parent links), so reference counting
    frees them all the same. Nested uses are fine; the previous state is restored.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def error_record(exc: BaseException) -> dict[str, Any]:
    """{"type", "line", "message"} of a compiler error (SyntaxError's msg without its
    "(file, line N)" tail; line None when the error has none, e.g. a null byte)."""
    msg = getattr(exc, "msg", None) if isinstance(exc, SyntaxError) else None
    if isinstance(exc, RecursionError):
        msg = "too deeply nested to compile"
    return {
        "type": type(exc).__name__,
        "line": getattr(exc, "lineno", None),
        "message": str(msg or exc),
    }


@dataclasses.dataclass
class ModuleInfo:
    name: str
    rel: str
    is_package: bool
    imports: list[str]  # module-level absolute import targets (relative ones resolved)
    parse_error: str = ""
    internal: list[str] = dataclasses.field(default_factory=list)  # targets in the workspace
    error: dict[str, Any] | None = None  # error_record() when the module does not parse
    root: str = "."  # the import root (on sys.path) the name is relative to
    # Set when HXO's parser cannot read a module its target interpreter compiles (newer
    # syntax): the module is compiled, but its imports are not in the graph.
    imports_unread: str = ""
    # `summarize(tree)` of the module as parsed, with the SHA-256 of the bytes parsed, when
    # discover_tree was asked for summaries (deploy.prime's warm_registry reuses them).
    summary: dict[str, Any] | None = None

    def row(self, sha256: str, depth: int | None) -> dict[str, Any]:
        """The module as a stage manifest pins it (`modules.<name>`), with its source's
        SHA-256 and its depth in the import graph (None for a module that does not parse:
        its imports, hence its depth, are unknown)."""
        return {
            "path": self.rel,
            "sha256": sha256,
            "is_package": self.is_package,
            "imports": self.imports,
            "internal": self.internal,
            "depth": None if self.error else depth,
            "parse_error": self.parse_error,
            "error": self.error,
            "import_root": self.root,
            "imports_unread": self.imports_unread,
        }


@dataclasses.dataclass
class Discovery:
    """Modules found under a directory, what was not taken as a module and why, the import
    roots names were made relative to, and the import cycles (size > 1)."""

    modules: dict[str, ModuleInfo]
    skipped: list[dict[str, str]]
    roots: list[str]


def import_root(ws: Workspace, root_rel: str) -> tuple[str, str]:
    """(import root relative to the workspace, dotted prefix of `root_rel`).

    `backend` with `backend/__init__.py` gives ("." , "backend"): modules are named as Python
    would import them with the import root on sys.path.
    """
    parts = [p for p in PurePosixPath(root_rel).parts if p not in (".", "")]
    prefix: list[str] = []
    while parts and (ws.root.joinpath(*parts) / "__init__.py").is_file():
        prefix.insert(0, parts.pop())
    return ("/".join(parts) or "."), ".".join(prefix)


def _norm(rel: str) -> str:
    parts = [p for p in PurePosixPath(rel).parts if p not in (".", "")]
    return "/".join(parts) or "."


def _under(rel: str, base: str) -> bool:
    return base == "." or rel == base or rel.startswith(base + "/")


def _project_package_dirs(project: Path) -> list[str]:
    """Where a project's packages live, relative to its directory, from its metadata:
    setuptools' `package-dir` / `packages.find.where` (pyproject.toml, setup.cfg) or
    `package_dir={"": ...}` in setup.py, hatch's wheel `packages`; else `src` when it exists
    (the src layout), else the project directory itself. Metadata that does not parse is
    ignored (the layout rules still apply)."""
    found: list[str] = []
    pyproject = project / "pyproject.toml"
    if pyproject.is_file():
        try:
            doc = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            doc = {}
        tool = doc.get("tool", {}) if isinstance(doc.get("tool"), dict) else {}
        st = tool.get("setuptools", {}) if isinstance(tool.get("setuptools"), dict) else {}
        package_dir = st.get("package-dir", {})
        if isinstance(package_dir, dict) and isinstance(package_dir.get(""), str):
            found.append(package_dir[""])
        packages = st.get("packages", {})
        find = packages.get("find", {}) if isinstance(packages, dict) else {}
        where = find.get("where", []) if isinstance(find, dict) else []
        found.extend(w for w in where if isinstance(w, str))
        hatch = tool.get("hatch", {}) if isinstance(tool.get("hatch"), dict) else {}
        wheel = hatch.get("build", {}).get("targets", {}).get("wheel", {}) if hatch else {}
        for pkg in wheel.get("packages", []) if isinstance(wheel, dict) else []:
            if isinstance(pkg, str):
                found.append(str(PurePosixPath(pkg).parent))
    setup_cfg = project / "setup.cfg"
    if setup_cfg.is_file():
        cfg = configparser.ConfigParser()
        with contextlib.suppress(configparser.Error, OSError, UnicodeDecodeError):
            cfg.read(setup_cfg, encoding="utf-8")
            for line in cfg.get("options", "package_dir", fallback="").splitlines():
                key, _, value = line.partition("=")
                if not key.strip() and value.strip():
                    found.append(value.strip())
            found.extend(cfg.get("options.packages.find", "where", fallback="").split())
    setup_py = project / "setup.py"
    if setup_py.is_file():
        with contextlib.suppress(*PARSE_ERRORS, OSError):
            for node in ast.walk(ast.parse(setup_py.read_bytes())):
                if isinstance(node, ast.keyword) and node.arg == "package_dir":
                    value = node.value
                    if isinstance(value, ast.Dict):
                        for k, v in zip(value.keys, value.values, strict=True):
                            if (
                                isinstance(k, ast.Constant)
                                and k.value == ""
                                and isinstance(v, ast.Constant)
                                and isinstance(v.value, str)
                            ):
                                found.append(v.value)
    dirs = [_norm(d) for d in found if d and not PurePosixPath(d).is_absolute() and ".." not in d]
    if not dirs and (project / "src").is_dir():
        dirs = ["src"]
    return sorted(set(dirs)) or ["."]


def _has_project(ws: Workspace, rel: str) -> bool:
    """Whether workspace directory `rel` holds project metadata (a regular file, not a link
    that could point out of the workspace)."""
    for name in PROJECT_FILES:
        path = ws.root / rel / name
        if path.is_file() and not path.is_symlink():
            return True
    return False


def import_roots(
    ws: Workspace, root_rel: str, files: list[WorkspaceFile], package_roots: list[str] | None
) -> list[str]:
    """The directories (workspace-relative) on sys.path for the modules under `root_rel`.

    `package_roots` when given. Else the projects found: every directory holding a
    pyproject.toml, setup.cfg or setup.py under `root_rel` (a monorepo), or the nearest one
    above it, each contributing itself and its package directories
    (`_project_package_dirs`: `src/` in a src layout). With no
    project at all, the directory above `root_rel`'s outermost regular package
    (`import_root`), as before.
    """
    if package_roots:
        return sorted({_norm(r) for r in package_roots})
    # Every directory holding a module, and those between it and `root_rel`, looked at on
    # disk: a stage's include/exclude globs filter modules, not the projects' metadata.
    # Only `.py` files name modules, so only their directories are looked at (a package's
    # data, e.g. Django's 2,000 locale directories, holds none); string operations, as
    # `rel` is already normalized (posix, relative, no `.` parts), cost a tenth of pathlib's.
    top = _norm(root_rel)
    dirs: set[str] = set()
    for f in files:
        if not f.rel.endswith(".py"):
            continue
        parent = f.rel.rpartition("/")[0] or "."
        while parent not in dirs and _under(parent, top):
            dirs.add(parent)
            if parent == top or parent == ".":
                break
            parent = parent.rpartition("/")[0] or "."
    projects = {d for d in dirs if _has_project(ws, d)}
    parts = [p for p in PurePosixPath(root_rel).parts if p not in (".", "")]
    while parts and not _has_project(ws, top):
        parts.pop()
        here = "/".join(parts) or "."
        if _has_project(ws, here):
            projects.add(here)
            break
    if not projects:
        base, _prefix = import_root(ws, root_rel)
        return [base]
    # The project directory too: its tests, docs/conf.py and scripts are imported from it
    # (pytest's rootdir, `python -m`); a file takes the deepest root that holds it.
    roots = set(projects)
    for project in projects:
        for sub in _project_package_dirs(ws.root / project):
            roots.add(_norm(f"{project}/{sub}"))
    return sorted(roots)


def module_name(rel: str, base: str) -> tuple[str, bool]:
    """Dotted name of the module at `rel` (workspace-relative) under import root `base`.

    Every directory is a package (PEP 420: a directory without `__init__.py` is a namespace
    package), so `google/cloud/storage/blob.py` under the root is `google.cloud.storage.blob`.
    """
    path = PurePosixPath(rel)
    if base != ".":
        path = path.relative_to(base)
    parts = list(path.with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _why_not_importable(rel: str, base: str) -> str:
    """Why the file at `rel` cannot be imported from import root `base`, or "" when it can:
    every directory on the way must be an identifier (the import statement reaches it);
    the module's own name may be any word, as importlib imports `0001_initial`."""
    path = PurePosixPath(rel) if base == "." else PurePosixPath(rel).relative_to(base)
    for part in path.parts[:-1]:
        if not part.isidentifier():
            return f"directory {part!r} is not a Python identifier (no import reaches it)"
    if path.name == "__init__.py":
        return "" if len(path.parts) > 1 else "an __init__.py directly in an import root"
    if not MODULE_STEM.match(path.stem):
        return f"file name {path.name!r} is not an importable module name"
    return ""


def _type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:` (any module alias)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_nodes(
    tree: ast.Module, *, later_too: bool = True
) -> tuple[list[ast.stmt], list[ast.stmt]]:
    """(statements that run when the module is imported, statements that do not).

    Import time: the module body, the bodies of its if/try/with/for/while/match blocks and
    class bodies (a class body runs at import). Not: function bodies (they run when called)
    and `if TYPE_CHECKING:` blocks (false at run time; their `else` runs). With
    `later_too=False` the second list stays empty and what does not run at import is not
    walked at all (function bodies are most of a module's statements).
    """
    now: list[ast.stmt] = []
    later: list[ast.stmt] = []
    todo: list[tuple[ast.stmt, bool]] = [(n, True) for n in tree.body]
    while todo:
        node, at_import = todo.pop()
        (now if at_import else later).append(node)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if later_too:
                todo.extend((n, False) for n in node.body)
            continue
        if isinstance(node, ast.If) and _type_checking(node.test):
            if later_too:
                todo.extend((n, False) for n in node.body)
            todo.extend((n, at_import) for n in node.orelse)
            continue
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            for child in getattr(node, field, ()) or ():
                if isinstance(child, ast.ExceptHandler | ast.match_case):
                    todo.extend((n, at_import) for n in child.body)
                elif isinstance(child, ast.stmt):
                    todo.append((child, at_import))
    return now, later


def _records(nodes: list[ast.stmt], name: str, is_package: bool) -> list[tuple[str, list[str]]]:
    package = name if is_package else name.rpartition(".")[0]
    records: list[tuple[str, list[str]]] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            records.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                drop = node.level - 1
                if drop > len(base_parts):
                    continue  # beyond the top-level package: Python would refuse it too
                base = ".".join(base_parts[: len(base_parts) - drop])
                target = f"{base}.{node.module}" if node.module and base else node.module or base
            else:
                target = node.module or ""
            if target:
                records.append((target, [a.name for a in node.names if a.name != "*"]))
    return sorted(records)


def parse_module(
    source: bytes, filename: str, feature_version: tuple[int, int] | None = None
) -> ast.Module:
    """`ast.parse` with the target's grammar (`feature_version`, best effort for versions
    older than the running one, see the ast docs); raises one of PARSE_ERRORS."""
    return ast.parse(source, filename=filename, feature_version=feature_version)


def import_records(
    source: bytes | ast.Module,
    name: str,
    is_package: bool,
    filename: str,
    *,
    deferred: bool = False,
) -> list[tuple[str, list[str]]]:
    """(absolute module, names taken from it) per import statement that runs when the module
    is imported (`deferred=True`: per import that does not, in functions or TYPE_CHECKING
    blocks); relative imports are resolved against the module's package. `import a.b` gives
    ("a.b", []). Raises one of PARSE_ERRORS when the module does not parse."""
    tree = source if isinstance(source, ast.Module) else parse_module(source, filename)
    now, later = _import_time_nodes(tree, later_too=deferred)
    return _records(later if deferred else now, name, is_package)


def flat_imports(records: list[tuple[str, list[str]]]) -> list[str]:
    """Every absolute name `records` import, `from m import x` giving both m and m.x."""
    found: set[str] = set()
    for target, names in records:
        found.add(target)
        found.update(f"{target}.{n}" for n in names)
    return sorted(found)


def parse_imports(source: bytes, name: str, is_package: bool, filename: str) -> list[str]:
    """Every absolute name a module imports at import time, `from m import x` giving both m
    and m.x (x may be a submodule); raises one of PARSE_ERRORS when it does not parse."""
    return flat_imports(import_records(source, name, is_package, filename))


def internal_imports(
    records: list[tuple[str, list[str]]], modules: Mapping[str, object], own: str
) -> list[str]:
    """Workspace modules a module depends on.

    `from pkg import mod` depends on pkg.mod when that is a module, and on pkg only for names
    that are not modules: like `import pkg.mod`, which is recorded as pkg.mod alone, so that
    a package's __init__ does not become everybody's dependency.
    """
    found: set[str] = set()
    for target, names in records:
        submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
        found.update(submodules)
        if not names or len(submodules) < len(names):
            resolved = _longest_module(target, modules)
            if resolved:
                found.add(resolved)
    found.discard(own)
    return sorted(found)


def public_names(tree: ast.Module) -> list[str]:
    """`__all__` when it is a literal list or tuple of strings, else top-level public names."""
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if (
                    isinstance(target, ast.Name)
                    and target.id == "__all__"
                    and isinstance(node.value, ast.List | ast.Tuple)
                ):
                    values = [
                        e.value
                        for e in node.value.elts
                        if isinstance(e, ast.Constant) and isinstance(e.value, str)
                    ]
                    if len(values) == len(node.value.elts):
                        return sorted(values)
                if isinstance(target, ast.Name):
                    names.append(target.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            continue  # re-exports count only through __all__
    return sorted({n for n in names if not n.startswith("_")})


def summarize(tree: ast.Module, name: str, is_package: bool, filename: str) -> dict[str, Any]:
    """What a registry entry says of a module beyond its import-time imports, from its
    syntax tree: `deferred_imports` (imports that do not run at import time, flattened as
    `flat_imports`), `public_names`, top-level `classes` and `functions` (sorted), and the
    first line of its `docstring` ("" when none)."""
    doc = (ast.get_docstring(tree) or "").strip()
    return {
        "deferred_imports": flat_imports(
            import_records(tree, name, is_package, filename, deferred=True)
        ),
        "public_names": public_names(tree),
        "classes": sorted(n.name for n in tree.body if isinstance(n, ast.ClassDef)),
        "functions": sorted(
            n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        ),
        "docstring": doc.splitlines()[0] if doc else "",
    }


def discover_tree(
    ws: Workspace,
    root_rel: str,
    files: list[WorkspaceFile],
    *,
    package_roots: list[str] | None = None,
    feature_version: tuple[int, int] | None = None,
    summaries: bool = False,
) -> Discovery:
    """Modules among `files` (already confined and sorted), named as Python imports them
    from their import root (`import_roots`), with their import-time imports resolved.

    A `.py` file that is not taken as a module is in `skipped` with its reason: outside
    every import root, a name no import can reach, or shadowed by a package of the same name
    (Python's finder prefers `pkg/__init__.py` to `pkg.py`). A module that does not parse
    with the target grammar (`feature_version`) keeps its place with `error` set. With
    `summaries`, each module that parses also gets its `summary` (`summarize`, and `sha256`,
    the digest of the very bytes parsed) from the same parse: files are parsed once.
    """
    roots = import_roots(ws, root_rel, files, package_roots)
    # name → (rel, is_package, import root, source): read here, where a file that is not a
    # regular file inside the workspace is refused; parsed below, on both cores when large.
    pending: dict[str, tuple[str, bool, str, bytes]] = {}
    skipped: list[dict[str, str]] = []
    for f in files:
        if not f.rel.endswith(".py"):
            continue
        base = max((r for r in roots if _under(f.rel, r)), key=len, default=None)
        if base is None:
            skipped.append({"file": f.rel, "reason": f"outside the import roots {roots}"})
            continue
        why = _why_not_importable(f.rel, base)
        if why:
            skipped.append({"file": f.rel, "reason": why})
            continue
        name, is_package = module_name(f.rel, base)
        if name in pending:
            # Python's finder prefers the package; across two import roots, the first root.
            held = pending[name][0]
            kept, lost = (f.rel, held) if is_package else (held, f.rel)
            skipped.append({"file": lost, "reason": f"module {name} is already {kept}"})
            if not is_package:
                continue
            del pending[name]
        with open_regular(f.path, rel=f.rel, path="params.root") as fh:
            pending[name] = (f.rel, is_package, base, fh.read())
    jobs = [(src, name, pkg, rel) for name, (rel, pkg, _base, src) in pending.items()]
    parsed = parse_many(jobs, feature_version, summaries)
    modules: dict[str, ModuleInfo] = {}
    records: dict[str, list[tuple[str, list[str]]]] = {}
    for (name, (rel, is_package, base, _src)), (found, error, summary) in zip(
        pending.items(), parsed, strict=True
    ):
        text = f"{error['type']}: {error['message']} (line {error['line']})" if error else ""
        modules[name] = ModuleInfo(
            name, rel, is_package, [], text, error=error, root=base, summary=summary
        )
        records[name] = found
    for name, info in modules.items():
        info.imports = flat_imports(records[name])
        info.internal = internal_imports(records[name], modules, name)
    return Discovery(modules, sorted(skipped, key=lambda s: s["file"]), roots)


# (import-time import records, error_record or None, summary or None) of one module.
Parsed = tuple[list[tuple[str, list[str]]], dict[str, Any] | None, dict[str, Any] | None]
# Below this many bytes of source, parsing in one process costs less than a fork.
PARALLEL_MIN_BYTES = 1 << 20


def parse_one(
    source: bytes,
    name: str,
    is_package: bool,
    rel: str,
    feature_version: tuple[int, int] | None = None,
    summaries: bool = False,
) -> Parsed:
    """Parse one module (`feature_version`: the target's grammar): its import-time import
    records, its `error_record` when it does not parse, and with `summaries` its
    `summarize` plus `sha256`, the digest of the very bytes parsed."""
    try:
        with gc_paused():
            tree = parse_module(source, rel, feature_version)
            found = import_records(tree, name, is_package, rel)
            summary = None
            if summaries:
                summary = summarize(tree, name, is_package, rel)
                summary["sha256"] = hashlib.sha256(source).hexdigest()
            del tree  # freed here, while the collector is paused
    except PARSE_ERRORS as exc:
        return [], error_record(exc), None
    return found, None, summary


def parse_many(
    jobs: list[tuple[bytes, str, bool, str]],
    feature_version: tuple[int, int] | None = None,
    summaries: bool = False,
) -> list[Parsed]:
    """`parse_one` of each (source, name, is_package, rel), in order, on two cores when the
    sources are large (`PARALLEL_MIN_BYTES`) and the machine has them.

    Parsing is CPU-bound and holds the GIL, and the partitioning task runs in one worker
    while the other waits for its partitions: a forked child parses the second half (by
    bytes) while this process parses the first (`runs_app.forking.in_two`, which also says
    what happens when the child fails: its half is parsed here, the result is the same).
    """

    def serial(part: list[tuple[bytes, str, bool, str]]) -> list[Parsed]:
        return [parse_one(*job, feature_version, summaries) for job in part]

    return in_two(jobs, serial, cost=lambda job: len(job[0]), min_cost=PARALLEL_MIN_BYTES)


def discover(ws: Workspace, root_rel: str, files: list[WorkspaceFile]) -> dict[str, ModuleInfo]:
    """The modules of `discover_tree` with its defaults (deploy.pack's `by_module`)."""
    return discover_tree(ws, root_rel, files).modules


def _longest_module(target: str, modules: Mapping[str, Any]) -> str | None:
    parts = target.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's SCCs, iteratively; each SCC comes after every SCC it can reach."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            pushed = False
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    pushed = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if pushed:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                result.append(sorted(component))
    return result


def depths(graph: dict[str, list[str]]) -> dict[str, int]:
    """Module → depth: 0 for leaves, else 1 + the deepest module it imports (cycles collapsed)."""
    depth: dict[str, int] = {}
    for component in strongly_connected(graph):
        members = set(component)
        deps = {d for m in component for d in graph[m] if d in graph and d not in members}
        level = 1 + max(depth[d] for d in deps) if deps else 0
        for m in component:
            depth[m] = level
    return depth


def cycles(graph: dict[str, list[str]], depth: Mapping[str, int]) -> list[dict[str, Any]]:
    """Import cycles: the strongly connected components of more than one module, largest
    first, each {"size", "depth", "modules"} (its members share one depth)."""
    found = [
        {"size": len(c), "depth": depth[c[0]], "modules": c}
        for c in strongly_connected(graph)
        if len(c) > 1
    ]
    return sorted(found, key=lambda c: (-c["size"], c["modules"][0]))


def source_path(ws: Workspace, rel: str) -> Path:
    return ws.open_pinned(rel, path="manifest.modules")

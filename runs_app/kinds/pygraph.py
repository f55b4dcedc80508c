"""Python modules of a workspace and their import graph, read with `ast` only.

Workspace code is never imported or executed: a module's imports and public names come from
its syntax tree. Depths in the import graph put leaves (modules importing nothing inside the
workspace) at depth 0; a module sits one level above the deepest module it imports. Import
cycles, which real code has, are collapsed first (Tarjan's strongly connected components), so
every module of a cycle gets the same depth.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from runs_app.workspaces import Workspace, WorkspaceFile, open_regular


@dataclasses.dataclass
class ModuleInfo:
    name: str
    rel: str
    is_package: bool
    imports: list[str]  # every absolute import target, as written (relative ones resolved)
    parse_error: str = ""
    internal: list[str] = dataclasses.field(default_factory=list)  # targets in the workspace

    def row(self, sha256: str, depth: int) -> dict[str, Any]:
        """The module as a stage manifest pins it (`modules.<name>`), with its source's
        SHA-256 and its depth in the import graph."""
        return {
            "path": self.rel,
            "sha256": sha256,
            "is_package": self.is_package,
            "imports": self.imports,
            "internal": self.internal,
            "depth": depth,
            "parse_error": self.parse_error,
        }


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


def module_name(rel: str, base: str) -> tuple[str, bool]:
    """Dotted name of the module at `rel` (workspace-relative) under import root `base`."""
    path = PurePosixPath(rel)
    if base != ".":
        path = path.relative_to(base)
    parts = list(path.with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def import_records(
    source: bytes, name: str, is_package: bool, filename: str
) -> list[tuple[str, list[str]]]:
    """(absolute module, names taken from it) per import statement; relative imports are
    resolved against the module's package. `import a.b` gives ("a.b", []). Raises
    SyntaxError when the module does not parse."""
    tree = ast.parse(source, filename=filename)
    package = name if is_package else name.rpartition(".")[0]
    records: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
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
    return records


def parse_imports(source: bytes, name: str, is_package: bool, filename: str) -> list[str]:
    """Every absolute name a module imports, `from m import x` giving both m and m.x (x may
    be a submodule); raises SyntaxError when the module does not parse."""
    found: set[str] = set()
    for target, names in import_records(source, name, is_package, filename):
        found.add(target)
        found.update(f"{target}.{n}" for n in names)
    return sorted(found)


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


def discover(ws: Workspace, root_rel: str, files: list[WorkspaceFile]) -> dict[str, ModuleInfo]:
    """Modules among `files` (already confined and sorted) with their resolved imports."""
    base, _prefix = import_root(ws, root_rel)
    modules: dict[str, ModuleInfo] = {}
    records: dict[str, list[tuple[str, list[str]]]] = {}
    for f in files:
        if not f.rel.endswith(".py"):
            continue
        name, is_package = module_name(f.rel, base)
        if not name or not all(part.isidentifier() for part in name.split(".")):
            continue  # not importable (a script like `0001-setup.py`): not a module
        with open_regular(f.path, rel=f.rel, path="params.root") as fh:
            source = fh.read()
        try:
            found = import_records(source, name, is_package, f.rel)
            error = ""
        except (SyntaxError, ValueError) as exc:
            found, error = [], f"{type(exc).__name__}: {exc}"
        modules[name] = ModuleInfo(name, f.rel, is_package, [], error)
        records[name] = found
    for name, info in modules.items():
        info.imports = sorted(
            {t for t, _ in records[name]} | {f"{t}.{n}" for t, ns in records[name] for n in ns}
        )
        info.internal = internal_imports(records[name], modules, name)
    return modules


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


def source_path(ws: Workspace, rel: str) -> Path:
    return ws.open_pinned(rel, path="manifest.modules")

"""Workspaces: directories registered by name in `settings.HXO_WORKSPACES`, and path confinement.

A plan names a workspace and paths relative to it, never a raw path. Every path an executor
opens goes through `Workspace.resolve`, which refuses `..`, absolute paths, NUL bytes and
symlinks whose target leaves the workspace (code `path_escape`). Listing files skips symlinks
that leave the workspace, and never follows directory symlinks, so a link cannot smuggle an
outside tree into an archive or an index.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from django.conf import settings

from blueprints_app.registry import ComponentError

UNKNOWN_WORKSPACE = "unknown_workspace"
PATH_ESCAPE = "path_escape"
PATH_NOT_FOUND = "path_not_found"
WORKSPACE_CHANGED = "workspace_changed"

# Never part of what a workspace ships: interpreter caches and VCS metadata.
DEFAULT_EXCLUDES = ("__pycache__", ".git", ".hg", ".svn", "*.pyc", "*.pyo", ".DS_Store")

_HASH_CHUNK = 1 << 20


def workspace_names() -> list[str]:
    return sorted(settings.HXO_WORKSPACES)


@dataclasses.dataclass(frozen=True)
class WorkspaceFile:
    """A regular file of a workspace: `rel` is its POSIX path relative to the workspace root."""

    rel: str
    path: Path
    size: int


@dataclasses.dataclass(frozen=True)
class Workspace:
    name: str
    root: Path  # resolved (no symlinks), absolute

    def check_relative(self, rel: str, *, path: str) -> PurePosixPath:
        """`rel` as a normalised relative path, or ComponentError(path_escape)."""
        if not isinstance(rel, str):
            raise ComponentError("a workspace path must be a string", code=PATH_ESCAPE, path=path)
        if "\x00" in rel:
            raise ComponentError("a path may not contain NUL bytes", code=PATH_ESCAPE, path=path)
        # Backslashes are separators on Windows; refusing them keeps one meaning everywhere.
        if "\\" in rel:
            raise ComponentError(
                f"{rel!r}: use '/' as the path separator", code=PATH_ESCAPE, path=path
            )
        pure = PurePosixPath(rel)
        if pure.is_absolute() or (len(rel) > 1 and rel[1] == ":"):
            raise ComponentError(
                f"{rel!r} is absolute; paths are relative to workspace {self.name!r}",
                code=PATH_ESCAPE,
                path=path,
            )
        if ".." in pure.parts:
            raise ComponentError(
                f"{rel!r} leaves workspace {self.name!r} ('..' is not allowed)",
                code=PATH_ESCAPE,
                path=path,
            )
        return pure

    def resolve(self, rel: str, *, path: str = "params.root", must_exist: bool = True) -> Path:
        """The absolute path of `rel` inside the workspace, with every symlink resolved.

        Refused when the resolved path is outside the workspace root: that is what catches a
        symlink pointing out of the workspace, wherever in the path it sits.
        """
        pure = self.check_relative(rel, path=path)
        candidate = self.root.joinpath(*pure.parts) if pure.parts else self.root
        real = Path(os.path.realpath(candidate))
        if not _is_within(real, self.root):
            raise ComponentError(
                f"{rel!r} resolves outside workspace {self.name!r} (a symlink leaves it)",
                code=PATH_ESCAPE,
                path=path,
            )
        if must_exist and not real.exists():
            raise ComponentError(
                f"{rel!r} does not exist in workspace {self.name!r}",
                code=PATH_NOT_FOUND,
                path=path,
            )
        return real

    def relative(self, absolute: Path) -> str:
        return absolute.relative_to(self.root).as_posix()

    def list_files(
        self,
        subdir: str = ".",
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        path: str = "params.root",
    ) -> list[WorkspaceFile]:
        """Regular files under `subdir`, sorted by relative path.

        `include`/`exclude` are globs matched against the path relative to `subdir`, the path
        relative to the workspace root, and the file name. Directory symlinks are not followed
        (os.walk's default); file symlinks are kept only when their target stays inside the
        workspace.
        """
        start = self.resolve(subdir, path=path)
        if start.is_file():
            candidates: Iterable[Path] = [start]
        else:
            candidates = _walk(start)
        found = []
        start_rel = self.relative(start)
        for file in candidates:
            rel = self.relative(file) if _is_within(file, self.root) else None
            if rel is None or _excluded(rel, DEFAULT_EXCLUDES):
                continue
            inner = rel if start_rel == "." else rel[len(start_rel) + 1 :]
            if exclude and _matches(rel, exclude, inner):
                continue
            if include and not _matches(rel, include, inner):
                continue
            if file.is_symlink():
                target = Path(os.path.realpath(file))
                if not _is_within(target, self.root) or not target.is_file():
                    continue
            try:
                stat = file.stat()
            except OSError:
                continue  # vanished or a dangling link: not part of the workspace
            found.append(WorkspaceFile(rel=rel, path=file, size=stat.st_size))
        found.sort(key=lambda f: f.rel)
        return found

    def open_pinned(self, rel: str, *, path: str = "inputs") -> Path:
        """Re-check a path pinned at partition time before an executor reads it.

        The file may have become a symlink (or been replaced) since the manifest was made.
        """
        return self.resolve(rel, path=path)


def _walk(start: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(start):
        # Prune excluded directories here so we never descend into .git or __pycache__.
        dirnames[:] = sorted(d for d in dirnames if not _excluded(d, DEFAULT_EXCLUDES))
        base = Path(dirpath)
        for name in filenames:
            yield base / name


def _excluded(rel: str, patterns: Iterable[str]) -> bool:
    parts = rel.split("/")
    for pattern in patterns:
        if fnmatch.fnmatchcase(rel, pattern) or any(fnmatch.fnmatchcase(p, pattern) for p in parts):
            return True
    return False


def _matches(rel: str, patterns: Iterable[str], inner: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(
        fnmatch.fnmatchcase(inner, p) or fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p)
        for p in patterns
    )


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def get_workspace(name: object, *, path: str = "params.workspace") -> Workspace:
    """The registered workspace `name`, or ComponentError(unknown_workspace)."""
    registered = settings.HXO_WORKSPACES
    if not isinstance(name, str) or name not in registered:
        known = ", ".join(sorted(registered)) or "none"
        raise ComponentError(
            f"{name!r} is not a registered workspace (registered: {known})",
            code=UNKNOWN_WORKSPACE,
            path=path,
        )
    root = Path(os.path.realpath(registered[name]))
    if not root.is_dir():
        raise ComponentError(
            f"workspace {name!r} points at {root}, which is not a directory",
            code=PATH_NOT_FOUND,
            path=path,
        )
    return Workspace(name=name, root=root)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

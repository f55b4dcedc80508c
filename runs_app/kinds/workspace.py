"""What the partitioners over a workspace directory share: their params and their file list.

`by_filesize`, `by_module`, `by_dag_depth`, `by_asset_bucket` and `by_route_map` split the
files of one directory of a registered workspace. Each takes the same first params
(`workspace`, `root`, and unless it opts out, `include` and `exclude`), in that order (the
plan editor lays fields out in schema order), followed by its own; each lists the files the
same way. A subclass of `WorkspacePartitioner` says only what differs: the default and help
of `root`, whether it takes file filters (`file_filters`), and its own params (`own_params`).

What the listing refused (symlinks and hard links to files outside the workspace:
`Workspace.list_files`) goes into the stage's manifest data as `refused_files`, added to the
`partition()` of every subclass, and each partition's output reports it
(`runs_app.kinds.files.refused_report`). A clean tree adds nothing, so its manifests and run
digests stay as they were. Likewise the stat tokens of the pinned files go in as
`file_stats`, which the run digest leaves out (`blueprints_app.registry.UNPINNED_DATA`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

from blueprints_app.registry import (
    FILE_STATS,
    ComponentError,
    PartitionContext,
    Partitioner,
    StageManifest,
)
from runs_app.kinds.base import (
    GLOBS_PARAM,
    required_unless_default,
    resolve_params,
    subdir_param,
    workspace_param,
)
from runs_app.workspaces import PATH_NOT_FOUND, Workspace, WorkspaceFile, get_workspace

# The manifest data key of the files a listing refused: [{"path", "code", "reason"}].
REFUSED_FILES = "refused_files"


def _reporting_refused(
    partition: Callable[[Any, PartitionContext], StageManifest],
) -> Callable[[Any, PartitionContext], StageManifest]:
    """`partition` with what `workspace_files` refused added to the manifest's data."""

    @functools.wraps(partition)
    def wrapped(self: WorkspacePartitioner, ctx: PartitionContext) -> StageManifest:
        self._refused = []
        manifest = partition(self, ctx)
        if self._refused:
            manifest.data = {**manifest.data, REFUSED_FILES: list(self._refused)}
        # The stat tokens of the pinned rows (runs_app.kinds.files.PinnedFiles), beside them:
        # outside the run digest (UNPINNED_DATA), so they never make an approval stale.
        stats = getattr(manifest.data.get("files"), "stats", None)
        if isinstance(stats, list) and FILE_STATS not in manifest.data:
            manifest.data = {**manifest.data, FILE_STATS: stats}
        return manifest

    wrapped._reports_refused = True  # type: ignore[attr-defined]
    return wrapped


def workspace_params(
    root_default: str, root_help: str, *, file_filters: bool = True
) -> dict[str, Any]:
    """JSON Schema properties `workspace`, `root`, then (with `file_filters`) `include` and
    `exclude`, in that order."""
    place = {"workspace": workspace_param(), "root": subdir_param(root_default, root_help)}
    if not file_filters:
        return place
    return {
        **place,
        "include": {
            **GLOBS_PARAM,
            "title": "Include",
            "description": "Only files matching one of these globs (path under the directory, "
            "path in the workspace, or file name; * matches across /).",
        },
        "exclude": {
            **GLOBS_PARAM,
            "title": "Exclude",
            "description": "Skip files matching one of these globs (as include); caches and VCS "
            "metadata are always skipped.",
        },
    }


def path_findings(partitioner: type[Partitioner], params: Any) -> list[ComponentError]:
    """`WorkspacePartitioner.validate_params`' findings for `partitioner` (errors, and
    warnings made with `warning=True`), with paths `params.root`, `params.package_roots[1]`."""
    try:
        resolved = resolve_params(partitioner, params)
        ws = get_workspace(resolved["workspace"])
    except ComponentError:
        return []  # the schema (the workspace's enum) reports it already
    found = []
    for name in getattr(partitioner, "path_params", ()):
        value = resolved.get(name)
        if isinstance(value, str):
            items = [(f"params.{name}", value)]
        elif isinstance(value, list):
            items = [(f"params.{name}[{i}]", v) for i, v in enumerate(value)]
        else:
            continue
        for where, rel in items:
            try:
                ws.resolve(rel, path=where, must_exist=True)
            except ComponentError as exc:
                missing = exc.code == PATH_NOT_FOUND
                found.append(
                    ComponentError(exc.message, code=exc.code, path=where, warning=missing)
                )
    return found


def _checking_paths(own: Callable[..., list[ComponentError]]) -> classmethod:
    """A subclass's own `validate_params`, after the path checks of `path_findings`."""

    def validate_params(cls: type[Partitioner], params: dict[str, Any]) -> list[ComponentError]:
        return [*path_findings(cls, params), *own(cls, params)]

    validate_params._paths = True  # type: ignore[attr-defined]
    validate_params.__doc__ = own.__doc__
    return classmethod(validate_params)


class WorkspacePartitioner(Partitioner):
    """A partitioner over the files of one directory of a registered workspace.

    Its params schema is a closed object: the workspace params (`workspace_params`), then
    `own_params()`. `workspace` is required unless a "demo" workspace is registered.
    """

    root_default: ClassVar[str] = "."
    root_help: ClassVar[str] = "Directory of the workspace to split."
    # Whether the stage may narrow the file list with `include`/`exclude` globs.
    file_filters: ClassVar[bool] = True
    # What workspace_files refused during the current partition() call.
    _refused: list[dict[str, str]]

    # Params that name directories of the workspace (a string or a list of them), checked
    # by `validate_params` as partitioning would resolve them.
    path_params: ClassVar[tuple[str, ...]] = ("root", "package_roots")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every subclass's own partition() reports refusals: no kind can forget to.
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("partition")
        if own is not None and not getattr(own, "_reports_refused", False):
            cls.partition = _reporting_refused(own)  # type: ignore[method-assign]
        # And its own validate_params() checks the paths first: no kind can forget that.
        checks = cls.__dict__.get("validate_params")
        if isinstance(checks, classmethod) and not getattr(checks.__func__, "_paths", False):
            cls.validate_params = _checking_paths(checks.__func__)  # type: ignore[method-assign]

    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> list[ComponentError]:
        """The workspace paths in `params` (`path_params`), resolved against the registered
        workspace as partitioning will (`Workspace.resolve`): one that leaves it (`..`, an
        absolute path, a symlink out) is an error, code `path_escape`; one that does not
        exist is a warning, code `path_not_found` (it may be created before the run; a
        dry-run then would refuse it)."""
        return path_findings(cls, params)

    @classmethod
    def own_params(cls) -> dict[str, Any]:
        """JSON Schema properties of this partitioner's own params, after the shared ones."""
        return {}

    @classmethod
    def get_params_schema(cls) -> dict[str, Any]:
        return {
            "type": "object",
            "additionalProperties": False,
            "required": required_unless_default("workspace"),
            "properties": {
                **workspace_params(cls.root_default, cls.root_help, file_filters=cls.file_filters),
                **cls.own_params(),
            },
        }

    def workspace_files(
        self, stage_params: Any
    ) -> tuple[dict[str, Any], Workspace, str, list[WorkspaceFile]]:
        """(resolved params, workspace, `root` relative to the workspace, files under it).

        Files are sorted by path and filtered by `include`/`exclude` when the partitioner takes
        them (Workspace.list_files); what the listing refused is kept for the manifest's
        `refused_files`.
        Raises ComponentError for invalid params, an unknown workspace, or a `root` that
        leaves the workspace or does not exist.
        """
        params = resolve_params(type(self), stage_params)
        ws = get_workspace(params["workspace"])
        files = ws.list_files(
            params["root"], include=params.get("include", ()), exclude=params.get("exclude", ())
        )
        root_rel = ws.relative(ws.resolve(params["root"]))
        if not hasattr(self, "_refused"):
            self._refused = []  # called outside partition()
        self._refused.extend(ws.refused)
        return params, ws, root_rel, files

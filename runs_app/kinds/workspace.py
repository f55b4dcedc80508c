"""What the partitioners over a workspace directory share: their params and their file list.

`by_filesize`, `by_module`, `by_dag_depth` and `by_asset_bucket` split the files of one
directory of a registered workspace. Each takes the same first four params (`workspace`,
`root`, `include`, `exclude`), in that order (the plan editor lays fields out in schema
order), followed by its own; each lists the files the same way. A subclass of
`WorkspacePartitioner` says only what differs: the default and help of `root`, and its own
params (`own_params`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from blueprints_app.registry import Partitioner
from runs_app.kinds.base import (
    GLOBS_PARAM,
    required_unless_default,
    resolve_params,
    subdir_param,
    workspace_param,
)
from runs_app.workspaces import Workspace, WorkspaceFile, get_workspace


def workspace_params(root_default: str, root_help: str) -> dict[str, Any]:
    """JSON Schema properties `workspace`, `root`, `include` and `exclude`, in that order."""
    return {
        "workspace": workspace_param(),
        "root": subdir_param(root_default, root_help),
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


class WorkspacePartitioner(Partitioner):
    """A partitioner over the files of one directory of a registered workspace.

    Its params schema is a closed object: the workspace params (`workspace_params`), then
    `own_params()`. `workspace` is required unless a "demo" workspace is registered.
    """

    root_default: ClassVar[str] = "."
    root_help: ClassVar[str] = "Directory of the workspace to split."

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
                **workspace_params(cls.root_default, cls.root_help),
                **cls.own_params(),
            },
        }

    def workspace_files(
        self, stage_params: Any
    ) -> tuple[dict[str, Any], Workspace, str, list[WorkspaceFile]]:
        """(resolved params, workspace, `root` relative to the workspace, files under it).

        Files are sorted by path and filtered by `include`/`exclude` (Workspace.list_files).
        Raises ComponentError for invalid params, an unknown workspace, or a `root` that
        leaves the workspace or does not exist.
        """
        params = resolve_params(type(self), stage_params)
        ws = get_workspace(params["workspace"])
        files = ws.list_files(params["root"], include=params["include"], exclude=params["exclude"])
        root_rel = ws.relative(ws.resolve(params["root"]))
        return params, ws, root_rel, files

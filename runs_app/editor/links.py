"""Links from a refusal to the editor, at the field the refusal is about.

A dry-run or an apply refused for a stage (`stages[2].params.root: ... does not exist`) links
to the plan editor scrolled to that field, so fixing it is one click from reading it. The
anchor is the DOM id the editor gives the field (`editor.fields.Field.dom_id`): a params
field for `stages[N].params.<name>...`, a stage field for `stages[N].<field>`, else the stage
(`stage-N`, e.g. for `stages[N].partitions[3].inputs`), else the top of the editor.
"""

from __future__ import annotations

import re
from typing import Any

from django.urls import reverse

from blueprints_app.validation import STAGE_FIELDS
from runs_app.editor.fields import slug

_PARAM = re.compile(r"^(stages\[\d+\]\.params\.[A-Za-z0-9_]+)")
_STAGE_FIELD = re.compile(r"^(stages\[(\d+)\])\.([A-Za-z_]+)")
_STAGE = re.compile(r"^stages\[(\d+)\]")


def field_anchor(path: str) -> str:
    """The editor's DOM id for an issue `path` ("" when the path names no stage)."""
    if m := _PARAM.match(path):
        return "f-" + slug(m.group(1))
    m = _STAGE_FIELD.match(path)
    if m and m.group(3) in STAGE_FIELDS and m.group(3) != "params":
        return "f-" + slug(f"{m.group(1)}.{m.group(3)}")
    if m := _STAGE.match(path):
        return f"stage-{m.group(1)}"
    return ""


def with_edit_links(plan_pk: int, errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`errors` (`{path, code, message}`) each with `edit_url`: the editor of plan `plan_pk`
    at the field its path names (the editor's top when it names none)."""
    base = reverse("plan-edit", args=[plan_pk])
    out = []
    for error in errors:
        anchor = field_anchor(str(error.get("path") or ""))
        out.append({**error, "edit_url": f"{base}#{anchor}" if anchor else base})
    return out

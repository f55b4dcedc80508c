"""The plan editor: the mapping between a plan document and an HTML form, both ways.

The editor's field names are the validator's paths with a type suffix
(`stages[0].params.chunk_size_mb:integer`), so a posted form turns back into a plan document
without knowing any schema (`decoding`), and each of the one validator's issues lands next to
the field whose path it names (`layout`). Fields are generated from the partitioner's params
schema (`fields`); adding, removing and moving stages are edits of the document (`structure`).
A stage has the one shape of `runs_app.manifest.stage_document`, as the services store it.

The views use the names below; the modules are the package's seams.
"""

from __future__ import annotations

from runs_app.editor.decoding import (
    INVALID_JSON,
    INVALID_NUMBER,
    EditorInput,
    document_from_post,
    editable_document,
    for_validation,
    parse_json_document,
)
from runs_app.editor.layout import PlanForm, StageForm, plan_form
from runs_app.editor.structure import apply_action, apply_structure_changes, new_stage, stage_ids

__all__ = [
    "INVALID_JSON",
    "INVALID_NUMBER",
    "EditorInput",
    "PlanForm",
    "StageForm",
    "apply_action",
    "apply_structure_changes",
    "document_from_post",
    "editable_document",
    "for_validation",
    "new_stage",
    "parse_json_document",
    "plan_form",
    "stage_ids",
]

"""Structural edits of the editor's document: add, remove and move a stage, and what a
changed kind or partitioner does to its stage. They work on the decoded document, before it is
validated, so they work the same with and without JavaScript."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from blueprints_app.models import JobKind
from blueprints_app.registry import EXECUTORS, PARTITIONERS
from hxo_site import parameters
from runs_app.manifest import stage_document


def signature(stage: Mapping[str, Any]) -> str:
    """`kind|partitioner|executor` of a stage: the form posts the one it was rendered for, so
    a changed choice is seen without JavaScript."""
    return "|".join(str(stage.get(k) or "") for k in ("kind", "partitioner", "executor"))


def stage_ids(document: Mapping[str, Any]) -> str:
    """The stage ids, comma-separated: what the `depends_on` choices were rendered for."""
    return ",".join(str(s.get("id") or "") for s in document.get("stages", []))


def apply_structure_changes(
    document: dict[str, Any], signatures: list[str], kinds: Mapping[str, JobKind]
) -> set[int]:
    """React to a changed kind or partitioner the way a user expects; returns changed stages.

    A new kind with no partitioner or executor chosen yet gets the first allowed ones; a new
    partitioner drops the params its schema does not know. A choice the user made is never
    replaced: a partitioner the new kind does not allow stays, with the validator's error.
    """
    changed: set[int] = set()
    for i, stage in enumerate(document.get("stages", [])):
        before = signatures[i].split("|") if i < len(signatures) else None
        if before is None or len(before) != 3 or signature(stage) == signatures[i]:
            continue
        changed.add(i)
        kind = kinds.get(stage.get("kind") or "")
        if kind is not None and before[0] != stage.get("kind"):
            if not stage.get("partitioner") and kind.partitioners:
                stage["partitioner"] = kind.partitioners[0]
            if not stage.get("executor") and kind.executors:
                stage["executor"] = kind.executors[0]
        partitioner = PARTITIONERS.get(stage.get("partitioner") or "")
        if partitioner is not None and before[1] != stage.get("partitioner"):
            known = partitioner.get_params_schema().get("properties")
            if known:
                stage["params"] = {k: v for k, v in stage["params"].items() if k in known}
        if stage.get("executor") in EXECUTORS and not EXECUTORS[stage["executor"]].idempotent:
            stage.setdefault("non_idempotent", True)
    return changed


def new_stage(document: Mapping[str, Any]) -> dict[str, Any]:
    """A blank stage with the first free `stage-<n>` id of `document`."""
    taken = {s.get("id") for s in document.get("stages", [])}
    n = len(taken) + 1
    while f"stage-{n}" in taken:
        n += 1
    return stage_document({"id": f"stage-{n}"})


def apply_action(document: dict[str, Any], action: str) -> int | None:
    """Add, remove or move a stage; returns the index to focus, if any."""
    stages: list[dict[str, Any]] = document["stages"]
    verb, _, arg = action.partition(":")
    if verb == "add":
        stages.append(new_stage(document))
        return len(stages) - 1
    if verb not in ("remove", "up", "down"):
        return None
    i = parameters.parse_int(arg, name="_action")
    if i >= len(stages):
        return None
    if verb == "remove":
        removed = stages.pop(i)
        for stage in stages:
            stage["depends_on"] = [d for d in stage.get("depends_on", []) if d != removed.get("id")]
        return None
    if verb == "up" and i > 0:
        stages[i - 1], stages[i] = stages[i], stages[i - 1]
        return i - 1
    if verb == "down" and i < len(stages) - 1:
        stages[i + 1], stages[i] = stages[i], stages[i + 1]
        return i + 1
    return None

"""The plan editor's posted form → plan document, without knowing any schema.

A field's name is the validator's path with a type suffix (`stages[0].params.chunk_size_mb:
integer`): the path says where the value goes, the suffix how its text is read. An empty input
means "not set", so the schema's default applies; text that does not parse is a problem at its
path, and the text stays in the document so the validator does not report it a second time.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from django.http import QueryDict

from blueprints_app.validation import Issue
from hxo_site import parameters, parsers
from runs_app.manifest import stage_document

INVALID_JSON = "invalid_json"
INVALID_NUMBER = "invalid_number"

_FIELD_RE = re.compile(r"^(?P<path>[^:]+):(?P<type>[a-z]+)$")
_TOKEN_RE = re.compile(r"\.?([A-Za-z0-9_\-]+)|\[(\d+)\]")
_INT_RE = re.compile(r"[+-]?[0-9]{1,30}")  # ASCII digits; bounds are the schema's job


def parse_path(path: str) -> list[str | int]:
    """A validator path as its keys and indexes (`stages[0].params.x` → `["stages", 0,
    "params", "x"]`); raises ValueError on anything else."""
    tokens: list[str | int] = []
    pos = 0
    while pos < len(path):
        m = _TOKEN_RE.match(path, pos)
        if not m:
            raise ValueError(path)
        tokens.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    return tokens


@dataclasses.dataclass
class EditorInput:
    """A posted editor form: the document, parse problems, and what the client last rendered."""

    document: dict[str, Any]
    problems: list[Issue]
    signatures: list[str]  # per stage, the kind|partitioner|executor it was rendered for
    rendered_ids: str  # the stage ids the depends_on checkboxes were rendered for
    comment: str = ""


def _coerce(typ: str, values: list[str], path: str, problems: list[Issue]) -> tuple[Any, bool]:
    """(value, present): an empty input means "not set" so defaults apply."""
    raw = values[-1] if values else ""
    if typ == "list":
        return [v for v in (x.strip() for x in values) if v], True
    if typ == "boolean":
        return "true" in values, True
    if typ == "flag":
        return True, "true" in values
    if typ == "text":
        return raw.replace("\r\n", "\n"), True
    if typ == "raw":
        text = raw.replace("\r\n", "\n")
        return text, bool(text.strip())
    value = raw.strip()
    if not value:
        return None, False
    if typ == "string":
        return value, True
    if typ == "integer":
        if _INT_RE.fullmatch(value):
            return int(value), True
        problems.append(Issue(path, INVALID_NUMBER, f"{value!r} is not a whole number"))
        return value, True
    if typ == "number":
        try:
            number = float(value)
        except ValueError:
            problems.append(Issue(path, INVALID_NUMBER, f"{value!r} is not a number"))
            return value, True
        if not math.isfinite(number):  # "1e999", "nan": no JSON column holds them
            problems.append(Issue(path, INVALID_NUMBER, f"{value!r} is not a finite number"))
            return value, True
        return (int(number) if number.is_integer() and _INT_RE.fullmatch(value) else number), True
    if typ == "lines":
        items = [line.strip() for line in raw.splitlines() if line.strip()]
        return items, bool(items)
    if typ == "blocks":
        items = [b.strip() for b in re.split(r"\n\s*\n", raw.replace("\r\n", "\n")) if b.strip()]
        return items, bool(items)
    if typ in ("json", "extra"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            problems.append(
                Issue(path, INVALID_JSON, f"not valid JSON: {exc.msg} (line {exc.lineno})")
            )
            return None, False
        try:  # the API's rules on top of the syntax: no duplicate keys, NaN or 1e400
            parsers.loads(value)
        except parsers.JSONRefused as exc:
            where = f" at {exc.path}" if exc.path else ""
            problems.append(Issue(path, INVALID_JSON, f"not accepted{where}: {exc.message}"))
            return None, False
        if typ == "extra" and not isinstance(parsed, dict):
            problems.append(Issue(path, INVALID_JSON, "extra params must be a JSON object"))
            return None, False
        return parsed, True
    return value, True


def _set(target: dict[str, Any], tokens: list[str | int], value: Any) -> None:
    node = target
    for token in tokens[:-1]:
        node = node.setdefault(str(token), {})
        if not isinstance(node, dict):
            return
    node[str(tokens[-1])] = value


def document_from_post(data: QueryDict) -> EditorInput:
    """Rebuild the plan document from a posted editor form, stages in the order posted.

    Out: `EditorInput.document` is `{"name", "description", "stages": [...]}`, each stage in
    the shape of `runs_app.manifest.stage_document` (stages posted but not listed in
    `_stages` come last); what did not parse is in `problems`, its path renumbered to the
    stage's position. Raises `parameters.ParameterError` (a 400) when `_stages` is not a
    list of indexes: only a forged form sends that.
    """
    problems: list[Issue] = []
    order = [parameters.parse_int(i, name="_stages") for i in data.getlist("_stages")]
    stages: dict[int, dict[str, Any]] = {i: {} for i in order}
    extras: dict[int, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key in data:
        m = _FIELD_RE.match(key)
        if key.startswith("_") or not m:
            continue
        path, typ = m.group("path"), m.group("type")
        try:
            tokens = parse_path(path)
        except ValueError:
            continue
        value, present = _coerce(typ, data.getlist(key), path, problems)
        if not present:
            continue
        if tokens[0] == "stages" and len(tokens) >= 3 and isinstance(tokens[1], int):
            index = tokens[1]
            stage = stages.setdefault(index, {})
            rest = tokens[2:]
            if rest == ["params", "_extra"]:
                extras[index] = value
            else:
                _set(stage, rest, value)
        elif len(tokens) == 1 and isinstance(tokens[0], str):
            top[tokens[0]] = value
    for index, extra in extras.items():
        params = stages[index].setdefault("params", {})
        for name, value in extra.items():
            params.setdefault(name, value)
    ordered = order + sorted(set(stages) - set(order))
    document: dict[str, Any] = {
        "name": top.get("name", ""),
        "description": top.get("description", ""),
        "stages": [stage_document(stages[i], keep_null=True) for i in ordered],
    }
    # Paths in problems name the posted index; renumber them to the stage's position.
    renumber = {old: new for new, old in enumerate(ordered)}
    problems = [_renumber(p, renumber) for p in problems]
    return EditorInput(
        document=document,
        problems=problems,
        signatures=data.getlist("_sig"),
        rendered_ids=data.get("_ids", ""),
        comment=data.get("_comment", "").strip()[:500],
    )


def _renumber(issue: Issue, mapping: Mapping[int, int]) -> Issue:
    m = re.match(r"^stages\[(\d+)\]", issue.path)
    if not m or int(m.group(1)) not in mapping:
        return issue
    path = f"stages[{mapping[int(m.group(1))]}]" + issue.path[m.end() :]
    return Issue(path, issue.code, issue.message)


def for_validation(document: dict[str, Any]) -> dict[str, Any]:
    """The document as the validator and the services see it: unset selects are missing, so
    they are reported as required rather than as unknown names."""
    stages = []
    for stage in document.get("stages", []):
        stages.append({k: v for k, v in stage.items() if v != ""})
    return {**document, "stages": stages}


def parse_json_document(text: str) -> tuple[Any, Issue | None]:
    """Imported JSON text → (the parsed value, None), or (None, an `invalid_json` issue at
    `plan` saying where the text broke). Empty text is an issue too."""
    if not text.strip():
        return None, Issue("plan", INVALID_JSON, "paste or import a plan document")
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return None, Issue(
            "plan",
            INVALID_JSON,
            f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
        )
    try:  # the API's rules on top of the syntax: no duplicate keys, NaN or 1e400
        return parsers.loads(text), None
    except parsers.JSONRefused as exc:
        where = f" at {exc.path}" if exc.path else ""
        return None, Issue("plan", INVALID_JSON, f"not accepted{where}: {exc.message}")


def editable_document(document: Mapping[str, Any]) -> dict[str, Any]:
    """A plan document (a stored revision's, or imported JSON) as the editor holds it: a deep
    copy with `name` and `description` present and each stage that is an object through the
    one stage normaliser (`runs_app.manifest.stage_document`, nulls kept for the validator).
    A stage that is not an object is dropped: the editor has no fields to show it in."""
    editable = copy.deepcopy(dict(document))
    stages = editable.get("stages") if isinstance(editable.get("stages"), list) else []
    editable["stages"] = [stage_document(s, keep_null=True) for s in stages if isinstance(s, dict)]
    editable.setdefault("name", "")
    editable.setdefault("description", "")
    return editable

"""Forms of the dashboard, and the plan editor's mapping between a plan document and HTML.

The editor's field names are the validator's paths with a type suffix
(`stages[0].params.chunk_size_mb:integer`), so a posted form turns back into a plan document
without knowing any schema, and each of the one validator's issues lands next to the field whose
path it names. Fields are generated from the partitioner's params schema.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from django import forms
from django.conf import settings
from django.http import QueryDict

from blueprints_app.models import JobKind
from blueprints_app.registry import EXECUTORS, PARTITIONERS
from blueprints_app.validation import Issue, ValidationResult
from hxo_site import codes, parameters
from hxo_site.capabilities import has_capability
from runs_app.models import PartitionState, RunMode, RunState

INVALID_JSON = "invalid_json"
INVALID_NUMBER = "invalid_number"

_FIELD_RE = re.compile(r"^(?P<path>[^:]+):(?P<type>[a-z]+)$")
_TOKEN_RE = re.compile(r"\.?([A-Za-z0-9_\-]+)|\[(\d+)\]")
_INT_RE = re.compile(r"[+-]?[0-9]{1,30}")  # ASCII digits; bounds are the schema's job


def slug(path: str) -> str:
    """A DOM id fragment for a field path (`stages[0].params.x` → `stages-0-params-x`)."""
    return re.sub(r"[^A-Za-z0-9_]+", "-", path).strip("-")


def parse_path(path: str) -> list[str | int]:
    tokens: list[str | int] = []
    pos = 0
    while pos < len(path):
        m = _TOKEN_RE.match(path, pos)
        if not m:
            raise ValueError(path)
        tokens.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    return tokens


# --- Posted form → document ----------------------------------------------------------------


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
    """Rebuild the plan document from a posted editor form, stages in the order posted."""
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
        "stages": [stage_defaults(stages[i]) for i in ordered],
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


def stage_defaults(stage: dict[str, Any]) -> dict[str, Any]:
    out = {"id": stage.get("id", ""), "kind": stage.get("kind", "")}
    out["partitioner"] = stage.get("partitioner", "")
    out["executor"] = stage.get("executor", "")
    out["params"] = stage.get("params") or {}
    out["depends_on"] = stage.get("depends_on") or []
    for key in ("slo_ms", "max_failed_partitions", "non_idempotent"):
        if key in stage:
            out[key] = stage[key]
    return out


def for_validation(document: dict[str, Any]) -> dict[str, Any]:
    """The document as the validator and the services see it: unset selects are missing, so
    they are reported as required rather than as unknown names."""
    stages = []
    for stage in document.get("stages", []):
        stages.append({k: v for k, v in stage.items() if v != ""})
    return {**document, "stages": stages}


def signature(stage: Mapping[str, Any]) -> str:
    return "|".join(str(stage.get(k) or "") for k in ("kind", "partitioner", "executor"))


def stage_ids(document: Mapping[str, Any]) -> str:
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
    taken = {s.get("id") for s in document.get("stages", [])}
    n = len(taken) + 1
    while f"stage-{n}" in taken:
        n += 1
    return {
        "id": f"stage-{n}",
        "kind": "",
        "partitioner": "",
        "executor": "",
        "params": {},
        "depends_on": [],
    }


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


# --- Document → form fields ----------------------------------------------------------------


@dataclasses.dataclass
class Field:
    path: str
    type: str  # the posted suffix: how the value is parsed back
    widget: str  # text, textarea, number, select, checkbox, checkboxes, fieldset
    label: str
    help: str = ""
    value: Any = ""
    options: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    required: bool = False
    placeholder: str = ""
    minimum: Any = None
    maximum: Any = None
    step: str = ""
    rows: int = 3
    children: list[Field] = dataclasses.field(default_factory=list)
    errors: list[Issue] = dataclasses.field(default_factory=list)
    warnings: list[Issue] = dataclasses.field(default_factory=list)
    css: str = ""

    @property
    def name(self) -> str:
        return f"{self.path}:{self.type}"

    @property
    def dom_id(self) -> str:
        return "f-" + slug(self.path)

    @property
    def err_id(self) -> str:
        return "err-" + slug(self.path)

    @property
    def help_id(self) -> str:
        return "help-" + slug(self.path)

    def walk(self) -> Iterable[Field]:
        yield self
        for child in self.children:
            yield from child.walk()


def _label(name: str, prop: Mapping[str, Any]) -> str:
    return str(prop.get("title") or name.replace("_", " ").capitalize())


def _display(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, indent=2)
    return str(value)


def _choices(names: Iterable[str], current: Any, default: Any) -> list[tuple[str, str]]:
    options = [("", f"Default ({default})" if default not in (None, "") else "— choose —")]
    names = list(names)
    options += [(n, n) for n in names]
    if current not in (None, "") and str(current) not in names:
        options.append((str(current), f"{current} (not registered)"))
    return options


def _constraints(prop: Mapping[str, Any]) -> str:
    bits = []
    if "minimum" in prop and "maximum" in prop:
        bits.append(f"{prop['minimum']} to {prop['maximum']}")
    elif "minimum" in prop:
        bits.append(f"at least {prop['minimum']}")
    elif "maximum" in prop:
        bits.append(f"at most {prop['maximum']}")
    if "default" in prop and not isinstance(prop["default"], (dict, list)):
        bits.append(f"default {_display(prop['default'])}")
    return "; ".join(bits)


def schema_fields(schema: Mapping[str, Any], values: Mapping[str, Any], prefix: str) -> list[Field]:
    """Form fields for the properties of a JSON Schema object, values filled in."""
    required = set(schema.get("required") or [])
    fields = []
    for name, prop in (schema.get("properties") or {}).items():
        if not isinstance(prop, dict):
            continue
        path = f"{prefix}.{name}"
        value = values.get(name)
        default = prop.get("default")
        description = str(prop.get("description") or "").strip()
        limits = _constraints(prop)
        help_text = f"{description} ({limits})" if description and limits else description or limits
        base = {
            "path": path,
            "label": _label(name, prop),
            "help": help_text,
            "required": name in required,
        }
        widget = prop.get("x-hxo-widget")
        typ = prop.get("type")
        if widget in ("workspace", "target"):
            names = (
                settings.HXO_WORKSPACES if widget == "workspace" else settings.HXO_DATABASE_TARGETS
            )
            fields.append(
                Field(
                    **base,
                    type="string",
                    widget="select",
                    value=_display(value),
                    options=_choices(sorted(names), value, default),
                )
            )
        elif "enum" in prop and typ in (None, "string", "integer"):
            fields.append(
                Field(
                    **base,
                    type="integer" if typ == "integer" else "string",
                    widget="select",
                    value=_display(value),
                    options=_choices([str(e) for e in prop["enum"]], value, default),
                )
            )
        elif typ == "boolean":
            checked = value if isinstance(value, bool) else bool(default)
            fields.append(Field(**base, type="boolean", widget="checkbox", value=checked))
        elif typ in ("integer", "number"):
            fields.append(
                Field(
                    **base,
                    type=typ,
                    widget="number",
                    value=_display(value),
                    placeholder=_display(default),
                    minimum=prop.get("minimum"),
                    maximum=prop.get("maximum"),
                    step="1" if typ == "integer" else "any",
                )
            )
        elif typ == "string" and widget == "sql":
            fields.append(
                Field(
                    **base, type="raw", widget="textarea", value=_display(value), rows=4, css="mono"
                )
            )
        elif typ == "string":
            fields.append(
                Field(
                    **base,
                    type="string",
                    widget="text",
                    value=_display(value),
                    placeholder=_display(default),
                )
            )
        elif typ == "array" and (prop.get("items") or {}).get("type") == "string":
            blocks = widget == "sql-list"
            items = value if isinstance(value, list) else []
            joiner = "\n\n" if blocks else "\n"
            shown = (
                joiner.join(str(v) for v in items) if isinstance(value, list) else _display(value)
            )
            hint = (
                "One statement per paragraph: separate statements with a blank line."
                if blocks
                else "One per line."
            )
            fields.append(
                Field(
                    **{**base, "help": f"{base['help']} {hint}".strip()},
                    type="blocks" if blocks else "lines",
                    widget="textarea",
                    value=shown,
                    rows=min(max(shown.count("\n") + 2, 6 if blocks else 3), 16),
                    css="mono",
                )
            )
        elif typ == "object" and isinstance(prop.get("properties"), dict):
            inner = value if isinstance(value, dict) else {}
            fields.append(
                Field(
                    **base,
                    type="object",
                    widget="fieldset",
                    children=schema_fields(prop, inner, path),
                )
            )
        else:
            fields.append(
                Field(
                    **{**base, "help": f"{base['help']} As JSON.".strip()},
                    type="json",
                    widget="textarea",
                    value=_display(value),
                    css="mono",
                )
            )
    return fields


@dataclasses.dataclass
class StageForm:
    index: int
    stage: dict[str, Any]
    kind: JobKind | None
    fields: dict[str, Field]  # id, kind, partitioner, executor, depends_on, slo_ms, ...
    params: Field
    non_idempotent_offered: bool
    executor_idempotent: bool
    focus: bool = False
    errors: list[Issue] = dataclasses.field(default_factory=list)  # stage-level, no field
    warnings: list[Issue] = dataclasses.field(default_factory=list)
    count: int = 1

    @property
    def path(self) -> str:
        return f"stages[{self.index}]"

    @property
    def dom_id(self) -> str:
        return f"stage-{self.index}"

    @property
    def err_id(self) -> str:
        return "err-" + slug(self.path)

    @property
    def signature(self) -> str:
        return signature(self.stage)

    @property
    def title(self) -> str:
        return str(self.stage.get("id") or f"Stage {self.index + 1}")

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def is_last(self) -> bool:
        return self.index == self.count - 1

    def all_fields(self) -> Iterable[Field]:
        for field in self.fields.values():
            yield from field.walk()
        yield from self.params.walk()

    @property
    def error_count(self) -> int:
        return len(self.errors) + sum(len(f.errors) for f in self.all_fields())


def _component_options(
    allowed: list[str], registry: Mapping[str, Any], current: str, kind: JobKind | None
) -> list[tuple[str, str]]:
    if kind is None:
        return [("", "— choose a kind first —")] + ([(current, current)] if current else [])
    options = [("", "— choose —")]
    for name in allowed:
        component = registry.get(name)
        note = " (deprecated)" if component is not None and component.deprecated else ""
        options.append((name, f"{name}{note}"))
    if current and current not in allowed:
        # The user's choice stays visible: the validator explains why it is not allowed.
        options.append((current, f"{current} — not allowed for {kind.kind}"))
    return options


def _alternatives(schema: Mapping[str, Any]) -> str:
    """`oneOf`/`anyOf` of required names, in words ("Give exactly one of: a, b.")."""
    for key, words in (("oneOf", "exactly one of"), ("anyOf", "at least one of")):
        options = schema.get(key)
        if isinstance(options, list) and all(
            isinstance(o, dict) and set(o) == {"required"} for o in options
        ):
            names = [" and ".join(o["required"]) for o in options]
            return f"Give {words}: {', '.join(names)}."
    return ""


def _kind_help(kind: JobKind | None) -> str:
    if kind is None:
        return ""
    policy = "Needs an approved dry-run before apply." if kind.require_dry_run else ""
    return " ".join(x for x in (kind.description + ".", policy) if x).replace("..", ".")


def stage_form(
    index: int,
    stage: dict[str, Any],
    *,
    all_ids: list[str],
    kinds: Mapping[str, JobKind],
    count: int,
) -> StageForm:
    path = f"stages[{index}]"
    kind = kinds.get(stage.get("kind") or "")
    partitioner_name = str(stage.get("partitioner") or "")
    executor_name = str(stage.get("executor") or "")
    kind_options = [("", "— choose a kind —")]
    for k in kinds.values():
        note = " (deprecated)" if k.deprecated else ""
        kind_options.append((k.kind, f"{k.kind}{note}"))
    if stage.get("kind") and kind is None:
        kind_options.append((str(stage["kind"]), f"{stage['kind']} (not registered)"))
    fields: dict[str, Field] = {
        "id": Field(
            path=f"{path}.id",
            type="string",
            widget="text",
            label="Stage id",
            value=_display(stage.get("id")),
            required=True,
            help="Letters, digits, '_', '.', '-'; unique in the plan.",
            css="mono",
        ),
        "kind": Field(
            path=f"{path}.kind",
            type="string",
            widget="select",
            label="Job kind",
            value=_display(stage.get("kind")),
            options=kind_options,
            required=True,
            help=_kind_help(kind),
        ),
        "partitioner": Field(
            path=f"{path}.partitioner",
            type="string",
            widget="select",
            label="Partitioner",
            value=partitioner_name,
            options=_component_options(
                list(kind.partitioners) if kind else [], PARTITIONERS, partitioner_name, kind
            ),
            required=True,
            help=getattr(PARTITIONERS.get(partitioner_name), "description", ""),
        ),
        "executor": Field(
            path=f"{path}.executor",
            type="string",
            widget="select",
            label="Executor",
            value=executor_name,
            options=_component_options(
                list(kind.executors) if kind else [], EXECUTORS, executor_name, kind
            ),
            required=True,
            help=getattr(EXECUTORS.get(executor_name), "description", ""),
        ),
    }
    others = [i for i in all_ids if i and i != stage.get("id")]
    deps = [d for d in stage.get("depends_on") or [] if isinstance(d, str)]
    fields["depends_on"] = Field(
        path=f"{path}.depends_on",
        type="list",
        widget="checkboxes",
        label="Runs after",
        value=deps,
        options=[(i, i) for i in others]
        + [(d, f"{d} (no such stage)") for d in deps if d not in others],
        help="The stages that must succeed first." if others else "No other stages yet.",
    )
    default_slo = kind.default_slo_ms if kind else None
    fields["slo_ms"] = Field(
        path=f"{path}.slo_ms",
        type="integer",
        widget="number",
        label="SLO (ms)",
        value=_display(stage.get("slo_ms")),
        placeholder=_display(default_slo),
        minimum=1,
        step="1",
        help=f"Leave empty for the kind's default ({default_slo} ms)." if default_slo else "",
    )
    fields["max_failed_partitions"] = Field(
        path=f"{path}.max_failed_partitions",
        type="integer",
        widget="number",
        label="Failures tolerated",
        value=_display(stage.get("max_failed_partitions")),
        placeholder="0",
        minimum=0,
        step="1",
        help="Failed partitions the stage may have and still succeed.",
    )
    executor = EXECUTORS.get(executor_name)
    non_idempotent = stage.get("non_idempotent") is True
    offered = bool(kind and kind.allow_non_idempotent) or non_idempotent
    if offered:
        fields["non_idempotent"] = Field(
            path=f"{path}.non_idempotent",
            type="flag",
            widget="checkbox",
            label="Non-idempotent stage",
            value=non_idempotent,
            help=(
                "Running it needs the hxo:force-merge capability. Its partitions are never "
                "retried automatically, never reused from an earlier run, a replay needs "
                "hxo:force-merge again, and every use is audited."
            ),
        )
    params = stage.get("params") if isinstance(stage.get("params"), dict) else {}
    partitioner = PARTITIONERS.get(partitioner_name)
    schema = partitioner.get_params_schema() if partitioner else {}
    known = schema.get("properties") or {}
    children = schema_fields(schema, params, f"{path}.params") if partitioner else []
    extra = {k: v for k, v in params.items() if k not in known}
    if extra or (partitioner is not None and not known):
        children.append(
            Field(
                path=f"{path}.params._extra",
                type="extra",
                widget="textarea",
                label="Other params (JSON)" if known else "Params (JSON)",
                value=json.dumps(extra, indent=2) if extra else "",
                help=(
                    "Params the partitioner's form does not show, as a JSON object."
                    if known
                    else "This partitioner declares no form; give its params as a JSON object."
                ),
                css="mono",
            )
        )
    params_field = Field(
        path=f"{path}.params",
        type="object",
        widget="fieldset",
        label=f"Params of {partitioner_name}" if partitioner else "Params",
        help=_alternatives(schema)
        if partitioner
        else "Choose a partitioner to get a form for its params.",
        children=children,
    )
    return StageForm(
        index=index,
        stage=stage,
        kind=kind,
        fields=fields,
        params=params_field,
        non_idempotent_offered=offered,
        executor_idempotent=executor.idempotent if executor else True,
        count=count,
    )


@dataclasses.dataclass
class PlanForm:
    document: dict[str, Any]
    name: Field
    description: Field
    stages: list[StageForm]
    top_errors: list[Issue]
    top_warnings: list[Issue]
    errors: list[Issue]  # every error, for the summary
    warnings: list[Issue]
    can_force_merge: bool
    summary: list[tuple[Issue, str]] = dataclasses.field(default_factory=list)

    @property
    def blocking(self) -> list[Issue]:
        """Errors that stop saving: a missing hxo:force-merge only stops running."""
        return [e for e in self.errors if e.code != codes.FORCE_MERGE_REQUIRED]

    @property
    def ids(self) -> str:
        return stage_ids(self.document)

    @property
    def valid(self) -> bool:
        return not self.errors

    def slots(self) -> Iterable[Field]:
        yield self.name
        yield self.description
        for stage in self.stages:
            yield from stage.all_fields()


def plan_form(
    document: dict[str, Any],
    result: ValidationResult,
    *,
    kinds: Mapping[str, JobKind],
    user: Any,
    problems: Iterable[Issue] = (),
    focus: int | None = None,
) -> PlanForm:
    """The editor for `document`, each issue of `result` placed at its field."""
    stages_doc = document.get("stages", [])
    ids = [str(s.get("id") or "") for s in stages_doc]
    stages = [
        stage_form(i, s, all_ids=ids, kinds=kinds, count=len(stages_doc))
        for i, s in enumerate(stages_doc)
    ]
    if focus is not None and 0 <= focus < len(stages):
        stages[focus].focus = True
    form = PlanForm(
        document=document,
        name=Field(
            path="name",
            type="string",
            widget="text",
            label="Name",
            value=_display(document.get("name")),
            required=True,
        ),
        description=Field(
            path="description",
            type="text",
            widget="textarea",
            label="Description",
            value=_display(document.get("description")),
            rows=2,
        ),
        stages=stages,
        top_errors=[],
        top_warnings=[],
        errors=[],
        warnings=[],
        can_force_merge=has_capability(user, "force-merge"),
    )
    problems = list(problems)
    # A field whose text did not parse reports that, not the validator's view of its text.
    unparsed = {p.path for p in problems}
    errors = problems + [
        e
        for e in result.errors
        if not any(e.path == u or e.path.startswith(u + ".") for u in unparsed)
    ]
    form.errors = errors
    form.warnings = list(result.warnings)
    anchors = _place(form, errors, "errors")
    _place(form, result.warnings, "warnings")
    form.summary = [
        (e, anchor) for e, anchor in zip(errors, anchors, strict=True) if e in form.blocking
    ]
    return form


def _place(form: PlanForm, issues: Iterable[Issue], attr: str) -> list[str]:
    """Attach each issue to the field (or stage) whose path is its longest prefix; returns
    the DOM id each landed at, for the summary's links."""
    slots: dict[str, Any] = {f.path: f for f in form.slots()}
    for stage in form.stages:
        slots[stage.path] = stage
    ordered = sorted(slots, key=len, reverse=True)
    top = form.top_errors if attr == "errors" else form.top_warnings
    anchors = []
    for issue in issues:
        target = next(
            (
                slots[s]
                for s in ordered
                if issue.path == s or issue.path.startswith((s + ".", s + "["))
            ),
            None,
        )
        if target is None:
            top.append(issue)
            anchors.append("plan-errors")
        else:
            getattr(target, attr).append(issue)
            anchors.append(target.dom_id)
    return anchors


# --- Simple forms ---------------------------------------------------------------------------


class DecisionForm(forms.Form):
    comment = forms.CharField(
        label="Comment",
        required=False,
        max_length=5000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Recorded with your decision and in the audit log.",
    )


class ApplyForm(forms.Form):
    dry_run = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)
    force_rerun = forms.BooleanField(
        required=False,
        label="Re-run partitions that already succeeded in an earlier apply",
    )


class JsonImportForm(forms.Form):
    document = forms.CharField(
        label="Plan document (JSON)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 24, "class": "mono", "spellcheck": "false"}),
    )
    file = forms.FileField(label="Or import a file", required=False)
    comment = forms.CharField(label="Revision comment", required=False, max_length=500)

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        upload = data.get("file")
        if upload is not None:
            if upload.size > settings.HXO_MAX_BODY_BYTES:
                raise forms.ValidationError("the file is too large")
            try:
                data["document"] = upload.read().decode("utf-8")
            except UnicodeDecodeError:
                raise forms.ValidationError("the file is not UTF-8 text") from None
        return data


def parse_json_document(text: str) -> tuple[Any, Issue | None]:
    if not text.strip():
        return None, Issue("plan", INVALID_JSON, "paste or import a plan document")
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, Issue(
            "plan",
            INVALID_JSON,
            f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
        )


class PartitionFilterForm(forms.Form):
    stage = forms.ChoiceField(label="Stage", required=False)
    state = forms.ChoiceField(
        label="State",
        required=False,
        choices=[("", "Any state"), *PartitionState.choices],
    )

    def __init__(self, *args: Any, stage_ids: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["stage"].choices = [("", "All stages")] + [(s, s) for s in stage_ids]


class IdField(forms.CharField):
    """A database id typed in a form or a URL, through the one parser (ASCII digits only,
    1..2^63-1): Django's IntegerField reads '٣' as 3 and cannot bound to the column."""

    def to_python(self, value: Any) -> int | None:  # type: ignore[override]
        value = super().to_python(value)
        if value in self.empty_values:
            return None
        try:
            return parameters.parse_id(value, name=self.label or "id")
        except parameters.ParameterError as exc:
            raise forms.ValidationError(exc.message, code=exc.code) from None


class RunFilterForm(forms.Form):
    state = forms.ChoiceField(
        label="State", required=False, choices=[("", "Any state"), *RunState.choices]
    )
    mode = forms.ChoiceField(
        label="Mode", required=False, choices=[("", "Dry-runs and applies"), *RunMode.choices]
    )
    plan = IdField(label="Plan id", required=False, strip=False)


class AuditFilterForm(forms.Form):
    actor = forms.CharField(label="User", required=False, max_length=150)
    action = forms.ChoiceField(label="Action", required=False)
    object_type = forms.ChoiceField(label="Object type", required=False)
    object_id = forms.CharField(label="Object id", required=False, max_length=64)
    since = forms.DateTimeField(
        label="From",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"],
    )
    until = forms.DateTimeField(
        label="To",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"],
    )

    def __init__(
        self, *args: Any, actions: list[str], object_types: list[str], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fields["action"].choices = [("", "Any action")] + [(a, a) for a in actions]
        self.fields["object_type"].choices = [("", "Any object")] + [(t, t) for t in object_types]


class SearchForm(forms.Form):
    q = forms.CharField(label="Search", required=False, max_length=200)

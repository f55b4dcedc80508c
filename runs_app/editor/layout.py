"""The editor's page: a form per stage (its own fields, then its params' fields), the plan's
form around them, and every issue of the one validator placed at the field its path names."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

from blueprints_app.models import JobKind
from blueprints_app.registry import EXECUTORS, PARTITIONERS
from blueprints_app.validation import Issue, ValidationResult
from hxo_site import codes
from hxo_site.capabilities import has_capability
from runs_app.editor.fields import Field, display, schema_fields, slug
from runs_app.editor.structure import signature, stage_ids


@dataclasses.dataclass
class StageForm:
    """A stage's part of the editor: its fields, its params fieldset, stage-level issues."""

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


def _component_field(
    path: str,
    label: str,
    name: str,
    allowed: list[str],
    registry: Mapping[str, Any],
    kind: JobKind | None,
) -> Field:
    """The select of a stage's partitioner or executor (`registry`: PARTITIONERS or
    EXECUTORS; `allowed`: the kind's names for it), described by the chosen component."""
    return Field(
        path=path,
        type="string",
        widget="select",
        label=label,
        value=name,
        options=_component_options(allowed, registry, name, kind),
        required=True,
        help=getattr(registry.get(name), "description", ""),
    )


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
    """The form of stage `index` of `count`: its own fields, its params' fields from the
    partitioner's schema (and a JSON field for params the schema does not know), the
    choices allowed by its kind. `all_ids` are the plan's stage ids, for `depends_on`."""
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
            value=display(stage.get("id")),
            required=True,
            help="Letters, digits, '_', '.', '-'; unique in the plan.",
            css="mono",
        ),
        "kind": Field(
            path=f"{path}.kind",
            type="string",
            widget="select",
            label="Job kind",
            value=display(stage.get("kind")),
            options=kind_options,
            required=True,
            help=_kind_help(kind),
        ),
        "partitioner": _component_field(
            f"{path}.partitioner",
            "Partitioner",
            partitioner_name,
            list(kind.partitioners) if kind else [],
            PARTITIONERS,
            kind,
        ),
        "executor": _component_field(
            f"{path}.executor",
            "Executor",
            executor_name,
            list(kind.executors) if kind else [],
            EXECUTORS,
            kind,
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
        value=display(stage.get("slo_ms")),
        placeholder=display(default_slo),
        minimum=1,
        step="1",
        help=f"Leave empty for the kind's default ({default_slo} ms)." if default_slo else "",
    )
    fields["max_failed_partitions"] = Field(
        path=f"{path}.max_failed_partitions",
        type="integer",
        widget="number",
        label="Failures tolerated",
        value=display(stage.get("max_failed_partitions")),
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
    schema = schema_for_kind(schema, stage.get("kind"))
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


def schema_for_kind(schema: dict[str, Any], kind: Any) -> dict[str, Any]:
    """`schema` without the properties that say they serve other kinds (`x-hxo-kinds`, a
    list of kind names, e.g. by_filesize's `compress_level` for deploy.pack only): a
    partitioner shared by several kinds offers each kind only the fields it reads (issue 15
    §7: "gzip level" appeared for assets.index). A value given anyway stays, under "Other
    params", and validates as before."""
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return schema
    kept = {
        name: prop
        for name, prop in properties.items()
        if not isinstance(prop, dict) or kind in prop.get("x-hxo-kinds", [kind])
    }
    if len(kept) == len(properties):
        return schema
    required = [name for name in schema.get("required", []) if name in kept]
    return {**schema, "properties": kept, "required": required}


@dataclasses.dataclass
class PlanForm:
    """The whole editor: the plan's fields, a form per stage, every issue placed."""

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
            value=display(document.get("name")),
            required=True,
        ),
        description=Field(
            path="description",
            type="text",
            widget="textarea",
            label="Description",
            value=display(document.get("description")),
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

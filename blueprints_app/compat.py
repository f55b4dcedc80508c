"""Can a job kind run? Its components' declared schemas against the kind's own.

A partitioner declares the inputs it yields (`Partitioner.inputs_schema`), an executor the
inputs it reads and the output an apply returns (`Executor.inputs_schema`,
`Executor.get_output_schema`). A kind (its allowed partitioners and executors, its input and
output schemas) can run only when, for every allowed partitioner P and executor E:

1. P produces every field the kind's `input_schema` requires, with a compatible type, and no
   field the schema forbids (`additionalProperties: false`) — else every dry-run fails with
   `invalid_inputs`;
2. E finds every input it requires among what P produces — else E refuses each partition;
3. E's output has every field the kind's `output_schema` requires, with a compatible type and
   the same `const`/`enum` value — else every apply fails with `invalid_output`.

The check is structural and pragmatic, not a JSON Schema containment proof: it reads only the
top level's `required`, `properties.<field>.type` (a string or a list; `integer` fits
`number`), `const`/`enum` and `additionalProperties: false`. `$ref`, `allOf`/`anyOf`/`oneOf`,
`if`/`then`, patterns and bounds are not compared (the dry-run still checks every partition
against the full schema). A component that declares nothing (no `properties` and no
`required`: the registry's default) is trusted: plugins written before these declarations
keep working. The idea is Pact's consumer-driven contracts: the consumer (the kind) states
what it needs, each provider (a component) states what it gives, and the two are compared
before deployment rather than at run time.

`kind_issues` is called by `validation.validate_job_kind` (every registry write: admin, API,
import), `stage_issues` by `validation.validate_stage`, and `registry_problems` at start-up
and by the `manage.py check` system check (`blueprints_app.checks`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from blueprints_app.registry import EXECUTORS, PARTITIONERS, Executor, Partitioner
from hxo_site import codes

_ANY = None  # "no type declared": compatible with anything


@dataclasses.dataclass(frozen=True)
class Finding:
    """One incompatibility. `blame` says which side the fix is likely on: the component
    (`partitioner`/`executor`, with its `name`) or the kind's schema (`input_schema`,
    `output_schema`); `field` is the input or output field concerned."""

    blame: str
    name: str
    field: str
    code: str
    message: str


def declared(schema: Any) -> bool:
    """Whether `schema` says anything about its fields (the default `{"type": "object"}`
    does not)."""
    return isinstance(schema, Mapping) and ("properties" in schema or "required" in schema)


def _required(schema: Mapping[str, Any]) -> list[str]:
    req = schema.get("required")
    return [r for r in req if isinstance(r, str)] if isinstance(req, list) else []


def _prop(schema: Mapping[str, Any], field: str) -> Mapping[str, Any]:
    props = schema.get("properties")
    prop = props.get(field) if isinstance(props, Mapping) else None
    return prop if isinstance(prop, Mapping) else {}


def _types(prop: Mapping[str, Any]) -> set[str] | None:
    typ = prop.get("type")
    if isinstance(typ, str):
        return {typ}
    if isinstance(typ, list) and all(isinstance(t, str) for t in typ):
        return set(typ)
    return _ANY


def _fits(given: set[str] | None, accepted: set[str] | None) -> bool:
    """Every type `given` may take is one `accepted` takes (an integer is a number)."""
    if given is _ANY or accepted is _ANY:
        return True
    return all(t in accepted or (t == "integer" and "number" in accepted) for t in given)


def _values(prop: Mapping[str, Any]) -> list[Any] | None:
    if "const" in prop:
        return [prop["const"]]
    enum = prop.get("enum")
    return list(enum) if isinstance(enum, list) else None


def _show(types: set[str] | None) -> str:
    return " or ".join(sorted(types)) if types else "any"


def pair_findings(
    kind: str,
    input_schema: Mapping[str, Any],
    output_schema: Mapping[str, Any],
    partitioner: type[Partitioner] | None,
    executor: type[Executor] | None,
) -> list[Finding]:
    """The incompatibilities of one partitioner and one executor under a kind's schemas
    (either component may be None: only its side is checked)."""
    found: list[Finding] = []
    if partitioner is not None:
        found += _partitioner_findings(kind, input_schema, partitioner)
    if executor is not None:
        if partitioner is not None:
            found += _executor_input_findings(kind, input_schema, partitioner, executor)
        found += _executor_output_findings(kind, output_schema, executor)
    return found


def _partitioner_findings(
    kind: str, input_schema: Mapping[str, Any], partitioner: type[Partitioner]
) -> list[Finding]:
    schema = partitioner.get_inputs_schema(kind)
    if not declared(schema):
        return []
    name = partitioner.name
    produced = set(_required(schema))
    found = []
    for field in _required(input_schema):
        if field not in produced:
            found.append(
                Finding(
                    "partitioner",
                    name,
                    field,
                    codes.INPUT_NOT_PRODUCED,
                    f"partitioner {name!r} does not produce input {field!r}, which the "
                    f"input schema requires (it produces: {', '.join(sorted(produced))})",
                )
            )
            continue
        given, wanted = _types(_prop(schema, field)), _types(_prop(input_schema, field))
        if not _fits(given, wanted):
            found.append(
                Finding(
                    "partitioner",
                    name,
                    field,
                    codes.INPUT_TYPE_MISMATCH,
                    f"partitioner {name!r} produces input {field!r} as {_show(given)}; the "
                    f"input schema wants {_show(wanted)}",
                )
            )
    if input_schema.get("additionalProperties") is False:
        allowed = input_schema.get("properties") or {}
        for field in sorted(set(schema.get("properties") or {}) | produced):
            if field not in allowed:
                found.append(
                    Finding(
                        "partitioner",
                        name,
                        field,
                        codes.INPUT_NOT_ALLOWED,
                        f"partitioner {name!r} produces input {field!r}, which the input "
                        "schema does not allow (additionalProperties is false)",
                    )
                )
    return found


def _executor_input_findings(
    kind: str,
    input_schema: Mapping[str, Any],
    partitioner: type[Partitioner],
    executor: type[Executor],
) -> list[Finding]:
    reads = executor.inputs_schema
    if not declared(reads) or not declared(partitioner.get_inputs_schema(kind)):
        return []  # either side undeclared: trusted
    typed_by = partitioner.get_inputs_schema(kind)
    produced = set(_required(typed_by))
    found = []
    for field in _required(reads):
        if field not in produced:
            found.append(
                Finding(
                    "executor",
                    executor.name,
                    field,
                    codes.EXECUTOR_INPUT_MISSING,
                    f"executor {executor.name!r} reads input {field!r}, which partitioner "
                    f"{partitioner.name!r} does not produce",
                )
            )
            continue
        given, wanted = _types(_prop(typed_by, field)), _types(_prop(reads, field))
        if not _fits(given, wanted):
            found.append(
                Finding(
                    "executor",
                    executor.name,
                    field,
                    codes.INPUT_TYPE_MISMATCH,
                    f"executor {executor.name!r} reads input {field!r} as {_show(wanted)}; "
                    f"partitioner {partitioner.name!r} produces {_show(given)}",
                )
            )
    return found


def _executor_output_findings(
    kind: str, output_schema: Mapping[str, Any], executor: type[Executor]
) -> list[Finding]:
    name = executor.name
    returns = executor.get_output_schema(kind)
    if returns is None:
        return [
            Finding(
                "executor",
                name,
                "",
                codes.EXECUTOR_UNSUPPORTED_KIND,
                f"executor {name!r} cannot serve job kind {kind!r}",
            )
        ]
    if not declared(returns):
        return []
    produced = set(_required(returns))
    found = []
    for field in _required(output_schema):
        if field not in produced:
            found.append(
                Finding(
                    "executor",
                    name,
                    field,
                    codes.OUTPUT_NOT_PRODUCED,
                    f"executor {name!r} does not return output {field!r}, which the output "
                    f"schema requires (it returns: {', '.join(sorted(produced))})",
                )
            )
            continue
        have, want = _prop(returns, field), _prop(output_schema, field)
        given, wanted = _types(have), _types(want)
        if not _fits(given, wanted):
            found.append(
                Finding(
                    "executor",
                    name,
                    field,
                    codes.OUTPUT_TYPE_MISMATCH,
                    f"executor {name!r} returns output {field!r} as {_show(given)}; the "
                    f"output schema wants {_show(wanted)}",
                )
            )
            continue
        values, allowed = _values(have), _values(want)
        if values is not None and allowed is not None and any(v not in allowed for v in values):
            found.append(
                Finding(
                    "executor",
                    name,
                    field,
                    codes.OUTPUT_TYPE_MISMATCH,
                    f"executor {name!r} returns output {field!r} = "
                    f"{' or '.join(map(repr, values))}; the output schema allows only "
                    f"{' or '.join(map(repr, allowed))}",
                )
            )
    return found


def _schema_path(schema_field: str, schema: Mapping[str, Any], field: str) -> str:
    required = _required(schema)
    if field in required:
        return f"{schema_field}.required[{required.index(field)}]"
    return f"{schema_field}.properties.{field}" if field else schema_field


def kind_issues(data: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """`(path, code, message)` for every incompatibility of a job kind as it would be saved.

    `data` holds `kind`, `partitioners`, `executors`, `input_schema` and `output_schema`, with
    registered names and valid schemas (the caller checked those). Each finding is placed on
    the component (`partitioners[i]`, `executors[j]`), unless every allowed component shares
    it: then the kind's schema is the odd one out and the finding goes to the field of the
    schema (`input_schema.required[k]`, `output_schema.properties.f`), once.
    """
    kind = str(data.get("kind") or "")
    input_schema = data.get("input_schema") or {}
    output_schema = data.get("output_schema") or {}
    partitioners: Sequence[str] = data.get("partitioners") or []
    executors: Sequence[str] = data.get("executors") or []
    p_classes = [PARTITIONERS[n] for n in partitioners if n in PARTITIONERS]
    e_classes = [EXECUTORS[n] for n in executors if n in EXECUTORS]
    findings: list[Finding] = []
    for p in p_classes:
        findings += _partitioner_findings(kind, input_schema, p)
        for e in e_classes:
            findings += _executor_input_findings(kind, input_schema, p, e)
    for e in e_classes:
        findings += _executor_output_findings(kind, output_schema, e)
    return _placed(findings, partitioners, executors, input_schema, output_schema)


def _placed(
    findings: Iterable[Finding],
    partitioners: Sequence[str],
    executors: Sequence[str],
    input_schema: Mapping[str, Any],
    output_schema: Mapping[str, Any],
) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    seen: set[tuple[str, str]] = set()
    findings = list(findings)
    by_field: dict[tuple[str, str, str], set[str]] = {}
    for f in findings:
        by_field.setdefault((f.blame, f.code, f.field), set()).add(f.name)
    for f in findings:
        names = partitioners if f.blame == "partitioner" else executors
        registered = {
            n for n in names if n in (PARTITIONERS if f.blame == "partitioner" else EXECUTORS)
        }
        everyone = bool(registered) and by_field[(f.blame, f.code, f.field)] >= registered
        schema_side = f.code in (codes.INPUT_NOT_PRODUCED, codes.INPUT_TYPE_MISMATCH) or (
            f.code in (codes.OUTPUT_NOT_PRODUCED, codes.OUTPUT_TYPE_MISMATCH)
        )
        if everyone and schema_side and f.field:
            if f.code.startswith("input"):
                path = _schema_path("input_schema", input_schema, f.field)
            else:
                path = _schema_path("output_schema", output_schema, f.field)
            if (path, f.code) in seen:
                continue
            seen.add((path, f.code))
            what = "partitioner" if f.blame == "partitioner" else "executor"
            message = (
                f"no allowed {what} ({', '.join(names)}) provides {f.field!r} as this "
                f"schema requires; e.g. {f.message}"
            )
            out.append((path, f.code, message))
        else:
            index = list(names).index(f.name)
            out.append((f"{f.blame}s[{index}]", f.code, f.message))
    return out


def stage_issues(
    kind: Any, partitioner: str | None, executor: str | None
) -> list[tuple[str, str, str]]:
    """`(field, code, message)` for a stage's partitioner and executor under its kind (a
    JobKind or anything with `kind`, `input_schema`, `output_schema`); `field` is
    `partitioner` or `executor`. Names not registered are skipped (the validator reports
    them)."""
    p = PARTITIONERS.get(partitioner) if isinstance(partitioner, str) else None
    e = EXECUTORS.get(executor) if isinstance(executor, str) else None
    found = pair_findings(kind.kind, kind.input_schema or {}, kind.output_schema or {}, p, e)
    return [(f.blame, f.code, f.message) for f in found]


def registry_problems() -> list[str]:
    """Every job kind in the database that cannot run, one line per problem
    (`"deploy.pack: partitioners[2]: ..."`): components no longer registered, and the
    incompatibilities of `kind_issues`. Empty when the registry is sound."""
    from blueprints_app.models import JobKind

    lines = []
    for row in JobKind.objects.order_by("kind"):
        for field, registry in (("partitioners", PARTITIONERS), ("executors", EXECUTORS)):
            for i, name in enumerate(getattr(row, field) or []):
                if name not in registry:
                    lines.append(f"{row.kind}: {field}[{i}]: {name!r} is not registered")
        data = {
            "kind": row.kind,
            # As stored, so paths index the stored lists; unregistered names are skipped by
            # kind_issues (reported above).
            "partitioners": list(row.partitioners or []),
            "executors": list(row.executors or []),
            "input_schema": row.input_schema if isinstance(row.input_schema, dict) else {},
            "output_schema": row.output_schema if isinstance(row.output_schema, dict) else {},
        }
        lines += [f"{row.kind}: {path}: {message}" for path, _code, message in kind_issues(data)]
    return lines

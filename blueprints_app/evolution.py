"""Migrating plan documents from the kind versions they pin to the current ones.

A migration is a list of steps that take a stage written for version N of a kind to version
N + 1, or away to another kind (the replacement of a deprecated one). Steps are data, so a
registry admin can declare them on a version in the admin or the API and they travel with
`hxo_registry export`:

    {"op": "rename_partitioner", "from": "by_size", "to": "by_filesize"}
    {"op": "rename_executor", "from": "pack", "to": "pack_backend"}
    {"op": "rename_param", "from": "chunk_mb", "to": "chunk_size_mb"}
    {"op": "set_param", "name": "root", "value": "docs"}        (only where it is missing)
    {"op": "remove_param", "name": "legacy"}
    {"op": "map_param", "name": "bucket", "values": {"img": "images"}}
    {"op": "transform_param", "name": "chunk_size_mb", "function": "kib_to_mib"}
    {"op": "move_to_kind", "kind": "docs.index", "partitioners": {...}, "executors": {...}}
    {"op": "call", "function": "split_root"}

Any step may add `"partitioner": name` or `"executor": name` to apply only to stages using
it. Code can declare the same steps with `register_migration` (a plugin renaming its own
components ships its migration with them), and name small functions for `transform_param`
(`value -> value`) and `call` (`stage -> stage`) with `register_transform` and
`register_stage_function`. For one version, code steps run before data steps.

A deprecated kind with `replaced_by` and no declared way out migrates by moving its stages to
the replacement as they are; the result is validated like any other, so a move that needs more
(another partitioner) is reported rather than written. Nothing here writes: `migrate_document`
returns the new document and what changed; `runs_app.services.plan_migrate` stores it as a new
revision.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from blueprints_app.models import JobKind, JobKindVersion
from blueprints_app.validation import Issue, ValidationResult, load_kinds, validate_plan
from hxo_site import codes

Stage = dict[str, Any]
Transform = Callable[[Any], Any]
StageFunction = Callable[[Stage], Stage]

TRANSFORMS: dict[str, Transform] = {}
STAGE_FUNCTIONS: dict[str, StageFunction] = {}
# (kind, from_version) → steps, declared in code.
CODE_MIGRATIONS: dict[tuple[str, int], list[dict[str, Any]]] = {}

# A chain of moves between kinds longer than this is a loop in the declarations.
MAX_HOPS = 100


def register_transform(name: str) -> Callable[[Transform], Transform]:
    def decorate(fn: Transform) -> Transform:
        TRANSFORMS[name] = fn
        return fn

    return decorate


def register_stage_function(name: str) -> Callable[[StageFunction], StageFunction]:
    def decorate(fn: StageFunction) -> StageFunction:
        STAGE_FUNCTIONS[name] = fn
        return fn

    return decorate


def register_migration(kind: str, from_version: int, steps: list[dict[str, Any]]) -> None:
    """Declare in code how a stage of `kind` at `from_version` moves on. Checked at once, so a
    malformed declaration fails at import rather than halfway through migrating plans."""
    problems = check_steps(steps, kind=kind, path=f"{kind} v{from_version}", check_kinds=False)
    if problems:
        raise ValueError("; ".join(f"{p.path}: {p.message}" for p in problems))
    CODE_MIGRATIONS[(kind, from_version)] = copy.deepcopy(steps)


# --- Checking declared steps --------------------------------------------------------------

_STRING = (str,)
# op → (required string fields, optional fields)
OPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "rename_partitioner": (("from", "to"), ()),
    "rename_executor": (("from", "to"), ()),
    "rename_param": (("from", "to"), ()),
    "set_param": (("name",), ("value",)),
    "remove_param": (("name",), ()),
    "map_param": (("name",), ("values",)),
    "transform_param": (("name", "function"), ()),
    "move_to_kind": (("kind",), ("version", "partitioners", "executors")),
    "call": (("function",), ()),
}
FILTERS = ("partitioner", "executor")


def check_steps(
    steps: Any, *, kind: str = "", path: str = "migration", check_kinds: bool = True
) -> list[Issue]:
    """Structural problems of a step list, as validator issues (code `invalid_migration`)."""
    bad = codes.INVALID_MIGRATION
    if not isinstance(steps, list):
        return [Issue(path, bad, "a migration is a list of steps")]
    problems: list[Issue] = []
    for i, step in enumerate(steps):
        at = f"{path}[{i}]"
        if not isinstance(step, dict):
            problems.append(Issue(at, bad, "a step is a JSON object with an 'op'"))
            continue
        op = step.get("op")
        if op not in OPS:
            problems.append(
                Issue(f"{at}.op", bad, f"unknown op {op!r}; one of: {', '.join(sorted(OPS))}")
            )
            continue
        required, optional = OPS[op]
        for field in sorted(set(step) - {"op", *required, *optional, *FILTERS}):
            problems.append(Issue(f"{at}.{field}", bad, f"{op} has no field {field!r}"))
        for field in (*required, *FILTERS):
            value = step.get(field)
            if field in required and value is None:
                problems.append(Issue(f"{at}.{field}", bad, f"{op} needs {field!r}"))
            elif value is not None and (not isinstance(value, str) or not value):
                problems.append(Issue(f"{at}.{field}", bad, f"{field} must be a non-empty string"))
        if op == "set_param" and "value" not in step:
            problems.append(Issue(f"{at}.value", bad, "set_param needs a 'value'"))
        if op == "map_param" and not isinstance(step.get("values"), dict):
            problems.append(Issue(f"{at}.values", bad, "map_param needs 'values': {old: new}"))
        if op == "transform_param" and step.get("function") not in TRANSFORMS:
            problems.append(
                Issue(f"{at}.function", bad, f"no transform {step.get('function')!r} registered")
            )
        if op == "call" and step.get("function") not in STAGE_FUNCTIONS:
            problems.append(
                Issue(
                    f"{at}.function",
                    bad,
                    f"no stage function {step.get('function')!r} registered",
                )
            )
        if op == "move_to_kind":
            for field in ("partitioners", "executors"):
                mapping = step.get(field, {})
                if not isinstance(mapping, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
                ):
                    problems.append(Issue(f"{at}.{field}", bad, f"{field} maps names to names"))
            version = step.get("version")
            if version is not None and (
                not isinstance(version, int) or isinstance(version, bool) or version < 1
            ):
                problems.append(Issue(f"{at}.version", bad, "version is a number >= 1"))
            target = step.get("kind")
            if target == kind and kind:
                problems.append(Issue(f"{at}.kind", bad, "a kind cannot move to itself"))
            elif (
                check_kinds
                and isinstance(target, str)
                and not JobKind.objects.filter(kind=target).exists()
            ):
                problems.append(Issue(f"{at}.kind", bad, f"{target!r} is not a job kind"))
    return problems


# --- Applying steps -------------------------------------------------------------------------


@dataclasses.dataclass
class Change:
    """One thing a migration did to one stage; `as_dict` is what reports and the API show."""

    stage: str
    op: str
    message: str
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "op": self.op, "message": self.message, **self.detail}


def _matches(step: Mapping[str, Any], stage: Stage) -> bool:
    return all(step.get(f) is None or stage.get(f) == step[f] for f in FILTERS)


def _rename(stage: Stage, field: str, step: Mapping[str, Any], sid: str) -> list[Change]:
    if stage.get(field) != step["from"]:
        return []
    stage[field] = step["to"]
    return [
        Change(
            sid,
            f"rename_{field}",
            f"{field} {step['from']} → {step['to']}",
            {"from": step["from"], "to": step["to"]},
        )
    ]


def apply_step(step: Mapping[str, Any], stage: Stage) -> list[Change]:
    """Apply one step to `stage` in place; what it changed (nothing when it does not apply)."""
    if not _matches(step, stage):
        return []
    op = step["op"]
    sid = str(stage.get("id", ""))
    params = stage.setdefault("params", {})
    if op == "rename_partitioner":
        return _rename(stage, "partitioner", step, sid)
    if op == "rename_executor":
        return _rename(stage, "executor", step, sid)
    if op == "rename_param":
        old, new = step["from"], step["to"]
        if old not in params or new in params:
            return []
        params[new] = params.pop(old)
        return [Change(sid, op, f"param {old} → {new}", {"from": old, "to": new})]
    if op == "set_param":
        if step["name"] in params:
            return []
        params[step["name"]] = copy.deepcopy(step["value"])
        return [
            Change(
                sid, op, f"param {step['name']} set to {step['value']!r}", {"name": step["name"]}
            )
        ]
    if op == "remove_param":
        if step["name"] not in params:
            return []
        params.pop(step["name"])
        return [Change(sid, op, f"param {step['name']} removed", {"name": step["name"]})]
    if op in ("map_param", "transform_param"):
        name = step["name"]
        if name not in params:
            return []
        old = params[name]
        if op == "map_param":
            values = step["values"]
            if not isinstance(old, str | int | float | bool) or str(old) not in values:
                return []
            new = values[str(old)]
        else:
            new = TRANSFORMS[step["function"]](copy.deepcopy(old))
        if new == old:
            return []
        params[name] = new
        return [
            Change(
                sid, op, f"param {name}: {old!r} → {new!r}", {"name": name, "from": old, "to": new}
            )
        ]
    if op == "call":
        before = copy.deepcopy(stage)
        after = STAGE_FUNCTIONS[step["function"]](copy.deepcopy(stage))
        if after == before:
            return []
        stage.clear()
        stage.update(after)
        return [Change(sid, op, f"rewritten by {step['function']}", {"function": step["function"]})]
    if op == "move_to_kind":
        old_kind = stage.get("kind")
        stage["kind"] = step["kind"]
        changes = [
            Change(
                sid,
                op,
                f"moved from {old_kind} to {step['kind']}",
                {"from": old_kind, "to": step["kind"]},
            )
        ]
        for field, mapping_name in (("partitioner", "partitioners"), ("executor", "executors")):
            mapping = step.get(mapping_name) or {}
            if stage.get(field) in mapping:
                changes += _rename(
                    stage, field, {"from": stage[field], "to": mapping[stage[field]]}, sid
                )
        return changes
    raise ValueError(f"unknown migration op {op!r}")  # check_steps keeps this unreachable


# --- Migrating documents ----------------------------------------------------------------------


@dataclasses.dataclass
class DocumentMigration:
    """What migrating one plan document would do. `changed` is False when it is up to date."""

    document: dict[str, Any]
    kind_versions: dict[str, int]
    pinned: dict[str, int]
    changes: list[Change]
    result: ValidationResult

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    @property
    def valid(self) -> bool:
        return self.result.valid


def declared_steps(
    kind: str, version: int, data_steps: Mapping[tuple[str, int], list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    return [*CODE_MIGRATIONS.get((kind, version), []), *data_steps.get((kind, version), [])]


def data_steps() -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Steps declared on versions in the registry (a few rows: the registry is small)."""
    rows = JobKindVersion.objects.values_list("kind", "version", "migration")
    return {(k, v): list(m) for k, v, m in rows if isinstance(m, list) and m}


def migrate_stage(
    stage: Stage,
    version: int,
    kinds: Mapping[str, JobKind],
    data_steps: Mapping[tuple[str, int], list[dict[str, Any]]],
) -> tuple[list[Change], list[Issue]]:
    """Walk `stage` (in place) from `version` of its kind to the current version, following
    moves to other kinds. At the current version only a declared move (or the implicit move
    of a deprecated kind to its replacement) applies: other steps there wait for the version
    they lead to."""
    changes: list[Change] = []
    seen: set[tuple[str, int]] = set()
    sid = str(stage.get("id", ""))
    for _ in range(MAX_HOPS):
        name = stage.get("kind")
        kind = kinds.get(name) if isinstance(name, str) else None
        if kind is None:
            return changes, []  # the validator reports unknown kinds
        if (kind.kind, version) in seen:
            return changes, [
                Issue(sid, codes.MIGRATION_FAILED, f"migrations of {kind.kind} loop at v{version}")
            ]
        seen.add((kind.kind, version))
        steps = declared_steps(kind.kind, version, data_steps)
        at_current = version >= kind.version
        if at_current:
            if not any(s["op"] == "move_to_kind" and _matches(s, stage) for s in steps):
                steps = (
                    [{"op": "move_to_kind", "kind": kind.replaced_by}]
                    if kind.deprecated and kind.replaced_by and kind.replaced_by in kinds
                    else []
                )
            if not steps:
                return changes, []
        moved_to: dict[str, Any] | None = None
        for step in steps:
            done = apply_step(step, stage)
            changes += done
            if step["op"] == "move_to_kind" and done:
                moved_to = step
                break  # the rest of the list was for a stage of the old kind
        if moved_to is not None:
            target = kinds.get(moved_to["kind"])
            version = moved_to.get("version") or (target.version if target else 1)
            continue
        version += 1
    return changes, [Issue(sid, codes.MIGRATION_FAILED, "too many migration steps")]


def migrate_document(
    document: Mapping[str, Any],
    pinned: Mapping[str, Any] | None,
    *,
    kinds: Mapping[str, JobKind] | None = None,
) -> DocumentMigration:
    """`document` (pinned to `pinned`, a revision's kind_versions) brought to the current
    versions, validated against them. A kind missing from `pinned` counts as current."""
    kinds = kinds if kinds is not None else load_kinds()
    new = copy.deepcopy(dict(document))
    stages = new.get("stages") if isinstance(new.get("stages"), list) else []
    pins = {k: v for k, v in (pinned or {}).items() if isinstance(v, int)}
    declared = data_steps()
    before = {s.get("kind") for s in document.get("stages") or [] if isinstance(s, dict)}
    changes: list[Change] = []
    problems: list[Issue] = []
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict) or not isinstance(stage.get("kind"), str):
            continue
        current = kinds.get(stage["kind"])
        if current is None:
            continue
        version = pins.get(stage["kind"], current.version)
        done, issues = migrate_stage(stage, version, kinds, declared)
        changes += done
        problems += [Issue(f"stages[{i}]", p.code, p.message) for p in issues]
    used = sorted({s["kind"] for s in stages if isinstance(s, dict) and s.get("kind") in kinds})
    versions = {name: kinds[name].version for name in used}
    for name in sorted(set(pins) & set(versions)):
        old = pins[name]
        if old != versions[name]:
            changes.append(
                Change(
                    "",
                    "version",
                    f"{name} v{old} → v{kinds[name].version}",
                    {"kind": name, "from": old, "to": kinds[name].version},
                )
            )
    result = validate_plan(new)
    result.errors = [*problems, *result.errors]
    return DocumentMigration(
        document=new,
        kind_versions=versions,
        pinned={k: v for k, v in pins.items() if k in before},
        changes=changes,
        result=result,
    )

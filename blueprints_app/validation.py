"""The one validator of the blueprint contract.

Used by the admin (job kinds), the API (stages, plans, job kinds), the plan editor's forms and
live validation. It never writes. Every finding is an `Issue(path, code, message)`; errors make
a document invalid, warnings (deprecations) don't.
"""

from __future__ import annotations

import dataclasses
import functools
import graphlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import jsonschema
from django.conf import settings
from django.utils import timezone

from blueprints_app import compat
from blueprints_app.constraints import constraint_issues
from blueprints_app.models import JobKind
from blueprints_app.registry import EXECUTORS, PARTITIONERS
from blueprints_app.versions import component_lifecycle, kinds_at
from hxo_site import codes
from hxo_site.capabilities import has_capability

STAGE_FIELDS = {
    "id",
    "kind",
    "partitioner",
    "executor",
    "params",
    "depends_on",
    "slo_ms",
    "non_idempotent",
    "max_failed_partitions",
}
PLAN_FIELDS = {"name", "description", "stages"}
STAGE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
KIND_RE = STAGE_ID_RE
MAX_NAME_LENGTH = 200
MAX_DEPTH = 32

# The widest integer the database holds (a BIGINT column; SQLite's INTEGER). Every integer of
# every params schema declares a `minimum` and a `maximum` within it (tests walk them all).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# The stage's own integer fields, as JSON Schema: their columns (RunStage.slo_ms,
# .max_failed_partitions) are PositiveIntegerField, a 32-bit integer on PostgreSQL.
INT32_MAX = 2**31 - 1
STAGE_INTEGERS: dict[str, dict[str, Any]] = {
    "slo_ms": {"type": "integer", "minimum": 1, "maximum": INT32_MAX},
    "max_failed_partitions": {"type": "integer", "minimum": 0, "maximum": INT32_MAX},
}


def _article(word: str) -> str:
    """ "a" or "an" before `word`, by its first letter ("an executor", "a kind")."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def python_values(value: Any) -> Any:
    """`value` (parsed JSON) with every integral float made an `int`, recursively.

    JSON has one number type: JSON Schema's `integer` accepts `1.0` (draft 2020-12, §6.1.1),
    so a validated document may hold `1.0` where the code does `range(...)` or writes an
    integer column (a TypeError, an OverflowError, a 500). Stored plan documents and the
    params a partitioner resolves both go through here, so code past validation only ever
    sees ints where the schema says integer. Non-integral floats, inf and NaN stay floats
    (the schema refuses them where an integer is required).
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: python_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [python_values(v) for v in value]
    return value


def _hostile(value: Any, path: str, depth: int = 0) -> Issue | None:
    """The first NUL character or over-deep nesting in a document (PostgreSQL cannot store a
    NUL in text or JSON, and nobody writes plans 32 levels deep)."""
    if depth > MAX_DEPTH:
        return Issue(path, codes.INVALID_VALUE, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            return Issue(path, codes.INVALID_VALUE, "text must not contain NUL characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and "\x00" in key:
                return Issue(path, codes.INVALID_VALUE, "keys must not contain NUL characters")
            found = _hostile(item, sub, depth + 1)
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _hostile(item, f"{path}[{i}]", depth + 1)
            if found:
                return found
    return None


@dataclasses.dataclass(frozen=True)
class Issue:
    path: str
    code: str
    message: str
    # Structured facts of a warning (a SQL lint finding: rule, severity, lock, safer form);
    # added to the JSON beside path, code and message, never replacing them.
    detail: Mapping[str, Any] | None = dataclasses.field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "code": self.code, "message": self.message}
        if self.detail:
            out.update({k: v for k, v in self.detail.items() if k not in out})
        return out


@dataclasses.dataclass
class ValidationResult:
    errors: list[Issue] = dataclasses.field(default_factory=list)
    warnings: list[Issue] = dataclasses.field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors

    def error(self, path: str, code: str, message: str) -> None:
        self.errors.append(Issue(path, code, message))

    def warn(self, path: str, code: str, message: str) -> None:
        self.warnings.append(Issue(path, code, message))

    def extend(self, other: ValidationResult) -> None:
        self.errors.extend(other.errors)
        self.warnings.extend(other.warnings)

    def as_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "errors": [i.as_dict() for i in self.errors],
            "warnings": [i.as_dict() for i in self.warnings],
        }

    def errors_at(self, path: str) -> list[Issue]:
        return [i for i in self.errors if i.path == path or i.path.startswith(path + ".")]


def _json_path(prefix: str, parts: Iterable[Any]) -> str:
    path = prefix
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


@functools.lru_cache(maxsize=256)
def _compiled(schema_json: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def schema_validator(schema: Mapping[str, Any]) -> jsonschema.protocols.Validator:
    """A compiled validator, cached by the schema's canonical text (live validation is hot)."""
    return _compiled(_canonical(schema))


def schema_errors(schema: Mapping[str, Any], instance: Any, prefix: str) -> list[Issue]:
    """Instance errors against a JSON Schema, as issues with field paths under `prefix`.

    Memoised on the canonical JSON of both (`_instance_errors`): validating is a pure
    function of the two, the same params are checked up to three times per stage (the
    plan's shape, then the partitioner's own checks, which resolve the params again), and
    live validation re-validates every unchanged stage of a plan on each edit. An instance
    that is not JSON (a direct Python caller's) is validated without the memo."""
    schema_json = _canonical(schema)
    try:
        instance_json = _canonical(instance)  # jsonschema's messages sort the keys they name
    except (TypeError, ValueError):
        raw = _errors_of(_compiled(schema_json), instance)
    else:
        raw = _instance_errors(schema_json, instance_json)
    return [Issue(_json_path(prefix, parts), "", message) for parts, message in raw]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# Distinct (schema, instance) pairs remembered; an entry is a few hundred bytes.
SCHEMA_ERRORS_MEMO = 4096


@functools.lru_cache(maxsize=SCHEMA_ERRORS_MEMO)
def _instance_errors(
    schema_json: str, instance_json: str
) -> tuple[tuple[tuple[Any, ...], str], ...]:
    return _errors_of(_compiled(schema_json), json.loads(instance_json))


def _errors_of(
    validator: jsonschema.protocols.Validator, instance: Any
) -> tuple[tuple[tuple[Any, ...], str], ...]:
    """(absolute path parts, message) of each error, in path order."""
    found = []
    for err in sorted(validator.iter_errors(instance), key=lambda e: list(e.path)):
        parts = tuple(err.absolute_path)
        message = err.message
        if err.validator == "required":
            missing = err.message.split("'")[1] if "'" in err.message else ""
            if missing:
                parts = (*parts, missing)
        elif err.validator in ("oneOf", "anyOf"):
            message = _alternatives_message(err)
        found.append((parts, message))
    return tuple(found)


def _alternatives_message(err: jsonschema.ValidationError) -> str:
    """ "give exactly one of: statements, backfill" rather than jsonschema's echo of the
    whole instance, when the alternatives are just different required fields."""
    options = err.validator_value if isinstance(err.validator_value, list) else []
    names = [
        o["required"][0]
        for o in options
        if isinstance(o, dict) and list(o) == ["required"] and len(o["required"]) == 1
    ]
    if names and len(names) == len(options):
        how = "exactly one" if err.validator == "oneOf" else "at least one"
        return f"give {how} of: {', '.join(names)}"
    return "does not match any of the allowed forms"


def check_schema(schema: Any) -> str | None:
    """None when `schema` is a usable JSON Schema object, else why not."""
    if not isinstance(schema, dict):
        return "a JSON Schema must be an object"
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return f"not a valid JSON Schema: {exc.message}"
    return None


def load_kinds() -> dict[str, JobKind]:
    return JobKind.objects.in_bulk(field_name="kind")


def _deprecation(result: ValidationResult, path: str, kind: JobKind) -> None:
    """The kind's lifecycle, then the pinned version's (when a revision pins an older one)."""
    now = timezone.now()
    replacement = f"; use {kind.replaced_by}" if kind.replaced_by else ""
    if kind.sunset_at is not None and kind.sunset_at <= now:
        result.error(
            path,
            codes.KIND_SUNSET,
            f"job kind {kind.kind!r} was sunset on {kind.sunset_at:%Y-%m-%d}{replacement}",
        )
        return
    if kind.deprecated or kind.sunset_at is not None:
        # A sunset date is a deprecation with a deadline, flagged or not.
        when = f" and will be sunset on {kind.sunset_at:%Y-%m-%d}" if kind.sunset_at else ""
        result.warn(
            path, codes.KIND_DEPRECATED, f"job kind {kind.kind!r} is deprecated{when}{replacement}"
        )
    current = kind.current_version
    if current is None or kind.version >= current:
        return
    migrate = "migrate the plan (manage.py hxo_migrate_plans, or save it again)"
    sunset_at = kind.version_sunset_at
    if sunset_at is not None and sunset_at <= now:
        result.error(
            path,
            codes.KIND_SUNSET,
            f"version {kind.version} of {kind.kind!r} was sunset on {sunset_at:%Y-%m-%d} "
            f"(current: {current}); {migrate}",
        )
    else:
        until = f"; it will be sunset on {sunset_at:%Y-%m-%d}" if sunset_at else ""
        result.warn(
            path,
            codes.KIND_VERSION_OUTDATED,
            f"written against version {kind.version} of {kind.kind!r} (current: {current})"
            f"{until}; {migrate}",
        )


def _component_lifecycle(result: ValidationResult, path: str, what: str, cls: type) -> None:
    life = component_lifecycle(cls)
    if not life.announced:
        return
    replacement = f"; use {life.replaced_by}" if life.replaced_by else ""
    if life.sunset:
        assert life.sunset_at is not None
        result.error(
            path,
            codes.COMPONENT_SUNSET,
            f"{what} {cls.name!r} was sunset on {life.sunset_at:%Y-%m-%d}{replacement}",
        )
    else:
        when = f" and will be sunset on {life.sunset_at:%Y-%m-%d}" if life.sunset_at else ""
        result.warn(
            path,
            codes.COMPONENT_DEPRECATED,
            f"{what} {cls.name!r} is deprecated{when}{replacement}",
        )


def _is_int(value: Any) -> bool:
    """An integer as JSON Schema counts one: an int, or an integral float (`1.0`)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def validate_stage(
    stage: Any,
    *,
    user: Any = None,
    kinds: Mapping[str, JobKind] | None = None,
    path: str = "stage",
    scanned: bool = False,
    memo: dict[Any, Any] | None = None,
) -> ValidationResult:
    """The contract's four stage rules, the params schema and the safety rules for one stage.

    `user` is whoever would submit: when given, a non-idempotent stage without their
    `hxo:force-merge` is an error. `kinds` lets a plan load the registry once; `scanned` says
    the plan around it was already checked for NUL characters and nesting; `memo` (a dict the
    caller keeps for one pass over `kinds`) remembers what the registry says of each (kind,
    partitioner, executor), which every stage of that pair shares.
    """
    result = ValidationResult()
    if not isinstance(stage, dict):
        result.error(path, codes.INVALID_TYPE, "a stage must be a JSON object")
        return result
    hostile = None if scanned else _hostile(stage, path)
    if hostile:
        result.errors.append(hostile)
        return result
    if kinds is None:
        kinds = load_kinds()

    for field in sorted(set(stage) - STAGE_FIELDS):
        result.error(f"{path}.{field}", codes.UNKNOWN_FIELD, f"unknown stage field {field!r}")

    stage_id = stage.get("id")
    if stage_id is None:
        result.error(f"{path}.id", codes.REQUIRED, "a stage needs an id")
    elif not isinstance(stage_id, str) or not STAGE_ID_RE.fullmatch(stage_id):
        result.error(
            f"{path}.id",
            codes.INVALID_VALUE,
            "a stage id is 1-100 letters, digits, '_', '.' or '-', starting with a letter or digit",
        )

    for field in ("kind", "partitioner", "executor"):
        value = stage.get(field)
        if value is None:
            result.error(
                f"{path}.{field}", codes.REQUIRED, f"a stage needs {_article(field)} {field}"
            )
        elif not isinstance(value, str):
            result.error(f"{path}.{field}", codes.INVALID_TYPE, f"{field} must be a string")

    kind_name, partitioner, executor = (stage.get(f) for f in ("kind", "partitioner", "executor"))
    kind = kinds.get(kind_name) if isinstance(kind_name, str) else None

    # Rule 1: the job kind exists.
    if isinstance(kind_name, str) and kind is None:
        result.error(
            f"{path}.kind", codes.UNKNOWN_KIND, f"{kind_name!r} is not a registered job kind"
        )
    if kind is not None:
        _deprecation(result, f"{path}.kind", kind)

    # Rule 2: the partitioner is registered and allowed for the kind.
    if isinstance(partitioner, str):
        if partitioner not in PARTITIONERS:
            result.error(
                f"{path}.partitioner",
                codes.UNKNOWN_PARTITIONER,
                f"{partitioner!r} is not a registered partitioner",
            )
        elif kind is not None and partitioner not in kind.partitioners:
            result.error(
                f"{path}.partitioner",
                codes.PARTITIONER_NOT_ALLOWED,
                f"partitioner {partitioner!r} is not allowed for {kind.kind}; "
                f"allowed: {', '.join(kind.partitioners)}",
            )
        else:
            _component_lifecycle(
                result, f"{path}.partitioner", "partitioner", PARTITIONERS[partitioner]
            )

    # Rule 3: the executor is registered and allowed for the kind.
    if isinstance(executor, str):
        if executor not in EXECUTORS:
            result.error(
                f"{path}.executor",
                codes.UNKNOWN_EXECUTOR,
                f"{executor!r} is not a registered executor",
            )
        elif kind is not None and executor not in kind.executors:
            result.error(
                f"{path}.executor",
                codes.EXECUTOR_NOT_ALLOWED,
                f"executor {executor!r} is not allowed for {kind.kind}; "
                f"allowed: {', '.join(kind.executors)}",
            )
        else:
            _component_lifecycle(result, f"{path}.executor", "executor", EXECUTORS[executor])

    # What the kind needs of its components (blueprints_app.compat): a stage that names a
    # partitioner or executor that cannot serve the kind would fail at its dry-run.
    if kind is not None and not result.errors_at(f"{path}.partitioner") + result.errors_at(
        f"{path}.executor"
    ):
        # A registry-level fact: the same for every stage of the plan with this kind and pair.
        key = (id(kind), partitioner, executor)
        issues = None if memo is None else memo.get(key)
        if issues is None:
            issues = compat.stage_issues(kind, partitioner, executor)
            if memo is not None:
                memo[key] = issues
        for field, code, message in issues:
            result.error(f"{path}.{field}", code, message)

    # Params against the partitioner's declared schema.
    params = stage.get("params", {})
    if not isinstance(params, dict):
        result.error(f"{path}.params", codes.INVALID_TYPE, "params must be a JSON object")
    elif isinstance(partitioner, str) and partitioner in PARTITIONERS:
        schema = PARTITIONERS[partitioner].get_params_schema()
        shape = schema_errors(schema, params, f"{path}.params")
        for issue in shape:
            result.error(issue.path, codes.INVALID_PARAMS, issue.message)
        if not shape:
            # What only the component can judge (e.g. by_sql_batch's SQL policy).
            refused = PARTITIONERS[partitioner].validate_params(params)
            for err in refused:
                where = f"{path}.{err.path}" if err.path else f"{path}.params"
                (result.warn if err.warning else result.error)(where, err.code, err.message)
            # Its warnings (by_sql_batch: the SQL lint) only for SQL the policy accepts.
            errors = [err for err in refused if not err.warning]
            for err in [] if errors else PARTITIONERS[partitioner].params_warnings(params):
                where = f"{path}.{err.path}" if err.path else f"{path}.params"
                result.warnings.append(Issue(where, err.code, err.message, err.detail))

    # Rule 4: the safety policy.
    non_idempotent = stage.get("non_idempotent", False)
    if not isinstance(non_idempotent, bool):
        result.error(
            f"{path}.non_idempotent", codes.INVALID_TYPE, "non_idempotent is true or false"
        )
        non_idempotent = False
    if non_idempotent and kind is not None and not kind.allow_non_idempotent:
        result.error(
            f"{path}.non_idempotent",
            codes.NON_IDEMPOTENT_FORBIDDEN,
            f"{kind.kind} does not allow non-idempotent stages",
        )
    elif non_idempotent and user is not None and not has_capability(user, "force-merge"):
        result.error(
            f"{path}.non_idempotent",
            codes.FORCE_MERGE_REQUIRED,
            "a non-idempotent stage needs the hxo:force-merge capability",
        )
    if (
        not non_idempotent
        and isinstance(params, dict)
        and isinstance(partitioner, str)
        and partitioner in PARTITIONERS
        and not schema_errors(PARTITIONERS[partitioner].get_params_schema(), params, "")
    ):
        # Work the partitioner says cannot be repeated safely makes the stage non-idempotent.
        for err in PARTITIONERS[partitioner].non_idempotent_reasons(params):
            where = f"{path}.{err.path}" if err.path else f"{path}.params"
            result.error(where, codes.NON_IDEMPOTENT_UNDECLARED, err.message)
    if (
        isinstance(executor, str)
        and executor in EXECUTORS
        and not EXECUTORS[executor].idempotent
        and not non_idempotent
    ):
        result.error(
            f"{path}.non_idempotent",
            codes.NON_IDEMPOTENT_UNDECLARED,
            f"executor {executor!r} is not idempotent: the stage must set non_idempotent: true",
        )

    for field, bounds in STAGE_INTEGERS.items():
        if field in stage and stage[field] is not None:
            value = stage[field]
            if not _is_int(value):
                result.error(f"{path}.{field}", codes.INVALID_TYPE, f"{field} must be an integer")
            elif not bounds["minimum"] <= value <= bounds["maximum"]:
                result.error(
                    f"{path}.{field}",
                    codes.INVALID_VALUE,
                    f"{field} must be between {bounds['minimum']} and {bounds['maximum']}",
                )

    depends_on = stage.get("depends_on", [])
    if not isinstance(depends_on, list) or not all(isinstance(d, str) for d in depends_on):
        result.error(
            f"{path}.depends_on", codes.INVALID_TYPE, "depends_on must be a list of stage ids"
        )
    return result


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle as a list of stage ids (first and last the same), or None.

    `graph` maps a stage id to the ids it depends on. graphlib finds the cycle by a
    depth-first walk from each node in insertion order along its successors, so each stage
    is given its dependencies as successors (the edges reversed from a run's order): the
    cycle is reported from the first stage of the plan on it, along `depends_on`
    ("a → b → a": a depends on b, which depends on a).
    """
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for sid in graph:
        sorter.add(sid)
    for sid, deps in graph.items():
        for dep in deps:
            sorter.add(dep, sid)
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def validate_plan(
    plan: Any, *, user: Any = None, pinned_versions: Mapping[str, Any] | None = None
) -> ValidationResult:
    """A whole plan document `{"name", "description"?, "stages": [...]}`.

    `pinned_versions` ({kind: version}, a stored revision's `kind_versions`) validates the
    document against the versions it was written for rather than the current ones, while
    those are not sunset (blueprints_app.versions). Documents being written have no pins.
    """
    result = ValidationResult()
    if not isinstance(plan, dict):
        result.error("plan", codes.INVALID_TYPE, "a plan must be a JSON object")
        return result
    hostile = _hostile(plan, "")
    if hostile:
        result.errors.append(hostile)
        return result
    for field in sorted(set(plan) - PLAN_FIELDS):
        result.error(field, codes.UNKNOWN_FIELD, f"unknown plan field {field!r}")

    name = plan.get("name")
    if name is None:
        result.error("name", codes.REQUIRED, "a plan needs a name")
    elif not isinstance(name, str) or not name.strip():
        result.error("name", codes.INVALID_VALUE, "the name must be a non-empty string")
    elif len(name) > MAX_NAME_LENGTH or "\x00" in name:
        result.error(
            "name", codes.INVALID_VALUE, f"the name must be at most {MAX_NAME_LENGTH} characters"
        )
    description = plan.get("description", "")
    if not isinstance(description, str) or "\x00" in description:
        result.error("description", codes.INVALID_TYPE, "the description must be a string")

    stages = plan.get("stages")
    if stages is None:
        result.error("stages", codes.REQUIRED, "a plan needs a list of stages")
        return result
    if not isinstance(stages, list):
        result.error("stages", codes.INVALID_TYPE, "stages must be a list")
        return result
    if not stages:
        result.error("stages", codes.EMPTY_PLAN, "a plan needs at least one stage")
        return result
    limit = settings.HXO_MAX_STAGES
    if len(stages) > limit:
        result.error(
            "stages", codes.TOO_MANY_STAGES, f"{len(stages)} stages; at most {limit} are allowed"
        )
        return result

    kinds = kinds_at(pinned_versions, load_kinds()) if pinned_versions else load_kinds()
    memo: dict[Any, Any] = {}
    seen: dict[str, int] = {}
    graph: dict[str, list[str]] = {}
    for i, stage in enumerate(stages):
        path = f"stages[{i}]"
        result.extend(
            validate_stage(stage, user=user, kinds=kinds, path=path, scanned=True, memo=memo)
        )
        if not isinstance(stage, dict) or not isinstance(stage.get("id"), str):
            continue
        sid = stage["id"]
        if sid in seen:
            result.error(
                f"{path}.id",
                codes.DUPLICATE_STAGE_ID,
                f"stage id {sid!r} is already used by stages[{seen[sid]}]",
            )
            continue
        seen[sid] = i
        deps = stage.get("depends_on", [])
        graph[sid] = [d for d in deps if isinstance(d, str)] if isinstance(deps, list) else []

    for sid, deps in graph.items():
        i = seen[sid]
        for j, dep in enumerate(deps):
            if dep not in seen:
                result.error(
                    f"stages[{i}].depends_on[{j}]",
                    codes.UNKNOWN_DEPENDENCY,
                    f"{dep!r} is not a stage of this plan",
                )
            elif dep == sid:
                result.error(
                    f"stages[{i}].depends_on[{j}]",
                    codes.DEPENDENCY_CYCLE,
                    f"stage {sid!r} depends on itself",
                )
    graph = {sid: [d for d in deps if d in seen and d != sid] for sid, deps in graph.items()}
    cycle = _find_cycle(graph)
    if cycle:
        result.error(
            f"stages[{seen[cycle[0]]}].depends_on",
            codes.DEPENDENCY_CYCLE,
            "dependency cycle: " + " → ".join(cycle),
        )
    return result


def validate_job_kind(data: Mapping[str, Any]) -> ValidationResult:
    """A registry entry as the admin or the API would save it."""
    result = ValidationResult()
    kind = data.get("kind")
    if not isinstance(kind, str) or not KIND_RE.fullmatch(kind):
        # The name is a URL segment (/api/v1/job-kinds/deploy.pack/): no slashes or spaces.
        result.error(
            "kind",
            codes.INVALID_VALUE,
            "a job kind is 1-100 letters, digits, '_', '.' or '-', starting with a letter or digit",
        )
    for field, registry, code in (
        ("partitioners", PARTITIONERS, codes.UNKNOWN_PARTITIONER),
        ("executors", EXECUTORS, codes.UNKNOWN_EXECUTOR),
    ):
        names = data.get(field)
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            result.error(field, codes.INVALID_TYPE, f"{field} must be a non-empty list of names")
            continue
        for i, name in enumerate(names):
            if name not in registry:
                known = ", ".join(sorted(registry))
                result.error(
                    f"{field}[{i}]", code, f"{name!r} is not registered (registered: {known})"
                )
        if len(set(names)) != len(names):
            result.error(field, codes.INVALID_VALUE, f"{field} lists a name twice")
    for field in ("input_schema", "output_schema"):
        problem = check_schema(data.get(field))
        if problem:
            result.error(field, codes.INVALID_SCHEMA, problem)
    if not result.errors:
        # Only a kind whose names and schemas are sound can be compared with its components.
        for path, code, message in compat.kind_issues(data):
            result.error(path, code, message)
    for path, code, message in constraint_issues(JobKind, data):
        result.error(path, code, message)
    replaced_by = data.get("replaced_by") or ""
    if replaced_by:
        if replaced_by == data.get("kind"):
            result.error("replaced_by", codes.INVALID_VALUE, "a kind cannot replace itself")
        elif not JobKind.objects.filter(kind=replaced_by).exists():
            result.error(
                "replaced_by", codes.UNKNOWN_REPLACEMENT, f"{replaced_by!r} is not a job kind"
            )
    return result

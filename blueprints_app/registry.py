"""The code registry: partitioners and executors by their contract name.

A class registers itself with `@register_partitioner` or `@register_executor`; model choices,
admin checks, API listings and the validator all read these two mappings, so adding a component
is one decorated class (the contract's "Adding New Job Kinds").

Implementations live in `runs_app.kinds` (one module per family of job kinds) and in plugins.
The registry imports neither: when the apps are ready, `RunsConfig.ready` imports the built-in
kinds and then calls `autodiscover()` for the plugins, so that a plugin comes after the
built-in components it reuses or replaces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from django.template.defaultfilters import filesizeformat

if TYPE_CHECKING:
    from blueprints_app.models import JobKind


class ComponentError(Exception):
    """A partitioner or executor refused its work; `code` is a stable error code.

    `permanent`: trying again cannot help (the SQL does not parse, a column is missing, the
    inputs are invalid, a file is not a regular file): the engine fails the partition at once
    instead of retrying it. False (the default) means transient or unknown, retried with
    backoff while attempts are left, as any other exception (see docs/exactly-once.md).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "component_error",
        path: str = "",
        permanent: bool = False,
        detail: dict[str, Any] | None = None,
        warning: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.path = path
        self.permanent = permanent
        # Structured facts beside the message (a lint finding's rule, severity, lock...),
        # carried into a validation issue's JSON.
        self.detail = detail
        # From `Partitioner.validate_params` only: a finding that does not make the stage
        # invalid (a directory that does not exist yet), reported as a validation warning.
        self.warning = warning


@dataclasses.dataclass
class PartitionSpec:
    """One partition as a partitioner resolves it.

    `inputs` must validate against the kind's input schema. `fingerprints` name the content the
    partition reads (path → sha256, table → checksum...): they go into the content id and the run
    digest, so a changed file makes an approved dry-run stale. `wave` orders partitions within
    a stage: wave N starts when every partition of the waves before it succeeded (by_dag_depth
    uses the depth in the import graph, leaves first).
    """

    inputs: dict[str, Any]
    fingerprints: dict[str, str] = dataclasses.field(default_factory=dict)
    wave: int = 0
    weight: int = 0  # bytes or rows, for the review page's sizes
    label: str = ""  # a short human description ("backend/api: 12 files")


@dataclasses.dataclass
class PartitionContext:
    """What a partitioner sees: the stage as written in the plan and its kind."""

    stage: dict[str, Any]
    kind: JobKind

    @property
    def params(self) -> dict[str, Any]:
        return self.stage.get("params") or {}


# Manifest data keys left out of the run digest and of manifest diffs (StageManifest).
FILE_STATS = "file_stats"
UNPINNED_DATA = frozenset({FILE_STATS})


@dataclasses.dataclass
class StageManifest:
    """A partitioner's result: the partitions and stage-level data pinned for execution.

    `data` is stored with the run's stage and enters the run digest, except the keys in
    UNPINNED_DATA: hints an executor may use to save work (the stat tokens of
    `runs_app.kinds.files.pin`), which depend on the host and the moment, not on what the
    run does. An executor must stay correct whatever such a key holds.
    """

    partitions: list[PartitionSpec]
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ExecutionContext:
    """What an executor sees for one partition.

    `heartbeat()` extends the lease and raises `LeaseLost` when another worker took the
    partition over; long executors call it between units of work. It answers from what the
    heartbeat thread last saw, so it is cheap and may be up to a lease interval late.

    `check_fence()` asks HXO's database itself (a fresh compare-and-swap on the partition's
    id, fence, state and owner that also extends the lease) and raises `LeaseLost` unless
    this worker still holds the partition. An executor with an effect outside HXO's
    database calls it immediately before it commits that effect: a worker that lost its
    lease then commits nothing (docs/exactly-once.md).

    `stop_with(cancel)` registers `cancel(reason)`, called once from the heartbeat's thread
    when the partition must stop while the executor waits (the run aborted, the lease lost,
    the partition's time budget spent), so a statement in flight on a target is cancelled at
    once instead of at its next heartbeat; `stop_with(None)` unregisters it. An executor
    then calls `heartbeat()`, which raises the reason (RunAborted, LeaseLost, PartitionTimeout).
    """

    run_id: int
    partition_id: int
    stage: dict[str, Any]
    kind: JobKind
    inputs: dict[str, Any]
    fingerprints: dict[str, str]
    manifest: dict[str, Any]
    plan_digest: str
    dry_run: bool
    attempt: int
    fence: int
    heartbeat: Callable[[], None] = lambda: None
    check_fence: Callable[[], None] = lambda: None
    stop_with: Callable[[Callable[[str], None] | None], None] = lambda cancel: None
    # The stages this one depends on, directly or through others, in the order they run:
    # each its stage document (`id`, `kind`, `executor`, `params`, ...) with its pinned
    # `manifest`. Loaded on call (one query per drainer); a dry-run that must see what the
    # stages before it would have done (deploy.migrate on the same target) replays them.
    upstream: Callable[[], list[dict[str, Any]]] = lambda: []
    # For `Executor.effect_exists`: False (a reuse check, the receipt's default) lets a check
    # trust what was recorded at write time while the file's stat identity is unchanged;
    # True (the receipt's `?thorough=1`) asks it to hash every byte again.
    thorough: bool = False
    # Called by an executor whose gate (`Throttled`) let this partition through: the engine
    # ends the stage's wait, if it was waiting, with its audit event and a log line.
    throttle_passed: Callable[[], None] = lambda: None

    @property
    def params(self) -> dict[str, Any]:
        return self.stage.get("params") or {}


class LeaseLost(Exception):
    """Raised by heartbeat(): this worker no longer holds the partition; stop, write nothing."""


class Throttled(Exception):
    """Raised by an executor BEFORE it has had any effect, when its target is not healthy
    enough for more work now (e.g. `runs_app.kinds.dbhealth`: long transactions, lock waits,
    replication lag). Not a failure: the engine puts the partition back to pending without
    spending an attempt, holds the stage's other pending partitions until `retry_after_ms`
    from now, and shows `reason` on the stage until a partition passes the gate again
    (`ExecutionContext.throttle_passed`). `detail` is JSON kept with the stage's wait."""

    def __init__(self, reason: str, *, retry_after_ms: int, detail: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_ms = max(1, int(retry_after_ms))
        self.detail = detail


# What a component declares about the data it hands on, as JSON Schema: the default says
# nothing (no `properties`), and the registry's compatibility check
# (`blueprints_app.compat`) then trusts the component instead of refusing it.
UNDECLARED: dict[str, Any] = {"type": "object"}


def fields_schema(
    required: dict[str, Any], optional: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A component's declaration as JSON Schema: an object with the `required` fields and the
    `optional` ones, each given as a JSON type name (`"integer"`) or a property schema
    (`{"const": "packed", "type": "string"}`). Extra fields are allowed."""

    def prop(value: Any) -> dict[str, Any]:
        return {"type": value} if isinstance(value, str) else dict(value)

    fields = {**required, **(optional or {})}
    return {
        "type": "object",
        "properties": {name: prop(v) for name, v in fields.items()},
        "required": list(required),
    }


class Partitioner:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    params_schema: ClassVar[dict[str, Any]] = {"type": "object"}
    # The inputs of every partition it yields: `required` lists the fields each partition
    # always carries, `properties.*.type` their JSON types (blueprints_app.compat).
    inputs_schema: ClassVar[dict[str, Any]] = UNDECLARED
    # Lifecycle (blueprints_app.versions.component_lifecycle): deprecated or with a future
    # sunset, stages using it validate with a warning; from `sunset_at` on (a date, an aware
    # datetime or an ISO string) they are refused. `replaced_by` names the successor.
    deprecated: ClassVar[bool] = False
    sunset_at: ClassVar[Any] = None
    replaced_by: ClassVar[str] = ""

    @classmethod
    def get_params_schema(cls) -> dict[str, Any]:
        """The params schema; override when it depends on settings (workspace names...)."""
        return cls.params_schema

    @classmethod
    def get_inputs_schema(cls, kind: str) -> dict[str, Any]:
        """The inputs schema of the partitions it yields for job kind `kind`; override when
        they depend on the kind."""
        return cls.inputs_schema

    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> list[ComponentError]:
        """Errors in `params` that a JSON Schema cannot express (the SQL a stage would run,
        read by the target's parser...), as ComponentErrors with paths under `params.`;
        one made with `warning=True` is reported as a warning instead of an error.

        The validator calls it once `params` passed the schema, so every way a plan is
        checked (API validate, plan save, the editor's live validation) sees them; a
        partitioner should still refuse the same things when it partitions.
        """
        return []

    @classmethod
    def params_warnings(cls, params: dict[str, Any]) -> list[ComponentError]:
        """Risks in valid `params` worth a warning but not a refusal (by_sql_batch: the SQL
        lint findings of warning and high severity), as ComponentErrors with paths under
        `params.` and their facts in `detail`. Called once `params` passed the schema and
        `validate_params`; every way a plan is checked shows them. The default finds none."""
        return []

    @classmethod
    def non_idempotent_reasons(cls, params: dict[str, Any]) -> list[ComponentError]:
        """Work in `params` that cannot be made safe to run twice (by_sql_batch: a statement
        that must run outside a transaction and is not `IF NOT EXISTS`-safe), as
        ComponentErrors with paths under `params.`. The validator requires such a stage to
        declare `non_idempotent: true`, and so hxo:force-merge (the contract's rule 4).
        Called once `params` passed the schema; the default finds none."""
        return []

    @classmethod
    def describe_weight(cls, weight: int, params: Mapping[str, Any] | None = None) -> str:
        """A stage's or partition's `weight` (PartitionSpec.weight) as the run page shows
        it; `params`: the stage's params when known, for a partitioner whose unit depends on
        them (by_sql_batch: statements or a backfill's rows). The default reads it as bytes
        ("1.2 MB"); a partitioner that weighs something else (rows, items) overrides this."""
        return filesizeformat(weight)

    def partition(self, ctx: PartitionContext) -> StageManifest:
        raise ComponentError(
            f"partitioner {self.name!r} is registered but has no implementation",
            code="not_implemented",
            permanent=True,
        )


class Executor:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    idempotent: ClassVar[bool] = True
    supports_dry_run: ClassVar[bool] = True
    # Lifecycle, as for partitioners.
    deprecated: ClassVar[bool] = False
    sunset_at: ClassVar[Any] = None
    replaced_by: ClassVar[str] = ""
    # The partition inputs it reads (`required`: it refuses a partition without them) and
    # the output an apply returns (`required`: always present), as JSON Schema
    # (blueprints_app.compat).
    inputs_schema: ClassVar[dict[str, Any]] = UNDECLARED
    output_schema: ClassVar[dict[str, Any]] = UNDECLARED

    @classmethod
    def get_output_schema(cls, kind: str) -> dict[str, Any] | None:
        """The output of an apply for job kind `kind`, or None when the executor cannot
        serve that kind at all; override when the output depends on the kind."""
        return cls.output_schema

    def execute(self, ctx: ExecutionContext) -> dict[str, Any]:
        """Do the work (ctx.dry_run False) or report what it would do (True) with no effect."""
        raise ComponentError(
            f"executor {self.name!r} is registered but has no implementation",
            code="not_implemented",
            permanent=True,
        )

    def effect_exists(self, ctx: ExecutionContext, output: dict[str, Any]) -> bool:
        """Whether the effect an earlier apply recorded as `output` still exists, as it says.

        The engine asks this before it reuses an earlier partition with the same content id
        (docs/exactly-once.md, §2: reuse only after the executor confirms that the earlier
        effect still exists). `ctx` is the context the partition would execute with (its
        stage, inputs, fingerprints and pinned manifest; `dry_run` is False); `output` is the
        earlier partition's stored output, which carries the effect's identity (where it was
        written and its digest). Return True only when every part of that effect is present
        and matches it: an archive with its hash, index rows with their content hashes, a
        ledger row in the target. Anything missing or different is False, and the partition
        runs again (idempotent executors make that harmless).

        Read only: never write, never repair. Called by a worker holding the partition's
        lease (never inside a web request), so it may read files and databases, but it
        should cost less than executing. An exception counts as False. The run's receipt
        asks it too (on demand, for every partition of an apply), so a check that trusts a
        file recorded at write time does so only while its stat identity is unchanged, and
        hashes everything when `ctx.thorough` is True.

        The default is False: an executor that cannot tell is never reused, which is always
        safe (a plugin only loses the shortcut).
        """
        return False

    def applied_output(self, ctx: ExecutionContext) -> dict[str, Any] | None:
        """The output of this partition's effect when its target already records it as
        applied (a worker that committed and died before its outcome was written), else None.

        The engine asks before it would record the partition as failed (lease expired with
        no retry left, or a last attempt that raised): a recorded effect makes it succeed
        instead. Default: None (nothing is known), so the partition fails as before.
        """
        return None

    def cleanup_stale(self) -> int:
        """Remove temporary files left by dead attempts; returns how many were removed."""
        return 0


PARTITIONERS: dict[str, type[Partitioner]] = {}
EXECUTORS: dict[str, type[Executor]] = {}

P = TypeVar("P", bound=type[Partitioner])
E = TypeVar("E", bound=type[Executor])


def register_partitioner(cls: P) -> P:
    PARTITIONERS[cls.name] = cls
    return cls


def register_executor(cls: E) -> E:
    EXECUTORS[cls.name] = cls
    return cls


def get_partitioner(name: str) -> Partitioner:
    return PARTITIONERS[name]()


def get_executor(name: str) -> Executor:
    return EXECUTORS[name]()


def describe_weight(partitioner: str, weight: Any, params: Mapping[str, Any] | None = None) -> str:
    """`weight` (a stage's or partition's PartitionSpec.weight) in the unit of `partitioner`
    (`Partitioner.describe_weight`), e.g. "1.2 MB", "6 statements", "20,000 rows"; a plain
    number when no partitioner is named. A partitioner no longer registered (a plugin
    removed) keeps the default reading, bytes."""
    if not partitioner:
        return f"{int(weight or 0):,}"
    return PARTITIONERS.get(partitioner, Partitioner).describe_weight(weight, params)


def partitioner_choices() -> list[tuple[str, str]]:
    return [(name, name) for name in sorted(PARTITIONERS)]


def executor_choices() -> list[tuple[str, str]]:
    return [(name, name) for name in sorted(EXECUTORS)]


PLUGIN_GROUP = "hxo.plugins"
# Plugins loaded so far, by where they came from ("entry point linkcheck", "HXO_PLUGINS").
PLUGINS: dict[str, str] = {}


class PluginError(Exception):
    """A plugin named by an entry point or HXO_PLUGINS could not be loaded."""


def load_plugin(target: str, *, origin: str) -> None:
    """Import `module` or `module:callable`; a callable is called once with no arguments.

    Importing is what registers: a plugin module decorates its classes with
    `register_partitioner` / `register_executor` like the built-in ones do.
    """
    import importlib

    if target in PLUGINS:
        return
    module_name, _, attr = target.partition(":")
    try:
        loaded: Any = importlib.import_module(module_name.strip())
        for part in filter(None, attr.strip().split(".")):
            loaded = getattr(loaded, part)
        if attr and callable(loaded):
            loaded()
    except Exception as exc:  # a plugin may fail any way; name it so the fix is obvious
        raise PluginError(f"HXO plugin {target!r} ({origin}) failed to load: {exc}") from exc
    PLUGINS[target] = origin


def plugin_entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return sorted(entry_points(group=PLUGIN_GROUP), key=lambda ep: ep.name)


def autodiscover() -> None:
    """Import the plugins: installed packages declaring an entry point in the `hxo.plugins`
    group, and the modules named in settings.HXO_PLUGINS. Called by `RunsConfig.ready` once
    the built-in components are registered (the registry itself never imports `runs_app`).

    A plugin that fails to import stops HXO at start-up with ImproperlyConfigured: running
    with half a registry would refuse plans with misleading `unknown_partitioner` errors.
    """
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        for ep in plugin_entry_points():
            load_plugin(ep.value, origin=f"entry point {ep.name!r}")
        for module in getattr(settings, "HXO_PLUGINS", []):
            load_plugin(module, origin="HXO_PLUGINS")
    except PluginError as exc:
        raise ImproperlyConfigured(str(exc)) from exc

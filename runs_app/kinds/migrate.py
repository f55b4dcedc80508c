"""deploy.migrate: the `by_sql_batch` partitioner and the `sql_migrate` executor.

Two forms of stage params:

- `statements`: a list of SQL statements split into batches of `batch_size`, applied in order
  (one wave per batch, since a later statement may need an earlier one's table);
- `backfill`: one parametrised DML statement using `:start` and `:end` (end exclusive:
  `key >= :start AND key < :end`) or `:start` and `:last` (end inclusive: `key <= :last`, the
  form that reaches a 64-bit key's largest value), run over the key range of
  `table.key_column` split into `offset/limit` batches (`:start = key_min + offset`). The key
  range is read from the target when the stage is partitioned and pinned in the manifest;
  values are always bound, never formatted into SQL, the table and key column must exist in
  the target's catalogue, and the key column must be a 64-bit-or-smaller integer type.

The ledger lives in the target, next to the effects it records, and is written in the same
transaction as the batch (docs/exactly-once.md):

- `hxo_ledger_batches`: one row per statement batch applied, keyed by (target identity,
  SHA-256 of the batch's exact SQL text and bound parameters). Plan name, description,
  revision, digest and batch number never enter the key, so an edited description or a
  re-planned stage does not apply a batch again, and the same batch on another target does.
- `hxo_ledger_intervals`: per (target identity, SHA-256 of the backfill's SQL template), the
  key intervals `[key_first, key_last]` (inclusive, disjoint) already applied. A backfill
  batch applies only the parts of its range not yet covered, so a new `batch_size` or a key
  range that moved never applies a key twice nor skips one. `hxo_ledger_backfills` holds one
  row per template: batches of one template lock it (`SELECT ... FOR UPDATE` on PostgreSQL;
  SQLite's single writer does the same), so the read of the intervals and the batch are one
  critical section.

The target's identity is part of every key by where the ledger lives: each target's tables
are in that target, so a lookup only ever sees what was applied to these very rows. The
identity HXO resolved (`Target.identity`) is recorded in each row's `target` column but is
not matched on: two spellings of one database (`localhost` and `127.0.0.1`, two target names,
a file moved or restored elsewhere) would otherwise look like two targets and apply a batch
twice to the same rows.

Every ledger row carries the run, partition and fence that wrote it. Before COMMIT the
executor re-checks its fence against HXO's database (`ctx.check_fence()`, a fresh query), and
on PostgreSQL the transaction runs with `idle_in_transaction_session_timeout` below the lease,
so a paused worker's transaction is ended by the server before another worker can take the
partition over. The version-1 table `hxo_ledger` (keyed by plan digest and batch number) is no
longer written; its rows are still honoured when one records exactly the batch at hand (same
SQL text and bound values).

A dry-run reads the same ledger with the same keys, runs only what the apply would run in a
transaction that is rolled back, and creates nothing (not even the ledger tables).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import math
import sqlite3
from collections.abc import Iterator, Mapping
from typing import Any

from django.conf import settings

from blueprints_app.registry import (
    ComponentError,
    ExecutionContext,
    Executor,
    PartitionContext,
    Partitioner,
    PartitionSpec,
    StageManifest,
    fields_schema,
    register_executor,
    register_partitioner,
)
from hxo_site import codes
from runs_app import sqllint
from runs_app.kinds import adaptive, dbhealth
from runs_app.kinds import samples as samples_of
from runs_app.kinds.base import (
    plural,
    require_input,
    require_manifest,
    required_unless_default,
    resolve_params,
)
from runs_app.kinds.base import target_param as _target_param
from runs_app.kinds.files import Beat
from runs_app.sqlpolicy import (
    BACKFILL_NOT_CONFINED,
    BACKFILLS_TABLE,
    BATCHES_TABLE,
    INTERVALS_TABLE,
    INVALID_SQL,
    LEDGER_TABLE,
    OutsideTransaction,
    analyse,
    calls_sequence_functions,
    item_errors,
    outside_transaction,
    pg_dml_verb,
    statement_error,
)
from runs_app.targets import (
    CANCELLED,
    POSTGRESQL,
    SQLITE,
    TargetConnection,
    classify_db_error,
    connect,
    get_target,
    quote_identifier,
)

UNKNOWN_TABLE = "unknown_table"
UNKNOWN_COLUMN = "unknown_column"
UNSUPPORTED_KEY = "unsupported_key"
KEY_OUT_OF_RANGE = "key_out_of_range"
DUPLICATE_BATCH = "duplicate_batch"
SQL_ERROR = "sql_error"
STATEMENT_TIMEOUT = "statement_timeout"
LOCK_TIMEOUT = "lock_timeout"
# A dry-run batch ran longer than HXO_DRY_RUN_BATCH_TIMEOUT_MS in all; cancelled, rolled back.
BATCH_TIMEOUT = "batch_timeout"

# The ledger's table names live in runs_app.sqlpolicy (the policy refuses plan SQL naming
# them); LEDGER_TABLE is version 1 (plan digest, stage, batch number), read, never written.
LEDGER_TABLES = (BATCHES_TABLE, BACKFILLS_TABLE, INTERVALS_TABLE)
IDENTIFIER = {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,62}$"}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# PostgreSQL's integer types (pg_type.typname of the column's type, or a domain's base type).
PG_INTEGER_TYPES = {"int2", "int4", "int8"}

LEDGER_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {BATCHES_TABLE} (
    target VARCHAR(1000) NOT NULL,
    batch_sha256 VARCHAR(64) NOT NULL,
    statements INTEGER NOT NULL,
    rows_affected BIGINT NOT NULL,
    run_id BIGINT NOT NULL,
    partition_id BIGINT NOT NULL,
    fence BIGINT NOT NULL,
    applied_at VARCHAR(40) NOT NULL,
    PRIMARY KEY (batch_sha256)
)""",
    f"""CREATE TABLE IF NOT EXISTS {BACKFILLS_TABLE} (
    target VARCHAR(1000) NOT NULL,
    template_sha256 VARCHAR(64) NOT NULL,
    template TEXT NOT NULL,
    created_at VARCHAR(40) NOT NULL,
    PRIMARY KEY (template_sha256)
)""",
    f"""CREATE TABLE IF NOT EXISTS {INTERVALS_TABLE} (
    target VARCHAR(1000) NOT NULL,
    template_sha256 VARCHAR(64) NOT NULL,
    key_first BIGINT NOT NULL,
    key_last BIGINT NOT NULL,
    rows_affected BIGINT NOT NULL,
    run_id BIGINT NOT NULL,
    partition_id BIGINT NOT NULL,
    fence BIGINT NOT NULL,
    applied_at VARCHAR(40) NOT NULL,
    PRIMARY KEY (template_sha256, key_first),
    CHECK (key_first <= key_last)
)""",
)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@register_partitioner
class BySqlBatch(Partitioner):
    name = "by_sql_batch"
    inputs_schema = fields_schema(
        {"batch_id": "integer", "offset": "integer", "limit": "integer", "stage_kind": "string"},
        {"key_start": "integer", "key_end": "integer", "key_last": "integer"},
    )
    description = (
        "SQL batches on a registered database target: a statement list split into batches, "
        "or one parametrised backfill over a key range split into offset/limit batches."
    )

    @classmethod
    def get_params_schema(cls) -> dict[str, Any]:
        return {
            "type": "object",
            "additionalProperties": False,
            "required": required_unless_default("target"),
            "oneOf": [{"required": ["statements"]}, {"required": ["backfill"]}],
            "properties": {
                "target": _target_param(),
                "statements": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 10_000,
                    "items": {"type": "string", "minLength": 1, "maxLength": 100_000},
                    "title": "Statements",
                    "description": "SQL statements, one per item, applied in order.",
                    "x-hxo-widget": "sql-list",
                },
                "batch_size": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 10_000,
                    "default": 1,
                    "title": "Statements per batch",
                    "description": "Statements applied together in one transaction.",
                },
                "backfill": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["sql", "table", "key_column"],
                    "title": "Backfill",
                    "description": "One DML statement run over a key range in batches.",
                    "properties": {
                        "sql": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 100_000,
                            "title": "Statement",
                            "description": "UPDATE/DELETE/INSERT using :start and :end "
                            "(key_column >= :start AND key_column < :end), or :start and "
                            ":last (key_column <= :last, inclusive).",
                            "x-hxo-widget": "sql",
                        },
                        "table": {**IDENTIFIER, "title": "Table"},
                        "key_column": {**IDENTIFIER, "title": "Integer key column"},
                        "batch_size": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 10_000_000,
                            "default": 1000,
                            "title": "Keys per batch",
                        },
                        # Optional adaptive sub-batches inside each batch (kinds.adaptive).
                        **adaptive.PARAMS,
                    },
                },
                "statement_timeout_ms": {
                    "type": "integer",
                    "minimum": 100,
                    "maximum": 3_600_000,
                    "default": 30_000,
                    "title": "Statement timeout (ms)",
                },
                "lock_timeout_ms": {
                    "type": "integer",
                    "minimum": 10,
                    "maximum": 600_000,
                    "default": 5_000,
                    "title": "Lock timeout (ms)",
                },
                "health": dbhealth.HEALTH_SCHEMA,
            },
        }

    @classmethod
    def describe_weight(cls, weight: int, params: Mapping[str, Any] | None = None) -> str:
        """Weights are a backfill's keys (rows) or, for statement batches, statements (issue
        15: a 6-statement migration read "6 rows"); a plain number when `params` is unknown."""
        n = int(weight or 0)
        if params is None:
            return f"{n:,}"
        unit = "row" if params.get("backfill") else "statement"
        return f"{n:,} {unit}" if n == 1 else f"{n:,} {unit}s"

    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> list[ComponentError]:
        """The SQL policy (runs_app.sqlpolicy) for every statement, read by the parser of the
        target's vendor: forbidden statements, one statement per item, parameters; a
        backfill's adaptive sub-batch bounds (`adaptive.params_errors`)."""
        bounds = adaptive.params_errors(params)
        try:
            target = get_target(resolve_params(cls, params)["target"])
        except ComponentError:
            return bounds  # an unknown target is already a schema error (the enum)
        return _sql_errors(params, target.vendor) + dbhealth.stage_problems(params, target) + bounds

    @classmethod
    def params_warnings(cls, params: dict[str, Any]) -> list[ComponentError]:
        """The SQL lint (runs_app.sqllint) of every statement, warning and high severity,
        read by the parser of the target's vendor; info findings (lock levels) are for the
        review page only, so the editor's warnings stay worth reading."""
        try:
            target = get_target(resolve_params(cls, params)["target"])
        except ComponentError:
            return []
        return [
            ComponentError(f.sentence(), code=sqllint.SQL_FINDING, path=f.path, detail=f.as_dict())
            for f in sqllint.lint_params(params, target.vendor, min_severity=sqllint.WARNING)
        ]

    def partition(self, ctx: PartitionContext) -> StageManifest:
        params = resolve_params(type(self), ctx.params)
        target = get_target(params["target"])
        kind = ctx.kind.kind
        data: dict[str, Any] = {
            "partitioner": self.name,
            "target": target.name,
            "vendor": target.vendor,
            "statement_timeout_ms": params["statement_timeout_ms"],
            "lock_timeout_ms": params["lock_timeout_ms"],
        }
        if "statements" in params:
            return self._statements(params, kind, data, ctx, target)
        return self._backfill(params, kind, data, target)

    @classmethod
    def non_idempotent_reasons(cls, params: dict[str, Any]) -> list[ComponentError]:
        """Statements that run outside a transaction and are not safe to run twice (`CREATE
        INDEX CONCURRENTLY` without `IF NOT EXISTS`, ...): their effect cannot commit with
        its ledger row, so a crash between the two would run them again. The stage must
        declare `non_idempotent: true` (and so needs hxo:force-merge). `ALTER TYPE ... ADD
        VALUE` depends on the server's version and is judged when the stage is partitioned."""
        try:
            target = get_target(resolve_params(cls, params)["target"])
        except ComponentError:
            return []
        return [
            _undeclared(i, found)
            for i, found in enumerate(_outside(params.get("statements", []), target.vendor))
            if found is not None and not found.idempotent
        ]

    def _statements(
        self, params: dict[str, Any], kind: str, data: dict, ctx: PartitionContext, target: Any
    ) -> StageManifest:
        statements = params["statements"]
        # The validator refused these already; checked again for a plan saved before the
        # policy, or partitioned without the validator.
        for error in _sql_errors(params, data["vendor"])[:1]:
            raise error
        size = params["batch_size"]
        outside = _outside(statements, target.vendor)
        if any(found is not None and found.types for found in outside):
            # ALTER TYPE ... ADD VALUE runs in a transaction from PostgreSQL 12 on: ask.
            with connect(target, lock_timeout_ms=params["lock_timeout_ms"]) as conn:
                version = conn.server_version
            data["server_version"] = version
            outside = _outside(statements, target.vendor, server_version=version)
        if not ctx.stage.get("non_idempotent"):
            for i, found in enumerate(outside):
                if found is not None and not found.idempotent:
                    raise _undeclared(i, found)
        bounds = batch_bounds(len(statements), size, [i for i, f in enumerate(outside) if f])
        specs = []
        seen: dict[str, int] = {}
        for batch_id, (offset, limit) in enumerate(bounds):
            chunk = statements[offset : offset + limit]
            # The ledger keys a batch by its content: a second identical batch would be
            # "already applied" by the first. Refuse it rather than apply it once silently.
            content = batch_sha256([(sql, None) for sql in chunk])
            if content in seen:
                raise ComponentError(
                    f"batch {batch_id} repeats batch {seen[content]} exactly; a batch is "
                    "applied once per target, so the repeat would be skipped: make it differ "
                    "(a comment will do) or remove it",
                    code=DUPLICATE_BATCH,
                    path=f"params.statements[{offset}]",
                )
            seen[content] = batch_id
            specs.append(
                PartitionSpec(
                    inputs={
                        "batch_id": batch_id,
                        "offset": offset,
                        "limit": len(chunk),
                        "stage_kind": kind,
                    },
                    fingerprints={"statements": _sha("\x00".join(chunk))},
                    # In order: a statement may need what an earlier batch created.
                    wave=batch_id,
                    weight=len(chunk),
                    label=f"batch {batch_id}: {plural(len(chunk), 'statement')}, {chunk[0][:80]}",
                )
            )
        data.update({"mode": "statements", "statements": statements, "batch_size": size})
        if any(outside):
            # Batch boundaries differ from batch_size's: pinned, for the executor's replays.
            data["batches"] = [list(b) for b in bounds]
            data["outside_transaction"] = {str(i): f.what for i, f in enumerate(outside) if f}
        return StageManifest(partitions=specs, data=data)

    def _backfill(self, params: dict, kind: str, data: dict, target: Any) -> StageManifest:
        backfill = params["backfill"]
        sql, table, key = backfill["sql"], backfill["table"], backfill["key_column"]
        size = backfill.get("batch_size", 1000)
        errors = _sql_errors(params, target.vendor)
        for error in [e for e in adaptive.params_errors(params) if not e.warning][:1]:
            raise error
        # Confinement is checked against the table and key column named here: those are
        # checked against the target's catalogue first, for the more precise error.
        for error in [e for e in errors if e.code != BACKFILL_NOT_CONFINED][:1]:
            raise error
        # The policy allows :start with :end (exclusive) or :last (inclusive).
        end_param = "end" if "end" in analyse(sql, target.vendor).params else "last"
        with connect(target, lock_timeout_ms=params["lock_timeout_ms"]) as conn:
            if not conn.table_exists(table):
                raise ComponentError(
                    f"table {table!r} does not exist in target {target.name!r}",
                    code=UNKNOWN_TABLE,
                    permanent=True,
                    path="params.backfill.table",
                )
            columns = conn.columns(table)
            if key not in columns:
                raise ComponentError(
                    f"column {key!r} is not a column of {table!r}",
                    code=UNKNOWN_COLUMN,
                    permanent=True,
                    path="params.backfill.key_column",
                )
            problem = _key_type_problem(conn, table, key)
            if problem:
                raise ComponentError(
                    f"{table}.{key} {problem}; a backfill key must be an integer column "
                    "(at most 64 bits)",
                    code=UNSUPPORTED_KEY,
                    permanent=True,
                    path="params.backfill.key_column",
                )
            for error in errors[:1]:
                raise error
            # Identifiers can't be bound: they are quoted after the catalogue check above.
            row = conn.execute(
                f"SELECT MIN({quote_identifier(key)}), MAX({quote_identifier(key)}), COUNT(*) "
                f"FROM {quote_identifier(table)}"
            ).fetchone()
        key_min, key_max, count = row
        specs = []
        if key_min is not None:
            key_min, key_max = int(key_min), int(key_max)
            if end_param == "end" and key_max == INT64_MAX:
                raise ComponentError(
                    f"{table}.{key} reaches {INT64_MAX}, the largest 64-bit integer: the "
                    "exclusive bound :end after it cannot be represented; write the backfill "
                    f"with :last (inclusive: {key} <= :last) instead of :end",
                    code=KEY_OUT_OF_RANGE,
                    permanent=True,
                    path="params.backfill.sql",
                )
            span = key_max - key_min + 1
            batches = math.ceil(span / size)
            if batches > settings.HXO_MAX_PARTITIONS:
                raise ComponentError(
                    f"{batches} batches over keys {key_min}..{key_max}; at most "
                    f"{settings.HXO_MAX_PARTITIONS} partitions: raise batch_size",
                    code=codes.TOO_MANY_PARTITIONS,
                    path="params.backfill.batch_size",
                )
            fp = {
                "sql": _sha(sql),
                f"table:{table}": f"{key}:{key_min}:{key_max}:{count}",
            }
            for batch_id in range(batches):
                offset = batch_id * size
                limit = min(size, span - offset)
                start = key_min + offset
                specs.append(
                    PartitionSpec(
                        inputs={
                            "batch_id": batch_id,
                            "offset": offset,
                            "limit": limit,
                            "stage_kind": kind,
                            "key_start": start,
                            "key_end": start + limit,  # exclusive, as :end
                            "key_last": start + limit - 1,  # inclusive, as :last
                        },
                        fingerprints=fp,
                        weight=limit,
                        label=f"batch {batch_id}: {key} in [{start}, {start + limit - 1}]",
                    )
                )
        data.update(
            {
                "mode": "backfill",
                "backfill": {
                    "sql": sql,
                    "table": table,
                    "key_column": key,
                    "end_param": end_param,
                    "batch_size": size,
                    "key_min": key_min,
                    "key_max": key_max,
                    "rows": count,
                },
            }
        )
        plan = adaptive.Adaptive.resolve(backfill)
        if plan is not None:
            # Pinned, so the digest (the approval) covers the bounds, not the sub-ranges.
            data["backfill"]["adaptive"] = plan.as_dict()
        return StageManifest(partitions=specs, data=data)


def _sql_errors(params: dict[str, Any], vendor: str) -> list[ComponentError]:
    """Every SQL policy error of a stage's params, with paths under `params.`."""
    if "backfill" in params:
        sql = params["backfill"]["sql"]
        return item_errors(
            sql,
            vendor,
            path="params.backfill.sql",
            backfill=True,
            table=params["backfill"].get("table"),
            key_column=params["backfill"].get("key_column"),
        )
    return [
        error
        for i, sql in enumerate(params.get("statements", []))
        for error in item_errors(sql, vendor, path=f"params.statements[{i}]")
    ]


NON_IDEMPOTENT_UNDECLARED = codes.NON_IDEMPOTENT_UNDECLARED
# A pinned batch mixes a statement that must run outside a transaction with others (a
# manifest made before such statements got batches of their own).
OUTSIDE_TRANSACTION_IN_BATCH = "outside_transaction_in_batch"


def _outside(
    statements: list[str], vendor: str, *, server_version: int | None = None
) -> list[OutsideTransaction | None]:
    """`sqlpolicy.outside_transaction` of each statement, in order."""
    return [outside_transaction(s, vendor, server_version=server_version) for s in statements]


def _undeclared(index: int, found: OutsideTransaction) -> ComponentError:
    return ComponentError(
        f"{found.what} cannot run inside a transaction, so HXO runs it alone in autocommit, "
        "where its effect cannot commit together with its ledger row: run twice (a retry "
        "after a crash) it would fail or act twice. Make it safe to repeat (IF NOT EXISTS / "
        "IF EXISTS) or declare the stage non_idempotent: true (needs hxo:force-merge)",
        code=NON_IDEMPOTENT_UNDECLARED,
        permanent=True,
        path=f"params.statements[{index}]",
    )


def batch_bounds(total: int, size: int, alone: list[int]) -> list[tuple[int, int]]:
    """(offset, limit) of each batch of `total` statements: runs of at most `size`, except
    that each index in `alone` (a statement that must run outside a transaction) is a batch
    of its own, so it never shares a transaction with others. Decision: split, not refuse:
    the plan's order is kept and a plain batch_size still means what it says elsewhere."""
    bounds: list[tuple[int, int]] = []
    single = set(alone)
    start = 0
    for i in range(total + 1):
        if i == total or i in single or i - start == size:
            if i > start:
                bounds.append((start, i - start))
            start = i
        if i in single:
            bounds.append((i, 1))
            start = i + 1
    return bounds


def pinned_bounds(manifest: dict[str, Any]) -> list[tuple[int, int]]:
    """The stage's batches as (offset, limit): pinned ones, else runs of batch_size (a
    manifest made before batches were pinned)."""
    if "batches" in manifest:
        return [(int(a), int(b)) for a, b in manifest["batches"]]
    size = int(manifest.get("batch_size", 1))
    total = len(manifest.get("statements", []))
    return [(o, min(size, total - o)) for o in range(0, total, size)]


def _key_type_problem(conn: TargetConnection, table: str, key: str) -> str | None:
    """Why `table.key` can't be a backfill key, or None when it is an integer column.

    PostgreSQL: the catalogue's type of the column (`pg_attribute.atttypid`, a domain's base
    type) must be int2, int4 or int8; matching the type's name would take `interval` or
    `point` for integers. SQLite: the declared type must give INTEGER affinity (rule 1 of
    https://sqlite.org/datatype3.html#determination_of_column_affinity: it contains "INT"),
    and, since affinity does not stop a text value from being stored, every value must be an
    integer or NULL (`typeof()`, checked over the table).
    """
    if conn.vendor == POSTGRESQL:
        row = conn.execute(
            "SELECT CASE WHEN t.typtype = 'd' THEN b.typname ELSE t.typname END, "
            "format_type(a.atttypid, a.atttypmod) "
            "FROM pg_catalog.pg_attribute a "
            "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_catalog.pg_type t ON t.oid = a.atttypid "
            "LEFT JOIN pg_catalog.pg_type b ON b.oid = t.typbasetype "
            "WHERE n.nspname = current_schema() AND c.relname = :t AND a.attname = :c "
            "AND a.attnum > 0 AND NOT a.attisdropped",
            {"t": table, "c": key},
        ).fetchone()
        if row is not None and row[0] in PG_INTEGER_TYPES:
            return None
        return f"is of type {row[1] if row else 'unknown'}"
    declared = conn.columns(table).get(key, "")
    if "INT" not in declared.upper():
        return f"is declared {declared or 'without a type'} (no INTEGER affinity)"
    other = conn.scalar(
        f"SELECT typeof({quote_identifier(key)}) FROM {quote_identifier(table)} "
        f"WHERE typeof({quote_identifier(key)}) NOT IN ('integer', 'null') LIMIT 1"
    )
    if other is not None:
        return f"holds {other} values"
    return None


def batch_sha256(work: list[tuple[str, dict[str, Any] | None]]) -> str:
    """The ledger key's content part for a statement batch: SHA-256 over canonical JSON of
    [[sql, bound parameters or {}], ...] in order. The exact SQL text, not a normalised one:
    what is keyed is what runs."""
    canonical = json.dumps(
        [[sql, params or {}] for sql, params in work],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return _sha(canonical)


def _legacy_digest(work: list[tuple[str, dict[str, Any] | None]]) -> str:
    """`batch_digest` as the version-1 ledger (`hxo_ledger`) recorded it."""
    return _sha(repr([(sql, sorted((p or {}).items())) for sql, p in work]))


@dataclasses.dataclass
class Batch:
    """One partition's work, as the pinned manifest defines it."""

    batch_id: int
    mode: str  # "statements" or "backfill"
    statements: list[str] = dataclasses.field(default_factory=list)
    offset: int = 0  # statements: the first statement's index in the stage's list
    # Backfill: the template, which bound parameter ends the range, and the inclusive range.
    sql: str = ""
    end_param: str = "end"
    first: int = 0
    last: int = 0

    @property
    def work(self) -> list[tuple[str, dict[str, Any] | None]]:
        if self.mode == "statements":
            return [(s, None) for s in self.statements]
        return [(self.sql, self.bound(self.first, self.last))]

    def bound(self, first: int, last: int) -> dict[str, int]:
        """The template's parameters for the inclusive key interval [first, last]."""
        if self.end_param == "last":
            return {"start": first, "last": last}
        return {"start": first, "end": last + 1}

    @property
    def key_range(self) -> list[int]:
        """[start, end) as outputs have reported it since version 1."""
        return [self.first, self.last + 1]


def _batch(ctx: ExecutionContext) -> Batch:
    """The batch's statements or key range, from the pinned manifest."""
    batch_id = require_input(ctx, "batch_id", int)
    offset = require_input(ctx, "offset", int)
    limit = require_input(ctx, "limit", int)
    mode = require_manifest(ctx, "mode")
    if offset < 0 or limit < 1:
        raise ComponentError(
            "offset >= 0 and limit >= 1", code="invalid_inputs", path="inputs", permanent=True
        )
    if mode == "statements":
        statements = ctx.manifest["statements"][offset : offset + limit]
        if len(statements) != limit:
            raise ComponentError(
                "the batch is outside the pinned statements",
                code="invalid_inputs",
                path="inputs",
                permanent=True,
            )
        return Batch(batch_id, mode, statements=list(statements), offset=offset)
    backfill = require_manifest(ctx, "backfill")
    first = int(backfill["key_min"]) + offset
    last = first + limit - 1
    if first < INT64_MIN or last > INT64_MAX:
        raise ComponentError(
            f"keys [{first}, {last}] are outside 64-bit integers",
            code=KEY_OUT_OF_RANGE,
            permanent=True,
            path="inputs",
        )
    return Batch(
        batch_id,
        "backfill",
        sql=backfill["sql"],
        end_param=backfill.get("end_param", "end"),
        first=first,
        last=last,
    )


def _run(
    conn: TargetConnection,
    work: list,
    beat: Beat,
    *,
    checked: list[int] | None = None,
    first: int = 0,
    per_statement: list[int | None] | None = None,
    samples: list[dict[str, Any]] | None = None,
    estimates: list[dict[str, Any]] | None = None,
) -> int:
    """Run a batch's statements inside the open transaction; rows changed in total.

    `per_statement` (a dry-run): each statement's row count is appended to it, None for a
    statement only checked, so the review can say what each statement would change.
    `samples` (a dry-run): each DML statement's sample rows before and after it
    (`runs_app.kinds.samples`), read in the same transaction.
    `estimates` (a dry-run on PostgreSQL): for each DML statement, the planner's row estimate
    (`TargetConnection.estimate_rows`: EXPLAIN, never ANALYZE) taken just before it runs, so
    the review shows it beside the rows it really changed: {"statement", "verb", "params"
    (the bound parameters: a backfill's key interval), "estimated_rows", "rows", "error"}.

    Each statement is checked against the SQL policy once more (the manifest is pinned data:
    it may predate the policy), then runs through `run_statement`, whose guards (SQLite
    authorizer, PostgreSQL extended protocol, still-in-transaction and session checks) do
    not rely on that check.

    `checked` (a dry-run on PostgreSQL): a statement calling setval()/nextval() itself is
    EXPLAINed (parsed, analysed, planned; nothing evaluated) instead of run, because a
    sequence change is not undone by the rollback; its index (`first` + position) is
    appended to `checked`.
    """
    rows = 0
    version = conn.server_version
    for i, (sql, bound) in enumerate(work):
        beat()
        refused = statement_error(sql, conn.vendor, path="manifest")
        if refused is not None:
            raise refused
        found = outside_transaction(sql, conn.vendor, server_version=version)
        if found is not None:
            # The partitioner gives such a statement a batch of its own; a pinned manifest
            # from before that is refused rather than failing inside the transaction.
            raise ComponentError(
                f"{found.what} cannot run inside a transaction and shares its batch with "
                "other statements; re-run the dry-run so that it gets a batch of its own",
                code=OUTSIDE_TRANSACTION_IN_BATCH,
                permanent=True,
                path="manifest",
            )
        if checked is not None and conn.vendor == POSTGRESQL and calls_sequence_functions(sql):
            conn.explain_statement(sql, bound)
            checked.append(first + i)
            if per_statement is not None:
                per_statement.append(None)
            continue
        estimate = (
            _estimate(conn, sql, bound, first + (0 if bound is not None else i))
            if estimates is not None
            else None
        )
        if estimate is not None and estimates is not None:
            estimates.append(estimate)
        probe = samples_of.before(conn, sql, bound, first + i) if samples is not None else None
        changed = conn.run_statement(sql, bound)
        if estimate is not None:
            estimate["rows"] = changed
        if probe is not None and samples is not None:
            after = samples_of.after(conn, probe)
            samples.append(samples_of.record(probe, after, conn.target.sensitive))
        if per_statement is not None:
            per_statement.append(changed)
        rows += changed
    return rows


def _estimate(
    conn: TargetConnection, sql: str, bound: dict[str, Any] | None, statement: int
) -> dict[str, Any] | None:
    """The planner's row estimate of one plan statement on PostgreSQL, as a dry-run's preview
    keeps it: {"statement", "verb", "params", "estimated_rows", "rows" (None: the caller sets
    what it really changed), "error"}; None on SQLite or for a statement that is not DML."""
    if conn.vendor != POSTGRESQL:
        return None
    verb = pg_dml_verb(sql)
    if verb is None:
        return None
    estimated, error = conn.estimate_rows(sql, bound)
    return {
        "statement": statement,
        "verb": verb,
        "params": bound,
        "estimated_rows": estimated,
        "rows": None,
        "error": error,
    }


@contextlib.contextmanager
def _watched(
    conn: TargetConnection, ctx: ExecutionContext, batch_id: int, budget_ms: int | None
) -> Iterator[None]:
    """While inside, the target statement in flight is cancelled (`conn.cancel`) as soon as
    the partition must stop (the heartbeat thread calls it: run aborted, lease lost, time
    budget spent) or, when `budget_ms` is given, once the batch has run that long (a
    watchdog timer). Errors leave as ComponentError: the driver's error translated
    (`_translate`); after a cancel, RunAborted/LeaseLost/PartitionTimeout from `ctx.heartbeat()`
    or BATCH_TIMEOUT / CANCELLED. The caller rolls back inside, so the locks go at once.
    """
    import threading

    timer = None
    if budget_ms is not None:
        timer = threading.Timer(
            budget_ms / 1000, conn.cancel, args=(f"batch budget {budget_ms} ms",)
        )
        timer.daemon = True
        timer.start()
    ctx.stop_with(conn.cancel)
    try:
        yield
    except (*_db_errors(), ComponentError) as exc:
        if conn.cancelled is None:
            if isinstance(exc, ComponentError):
                raise
            raise _translate(exc, batch_id) from None
        if conn.cancelled.startswith("batch budget"):
            raise ComponentError(
                f"batch {batch_id}: the dry-run ran longer than HXO_DRY_RUN_BATCH_TIMEOUT_MS "
                f"({budget_ms} ms) and was cancelled and rolled back",
                code=BATCH_TIMEOUT,
                path="manifest",
            ) from None
        ctx.heartbeat()  # raises why the partition stopped (RunAborted, LeaseLost, ...)
        raise ComponentError(
            f"batch {batch_id}: cancelled ({conn.cancelled}); rolled back",
            code=CANCELLED,
            path="manifest",
        ) from None
    finally:
        ctx.stop_with(None)
        if timer is not None:
            timer.cancel()


def _translate(exc: Exception, batch_id: int) -> ComponentError:
    """The driver's error as the partition's: SQL_ERROR, or STATEMENT_TIMEOUT / LOCK_TIMEOUT;
    `permanent` as `classify_db_error` says (a missing column is, a lock timeout is not)."""
    code = SQL_ERROR
    text = str(exc).strip()
    if isinstance(exc, sqlite3.OperationalError):
        if "interrupted" in text:
            code = STATEMENT_TIMEOUT
        elif "locked" in text:
            code = LOCK_TIMEOUT
    else:
        import psycopg

        if isinstance(exc, psycopg.errors.QueryCanceled):
            code = STATEMENT_TIMEOUT
        elif isinstance(exc, psycopg.errors.LockNotAvailable):
            code = LOCK_TIMEOUT
    permanent = classify_db_error(exc).permanent
    return ComponentError(
        f"batch {batch_id}: {text}", code=code, path="manifest", permanent=permanent
    )


def _db_errors() -> tuple[type[Exception], ...]:
    import psycopg

    return (sqlite3.Error, psycopg.Error)


# --- The ledger ---------------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _has_ledger(conn: TargetConnection) -> bool:
    return conn.table_exists(BATCHES_TABLE)


def _ensure_ledger(conn: TargetConnection) -> None:
    """Create the ledger tables (outside the batch's transaction, in autocommit)."""
    for table, ddl in zip(LEDGER_TABLES, LEDGER_DDL, strict=True):
        if conn.table_exists(table):
            continue
        try:
            conn.execute(ddl)
        except _db_errors():
            # Two workers creating it at once on PostgreSQL: one loses on the catalogue's
            # unique index; the table exists either way.
            if not conn.table_exists(table):
                raise


def _legacy_rows(conn: TargetConnection, batch: Batch) -> int | None:
    """rows_affected of a version-1 ledger row recording exactly this batch, if any."""
    if not conn.table_exists(LEDGER_TABLE):
        return None
    return conn.scalar(
        f"SELECT MAX(rows_affected) FROM {LEDGER_TABLE} WHERE batch_digest = :d",
        {"d": _legacy_digest(batch.work)},
    )


def _ledgered_batch(conn: TargetConnection, sha: str) -> int | None:
    return conn.scalar(
        f"SELECT rows_affected FROM {BATCHES_TABLE} WHERE batch_sha256 = :h", {"h": sha}
    )


def _intervals(
    conn: TargetConnection, template: str, first: int, last: int
) -> list[tuple[int, int, int]]:
    """Ledgered intervals (key_first, key_last, rows_affected) that overlap [first, last],
    in key order. They are disjoint, so the only one that can start before `first` is the
    one with the largest key_first <= first: the scan starts there (an index range)."""
    rows = conn.execute(
        f"SELECT key_first, key_last, rows_affected FROM {INTERVALS_TABLE} "
        "WHERE template_sha256 = :h AND key_first <= :last AND key_last >= :first "
        "AND key_first >= COALESCE((SELECT MAX(key_first) FROM "
        f"{INTERVALS_TABLE} WHERE template_sha256 = :h AND key_first <= :first), "
        ":first) ORDER BY key_first",
        {"h": template, "first": first, "last": last},
    ).fetchall()
    return [(int(a), int(b), int(n)) for a, b, n in rows]


def uncovered(first: int, last: int, covered: list[tuple[int, ...]]) -> list[tuple[int, int]]:
    """[first, last] minus the union of `covered` intervals (inclusive (a, b, ...) tuples,
    any order, may overlap): the disjoint inclusive pieces left, in order."""
    pieces: list[tuple[int, int]] = []
    at = first
    for a, b, *_ in sorted(covered):
        if b < at:
            continue
        if a > last:
            break
        if a > at:
            pieces.append((at, a - 1))
        at = max(at, b + 1)
        if at > last:
            return pieces
    if at <= last:
        pieces.append((at, last))
    return pieces


def _lock_template(
    conn: TargetConnection, identity: str, template: str, sql: str, timeouts: dict[str, int]
) -> None:
    """Serialise the batches of one backfill on one target until this transaction ends.

    PostgreSQL: a row lock on the template's row (made if missing). Concurrent batches of
    the backfill wait here, so none reads the intervals while another one's are uncommitted
    (READ COMMITTED would not see them, and both would apply the overlap). The wait is
    bounded by the statement timeout rather than the lock timeout: it is a queue behind
    whole batches of the same backfill, not a lock held by someone else's long transaction.
    SQLite: the transaction began IMMEDIATE and holds the database's only write lock already.
    """
    with _waiting_for_the_same_work(conn, timeouts):
        # Both the insert (a concurrent first batch's uncommitted row) and the row lock wait.
        conn.execute(
            f"INSERT INTO {BACKFILLS_TABLE} (target, template_sha256, template, created_at) "
            "VALUES (:t, :h, :sql, :at) ON CONFLICT DO NOTHING",
            {"t": identity, "h": template, "sql": sql, "at": _now()},
        )
        if conn.vendor == POSTGRESQL:
            conn.execute(
                f"SELECT 1 FROM {BACKFILLS_TABLE} WHERE template_sha256 = :h FOR UPDATE",
                {"h": template},
            )


@contextlib.contextmanager
def _waiting_for_the_same_work(conn: TargetConnection, timeouts: dict[str, int]) -> Iterator[None]:
    """Inside: PostgreSQL waits for locks up to the statement timeout (SET LOCAL), then back
    to the lock timeout. For ledger rows, whose only other holders are deliveries of the
    same work; SQLite's single writer lock is taken by BEGIN IMMEDIATE already."""
    if conn.vendor != POSTGRESQL:
        yield
        return
    wait = max(timeouts["statement_timeout_ms"], timeouts["lock_timeout_ms"])
    conn.execute("SELECT set_config('lock_timeout', :v, true)", {"v": f"{wait}ms"})
    yield
    conn.execute(
        "SELECT set_config('lock_timeout', :v, true)", {"v": f"{timeouts['lock_timeout_ms']}ms"}
    )


def _replay_earlier_batches(
    conn: TargetConnection, ctx: ExecutionContext, batch: Batch, has_ledger: bool, beat: Beat
) -> dict[str, Any] | None:
    """In a dry-run of a statement list, first run the earlier batches the apply would run.

    Batches apply in order, so batch 3 may need the table batch 1 creates; in a dry-run
    nothing was applied, and without this every batch after a CREATE would fail. An earlier
    batch the ledger records (by content, as the apply checks it) is not run again. It all
    happens inside the same transaction that is rolled back. What was replayed, or None.
    """
    if batch.mode != "statements" or batch.batch_id == 0:
        return None
    bounds = pinned_bounds(ctx.manifest)[: batch.batch_id]
    return _replay_statements(conn, ctx.manifest, bounds, has_ledger, beat, stage="")


def _replay_statements(
    conn: TargetConnection,
    manifest: dict[str, Any],
    bounds: list[tuple[int, int]],
    has_ledger: bool,
    beat: Beat,
    *,
    stage: str,
) -> dict[str, Any]:
    """Replay the statement batches `bounds` of a pinned statement-list `manifest` in the
    open (rolled-back) transaction, skipping those the ledger records as the apply would.
    Returns {"stage", "mode", "batches" (run), "already_applied", "rows_affected",
    "notes"}."""
    statements = manifest["statements"]
    record: dict[str, Any] = {
        "stage": stage,
        "mode": "statements",
        "batches": 0,
        "already_applied": 0,
        "rows_affected": 0,
        "notes": [],
    }
    for i, (offset, limit) in enumerate(bounds):
        prior = Batch(i, "statements", statements=list(statements[offset : offset + limit]))
        if (
            has_ledger and _ledgered_batch(conn, batch_sha256(prior.work)) is not None
        ) or _legacy_rows(conn, prior) is not None:
            record["already_applied"] += 1
            continue
        record["batches"] += 1
        record["rows_affected"] += _replay_work(conn, prior.work, beat, record["notes"], offset)
    return record


def _replay_work(
    conn: TargetConnection, work: list, beat: Beat, notes: list[str], first: int
) -> int:
    """Run earlier work in the open transaction so later statements see its effect; rows.

    A statement that must run outside a transaction runs as its transactional equivalent
    (CREATE INDEX for CREATE INDEX CONCURRENTLY), or is left out when it has none (VACUUM,
    REINDEX: no schema effect; ADD VALUE before PostgreSQL 12: none can run here); `notes`
    says which. setval()/nextval() are only checked, as in the batch itself."""
    rows = 0
    version = conn.server_version
    for i, (sql, bound) in enumerate(work):
        found = outside_transaction(sql, conn.vendor, server_version=version)
        if found is None:
            rows += _run(conn, [(sql, bound)], beat, checked=[])
        elif found.equivalent is not None:
            _run(conn, [(found.equivalent, None)], beat, checked=[])
            notes.append(f"#{first + i} {found.what} replayed as {found.equivalent!r}")
        else:
            notes.append(
                f"#{first + i} {found.what} not replayed (no effect a later "
                "statement can see, or none that can run in a transaction)"
            )
    return rows


def _replay_upstream(
    conn: TargetConnection, ctx: ExecutionContext, batch: Batch, has_ledger: bool, beat: Beat
) -> list[dict[str, Any]]:
    """In a dry-run, replay the earlier deploy.migrate stages on this same target first.

    Stages run in order at apply, so a backfill may need the column the stage before it
    adds; in a dry-run nothing was committed. Each stage this one depends on (directly or
    not, `ExecutionContext.upstream`, in topological order) whose executor is sql_migrate
    and whose pinned target has this target's identity is replayed in this partition's
    transaction, which is rolled back:

    - a statement list: every batch the ledger does not record, in order (statements that
      must run outside a transaction as their transactional equivalents, `_replay_work`);
    - a backfill: the part of its pinned key range the ledger does not record, one
      statement per uncovered interval (a backfill is confined to its key range, so one
      statement over [a, b] does what its batches over [a, b] do). When this batch is a
      backfill of the same table and key column, only its own key range is replayed (a
      row's new value comes from the same row's earlier one); otherwise the whole range.

    Stages on other targets or of other executors are not replayed: they cannot change
    this target. Returns one record per replayed stage for the preview.
    """
    records: list[dict[str, Any]] = []
    identity = conn.target.identity
    for up in ctx.upstream():
        manifest = up.get("manifest") or {}
        if up.get("executor") != SqlMigrate.name or not manifest.get("target"):
            continue
        try:
            other = get_target(manifest["target"], path="manifest.target")
        except ComponentError:
            continue
        if other.identity != identity:
            continue
        if manifest.get("mode") == "statements":
            records.append(
                _replay_statements(
                    conn, manifest, pinned_bounds(manifest), has_ledger, beat, stage=up["id"]
                )
            )
            continue
        backfill = manifest.get("backfill") or {}
        record: dict[str, Any] = {
            "stage": up["id"],
            "mode": "backfill",
            "batches": 0,
            "already_applied": 0,
            "rows_affected": 0,
            "keys": None,
            "notes": [],
        }
        records.append(record)
        if backfill.get("key_min") is None:
            continue
        first, last = int(backfill["key_min"]), int(backfill["key_max"])
        same_rows = (
            batch.mode == "backfill"
            and backfill.get("table") == ctx.manifest["backfill"].get("table")
            and backfill.get("key_column") == ctx.manifest["backfill"].get("key_column")
        )
        if same_rows:
            first, last = max(first, batch.first), min(last, batch.last)
        if first > last:
            continue
        record["keys"] = [first, last]
        prior = Batch(
            0,
            "backfill",
            sql=backfill["sql"],
            end_param=backfill.get("end_param", "end"),
            first=first,
            last=last,
        )
        covered = _intervals(conn, _sha(prior.sql), first, last) if has_ledger else []
        pieces = uncovered(first, last, covered)
        record["already_applied"] = (last - first + 1) - sum(b - a + 1 for a, b in pieces)
        for a, b in pieces:
            record["batches"] += 1
            record["rows_affected"] += _run(
                conn, [(prior.sql, prior.bound(a, b))], beat, checked=[]
            )
    return records


def _batches(n: int) -> str:
    return f"{n} batch" if n == 1 else f"{n} batches"


def _describe_replayed(records: list[dict[str, Any]]) -> str:
    """The preview's words for what was replayed before the batch ("" when nothing)."""
    parts = []
    for r in records:
        if r["stage"] == "":
            what = f"earlier batches of this stage ({_batches(r['batches'])}"
        elif r["mode"] == "backfill":
            keys = f" keys {r['keys'][0]}..{r['keys'][1]}" if r["keys"] else " no keys"
            what = f"stage {r['stage']} (backfill{keys}"
        else:
            what = f"stage {r['stage']} ({_batches(r['batches'])}"
        what += f", {plural(r['rows_affected'], 'row')}"
        if r["already_applied"]:
            what += f", {r['already_applied']} already applied"
        parts.append(what + ")")
        parts.extend(r["notes"])
    return "; replayed first: " + ", ".join(parts) if parts else ""


def _idle_timeout_ms() -> int:
    """idle_in_transaction_session_timeout for target transactions: half the lease, so the
    server ends a paused worker's transaction before its lease can expire and another worker
    take the partition over."""
    return max(settings.HXO_LEASE_MS // 2, 100)


@register_executor
class SqlMigrate(Executor):
    name = "sql_migrate"
    inputs_schema = fields_schema({"batch_id": "integer", "offset": "integer", "limit": "integer"})
    output_schema = fields_schema(
        {
            "status": {"type": "string", "const": "migrated"},
            "batch_id": "integer",
            "rows_affected": "integer",
            "ledger": "string",
        }
    )
    description = (
        "Runs one SQL batch per partition in a transaction with a ledger row in the target, "
        "keyed by the batch's content (a backfill: the key intervals applied); what the "
        "ledger records is never applied again. Dry-run rolls the batch back."
    )
    # The ledger makes re-delivery a no-op: the same content applies once per target.
    idempotent = True
    supports_dry_run = True

    def execute(self, ctx: ExecutionContext) -> dict[str, Any]:
        target = get_target(require_manifest(ctx, "target"), path="manifest.target")
        batch = _batch(ctx)
        timeouts = {
            "statement_timeout_ms": int(ctx.manifest.get("statement_timeout_ms", 30_000)),
            "lock_timeout_ms": int(ctx.manifest.get("lock_timeout_ms", 5_000)),
        }
        if ctx.dry_run:
            # A review must not hold the target's writers up: a short wait for locks, and a
            # lock it took is held at most a short statement timeout per statement (and the
            # batch budget in all, `_watched`).
            timeouts["lock_timeout_ms"] = min(
                timeouts["lock_timeout_ms"], settings.HXO_DRY_RUN_LOCK_TIMEOUT_MS
            )
            timeouts["statement_timeout_ms"] = min(
                timeouts["statement_timeout_ms"], settings.HXO_DRY_RUN_STATEMENT_TIMEOUT_MS
            )
        beat = Beat(ctx)
        # Before any effect and outside any transaction: an unhealthy target raises Throttled.
        dbhealth.gate(ctx, target)
        with connect(target, lock_timeout_ms=timeouts["lock_timeout_ms"]) as conn:
            if ctx.dry_run:
                return self._dry_run(conn, ctx, batch, timeouts, beat)
            return self._apply(conn, ctx, batch, timeouts, beat)

    def applied_output(self, ctx: ExecutionContext) -> dict[str, Any] | None:
        """The output of an already-applied batch: its ledger row (a statement batch) or
        ledgered intervals covering its whole key range (a backfill), else None."""
        target = get_target(require_manifest(ctx, "target"), path="manifest.target")
        batch = _batch(ctx)
        with connect(target) as conn:
            if not _has_ledger(conn):
                return None
            identity = target.identity
            if batch.mode == "statements":
                rows = _ledgered_batch(conn, batch_sha256(batch.work))
                if rows is None:
                    return None
                return self._output(batch, int(rows), "already_applied", identity)
            covered = _intervals(conn, _sha(batch.sql), batch.first, batch.last)
            if uncovered(batch.first, batch.last, covered):
                return None
            return self._output(batch, _rows_within(batch, covered), "already_applied", identity)

    def effect_exists(self, ctx: ExecutionContext, output: dict[str, Any]) -> bool:
        """Whether the batch an earlier apply recorded as `output` is in this target's ledger.

        False when the output's `effect` names another target identity (the same plan on
        another database) or is missing (an output of version 1), or when the ledger has no
        row for the batch's content (a statement batch) or does not cover its whole key range
        (a backfill): the partition then runs, and the ledger itself keeps that from
        applying anything twice. Read only.
        """
        target = get_target(require_manifest(ctx, "target"), path="manifest.target")
        batch = _batch(ctx)
        effect = output.get("effect")
        if output.get("status") != "migrated" or not isinstance(effect, dict):
            return False
        if effect.get("target") != target.identity:
            return False
        with connect(target) as conn:
            if _legacy_rows(conn, batch) is not None:
                return True
            if not _has_ledger(conn):
                return False
            if batch.mode == "statements":
                sha = batch_sha256(batch.work)
                return _ledgered_batch(conn, sha) is not None
            covered = _intervals(conn, _sha(batch.sql), batch.first, batch.last)
            return not uncovered(batch.first, batch.last, covered)

    # --- dry-run --------------------------------------------------------------------------

    def _dry_run(
        self,
        conn: TargetConnection,
        ctx: ExecutionContext,
        batch: Batch,
        timeouts: dict[str, int],
        beat: Beat,
    ) -> dict[str, Any]:
        """What the apply would do, read from the same ledger with the same keys: only the
        work the ledger does not record runs, in a transaction that is rolled back."""
        has_ledger = _has_ledger(conn)
        identity = conn.target.identity
        base: dict[str, Any] = {
            "batch_id": batch.batch_id,
            "target": conn.target.name,
            "target_identity": identity,
            "vendor": conn.vendor,
        }
        pieces: list[tuple[int, int]] = []
        if batch.mode == "statements":
            sha = batch_sha256(batch.work)
            base.update({"statements": batch.statements, "batch_sha256": sha})
            ledgered = _ledgered_batch(conn, sha) if has_ledger else None
            if ledgered is None:
                ledgered = _legacy_rows(conn, batch)
            if ledgered is not None:
                return {
                    **base,
                    "summary": f"batch {batch.batch_id}: already applied to this target "
                    f"({plural(int(ledgered), 'row')} changed then); the apply will skip it",
                    "rows_affected": 0,
                    "already_applied": True,
                    "ledgered_rows_affected": int(ledgered),
                }
            work = batch.work
            what = ""
        else:
            template = _sha(batch.sql)
            covered = _intervals(conn, template, batch.first, batch.last) if has_ledger else []
            if _legacy_rows(conn, batch) is not None:
                covered = [(batch.first, batch.last, 0)]
            pieces = uncovered(batch.first, batch.last, covered)
            done = (batch.last - batch.first + 1) - sum(b - a + 1 for a, b in pieces)
            base.update(
                {
                    "sql": batch.sql,
                    "template_sha256": template,
                    "key_range": batch.key_range,
                    "to_apply": [list(p) for p in pieces],
                    "keys_already_applied": done,
                }
            )
            if not pieces:
                return {
                    **base,
                    "summary": f"batch {batch.batch_id}: keys {batch.first}..{batch.last} "
                    "already applied to this target; the apply will skip them",
                    "rows_affected": 0,
                    "already_applied": True,
                    "ledgered_rows_affected": _rows_within(batch, covered),
                }
            work = [(batch.sql, batch.bound(a, b)) for a, b in pieces]
            what = _describe_pieces(batch, pieces, done)
            plan = adaptive.Adaptive.of(ctx.manifest)
            if plan is not None:
                what += f"; previewed in one pass, applied in {plan.sentence()}"
        # Statements calling setval()/nextval() are checked (EXPLAIN), not run: a sequence
        # change survives the rollback. Indexes into the stage's statements (a backfill: 0).
        checked: list[int] = []
        per_statement: list[int | None] = []
        samples: list[dict[str, Any]] = []
        estimates: list[dict[str, Any]] = []
        outside = _outside_batch(conn, batch)
        with _watched(conn, ctx, batch.batch_id, settings.HXO_DRY_RUN_BATCH_TIMEOUT_MS):
            # idle_in_transaction: a paused worker's dry-run transaction (and its locks) is
            # ended by the server, as an apply's is.
            conn.begin(**timeouts, idle_timeout_ms=_idle_timeout_ms())
            try:
                replayed = _replay_upstream(conn, ctx, batch, has_ledger, beat)
                if batch.mode == "backfill" and outside is None:
                    # A backfill's key intervals are estimated before the earlier batches
                    # are replayed: their new row versions would grow the table's pages,
                    # which the planner scales its row counts by (dead tuples the apply's
                    # autovacuum removes), and they touch other keys anyway.
                    for a, b in pieces:
                        found = _estimate(conn, batch.sql, batch.bound(a, b), 0)
                        if found is not None:
                            estimates.append(found)
                earlier = _replay_earlier_batches(conn, ctx, batch, has_ledger, beat)
                if earlier is not None:
                    replayed.append(earlier)
                if outside is not None:
                    rows = 0
                    how = _check_outside(conn, outside, beat)
                else:
                    rows = _run(
                        conn,
                        work,
                        beat,
                        checked=checked,
                        first=batch.offset if batch.mode == "statements" else 0,
                        per_statement=per_statement,
                        samples=samples,
                        estimates=estimates if batch.mode == "statements" else None,
                    )
                    if batch.mode == "backfill":
                        for estimate, changed in zip(estimates, per_statement, strict=False):
                            estimate["rows"] = changed
            finally:
                conn.rollback()  # a dry-run never commits
        if outside is not None:
            what += (
                f"; {outside.what} runs alone outside a transaction at apply (autocommit: its "
                f"effect is committed when it finishes, not with the batch); {how}"
            )
        what += _describe_replayed(replayed)
        if checked:
            what += (
                f"; {plural(len(checked), 'statement')} calling setval()/nextval() only checked, "
                f"not executed (a sequence change survives a rollback): "
                + ", ".join(f"#{i}" for i in checked)
            )
        return {
            **base,
            "summary": f"batch {batch.batch_id}: would change {rows} rows (rolled back){what}",
            "rows_affected": rows,
            "already_applied": False,
            "checked_not_executed": checked,
            # Statements: one count per statement of the batch; a backfill: one per key
            # interval still to apply (runs_app.selectors.change_summary adds them up).
            "rows_per_statement": per_statement,
            # Up to samples.SAMPLE_ROWS rows before/after each DML statement, values cut and
            # the target's sensitive columns masked.
            "samples": samples,
            # PostgreSQL: the planner's estimate (EXPLAIN, FORMAT JSON) beside the rows each
            # DML statement really changed, per statement or per backfill key interval.
            "row_estimates": estimates,
            "replayed": replayed,
            "outside_transaction": None if outside is None else outside.what,
        }

    # --- apply ----------------------------------------------------------------------------

    def _apply(
        self,
        conn: TargetConnection,
        ctx: ExecutionContext,
        batch: Batch,
        timeouts: dict[str, int],
        beat: Beat,
    ) -> dict[str, Any]:
        _ensure_ledger(conn)
        outside = _outside_batch(conn, batch)
        with _watched(conn, ctx, batch.batch_id, None):
            if outside is not None:
                return self._apply_outside(conn, ctx, batch, outside, timeouts, beat)
            plan = adaptive.Adaptive.of(ctx.manifest) if batch.mode == "backfill" else None
            if plan is not None:
                return self._apply_adaptive(conn, ctx, batch, plan, timeouts, beat)
            return self._apply_watched(conn, ctx, batch, timeouts, beat)

    def _apply_adaptive(
        self,
        conn: TargetConnection,
        ctx: ExecutionContext,
        batch: Batch,
        plan: adaptive.Adaptive,
        timeouts: dict[str, int],
        beat: Beat,
    ) -> dict[str, Any]:
        """A backfill batch as adaptive sub-batches (`kinds.adaptive.run`): each is this
        batch narrowed to its keys, applied by `_apply_watched` (its own transaction, ledger
        interval, fence check). Only the keys the ledger does not cover are walked; each
        sub-batch re-reads the ledger under the template's lock, so exactness does not rest
        on this first read."""
        covered = _intervals(conn, _sha(batch.sql), batch.first, batch.last)
        pieces = uncovered(batch.first, batch.last, covered)
        legacy = _legacy_rows(conn, batch) if pieces == [(batch.first, batch.last)] else None
        if legacy is not None:  # the version-1 ledger records exactly this batch
            return self._output(batch, int(legacy), "already_applied", conn.target.identity)

        def step(first: int, last: int) -> tuple[int, str]:
            sub = dataclasses.replace(batch, first=first, last=last)
            try:
                out = self._apply_watched(conn, ctx, sub, timeouts, beat)
            except _db_errors() as exc:
                raise _translate(exc, batch.batch_id) from None
            return out["rows_affected"], out["ledger"]

        done = adaptive.run(plan, pieces, step, between=beat)
        if done["applied"]:
            out = self._output(batch, done["rows_affected"], "applied", conn.target.identity)
        else:
            rows = _rows_within(batch, covered) + done["rows_affected"]
            out = self._output(batch, rows, "already_applied", conn.target.identity)
        out.update({"adaptive": plan.as_dict(), "sub_batches": done["sub_batches"]})
        return out

    def _apply_outside(
        self,
        conn: TargetConnection,
        ctx: ExecutionContext,
        batch: Batch,
        outside: OutsideTransaction,
        timeouts: dict[str, int],
        beat: Beat,
    ) -> dict[str, Any]:
        """A batch of one statement that cannot run in a transaction: it runs alone in
        autocommit, then its ledger row is written in a transaction of its own.

        Not atomic with the ledger, unlike every other batch: a worker that dies between
        the two leaves the effect without its row, and the batch runs again when retried.
        Hence the partitioner's rule: such a statement is idempotent (IF NOT EXISTS, VACUUM)
        or its stage is non-idempotent (never retried automatically; a replay needs
        hxo:force-merge). The fence is checked right before the statement, which is where
        its effect commits. A CREATE INDEX CONCURRENTLY that failed or was cancelled leaves an
        INVALID index behind, which IF NOT EXISTS would then skip: the index is checked
        valid afterwards (`_require_valid_index`)."""
        sha = batch_sha256(batch.work)
        ledgered = _ledgered_batch(conn, sha)
        if ledgered is None:
            ledgered = _legacy_rows(conn, batch)
        if ledgered is not None:
            return self._output(batch, int(ledgered), "already_applied", conn.target.identity)
        (sql,) = batch.statements
        refused = statement_error(sql, conn.vendor, path="manifest")
        if refused is not None:
            raise refused
        beat(force=True)
        ctx.check_fence()
        rows = conn.run_outside_transaction(sql, **timeouts)
        _require_valid_index(conn, sql)
        conn.begin(**timeouts, idle_timeout_ms=_idle_timeout_ms())
        try:
            conn.execute(
                f"INSERT INTO {BATCHES_TABLE} (target, batch_sha256, statements, "
                "rows_affected, run_id, partition_id, fence, applied_at) VALUES (:t, :h, 1, "
                ":rows, :run_id, :partition_id, :fence, :applied_at) ON CONFLICT DO NOTHING",
                {"t": conn.target.identity, "h": sha, "rows": rows, **self._stamp(ctx)},
            )
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        return self._output(batch, rows, "applied", conn.target.identity)

    def _apply_watched(
        self,
        conn: TargetConnection,
        ctx: ExecutionContext,
        batch: Batch,
        timeouts: dict[str, int],
        beat: Beat,
    ) -> dict[str, Any]:
        conn.begin(**timeouts, idle_timeout_ms=_idle_timeout_ms())
        try:
            if batch.mode == "statements":
                rows, ledger = self._apply_statements(conn, ctx, batch, timeouts, beat)
            else:
                rows, ledger = self._apply_backfill(conn, ctx, batch, timeouts, beat)
            if ledger == "applied":
                beat(force=True)
                # A fresh query against HXO's database, not the heartbeat's last answer: a
                # worker paused past its lease (another worker may hold the partition now)
                # raises LeaseLost here and commits nothing.
                ctx.check_fence()
                conn.commit()
            else:
                conn.rollback()
        except BaseException:
            conn.rollback()
            raise
        return self._output(batch, rows, ledger, conn.target.identity)

    def _stamp(self, ctx: ExecutionContext) -> dict[str, Any]:
        return {
            "run_id": ctx.run_id,
            "partition_id": ctx.partition_id,
            "fence": ctx.fence,
            "applied_at": _now(),
        }

    def _apply_statements(
        self,
        conn: TargetConnection,
        ctx: ExecutionContext,
        batch: Batch,
        timeouts: dict[str, int],
        beat: Beat,
    ) -> tuple[int, str]:
        key = {"t": conn.target.identity, "h": batch_sha256(batch.work)}
        # The ledger row first: a concurrent delivery of the same batch waits on this row's
        # key until the first commits (then finds it) or rolls back (then applies). On
        # PostgreSQL that wait is bounded by the statement timeout, not the lock timeout: the
        # other holder is the same batch (a worker that lost its lease, whose session the
        # server ends once its statement is done and it sits idle).
        with _waiting_for_the_same_work(conn, timeouts):
            claimed = conn.execute(
                f"INSERT INTO {BATCHES_TABLE} (target, batch_sha256, statements, "
                "rows_affected, run_id, partition_id, fence, applied_at) VALUES (:t, :h, :n, "
                "0, :run_id, :partition_id, :fence, :applied_at) ON CONFLICT DO NOTHING",
                {**key, "n": len(batch.statements), **self._stamp(ctx)},
            ).rowcount
        if claimed != 1:
            return int(_ledgered_batch(conn, key["h"]) or 0), "already_applied"
        legacy = _legacy_rows(conn, batch)
        if legacy is not None:
            return int(legacy), "already_applied"  # rolled back: v1 keeps recording it
        rows = _run(conn, batch.work, beat)
        conn.execute(
            f"UPDATE {BATCHES_TABLE} SET rows_affected = :rows WHERE batch_sha256 = :h",
            {"h": key["h"], "rows": rows},
        )
        return rows, "applied"

    def _apply_backfill(
        self,
        conn: TargetConnection,
        ctx: ExecutionContext,
        batch: Batch,
        timeouts: dict[str, int],
        beat: Beat,
    ) -> tuple[int, str]:
        identity, template = conn.target.identity, _sha(batch.sql)
        _lock_template(conn, identity, template, batch.sql, timeouts)
        covered = _intervals(conn, template, batch.first, batch.last)
        pieces = uncovered(batch.first, batch.last, covered)
        if not pieces:
            return _rows_within(batch, covered), "already_applied"
        if len(pieces) == 1 and pieces[0] == (batch.first, batch.last):
            legacy = _legacy_rows(conn, batch)
            if legacy is not None:
                return int(legacy), "already_applied"
        rows = 0
        stamp = self._stamp(ctx)
        for first, last in pieces:
            n = _run(conn, [(batch.sql, batch.bound(first, last))], beat)
            conn.execute(
                f"INSERT INTO {INTERVALS_TABLE} (target, template_sha256, key_first, key_last, "
                "rows_affected, run_id, partition_id, fence, applied_at) VALUES (:t, :h, "
                ":first, :last, :rows, :run_id, :partition_id, :fence, :applied_at)",
                {
                    "t": identity,
                    "h": template,
                    "first": first,
                    "last": last,
                    "rows": n,
                    **stamp,
                },
            )
            rows += n
        return rows, "applied"

    @staticmethod
    def _output(batch: Batch, rows: int, ledger: str, identity: str) -> dict[str, Any]:
        """The output. Its `effect` names where and what (issue 11 §2): the target by
        identity, the ledger table, the SHA-256 of the ledger key's content (the batch's, or
        the backfill template's with the key interval), so a receipt leaf binds them."""
        out: dict[str, Any] = {
            "status": "migrated",
            "batch_id": batch.batch_id,
            "rows_affected": rows,
            "ledger": ledger,
        }
        effect: dict[str, Any] = {"target": identity}
        if batch.mode == "backfill":
            out["key_range"] = batch.key_range
            effect.update(
                {
                    "ledger": INTERVALS_TABLE,
                    "sha256": _sha(batch.sql),
                    "keys": [batch.first, batch.last],
                }
            )
        else:
            out["statements"] = len(batch.statements)
            effect.update({"ledger": BATCHES_TABLE, "sha256": batch_sha256(batch.work)})
        out["effect"] = effect
        return out


def _outside_batch(conn: TargetConnection, batch: Batch) -> OutsideTransaction | None:
    """The batch's statement when it is a batch of one statement that must run outside a
    transaction (`sqlpolicy.outside_transaction`, for this server's version), else None."""
    if batch.mode != "statements" or len(batch.statements) != 1:
        return None
    return outside_transaction(batch.statements[0], conn.vendor, server_version=conn.server_version)


def _check_outside(conn: TargetConnection, found: OutsideTransaction, beat: Beat) -> str:
    """Validate a statement that must run outside a transaction without running it, inside
    the dry-run's open transaction; the preview's words for how.

    Its transactional equivalent runs when it has one (CREATE INDEX for CREATE INDEX
    CONCURRENTLY: columns, expressions, uniqueness over the existing rows are checked, and
    the index is there for what follows); otherwise the relations and types it names must
    exist (`to_regclass`, `to_regtype`: PostgreSQL's own name resolution). ComponentError
    (SQL_ERROR, permanent) names what is missing."""
    if found.equivalent is not None:
        _run(conn, [(found.equivalent, None)], beat, checked=[])
        return f"validated by running {found.equivalent!r} in the rolled-back transaction"
    if conn.vendor != POSTGRESQL:
        return "nothing to validate beforehand on SQLite (it takes no object names)"
    missing = [
        name
        for name, fn in [(r, "to_regclass") for r in found.relations]
        + [(t, "to_regtype") for t in found.types]
        if conn.scalar(f"SELECT {fn}(:n) IS NULL", {"n": name})
    ]
    if missing:
        raise ComponentError(
            f"{found.what}: {', '.join(missing)} does not exist in the target",
            code=SQL_ERROR,
            permanent=True,
            path="manifest",
        )
    named = found.relations + found.types
    return (
        f"checked that {', '.join(named)} exist{'s' if len(named) == 1 else ''}, not run"
        if named
        else "not run (it names no object to check)"
    )


def _require_valid_index(conn: TargetConnection, sql: str) -> None:
    """After CREATE INDEX CONCURRENTLY (PostgreSQL): the index must be valid. A build that
    failed or was cancelled leaves an INVALID index that IF NOT EXISTS then skips, so a
    retry would "succeed" without an index; this stops it with the way out."""
    if conn.vendor != POSTGRESQL:
        return
    import pglast

    stmt = pglast.parse_sql(sql)[0].stmt
    if type(stmt).__name__ != "IndexStmt" or not stmt.idxname:
        return
    schema = stmt.relation.schemaname
    name = f"{schema}.{stmt.idxname}" if schema else stmt.idxname
    valid = conn.scalar(
        "SELECT i.indisvalid FROM pg_catalog.pg_index i WHERE i.indexrelid = to_regclass(:n)",
        {
            "n": quote_identifier(schema) + "." + quote_identifier(stmt.idxname)
            if schema
            else quote_identifier(stmt.idxname)
        },
    )
    if valid is False:
        raise ComponentError(
            f"index {name} exists but is INVALID (an earlier concurrent build failed or was "
            f"cancelled); drop it (DROP INDEX CONCURRENTLY {name}) and run the batch again",
            code=SQL_ERROR,
            permanent=True,
            path="manifest",
        )


def _rows_within(batch: Batch, covered: list[tuple[int, int, int]]) -> int:
    """Rows the ledger says were changed by intervals inside the batch's range."""
    return sum(n for a, b, n in covered if a >= batch.first and b <= batch.last)


def _describe_pieces(batch: Batch, pieces: list[tuple[int, int]], done: int) -> str:
    """Empty when the whole range is to apply, else which keys and how many are applied."""
    if not done:
        return ""
    spans = ", ".join(f"{a}..{b}" for a, b in pieces[:3]) + (" ..." if len(pieces) > 3 else "")
    return (
        f"; only keys {spans}: {done} keys of {batch.first}..{batch.last} already applied to "
        "this target"
    )


__all__ = [
    "BACKFILLS_TABLE",
    "BATCHES_TABLE",
    "INTERVALS_TABLE",
    "INVALID_SQL",
    "LEDGER_TABLE",
    "POSTGRESQL",
    "SQLITE",
    "BySqlBatch",
    "SqlMigrate",
]

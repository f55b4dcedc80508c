"""deploy.migrate: the `by_sql_batch` partitioner and the `sql_migrate` executor.

Two forms of stage params:

- `statements`: a list of SQL statements split into batches of `batch_size`, applied in order
  (one wave per batch, since a later statement may need an earlier one's table);
- `backfill`: one parametrised DML statement using `:start` and `:end`, run over the key range
  of `table.key_column` split into `offset/limit` batches (`:start = key_min + offset`,
  `:end = :start + limit`, end exclusive). The key range is read from the target when the
  stage is partitioned and pinned in the manifest; values are always bound, never formatted
  into SQL, and the table and key column must exist in the target's catalogue.

Each batch runs in one transaction on the target together with a row in the target's
`hxo_ledger` table keyed by (plan digest, stage id, batch id): a re-delivered batch finds its
ledger row and is skipped, reporting the rows it changed the first time. A dry-run runs the
batch in a transaction that is rolled back, and creates nothing (not even the ledger table).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import sqlite3
from typing import Any

from django.conf import settings

from blueprints_app import codes
from blueprints_app.registry import (
    ComponentError,
    ExecutionContext,
    Executor,
    PartitionContext,
    Partitioner,
    PartitionSpec,
    StageManifest,
    register_executor,
    register_partitioner,
)
from runs_app.kinds.base import (
    plural,
    require_input,
    require_manifest,
    required_unless_default,
    resolve_params,
)
from runs_app.kinds.base import target_param as _target_param
from runs_app.kinds.files import Beat
from runs_app.sqlpolicy import INVALID_SQL, item_errors, statement_error
from runs_app.targets import (
    POSTGRESQL,
    SQLITE,
    TargetConnection,
    connect,
    get_target,
    quote_identifier,
)

UNKNOWN_TABLE = "unknown_table"
UNKNOWN_COLUMN = "unknown_column"
UNSUPPORTED_KEY = "unsupported_key"
SQL_ERROR = "sql_error"
STATEMENT_TIMEOUT = "statement_timeout"
LOCK_TIMEOUT = "lock_timeout"

LEDGER_TABLE = "hxo_ledger"
IDENTIFIER = {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,62}$"}

LEDGER_DDL = f"""
CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (
    plan_digest VARCHAR(64) NOT NULL,
    stage_id VARCHAR(100) NOT NULL,
    batch_id INTEGER NOT NULL,
    batch_digest VARCHAR(64) NOT NULL,
    rows_affected BIGINT NOT NULL,
    run_id BIGINT,
    partition_id BIGINT,
    fence BIGINT,
    applied_at VARCHAR(40) NOT NULL,
    PRIMARY KEY (plan_digest, stage_id, batch_id)
)
"""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@register_partitioner
class BySqlBatch(Partitioner):
    name = "by_sql_batch"
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
                            "(key_column >= :start AND key_column < :end).",
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
            },
        }

    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> list[ComponentError]:
        """The SQL policy (runs_app.sqlpolicy) for every statement, read by the parser of the
        target's vendor: forbidden statements, one statement per item, parameters."""
        try:
            target = get_target(resolve_params(cls, params)["target"])
        except ComponentError:
            return []  # an unknown target is already a schema error (the enum)
        return _sql_errors(params, target.vendor)

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
            return self._statements(params, kind, data)
        return self._backfill(params, kind, data, target)

    def _statements(self, params: dict[str, Any], kind: str, data: dict) -> StageManifest:
        statements = params["statements"]
        # The validator refused these already; checked again for a plan saved before the
        # policy, or partitioned without the validator.
        for error in _sql_errors(params, data["vendor"])[:1]:
            raise error
        size = params["batch_size"]
        specs = []
        for batch_id, offset in enumerate(range(0, len(statements), size)):
            chunk = statements[offset : offset + size]
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
        return StageManifest(partitions=specs, data=data)

    def _backfill(self, params: dict, kind: str, data: dict, target: Any) -> StageManifest:
        backfill = params["backfill"]
        sql, table, key = backfill["sql"], backfill["table"], backfill["key_column"]
        size = backfill.get("batch_size", 1000)
        for error in _sql_errors(params, target.vendor)[:1]:
            raise error
        with connect(target, lock_timeout_ms=params["lock_timeout_ms"]) as conn:
            if not conn.table_exists(table):
                raise ComponentError(
                    f"table {table!r} does not exist in target {target.name!r}",
                    code=UNKNOWN_TABLE,
                    path="params.backfill.table",
                )
            columns = conn.columns(table)
            if key not in columns:
                raise ComponentError(
                    f"column {key!r} is not a column of {table!r}",
                    code=UNKNOWN_COLUMN,
                    path="params.backfill.key_column",
                )
            if "INT" not in columns[key]:
                raise ComponentError(
                    f"{table}.{key} is {columns[key] or 'untyped'}; a backfill key must be an "
                    "integer column",
                    code=UNSUPPORTED_KEY,
                    path="params.backfill.key_column",
                )
            # Identifiers can't be bound: they are quoted after the catalogue check above.
            row = conn.execute(
                f"SELECT MIN({quote_identifier(key)}), MAX({quote_identifier(key)}), COUNT(*) "
                f"FROM {quote_identifier(table)}"
            ).fetchone()
        key_min, key_max, count = row
        specs = []
        if key_min is not None:
            span = int(key_max) - int(key_min) + 1
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
                start = int(key_min) + offset
                specs.append(
                    PartitionSpec(
                        inputs={
                            "batch_id": batch_id,
                            "offset": offset,
                            "limit": limit,
                            "stage_kind": kind,
                            "key_start": start,
                            "key_end": start + limit,
                        },
                        fingerprints=fp,
                        weight=limit,
                        label=f"batch {batch_id}: {key} in [{start}, {start + limit})",
                    )
                )
        data.update(
            {
                "mode": "backfill",
                "backfill": {
                    "sql": sql,
                    "table": table,
                    "key_column": key,
                    "batch_size": size,
                    "key_min": key_min,
                    "key_max": key_max,
                    "rows": count,
                },
            }
        )
        return StageManifest(partitions=specs, data=data)


def _sql_errors(params: dict[str, Any], vendor: str) -> list[ComponentError]:
    """Every SQL policy error of a stage's params, with paths under `params.`."""
    if "backfill" in params:
        sql = params["backfill"]["sql"]
        return item_errors(sql, vendor, path="params.backfill.sql", backfill=True)
    return [
        error
        for i, sql in enumerate(params.get("statements", []))
        for error in item_errors(sql, vendor, path=f"params.statements[{i}]")
    ]


def _work(ctx: ExecutionContext) -> tuple[list[tuple[str, dict[str, Any] | None]], dict]:
    """The batch's statements with their bound parameters, from the pinned manifest."""
    offset = require_input(ctx, "offset", int)
    limit = require_input(ctx, "limit", int)
    mode = require_manifest(ctx, "mode")
    if offset < 0 or limit < 1:
        raise ComponentError("offset >= 0 and limit >= 1", code="invalid_inputs", path="inputs")
    if mode == "statements":
        statements = ctx.manifest["statements"][offset : offset + limit]
        if len(statements) != limit:
            raise ComponentError(
                "the batch is outside the pinned statements", code="invalid_inputs", path="inputs"
            )
        return [(s, None) for s in statements], {"statements": statements}
    backfill = require_manifest(ctx, "backfill")
    start = int(backfill["key_min"]) + offset
    bound = {"start": start, "end": start + limit}
    return [(backfill["sql"], bound)], {"key_range": [start, start + limit], "sql": backfill["sql"]}


def _batch_digest(work: list[tuple[str, dict[str, Any] | None]]) -> str:
    return _sha(repr([(sql, sorted((p or {}).items())) for sql, p in work]))


def _run(conn: TargetConnection, work: list, beat: Beat) -> int:
    """Run a batch's statements inside the open transaction; rows changed in total.

    Each statement is checked against the SQL policy once more (the manifest is pinned data:
    it may predate the policy), then runs through `run_statement`, whose guards (SQLite
    authorizer, PostgreSQL extended protocol, still-in-transaction check) do not rely on
    that check.
    """
    rows = 0
    for sql, bound in work:
        beat()
        refused = statement_error(sql, conn.vendor, path="manifest")
        if refused is not None:
            raise refused
        rows += conn.run_statement(sql, bound)
    return rows


def _translate(exc: Exception, batch_id: int) -> ComponentError:
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
    return ComponentError(f"batch {batch_id}: {text}", code=code, path="manifest")


def _db_errors() -> tuple[type[Exception], ...]:
    import psycopg

    return (sqlite3.Error, psycopg.Error)


def _ledger_exists(conn: TargetConnection) -> bool:
    return conn.table_exists(LEDGER_TABLE)


def _ledgered(conn: TargetConnection, key: dict[str, Any]) -> int | None:
    return conn.scalar(
        f"SELECT rows_affected FROM {LEDGER_TABLE} "
        "WHERE plan_digest = :plan_digest AND stage_id = :stage_id AND batch_id = :batch_id",
        key,
    )


def _replay_earlier_batches(
    conn: TargetConnection,
    ctx: ExecutionContext,
    key: dict[str, Any],
    has_ledger: bool,
    beat: Beat,
) -> None:
    """In a dry-run of a statement list, first run the earlier batches not yet applied.

    Batches apply in order, so batch 3 may need the table batch 1 creates; in a dry-run
    nothing was applied, and without this every batch after a CREATE would fail. It all
    happens inside the same transaction that is rolled back.
    """
    if ctx.manifest.get("mode") != "statements" or key["batch_id"] == 0:
        return
    size = int(ctx.manifest.get("batch_size", 1))
    statements = ctx.manifest["statements"]
    for earlier in range(key["batch_id"]):
        if has_ledger and _ledgered(conn, {**key, "batch_id": earlier}) is not None:
            continue
        _run(conn, [(s, None) for s in statements[earlier * size : (earlier + 1) * size]], beat)


def _ensure_ledger(conn: TargetConnection) -> None:
    if _ledger_exists(conn):
        return
    try:
        conn.execute(LEDGER_DDL)
    except _db_errors():
        # Two workers creating it at once on PostgreSQL: one loses on the catalogue's unique
        # index; the table exists either way.
        if not _ledger_exists(conn):
            raise


@register_executor
class SqlMigrate(Executor):
    name = "sql_migrate"
    description = (
        "Runs one SQL batch per partition in a transaction with a ledger row in the target; "
        "a ledgered batch is never applied again. Dry-run rolls the batch back."
    )
    # The ledger makes re-delivery a no-op: the same (plan digest, stage, batch) applies once.
    idempotent = True
    supports_dry_run = True

    def execute(self, ctx: ExecutionContext) -> dict[str, Any]:
        target = get_target(require_manifest(ctx, "target"), path="manifest.target")
        batch_id = require_input(ctx, "batch_id", int)
        work, detail = _work(ctx)
        key = {
            "plan_digest": ctx.plan_digest,
            "stage_id": str(ctx.stage.get("id", "")),
            "batch_id": batch_id,
        }
        timeouts = {
            "statement_timeout_ms": int(ctx.manifest.get("statement_timeout_ms", 30_000)),
            "lock_timeout_ms": int(ctx.manifest.get("lock_timeout_ms", 5_000)),
        }
        if ctx.dry_run:
            # A review must not hold the target's writers up: a short wait for locks.
            timeouts["lock_timeout_ms"] = min(
                timeouts["lock_timeout_ms"], settings.HXO_DRY_RUN_LOCK_TIMEOUT_MS
            )
        beat = Beat(ctx)
        with connect(target, lock_timeout_ms=timeouts["lock_timeout_ms"]) as conn:
            if ctx.dry_run:
                return self._dry_run(conn, ctx, key, work, detail, timeouts, beat)
            return self._apply(conn, ctx, key, work, detail, timeouts, beat)

    def _dry_run(
        self,
        conn: TargetConnection,
        ctx: ExecutionContext,
        key: dict[str, Any],
        work: list,
        detail: dict[str, Any],
        timeouts: dict[str, int],
        beat: Beat,
    ) -> dict[str, Any]:
        batch_id = key["batch_id"]
        has_ledger = _ledger_exists(conn)
        ledgered = _ledgered(conn, key) if has_ledger else None
        base = {
            "batch_id": batch_id,
            "target": conn.target.name,
            "vendor": conn.vendor,
            **detail,
        }
        if ledgered is not None:
            return {
                **base,
                "summary": f"batch {batch_id}: already applied ({ledgered} rows); would skip",
                "rows_affected": 0,
                "already_applied": True,
                "ledgered_rows_affected": ledgered,
            }
        conn.begin(**timeouts)
        try:
            _replay_earlier_batches(conn, ctx, key, has_ledger, beat)
            rows = _run(conn, work, beat)
        except _db_errors() as exc:
            raise _translate(exc, batch_id) from None
        finally:
            conn.rollback()  # a dry-run never commits
        return {
            **base,
            "summary": f"batch {batch_id}: would change {rows} rows (rolled back)",
            "rows_affected": rows,
            "already_applied": False,
        }

    def _apply(
        self,
        conn: TargetConnection,
        ctx: ExecutionContext,
        key: dict[str, Any],
        work: list,
        detail: dict[str, Any],
        timeouts: dict[str, int],
        beat: Beat,
    ) -> dict[str, Any]:
        batch_id = key["batch_id"]
        _ensure_ledger(conn)
        conn.begin(**timeouts)
        try:
            claimed = conn.execute(
                f"INSERT INTO {LEDGER_TABLE} (plan_digest, stage_id, batch_id, batch_digest, "
                "rows_affected, run_id, partition_id, fence, applied_at) VALUES (:plan_digest, "
                ":stage_id, :batch_id, :batch_digest, 0, :run_id, :partition_id, :fence, "
                ":applied_at) ON CONFLICT DO NOTHING",
                {
                    **key,
                    "batch_digest": _batch_digest(work),
                    "run_id": ctx.run_id,
                    "partition_id": ctx.partition_id,
                    "fence": ctx.fence,
                    "applied_at": dt.datetime.now(dt.UTC).isoformat(),
                },
            ).rowcount
            if claimed != 1:
                # Applied before (or by a concurrent delivery that committed first).
                rows = int(_ledgered(conn, key) or 0)
                conn.rollback()
                return self._output(batch_id, rows, "already_applied", detail)
            rows = _run(conn, work, beat)
            conn.execute(
                f"UPDATE {LEDGER_TABLE} SET rows_affected = :rows WHERE plan_digest = "
                ":plan_digest AND stage_id = :stage_id AND batch_id = :batch_id",
                {**key, "rows": rows},
            )
            beat(force=True)  # LeaseLost here rolls the whole batch back
            conn.commit()
        except _db_errors() as exc:
            conn.rollback()
            raise _translate(exc, batch_id) from None
        except BaseException:
            conn.rollback()
            raise
        return self._output(batch_id, rows, "applied", detail)

    @staticmethod
    def _output(batch_id: int, rows: int, ledger: str, detail: dict) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": "migrated",
            "batch_id": batch_id,
            "rows_affected": rows,
            "ledger": ledger,
        }
        if "key_range" in detail:
            out["key_range"] = detail["key_range"]
        else:
            out["statements"] = len(detail["statements"])
        return out


__all__ = ["INVALID_SQL", "LEDGER_TABLE", "POSTGRESQL", "SQLITE", "BySqlBatch", "SqlMigrate"]

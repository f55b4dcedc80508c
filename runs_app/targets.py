"""Database targets: databases registered by name in `settings.HXO_DATABASE_TARGETS`.

A plan names a target; the URL comes from settings only, never from a plan, so a plan author
cannot point an executor at an arbitrary server. The database HXO itself runs on is not a
target unless an operator registers it as one. Connections are plain DB-API (sqlite3,
psycopg 3) with one placeholder style for callers: named `:param`, converted here, so SQL is
always executed with bound parameters.

SQL from a plan runs only through `TargetConnection.run_statement`, whose guards (SQLite
authorizer, PostgreSQL extended query protocol, the batch's transaction checked after every
statement) hold whatever the SQL policy (`runs_app.sqlpolicy`) let through; a PostgreSQL
target connecting as a superuser is refused unless HXO_ALLOW_SUPERUSER_TARGETS is set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from django.conf import settings

from blueprints_app.registry import ComponentError
from runs_app.sqlpolicy import (
    FORBIDDEN_STATEMENT,
    LEDGER_TABLE_NAMES,
    POSTGRESQL,
    SQLITE,
    outside_transaction,
    pg_params,
)

UNKNOWN_TARGET = "unknown_target"
TARGET_UNAVAILABLE = "target_unavailable"
UNSUPPORTED_TARGET = "unsupported_target"
SUPERUSER_TARGET = "superuser_target"
# A plan statement ended or left the batch's transaction (it must never: the executor checks
# after every statement and fails the partition).
TRANSACTION_ENDED = "transaction_ended"
# FORBIDDEN_STATEMENT (sqlpolicy) also when the SQLite authorizer refuses an action of a plan
# statement (transaction control, ATTACH, a PRAGMA that is not read-only, load_extension()).
# A plan statement changed the timeouts HXO set for the batch or the role it runs as (e.g.
# `UPDATE pg_settings SET setting = '0' ...`): the batch stops and is rolled back.
SESSION_CHANGED = "session_changed"
# The statement in flight was cancelled by HXO (`TargetConnection.cancel`): the run was
# aborted, the lease lost, the partition's time budget or a dry-run's batch budget ran out.
CANCELLED = "cancelled"
# What a PostgreSQL session must still have after every plan statement (see `run_statement`).
PG_SESSION_SQL = (
    "SELECT current_setting('lock_timeout'), current_setting('statement_timeout'), "
    "current_setting('idle_in_transaction_session_timeout'), current_user::text, "
    "session_user::text"
)
PG_SESSION_NAMES = (
    "lock_timeout",
    "statement_timeout",
    "idle_in_transaction_session_timeout",
    "current_user",
    "session_user",
)


def target_names() -> list[str]:
    return sorted(settings.HXO_DATABASE_TARGETS)


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    vendor: str
    # sqlite: the database file; postgresql: psycopg connect() keyword arguments.
    sqlite_path: Path | None = None
    pg_kwargs: tuple[tuple[str, Any], ...] = ()
    # Column names (lower case) whose values a review never shows: masked in sample rows.
    sensitive: frozenset[str] = frozenset()
    # Database health checks every deploy.migrate stage on this target runs before a batch
    # (runs_app.kinds.dbhealth; a stage's `health` param overrides key by key), as items.
    health: tuple[tuple[str, Any], ...] = ()

    @property
    def display(self) -> str:
        """Where the target is, without credentials, for previews and errors."""
        if self.vendor == SQLITE:
            return f"sqlite:{self.sqlite_path}"
        kw = dict(self.pg_kwargs)
        return f"postgresql://{kw.get('host', '')}:{kw.get('port', '')}/{kw.get('dbname', '')}"

    @property
    def identity(self) -> str:
        """What the target resolves to, never only its name: `sqlite:<real path of the file>`
        (symlinks resolved) or `postgresql://<host>:<port>/<dbname>` (libpq's defaults,
        localhost and 5432, filled in). Two names for one database share an identity.
        """
        if self.vendor == SQLITE:
            assert self.sqlite_path is not None
            return f"sqlite:{os.path.realpath(self.sqlite_path)}"
        kw = dict(self.pg_kwargs)
        host = kw.get("host") or "localhost"
        return f"postgresql://{host}:{kw.get('port') or 5432}/{kw.get('dbname', '')}"


def target_entry(
    entry: object, *, path: str, name: str
) -> tuple[str, frozenset[str], dict[str, Any]]:
    """One HXO_DATABASE_TARGETS value: a URL (the form since the start), or an object
    `{"url": "...", "sensitive": ["email", ...], "health": {...}}` naming the columns whose
    values reviews mask and the database health checks of its migrations
    (runs_app.kinds.dbhealth). Returns (url, sensitive column names in lower case, health);
    ComponentError (unsupported_target) for another shape (settings also refuse a wrong
    shape at start-up)."""
    if isinstance(entry, str):
        return entry, frozenset(), {}
    problem = target_entry_problem(entry)
    if problem is not None:
        raise ComponentError(
            f"target {name!r} in settings: {problem}",
            code=UNSUPPORTED_TARGET,
            permanent=True,
            path=path,
        )
    assert isinstance(entry, dict)
    return (
        entry["url"],
        frozenset(c.lower() for c in entry.get("sensitive", [])),
        dict(entry.get("health") or {}),
    )


def target_entry_problem(entry: object) -> str | None:
    """Why `entry` is not a target's value (a URL string, or {"url", "sensitive", "health"}),
    or None."""
    if isinstance(entry, str):
        return None
    if not isinstance(entry, dict):
        return "must be a URL or an object with url, sensitive and health"
    unknown = set(entry) - {"url", "sensitive", "health"}
    if unknown:
        return f"unknown keys {sorted(unknown)} (allowed: url, sensitive, health)"
    if "health" in entry:
        from runs_app.kinds.dbhealth import schema_problems  # the checks' own schema

        found = schema_problems(entry["health"], "health")
        if found:
            return f"{found[0].path}: {found[0].message}"
    if not isinstance(entry.get("url"), str) or not entry["url"]:
        return "url must be a non-empty string"
    sensitive = entry.get("sensitive", [])
    if not isinstance(sensitive, list) or not all(isinstance(c, str) and c for c in sensitive):
        return "sensitive must be a list of column names"
    return None


def get_target(name: object, *, path: str = "params.target") -> Target:
    """The registered target `name`, or ComponentError(unknown_target)."""
    registered = settings.HXO_DATABASE_TARGETS
    if not isinstance(name, str) or name not in registered:
        known = ", ".join(sorted(registered)) or "none"
        raise ComponentError(
            f"{name!r} is not a registered database target (registered: {known})",
            code=UNKNOWN_TARGET,
            permanent=True,
            path=path,
        )
    import dj_database_url

    url, sensitive, health = target_entry(registered[name], path=path, name=name)
    try:
        cfg = dj_database_url.parse(url)
    except Exception as exc:  # dj_database_url raises several types for bad URLs
        raise ComponentError(
            f"target {name!r} has an invalid URL in settings: {exc}",
            code=UNSUPPORTED_TARGET,
            permanent=True,
            path=path,
        ) from None
    engine = cfg.get("ENGINE", "")
    if engine.endswith("sqlite3"):
        db_path = Path(str(cfg["NAME"]))
        if not db_path.is_absolute():
            db_path = Path(settings.BASE_DIR) / db_path
        if health:
            raise ComponentError(
                f"target {name!r} in settings: health checks need a PostgreSQL target, "
                "and this one is SQLite",
                code=UNSUPPORTED_TARGET,
                permanent=True,
                path=path,
            )
        return Target(name=name, vendor=SQLITE, sqlite_path=db_path, sensitive=sensitive)
    if engine.endswith("postgresql"):
        kwargs: dict[str, Any] = {"dbname": cfg["NAME"]}
        for key, arg in (("HOST", "host"), ("PORT", "port"), ("USER", "user")):
            if cfg.get(key):
                kwargs[arg] = str(cfg[key])
        if cfg.get("PASSWORD"):
            kwargs["password"] = cfg["PASSWORD"]
        for key, value in (cfg.get("OPTIONS") or {}).items():
            kwargs[key] = value
        return Target(
            name=name,
            vendor=POSTGRESQL,
            pg_kwargs=tuple(sorted(kwargs.items())),
            sensitive=sensitive,
            health=tuple(sorted(health.items())),
        )
    raise ComponentError(
        f"target {name!r} uses {engine or 'an unknown engine'}; "
        "SQLite and PostgreSQL are supported",
        code=UNSUPPORTED_TARGET,
        permanent=True,
        path=path,
    )


# --- SQL text: named parameters -----------------------------------------------------------


def to_driver_sql(sql: str, vendor: str) -> str:
    """`:name` placeholders in the driver's style. sqlite3 takes `:name` as it is.

    For PostgreSQL the placeholders are found by PostgreSQL's own scanner
    (`sqlpolicy.pg_params`), so a `:name` inside a literal, a comment or a dollar-quoted body
    is left alone, and every `%` outside them is doubled (psycopg reads `%` as a marker).
    """
    if vendor == SQLITE:
        return sql
    names, spans, _other = pg_params(sql)
    out: list[str] = []
    last = 0
    for (start, end), name in zip(spans, names, strict=True):
        out.append(sql[last:start].replace("%", "%%"))
        out.append(f"%({name})s")
        last = end
    out.append(sql[last:].replace("%", "%%"))
    return "".join(out)


# --- Connections --------------------------------------------------------------------------


# SQLite pragmas that only read, the ones SQLite also offers as table-valued functions
# (pragma_table_info(...)); any other pragma is denied while a batch runs.
READ_ONLY_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_info",
        "index_xinfo",
        "index_list",
        "foreign_key_list",
        "foreign_key_check",
        "collation_list",
        "database_list",
        "function_list",
        "module_list",
        "pragma_list",
        "compile_options",
        "integrity_check",
        "quick_check",
    }
)
# SQL functions denied on SQLite targets whatever code calls them.
DENIED_SQLITE_FUNCTIONS = frozenset(
    {"load_extension", "fts3_tokenizer", "readfile", "writefile", "edit"}
)
# A virtual table that reads and writes raw database pages, when compiled in.
DENIED_SQLITE_TABLES = frozenset({"sqlite_dbpage"})
# Actions on a table whose name is in arg1 or arg2 (SQLite's authorizer arguments differ per
# action: DROP_TABLE names it in arg1, CREATE_TRIGGER/CREATE_INDEX/ALTER_TABLE in arg2). A plan
# statement taking any of them on a ledger table is denied: the ledger is HXO's record of what
# was applied, written only by HXO's own statements (docs/sql-policy.md, `ledger_tables`).
LEDGER_GUARDED_ACTIONS = frozenset(
    {
        sqlite3.SQLITE_READ,
        sqlite3.SQLITE_INSERT,
        sqlite3.SQLITE_UPDATE,
        sqlite3.SQLITE_DELETE,
        sqlite3.SQLITE_DROP_TABLE,
        sqlite3.SQLITE_DROP_TEMP_TABLE,
        sqlite3.SQLITE_CREATE_TABLE,
        sqlite3.SQLITE_CREATE_TEMP_TABLE,
        sqlite3.SQLITE_ALTER_TABLE,
        sqlite3.SQLITE_CREATE_TRIGGER,
        sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
        sqlite3.SQLITE_CREATE_INDEX,
        sqlite3.SQLITE_CREATE_TEMP_INDEX,
        sqlite3.SQLITE_DROP_INDEX,
        sqlite3.SQLITE_DROP_TRIGGER,
    }
)


def estimated_rows(explained: Any) -> int:
    """Rows the planner expects a DML statement to change, from PostgreSQL's
    `EXPLAIN (FORMAT JSON)` output (a list of one {"Plan": {...}}, or its JSON text).

    A DML statement's top node is `ModifyTable`, whose "Plan Rows" is 0 without RETURNING;
    the rows it would change are those of its "Outer" child (the scan that finds them, or
    the SELECT/VALUES an INSERT reads). Any other top node's own "Plan Rows". Raises
    KeyError/IndexError/TypeError/ValueError on output of another shape."""
    import json

    if isinstance(explained, str | bytes):
        explained = json.loads(explained)
    plan = explained[0]["Plan"]
    if plan.get("Node Type") == "ModifyTable":
        children = plan.get("Plans") or []
        outer = [c for c in children if c.get("Parent Relationship") in ("Outer", "Member")]
        if outer or children:
            plan = (outer or children)[0]
    return round(float(plan["Plan Rows"]))


class TargetConnection:
    """One DB-API connection in autocommit mode; transactions are explicit (begin/commit).

    Plan SQL runs only through `run_statement`, inside a transaction opened by `begin`, with
    guards that hold even when a statement got past validation (sqlpolicy):

    - SQLite: an authorizer (`sqlite3.Connection.set_authorizer`, SQLite's
      sqlite3_set_authorizer) is installed for the connection's whole life. It denies
      transaction control and savepoints except HXO's own begin/commit/rollback, ATTACH and
      DETACH (VACUUM INTO attaches its output file, so it is denied too), every PRAGMA that
      is not read-only, load_extension() and the shell's file functions. sqlite3 itself
      refuses more than one statement per execute ("You can only execute one statement at a
      time"), and VACUUM cannot run inside a transaction.
    - PostgreSQL: a statement is sent with the extended query protocol (psycopg does so when
      results are asked for in binary; see `run_statement`), where the server refuses more
      than one statement per message.
    - Both: after every statement the session must still be inside the batch's transaction
      (`sqlite3.Connection.in_transaction`, psycopg `info.transaction_status`); if it is not,
      the statement ended it and `TRANSACTION_ENDED` is raised before anything else runs.
    - PostgreSQL: after every statement the session must still have the timeouts `begin`
      set and the role it connected as (one query, `PG_SESSION_SQL`); a statement that
      changed them (`UPDATE pg_settings`, whose rule calls set_config) stops the batch with
      `SESSION_CHANGED`, rolled back.
    - Both: `cancel()` may be called from another thread (the heartbeat's, a watchdog
      timer): the statement in flight is cancelled by the server (psycopg `cancel_safe`,
      PostgreSQL's cancel request) or interrupted (`sqlite3.Connection.interrupt`), and no
      further plan statement runs on this connection.
    """

    def __init__(self, target: Target, raw: Any) -> None:
        self.target = target
        self.vendor = target.vendor
        self.raw = raw
        self._deadline: float | None = None
        # True only while HXO's own BEGIN/COMMIT/ROLLBACK run (the authorizer allows them).
        self._control = False
        # True while a plan's statement runs (run_statement): the ledger guard applies.
        self._plan = False
        # True while HXO runs a plan's VACUUM outside a transaction (SQLite): the
        # authorizer lets VACUUM's own transaction and unnamed temporary database through.
        self._vacuum = False
        self._denied: str | None = None
        # Why `cancel()` was called (set from another thread), else None.
        self.cancelled: str | None = None
        # PostgreSQL: the session's timeouts and role as `begin` left them.
        self._session: tuple[str, ...] | None = None

    def cancel(self, reason: str) -> None:
        """Cancel the statement in flight and refuse every later plan statement.

        Thread-safe: called by the heartbeat thread (abort, lost lease, time budget) or a
        watchdog timer while the executor's thread waits on the target. PostgreSQL:
        psycopg's `Connection.cancel_safe()` sends the server a cancel request (the
        statement fails with QueryCanceled and the transaction is left for the executor's
        rollback, which releases its locks). SQLite: `sqlite3.Connection.interrupt()`.
        Errors are ignored: the connection may already be done or closed.
        """
        self.cancelled = reason
        with contextlib.suppress(Exception):
            if self.vendor == SQLITE:
                self.raw.interrupt()
            else:
                self.raw.cancel_safe(timeout=10)

    def _require_not_cancelled(self) -> None:
        if self.cancelled is not None:
            raise ComponentError(
                f"the batch was cancelled ({self.cancelled}); it was rolled back",
                code=CANCELLED,
                path="manifest",
            )

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        """HXO's own SQL (catalogue, ledger, fixtures): never SQL taken from a plan."""
        cursor = self.raw.cursor()
        if params is None:
            cursor.execute(sql)
        else:
            cursor.execute(to_driver_sql(sql, self.vendor), dict(params))
        return cursor

    def run_statement(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        """Run one statement of a plan inside the open transaction; rows it changed (>= 0).

        Raises ComponentError(TRANSACTION_ENDED) when no transaction is open before it or
        the statement left it, ComponentError(SESSION_CHANGED) when it changed the session's
        timeouts or role (PostgreSQL), ComponentError(CANCELLED) when `cancel()` was called,
        ComponentError(FORBIDDEN_STATEMENT) when the SQLite authorizer refused one of its
        actions or the driver refused a second statement in the text, and the driver's
        error otherwise.
        """
        self._require_not_cancelled()
        self.require_transaction(sql)
        cursor = self.raw.cursor()
        self._denied = None
        self._plan = True
        try:
            if self.vendor == SQLITE:
                cursor.execute(sql, dict(params or {}))
            else:
                # psycopg uses the simple query protocol (which runs any number of
                # statements) when there are no parameters and results are text; asking for
                # binary results makes it use the extended protocol (PQsendQueryParams)
                # always, and the server then refuses a second statement in the message.
                query = sql if params is None else to_driver_sql(sql, self.vendor)
                cursor.execute(query, None if params is None else dict(params), binary=True)
        except Exception as exc:
            refused = self._refusal(exc)
            if refused is not None:
                raise refused from None
            raise
        finally:
            self._plan = False
        rows = max(cursor.rowcount or 0, 0)  # DDL reports -1
        self.require_transaction(sql)
        self.require_session(sql)
        self._require_not_cancelled()
        return rows

    def sample_rows(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]] | None:
        """A SELECT built from a plan statement (a dry-run's sample rows: the statement's own
        WHERE), run inside the open transaction with `run_statement`'s guards, in a savepoint
        so that its failure (a column the rewrite cannot name) leaves the batch as it was.
        Returns (column names, rows), or None when it failed; the caller checked `sql`
        against the SQL policy first. Never for an apply: only dry-runs sample."""
        read = self._read_in_savepoint(sql, params)
        return None if isinstance(read, str) else read

    def estimate_rows(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> tuple[int | None, str | None]:
        """The planner's estimate of the rows one plan DML statement would change
        (PostgreSQL): `EXPLAIN (FORMAT JSON) <sql>`, which plans the statement and evaluates
        nothing (never ANALYZE: the statement itself runs next, in the dry-run's rolled-back
        transaction, and gives the real count). Run inside the open transaction with
        `run_statement`'s guards, in a savepoint, under the batch's `statement_timeout`.

        Returns (rows, None), or (None, the error's first line) when EXPLAIN failed (a
        timeout, an object the statement names that does not exist yet): an estimate is
        context for the review and never fails the batch. The rows are those of the plan node
        under `ModifyTable` (PostgreSQL reports `rows=0` on ModifyTable itself unless the
        statement has RETURNING); `estimated_rows` reads them."""
        read = self._read_in_savepoint("EXPLAIN (FORMAT JSON) " + sql, params)
        if isinstance(read, str):
            return None, read
        _names, rows = read
        try:
            return estimated_rows(rows[0][0]), None
        except (IndexError, KeyError, TypeError, ValueError) as exc:
            return None, f"unreadable EXPLAIN output: {exc}"

    def _read_in_savepoint(
        self, sql: str, params: Mapping[str, Any] | None
    ) -> tuple[list[str], list[tuple[Any, ...]]] | str:
        """`sql` run as a plan statement in a savepoint: (column names, rows), or the
        error's first line with the savepoint rolled back (the batch goes on as it was)."""
        self._require_not_cancelled()
        self.require_transaction(sql)
        cursor = self.raw.cursor()
        with self._own_control():
            self.raw.execute("SAVEPOINT hxo_sample")
        self._denied = None
        self._plan = True
        try:
            if self.vendor == SQLITE:
                cursor.execute(sql, dict(params or {}))
            else:
                query = sql if params is None else to_driver_sql(sql, self.vendor)
                cursor.execute(query, None if params is None else dict(params), binary=True)
            names = [d[0] for d in cursor.description or []]
            rows = [tuple(r) for r in cursor.fetchall()]
        except Exception as exc:
            self._plan = False
            with self._own_control():
                self.raw.execute("ROLLBACK TO SAVEPOINT hxo_sample")
                self.raw.execute("RELEASE SAVEPOINT hxo_sample")
            self.require_transaction(sql)
            self._require_not_cancelled()
            return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        finally:
            self._plan = False
        with self._own_control():
            self.raw.execute("RELEASE SAVEPOINT hxo_sample")
        self.require_transaction(sql)
        self.require_session(sql)
        self._require_not_cancelled()
        return names, rows

    def primary_key(self, table: str) -> list[str]:
        """The primary key's columns of `table` in key order ([] when it has none)."""
        if self.vendor == SQLITE:
            rows = self.execute(
                "SELECT name FROM pragma_table_info(:t) WHERE pk > 0 ORDER BY pk", {"t": table}
            ).fetchall()
        else:
            rows = self.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                "WHERE i.indrelid = to_regclass(:t) AND i.indisprimary "
                "ORDER BY array_position(i.indkey::int2[], a.attnum)",
                {"t": quote_identifier(table)},
            ).fetchall()
        return [r[0] for r in rows]

    @property
    def server_version(self) -> int | None:
        """PostgreSQL's `server_version_num` (160002 for 16.2); None on SQLite."""
        if self.vendor != POSTGRESQL:
            return None
        return int(self.raw.info.server_version)

    def run_outside_transaction(
        self, sql: str, *, statement_timeout_ms: int = 0, lock_timeout_ms: int = 0
    ) -> int:
        """Run one plan statement that cannot run in a transaction (CREATE INDEX
        CONCURRENTLY, VACUUM...: `sqlpolicy.outside_transaction`) alone, in autocommit; rows
        it changed (>= 0). Its effect is committed when it returns.

        The same guards as `run_statement`, turned around: no transaction may be open before
        it nor left open after it (a statement that opened one is rolled back:
        TRANSACTION_ENDED); on PostgreSQL the timeouts are set for the session (there is no
        transaction to SET LOCAL them in) and put back to the server's defaults afterwards,
        and the session must still have them and its role after the statement
        (SESSION_CHANGED); SQLite's authorizer and statement deadline (progress handler)
        apply. Raises ComponentError(CANCELLED) after `cancel()`, the driver's error otherwise.
        """
        self._require_not_cancelled()
        if self.in_transaction():
            self.rollback()
            raise ComponentError(
                f"{sql[:80]!r} must run outside a transaction, and one is open",
                code=TRANSACTION_ENDED,
                permanent=True,
                path="manifest",
            )
        if self.vendor == SQLITE:
            self._deadline = (
                time.monotonic() + statement_timeout_ms / 1000 if statement_timeout_ms else None
            )
        else:
            for name, value in (
                ("statement_timeout", statement_timeout_ms),
                ("lock_timeout", lock_timeout_ms),
            ):
                if value:
                    self.execute(
                        "SELECT set_config(:n, :v, false)", {"n": name, "v": f"{int(value)}ms"}
                    )
            self.expect_session()
        cursor = self.raw.cursor()
        self._denied = None
        self._plan = True
        if self.vendor == SQLITE and outside_transaction(sql, SQLITE) is None:
            # SQLite refuses only VACUUM in a transaction; nothing else comes here.
            raise ComponentError(
                f"{sql[:80]!r} is not a statement that must run outside a transaction",
                code=FORBIDDEN_STATEMENT,
                permanent=True,
                path="manifest",
            )
        self._vacuum = self.vendor == SQLITE
        try:
            if self.vendor == SQLITE:
                cursor.execute(sql)
            else:
                # The extended protocol, as in `run_statement`: one statement per message.
                # A single Parse/Bind/Execute/Sync is not a transaction block.
                cursor.execute(sql, None, binary=True)
        except Exception as exc:
            refused = self._refusal(exc)
            if refused is not None:
                raise refused from None
            raise
        finally:
            self._plan = False
            self._vacuum = False
            self._deadline = None
        rows = max(cursor.rowcount or 0, 0)
        if self.in_transaction():
            self.rollback()
            raise ComponentError(
                f"a statement run outside a transaction left one open ({sql[:80]!r}); it was "
                "rolled back",
                code=TRANSACTION_ENDED,
                permanent=True,
                path="manifest",
            )
        if self.vendor == POSTGRESQL:
            try:
                self.require_session(sql)
            finally:
                self._session = None
                self.execute("SELECT set_config('statement_timeout', '0', false)")
                self.execute("SELECT set_config('lock_timeout', '0', false)")
        self._require_not_cancelled()
        return rows

    def explain_statement(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        """Check one plan statement without running it (PostgreSQL): `EXPLAIN <sql>`, which
        parses, analyses and plans it in the open transaction (tables, columns, functions
        and types must exist) but evaluates nothing. Same guards as `run_statement`."""
        self.run_statement("EXPLAIN " + sql, params)

    def _read_session(self) -> tuple[str, ...]:
        row = self.raw.execute(PG_SESSION_SQL).fetchone()
        return tuple(str(v) for v in row)

    def require_session(self, sql: str) -> None:
        """PostgreSQL: the session still has the timeouts `begin` set and its role; else
        rolled back and ComponentError(SESSION_CHANGED). One query, after each statement."""
        if self.vendor != POSTGRESQL or self._session is None:
            return
        now = self._read_session()
        if now == self._session:
            return
        changed = ", ".join(
            f"{name} {was!r} -> {new!r}"
            for name, was, new in zip(PG_SESSION_NAMES, self._session, now, strict=True)
            if was != new
        )
        self.rollback()
        raise ComponentError(
            f"a plan statement changed the session HXO set up ({changed}) in {sql[:80]!r}; "
            "the batch was stopped and rolled back",
            code=SESSION_CHANGED,
            permanent=True,
            path="manifest",
        )

    def expect_session(self) -> None:
        """Record the session's current timeouts and role as what every later plan statement
        must leave (PostgreSQL; called by `begin` and after HXO changes a timeout itself)."""
        if self.vendor == POSTGRESQL:
            self._session = self._read_session()

    def _refusal(self, exc: Exception) -> ComponentError | None:
        """The engine's own refusal of a plan statement as FORBIDDEN_STATEMENT, or None."""
        text = str(exc)
        if isinstance(exc, sqlite3.DatabaseError) and self._denied:
            what = self._denied
        elif isinstance(exc, sqlite3.ProgrammingError) and "one statement at a time" in text:
            what = "more than one statement in one call"  # CPython's sqlite3 module
        elif type(exc).__name__ == "SyntaxError" and "multiple commands" in text:
            # PostgreSQL: "cannot insert multiple commands into a prepared statement".
            what = "more than one statement in one call"
        else:
            return None
        return ComponentError(
            f"the target refused {what} in a plan statement",
            code=FORBIDDEN_STATEMENT,
            permanent=True,
            path="manifest",
        )

    def in_transaction(self) -> bool:
        if self.vendor == SQLITE:
            return bool(self.raw.in_transaction)
        from psycopg.pq import TransactionStatus

        return self.raw.info.transaction_status == TransactionStatus.INTRANS

    def require_transaction(self, sql: str) -> None:
        if not self.in_transaction():
            self.rollback()
            raise ComponentError(
                "a plan statement ran outside the batch's transaction or ended it "
                f"({sql[:80]!r}); the batch was stopped and rolled back",
                code=TRANSACTION_ENDED,
                permanent=True,
                path="manifest",
            )

    def executemany(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        cursor = self.raw.cursor()
        cursor.executemany(to_driver_sql(sql, self.vendor), [dict(r) for r in rows])

    def scalar(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        row = self.execute(sql, params).fetchone()
        return None if row is None else row[0]

    @contextlib.contextmanager
    def _own_control(self) -> Iterator[None]:
        self._control = True
        try:
            yield
        finally:
            self._control = False

    def begin(
        self, *, statement_timeout_ms: int = 0, lock_timeout_ms: int = 0, idle_timeout_ms: int = 0
    ) -> None:
        """Start a transaction. On PostgreSQL the timeouts are SET LOCAL for it;
        `idle_timeout_ms` is `idle_in_transaction_session_timeout`: a client that stops
        talking inside the transaction (a paused worker) has its session ended by the server,
        so its open transaction can never commit later. SQLite has no server to do that."""
        if self.vendor == SQLITE:
            # IMMEDIATE takes the write lock up front, so the ledger check and the batch are
            # serialised against other writers instead of failing on lock upgrade.
            with self._own_control():
                self.raw.execute("BEGIN IMMEDIATE")
            self._deadline = (
                time.monotonic() + statement_timeout_ms / 1000 if statement_timeout_ms else None
            )
        else:
            self.raw.execute("BEGIN")
            # SET does not take bound parameters; set_config(..., true) is SET LOCAL that does.
            if statement_timeout_ms:
                self.execute(
                    "SELECT set_config('statement_timeout', :v, true)",
                    {"v": f"{int(statement_timeout_ms)}ms"},
                )
            if lock_timeout_ms:
                self.execute(
                    "SELECT set_config('lock_timeout', :v, true)",
                    {"v": f"{int(lock_timeout_ms)}ms"},
                )
            if idle_timeout_ms:
                self.execute(
                    "SELECT set_config('idle_in_transaction_session_timeout', :v, true)",
                    {"v": f"{int(idle_timeout_ms)}ms"},
                )
            self.expect_session()

    def commit(self) -> None:
        with self._own_control():
            self.raw.execute("COMMIT")
        self._deadline = None
        self._session = None

    def rollback(self) -> None:
        with contextlib.suppress(Exception), self._own_control():
            self.raw.execute("ROLLBACK")
        self._deadline = None
        self._session = None

    def _sqlite_progress(self) -> int:
        # A non-zero return interrupts the running statement: SQLite's statement timeout.
        return 1 if self._deadline is not None and time.monotonic() > self._deadline else 0

    def _sqlite_authorize(
        self, action: int, arg1: str | None, arg2: str | None, _db: str | None, _src: str | None
    ) -> int:
        """SQLite's authorizer callback: SQLITE_OK, or SQLITE_DENY with the reason kept."""
        denied = None
        if action in (sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT):
            # VACUUM runs its own transaction inside (a BEGIN the authorizer sees).
            if not self._control and not self._vacuum:
                denied = f"transaction control ({arg1 or ''} {arg2 or ''})".replace(" )", ")")
        elif action == sqlite3.SQLITE_ATTACH and self._vacuum and arg1 == "":
            pass  # VACUUM's own temporary database: unnamed, no file a plan could pick
        elif action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            denied = "ATTACH/DETACH (or VACUUM INTO, which attaches its output file)"
        elif action == sqlite3.SQLITE_PRAGMA:
            if (arg1 or "").lower() not in READ_ONLY_PRAGMAS:
                denied = f"PRAGMA {arg1}"
        elif action == sqlite3.SQLITE_FUNCTION:
            if (arg2 or "").lower() in DENIED_SQLITE_FUNCTIONS:
                denied = f"the function {arg2}()"
        elif (
            action
            in (
                sqlite3.SQLITE_READ,
                sqlite3.SQLITE_INSERT,
                sqlite3.SQLITE_UPDATE,
                sqlite3.SQLITE_DELETE,
            )
            and (arg1 or "").lower() in DENIED_SQLITE_TABLES
        ):
            denied = f"the table {arg1}"
        elif self._plan and not self._vacuum and action in LEDGER_GUARDED_ACTIONS:
            # (VACUUM copies every table, the ledger's too, as it is: not a plan's write.)
            for name in (arg1, arg2):
                if (name or "").lower() in LEDGER_TABLE_NAMES:
                    denied = f"HXO's ledger table {name}"
                    break
        if denied is None:
            return sqlite3.SQLITE_OK
        self._denied = denied
        return sqlite3.SQLITE_DENY

    # --- catalogue: identifiers are checked against these, never trusted from a plan ---

    def table_exists(self, table: str) -> bool:
        if self.vendor == SQLITE:
            sql = "SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view') AND name = :t"
        else:
            sql = (
                "SELECT 1 FROM information_schema.tables "
                "WHERE table_schema = current_schema() AND table_name = :t"
            )
        return self.scalar(sql, {"t": table}) is not None

    def columns(self, table: str) -> dict[str, str]:
        """Column name → declared type (upper case) of `table`, which must exist."""
        if self.vendor == SQLITE:
            rows = self.execute("SELECT name, type FROM pragma_table_info(:t)", {"t": table})
        else:
            rows = self.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = :t "
                "ORDER BY ordinal_position",
                {"t": table},
            )
        return {name: (typ or "").upper() for name, typ in rows.fetchall()}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.raw.close()


def quote_identifier(name: str) -> str:
    """A quoted SQL identifier; callers check `name` against the catalogue first."""
    return '"' + name.replace('"', '""') + '"'


# --- Permanent or transient: what a driver's error says about trying again -----------------

# SQLSTATE classes (the first two characters) whose errors do not go away by themselves: 42
# syntax error or access rule violation (undefined column/table/function, insufficient
# privilege), 23 integrity constraint violation, 22 data exception, 0A feature not supported,
# 21 cardinality violation, 25 invalid transaction state (e.g. a statement that cannot run in
# a transaction block), 2B/2D dependent objects / transaction termination, 44 WITH CHECK
# OPTION. Everything else (40 serialization failure/deadlock, 55P03 lock not available, 57
# query cancelled or shutdown, 08 connection, 53 resources, 58/XX system) is transient.
PG_PERMANENT_CLASSES = frozenset({"42", "23", "22", "0A", "21", "25", "2B", "2D", "44"})
# SQLite result codes (`sqlite_errorname`, the primary code before any "_" suffix) whose
# errors do not go away by themselves: SQLITE_ERROR is the generic code of a syntax error and
# of "no such table/column/function"; CONSTRAINT covers NOT NULL, CHECK, UNIQUE and FOREIGN
# KEY; MISMATCH a datatype mismatch; AUTH a refusal by the authorizer. BUSY/LOCKED ("database
# is locked"), INTERRUPT (HXO's progress handler), IOERR, SCHEMA, FULL, NOMEM... are
# transient.
SQLITE_PERMANENT_NAMES = frozenset(
    {
        "SQLITE_ERROR",
        "SQLITE_CONSTRAINT",
        "SQLITE_MISMATCH",
        "SQLITE_AUTH",
        "SQLITE_TOOBIG",
        "SQLITE_RANGE",
        "SQLITE_READONLY",
    }
)


@dataclasses.dataclass(frozen=True)
class DbErrorClass:
    """What a database driver's error says: `permanent` (trying again cannot help) and the
    driver's own name for it (`sqlstate` on PostgreSQL, e.g. "42703"; `sqlite_errorname` on
    SQLite, e.g. "SQLITE_CONSTRAINT_NOTNULL"; "" when the driver gives none)."""

    permanent: bool
    driver_code: str = ""


def classify_db_error(exc: BaseException) -> DbErrorClass:
    """Permanent or transient, from the driver's error class and code, never its message
    (unless the driver gives nothing else: sqlite3 before Python 3.11).

    PostgreSQL (psycopg 3): by SQLSTATE class (`PG_PERMANENT_CLASSES`); a client-side
    `ProgrammingError`/`DataError`/`IntegrityError` without a SQLSTATE (e.g. a missing query
    parameter) is permanent, a connection lost (`OperationalError` without one) transient.
    SQLite (sqlite3): by `sqlite_errorname` (`SQLITE_PERMANENT_NAMES`); `IntegrityError`,
    `DataError` and `ProgrammingError` are permanent. Any other exception is transient, as
    before this classification existed: it is retried while attempts are left.
    """
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", None) or ""
        if name:
            primary = "_".join(name.split("_")[:2])
            return DbErrorClass(primary in SQLITE_PERMANENT_NAMES, name)
        permanent = isinstance(
            exc, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.ProgrammingError
        )
        if not permanent and isinstance(exc, sqlite3.OperationalError):
            # No result code (a driver-side error): only its text tells.
            text = str(exc)
            permanent = text.startswith(("no such ", "near ")) or "syntax error" in text
        return DbErrorClass(permanent, "")
    psycopg = _psycopg()
    if psycopg is not None and isinstance(exc, psycopg.Error):
        sqlstate = exc.sqlstate or ""
        if sqlstate:
            return DbErrorClass(sqlstate[:2] in PG_PERMANENT_CLASSES, sqlstate)
        client_side = (psycopg.ProgrammingError, psycopg.DataError, psycopg.IntegrityError)
        return DbErrorClass(isinstance(exc, client_side), "")
    return DbErrorClass(False, "")


def _psycopg() -> Any:
    """The psycopg module, or None where it is not installed (SQLite-only installs)."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return None
    return psycopg


@contextlib.contextmanager
def connect(
    name_or_target: str | Target,
    *,
    lock_timeout_ms: int = 5_000,
    create: bool = False,
    path: str = "params.target",
) -> Iterator[TargetConnection]:
    """A connection to a registered target. `create` lets a SQLite file be made (hxo_demo)."""
    target = (
        name_or_target
        if isinstance(name_or_target, Target)
        else get_target(name_or_target, path=path)
    )
    conn = _open(target, lock_timeout_ms=lock_timeout_ms, create=create, path=path)
    try:
        yield conn
    finally:
        conn.close()


def _open(target: Target, *, lock_timeout_ms: int, create: bool, path: str) -> TargetConnection:
    if target.vendor == SQLITE:
        assert target.sqlite_path is not None
        if create:
            target.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        # mode=rw: opening must never create an empty database file as a side effect.
        mode = "rwc" if create else "rw"
        uri = f"{target.sqlite_path.as_uri()}?mode={mode}"
        try:
            raw = sqlite3.connect(
                uri,
                uri=True,
                timeout=max(lock_timeout_ms, 1) / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.OperationalError as exc:
            raise ComponentError(
                f"target {target.name!r} cannot be opened ({target.display}): {exc}",
                code=TARGET_UNAVAILABLE,
                path=path,
            ) from None
        conn = TargetConnection(target, raw)
        raw.set_progress_handler(conn._sqlite_progress, 10_000)
        raw.set_authorizer(conn._sqlite_authorize)
        if hasattr(raw, "enable_load_extension"):  # only in builds that can load extensions
            raw.enable_load_extension(False)
        return conn
    import psycopg

    kwargs = dict(target.pg_kwargs)
    kwargs.setdefault("connect_timeout", 10)
    kwargs.setdefault("application_name", "hxo")
    try:
        raw = psycopg.connect(autocommit=True, **kwargs)
    except psycopg.Error as exc:
        raise ComponentError(
            f"target {target.name!r} is unreachable ({target.display}): {exc}",
            code=TARGET_UNAVAILABLE,
            path=path,
        ) from None
    if raw.info.parameter_status("is_superuser") == "on" and not getattr(
        settings, "HXO_ALLOW_SUPERUSER_TARGETS", False
    ):
        role = raw.info.user
        raw.close()
        raise ComponentError(
            f"target {target.name!r} connects as {role!r}, a PostgreSQL superuser, who can read "
            "the server's files, run programs and reach every database; give HXO a role with "
            "only the rights its migrations need (or set HXO_ALLOW_SUPERUSER_TARGETS=1 on a "
            "throwaway server)",
            code=SUPERUSER_TARGET,
            permanent=True,
            path=path,
        )
    return TargetConnection(target, raw)

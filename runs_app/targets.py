"""Database targets: databases registered by name in `settings.HXO_DATABASE_TARGETS`.

A plan names a target; the URL comes from settings only, never from a plan, so a plan author
cannot point an executor at an arbitrary server. The database HXO itself runs on is not a
target unless an operator registers it as one. Connections are plain DB-API (sqlite3,
psycopg 3) with one placeholder style for callers: named `:param`, converted here, so SQL is
always executed with bound parameters.
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

UNKNOWN_TARGET = "unknown_target"
TARGET_UNAVAILABLE = "target_unavailable"
UNSUPPORTED_TARGET = "unsupported_target"

SQLITE = "sqlite"
POSTGRESQL = "postgresql"


def target_names() -> list[str]:
    return sorted(settings.HXO_DATABASE_TARGETS)


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    vendor: str
    # sqlite: the database file; postgresql: psycopg connect() keyword arguments.
    sqlite_path: Path | None = None
    pg_kwargs: tuple[tuple[str, Any], ...] = ()

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


def get_target(name: object, *, path: str = "params.target") -> Target:
    """The registered target `name`, or ComponentError(unknown_target)."""
    registered = settings.HXO_DATABASE_TARGETS
    if not isinstance(name, str) or name not in registered:
        known = ", ".join(sorted(registered)) or "none"
        raise ComponentError(
            f"{name!r} is not a registered database target (registered: {known})",
            code=UNKNOWN_TARGET,
            path=path,
        )
    import dj_database_url

    try:
        cfg = dj_database_url.parse(registered[name])
    except Exception as exc:  # dj_database_url raises several types for bad URLs
        raise ComponentError(
            f"target {name!r} has an invalid URL in settings: {exc}",
            code=UNSUPPORTED_TARGET,
            path=path,
        ) from None
    engine = cfg.get("ENGINE", "")
    if engine.endswith("sqlite3"):
        db_path = Path(str(cfg["NAME"]))
        if not db_path.is_absolute():
            db_path = Path(settings.BASE_DIR) / db_path
        return Target(name=name, vendor=SQLITE, sqlite_path=db_path)
    if engine.endswith("postgresql"):
        kwargs: dict[str, Any] = {"dbname": cfg["NAME"]}
        for key, arg in (("HOST", "host"), ("PORT", "port"), ("USER", "user")):
            if cfg.get(key):
                kwargs[arg] = str(cfg[key])
        if cfg.get("PASSWORD"):
            kwargs["password"] = cfg["PASSWORD"]
        for key, value in (cfg.get("OPTIONS") or {}).items():
            kwargs[key] = value
        return Target(name=name, vendor=POSTGRESQL, pg_kwargs=tuple(sorted(kwargs.items())))
    raise ComponentError(
        f"target {name!r} uses {engine or 'an unknown engine'}; "
        "SQLite and PostgreSQL are supported",
        code=UNSUPPORTED_TARGET,
        path=path,
    )


# --- SQL text: named parameters and statement boundaries ----------------------------------


@dataclasses.dataclass(frozen=True)
class SqlShape:
    """What a light lexer sees in one SQL text, skipping literals, quoted names and comments."""

    params: tuple[str, ...]  # named parameters in order of appearance (repeats kept)
    param_spans: tuple[tuple[int, int], ...]
    statements: int  # statements separated by ';' (a trailing ';' does not count)
    first_word: str


def sql_shape(sql: str) -> SqlShape:
    params: list[str] = []
    spans: list[tuple[int, int]] = []
    statements = 0
    has_content = False
    first_word = ""
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":
            end = sql.find(c, i + 1)
            while end != -1 and end + 1 < n and sql[end + 1] == c:  # doubled quote escapes
                end = sql.find(c, end + 2)
            i = n if end == -1 else end + 1
            has_content = True
            continue
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end == -1 else end + 1
            continue
        if sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end == -1 else end + 2
            continue
        if c == "$":
            # PostgreSQL dollar quoting: $tag$ ... $tag$
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            if j < n and sql[j] == "$":
                tag = sql[i : j + 1]
                end = sql.find(tag, j + 1)
                i = n if end == -1 else end + len(tag)
                has_content = True
                continue
        if c == ":":
            if sql.startswith("::", i):  # a PostgreSQL cast, not a parameter
                i += 2
                continue
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            if j > i + 1 and not sql[i + 1].isdigit():
                params.append(sql[i + 1 : j])
                spans.append((i, j))
                i = j
                has_content = True
                continue
        if c == ";":
            if has_content:
                statements += 1
            has_content = False
            i += 1
            continue
        if not c.isspace():
            if not has_content and not first_word and (c.isalpha() or c == "("):
                j = i
                while j < n and sql[j].isalpha():
                    j += 1
                first_word = sql[i:j].upper()
            has_content = True
        i += 1
    if has_content:
        statements += 1
    return SqlShape(tuple(params), tuple(spans), statements, first_word)


def to_driver_sql(sql: str, vendor: str) -> str:
    """`:name` placeholders in the driver's style. sqlite3 takes `:name` as it is."""
    if vendor == SQLITE:
        return sql
    shape = sql_shape(sql)
    out: list[str] = []
    last = 0
    for (start, end), name in zip(shape.param_spans, shape.params, strict=True):
        # psycopg reads every '%' as a placeholder marker, literals included.
        out.append(sql[last:start].replace("%", "%%"))
        out.append(f"%({name})s")
        last = end
    out.append(sql[last:].replace("%", "%%"))
    return "".join(out)


# --- Connections --------------------------------------------------------------------------


class TargetConnection:
    """One DB-API connection in autocommit mode; transactions are explicit (begin/commit)."""

    def __init__(self, target: Target, raw: Any) -> None:
        self.target = target
        self.vendor = target.vendor
        self.raw = raw
        self._deadline: float | None = None

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        cursor = self.raw.cursor()
        if params is None:
            cursor.execute(sql)
        else:
            cursor.execute(to_driver_sql(sql, self.vendor), dict(params))
        return cursor

    def executemany(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        cursor = self.raw.cursor()
        cursor.executemany(to_driver_sql(sql, self.vendor), [dict(r) for r in rows])

    def scalar(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        row = self.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def begin(self, *, statement_timeout_ms: int = 0, lock_timeout_ms: int = 0) -> None:
        if self.vendor == SQLITE:
            # IMMEDIATE takes the write lock up front, so the ledger check and the batch are
            # serialised against other writers instead of failing on lock upgrade.
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

    def commit(self) -> None:
        self.raw.execute("COMMIT")
        self._deadline = None

    def rollback(self) -> None:
        with contextlib.suppress(Exception):
            self.raw.execute("ROLLBACK")
        self._deadline = None

    def _sqlite_progress(self) -> int:
        # A non-zero return interrupts the running statement: SQLite's statement timeout.
        return 1 if self._deadline is not None and time.monotonic() > self._deadline else 0

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
    return TargetConnection(target, raw)

"""What SQL a plan may run on a database target: the one list of forbidden statements.

A `deploy.migrate` stage carries SQL written by a plan author. HXO runs every batch in its own
transaction (rolled back for a dry-run, committed with a ledger row for an apply), so a batch
must never end that transaction, reach another database or the server's files, change who it
runs as, or load code into the server. This module splits an item into statements with a real
parser, classifies each one and names what is forbidden; `docs/sql-policy.md` lists the same
rules for readers.

Parsers, and why:
- PostgreSQL: pglast, i.e. libpg_query, PostgreSQL's own parser. Splitting and classification
  are exactly the server's: `E'\\''`, dollar quoting, nested comments and `U&''` strings are
  read as the server reads them. Named parameters (`:start`) are found with PostgreSQL's own
  scanner (`pglast.parser.scan`).
- SQLite: statements end where SQLite's own tokenizer says they do (`sqlite3.complete_statement`
  is `sqlite3_complete()`, which also knows that `;` inside a `CREATE TRIGGER ... END` body
  does not end the statement). Each statement is then read with sqlglot's tokenizer for the
  SQLite dialect (SQLite's quoting: `''` escapes, no backslash escapes, non-nesting comments,
  `"x"`, `[x]` and `` `x` `` identifiers) and classified by its leading keyword, which in
  SQLite's grammar decides the statement type. sqlglot's *parser* is not used to classify
  SQLite statements (it reads `END`, `SAVEPOINT a` and `RELEASE a` as expressions and splits
  trigger bodies); it reads only a backfill, ordinary DML, to check it stays in its key range.

The policy is an allow-list of statement types (queries, DML and DDL on schema objects) with a
named rule for each refused class, plus a list of functions that reach outside the target.
Validation (`BySqlBatch.validate_params`) and partitioning refuse a finding with
`forbidden_statement` and the item's path; execution has its own guards that do not depend on
this module (`runs_app.targets.TargetConnection.run_statement`: SQLite authorizer, PostgreSQL
extended protocol, a check that the batch's transaction is still open after each statement).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import sqlite3
from collections.abc import Iterator
from typing import Any

from blueprints_app.registry import ComponentError

FORBIDDEN_STATEMENT = "forbidden_statement"
INVALID_SQL = "invalid_sql"
# A backfill whose top-level WHERE does not confine it to its batch's key range.
BACKFILL_NOT_CONFINED = "backfill_not_confined"

SQLITE = "sqlite"
POSTGRESQL = "postgresql"

# An item is one statement; this many ';' means something else is going on, and bounds the
# work of asking SQLite's tokenizer where statements end (one call per candidate ';').
MAX_SEMICOLONS = 2_000
MAX_ERRORS_PER_ITEM = 3
# What a backfill may be (its leading statement type; WITH ... UPDATE reads as UPDATE on
# PostgreSQL and as WITH on SQLite).
BACKFILL_VERBS = {"UPDATE", "DELETE", "INSERT", "WITH"}


@dataclasses.dataclass(frozen=True)
class Rule:
    """One class of forbidden SQL: a stable name, a title and why it is refused."""

    name: str
    title: str
    why: str


_RULES = [
    Rule(
        "transaction_control",
        "Transaction control",
        "HXO runs every batch in its own transaction (rolled back for a dry-run); BEGIN, "
        "COMMIT, END, ROLLBACK, SAVEPOINT, RELEASE or PREPARE TRANSACTION would end or split "
        "it, and whatever follows would run for real. Output of `manage.py sqlmigrate` can be "
        "used as it is once its BEGIN;/COMMIT; wrapper is removed.",
    ),
    Rule(
        "multiple_statements",
        "More than one statement in one item",
        "Each item is exactly one statement, so what is reviewed is what runs; "
        "give each statement its own item.",
    ),
    Rule(
        "other_databases",
        "Reaching another database",
        "ATTACH/DETACH, dblink, foreign data wrappers, foreign servers, user mappings, foreign "
        "tables and subscriptions open connections or files beyond the registered target.",
    ),
    Rule(
        "server_files",
        "The server's files and programs",
        "COPY (to or from a file or a program; STDIN/STDOUT cannot be streamed by a batch "
        "either), VACUUM INTO, tablespaces and functions that read, list or write the "
        "server's files (pg_read_file, pg_ls_dir, lo_import, lo_export, ...).",
    ),
    Rule(
        "vacuum",
        "VACUUM INTO",
        "VACUUM INTO writes a copy of the database to a file; VACUUM itself is allowed and "
        "runs alone, outside a transaction.",
    ),
    Rule(
        "pragma",
        "PRAGMA statements",
        "PRAGMAs change how SQLite reads and writes the database (writable_schema, "
        "journal_mode, foreign_keys...); read-only pragma table functions such as "
        "pragma_table_info() stay available in queries.",
    ),
    Rule(
        "extensions",
        "Loading code into the server",
        "load_extension(), LOAD, CREATE/ALTER/DROP EXTENSION and CREATE LANGUAGE load native "
        "code or change what the server can do.",
    ),
    Rule(
        "session",
        "Session settings and identity",
        "SET, RESET, SET ROLE, SET SESSION AUTHORIZATION, set_config(), DISCARD, the "
        "pg_settings view and a function's SET/RESET clause (which applies whenever the "
        "function runs) change who the batch runs as or the timeouts HXO set for it.",
    ),
    Rule(
        "server_administration",
        "Server administration",
        "ALTER SYSTEM, CREATE/ALTER/DROP DATABASE, roles and role membership, REASSIGN/DROP "
        "OWNED, CHECKPOINT, event triggers, publications and functions that signal or control "
        "the server (pg_terminate_backend, pg_reload_conf, replication slots...).",
    ),
    Rule(
        "dynamic_sql",
        "Code HXO cannot inspect",
        "DO blocks, PREPARE/EXECUTE, dynamic EXECUTE in PL/pgSQL (RETURN QUERY EXECUTE "
        "included), functions that run a query given as text (query_to_xml, ts_stat, "
        "ts_rewrite, crosstab...) and function bodies in languages other than SQL and "
        "PL/pgSQL would run statements this policy never saw.",
    ),
    Rule(
        "notifications",
        "LISTEN and NOTIFY",
        "LISTEN, UNLISTEN, NOTIFY and pg_notify() talk to other sessions; a migration has no "
        "use for them.",
    ),
    Rule(
        "system_catalog",
        "Writing the system catalogs",
        "DML or DDL on pg_catalog, information_schema or SQLite's sqlite_* tables, and views "
        "over the system catalogs (a view forwards writes to them): pg_settings, for one, "
        "turns an UPDATE into set_config() and would lift the timeouts HXO set.",
    ),
    Rule(
        "ledger_tables",
        "HXO's migration ledger",
        "The ledger tables HXO keeps in the target (hxo_ledger, hxo_ledger_batches, "
        "hxo_ledger_intervals, hxo_ledger_backfills) are what makes a batch apply exactly "
        "once; plan SQL may not name them at all, to read, write, drop, alter or trigger on.",
    ),
    Rule(
        "not_a_migration_statement",
        "Other statements",
        "Anything that is not a query, DML or DDL on schema objects (EXPLAIN, SHOW, cursors, "
        "base types, text search parsers and templates, conversions, transforms: objects "
        "bound to C functions, ...): the allowed set is kept small on purpose.",
    ),
]
RULES: dict[str, Rule] = {r.name: r for r in _RULES}

SQLMIGRATE_HINT = (
    "HXO wraps every batch in its own transaction (rolled back for a dry-run), so a batch may "
    "not begin, end or split one; if this came from `manage.py sqlmigrate`, remove its "
    "BEGIN;/COMMIT; wrapper and keep the statements"
)

# --- functions that reach outside the target, by name (lower case, last name component) ----

PG_FUNCTIONS: dict[str, str] = {
    **dict.fromkeys(
        (
            "pg_read_file",
            "pg_read_binary_file",
            "pg_stat_file",
            "lo_import",
            "lo_export",
            "pg_file_write",
            "pg_file_rename",
            "pg_file_unlink",
            "pg_file_sync",
            "pg_logdir_ls",
        ),
        "server_files",
    ),
    **dict.fromkeys(
        (
            "pg_terminate_backend",
            "pg_cancel_backend",
            "pg_reload_conf",
            "pg_rotate_logfile",
            "pg_promote",
            "pg_switch_wal",
            "pg_create_restore_point",
            "pg_backup_start",
            "pg_backup_stop",
            "pg_start_backup",
            "pg_stop_backup",
            "pg_log_backend_memory_contexts",
            "pg_replication_origin_create",
            "pg_replication_origin_drop",
            "pg_logical_emit_message",
        ),
        "server_administration",
    ),
    **dict.fromkeys(("set_config",), "session"),
    **dict.fromkeys(("pg_notify",), "notifications"),
    **dict.fromkeys(
        (
            "query_to_xml",
            "query_to_xmlschema",
            "query_to_xml_and_xmlschema",
            "ts_stat",
            # ts_rewrite(tsquery, text) runs the text as a query; its 3-argument form is
            # harmless but no migration needs it, and a name bound to an operator has no
            # argument count to tell them apart.
            "ts_rewrite",
            # tablefunc and xml2 build and run SQL from their text arguments.
            "connectby",
            "xpath_table",
        ),
        "dynamic_sql",
    ),
}
# Whole families by prefix: dblink_*, pg_ls_*dir, pg_*_replication_slot, postgres_fdw_*.
PG_FUNCTION_PREFIXES: tuple[tuple[str, str], ...] = (
    ("dblink", "other_databases"),
    ("postgres_fdw", "other_databases"),
    ("pg_ls_", "server_files"),
    ("pg_create_logical_replication_slot", "server_administration"),
    ("pg_create_physical_replication_slot", "server_administration"),
    ("pg_drop_replication_slot", "server_administration"),
    ("pg_copy_", "server_administration"),
    ("crosstab", "dynamic_sql"),  # tablefunc: crosstab(text), crosstab(text, text), ...
    ("pg_background", "dynamic_sql"),  # pg_background_launch(sql text)
)
SQLITE_FUNCTIONS: dict[str, str] = {
    "load_extension": "extensions",
    # Registers a tokenizer from a raw pointer (memory-unsafe); off unless compiled in.
    "fts3_tokenizer": "extensions",
    # The sqlite3 shell's file functions, should an extension ever provide them.
    "readfile": "server_files",
    "writefile": "server_files",
    "edit": "server_files",
}
# HXO's own tables in a target: the migration ledger (runs_app.kinds.migrate creates and
# writes them; this is the one list). Plan SQL may not name them in any position.
LEDGER_TABLE = "hxo_ledger"  # version 1: read for the rows it recorded, never written
BATCHES_TABLE = "hxo_ledger_batches"
BACKFILLS_TABLE = "hxo_ledger_backfills"
INTERVALS_TABLE = "hxo_ledger_intervals"
LEDGER_TABLE_NAMES = frozenset({LEDGER_TABLE, BATCHES_TABLE, BACKFILLS_TABLE, INTERVALS_TABLE})
# PostgreSQL schemas holding the system catalogs; an unqualified `pg_*` relation resolves to
# pg_catalog first (it is searched before the search_path), so it counts as a catalog too.
PG_CATALOG_SCHEMAS = {"pg_catalog", "information_schema", "pg_toast"}
# The catalog view whose UPDATE rule calls set_config(): refused wherever it is named.
PG_SETTINGS_VIEW = "pg_settings"

# Languages whose bodies HXO can read; a function in any other language is refused.
PG_LANGUAGES = {"sql", "plpgsql"}


def pg_function_rule(name: str) -> str | None:
    """The rule a call of PostgreSQL function `name` breaks, or None."""
    name = name.lower()
    if name in PG_FUNCTIONS:
        return PG_FUNCTIONS[name]
    for prefix, rule in PG_FUNCTION_PREFIXES:
        if name.startswith(prefix):
            return rule
    return None


# --- results ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Finding:
    """One forbidden thing in one statement: the rule it breaks and what it was."""

    rule: str
    what: str

    def message(self, statement: int, total: int) -> str:
        where = f"statement {statement + 1} of {total}: " if total > 1 else ""
        if self.rule == "transaction_control":
            return f"{where}{self.what} is transaction control. {SQLMIGRATE_HINT}"
        return f"{where}{self.what} is refused ({RULES[self.rule].title}): {RULES[self.rule].why}"


@dataclasses.dataclass(frozen=True)
class Statement:
    """One statement of an item: its leading keyword(s) and what in it is forbidden."""

    verb: str
    findings: tuple[Finding, ...]


@dataclasses.dataclass(frozen=True)
class Analysis:
    """An item of SQL as the target's own parser reads it.

    `params` are the named `:name` parameters in order of appearance (repeats kept) and
    `param_spans` their `(start, end)` offsets in the text, end exclusive; `other_params` are
    parameters in any other style (`?`, `$1`, `@x`), which plans may not use.
    """

    statements: tuple[Statement, ...]
    params: tuple[str, ...]
    param_spans: tuple[tuple[int, int], ...]
    other_params: tuple[str, ...]

    @property
    def verb(self) -> str:
        return self.statements[0].verb if self.statements else ""


class SqlSyntaxError(ValueError):
    """The target's parser cannot read the text (the message says where)."""


def analyse(sql: str, vendor: str) -> Analysis:
    """Split and classify `sql` (one plan item) for `vendor` ("sqlite" or "postgresql").

    Raises SqlSyntaxError when the parser cannot read it (PostgreSQL: any syntax error;
    SQLite: an unterminated string, identifier or comment, or more than MAX_SEMICOLONS `;`).
    """
    try:
        sql.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate from JSON's "\ud800"
        raise SqlSyntaxError(f"not valid text at offset {exc.start}") from None
    if vendor == POSTGRESQL:
        return _analyse_pg(sql)
    if vendor == SQLITE:
        return _analyse_sqlite(sql)
    raise ValueError(f"unknown vendor {vendor!r}")


def item_errors(
    sql: str,
    vendor: str,
    *,
    path: str,
    backfill: bool = False,
    table: str | None = None,
    key_column: str | None = None,
) -> list[ComponentError]:
    """Everything wrong with one plan item, as ComponentErrors at `path` (empty: it may run).

    A statement-list item is one statement without parameters; a backfill is one UPDATE,
    DELETE or INSERT (optionally behind WITH) using exactly `:start` and `:end`, or `:start`
    and `:last` (inclusive end; runs_app.kinds.migrate). Forbidden
    statements come first (transaction control before the rest, since its message says how
    to fix pasted `sqlmigrate` output), then the statement count, then parameters.
    """
    try:
        found = analyse(sql, vendor)
    except SqlSyntaxError as exc:
        return [
            ComponentError(
                f"the {_vendor_name(vendor)} parser cannot read this: {exc}",
                code=INVALID_SQL,
                permanent=True,
                path=path,
            )
        ]
    errors: list[ComponentError] = []
    total = len(found.statements)
    if total == 0:
        return [
            ComponentError("holds no SQL statement", code=INVALID_SQL, permanent=True, path=path)
        ]
    findings = [(i, f) for i, statement in enumerate(found.statements) for f in statement.findings]
    findings.sort(key=lambda pair: pair[1].rule != "transaction_control")
    for i, finding in findings:
        errors.append(
            ComponentError(
                finding.message(i, total), code=FORBIDDEN_STATEMENT, permanent=True, path=path
            )
        )
    if total > 1:
        verbs = ", ".join(s.verb or "?" for s in found.statements)
        errors.append(
            ComponentError(
                f"holds {total} statements ({verbs}); a backfill is exactly one statement"
                if backfill
                else f"holds {total} statements ({verbs}); give exactly one statement per item",
                code=FORBIDDEN_STATEMENT,
                permanent=True,
                path=path,
            )
        )
    if found.other_params:
        errors.append(
            ComponentError(
                f"uses parameters in a style plans do not take ({', '.join(found.other_params)})"
                "; use :name",
                code=INVALID_SQL,
                permanent=True,
                path=path,
            )
        )
    if backfill:
        if total == 1 and found.verb not in BACKFILL_VERBS:
            errors.append(
                ComponentError(
                    f"a backfill is UPDATE, DELETE or INSERT, not {found.verb or 'this'}",
                    code=INVALID_SQL,
                    permanent=True,
                    path=path,
                )
            )
        if set(found.params) not in ({"start", "end"}, {"start", "last"}):
            errors.append(
                ComponentError(
                    "a backfill uses exactly the parameters :start and :end (exclusive) or "
                    ":start and :last (inclusive: reaches the largest 64-bit key), found "
                    f"{', '.join(sorted(set(found.params))) or 'none'}",
                    code=INVALID_SQL,
                    permanent=True,
                    path=path,
                )
            )
        if not errors and table and key_column:
            problem = backfill_problem(sql, vendor, table, key_column)
            if problem:
                errors.append(
                    ComponentError(
                        f"the backfill is not confined to its batch's key range: {problem}; "
                        f"write it as one UPDATE or DELETE of {table} (or INSERT ... SELECT "
                        f"... FROM {table}) whose WHERE is `{key_column} >= :start AND "
                        f"{key_column} < :end` (or `<= :last`) AND any other conditions",
                        code=BACKFILL_NOT_CONFINED,
                        permanent=True,
                        path=path,
                    )
                )
    elif found.params:
        errors.append(
            ComponentError(
                f"uses parameters ({', '.join(found.params)}); a statement list takes none: "
                "use the backfill form",
                code=INVALID_SQL,
                permanent=True,
                path=path,
            )
        )
    return errors[:MAX_ERRORS_PER_ITEM]


def backfill_problem(sql: str, vendor: str, table: str, key_column: str) -> str | None:
    """Why backfill `sql` could change rows outside its batch's key range, or None.

    A batch binds `:start` and `:end` (or `:last`) to one slice of `table.key_column`; the
    statement is confined to that slice only when its top-level WHERE (of the UPDATE or
    DELETE of `table`, or of the INSERT's SELECT reading `table`) is a conjunction holding
    both `key_column >= :start` and `key_column < :end` (or `<= :last`, or `BETWEEN :start
    AND :last`), the column unqualified or qualified by `table` or its alias. Otherwise
    `... AND id < :end OR true`, or `WITH s AS (SELECT :start, :end) DELETE FROM t`, would
    run on every row in every batch. Read with pglast on PostgreSQL and sqlglot's SQLite
    parser on SQLite (ordinary DML, which it reads faithfully).
    """
    if vendor == POSTGRESQL:
        return _pg_backfill_problem(sql, table, key_column)
    return _sqlite_backfill_problem(sql, table, key_column)


# (operator, param) pairs that bound the key from below and above, as `key OP :param`; the
# mirrored form `:param OP' key` is flipped first.
_LOWER = {(">=", "start")}
_UPPER = {("<", "end"), ("<=", "last")}
_FLIP = {">=": "<=", "<=": ">=", ">": "<", "<": ">", "=": "="}


def _confinement(bounds: list[tuple[str, str]], key: str) -> str | None:
    ops = set(bounds)
    if not ops & _LOWER:
        return f"its top-level WHERE has no `{key} >= :start` conjunct"
    if not ops & _UPPER:
        return f"its top-level WHERE has no `{key} < :end` (or `{key} <= :last`) conjunct"
    return None


def _pg_backfill_problem(sql: str, table: str, key: str) -> str | None:
    import pglast
    from pglast import ast, enums
    from pglast.visitors import Visitor

    names, spans, _ = pg_params(sql)
    stmt = pglast.parse_sql(_bind_positions(sql, spans))[0].stmt
    dml = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)
    nested: list[Any] = []

    class Dml(Visitor):
        def visit(self, ancestors: Any, node: Any) -> None:
            if isinstance(node, dml) and node is not stmt:
                nested.append(node)

    Dml()(stmt)
    if nested:
        return "it holds another data-modifying statement (in a WITH clause)"
    if isinstance(stmt, ast.UpdateStmt | ast.DeleteStmt):
        rel = stmt.relation
        if rel.relname != table:
            return f"it changes {rel.relname}, not the backfill's table {table}"
        aliases = {table} | ({rel.alias.aliasname} if rel.alias else set())
        where = stmt.whereClause
    elif isinstance(stmt, ast.InsertStmt):
        select = stmt.selectStmt
        if (
            not isinstance(select, ast.SelectStmt)
            or select.op != enums.SetOperation.SETOP_NONE
            or select.valuesLists
        ):
            return "an INSERT backfill reads its rows with one SELECT (no VALUES, no UNION)"
        aliases = set()
        stack = list(select.fromClause or ())
        while stack:
            item = stack.pop()
            if isinstance(item, ast.RangeVar) and item.relname == table:
                aliases |= {table} | ({item.alias.aliasname} if item.alias else set())
            elif isinstance(item, ast.JoinExpr):
                stack += [item.larg, item.rarg]
        if not aliases:
            return f"its SELECT does not read {table}"
        where = select.whereClause
    else:
        return "it is not an UPDATE, DELETE or INSERT"

    def column(node: Any) -> bool:
        if not isinstance(node, ast.ColumnRef):
            return False
        parts = [getattr(f, "sval", None) for f in node.fields]
        return parts[-1] == key and (len(parts) == 1 or parts[-2] in aliases)

    def param(node: Any) -> str | None:
        if isinstance(node, ast.ParamRef) and 0 < node.number <= len(names):
            return names[node.number - 1]
        return None

    conjuncts = [where] if where is not None else []
    bounds: list[tuple[str, str]] = []
    while conjuncts:
        c = conjuncts.pop()
        if isinstance(c, ast.BoolExpr) and c.boolop == enums.BoolExprType.AND_EXPR:
            conjuncts.extend(c.args)
        elif isinstance(c, ast.A_Expr) and c.kind == enums.A_Expr_Kind.AEXPR_OP:
            op = c.name[-1].sval
            if column(c.lexpr) and (p := param(c.rexpr)):
                bounds.append((op, p))
            elif column(c.rexpr) and (p := param(c.lexpr)):
                bounds.append((_FLIP.get(op, op), p))
        elif (
            isinstance(c, ast.A_Expr)
            and c.kind == enums.A_Expr_Kind.AEXPR_BETWEEN
            and column(c.lexpr)
        ):
            low, high = c.rexpr
            bounds += [(">=", param(low) or ""), ("<=", param(high) or "")]
    return _confinement(bounds, key)


def _sqlite_backfill_problem(sql: str, table: str, key: str) -> str | None:
    import sqlglot
    from sqlglot import exp

    try:
        stmt = sqlglot.parse_one(sql, read="sqlite")
    except sqlglot.errors.SqlglotError as exc:
        return f"it cannot be read as one statement ({exc})"
    table, key = table.lower(), key.lower()  # SQLite folds names case-insensitively

    def aliases_of(node: Any) -> set[str]:
        if isinstance(node, exp.Table) and node.name.lower() == table:
            return {table} | ({node.alias.lower()} if node.alias else set())
        return set()

    if isinstance(stmt, exp.Update | exp.Delete):
        if stmt.this is None or stmt.this.name.lower() != table:
            name = stmt.this.name if stmt.this is not None else "?"
            return f"it changes {name}, not the backfill's table {table}"
        aliases = aliases_of(stmt.this)
        where = stmt.args.get("where")
    elif isinstance(stmt, exp.Insert):
        select = stmt.expression
        if not isinstance(select, exp.Select):
            return "an INSERT backfill reads its rows with one SELECT (no VALUES, no UNION)"
        aliases = set()
        sources = [select.args.get("from_") or select.args.get("from")]
        sources += [j for j in select.args.get("joins") or ()]
        for source in sources:
            if source is not None:
                aliases |= aliases_of(source.this)
        if not aliases:
            return f"its SELECT does not read {table}"
        where = select.args.get("where")
    else:
        return "it is not an UPDATE, DELETE or INSERT"

    def column(node: Any) -> bool:
        return (
            isinstance(node, exp.Column)
            and node.name.lower() == key
            and (not node.table or node.table.lower() in aliases)
        )

    def param(node: Any) -> str | None:
        return node.name if isinstance(node, exp.Placeholder) else None

    ops = {exp.GTE: ">=", exp.GT: ">", exp.LTE: "<=", exp.LT: "<", exp.EQ: "="}
    conjuncts = [where.this] if where is not None else []
    bounds: list[tuple[str, str]] = []
    while conjuncts:
        c = conjuncts.pop()
        if isinstance(c, exp.Paren):
            conjuncts.append(c.this)
        elif isinstance(c, exp.And):
            conjuncts += [c.this, c.expression]
        elif type(c) in ops:
            op = ops[type(c)]
            if column(c.this) and (p := param(c.expression)):
                bounds.append((op, p))
            elif column(c.expression) and (p := param(c.this)):
                bounds.append((_FLIP[op], p))
        elif isinstance(c, exp.Between) and column(c.this):
            bounds += [(">=", param(c.args["low"]) or ""), ("<=", param(c.args["high"]) or "")]
    return _confinement(bounds, key)


def _vendor_name(vendor: str) -> str:
    return "PostgreSQL" if vendor == POSTGRESQL else "SQLite"


# --- PostgreSQL ---------------------------------------------------------------------------


def pg_params(sql: str) -> tuple[list[str], list[tuple[int, int]], list[str]]:
    """`:name` parameters of `sql` by PostgreSQL's scanner: names, spans, other styles.

    A parameter is a `:` token immediately followed by an unquoted name (`::` is a cast and
    a different token). `$1` parameters are reported as another style.
    """
    from pglast import parser

    try:
        tokens = parser.scan(sql)
    except parser.ParseError as exc:
        raise SqlSyntaxError(str(exc)) from None
    names: list[str] = []
    spans: list[tuple[int, int]] = []
    other: list[str] = []
    for tok, nxt in itertools.zip_longest(tokens, tokens[1:]):
        if tok.name == "PARAM":
            other.append(sql[tok.start : tok.end + 1])
        if tok.name != "ASCII_58" or nxt is None or nxt.start != tok.end + 1:
            continue
        text = sql[nxt.start : nxt.end + 1]
        if _NAME.fullmatch(text):
            names.append(text)
            spans.append((tok.start, nxt.end + 1))
    return names, spans, other


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _bind_positions(sql: str, spans: list[tuple[int, int]]) -> str:
    """`sql` with each `:name` replaced by `$n`, padded to keep offsets where it fits."""
    out, last = [], 0
    for n, (start, end) in enumerate(spans, 1):
        out.append(sql[last:start])
        out.append(f"${n}".ljust(end - start))
        last = end
    out.append(sql[last:])
    return "".join(out)


def _analyse_pg(sql: str) -> Analysis:
    import pglast

    names, spans, other = pg_params(sql)
    text = _bind_positions(sql, spans)
    try:
        raw = pglast.parse_sql(text)
    except pglast.parser.ParseError as exc:
        raise SqlSyntaxError(str(exc)) from None
    statements = []
    for r in raw:
        end = r.stmt_location + r.stmt_len if r.stmt_len else len(text)
        source = text[r.stmt_location : end]
        findings = tuple(_dedupe(_pg_findings(r.stmt, _pg_words(source))))
        statements.append(Statement(verb=_pg_verb(r.stmt, source), findings=findings))
    return Analysis(tuple(statements), tuple(names), tuple(spans), tuple(other))


def _pg_words(source: str, limit: int = 2) -> str:
    """The statement's leading keywords as written (`CREATE EXTENSION`), by PostgreSQL's
    scanner, for messages."""
    from pglast import parser

    words: list[str] = []
    for tok in parser.scan(source):
        if tok.kind == "NO_KEYWORD" or len(words) == limit + 2:
            break
        words.append(source[tok.start : tok.end + 1].upper())
    if words[1:3] == ["OR", "REPLACE"]:  # CREATE OR REPLACE FUNCTION: name it CREATE FUNCTION
        del words[1:3]
    return " ".join(words[:limit])


def _dedupe(findings: Iterator[Finding]) -> list[Finding]:
    seen: list[Finding] = []
    for f in findings:
        if f not in seen:
            seen.append(f)
    return seen


_PG_VERBS = {
    "SelectStmt": "SELECT",
    "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE",
}


def _pg_verb(stmt: Any, source: str) -> str:
    name = type(stmt).__name__
    if name in _PG_VERBS:
        # WITH ... UPDATE is an UpdateStmt with a WITH clause: a backfill verb either way.
        return _PG_VERBS[name]
    return _pg_words(source) or name.removesuffix("Stmt")


# Statement node types that may run (each still walked for forbidden names and bodies).
# CREATE CONVERSION and CREATE TRANSFORM are not here: both bind functions that take
# `internal` arguments, i.e. C code.
PG_ALLOWED = {
    "SelectStmt",
    "InsertStmt",
    "UpdateStmt",
    "DeleteStmt",
    "MergeStmt",
    "TruncateStmt",
    "LockStmt",
    "ConstraintsSetStmt",
    "CallStmt",
    "CreateStmt",
    "CreateTableAsStmt",
    "IndexStmt",
    "AlterTableStmt",
    "RenameStmt",
    "AlterObjectSchemaStmt",
    "AlterOwnerStmt",
    "DropStmt",
    "ViewStmt",
    "RefreshMatViewStmt",
    "CreateSeqStmt",
    "AlterSeqStmt",
    "CreateEnumStmt",
    "AlterEnumStmt",
    "CompositeTypeStmt",
    "CreateRangeStmt",
    "CreateDomainStmt",
    "AlterDomainStmt",
    "DefineStmt",
    "AlterTypeStmt",
    "CreateSchemaStmt",
    "CreateFunctionStmt",
    "AlterFunctionStmt",
    "CreateTrigStmt",
    "RuleStmt",
    "CommentStmt",
    "GrantStmt",
    "AlterDefaultPrivilegesStmt",
    "CreatePolicyStmt",
    "AlterPolicyStmt",
    "CreateStatsStmt",
    "AlterStatsStmt",
    "CreateCastStmt",
    "CreateOpClassStmt",
    "CreateOpFamilyStmt",
    "AlterOpFamilyStmt",
    "AlterOperatorStmt",
    "AlterCollationStmt",
    "AlterTSConfigurationStmt",
    "AlterTSDictionaryStmt",
    "ReindexStmt",
    "ClusterStmt",
    # VACUUM and ANALYZE; VACUUM runs alone outside a transaction (`outside_transaction`).
    "VacuumStmt",
    "SecLabelStmt",
}
PG_REFUSED = {
    "TransactionStmt": "transaction_control",
    "CopyStmt": "server_files",
    "CreateTableSpaceStmt": "server_files",
    "DropTableSpaceStmt": "server_files",
    "AlterTableSpaceOptionsStmt": "server_files",
    "AlterTableMoveAllStmt": "server_files",
    "CreateExtensionStmt": "extensions",
    "AlterExtensionStmt": "extensions",
    "AlterExtensionContentsStmt": "extensions",
    "LoadStmt": "extensions",
    "CreatePLangStmt": "extensions",
    "VariableSetStmt": "session",
    "DiscardStmt": "session",
    "AlterSystemStmt": "server_administration",
    "CreatedbStmt": "server_administration",
    "DropdbStmt": "server_administration",
    "AlterDatabaseStmt": "server_administration",
    "AlterDatabaseSetStmt": "server_administration",
    "AlterDatabaseRefreshCollStmt": "server_administration",
    "CreateRoleStmt": "server_administration",
    "AlterRoleStmt": "server_administration",
    "AlterRoleSetStmt": "server_administration",
    "DropRoleStmt": "server_administration",
    "GrantRoleStmt": "server_administration",
    "ReassignOwnedStmt": "server_administration",
    "DropOwnedStmt": "server_administration",
    "CheckPointStmt": "server_administration",
    "CreateEventTrigStmt": "server_administration",
    "AlterEventTrigStmt": "server_administration",
    "CreatePublicationStmt": "server_administration",
    "AlterPublicationStmt": "server_administration",
    "CreateAmStmt": "server_administration",
    "CreateSubscriptionStmt": "other_databases",
    "AlterSubscriptionStmt": "other_databases",
    "DropSubscriptionStmt": "other_databases",
    "CreateFdwStmt": "other_databases",
    "AlterFdwStmt": "other_databases",
    "CreateForeignServerStmt": "other_databases",
    "AlterForeignServerStmt": "other_databases",
    "CreateUserMappingStmt": "other_databases",
    "AlterUserMappingStmt": "other_databases",
    "DropUserMappingStmt": "other_databases",
    "CreateForeignTableStmt": "other_databases",
    "ImportForeignSchemaStmt": "other_databases",
    "DoStmt": "dynamic_sql",
    "PrepareStmt": "dynamic_sql",
    "ExecuteStmt": "dynamic_sql",
    "DeallocateStmt": "dynamic_sql",
    "ListenStmt": "notifications",
    "UnlistenStmt": "notifications",
    "NotifyStmt": "notifications",
}
# DROP of these object types falls under the rule of the statement that creates them.
PG_DROP_REFUSED = {
    "OBJECT_EXTENSION": "extensions",
    "OBJECT_LANGUAGE": "extensions",
    "OBJECT_FDW": "other_databases",
    "OBJECT_FOREIGN_SERVER": "other_databases",
    "OBJECT_FOREIGN_TABLE": "other_databases",
    "OBJECT_EVENT_TRIGGER": "server_administration",
    "OBJECT_PUBLICATION": "server_administration",
    "OBJECT_ACCESS_METHOD": "server_administration",
}


def _pg_what(stmt: Any, text: str) -> str:
    """How to name a refused statement in a message: `COMMIT`, `COPY ... TO PROGRAM`..."""
    from pglast import enums

    name = type(stmt).__name__
    if name == "TransactionStmt":
        return text  # as written: END, START TRANSACTION, PREPARE TRANSACTION...
    if name == "CopyStmt":
        if stmt.is_program:
            return "COPY ... PROGRAM"
        if stmt.filename:
            return "COPY to or from a file"
        return "COPY"
    if name == "VariableSetStmt":
        target = (stmt.name or "").lower()
        if target == "role":
            kind = enums.VariableSetKind(stmt.kind).name
            return "RESET ROLE" if kind.startswith("VAR_RESET") else "SET ROLE"
        if target == "session_authorization":
            return "SET SESSION AUTHORIZATION"
        return f"SET {stmt.name}" if stmt.name else "RESET ALL"
    return text


def _pg_findings(stmt: Any, words: str) -> Iterator[Finding]:
    from pglast import enums

    name = type(stmt).__name__
    verb = words or name.removesuffix("Stmt")
    if name in PG_REFUSED:
        yield Finding(PG_REFUSED[name], _pg_what(stmt, verb))
        return
    if name == "DefineStmt" and (refused := _pg_define_refused(stmt)):
        yield Finding("not_a_migration_statement", refused)
        return
    if name == "DropStmt" and enums.ObjectType(stmt.removeType).name in PG_DROP_REFUSED:
        kind = enums.ObjectType(stmt.removeType).name
        yield Finding(PG_DROP_REFUSED[kind], f"DROP {kind.removeprefix('OBJECT_')}")
        return
    if name not in PG_ALLOWED:
        yield Finding("not_a_migration_statement", verb)
        return
    yield from _pg_walk(stmt)


# DefineStmt kinds a migration may not run: objects whose definition binds C-level functions
# (base types' I/O functions, text search parsers and templates). They need a superuser
# anyway; CREATE OPERATOR, AGGREGATE, COLLATION and text search dictionaries/configurations
# stay allowed, with every function they name checked like a call.
PG_DEFINE_REFUSED = {
    "OBJECT_TSPARSER": "CREATE TEXT SEARCH PARSER",
    "OBJECT_TSTEMPLATE": "CREATE TEXT SEARCH TEMPLATE",
}


def _pg_define_refused(stmt: Any) -> str | None:
    from pglast import enums

    kind = enums.ObjectType(stmt.kind).name
    if kind in PG_DEFINE_REFUSED:
        return PG_DEFINE_REFUSED[kind]
    if kind == "OBJECT_TYPE" and stmt.definition:  # CREATE TYPE t (INPUT = ..., OUTPUT = ...)
        return "CREATE TYPE with input/output functions (a base type)"
    return None


# A name as a string constant spells it (`'pg_catalog.pg_terminate_backend(int)'::regproc`,
# `'HXO_LEDGER'::regclass`): dotted parts, each quoted or not, then an optional argument list.
_PG_QUALIFIED = re.compile(
    r'\s*((?:(?:"(?:[^"]|"")+"|[A-Za-z_\x80-\uffff][\w$\x80-\uffff]*)\s*\.\s*)*'
    r'(?:"(?:[^"]|"")+"|[A-Za-z_\x80-\uffff][\w$\x80-\uffff]*))\s*(?:\(.*\))?\s*',
    re.DOTALL,
)
_PG_PART = re.compile(r'"((?:[^"]|"")+)"|([^\s."]+)')


def _pg_spelled_name(text: str) -> str | None:
    """The last component of the object name a string constant spells, folded the way
    PostgreSQL's name input (regproc, regclass) folds it, or None when it is not a name."""
    match = _PG_QUALIFIED.fullmatch(text)
    if not match:
        return None
    parts = _PG_PART.findall(match.group(1))
    quoted, bare = parts[-1]
    return quoted.replace('""', '"') if quoted else bare.lower()


def _pg_string_as_name(ancestors: Any) -> bool:
    """Whether the string constant at `ancestors` (its A_Const) is read as a name: cast
    (`'f'::regproc`, `'t'::regclass`) or passed to a `to_reg*()` lookup."""
    from pglast import ast

    const = ancestors.parent
    if const is None:
        return False
    if isinstance(const.node, ast.TypeCast):
        return True
    holder = const.parent  # the args tuple's owner
    if holder is not None and isinstance(holder.node, ast.FuncCall):
        fname = holder.node.funcname[-1].sval if holder.node.funcname else ""
        return fname.lower().startswith("to_reg")
    return False


def _pg_name_findings(name: str, *, called: bool, relation: bool = False) -> Iterator[Finding]:
    """What naming `name` (an identifier as PostgreSQL folded it) breaks: a refused function
    (called, or bound to an operator, aggregate, cast, ... by name) or a ledger table. A
    `relation` name (a table, view or index) cannot run anything: only the tables count."""
    rule = None if relation else pg_function_rule(name)
    if rule:
        yield Finding(rule, f"{name}()" if called else f"a reference to {name}()")
    if name in LEDGER_TABLE_NAMES:
        yield Finding("ledger_tables", f"a reference to {name}")
    if name == PG_SETTINGS_VIEW:
        yield Finding("session", "the pg_settings view")


# Where a relation is only read: anything under a SELECT, or these members of a DML statement.
_PG_READ_MEMBERS = {"fromClause", "usingClause", "sourceRelation"}
_PG_DML = {"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"}


def _pg_catalog_relation(node: Any) -> bool:
    schema = node.schemaname
    return schema in PG_CATALOG_SCHEMAS or (
        schema is None and (node.relname or "").startswith("pg_")
    )


def _pg_is_read(ancestors: Any) -> bool:
    """Whether the relation at `ancestors` is only read: its nearest enclosing statement is a
    SELECT (not inside a view definition, which forwards writes), or it is a FROM/USING
    relation of a DML statement."""
    member = None
    anc = ancestors
    view = False
    nearest = None
    while anc is not None and anc.node is not None:
        kind = type(anc.node).__name__
        if nearest is None and kind.endswith("Stmt"):
            nearest = (kind, member if isinstance(anc.member, int) else anc.member)
        if kind == "ViewStmt":
            view = True
        if not isinstance(anc.member, int):
            member = anc.member
        anc = anc.parent
    if view or nearest is None:
        return False
    kind, via = nearest
    return kind == "SelectStmt" or (kind in _PG_DML and via in _PG_READ_MEMBERS)


def _pg_walk(stmt: Any) -> Iterator[Finding]:
    """Everything forbidden that `stmt` names, wherever it names it.

    Every identifier and every string constant that spells a name is checked, not only
    function calls: a function bound by name to an operator, aggregate, range type, cast,
    operator class, trigger or conversion (`function = pg_terminate_backend`), called in
    attribute notation (`(0).pg_cancel_backend`) or cast to regproc runs (or can run) just
    as a call does. Also refused: the ledger tables and pg_settings named anywhere, system
    catalogs in any position but a read, every SET/RESET clause (a function's `SET
    lock_timeout = 0` applies whenever it runs), and bodies HXO cannot read.
    """
    from pglast import ast
    from pglast.visitors import Visitor

    found: list[Finding] = []

    class Walk(Visitor):
        def visit_String(self, ancestors: Any, node: ast.String) -> None:
            if isinstance(ancestors.node, ast.A_Const):
                # A string is a name where it is converted to one: `'f'::regproc`,
                # `to_regproc('f')`. Elsewhere ('crosstab' in VALUES) it is just text.
                if _pg_string_as_name(ancestors) and (name := _pg_spelled_name(node.sval or "")):
                    found.extend(_pg_name_findings(name, called=False))
                return
            parent = ancestors.parent.node if ancestors.parent is not None else None
            called = isinstance(parent, ast.FuncCall) and ancestors.parent.member == "funcname"
            found.extend(_pg_name_findings(node.sval or "", called=called))

        def visit_RangeVar(self, ancestors: Any, node: ast.RangeVar) -> None:
            found.extend(_pg_name_findings(node.relname or "", called=False, relation=True))
            if _pg_catalog_relation(node) and not _pg_is_read(ancestors):
                where = f"{node.schemaname}.{node.relname}" if node.schemaname else node.relname
                found.append(Finding("system_catalog", f"writing or changing {where}"))

        def visit_RenameStmt(self, ancestors: Any, node: ast.RenameStmt) -> None:
            found.extend(_pg_name_findings(node.newname or "", called=False, relation=True))

        def visit_IndexStmt(self, ancestors: Any, node: ast.IndexStmt) -> None:
            found.extend(_pg_name_findings(node.idxname or "", called=False, relation=True))

        def visit_VariableSetStmt(self, ancestors: Any, node: ast.VariableSetStmt) -> None:
            # Only reached inside another statement: a function's SET/RESET clause.
            what = f"SET {node.name}" if node.name else "RESET ALL"
            found.append(Finding("session", f"a function's {what} clause"))

        def visit_CreateFunctionStmt(self, ancestors: Any, node: ast.CreateFunctionStmt) -> None:
            found.extend(_pg_function_body(node))

    Walk()(stmt)
    yield from found


def _pg_function_body(node: Any) -> list[Finding]:
    """A CREATE FUNCTION/PROCEDURE body read as SQL or PL/pgSQL; other languages refused."""
    import pglast

    options = {o.defname: o.arg for o in (node.options or ())}
    language = options.get("language")
    lang = (language.sval if language is not None else "sql").lower()
    if lang not in PG_LANGUAGES:
        return [Finding("dynamic_sql", f"a function in LANGUAGE {lang}")]
    body_arg = options.get("as")
    if body_arg is None:  # a SQL-standard body (BEGIN ATOMIC / RETURN): walked as nodes
        return []
    parts = [p.sval for p in body_arg if hasattr(p, "sval")]
    body = parts[0] if parts else ""
    if lang == "sql":
        try:
            inner = pglast.parse_sql(body)
        except pglast.parser.ParseError:
            return [Finding("dynamic_sql", "a SQL function body PostgreSQL cannot parse")]
        return [f for r in inner for f in _pg_findings(r.stmt, _raw_words(body, r))]
    return _plpgsql_findings(node, body)


def _raw_words(text: str, raw: Any) -> str:
    end = raw.stmt_location + raw.stmt_len if raw.stmt_len else len(text)
    return _pg_words(text[raw.stmt_location : end])


def _plpgsql_findings(node: Any, body: str) -> list[Finding]:
    """PL/pgSQL through PostgreSQL's own PL/pgSQL parser: COMMIT/ROLLBACK, dynamic EXECUTE,
    and every embedded SQL statement checked as if it were an item of its own."""
    import pglast
    from pglast.stream import RawStream

    try:
        tree = pglast.parse_plpgsql(RawStream()(node))
    except Exception:  # pglast raises several types for bodies it cannot read
        return [Finding("dynamic_sql", "a PL/pgSQL body PostgreSQL cannot parse")]
    found: list[Finding] = []
    for key, value in _json_items(tree):
        if key in ("PLpgSQL_stmt_commit", "PLpgSQL_stmt_rollback"):
            found.append(Finding("transaction_control", key.rsplit("_", 1)[-1].upper()))
        elif key in ("PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors") or (
            # OPEN ... FOR EXECUTE, RETURN QUERY EXECUTE: any statement with a dynamic query
            isinstance(value, dict) and "dynquery" in value
        ):
            found.append(Finding("dynamic_sql", "EXECUTE of a query built at run time"))
        elif key == "PLpgSQL_expr" and isinstance(value, dict):
            found.extend(_embedded_query(str(value.get("query", "")), value.get("parseMode", 0)))
    return found


# PostgreSQL's RawParseMode for PL/pgSQL expressions: a statement, or an expression.
RAW_PARSE_DEFAULT = 0
RAW_PARSE_PLPGSQL_EXPR = 2


def _embedded_query(query: str, mode: int) -> list[Finding]:
    """SQL that PL/pgSQL runs: a statement is checked as an item of its own, an expression
    as the SELECT list it is; an assignment (`x := f(y)`) is scanned for forbidden calls."""
    import pglast
    from pglast import parser

    text = f"SELECT {query}" if mode == RAW_PARSE_PLPGSQL_EXPR else query
    if mode in (RAW_PARSE_DEFAULT, RAW_PARSE_PLPGSQL_EXPR):
        try:
            parsed = pglast.parse_sql(text)
            return [f for r in parsed for f in _pg_findings(r.stmt, _raw_words(text, r))]
        except parser.ParseError:
            pass
    # An assignment (`x := expr`, `x.y[1] = expr`): its right-hand side read as a SELECT list.
    try:
        tokens = parser.scan(query)
    except parser.ParseError:
        return [Finding("dynamic_sql", "a PL/pgSQL expression PostgreSQL cannot read")]
    for tok in tokens:
        if tok.name in ("COLON_EQUALS", "ASCII_61"):
            try:
                parsed = pglast.parse_sql(f"SELECT {query[tok.end + 1 :]}")
            except parser.ParseError:
                break
            return [f for r in parsed for f in _pg_findings(r.stmt, "SELECT")]
    # Unreadable as SQL: every identifier and string in it checked as a name.
    found = []
    for tok in tokens:
        text = query[tok.start : tok.end + 1]
        if tok.name == "IDENT":
            found.extend(
                _pg_name_findings(
                    text.strip('"') if text.startswith('"') else text.lower(), called=False
                )
            )
        elif tok.name == "SCONST" and (name := _pg_spelled_name(text.strip("'"))):
            found.extend(_pg_name_findings(name, called=False))
    return found


def _json_items(value: Any) -> Iterator[tuple[str, Any]]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, sub in item.items():
                yield key, sub
                stack.append(sub)
        elif isinstance(item, list):
            stack.extend(item)


# --- SQLite -------------------------------------------------------------------------------

SQLITE_ALLOWED = {
    "SELECT",
    "VALUES",
    "INSERT",
    "REPLACE",
    "UPDATE",
    "DELETE",
    "WITH",
    "CREATE",
    "ALTER",
    "DROP",
    "ANALYZE",
    "REINDEX",
}
SQLITE_REFUSED = {
    "BEGIN": "transaction_control",
    "COMMIT": "transaction_control",
    "END": "transaction_control",
    "ROLLBACK": "transaction_control",
    "SAVEPOINT": "transaction_control",
    "RELEASE": "transaction_control",
    "ATTACH": "other_databases",
    "DETACH": "other_databases",
    "PRAGMA": "pragma",
}


def sqlite_split(sql: str) -> list[tuple[int, int]]:
    """`(start, end)` of each statement of `sql`, where SQLite's own tokenizer ends it.

    Every `;` is a candidate; `sqlite3_complete()` says whether the text up to it is a
    complete statement (not inside a string, comment or trigger body). Pieces holding only
    whitespace or comments are dropped by the caller.
    """
    pieces: list[tuple[int, int]] = []
    start = 0
    pos = sql.find(";")
    seen = 0
    while pos != -1:
        seen += 1
        if seen > MAX_SEMICOLONS:
            raise SqlSyntaxError(f"more than {MAX_SEMICOLONS} ';' in one item")
        if sqlite3.complete_statement(sql[start : pos + 1]):
            pieces.append((start, pos + 1))
            start = pos + 1
        pos = sql.find(";", pos + 1)
    pieces.append((start, len(sql)))
    return pieces


_SQLITE_TOKENIZER: Any = None


def _sqlite_tokens(sql: str) -> list[Any]:
    """sqlglot's SQLite tokens of `sql`, every word a token of its own: sqlglot's "command"
    keywords (REPLACE, ...) otherwise swallow the rest of the statement as one string, and
    `REPLACE INTO t SELECT load_extension('x')` would hide the call."""
    from sqlglot.dialects.sqlite import SQLite
    from sqlglot.errors import TokenError

    global _SQLITE_TOKENIZER
    if _SQLITE_TOKENIZER is None:

        class Tokenizer(SQLite.Tokenizer):
            COMMANDS: set[Any] = set()

        _SQLITE_TOKENIZER = Tokenizer
    try:
        return list(_SQLITE_TOKENIZER(dialect=SQLite()).tokenize(sql))
    except TokenError as exc:
        raise SqlSyntaxError(str(exc)) from None


# Keywords after which SQLite reads the name of the table a statement writes or changes.
_SQLITE_WRITE_KEYWORDS = {"UPDATE", "INTO", "TABLE", "INDEX", "VIEW", "TRIGGER"}
# Words between such a keyword and the name: `UPDATE OR IGNORE t`, `DROP TABLE IF EXISTS t`.
_SQLITE_SKIP_WORDS = {"OR", "ROLLBACK", "ABORT", "REPLACE", "FAIL", "IGNORE", "IF", "NOT", "EXISTS"}


def _sqlite_name_findings(tokens: list[Any]) -> Iterator[Finding]:
    """Ledger tables named anywhere (SQLite folds identifiers case-insensitively and also
    reads a 'string' where it expects a name), and sqlite_* tables as a write target
    (`UPDATE`, `INSERT/REPLACE INTO`, `DELETE FROM`, `CREATE/ALTER/DROP TABLE ...`), in the
    statement and in a trigger body alike."""
    from sqlglot.tokens import TokenType

    names = (TokenType.VAR, TokenType.IDENTIFIER, TokenType.STRING)
    for i, tok in enumerate(tokens):
        if tok.token_type in names and tok.text.lower() in LEDGER_TABLE_NAMES:
            yield Finding("ledger_tables", f"a reference to {tok.text.lower()}")
        word = tok.text.upper() if tok.token_type not in names else ""
        if word == "FROM" and i and tokens[i - 1].text.upper() == "DELETE":
            word = "INTO"
        if word not in _SQLITE_WRITE_KEYWORDS:
            continue
        j = i + 1
        while j < len(tokens) and tokens[j].text.upper() in _SQLITE_SKIP_WORDS:
            j += 1
        if j + 2 < len(tokens) and tokens[j + 1].token_type == TokenType.DOT:
            j += 2  # schema.table
        if j < len(tokens) and tokens[j].token_type in names:
            name = tokens[j].text.lower()
            if name.startswith("sqlite_"):
                yield Finding("system_catalog", f"writing or changing {name}")


def _analyse_sqlite(sql: str) -> Analysis:
    from sqlglot.tokens import TokenType

    statements: list[Statement] = []
    names: list[str] = []
    spans: list[tuple[int, int]] = []
    other: list[str] = []
    for start, end in sqlite_split(sql):
        piece = sql[start:end]
        tokens = [t for t in _sqlite_tokens(piece) if t.token_type != TokenType.SEMICOLON]
        if not tokens:
            continue
        verb = tokens[0].text.upper()
        findings: list[Finding] = []
        if verb == "VACUUM":
            # VACUUM runs alone outside a transaction; VACUUM INTO writes a file.
            if any(t.text.upper() == "INTO" for t in tokens):
                findings.append(Finding("vacuum", "VACUUM INTO"))
        elif verb in SQLITE_REFUSED:
            findings.append(Finding(SQLITE_REFUSED[verb], verb))
        elif verb not in SQLITE_ALLOWED:
            findings.append(Finding("not_a_migration_statement", verb))
        findings.extend(_sqlite_name_findings(tokens))
        for tok, nxt in zip(tokens, [*tokens[1:], None], strict=True):
            quoted = piece[tok.start : tok.end + 1] != tok.text
            if nxt is not None and nxt.token_type == TokenType.L_PAREN:
                rule = SQLITE_FUNCTIONS.get(tok.text.lower())
                if rule:
                    findings.append(Finding(rule, f"{tok.text}()"))
            if tok.token_type == TokenType.COLON and nxt is not None and nxt.start == tok.end + 1:
                text = piece[nxt.start : nxt.end + 1]
                if _NAME.fullmatch(text):
                    names.append(text)
                    spans.append((start + tok.start, start + nxt.end + 1))
            elif tok.token_type in (TokenType.PLACEHOLDER, TokenType.PARAMETER) or (
                not quoted and tok.text.startswith("$")
            ):
                other.append(tok.text)
        statements.append(Statement(verb, tuple(_dedupe(iter(findings)))))
    return Analysis(tuple(statements), tuple(names), tuple(spans), tuple(other))


def statement_error(sql: str, vendor: str, *, path: str) -> ComponentError | None:
    """The first forbidden finding of `sql`, or None: the executor's re-check before running
    pinned SQL (a manifest made before the policy, or by other code)."""
    try:
        found = analyse(sql, vendor)
    except SqlSyntaxError:
        return None  # the target's parser reports it when the statement runs
    for i, statement in enumerate(found.statements):
        for finding in statement.findings:
            return ComponentError(
                finding.message(i, len(found.statements)),
                code=FORBIDDEN_STATEMENT,
                permanent=True,
                path=path,
            )
    if len(found.statements) > 1:
        return ComponentError(
            f"holds {len(found.statements)} statements; one per item",
            code=FORBIDDEN_STATEMENT,
            permanent=True,
            path=path,
        )
    return None


# Sequence functions whose effect no rollback undoes (PostgreSQL sequences are not
# transactional): a dry-run checks a statement calling them with EXPLAIN instead of running it.
PG_SEQUENCE_FUNCTIONS = frozenset({"setval", "nextval"})
# Statements PostgreSQL can EXPLAIN (plan without running).
PG_EXPLAINABLE = frozenset(
    {"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "CreateTableAsStmt"}
)


def calls_sequence_functions(sql: str) -> bool:
    """Whether one PostgreSQL statement calls setval() or nextval() itself (anywhere in its
    tree: subqueries, CTEs, VALUES) and can be EXPLAINed instead of run. False for text the
    parser cannot read (the server reports it) and for other statement types (a column
    DEFAULT nextval(...) in DDL is not a call). Calls inside a function the statement calls
    are not seen; docs/sql-policy.md says so."""
    import pglast
    from pglast import ast
    from pglast.visitors import Visitor

    try:
        _names, spans, _other = pg_params(sql)
        raw = pglast.parse_sql(_bind_positions(sql, spans))
    except (SqlSyntaxError, pglast.parser.ParseError):
        return False
    found: list[str] = []

    class Walk(Visitor):
        def visit_FuncCall(self, ancestors: Any, node: ast.FuncCall) -> None:
            fname = node.funcname[-1].sval if node.funcname else ""
            if fname.lower() in PG_SEQUENCE_FUNCTIONS:
                found.append(fname)

    for r in raw:
        if type(r.stmt).__name__ in PG_EXPLAINABLE:
            Walk()(r.stmt)
    return bool(found)


# Statements whose row count the planner estimates for a dry-run's review (EXPLAIN).
PG_DML_VERBS = {
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "InsertStmt": "INSERT",
    "MergeStmt": "MERGE",
}


def pg_dml_verb(sql: str) -> str | None:
    """ "UPDATE", "DELETE", "INSERT" or "MERGE" when one PostgreSQL statement is DML (a WITH
    ... UPDATE too), else None (DDL, SELECT, text the parser cannot read). A dry-run asks
    the planner for such a statement's row estimate (`TargetConnection.estimate_rows`)."""
    stmt = _pg_one_statement(sql)
    return None if stmt is None else PG_DML_VERBS.get(type(stmt).__name__)


def _pg_one_statement(sql: str) -> Any | None:
    """pglast's node for `sql` when it is exactly one PostgreSQL statement (its `:name`
    parameters bound as positions first), else None: text the parser cannot read, or
    several statements."""
    import pglast

    try:
        _names, spans, _other = pg_params(sql)
        raw = pglast.parse_sql(_bind_positions(sql, spans))
    except (SqlSyntaxError, pglast.parser.ParseError):
        return None
    return raw[0].stmt if len(raw) == 1 else None


# --- Statements that cannot run inside a transaction --------------------------------------

# PostgreSQL refuses these in a transaction block ("cannot run inside a transaction block");
# SQLite refuses VACUUM in one. HXO runs such a statement alone, in autocommit
# (runs_app.kinds.migrate). ALTER TYPE ... ADD VALUE joins them before PostgreSQL 12.
PG_ADD_VALUE_IN_TRANSACTION = 120000


@dataclasses.dataclass(frozen=True)
class OutsideTransaction:
    """A statement that must run outside a transaction, as its parser reads it.

    `what`: how to name it ("CREATE INDEX CONCURRENTLY"). `idempotent`: running it twice has
    the effect of running it once (`IF NOT EXISTS`/`IF EXISTS`, VACUUM, REINDEX, CLUSTER),
    so a retry after a crash between the statement and its ledger row is harmless; otherwise
    the stage must be declared non-idempotent. `equivalent`: the statement with the same
    schema effect that can run inside a transaction (the non-concurrent form), which a
    dry-run runs in its rolled-back transaction to validate the statement and so that later
    statements see its effect; None when it has no schema effect (VACUUM, REINDEX, CLUSTER)
    or none can run in a transaction (ADD VALUE before PostgreSQL 12). `relations`: relation
    names (as written, qualified) that must exist, checked by a dry-run when there is no
    equivalent to run; `types`: type names, likewise.
    """

    what: str
    idempotent: bool
    equivalent: str | None = None
    relations: tuple[str, ...] = ()
    types: tuple[str, ...] = ()


def outside_transaction(
    sql: str, vendor: str, *, server_version: int | None = None
) -> OutsideTransaction | None:
    """Whether one plan statement must run outside a transaction, and how (None: it runs in
    the batch's transaction as any other).

    Read by the target's parser, never by matching text: pglast on PostgreSQL (IndexStmt,
    DropStmt and AlterTableStmt DETACH PARTITION with `concurrent`, ReindexStmt with
    CONCURRENTLY or over a whole schema/database/system catalogue, VacuumStmt that vacuums,
    ClusterStmt over every table, AlterEnumStmt ADD VALUE when `server_version` (PostgreSQL's
    `server_version_num`) is below 120000 or unknown-and-given-as-0); the SQLite tokenizer on
    SQLite (VACUUM; VACUUM INTO is refused by the policy). None for text the parser cannot
    read (the policy reports it). Source of the list: PostgreSQL's PreventInTransactionBlock
    callers (src/backend/commands), SQLite's "cannot VACUUM from within a transaction".
    """
    if vendor == SQLITE:
        try:
            found = analyse(sql, vendor)
        except SqlSyntaxError:
            return None
        if (
            len(found.statements) == 1
            and found.verb == "VACUUM"
            and not found.statements[0].findings
        ):
            return OutsideTransaction("VACUUM", idempotent=True)  # not VACUUM INTO: refused
        return None
    from pglast import enums
    from pglast.stream import RawStream

    stmt = _pg_one_statement(sql)
    if stmt is None:
        return None
    name = type(stmt).__name__

    def text(node: Any) -> str:
        return RawStream()(node)

    if name == "IndexStmt" and stmt.concurrent:
        stmt.concurrent = False
        return OutsideTransaction(
            "CREATE INDEX CONCURRENTLY", bool(stmt.if_not_exists), equivalent=text(stmt)
        )
    if name == "DropStmt" and getattr(stmt, "concurrent", False):
        stmt.concurrent = False
        return OutsideTransaction(
            "DROP INDEX CONCURRENTLY", bool(stmt.missing_ok), equivalent=text(stmt)
        )
    if name == "AlterTableStmt":
        detach = [
            c.def_
            for c in stmt.cmds or ()
            if c.subtype == enums.AlterTableType.AT_DetachPartition
            and getattr(c.def_, "concurrent", False)
        ]
        if detach:
            for cmd in detach:
                cmd.concurrent = False
            return OutsideTransaction(
                "ALTER TABLE ... DETACH PARTITION CONCURRENTLY", False, equivalent=text(stmt)
            )
        return None
    if name == "ReindexStmt":
        concurrently = any(
            (getattr(p, "defname", "") or "").lower() == "concurrently" for p in stmt.params or ()
        )
        whole = stmt.kind not in (
            enums.ReindexObjectType.REINDEX_OBJECT_INDEX,
            enums.ReindexObjectType.REINDEX_OBJECT_TABLE,
        )
        if not (concurrently or whole):
            return None
        relations = (text(stmt.relation),) if stmt.relation is not None else ()
        what = "REINDEX ... CONCURRENTLY" if concurrently else "REINDEX SCHEMA/DATABASE/SYSTEM"
        return OutsideTransaction(what, True, relations=relations)
    if name == "VacuumStmt" and stmt.is_vacuumcmd:
        relations = tuple(text(r.relation) for r in stmt.rels or () if r.relation is not None)
        return OutsideTransaction("VACUUM", True, relations=relations)
    if name == "ClusterStmt" and stmt.relation is None:
        return OutsideTransaction("CLUSTER (every table)", True)
    if (
        name == "AlterEnumStmt"
        and stmt.newVal is not None
        and server_version is not None
        and server_version < PG_ADD_VALUE_IN_TRANSACTION
    ):
        type_name = ".".join(n.sval for n in stmt.typeName)
        return OutsideTransaction(
            "ALTER TYPE ... ADD VALUE (before PostgreSQL 12)",
            bool(stmt.skipIfNewValExists),
            types=(type_name,),
        )
    return None

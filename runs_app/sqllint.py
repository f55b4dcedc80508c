"""Policy checks on migration SQL: risky statements a plan may run, with why and a safer form.

`runs_app.sqlpolicy` refuses what a batch must never do; this module flags what it may do but
an author and an approver should think twice about: an `UPDATE` without `WHERE`, an index
built under a write lock, a column added with a volatile default, a table rewritten by a type
change... The rules are those `strong_migrations` (Ruby) and `squawk` (PostgreSQL) are known
for, read with the same parsers as the policy: pglast (libpg_query, PostgreSQL's own parser)
for PostgreSQL targets and sqlglot's SQLite dialect for SQLite targets.

The rule set is data: `RULES` is one table of `LintRule`s (name, severity, dialects, why, the
safer form, and a small check over the parsed statement); `docs/sql-lint.md` is the same table
for readers (`tests/runs_app/test_sqllint.py` checks that every rule is documented). Lock
levels on PostgreSQL come from `PG_STATEMENT_LOCKS` / `PG_ALTER_LOCKS`, transcribed from the
PostgreSQL manual, "Explicit Locking" (13.3) and the ALTER TABLE page.

Checks see the statements of one stage in order (`StageContext`), so a stage that creates a
table and then indexes it is not told to index concurrently, and a `SET NOT NULL` after a
validated `CHECK (col IS NOT NULL)` is not flagged (PostgreSQL ≥ 12 then skips the scan).
Text the parser cannot read yields no findings: the policy reports it as `invalid_sql`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from runs_app import sqlpolicy

INFO = "info"
WARNING = "warning"
HIGH = "high"
SEVERITIES = (INFO, WARNING, HIGH)
SEVERITY_RANK = {INFO: 0, WARNING: 1, HIGH: 2}

# The code every finding carries as a validation warning; the rule is in its detail.
SQL_FINDING = "sql_finding"

# --- PostgreSQL lock levels --------------------------------------------------------------

# Table-level lock modes, weakest first (PostgreSQL manual 13.3.1).
PG_LOCK_MODES = (
    "ACCESS SHARE",
    "ROW SHARE",
    "ROW EXCLUSIVE",
    "SHARE UPDATE EXCLUSIVE",
    "SHARE",
    "SHARE ROW EXCLUSIVE",
    "EXCLUSIVE",
    "ACCESS EXCLUSIVE",
)
# What each lock blocks, for messages.
PG_LOCK_BLOCKS = {
    "ACCESS SHARE": "only ACCESS EXCLUSIVE (DDL that rewrites or drops the table)",
    "ROW SHARE": "EXCLUSIVE and ACCESS EXCLUSIVE",
    "ROW EXCLUSIVE": "SHARE and stronger: CREATE INDEX (non-concurrent) and most DDL",
    "SHARE UPDATE EXCLUSIVE": "VACUUM, ANALYZE, concurrent index builds and DDL; not reads "
    "or writes",
    "SHARE": "writes (INSERT, UPDATE, DELETE); reads go on",
    "SHARE ROW EXCLUSIVE": "writes and other SHARE-level DDL; reads go on",
    "EXCLUSIVE": "everything but plain reads",
    "ACCESS EXCLUSIVE": "every read and write of the table",
}

# Statement node type -> (lock mode, its concurrent variant or None).
PG_STATEMENT_LOCKS: dict[str, tuple[str, str | None]] = {
    "SelectStmt": ("ACCESS SHARE", None),
    "InsertStmt": ("ROW EXCLUSIVE", None),
    "UpdateStmt": ("ROW EXCLUSIVE", None),
    "DeleteStmt": ("ROW EXCLUSIVE", None),
    "MergeStmt": ("ROW EXCLUSIVE", None),
    "IndexStmt": ("SHARE", "SHARE UPDATE EXCLUSIVE"),
    "ReindexStmt": ("SHARE", "SHARE UPDATE EXCLUSIVE"),
    "DropStmt": ("ACCESS EXCLUSIVE", "SHARE UPDATE EXCLUSIVE"),
    "TruncateStmt": ("ACCESS EXCLUSIVE", None),
    "RenameStmt": ("ACCESS EXCLUSIVE", None),
    "ClusterStmt": ("ACCESS EXCLUSIVE", None),
    "RefreshMatViewStmt": ("ACCESS EXCLUSIVE", "EXCLUSIVE"),
    "VacuumStmt": ("SHARE UPDATE EXCLUSIVE", None),
    "CreateTrigStmt": ("SHARE ROW EXCLUSIVE", None),
    "CreateStatsStmt": ("SHARE UPDATE EXCLUSIVE", None),
    "CommentStmt": ("SHARE UPDATE EXCLUSIVE", None),
    "RuleStmt": ("ACCESS EXCLUSIVE", None),
    "AlterTableStmt": ("ACCESS EXCLUSIVE", None),  # refined per subcommand below
}
# ALTER TABLE subcommands that take less than ACCESS EXCLUSIVE (the ALTER TABLE page);
# every other subcommand takes ACCESS EXCLUSIVE.
PG_ALTER_LOCKS = {
    "AT_ValidateConstraint": "SHARE UPDATE EXCLUSIVE",
    "AT_SetStatistics": "SHARE UPDATE EXCLUSIVE",
    "AT_ClusterOn": "SHARE UPDATE EXCLUSIVE",
    "AT_DropCluster": "SHARE UPDATE EXCLUSIVE",
    "AT_SetRelOptions": "SHARE UPDATE EXCLUSIVE",
    "AT_ResetRelOptions": "SHARE UPDATE EXCLUSIVE",
    "AT_AttachPartition": "SHARE UPDATE EXCLUSIVE",
    "AT_EnableTrig": "SHARE ROW EXCLUSIVE",
    "AT_DisableTrig": "SHARE ROW EXCLUSIVE",
    "AT_EnableTrigAll": "SHARE ROW EXCLUSIVE",
    "AT_DisableTrigAll": "SHARE ROW EXCLUSIVE",
    "AT_EnableTrigUser": "SHARE ROW EXCLUSIVE",
    "AT_DisableTrigUser": "SHARE ROW EXCLUSIVE",
}
# ADD CONSTRAINT ... FOREIGN KEY takes SHARE ROW EXCLUSIVE on both tables.
PG_ADD_FOREIGN_KEY_LOCK = "SHARE ROW EXCLUSIVE"

# Functions whose value differs per row: as an added column's default, PostgreSQL evaluates
# them for every existing row, i.e. rewrites the table (fast defaults, PG ≥ 11, need a
# non-volatile expression).
PG_VOLATILE_FUNCTIONS = frozenset(
    {
        "random",
        "gen_random_uuid",
        "uuid_generate_v1",
        "uuid_generate_v1mc",
        "uuid_generate_v4",
        "uuidv4",
        "uuidv7",
        "clock_timestamp",
        "timeofday",
        "nextval",
        "txid_current",
        "setseed",
    }
)
# Stable time functions: one value for the whole statement, so no rewrite on PG ≥ 11, but
# every existing row gets the migration's time, which is rarely what "created at" means.
PG_TIME_FUNCTIONS = frozenset(
    {"now", "transaction_timestamp", "statement_timestamp", "current_timestamp"}
)


def pg_lock(stmt: Any) -> str | None:
    """The strongest table lock PostgreSQL takes for `stmt` (a pglast statement node), e.g.
    "ACCESS EXCLUSIVE", or None for statements that lock no existing table (CREATE TABLE,
    CREATE FUNCTION...)."""
    name = type(stmt).__name__
    if name == "AlterTableStmt":
        modes = []
        for cmd in stmt.cmds or ():
            sub = cmd.subtype.name
            if sub == "AT_AddConstraint" and _constraint_type(cmd.def_) == "CONSTR_FOREIGN":
                modes.append(PG_ADD_FOREIGN_KEY_LOCK)
            elif sub == "AT_DetachPartition" and getattr(cmd.def_, "concurrent", False):
                modes.append("SHARE UPDATE EXCLUSIVE")
            else:
                modes.append(PG_ALTER_LOCKS.get(sub, "ACCESS EXCLUSIVE"))
        return max(modes, key=PG_LOCK_MODES.index) if modes else "ACCESS EXCLUSIVE"
    if name not in PG_STATEMENT_LOCKS:
        return None
    plain, concurrent = PG_STATEMENT_LOCKS[name]
    if name == "ReindexStmt":
        params = [getattr(p, "defname", "") for p in (getattr(stmt, "params", None) or ())]
        return concurrent if "concurrently" in params else plain
    if name == "VacuumStmt":
        opts = [getattr(p, "defname", "") for p in (stmt.options or ())]
        return "ACCESS EXCLUSIVE" if "full" in opts else plain
    if concurrent and getattr(stmt, "concurrent", False):
        return concurrent
    return plain


def _constraint_type(node: Any) -> str:
    contype = getattr(node, "contype", None)
    return contype.name if contype is not None else ""


# --- the rules ---------------------------------------------------------------------------


@dataclasses.dataclass
class StageContext:
    """What earlier statements of the same stage did, as far as later checks care."""

    created_tables: set[str] = dataclasses.field(default_factory=set)
    # NOT VALID `CHECK (col IS NOT NULL)` constraints: name -> (table, column).
    not_null_checks: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    # (table, column) pairs with a validated `CHECK (col IS NOT NULL)`.
    validated_not_null: set[tuple[str, str]] = dataclasses.field(default_factory=set)


@dataclasses.dataclass(frozen=True)
class Parsed:
    """One statement as the target's parser read it: `node` is a pglast node (PostgreSQL) or
    a sqlglot expression (SQLite); `vendor` says which."""

    node: Any
    vendor: str
    text: str


# A check yields one sentence per risky thing it sees ("UPDATE of orders has no WHERE").
Check = Callable[[Parsed, StageContext], Iterator[str]]


@dataclasses.dataclass(frozen=True)
class LintRule:
    """One policy check: a stable name, its severity, the dialects it applies to, why the
    statement is risky, the safer form, and the check over a parsed statement."""

    name: str
    severity: str
    dialects: frozenset[str]
    title: str
    why: str
    safer: str
    check: Check


def _relname(node: Any) -> str:
    rel = getattr(node, "relation", None)
    return getattr(rel, "relname", "") or ""


def _dotted(obj: Any) -> str:
    """A DropStmt object (a tuple of String nodes for tables and indexes) as `a.b`."""
    parts = obj if isinstance(obj, tuple) else ()
    return ".".join(getattr(n, "sval", "") or "" for n in parts)


def _alter_cmds(p: Parsed, subtype: str) -> Iterator[Any]:
    if type(p.node).__name__ == "AlterTableStmt":
        for cmd in p.node.cmds or ():
            if cmd.subtype.name == subtype:
                yield cmd


def _pg_funcs(node: Any) -> Iterator[str]:
    """Names of the functions called anywhere in `node` (pglast), lower case, unqualified;
    CURRENT_TIMESTAMP and friends (SQLValueFunction) as "current_timestamp"."""
    from pglast import ast
    from pglast.visitors import Visitor

    found: list[str] = []

    class Calls(Visitor):
        def visit_FuncCall(self, ancestors: Any, call: ast.FuncCall) -> None:
            found.append(call.funcname[-1].sval.lower())

        def visit_SQLValueFunction(self, ancestors: Any, fn: Any) -> None:
            found.append("current_timestamp")

    Calls()(node)
    return iter(found)


def _column_defaults(col: Any) -> tuple[bool, Any]:
    """(NOT NULL, the DEFAULT expression or None) of a pglast ColumnDef; identity and
    generated columns count as having a default."""
    not_null, default = bool(col.is_not_null), None
    for con in col.constraints or ():
        kind = _constraint_type(con)
        if kind == "CONSTR_NOTNULL":
            not_null = True
        elif kind == "CONSTR_DEFAULT":
            default = con.raw_expr
        elif kind in ("CONSTR_IDENTITY", "CONSTR_GENERATED"):
            default = con
    return not_null, default


def _check_no_where(p: Parsed, ctx: StageContext) -> Iterator[str]:
    if p.vendor == sqlpolicy.POSTGRESQL:
        name = type(p.node).__name__
        if name in ("UpdateStmt", "DeleteStmt") and p.node.whereClause is None:
            verb = "UPDATE" if name == "UpdateStmt" else "DELETE"
            yield f"{verb} of {_relname(p.node)} has no WHERE: it changes every row"
        return
    from sqlglot import exp

    if isinstance(p.node, exp.Update | exp.Delete) and not p.node.args.get("where"):
        verb = "UPDATE" if isinstance(p.node, exp.Update) else "DELETE"
        yield f"{verb} of {p.node.this.name} has no WHERE: it changes every row"


def _check_index_not_concurrent(p: Parsed, ctx: StageContext) -> Iterator[str]:
    if type(p.node).__name__ != "IndexStmt" or p.node.concurrent:
        return
    table = _relname(p.node)
    if table not in ctx.created_tables:  # a table created by this stage is still empty
        yield f"CREATE INDEX on {table} blocks writes to it while the index is built"


def _check_volatile_default(p: Parsed, ctx: StageContext) -> Iterator[str]:
    for cmd in _alter_cmds(p, "AT_AddColumn"):
        _, default = _column_defaults(cmd.def_)
        if default is None:
            continue
        volatile = sorted(set(_pg_funcs(default)) & PG_VOLATILE_FUNCTIONS)
        if volatile:
            yield (
                f"column {cmd.def_.colname} of {_relname(p.node)} defaults to "
                f"{volatile[0]}(), evaluated for every existing row: the table is rewritten"
            )


def _check_time_default(p: Parsed, ctx: StageContext) -> Iterator[str]:
    for cmd in _alter_cmds(p, "AT_AddColumn"):
        _, default = _column_defaults(cmd.def_)
        if default is None:
            continue
        stable = sorted(set(_pg_funcs(default)) & PG_TIME_FUNCTIONS)
        if stable and not set(_pg_funcs(default)) & PG_VOLATILE_FUNCTIONS:
            yield (
                f"column {cmd.def_.colname} of {_relname(p.node)} defaults to {stable[0]}(): "
                "every existing row gets the time of the migration"
            )


def _check_add_not_null(p: Parsed, ctx: StageContext) -> Iterator[str]:
    if p.vendor == sqlpolicy.POSTGRESQL:
        table = _relname(p.node)
        for cmd in _alter_cmds(p, "AT_AddColumn"):
            not_null, default = _column_defaults(cmd.def_)
            if not_null and default is None and table not in ctx.created_tables:
                yield f"column {cmd.def_.colname} of {table} is NOT NULL without a DEFAULT"
        return
    from sqlglot import exp

    if not isinstance(p.node, exp.Alter):
        return
    for action in p.node.args.get("actions") or ():
        if not isinstance(action, exp.ColumnDef):
            continue
        kinds = [c.args.get("kind") for c in action.args.get("constraints") or ()]
        not_null = any(
            isinstance(k, exp.NotNullColumnConstraint) and not k.args.get("allow_null")
            for k in kinds
        )
        if not_null and not any(isinstance(k, exp.DefaultColumnConstraint) for k in kinds):
            yield (
                f"column {action.name} of {p.node.this.name} is NOT NULL without a DEFAULT "
                "(SQLite refuses it)"
            )


def _check_set_not_null(p: Parsed, ctx: StageContext) -> Iterator[str]:
    table = _relname(p.node)
    for cmd in _alter_cmds(p, "AT_SetNotNull"):
        if (table, cmd.name) not in ctx.validated_not_null:
            yield (
                f"SET NOT NULL on {table}.{cmd.name} scans the whole table under ACCESS EXCLUSIVE"
            )


def _check_column_type(p: Parsed, ctx: StageContext) -> Iterator[str]:
    table = _relname(p.node)
    for cmd in _alter_cmds(p, "AT_AlterColumnType"):
        if table not in ctx.created_tables:
            yield f"changing the type of {table}.{cmd.name} may rewrite the table"


def _check_drop(p: Parsed, ctx: StageContext) -> Iterator[str]:
    if p.vendor == sqlpolicy.POSTGRESQL:
        name = type(p.node).__name__
        if name == "DropStmt" and p.node.removeType.name in ("OBJECT_TABLE", "OBJECT_MATVIEW"):
            names = [_dotted(obj) for obj in p.node.objects]
            yield f"DROP TABLE {', '.join(names)} deletes the table and its data"
        for cmd in _alter_cmds(p, "AT_DropColumn"):
            yield f"DROP COLUMN {_relname(p.node)}.{cmd.name} deletes the column's data"
        return
    from sqlglot import exp

    node = p.node
    if isinstance(node, exp.Drop) and str(node.args.get("kind", "")).upper() == "TABLE":
        names = ", ".join(t.name for t in node.args.get("tables") or ())
        yield f"DROP TABLE {names} deletes the table and its data"
    if isinstance(node, exp.Alter):
        for action in node.args.get("actions") or ():
            if isinstance(action, exp.Drop) and str(action.args.get("kind", "")).upper() == (
                "COLUMN"
            ):
                for col in action.args.get("tables") or ():
                    yield f"DROP COLUMN {node.this.name}.{col.name} deletes the column's data"


def _check_rename(p: Parsed, ctx: StageContext) -> Iterator[str]:
    if p.vendor == sqlpolicy.POSTGRESQL:
        if type(p.node).__name__ != "RenameStmt":
            return
        kind = p.node.renameType.name
        if kind == "OBJECT_TABLE":
            yield f"renaming table {_relname(p.node)} to {p.node.newname}"
        elif kind == "OBJECT_COLUMN":
            yield (f"renaming column {_relname(p.node)}.{p.node.subname} to {p.node.newname}")
        return
    from sqlglot import exp

    if not isinstance(p.node, exp.Alter):
        return
    for action in p.node.args.get("actions") or ():
        if isinstance(action, exp.AlterRename):
            yield f"renaming table {p.node.this.name} to {action.this.name}"
        elif isinstance(action, exp.RenameColumn):
            yield (
                f"renaming column {p.node.this.name}.{action.this.name} to {action.args['to'].name}"
            )


def _added_constraints(p: Parsed, contype: str) -> Iterator[Any]:
    for cmd in _alter_cmds(p, "AT_AddConstraint"):
        if _constraint_type(cmd.def_) == contype and not cmd.def_.skip_validation:
            yield cmd.def_


def _check_fk_validated(p: Parsed, ctx: StageContext) -> Iterator[str]:
    table = _relname(p.node)
    if table in ctx.created_tables:
        return
    for con in _added_constraints(p, "CONSTR_FOREIGN"):
        yield (
            f"foreign key {con.conname or ''} on {table} is validated at once: both {table} "
            f"and {con.pktable.relname} are scanned under SHARE ROW EXCLUSIVE"
        ).replace("key  on", "key on")


def _check_check_validated(p: Parsed, ctx: StageContext) -> Iterator[str]:
    table = _relname(p.node)
    if table in ctx.created_tables:
        return
    for con in _added_constraints(p, "CONSTR_CHECK"):
        yield (
            f"CHECK constraint {con.conname or ''} on {table} is validated at once: the "
            "table is scanned under ACCESS EXCLUSIVE"
        ).replace("constraint  on", "constraint on")


def _check_truncate(p: Parsed, ctx: StageContext) -> Iterator[str]:
    if type(p.node).__name__ == "TruncateStmt":
        names = ", ".join(r.relname for r in p.node.relations)
        yield f"TRUNCATE {names} deletes every row"


def _check_lock(p: Parsed, ctx: StageContext) -> Iterator[str]:
    lock = pg_lock(p.node)
    if lock:
        node = p.node
        names = [r.relname for r in getattr(node, "relations", None) or ()]
        if type(node).__name__ == "DropStmt":
            names = [_dotted(obj) for obj in node.objects]
        target = _relname(node) or ", ".join(n for n in names if n) or "its table"
        yield f"takes {lock} on {target}, which blocks {PG_LOCK_BLOCKS[lock]}"


PG = frozenset({sqlpolicy.POSTGRESQL})
BOTH = frozenset({sqlpolicy.POSTGRESQL, sqlpolicy.SQLITE})

RULES: tuple[LintRule, ...] = (
    LintRule(
        "update_without_where",
        HIGH,
        BOTH,
        "UPDATE or DELETE without WHERE",
        "Changes or deletes every row of the table, usually by mistake, and holds row locks "
        "on all of them until the batch commits.",
        "Add a WHERE clause; for a deliberate change of every row, use the backfill form, "
        "which runs it in key-range batches.",
        _check_no_where,
    ),
    LintRule(
        "index_not_concurrent",
        WARNING,
        PG,
        "CREATE INDEX without CONCURRENTLY",
        "Takes a SHARE lock: every INSERT, UPDATE and DELETE on the table waits until the "
        "index is built, minutes on a large table (the table's size is not known here).",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS ... as its own item (it runs alone, "
        "outside the batch's transaction).",
        _check_index_not_concurrent,
    ),
    LintRule(
        "volatile_default",
        HIGH,
        PG,
        "ADD COLUMN with a volatile default",
        "A volatile default (random(), gen_random_uuid(), clock_timestamp(), nextval()...) "
        "is computed for each existing row, so PostgreSQL rewrites the whole table under "
        "ACCESS EXCLUSIVE. A constant default is free on PostgreSQL ≥ 11.",
        "Add the column without a default (or with a constant one), set the default with "
        "ALTER COLUMN ... SET DEFAULT, then fill existing rows with a backfill.",
        _check_volatile_default,
    ),
    LintRule(
        "time_default",
        WARNING,
        PG,
        "ADD COLUMN defaulting to the current time",
        "now() and CURRENT_TIMESTAMP are evaluated once (no rewrite on PostgreSQL ≥ 11), "
        "so every existing row gets the time of the migration, not a time of its own.",
        "Add the column nullable, SET DEFAULT now() for new rows, and backfill existing "
        "rows from a column that holds their real time.",
        _check_time_default,
    ),
    LintRule(
        "add_column_not_null",
        HIGH,
        BOTH,
        "ADD COLUMN NOT NULL without a default",
        "Fails on any table that has rows (existing rows would be NULL); SQLite refuses it "
        "outright.",
        "Add the column with a constant DEFAULT, or add it nullable, backfill it, then add a "
        "NOT VALID CHECK (col IS NOT NULL), VALIDATE it and SET NOT NULL.",
        _check_add_not_null,
    ),
    LintRule(
        "set_not_null",
        WARNING,
        PG,
        "SET NOT NULL without a validated CHECK",
        "PostgreSQL scans the whole table to prove no NULL is left, holding ACCESS EXCLUSIVE "
        "(no reads, no writes) for the whole scan.",
        "ADD CONSTRAINT c CHECK (col IS NOT NULL) NOT VALID; VALIDATE CONSTRAINT c (SHARE "
        "UPDATE EXCLUSIVE, reads and writes go on); then SET NOT NULL, which PostgreSQL ≥ 12 "
        "proves from the check without a scan; then drop the check.",
        _check_set_not_null,
    ),
    LintRule(
        "column_type_change",
        HIGH,
        PG,
        "ALTER COLUMN TYPE",
        "Most type changes rewrite the table and its indexes under ACCESS EXCLUSIVE; running "
        "code that reads the old type may also break.",
        "Add a new column of the new type, backfill it, switch the code to it, then drop "
        "the old column in a later release.",
        _check_column_type,
    ),
    LintRule(
        "drop_table_or_column",
        HIGH,
        BOTH,
        "DROP TABLE / DROP COLUMN",
        "Deletes data that no rollback of a later run brings back, and breaks code that "
        "still reads it.",
        "Stop reading and writing the table or column in a release first (Django: remove "
        "the field, deploy), keep a backup, then drop it.",
        _check_drop,
    ),
    LintRule(
        "rename",
        WARNING,
        BOTH,
        "RENAME TABLE / RENAME COLUMN",
        "Code that is running now still uses the old name and fails from the moment the "
        "rename commits until it is redeployed.",
        "Add the new table or column, write to both, backfill, move readers over, then drop "
        "the old one (or put a view under the old name).",
        _check_rename,
    ),
    LintRule(
        "foreign_key_validated",
        WARNING,
        PG,
        "ADD FOREIGN KEY without NOT VALID",
        "Checks every existing row against the referenced table at once, holding SHARE ROW "
        "EXCLUSIVE on both tables (writes wait) for the whole scan.",
        "ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID, then VALIDATE CONSTRAINT in a later "
        "item (SHARE UPDATE EXCLUSIVE: reads and writes go on).",
        _check_fk_validated,
    ),
    LintRule(
        "check_validated",
        WARNING,
        PG,
        "ADD CHECK without NOT VALID",
        "Checks every existing row at once under ACCESS EXCLUSIVE (no reads, no writes).",
        "ADD CONSTRAINT ... CHECK (...) NOT VALID, then VALIDATE CONSTRAINT in a later item.",
        _check_check_validated,
    ),
    LintRule(
        "truncate",
        HIGH,
        PG,
        "TRUNCATE",
        "Deletes every row, takes ACCESS EXCLUSIVE, and is not MVCC-safe for concurrent readers.",
        "DELETE in key-range batches (the backfill form) if the rows must go while the "
        "application runs.",
        _check_truncate,
    ),
    LintRule(
        "lock_level",
        INFO,
        PG,
        "Lock taken on PostgreSQL",
        "The table lock this statement takes, held until the batch's transaction ends; "
        "`lock_timeout_ms` bounds the wait for it.",
        "Keep batches that take strong locks short, and their statements alone in a batch.",
        _check_lock,
    ),
)
RULES_BY_NAME = {r.name: r for r in RULES}


# --- findings ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LintFinding:
    """One finding on one statement.

    `path` is relative to the stage (`params.statements[3]`, `params.backfill.sql`);
    `statement` is the item's index (0 for a backfill); `lock` the PostgreSQL lock mode the
    statement takes (None on SQLite or when it locks no existing table).
    """

    rule: str
    severity: str
    path: str
    statement: int
    message: str
    why: str
    safer: str
    lock: str | None
    sql: str

    def as_dict(self) -> dict[str, Any]:
        """JSON shape, as the API and the validation warnings' detail carry it."""
        return dataclasses.asdict(self)

    def sentence(self) -> str:
        """One line for a validation warning: severity, what, why and the safer form."""
        lock = f" Takes {self.lock}." if self.lock and self.rule != "lock_level" else ""
        return f"{self.severity}: {self.message}. {self.why}{lock} Safer: {self.safer}"


def _parse(sql: str, vendor: str) -> list[Parsed]:
    """Statements of `sql` as the target's parser reads them; [] when it cannot."""
    if vendor == sqlpolicy.POSTGRESQL:
        import pglast

        try:
            _, spans, _ = sqlpolicy.pg_params(sql)
            text = sqlpolicy._bind_positions(sql, spans)
            return [Parsed(r.stmt, vendor, sql) for r in pglast.parse_sql(text)]
        except (pglast.parser.ParseError, sqlpolicy.SqlSyntaxError):
            return []
    if vendor == sqlpolicy.SQLITE:
        import sqlglot
        from sqlglot.errors import SqlglotError

        try:
            return [Parsed(e, vendor, sql) for e in sqlglot.parse(sql, read="sqlite") if e]
        except SqlglotError:
            return []
    raise ValueError(f"unknown vendor {vendor!r}")


def _remember(p: Parsed, ctx: StageContext) -> None:
    """Note what `p` did that later statements' checks depend on."""
    if p.vendor != sqlpolicy.POSTGRESQL:
        return
    name = type(p.node).__name__
    if name == "CreateStmt":
        ctx.created_tables.add(_relname(p.node))
    table = _relname(p.node)
    for cmd in _alter_cmds(p, "AT_AddConstraint"):
        con = cmd.def_
        expr = getattr(con, "raw_expr", None)
        if (
            _constraint_type(con) == "CONSTR_CHECK"
            and type(expr).__name__ == "NullTest"
            and expr.nulltesttype.name == "IS_NOT_NULL"
            and type(expr.arg).__name__ == "ColumnRef"
        ):
            column = expr.arg.fields[-1].sval
            if con.skip_validation:
                ctx.not_null_checks[con.conname or ""] = (table, column)
            else:
                ctx.validated_not_null.add((table, column))
    for cmd in _alter_cmds(p, "AT_ValidateConstraint"):
        if cmd.name in ctx.not_null_checks:
            ctx.validated_not_null.add(ctx.not_null_checks[cmd.name])


def lint_sql(
    sql: str,
    vendor: str,
    *,
    path: str,
    index: int = 0,
    ctx: StageContext | None = None,
    min_severity: str = INFO,
) -> list[LintFinding]:
    """Findings for one plan item `sql` on `vendor` ("postgresql" or "sqlite"), every rule of
    `RULES` that applies to the dialect, in rule order. `ctx` carries what earlier items of
    the same stage did; `min_severity` drops weaker findings. Never raises on bad SQL (it
    yields nothing: the SQL policy reports it)."""
    ctx = ctx if ctx is not None else StageContext()
    floor = SEVERITY_RANK[min_severity]
    found: list[LintFinding] = []
    for parsed in _parse(sql, vendor):
        lock = pg_lock(parsed.node) if vendor == sqlpolicy.POSTGRESQL else None
        for rule in RULES:
            if vendor not in rule.dialects or SEVERITY_RANK[rule.severity] < floor:
                continue
            for message in rule.check(parsed, ctx):
                found.append(
                    LintFinding(
                        rule=rule.name,
                        severity=rule.severity,
                        path=path,
                        statement=index,
                        message=message,
                        why=rule.why,
                        safer=rule.safer,
                        lock=lock,
                        sql=sql if len(sql) <= 2000 else sql[:2000] + "…",
                    )
                )
        _remember(parsed, ctx)
    return found


def lint_params(
    params: dict[str, Any], vendor: str, *, min_severity: str = INFO
) -> list[LintFinding]:
    """Findings for a `by_sql_batch` stage's params: each item of `statements` in order (paths
    `params.statements[j]`), or the backfill's statement (`params.backfill.sql`)."""
    ctx = StageContext()
    if isinstance(params.get("backfill"), dict) and isinstance(params["backfill"].get("sql"), str):
        return lint_sql(
            params["backfill"]["sql"],
            vendor,
            path="params.backfill.sql",
            ctx=ctx,
            min_severity=min_severity,
        )
    found: list[LintFinding] = []
    for j, sql in enumerate(params.get("statements") or ()):
        if isinstance(sql, str):
            found.extend(
                lint_sql(
                    sql,
                    vendor,
                    path=f"params.statements[{j}]",
                    index=j,
                    ctx=ctx,
                    min_severity=min_severity,
                )
            )
    return found


def highest(severities: Any) -> str | None:
    """The highest of `severities` (strings), or None when there are none."""
    ranked = sorted(severities, key=SEVERITY_RANK.__getitem__)
    return ranked[-1] if ranked else None


# --- row estimates (context from a PostgreSQL dry-run) -----------------------------------

# One statement (or one backfill batch) the planner expects to change this many rows or more
# is a warning: its row locks are held until the batch commits, and WAL and replication lag
# grow with it (strong_migrations' "backfilling data" advice: batch large changes).
LARGE_ESTIMATE_ROWS = 100_000

# Not a check over the statement's text: the planner's estimate comes from the target, read
# by a PostgreSQL dry-run (`TargetConnection.estimate_rows`, EXPLAIN without ANALYZE) and
# turned into findings by `estimate_findings`. Documented with RULES in docs/sql-lint.md.
ESTIMATE_RULE = LintRule(
    "row_estimate",
    INFO,
    PG,
    "Rows the planner estimates (dry-run)",
    "PostgreSQL's planner estimate (EXPLAIN, from the table's statistics) of the rows the "
    "statement changes, beside the rows it really changed in the rolled-back dry-run; a "
    f"warning at {LARGE_ESTIMATE_ROWS:,} rows or more in one batch, or when the estimate "
    "failed. Far from the real count means stale statistics: the apply's plan may differ.",
    "Run large changes as a backfill in key-range batches; ANALYZE the table when the "
    "estimate and the real count disagree.",
    lambda p, ctx: iter(()),
)


def estimate_findings(
    estimates: list[dict[str, Any]], *, sql: str, path: str, backfill: bool = False
) -> list[LintFinding]:
    """`row_estimate` findings from a dry-run's row estimates of one plan item.

    `estimates`: entries {"statement", "verb", "params", "estimated_rows", "rows", "error"}
    (`selectors.change_summary`'s shape of the previews' `row_estimates`): one for a
    statement, one per key interval of a backfill (`backfill=True`: one finding for the
    template, totals and the largest batch). Severity: info; warning when one batch is
    estimated at LARGE_ESTIMATE_ROWS or more, or when EXPLAIN failed (its error is the
    message). [] when `estimates` is empty."""
    if not estimates:
        return []
    rule = ESTIMATE_RULE
    statement = estimates[0]["statement"] if not backfill else 0
    errors = [e for e in estimates if e["error"]]
    known = [e for e in estimates if e["estimated_rows"] is not None]
    real = [e["rows"] for e in estimates if e["rows"] is not None]
    found: list[LintFinding] = []

    def finding(severity: str, message: str) -> LintFinding:
        return LintFinding(
            rule=rule.name,
            severity=severity,
            path=path,
            statement=statement,
            message=message,
            why=rule.why,
            safer=rule.safer,
            lock=None,
            sql=sql if len(sql) <= 2000 else sql[:2000] + "…",
        )

    if known:
        total = sum(e["estimated_rows"] for e in known)
        largest = max(e["estimated_rows"] for e in known)
        verb = known[0]["verb"] or "statement"
        if backfill:
            message = (
                f"estimated {total:,} rows over {len(known)} key interval"
                f"{'s' if len(known) != 1 else ''} (at most {largest:,} in one batch)"
            )
        else:
            message = f"estimated {total:,} rows for this {verb}"
        if real:
            message += f"; the rolled-back dry-run changed {sum(real):,}"
        severity = WARNING if largest >= LARGE_ESTIMATE_ROWS else INFO
        found.append(finding(severity, message))
    if errors:
        found.append(
            finding(
                WARNING,
                f"no row estimate for {len(errors)} of {len(estimates)} "
                f"{'key intervals' if backfill else 'statements'}: {errors[0]['error']}",
            )
        )
    return found

"""Sample rows of a `deploy.migrate` dry-run: for each UPDATE, DELETE and INSERT of a batch,
up to `SAMPLE_ROWS` rows as they were before the statement and as it left them, read inside
the dry-run's transaction (which is then rolled back), for the review's diff table.

How rows are found, the same on SQLite and PostgreSQL (a keyed SELECT before and after; the
statement that runs is exactly the reviewed one, never rewritten with RETURNING):
- UPDATE / DELETE: before the statement, `SELECT <key>, t.* FROM t WHERE <its WHERE> ORDER BY
  <key> LIMIT n`; after it, each of those rows again by key (a DELETE's are gone).
- INSERT: before, the largest key; after, the rows above it (SQLite's rowid, or a single
  integer primary key on PostgreSQL).
The key is SQLite's rowid or the table's primary key. The statement is read with sqlglot in
the target's dialect; forms it cannot sample (UPDATE ... FROM, DELETE ... USING, a CTE, a
qualified or unknown table, no key) say why instead. Every SELECT built from a statement is
checked against the SQL policy and runs with the plan statements' guards, in a savepoint
(`TargetConnection.sample_rows`).

Values are made safe to store and show: text truncated to `VALUE_CHARS`, bytes as their
length, and the columns the target marks sensitive (`HXO_DATABASE_TARGETS`' `sensitive`)
replaced by `MASK`.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
from typing import Any

from runs_app.sqlpolicy import POSTGRESQL, statement_error
from runs_app.targets import TargetConnection, quote_identifier

SAMPLE_ROWS = 5
VALUE_CHARS = 80
MASK = "•••"
# A sensitive value this long or longer found inside another cell masks that cell too
# (shorter ones, "1" or "no", would mask half the table by chance).
MIN_SECRET_CHARS = 4
KEY_PREFIX = "hxo_key_"


@dataclasses.dataclass
class Probe:
    """What was read before one statement, to read the same rows after it."""

    statement: int  # its index in the stage's statements (a backfill: 0)
    verb: str  # "update", "delete" or "insert"
    table: str
    key: list[str]
    ref: str  # the table's name or alias in the SELECTs
    columns: list[str] = dataclasses.field(default_factory=list)
    before: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    max_key: Any = None
    reason: str = ""  # why no rows were sampled
    # Columns the statement writes from an expression naming these columns (lowercase), as
    # the parser reads it: {"fax": {"email", "phone"}}; "*" for every column an INSERT ...
    # SELECT writes. A sensitive column copied into another taints it (`record`).
    feeds: dict[str, set[str]] = dataclasses.field(default_factory=dict)


def _feeds(tree: Any, verb: str) -> dict[str, set[str]]:
    """What each written column is computed from (see Probe.feeds), from sqlglot's tree."""
    from sqlglot import exp

    def named(node: Any) -> set[str]:
        return {c.name.lower() for c in node.find_all(exp.Column) if c.name}

    if verb == "update":
        feeds: dict[str, set[str]] = {}
        for assignment in tree.expressions:
            if isinstance(assignment, exp.EQ) and isinstance(assignment.this, exp.Column):
                column = assignment.this.name.lower()
                feeds[column] = feeds.get(column, set()) | named(assignment.expression)
        return feeds
    if verb == "insert":
        source = tree.expression
        return {"*": named(source)} if source is not None else {}
    return {}


def _plan(
    sql: str, vendor: str
) -> tuple[str, str, str | None, str | None, dict[str, set[str]]] | str:
    """(verb, table, alias, WHERE text, feeds) of a sampleable statement, or why it is not."""
    import sqlglot
    from sqlglot import exp

    dialect = "postgres" if vendor == POSTGRESQL else "sqlite"
    try:
        tree = sqlglot.parse_one(sql, read=dialect)
    except sqlglot.errors.SqlglotError:
        return "not read by the parser"
    # (sqlglot's argument names changed across versions: "with"/"with_", "from"/"from_".)
    if tree.find(exp.With) is not None:
        return "a statement with a CTE is not sampled"
    if tree.args.get("limit") or tree.args.get("order"):
        return "a statement with ORDER BY or LIMIT is not sampled"
    if isinstance(tree, exp.Update):
        verb = "update"
        if tree.args.get("from") or tree.args.get("from_") or tree.args.get("joins"):
            return "UPDATE ... FROM is not sampled"
        table = tree.this
    elif isinstance(tree, exp.Delete):
        verb = "delete"
        if tree.args.get("using") or tree.args.get("tables"):
            return "DELETE ... USING is not sampled"
        table = tree.this
    elif isinstance(tree, exp.Insert):
        verb = "insert"
        table = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
        if tree.args.get("conflict"):
            return "INSERT ... ON CONFLICT is not sampled"
    else:
        return ""  # not DML: nothing to sample
    if not isinstance(table, exp.Table) or table.args.get("db") or not table.name:
        return "only an unqualified table is sampled"
    where = tree.args.get("where")
    alias = table.alias or None
    feeds = _feeds(tree, verb)
    if where is None:
        return verb, table.name, alias, None, feeds
    # Named parameters stay `:name`, as the target connection binds them: sqlglot's
    # PostgreSQL writer renders them `%(name)s`, which no backfill batch's WHERE then read
    # (every PostgreSQL backfill had "its WHERE could not be read on its own").
    kept = where.this.transform(
        lambda node: (
            exp.Var(this=f":{node.name}")
            if isinstance(node, exp.Placeholder) and node.name.isidentifier()
            else node
        )
    )
    return verb, table.name, alias, kept.sql(dialect=dialect), feeds


def before(
    conn: TargetConnection, sql: str, params: dict[str, Any] | None, index: int
) -> Probe | None:
    """Read the rows `sql` will change (UPDATE/DELETE) or where its inserts will start
    (INSERT), before it runs. None for a statement that is not DML."""
    planned = _plan(sql, conn.vendor)
    if planned == "":
        return None
    if isinstance(planned, str):
        return Probe(index, "", "", [], "", reason=planned)
    verb, table, alias, where, feeds = planned
    if not conn.table_exists(table):
        return Probe(index, verb, table, [], "", reason=f"{table} is not a table of the target")
    if conn.vendor == POSTGRESQL:
        key = conn.primary_key(table)
        if not key:
            return Probe(index, verb, table, [], "", reason=f"{table} has no primary key")
    else:
        key = ["rowid"]
    ref = quote_identifier(alias or table)
    source = quote_identifier(table) + (f" AS {ref}" if alias else "")
    keys = ", ".join(f"{ref}.{quote_identifier(k)} AS {KEY_PREFIX}{i}" for i, k in enumerate(key))
    probe = Probe(index, verb, table, key, ref, feeds=feeds)
    if verb == "insert":
        if len(key) != 1:
            probe.reason = f"{table} has a composite key: new rows are not told apart"
            return probe
        read = _read(conn, f"SELECT MAX({ref}.{quote_identifier(key[0])}) FROM {source}", None)
        if read is None or (read[1][0][0] is not None and not isinstance(read[1][0][0], int)):
            probe.reason = f"{table}'s key is not an integer: new rows are not told apart"
            return probe
        probe.max_key = read[1][0][0]
        return probe
    order = ", ".join(f"{KEY_PREFIX}{i}" for i in range(len(key)))
    select = (
        f"SELECT {keys}, {ref}.* FROM {source}"
        + (f" WHERE {where}" if where else "")
        + f" ORDER BY {order} LIMIT {SAMPLE_ROWS}"
    )
    read = _read(conn, select, params)
    if read is None:
        probe.reason = "its WHERE could not be read on its own"
        return probe
    probe.columns, probe.before = read
    return probe


def after(conn: TargetConnection, probe: Probe) -> list[tuple[Any, ...]]:
    """The probed rows as the statement left them (a deleted row is absent)."""
    if probe.reason or not probe.key:
        return []
    keys = ", ".join(
        f"{probe.ref}.{quote_identifier(k)} AS {KEY_PREFIX}{i}" for i, k in enumerate(probe.key)
    )
    source = quote_identifier(probe.table) + (
        f" AS {probe.ref}" if probe.ref != quote_identifier(probe.table) else ""
    )
    if probe.verb == "insert":
        column = f"{probe.ref}.{quote_identifier(probe.key[0])}"
        where = "" if probe.max_key is None else f" WHERE {column} > {int(probe.max_key)}"
        read = _read(
            conn,
            f"SELECT {keys}, {probe.ref}.* FROM {source}{where} "
            f"ORDER BY {KEY_PREFIX}0 LIMIT {SAMPLE_ROWS}",
            None,
        )
        if read is None:
            return []
        probe.columns = read[0]
        return read[1]
    rows = []
    n = len(probe.key)
    match = " AND ".join(
        f"{probe.ref}.{quote_identifier(k)} = :k{i}" for i, k in enumerate(probe.key)
    )
    for row in probe.before:
        read = _read(
            conn,
            f"SELECT {keys}, {probe.ref}.* FROM {source} WHERE {match}",
            {f"k{i}": row[i] for i in range(n)},
        )
        if read is not None and read[1]:
            rows.append(read[1][0])
    return rows


def _read(
    conn: TargetConnection, sql: str, params: dict[str, Any] | None
) -> tuple[list[str], list[tuple[Any, ...]]] | None:
    if statement_error(sql, conn.vendor, path="manifest") is not None:
        return None  # the policy refuses what the rewrite produced: sample nothing
    return conn.sample_rows(sql, params)


def _show(value: Any) -> Any:
    """A value as JSON can store and a review can show: numbers and None as they are, text
    cut to VALUE_CHARS (with …), bytes as their length, anything else as its text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, decimal.Decimal | datetime.date | datetime.time):
        value = str(value)
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"


def record(probe: Probe, after_rows: list[tuple[Any, ...]], sensitive: frozenset[str]) -> dict:
    """The probe as the preview stores it: {"statement", "verb", "table", "key", "columns",
    "masked", "rows": [{"key": [...], "before": [...] | None, "after": [...] | None,
    "masked_changed": [names of masked columns whose value changed]}], "reason"}. Sensitive
    columns' values are MASK before and after (that one changed is said by name, never its
    value); so are the columns a sensitive one flows into:

    - by the parser (`Probe.feeds`): a column the statement sets from an expression naming a
      sensitive column (`SET fax = email || phone`), and every column an INSERT ... SELECT
      writes when its SELECT names one;
    - by value: a cell of the sampled rows that contains a sensitive value of those rows
      (at least MIN_SECRET_CHARS long, case folded), whatever the SQL did to put it there.
    """
    n = len(probe.key)
    columns = probe.columns[n:]
    lowered = [c.lower() for c in columns]
    hidden = {c for c in lowered if c in sensitive}
    for column, sources in probe.feeds.items():
        if sources & sensitive:
            hidden |= set(lowered) if column == "*" else {column}
    secret_at = [i for i, c in enumerate(lowered) if c in sensitive]
    secrets = {
        str(row[n + i]).casefold()
        for row in [*probe.before, *after_rows]
        for i in secret_at
        if n + i < len(row) and row[n + i] is not None and len(str(row[n + i])) >= MIN_SECRET_CHARS
    }
    if secrets:
        for row in [*probe.before, *after_rows]:
            for i, value in enumerate(row[n:]):
                if i < len(lowered) and isinstance(value, str):
                    text = value.casefold()
                    if any(secret in text for secret in secrets):
                        hidden.add(lowered[i])
    masked = sorted(c for c in columns if c.lower() in hidden)

    def cells(row: tuple[Any, ...]) -> list[Any]:
        return [
            MASK if name.lower() in hidden else _show(value)
            for name, value in zip(columns, row[n:], strict=False)
        ]

    rows: list[dict[str, Any]] = []
    if probe.verb == "insert":
        rows = [
            {"key": [_show(v) for v in r[:n]], "before": None, "after": cells(r)}
            for r in after_rows
        ]
    else:
        found = {tuple(r[:n]): r for r in after_rows}
        for r in probe.before:
            later = found.get(tuple(r[:n]))
            row: dict[str, Any] = {
                "key": [_show(v) for v in r[:n]],
                "before": cells(r),
                "after": cells(later) if later is not None else None,
            }
            if later is not None:
                # Which masked cells changed (their values stay hidden): without it a row
                # whose only change is to a masked column read "unchanged".
                row["masked_changed"] = [
                    name
                    for name, old, new in zip(columns, r[n:], later[n:], strict=False)
                    if name.lower() in hidden and old != new
                ]
            rows.append(row)
    return {
        "statement": probe.statement,
        "verb": probe.verb,
        "table": probe.table,
        "key": probe.key,
        "columns": columns,
        "masked": masked,
        "rows": rows,
        "reason": probe.reason,
    }

"""The SQL lint (runs_app.sqllint): every rule with a statement that trips it and one that
does not, on its dialect; the lock levels; the rules' documentation; the findings as warnings
in the validator, the API's validate response and the editor's live validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from blueprints_app.validation import validate_plan
from runs_app import sqllint
from runs_app.sqllint import HIGH, INFO, RULES, WARNING, lint_params, lint_sql, pg_lock

PG, SQLITE = "postgresql", "sqlite"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "sql-lint.md"

# (rule, dialect, statements that trip it, statements that do not). Statements are one stage's
# items in order: the context rules (a table created by the stage, a validated check) see them.
CASES: list[tuple[str, str, list[str], list[str]]] = [
    ("update_without_where", PG, ["UPDATE t SET a = 1"], ["UPDATE t SET a = 1 WHERE id = 2"]),
    ("update_without_where", PG, ["DELETE FROM t"], ["DELETE FROM t WHERE id < 10"]),
    ("update_without_where", SQLITE, ["UPDATE t SET a = 1"], ["UPDATE t SET a = 1 WHERE id = 2"]),
    ("update_without_where", SQLITE, ["DELETE FROM t"], ["DELETE FROM t WHERE id < 10"]),
    (
        "index_not_concurrent",
        PG,
        ["CREATE INDEX i ON t (a)"],
        ["CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a)"],
    ),
    (
        "index_not_concurrent",
        PG,
        ["CREATE INDEX i ON t (a)"],
        ["CREATE TABLE t (a int)", "CREATE INDEX i ON t (a)"],  # a new table is empty
    ),
    (
        "volatile_default",
        PG,
        ["ALTER TABLE t ADD COLUMN u uuid DEFAULT gen_random_uuid()"],
        ["ALTER TABLE t ADD COLUMN n int DEFAULT 0"],
    ),
    (
        "volatile_default",
        PG,
        ["ALTER TABLE t ADD COLUMN r float8 DEFAULT random()"],
        ["ALTER TABLE t ADD COLUMN s text DEFAULT 'x'"],
    ),
    (
        "volatile_default",
        PG,
        ["ALTER TABLE t ADD COLUMN c timestamptz DEFAULT clock_timestamp()"],
        ["ALTER TABLE t ADD COLUMN c timestamptz"],
    ),
    (
        "time_default",
        PG,
        ["ALTER TABLE t ADD COLUMN c timestamptz DEFAULT now()"],
        ["ALTER TABLE t ALTER COLUMN c SET DEFAULT now()"],
    ),
    (
        "add_column_not_null",
        PG,
        ["ALTER TABLE t ADD COLUMN n int NOT NULL"],
        ["ALTER TABLE t ADD COLUMN n int NOT NULL DEFAULT 0"],
    ),
    (
        "add_column_not_null",
        SQLITE,
        ["ALTER TABLE t ADD COLUMN n INTEGER NOT NULL"],
        ["ALTER TABLE t ADD COLUMN n INTEGER NOT NULL DEFAULT 0"],
    ),
    (
        "set_not_null",
        PG,
        ["ALTER TABLE t ALTER COLUMN c SET NOT NULL"],
        [
            "ALTER TABLE t ADD CONSTRAINT c_nn CHECK (c IS NOT NULL) NOT VALID",
            "ALTER TABLE t VALIDATE CONSTRAINT c_nn",
            "ALTER TABLE t ALTER COLUMN c SET NOT NULL",
        ],
    ),
    (
        "column_type_change",
        PG,
        ["ALTER TABLE t ALTER COLUMN c TYPE bigint"],
        ["ALTER TABLE t ALTER COLUMN c SET DEFAULT 1"],
    ),
    ("drop_table_or_column", PG, ["DROP TABLE t"], ["DROP INDEX CONCURRENTLY IF EXISTS i"]),
    ("drop_table_or_column", PG, ["ALTER TABLE t DROP COLUMN c"], ["ALTER TABLE t ADD c int"]),
    ("drop_table_or_column", SQLITE, ["DROP TABLE t"], ["DROP INDEX i"]),
    ("drop_table_or_column", SQLITE, ["ALTER TABLE t DROP COLUMN c"], ["ALTER TABLE t ADD c"]),
    ("rename", PG, ["ALTER TABLE t RENAME TO u"], ["ALTER INDEX i RENAME TO j"]),
    ("rename", PG, ["ALTER TABLE t RENAME COLUMN a TO b"], ["COMMENT ON COLUMN t.a IS 'x'"]),
    ("rename", SQLITE, ["ALTER TABLE t RENAME TO u"], ["CREATE TABLE u (a)"]),
    ("rename", SQLITE, ["ALTER TABLE t RENAME COLUMN a TO b"], ["ALTER TABLE t ADD b"]),
    (
        "foreign_key_validated",
        PG,
        ["ALTER TABLE t ADD CONSTRAINT t_u FOREIGN KEY (u) REFERENCES u (id)"],
        ["ALTER TABLE t ADD CONSTRAINT t_u FOREIGN KEY (u) REFERENCES u (id) NOT VALID"],
    ),
    (
        "check_validated",
        PG,
        ["ALTER TABLE t ADD CONSTRAINT pos CHECK (a > 0)"],
        ["ALTER TABLE t ADD CONSTRAINT pos CHECK (a > 0) NOT VALID"],
    ),
    ("truncate", PG, ["TRUNCATE t"], ["DELETE FROM t WHERE id < 100"]),
    ("lock_level", PG, ["UPDATE t SET a = 1 WHERE id = 1"], ["CREATE TABLE n (id int)"]),
]


def rules_found(statements: list[str], vendor: str) -> list[str]:
    return [f.rule for f in lint_params({"statements": statements}, vendor)]


@pytest.mark.parametrize(
    ("rule", "vendor", "trips", "passes"),
    CASES,
    ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)],
)
def test_each_rule_trips_on_its_statement_and_not_on_the_safer_one(
    rule: str, vendor: str, trips: list[str], passes: list[str]
) -> None:
    assert rule in rules_found(trips, vendor)
    assert rule not in rules_found(passes, vendor)


def test_every_rule_has_a_case_and_each_dialect_it_claims_is_tested() -> None:
    tested = {(rule, vendor) for rule, vendor, _, _ in CASES}
    for rule in RULES:
        assert rule.severity in sqllint.SEVERITIES
        for vendor in rule.dialects:
            assert (rule.name, vendor) in tested, (rule.name, vendor)


def test_postgresql_only_rules_stay_silent_on_sqlite() -> None:
    assert rules_found(["CREATE INDEX i ON t (a)", "ALTER TABLE t ADD c"], SQLITE) == []


def test_a_finding_names_its_statement_severity_lock_and_safer_form() -> None:
    found = lint_params(
        {"statements": ["SELECT 1", "UPDATE orders SET total = 0"]}, PG, min_severity=WARNING
    )
    assert len(found) == 1
    f = found[0]
    assert (f.rule, f.severity, f.path, f.statement) == (
        "update_without_where",
        HIGH,
        "params.statements[1]",
        1,
    )
    assert f.lock == "ROW EXCLUSIVE" and "orders" in f.message and "WHERE" in f.safer
    assert f.sql == "UPDATE orders SET total = 0"


def test_a_backfill_is_linted_at_its_sql_and_its_named_parameters_parse() -> None:
    params = {"backfill": {"sql": "UPDATE t SET a = 1 WHERE id >= :start AND id < :end"}}
    found = lint_params(params, PG)
    assert [(f.rule, f.severity, f.path) for f in found] == [
        ("lock_level", INFO, "params.backfill.sql")
    ]


@pytest.mark.parametrize(
    ("sql", "lock"),
    [
        ("SELECT * FROM t", "ACCESS SHARE"),
        ("INSERT INTO t VALUES (1)", "ROW EXCLUSIVE"),
        ("CREATE INDEX i ON t (a)", "SHARE"),
        ("CREATE INDEX CONCURRENTLY i ON t (a)", "SHARE UPDATE EXCLUSIVE"),
        ("ALTER TABLE t ADD COLUMN c int", "ACCESS EXCLUSIVE"),
        ("ALTER TABLE t VALIDATE CONSTRAINT c", "SHARE UPDATE EXCLUSIVE"),
        ("ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES u (id)", "SHARE ROW EXCLUSIVE"),
        # The strongest of several subcommands.
        ("ALTER TABLE t VALIDATE CONSTRAINT c, ADD COLUMN d int", "ACCESS EXCLUSIVE"),
        ("DROP TABLE t", "ACCESS EXCLUSIVE"),
        ("VACUUM t", "SHARE UPDATE EXCLUSIVE"),
        ("VACUUM FULL t", "ACCESS EXCLUSIVE"),
        (
            "CREATE TRIGGER g AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
            "SHARE ROW EXCLUSIVE",
        ),
        ("CREATE TABLE n (id int)", None),
    ],
)
def test_the_lock_each_statement_takes_on_postgresql(sql: str, lock: str | None) -> None:
    import pglast

    assert pg_lock(pglast.parse_sql(sql)[0].stmt) == lock


def test_sql_the_parser_cannot_read_yields_no_finding() -> None:
    assert lint_sql("UPDATE t SET", PG, path="p") == []
    assert lint_sql("ALTER TABLE", SQLITE, path="p") == []


def test_every_rule_is_documented_with_its_severity() -> None:
    text = DOCS.read_text()
    for rule in RULES:
        assert f"`{rule.name}`" in text, rule.name
        row = next(line for line in text.splitlines() if f"`{rule.name}`" in line)
        assert rule.severity in row, rule.name


# --- as validation warnings -----------------------------------------------------------------


def migrate_stage(statements: list[str], target: str = "demo") -> dict[str, Any]:
    return {
        "id": "migrate",
        "kind": "deploy.migrate",
        "partitioner": "by_sql_batch",
        "executor": "sql_migrate",
        "params": {"target": target, "statements": statements},
    }


@pytest.mark.django_db
def test_findings_are_warnings_at_the_statements_path_and_the_plan_stays_valid() -> None:
    doc = {"name": "p", "stages": [migrate_stage(["SELECT 1", "DELETE FROM orders"])]}
    result = validate_plan(doc)
    assert result.valid
    assert [(w.path, w.code) for w in result.warnings] == [
        ("stages[0].params.statements[1]", sqllint.SQL_FINDING)
    ]
    warning = result.warnings[0].as_dict()
    assert warning["rule"] == "update_without_where" and warning["severity"] == HIGH
    assert warning["message"].startswith("high: DELETE of orders has no WHERE")


@pytest.mark.django_db
def test_forbidden_sql_is_an_error_and_not_also_linted() -> None:
    result = validate_plan({"name": "p", "stages": [migrate_stage(["DELETE FROM t; COMMIT"])]})
    assert not result.valid and result.warnings == []


@pytest.mark.django_db
def test_postgresql_findings_in_the_api_validate_response(api_client_for, operator, settings):
    # The target is only named: linting reads its vendor, never connects.
    settings.HXO_DATABASE_TARGETS = {
        **settings.HXO_DATABASE_TARGETS,
        "pgt": "postgresql://postgres@127.0.0.1:5432/test",
    }
    body = {
        "name": "p",
        "stages": [migrate_stage(["CREATE INDEX i ON orders (customer_id)"], target="pgt")],
    }
    response = api_client_for(operator).post("/api/v1/validate/", {"plan": body}, format="json")
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["valid"] is True and data["errors"] == []
    [w] = data["warnings"]
    assert w["path"] == "stages[0].params.statements[0]" and w["code"] == "sql_finding"
    assert (w["rule"], w["severity"], w["lock"]) == ("index_not_concurrent", WARNING, "SHARE")
    assert "CONCURRENTLY" in w["safer"]

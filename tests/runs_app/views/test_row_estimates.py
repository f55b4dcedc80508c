"""PostgreSQL row estimates for a deploy.migrate dry-run (issue 14 §2): the planner's
estimate (EXPLAIN (FORMAT JSON), never ANALYZE) of each DML statement and of each backfill key
interval, beside the rows it really changed in the rolled-back transaction; on the review
(SQL table, change summary, `row_estimate` findings) and in the API's `change_summary`. The
estimates are checked against the real row counts of a real table after ANALYZE. PostgreSQL
only: the `pg_target` fixture skips without a server (fails under CI=true)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from runs_app import services, sqllint
from runs_app.models import Partition, Run, RunState
from runs_app.targets import connect, estimated_rows, get_target
from tests.helpers import drain
from tests.runs_app.kinds.conftest import pg_target  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db(transaction=True)

ROWS = 20_000


def close(estimate: int | None, real: int, within: float = 0.15) -> bool:
    """The planner's estimate is within `within` (a fraction) of the real count."""
    return estimate is not None and abs(estimate - real) <= within * real


def fill(url: str) -> None:
    """orders: ROWS rows, a quarter 'closed'; archive empty; statistics gathered."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL, total numeric)"
        )
        conn.execute(
            "INSERT INTO orders SELECT g, CASE WHEN g % 4 = 0 THEN 'closed' ELSE 'open' END, "
            f"g * 1.5 FROM generate_series(1, {ROWS}) g"
        )
        conn.execute("CREATE TABLE archive (id bigserial PRIMARY KEY, order_id bigint)")
        conn.execute("ANALYZE orders")
        conn.execute("ANALYZE archive")


def migrate(operator: Any, params: dict[str, Any]) -> Run:
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "estimates",
            "stages": [
                {
                    "id": "migrate",
                    "kind": "deploy.migrate",
                    "partitioner": "by_sql_batch",
                    "executor": "sql_migrate",
                    "params": {"target": "pg", **params},
                }
            ],
        },
    )
    run = drain(services.run_start_dry_run(plan=plan, actor=operator))
    assert run.state == RunState.AWAITING_APPROVAL, run.error
    return run


# Ordered so that no statement adds row versions to orders before another is estimated: an
# UPDATE earlier in the transaction grows the table's pages, and the planner scales its row
# count with them (docs/sql-lint.md says so).
STATEMENTS = [
    "INSERT INTO archive (order_id) SELECT id FROM orders WHERE id BETWEEN 10001 AND 12000",
    "DELETE FROM orders WHERE status = 'closed'",
    "UPDATE orders SET total = total + 1 WHERE id <= 6000 AND status = 'open'",
    "CREATE INDEX orders_status ON orders (status)",
]


def test_each_dml_statement_s_estimate_is_close_to_the_rows_it_changes(
    operator,
    approver,
    client_for,
    api_client_for,
    pg_target,  # noqa: F811
):
    fill(pg_target)
    run = migrate(operator, {"statements": STATEMENTS, "batch_size": 4})

    stored = Partition.objects.get(stage__run=run).preview["row_estimates"]
    assert [(e["statement"], e["verb"], e["rows"]) for e in stored] == [
        (0, "INSERT", 2000),
        (1, "DELETE", ROWS // 4),
        (2, "UPDATE", 4500),
    ]
    for e in stored:
        assert e["error"] is None
        assert close(e["estimated_rows"], e["rows"]), e

    # The API's change summary: per statement, and the stage's total; DDL has no estimate.
    body = api_client_for(approver).get(f"/api/v1/runs/{run.pk}/").json()
    stage = body["change_summary"]["stages"][0]
    assert [s["estimate"] and s["estimate"]["rows"] for s in stage["statements"]] == [
        2000,
        ROWS // 4,
        4500,
        None,
    ]
    assert close(stage["estimated_rows"], 2000 + ROWS // 4 + 4500)
    assert stage["estimate_errors"] == 0

    # The review: the estimate column beside the rows, the summary, and info findings.
    page = client_for(approver).get(f"/runs/{run.pk}/").content.decode()
    assert page.count('data-testid="statement-estimate"') == len(STATEMENTS)
    assert "Planner estimate" in page and 'data-testid="estimated-rows"' in page
    findings = [f for s in run_findings(run) for f in s["findings"] if f.rule == "row_estimate"]
    assert [(f.path, f.severity) for f in findings] == [
        ("params.statements[0]", sqllint.INFO),
        ("params.statements[1]", sqllint.INFO),
        ("params.statements[2]", sqllint.INFO),
    ]
    assert findings[2].message.startswith("estimated ")
    assert findings[2].message.endswith(
        "rows for this UPDATE; the rolled-back dry-run changed 4,500"
    )
    assert 'data-rule="row_estimate"' in page

    # Nothing of the dry-run reached the table.
    import psycopg

    with psycopg.connect(pg_target) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == ROWS
        assert conn.execute("SELECT count(*) FROM archive").fetchone()[0] == 0
        assert conn.execute("SELECT max(total) FROM orders").fetchone()[0] == ROWS * 1.5
        indexes = "SELECT count(*) FROM pg_indexes WHERE indexname = 'orders_status'"
        assert conn.execute(indexes).fetchone()[0] == 0


def run_findings(run: Run) -> list[dict[str, Any]]:
    from runs_app import selectors

    return selectors.run_findings(run, selectors.change_summary(run))["stages"]


def test_each_backfill_batch_is_estimated_for_its_key_range(
    operator,
    approver,
    client_for,
    pg_target,  # noqa: F811
):
    fill(pg_target)
    run = migrate(
        operator,
        {
            "backfill": {
                # A DELETE: an UPDATE's rolled-back row versions stay in the heap and grow
                # its pages, which the planner scales its estimate of the next batch by.
                "sql": "DELETE FROM orders WHERE id >= :start AND id < :end AND status = 'open'",
                "table": "orders",
                "key_column": "id",
                "batch_size": 5000,
            }
        },
    )
    from runs_app import selectors

    stage = selectors.change_summary(run)["stages"][0]
    estimates = [(b["index"], b["estimates"]) for b in stage["batches"]]
    assert len(estimates) == ROWS // 5000
    for _index, (e,) in estimates:
        # 5,000 keys a batch, three in four 'open': 3,750 rows each.
        assert e["rows"] == 3750 and e["params"]["end"] - e["params"]["start"] == 5000
        assert close(e["estimated_rows"], 3750), e
    assert close(stage["estimated_rows"], 15_000)
    (finding,) = [f for s in run_findings(run) for f in s["findings"] if f.rule == "row_estimate"]
    assert finding.path == "params.backfill.sql" and finding.severity == sqllint.INFO
    assert "over 4 key intervals" in finding.message
    page = client_for(approver).get(f"/runs/{run.pk}/").content.decode()
    assert page.count('data-testid="batch-estimate"') == 4


def test_a_failed_estimate_is_shown_and_the_batch_goes_on(
    operator,
    pg_target,  # noqa: F811
):
    fill(pg_target)
    with connect(get_target("pg")) as conn:
        conn.begin(statement_timeout_ms=5000)
        try:
            rows, error = conn.estimate_rows("UPDATE nowhere SET a = 1 WHERE a = 2")
            assert rows is None and 'relation "nowhere" does not exist' in error
            # The savepoint rolled the failure back: the transaction goes on.
            assert conn.run_statement("UPDATE orders SET total = 1 WHERE id = 1") == 1
            rows, error = conn.estimate_rows("DELETE FROM orders WHERE id < :last", {"last": 101})
            assert error is None and close(rows, 100, within=0.3)
        finally:
            conn.rollback()


def test_an_estimate_error_in_a_preview_is_a_warning_on_the_review_not_a_500(
    operator,
    approver,
    client_for,
    pg_target,  # noqa: F811
):
    fill(pg_target)
    run = migrate(operator, {"statements": STATEMENTS[:1]})
    partition = Partition.objects.get(stage__run=run)
    preview = copy.deepcopy(partition.preview)
    preview["row_estimates"][0].update(
        {"estimated_rows": None, "error": "canceling statement due to statement timeout"}
    )
    preview["row_estimates"].append("not an estimate")  # hand-edited JSON is ignored
    Partition.objects.filter(pk=partition.pk).update(preview=preview)

    response = client_for(approver).get(f"/runs/{run.pk}/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "no estimate: canceling statement due to statement timeout" in page
    assert "1 estimate failed" in page
    (finding,) = [f for s in run_findings(run) for f in s["findings"] if f.rule == "row_estimate"]
    assert finding.severity == sqllint.WARNING
    assert finding.message == (
        "no row estimate for 1 of 1 statements: canceling statement due to statement timeout"
    )


def test_the_plan_rows_are_read_under_modify_table() -> None:
    update = [
        {
            "Plan": {
                "Node Type": "ModifyTable",
                "Plan Rows": 0,
                "Plans": [
                    {"Node Type": "Result", "Parent Relationship": "InitPlan", "Plan Rows": 1},
                    {"Node Type": "Seq Scan", "Parent Relationship": "Outer", "Plan Rows": 42},
                ],
            }
        }
    ]
    assert estimated_rows(update) == 42
    assert estimated_rows('[{"Plan": {"Node Type": "Result", "Plan Rows": 3}}]') == 3
    with pytest.raises(KeyError):
        estimated_rows([{"Nope": {}}])


def test_large_estimates_warn_and_the_rule_is_documented() -> None:
    estimate = {
        "statement": 0,
        "verb": "DELETE",
        "params": None,
        "estimated_rows": sqllint.LARGE_ESTIMATE_ROWS,
        "rows": 10,
        "error": None,
    }
    (finding,) = sqllint.estimate_findings([estimate], sql="DELETE FROM t", path="p")
    assert finding.severity == sqllint.WARNING
    assert sqllint.estimate_findings([], sql="DELETE FROM t", path="p") == []
    from tests.runs_app.test_sqllint import DOCS

    assert "| `row_estimate` | info |" in DOCS.read_text()

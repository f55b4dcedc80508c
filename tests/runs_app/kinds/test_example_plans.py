"""The example plans in examples/plans/ and the demo target made by `manage.py hxo_demo`.

Every plan is a valid body for POST /api/v1/plans/, together they cover every kind and every
partitioner, and each stage runs from dry-run (no effect) to apply against a copy of the demo
workspace and a demo database, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import call_command

from blueprints_app.contract import contract_kinds
from blueprints_app.validation import validate_plan
from runs_app.targets import connect
from tests.runs_app.kinds.conftest import EXAMPLES, tree_snapshot

pytestmark = pytest.mark.django_db

PLANS = sorted((EXAMPLES / "plans").glob("*.json"))


def load(path: Path) -> dict:
    return json.loads(path.read_text())


# migrate-statements-indexes rebuilds a derived table: `DELETE FROM order_daily_totals` has no
# WHERE on purpose, and the review asks the approver to acknowledge it.
EXPECTED_FINDINGS = {
    "migrate-statements-indexes": [("stages[0].params.statements[4]", "update_without_where")],
}


def test_there_are_example_plans():
    assert len(PLANS) >= 9


@pytest.mark.parametrize("path", PLANS, ids=lambda p: p.stem)
def test_every_example_plan_is_a_valid_plan_body(path):
    plan = load(path)

    assert set(plan) == {"name", "description", "stages"}
    result = validate_plan(plan).as_dict()
    assert result["valid"] is True and result["errors"] == []
    # The only warnings an example may carry are the SQL lint's findings it shows on purpose
    # (an approver must acknowledge them): they are listed here, so a new one is a decision.
    findings = [(w["path"], w["rule"]) for w in result["warnings"] if w["code"] == "sql_finding"]
    assert [w for w in result["warnings"] if w["code"] != "sql_finding"] == []
    assert findings == EXPECTED_FINDINGS.get(path.stem, [])
    assert plan["name"] == path.stem


def test_the_example_plans_cover_every_kind_and_every_partitioner():
    stages = [s for path in PLANS for s in load(path)["stages"]]
    pairs = {(s["kind"], s["partitioner"]) for s in stages}
    executors = {(s["kind"], s["executor"]) for s in stages}

    for kind in contract_kinds():
        for partitioner in kind["partitioners"]:
            assert (kind["kind"], partitioner) in pairs, (kind["kind"], partitioner)
        for executor in kind["executors"]:
            assert (kind["kind"], executor) in executors, (kind["kind"], executor)


def test_hxo_demo_seeds_over_ten_thousand_rows_with_a_backfill_to_do_once(
    sqlite_target, settings, capsys
):
    path = sqlite_target("demo")

    call_command("hxo_demo")
    first = path.read_bytes()
    call_command("hxo_demo")

    assert path.read_bytes() == first  # the second run changes nothing
    assert "already seeded" in capsys.readouterr().out
    with connect("demo") as conn:
        customers = conn.scalar("SELECT COUNT(*) FROM customers")
        orders = conn.scalar("SELECT COUNT(*) FROM orders")
        missing = conn.scalar("SELECT COUNT(*) FROM customers WHERE email_domain IS NULL")
    assert customers + orders >= 10_000
    assert missing > 1000


def test_hxo_demo_reset_gives_the_backfill_its_work_back(sqlite_target):
    sqlite_target("demo")
    call_command("hxo_demo", customers=30, orders=10)
    with connect("demo") as conn:
        conn.execute("UPDATE customers SET email_domain = 'x'")

    call_command("hxo_demo", customers=30, orders=10, reset=True)

    with connect("demo") as conn:
        assert conn.scalar("SELECT COUNT(*) FROM customers WHERE email_domain IS NULL") == 20


def _run_all(driver, path: Path, scratch: dict, target_file: Path | None) -> None:
    stages = load(path)["stages"]
    before_db = target_file.read_bytes() if target_file else None
    dry = [driver.run(stage, dry_run=True) for stage in stages]
    assert tree_snapshot(scratch["var"]) == {}, f"{path.stem}: the dry-run wrote files"
    if target_file is not None:
        assert target_file.read_bytes() == before_db, f"{path.stem}: the dry-run wrote rows"
    for stage, preview in zip(stages, dry, strict=True):
        applied = driver.run(stage, dry_run=False)
        assert len(applied.results) == len(preview.results) > 0


@pytest.mark.parametrize("path", PLANS, ids=lambda p: p.stem)
def test_every_example_plan_runs_from_dry_run_to_apply_on_sqlite(
    driver, demo_copy, scratch, sqlite_target, path
):
    target_file = sqlite_target("demo")
    call_command("hxo_demo", customers=2000, orders=8000)

    _run_all(driver, path, scratch, target_file if "migrate" in path.stem else None)

    if path.stem == "migrate-backfill-email-domain":
        with connect("demo") as conn:
            assert conn.scalar("SELECT COUNT(*) FROM customers WHERE email_domain IS NULL") == 0
            assert conn.scalar(
                "SELECT email_domain FROM customers WHERE email LIKE '%@MAIL.example.net' LIMIT 1"
            ) in (None, "mail.example.net")


@pytest.mark.postgres
@pytest.mark.parametrize("name", ["migrate-backfill-email-domain", "migrate-statements-indexes"])
def test_the_migrate_example_plans_run_on_postgresql(driver, pg_target, settings, name):
    settings.HXO_DATABASE_TARGETS = {**settings.HXO_DATABASE_TARGETS, "demo": pg_target}
    call_command("hxo_demo", customers=2000, orders=8000)
    stage = load(EXAMPLES / "plans" / f"{name}.json")["stages"][0]

    dry = driver.run(stage, dry_run=True)
    with connect("demo") as conn:
        nulls = conn.scalar("SELECT COUNT(*) FROM customers WHERE email_domain IS NULL")
        assert not conn.table_exists("hxo_ledger_batches")
        assert not conn.table_exists("hxo_ledger_intervals")
    applied = driver.run(stage, dry_run=False)

    assert [r["rows_affected"] for r in applied.results] == [
        r["rows_affected"] for r in dry.results
    ]
    with connect("demo") as conn:
        if name == "migrate-backfill-email-domain":
            assert nulls > 0
            assert conn.scalar("SELECT COUNT(*) FROM customers WHERE email_domain IS NULL") == 0
        else:
            assert conn.scalar("SELECT COUNT(*) FROM order_daily_totals") > 0
        table = "hxo_ledger_batches" if "statements" in name else "hxo_ledger_intervals"
        assert conn.scalar(f"SELECT COUNT(*) FROM {table}") == len(applied.results)

"""The change set of a dry-run (issue 14 §1): `selectors.change_summary` per kind from real
dry-runs, in numbers, and what it costs in queries."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from runs_app import selectors, services
from runs_app.models import Partition, Run, RunStage, RunState
from tests.helpers import drain
from tests.runs_app.kinds.conftest import demo_copy, scratch  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db


@pytest.fixture
def target(tmp_path: Path, settings: Any) -> Path:
    path = tmp_path / "t.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, note TEXT, email TEXT)")
        conn.execute("CREATE TABLE audit (id INTEGER PRIMARY KEY, item INTEGER)")
        conn.executemany(
            "INSERT INTO items VALUES (?, '', ?)", [(i, f"u{i}@x.test") for i in range(1, 11)]
        )
    conn.close()
    settings.HXO_DATABASE_TARGETS = {**settings.HXO_DATABASE_TARGETS, "t": f"sqlite:///{path}"}
    return path


def dry_run(operator: Any, stages: list[dict[str, Any]], name: str = "p") -> Run:
    plan = services.plan_create(actor=operator, document={"name": name, "stages": stages})
    run = drain(services.run_start_dry_run(plan=plan, actor=operator))
    # deploy.pack and the others need no approval: their dry-runs succeed.
    assert run.state in (RunState.AWAITING_APPROVAL, RunState.SUCCEEDED), run.error
    return run


def approve_and_apply(run: Run, operator: Any, approver: Any) -> Run:
    if run.state == RunState.AWAITING_APPROVAL:
        services.run_approve(run=run, actor=approver)
    applied = drain(services.run_apply(plan=run.plan, dry_run_id=run.pk, actor=operator))
    assert applied.state == RunState.SUCCEEDED
    return applied


def migrate(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "migrate",
        "kind": "deploy.migrate",
        "partitioner": "by_sql_batch",
        "executor": "sql_migrate",
        "params": {"target": "t", **params},
    }


def note_rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT id, note FROM items ORDER BY id").fetchall()


def test_a_migrate_summary_counts_rows_per_statement_and_names_the_tables(operator, target):
    before = note_rows(target)
    statements = [
        "UPDATE items SET note = 'x' WHERE id <= 3",
        "DELETE FROM items WHERE id IN (9, 10)",
        "INSERT INTO audit (item) SELECT id FROM items WHERE id <= 4",
        "UPDATE items SET note = 'none' WHERE id > 100",
    ]
    run = dry_run(operator, [migrate({"statements": statements, "batch_size": 2})])

    summary = selectors.change_summary(run)

    stage = summary["stages"][0]
    assert [s["rows"] for s in stage["statements"]] == [3, 2, 4, 0]
    assert [s["sql"] for s in stage["statements"]] == statements
    assert [s["batch"] for s in stage["statements"]] == [0, 0, 1, 1]
    assert stage["rows"] == 9
    assert stage["tables"] == ["audit", "items"]
    assert summary["totals"] == {"rows": 9}
    assert summary["line"] == "9 rows changed"
    assert stage["line"] == "would change 9 rows in audit, items"
    assert summary["complete"] is True
    assert note_rows(target) == before  # rolled back


def test_a_long_statement_list_is_listed_up_to_the_cap_and_counted_whole(
    operator, approver, target, client_for, api_client_for, monkeypatch
):
    """The statements are listed one by one up to CHANGE_SUMMARY_STATEMENTS (a 7,500-statement
    dry-run made the run's API answer 944 KB); the rest are counted, and the rows and tables
    still cover them all."""
    monkeypatch.setattr(selectors, "CHANGE_SUMMARY_STATEMENTS", 3)
    statements = [f"UPDATE items SET note = 'n{i}' WHERE id = {i}" for i in range(1, 6)]
    statements.append("INSERT INTO audit (item) SELECT id FROM items WHERE id = 1")
    run = dry_run(operator, [migrate({"statements": statements, "batch_size": 2})])

    body = api_client_for(approver).get(f"/api/v1/runs/{run.pk}/").json()
    stage = body["change_summary"]["stages"][0]
    assert [s["sql"] for s in stage["statements"]] == statements[:3]
    assert stage["statements_total"] == 6
    assert stage["rows"] == 6 and stage["tables"] == ["audit", "items"]
    page = client_for(approver).get(f"/runs/{run.pk}/").content.decode()
    assert 'data-testid="statements-cut"' in page and "The first 3 of 6 statements" in page


def test_a_backfill_summary_has_its_template_key_range_and_batch_size(operator, target):
    sql = "UPDATE items SET note = 'b' WHERE id >= :start AND id < :end AND id % 2 = 0"
    backfill = {"sql": sql, "table": "items", "key_column": "id", "batch_size": 4}
    run = dry_run(operator, [migrate({"backfill": backfill})])

    stage = selectors.change_summary(run)["stages"][0]

    assert stage["backfill"] == {
        "sql": sql,
        "table": "items",
        "key_column": "id",
        "key_range": [1, 10],
        "batch_size": 4,
        "end_param": "end",
    }
    assert [(b["to_apply"], b["rows"]) for b in stage["batches"]] == [
        ([[1, 4]], 2),
        ([[5, 8]], 2),
        ([[9, 10]], 1),
    ]
    assert [b["params"] for b in stage["batches"]] == [
        [{"start": 1, "end": 5}],
        [{"start": 5, "end": 9}],
        [{"start": 9, "end": 11}],
    ]
    assert stage["rows"] == 5
    assert stage["tables"] == ["items"]


def pack_stage() -> dict[str, Any]:
    return {
        "id": "pack",
        "kind": "deploy.pack",
        "partitioner": "by_filesize",
        "executor": "pack_backend",
        "params": {"workspace": "demo", "root": "backend"},
    }


def test_a_pack_summary_compares_files_with_the_last_applied_run(
    operator,
    approver,
    demo_copy,  # noqa: F811
):
    backend = demo_copy / "backend"
    files = sorted(p for p in backend.rglob("*") if p.is_file())
    first = dry_run(operator, [pack_stage()])

    summary = selectors.change_summary(first)["stages"][0]
    assert summary["files"]["added"]["count"] == len(files)
    assert summary["files"]["added"]["bytes"] == sum(p.stat().st_size for p in files)
    assert summary["files"]["removed"]["count"] == 0
    assert summary["against_run"] is None
    assert summary["archives_to_write"] == first.run_stages.get().total

    applied = approve_and_apply(first, operator, approver)
    (backend / "app.py").write_text((backend / "app.py").read_text() + "\n# changed\n")
    (backend / "new_module.py").write_text("X = 1\n")
    removed = files[-1]
    removed_bytes = removed.stat().st_size
    removed.unlink()
    second = dry_run(operator, [pack_stage()], name="other")  # never applied
    third = drain(services.run_start_dry_run(plan=first.plan, actor=operator))

    theirs = selectors.change_summary(third)["stages"][0]
    assert theirs["against_run"] == applied.pk
    assert theirs["files"]["added"] == {"count": 1, "bytes": len("X = 1\n")}
    assert theirs["files"]["changed"]["count"] == 1
    assert theirs["files"]["removed"] == {"count": 1, "bytes": removed_bytes}
    assert theirs["files"]["unchanged"]["count"] == len(files) - 2
    assert selectors.change_summary(second)["stages"][0]["against_run"] is None


def test_prime_summaries_count_modules_to_register_and_compile_and_the_failing_ones(
    operator,
    demo_copy,  # noqa: F811
):
    (demo_copy / "backend" / "broken.py").write_text("def oops(:\n")
    modules = [p for p in (demo_copy / "backend").rglob("*.py")]
    common = {"workspace": "demo", "root": "backend"}
    run = dry_run(
        operator,
        [
            {
                "id": "registry",
                "kind": "deploy.prime",
                "partitioner": "by_dag_depth",
                "executor": "warm_registry",
                "params": common,
            },
            {
                "id": "bytecode",
                "kind": "deploy.prime",
                "partitioner": "by_module",
                "executor": "prime_caches",
                "params": common,
            },
        ],
    )

    registry, bytecode = selectors.change_summary(run)["stages"]

    assert registry["modules"] == {"register": len(modules) - 1, "up_to_date": 0, "fail": 1}
    assert registry["failing"] == ["backend.broken"]
    assert bytecode["modules"]["compile"] + bytecode["modules"]["fail"] == len(modules)
    assert bytecode["modules"]["fail"] == 1


def test_assets_and_docs_summaries_count_new_changed_and_removed(
    operator,
    approver,
    demo_copy,  # noqa: F811
):
    assets = {
        "id": "assets",
        "kind": "assets.index",
        "partitioner": "by_asset_bucket",
        "executor": "index_assets",
        "params": {"workspace": "demo", "root": "assets"},
    }
    docs = {
        "id": "docs",
        "kind": "docs.index",
        "partitioner": "by_route_map",
        "executor": "docs_index",
        "params": {"workspace": "demo"},
    }
    asset_files = [p for p in (demo_copy / "assets").rglob("*") if p.is_file()]
    pages = [p for p in (demo_copy / "docs").rglob("*.md")]
    first = dry_run(operator, [assets, docs])
    a, d = selectors.change_summary(first)["stages"]
    assert a["assets"]["new"] == len(asset_files)
    assert a["bytes"] == sum(p.stat().st_size for p in asset_files)
    assert d["pages"]["new"] == len(pages)

    approve_and_apply(first, operator, approver)
    changed_asset = next(p for p in asset_files if p.suffix == ".css")
    changed_asset.write_text(changed_asset.read_text() + "\n/* changed */\n")
    pages[0].write_text(pages[0].read_text() + "\n\nOne more paragraph.\n")
    second = drain(services.run_start_dry_run(plan=first.plan, actor=operator))
    a, d = selectors.change_summary(second)["stages"]
    assert (a["assets"]["new"], a["assets"]["changed"]) == (0, 1)
    assert a["assets"]["unchanged"] == len(asset_files) - 1
    assert (d["pages"]["new"], d["pages"]["changed"]) == (0, 1)
    totals = selectors.change_summary(second)["totals"]
    assert totals["assets_changed"] == 1 and totals["pages_changed"] == 1


def grown(run: Run, n: int) -> Run:
    """The real dry-run's stage grown to `n` one-statement batches: its manifest's statements
    and partitions repeated (bulk_create, fast), each with the preview the real one stored."""
    stage = run.run_stages.get()
    real = list(Partition.objects.filter(stage=stage).order_by("index"))
    statements = list(stage.manifest["statements"])
    extra = []
    for i in range(len(real), n):
        model = real[i % len(real)]
        statements.append(statements[i % len(real)] + f" -- {i}")
        extra.append(
            Partition(
                run=run,
                stage=stage,
                index=i,
                inputs={**model.inputs, "batch_id": i, "offset": i},
                content_id=f"{i:064x}",
                state=model.state,
                preview={**model.preview, "batch_id": i},
            )
        )
    Partition.objects.bulk_create(extra, batch_size=500)
    RunStage.objects.filter(pk=stage.pk).update(
        manifest={**stage.manifest, "statements": statements}, total=n, succeeded=n
    )
    return Run.objects.get(pk=run.pk)


@pytest.mark.parametrize("n", [10, 1000])
def test_the_change_summary_costs_the_same_queries_at_10_and_1000_partitions(operator, target, n):
    statements = [f"UPDATE items SET note = 'n{i}' WHERE id = {i + 1}" for i in range(10)]
    run = grown(dry_run(operator, [migrate({"statements": statements, "batch_size": 1})]), n)

    with CaptureQueriesContext(connection) as queries:
        summary = selectors.change_summary(run)

    assert summary["totals"]["rows"] == n
    assert [s["rows"] for s in summary["stages"][0]["statements"]] == [1] * n
    # The stages, then per stage the SQL sums and the (capped) previews.
    assert len(queries) == 3

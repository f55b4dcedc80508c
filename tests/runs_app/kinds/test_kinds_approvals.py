"""One approval, one apply, at a real target: eight concurrent applies of one approved
migration change the demo SQLite target once (issue 11 §4)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from hxo_site import codes
from hxo_site.errors import ServiceError
from runs_app import services
from runs_app.kinds.migrate import BATCHES_TABLE
from runs_app.models import Run, RunMode, RunState
from runs_app.targets import connect
from tests.helpers import drain
from tests.runs_app.kinds.test_kinds_migrate import statements_stage
from tests.runs_app.kinds.test_sql_safety import stage
from tests.runs_app.test_concurrency import in_threads

pytestmark = pytest.mark.django_db(transaction=True)

RAISE = [
    "UPDATE orders SET total_cents = total_cents + 100 WHERE id <= 10",
    "UPDATE customers SET name = name || '!' WHERE id <= 5",
]


def totals() -> tuple[int, int]:
    with connect("demo") as conn:
        return (
            conn.scalar("SELECT SUM(total_cents) FROM orders WHERE id <= 10"),
            conn.scalar("SELECT COUNT(*) FROM customers WHERE name LIKE '%!'"),
        )


def test_eight_concurrent_applies_of_one_approved_migration_change_the_target_once(
    sqlite_target, operator, approver, api_client_for
) -> None:
    sqlite_target("demo")
    call_command("hxo_demo", customers=50, orders=100)
    cents, exclaimed = totals()
    plan = services.plan_create(
        actor=operator,
        document={"name": "raise", "stages": [statements_stage("demo", RAISE, batch_size=1)]},
    )
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    services.run_approve(run=dry, actor=approver)
    assert totals() == (cents, exclaimed)  # the dry-run changed nothing

    results = in_threads(
        [lambda: services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk)] * 8
    )

    runs = [r for r in results if isinstance(r, Run)]
    assert len(runs) == 1, results
    assert [r.code for r in results if isinstance(r, ServiceError)] == [codes.APPROVAL_USED] * 7
    assert drain(runs[0]).state == RunState.SUCCEEDED
    assert totals() == (cents + 10 * 100, exclaimed + 5)
    with connect("demo") as conn:
        assert conn.scalar(f"SELECT COUNT(*) FROM {BATCHES_TABLE}") == 2
    # A later apply through the API is refused too, and changes nothing more.
    again = api_client_for(operator).post(
        f"/api/v1/plans/{plan.pk}/apply/", {"dry_run": dry.pk}, format="json"
    )
    assert again.status_code == 409 and again.json()["code"] == codes.APPROVAL_USED
    assert Run.objects.filter(plan=plan, mode=RunMode.APPLY).count() == 1
    assert totals() == (cents + 10 * 100, exclaimed + 5)


# --- Four-eyes is decided on content: an apply of other stages clears nobody -----------------

ADMIRALS = "UPDATE items SET note = 'admiral-was-here'"


def sql_stage(sid: str, statements: list[str]) -> dict[str, Any]:
    return {**stage("t", statements), "id": sid}


PACK = {
    "id": "pack",
    "kind": "deploy.pack",
    "partitioner": "by_module",
    "executor": "pack_backend",
    "params": {"workspace": "demo", "root": "backend"},
}

# What the operator puts back after a no-op apply of a deploy.pack-only revision: the admiral's
# unapplied statement, in every shape that keeps it (finding 5 and its class).
LAUNDERED = {
    "restored verbatim": [sql_stage("migrate", [ADMIRALS])],
    "moved to another stage id": [sql_stage("again", [ADMIRALS])],
    "re-spaced in another stage id": [
        sql_stage("again", ["update items  SET note =\n'admiral-was-here'"])
    ],
    "kept inside a longer stage": [sql_stage("migrate", ["UPDATE items SET id = id", ADMIRALS])],
    "edited in place": [sql_stage("migrate", [ADMIRALS + " WHERE id = 1"])],
    "beside another stage": [PACK, sql_stage("migrate", [ADMIRALS])],
}


def marked(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT COUNT(*) FROM items WHERE note = 'admiral-was-here'"
        ).fetchone()[0]


def laundering_plan(path: Path, admiral, operator, *, reviewed_by=None) -> Any:
    """The admiral writes SQL (revision 1; applied under `reviewed_by`'s review if given);
    the operator replaces the stages with a deploy.pack stage (revision 2) and applies it."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, note TEXT)")
        conn.execute("INSERT INTO items VALUES (1, '')")
    conn.close()
    document = {"name": "launder", "stages": [sql_stage("migrate", [ADMIRALS])]}
    saved = services.plan_create(actor=admiral, document=document)
    if reviewed_by is not None:
        dry = drain(services.run_start_dry_run(plan=saved, actor=operator))
        services.run_approve(run=dry, actor=reviewed_by, acknowledge_findings=True)
        applied = services.run_apply(plan=saved, actor=operator, dry_run_id=dry.pk)
        assert drain(applied).state == RunState.SUCCEEDED
        assert marked(path) == 1
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE items SET note = ''")
        conn.close()
    services.plan_update(plan=saved, actor=operator, document={"stages": [PACK]}, partial=True)
    saved.refresh_from_db()
    dry = drain(services.run_start_dry_run(plan=saved, actor=operator))
    applied = drain(services.run_apply(plan=saved, actor=operator, dry_run_id=dry.pk))
    assert applied.state == RunState.SUCCEEDED
    return saved


@pytest.mark.parametrize("how", sorted(LAUNDERED))
def test_a_no_op_apply_of_other_stages_does_not_launder_an_authors_unapplied_sql(
    demo_copy, sqlite_target, admiral, operator, api_client_for, how
) -> None:
    """Attack finding 5: the four-eyes window used to restart at the plan's last successful
    apply of ANY content, so the admiral approved his own never-reviewed SQL once the
    operator had applied a deploy.pack-only revision and put the SQL back (revision 3)."""
    path = sqlite_target("t")
    saved = laundering_plan(path, admiral, operator)
    services.plan_update(
        plan=saved, actor=operator, document={"stages": LAUNDERED[how]}, partial=True
    )
    saved.refresh_from_db()
    dry = drain(services.run_start_dry_run(plan=saved, actor=operator))
    assert dry.state == RunState.AWAITING_APPROVAL

    response = api_client_for(admiral).post(f"/api/v1/runs/{dry.pk}/approve/", {}, format="json")

    assert response.status_code == 403, response.content
    assert response.json()["code"] == codes.SELF_APPROVAL_FORBIDDEN
    assert "revision 1" in response.json()["detail"]
    assert Run.objects.get(pk=dry.pk).state == RunState.AWAITING_APPROVAL
    with pytest.raises(ServiceError) as refused:
        services.run_apply(plan=saved, actor=admiral, dry_run_id=dry.pk)
    assert refused.value.code == codes.DRY_RUN_NOT_APPROVED
    assert marked(path) == 0  # his SQL never ran


def test_sql_applied_under_someone_elses_review_may_come_back_for_its_author_to_approve(
    demo_copy, sqlite_target, admiral, operator, approver
) -> None:
    """The other side of the rule: content an apply ran under another reviewer's eyes clears
    its author; whoever put it back (revision 3) shaped it now and may not approve it."""
    from django.contrib.auth.models import Group, User

    restorer = User.objects.create_user(username="rex", password="x")
    restorer.groups.add(Group.objects.get(name="admiral"))
    path = sqlite_target("t")
    saved = laundering_plan(path, admiral, operator, reviewed_by=approver)
    services.plan_update(
        plan=saved,
        actor=restorer,
        document={"stages": LAUNDERED["restored verbatim"]},
        partial=True,
    )
    saved.refresh_from_db()
    dry = drain(services.run_start_dry_run(plan=saved, actor=operator))
    with pytest.raises(ServiceError) as refused:
        services.run_approve(run=dry, actor=restorer)
    assert refused.value.code == codes.SELF_APPROVAL_FORBIDDEN
    assert "revision 3" in refused.value.message

    services.run_approve(run=dry, actor=admiral, acknowledge_findings=True)
    dry.refresh_from_db()
    assert dry.state == RunState.APPROVED

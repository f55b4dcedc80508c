"""One approval, one apply, at a real target: eight concurrent applies of one approved
migration change the demo SQLite target once (issue 11 §4)."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from blueprints_app import codes
from runs_app import services
from runs_app.errors import ServiceError
from runs_app.kinds.migrate import BATCHES_TABLE
from runs_app.models import Run, RunMode, RunState
from runs_app.targets import connect
from tests.runs_app.kinds.test_kinds_engine import drain_all
from tests.runs_app.kinds.test_kinds_migrate import statements_stage
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
    dry = drain_all(services.run_start_dry_run(plan=plan, actor=operator))
    services.run_approve(run=dry, actor=approver)
    assert totals() == (cents, exclaimed)  # the dry-run changed nothing

    results = in_threads(
        [lambda: services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk)] * 8
    )

    runs = [r for r in results if isinstance(r, Run)]
    assert len(runs) == 1, results
    assert [r.code for r in results if isinstance(r, ServiceError)] == [codes.APPROVAL_USED] * 7
    assert drain_all(runs[0]).state == RunState.SUCCEEDED
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

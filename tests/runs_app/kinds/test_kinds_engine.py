"""The example plans through the engine itself: dry-run, approval, apply and receipt, with the
real partitioners and executors on a copy of the demo workspace and a demo database.

Tasks are called inline (no broker), as in tests/runs_app/test_engine_inline.py.
"""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command

from hxo_site import codes
from runs_app import services
from runs_app.models import AssetIndexEntry, DocPage, Partition, PartitionState, Run, RunState
from runs_app.targets import connect
from tests.helpers import drain
from tests.runs_app.kinds.conftest import EXAMPLES, tree_snapshot

pytestmark = pytest.mark.django_db(transaction=True)

PLANS = sorted((EXAMPLES / "plans").glob("*.json"))


def errors_of(run: Run) -> list:
    return list(
        Partition.objects.filter(run=run, state=PartitionState.FAILED).values_list(
            "error", flat=True
        )
    )


def approve_if_needed(dry: Run, approver) -> None:
    """Kinds with require_dry_run wait for an approval; the others' dry-runs just succeed."""
    assert dry.state in (RunState.AWAITING_APPROVAL, RunState.SUCCEEDED), errors_of(dry)
    if dry.state == RunState.AWAITING_APPROVAL:
        # The approver read the evidence, SQL findings included (deploy.migrate asks).
        services.run_approve(run=dry, actor=approver, comment="reviewed", acknowledge_findings=True)


def through_the_engine(document: dict, operator, approver) -> tuple[Run, Run]:
    plan = services.plan_create(actor=operator, document=document)
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    approve_if_needed(dry, approver)
    run = drain(services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk))
    assert run.state == RunState.SUCCEEDED, errors_of(run)
    return dry, run


@pytest.fixture
def demo_target(sqlite_target):
    path = sqlite_target("demo")
    call_command("hxo_demo", customers=2000, orders=8000)
    return path


@pytest.mark.parametrize("path", PLANS, ids=lambda p: p.stem)
def test_each_example_plan_goes_from_dry_run_to_apply_through_the_engine(
    demo_copy, scratch, demo_target, operator, approver, settings, path
):
    settings.HXO_RETRY_BACKOFF_MS = 0
    document = json.loads(path.read_text())
    db_before = demo_target.read_bytes()

    plan = services.plan_create(actor=operator, document=document)
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))

    needs_approval = any(s["kind"] == "deploy.migrate" for s in document["stages"])
    assert dry.state == (RunState.AWAITING_APPROVAL if needs_approval else RunState.SUCCEEDED)
    previews = list(Partition.objects.filter(run=dry).values_list("preview", flat=True))
    assert previews and all(p and p["summary"] for p in previews)
    assert tree_snapshot(scratch["var"]) == {}
    assert demo_target.read_bytes() == db_before
    assert AssetIndexEntry.objects.count() == DocPage.objects.count() == 0

    approve_if_needed(dry, approver)
    run = drain(services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk))

    assert run.state == RunState.SUCCEEDED, errors_of(run)
    assert len(run.merkle_root) == 64
    outputs = list(Partition.objects.filter(run=run).values_list("output", flat=True))
    assert outputs and all(o["status"] for o in outputs)


def test_a_pack_approved_then_changed_on_disk_fails_as_stale(
    demo_copy, scratch, operator, approver
):
    document = json.loads((EXAMPLES / "plans" / "pack-backend-by-module.json").read_text())
    plan = services.plan_create(actor=operator, document=document)
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    approve_if_needed(dry, approver)
    with (demo_copy / "backend" / "utils" / "money.py").open("a") as f:
        f.write("\n# a late change\n")

    # The worker that partitions the apply sees the change: the run fails before packing.
    run = drain(services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk))

    assert run.state == RunState.FAILED
    assert run.error["code"] == codes.STALE_PLAN
    [changed] = run.error["diff"]["stages"]
    assert any(
        "backend/utils/money.py" in p["fingerprints"]["changed"]
        for p in changed["changed_partitions"]
    )
    assert tree_snapshot(scratch["artifacts"]) == {}


@pytest.mark.postgres
def test_the_backfill_example_runs_through_the_engine_on_a_postgresql_target(
    pg_target, settings, scratch, operator, approver
):
    settings.HXO_DATABASE_TARGETS = {**settings.HXO_DATABASE_TARGETS, "demo": pg_target}
    call_command("hxo_demo", customers=2000, orders=8000)
    document = json.loads((EXAMPLES / "plans" / "migrate-backfill-email-domain.json").read_text())

    dry, run = through_the_engine(document, operator, approver)

    previews = Partition.objects.filter(run=dry).values_list("preview", flat=True)
    outputs = Partition.objects.filter(run=run).values_list("output", flat=True)
    assert sum(p["rows_affected"] for p in previews) == sum(o["rows_affected"] for o in outputs)
    assert sum(o["rows_affected"] for o in outputs) > 1000
    with connect("demo") as conn:
        assert conn.scalar("SELECT COUNT(*) FROM customers WHERE email_domain IS NULL") == 0
        assert conn.scalar("SELECT COUNT(*) FROM hxo_ledger_intervals") == len(outputs)

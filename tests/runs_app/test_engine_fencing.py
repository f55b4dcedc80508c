"""Fencing that reaches the target (issue 11 §5), driven inline: the fence re-check is a fresh
query against HXO's database, and a partition whose effect the target's ledger records
succeeds (`ledger: already_applied`) where it used to fail."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from blueprints_app.registry import EXECUTORS, ComponentError, LeaseLost
from runs_app import services
from runs_app.engine import claims, execute, heartbeat
from runs_app.kinds.migrate import SqlMigrate
from runs_app.models import Partition, PartitionState, Run
from tests.helpers import drain, partitioned
from tests.runs_app.kinds.test_migrate_ledger import PRICES, batches, make_products, price
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, stage

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop(tmp_path: Path, settings: Any) -> str:
    settings.HXO_DATABASE_TARGETS = {"shop": f"sqlite:///{tmp_path / 'shop.sqlite3'}"}
    make_products("shop")
    return "shop"


def migrate_apply(operator: Any, approver: Any, statements: list[str]) -> Run:
    """An approved apply of a statement list on target "shop", started but not drained."""
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "raise prices",
            "stages": [
                {
                    "id": "raise",
                    "kind": "deploy.migrate",
                    "partitioner": "by_sql_batch",
                    "executor": "sql_migrate",
                    "params": {"target": "shop", "statements": statements},
                }
            ],
        },
    )
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    services.run_approve(run=dry, actor=approver)
    return partitioned(services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk))


def claimed_context(run: Run, owner: str = "worker-a") -> tuple[claims.Claim, Any]:
    [claim] = claims.claim_batch(run.pk, owner, 1)
    rc = execute.RunContext(run.pk)
    inputs, fingerprints = Partition.objects.values_list("inputs", "fingerprints").get(
        pk=claim.partition_id
    )
    return claim, execute.build_context(rc, claim, inputs, fingerprints)


def expire(partition_id: int) -> None:
    Partition.objects.filter(pk=partition_id).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )


def test_the_fence_check_asks_the_database_and_extends_the_lease(
    test_kinds, tmp_path, operator
) -> None:
    only = stage("a", tmp_path, items=1, kind=TEST_KIND_NOAPPROVAL)
    plan = services.plan_create(actor=operator, document={"name": "p", "stages": [only]})
    run = partitioned(services.run_apply(plan=plan, actor=operator))
    [claim] = claims.claim_batch(run.pk, "worker-a", 1)
    expire(claim.partition_id)

    heartbeat.check_fence(claim)  # nobody took it over yet: still ours, and renewed

    held = Partition.objects.get(pk=claim.partition_id)
    assert held.lease_expires_at > timezone.now()
    # Taken over: the heartbeat thread has not noticed (its cached answer says "held"), the
    # database has.
    expire(claim.partition_id)
    assert execute.expire_leases(run_id=run.pk) == 1
    [again] = claims.claim_batch(run.pk, "worker-b", 1)
    assert again.fence == claim.fence + 2
    with pytest.raises(LeaseLost):
        heartbeat.check_fence(claim)
    heartbeat.check_fence(again)


def test_a_batch_committed_by_a_worker_that_died_succeeds_as_already_applied(
    shop, operator, approver, settings
) -> None:
    settings.HXO_MAX_ATTEMPTS = 1  # no retry left: the lease expiry would fail the partition
    run = migrate_apply(operator, approver, PRICES)
    claim, ctx = claimed_context(run)
    out = EXECUTORS["sql_migrate"]().execute(ctx)  # committed at the target...
    assert out["ledger"] == "applied"
    expire(claim.partition_id)  # ...and the worker died before writing its outcome

    assert execute.expire_leases(run_id=run.pk) == 1

    part = Partition.objects.get(pk=claim.partition_id)
    assert part.state == PartitionState.SUCCEEDED
    assert part.output["ledger"] == "already_applied"
    assert part.output["rows_affected"] == 1
    run.refresh_from_db()
    assert run.state == "succeeded"
    assert price("shop") == 110 and len(batches("shop")) == 1


def test_an_expired_partition_with_no_ledger_row_still_fails(
    shop, operator, approver, settings
) -> None:
    settings.HXO_MAX_ATTEMPTS = 1
    run = migrate_apply(operator, approver, PRICES)
    claim, _ctx = claimed_context(run)
    expire(claim.partition_id)  # died before the batch committed

    execute.expire_leases(run_id=run.pk)

    part = Partition.objects.get(pk=claim.partition_id)
    assert part.state == PartitionState.FAILED
    assert part.error["code"] == "lease_expired"
    assert price("shop") == 100 and batches("shop") == []


def test_a_last_attempt_that_fails_after_its_commit_succeeds_as_applied(
    shop, operator, approver, settings, monkeypatch
) -> None:
    # The COMMIT reached the target, the answer did not (a dropped connection): the executor
    # raises, and on the last attempt the engine asks the ledger before failing.
    settings.HXO_MAX_ATTEMPTS = 1
    real = SqlMigrate.execute

    def commit_then_lose_the_reply(self: SqlMigrate, ctx: Any) -> dict[str, Any]:
        out = real(self, ctx)
        if ctx.dry_run:
            return out
        raise ComponentError("server closed the connection unexpectedly", code="sql_error")

    monkeypatch.setattr(SqlMigrate, "execute", commit_then_lose_the_reply)
    run = drain(migrate_apply(operator, approver, PRICES))

    assert run.state == "succeeded"
    [output] = Partition.objects.filter(run=run).values_list("output", flat=True)
    assert output["ledger"] == "already_applied"
    assert price("shop") == 110 and len(batches("shop")) == 1


def test_a_worker_whose_partition_was_taken_over_commits_nothing_at_the_target(
    shop, operator, approver
) -> None:
    # The stale worker's heartbeat never noticed (its cached answer still says "held"); the
    # executor's fence check before COMMIT asks the database and refuses.
    run = migrate_apply(operator, approver, PRICES)
    stale, ctx = claimed_context(run, owner="worker-a")
    expire(stale.partition_id)
    execute.expire_leases(run_id=run.pk)
    [current] = claims.claim_batch(run.pk, "worker-b", 1)

    with pytest.raises(LeaseLost):
        EXECUTORS["sql_migrate"]().execute(ctx)

    assert price("shop") == 100 and batches("shop") == []
    assert current.fence > stale.fence

"""Concurrency: several clusters, approvers, clients and editors at once. The many-cluster
test runs on PostgreSQL (the scaled mode it proves); the others on either database."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, connections

from blueprints_app.models import JobKind
from hxo_site.errors import ServiceError
from runs_app import services, tasks
from runs_app.models import Approval, ClaimLog, Partition, PlanRevision, Run, RunState
from tests.runs_app.cluster import running_cluster, wait_for
from tests.runs_app.testkinds import TEST_KIND, TEST_KIND_NOAPPROVAL, effects, stage

pytestmark = pytest.mark.django_db(transaction=True)


def in_threads(fns: list[Callable[[], Any]]) -> list[Any]:
    """Run callables at once (a barrier lines them up), each on its own connection."""
    barrier = threading.Barrier(len(fns))
    results: list[Any] = [None] * len(fns)

    def runner(i: int, fn: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            results[i] = fn()
        except Exception as exc:  # the test inspects what each one got
            results[i] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=runner, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


@pytest.mark.postgres
@pytest.mark.cluster
def test_four_clusters_never_claim_a_partition_twice(
    test_kinds, tmp_path: Path, operator, settings
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the many-cluster test is part of the PostgreSQL suite")
    settings.HXO_MAX_CONCURRENCY = 8
    n = 5000
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "wide",
            "stages": [stage("a", tmp_path, items=n, kind=TEST_KIND_NOAPPROVAL)],
        },
    )
    with ExitStack() as stack:
        for _ in range(4):
            stack.enter_context(running_cluster(WORKERS=2))
        run = services.run_apply(plan=plan, actor=operator)
        wait_for(lambda: Run.objects.get(pk=run.pk).is_finished, "5,000 partitions", timeout=300)
    run.refresh_from_db()
    assert run.state == RunState.SUCCEEDED
    done = effects(tmp_path, "a")
    assert len(done) == n and set(done) == set(range(n))
    claims = Counter(
        ClaimLog.objects.filter(partition__run=run).values_list("partition_id", flat=True)
    )
    assert len(claims) == n
    assert set(claims.values()) == {1}
    owners = set(ClaimLog.objects.filter(partition__run=run).values_list("owner", flat=True))
    assert len({o.split(":")[1] for o in owners}) > 2  # many worker processes took part


def test_concurrent_approvals_count_each_approver_once(
    test_kinds, tmp_path, operator, approver, django_user_model
) -> None:
    JobKind.objects.filter(kind=TEST_KIND).update(required_approvals=2)
    second = django_user_model.objects.create_user("bea")
    second.groups.add(*approver.groups.all())
    plan = services.plan_create(
        actor=operator, document={"name": "p", "stages": [stage("a", tmp_path)]}
    )
    dry = services.run_start_dry_run(plan=plan, actor=operator)
    tasks.drain(dry.pk, budget_s=30)
    dry.refresh_from_db()
    assert dry.state == RunState.AWAITING_APPROVAL
    results = in_threads(
        [
            lambda: services.run_approve(run=dry, actor=approver),
            lambda: services.run_approve(run=dry, actor=approver),
            lambda: services.run_approve(run=dry, actor=approver),
            lambda: services.run_approve(run=dry, actor=second),
        ]
    )
    assert not [r for r in results if isinstance(r, Exception) and not isinstance(r, ServiceError)]
    assert Approval.objects.filter(run=dry).count() == 2
    dry.refresh_from_db()
    assert dry.state == RunState.APPROVED


def test_two_applies_with_one_idempotency_key_make_one_run(test_kinds, tmp_path, operator) -> None:
    plan = services.plan_create(
        actor=operator,
        document={"name": "p", "stages": [stage("a", tmp_path, kind=TEST_KIND_NOAPPROVAL)]},
    )
    results = in_threads(
        [lambda: services.run_apply(plan=plan, actor=operator, idempotency_key="deploy-42")] * 4
    )
    runs = {r.pk for r in results if isinstance(r, Run)}
    assert len(runs) == 1, results
    assert Run.objects.filter(mode="apply").count() == 1
    # Four workers woken for its partitioning at once: one holds the lease and writes.
    [pk] = runs
    in_threads([lambda: services.run_partition(run_id=pk)] * 4)
    assert Run.objects.get(pk=pk).state == RunState.RUNNING
    assert Partition.objects.count() == 3
    assert sorted(Partition.objects.values_list("index", flat=True)) == [0, 1, 2]


def test_concurrent_plan_edits_become_ordered_revisions(test_kinds, tmp_path, operator) -> None:
    plan = services.plan_create(
        actor=operator, document={"name": "p", "stages": [stage("a", tmp_path)]}
    )
    edits = [
        (
            lambda i=i: services.plan_update(
                plan=plan, actor=operator, document={"description": f"edit {i}"}, partial=True
            )
        )
        for i in range(6)
    ]
    results = in_threads(edits)
    assert not [r for r in results if isinstance(r, Exception)], results
    numbers = sorted(PlanRevision.objects.filter(plan=plan).values_list("number", flat=True))
    assert numbers == list(range(1, 8))
    descriptions = {
        r.document["description"] for r in PlanRevision.objects.filter(plan=plan, number__gt=1)
    }
    assert descriptions == {f"edit {i}" for i in range(6)}

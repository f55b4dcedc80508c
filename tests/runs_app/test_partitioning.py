"""Partitioning in a worker: the start request stores the run in `partitioning`; a worker
writes its partitions in bounded transactions, only the last of which makes anything
claimable; errors and stale applies fail the run with their code; a crash is rescued by the
reconciler and re-partitioning writes each partition once."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from hxo_site import codes
from runs_app import selectors, services, tasks
from runs_app.engine import claims, partitioning, wakeups
from runs_app.models import Lease, Partition, Run, RunStage, RunState
from tests.helpers import drain
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, ItemsPartitioner, effects, stage


@pytest.fixture(autouse=True)
def _keep_connection(monkeypatch) -> None:
    # The tasks close old connections as a worker does; inside a test's transaction that
    # would end it (tests.helpers.drain does the same).
    monkeypatch.setattr(tasks, "close_old_connections", lambda: None)


def plan_of(operator: Any, *stages: dict[str, Any]) -> Any:
    return services.plan_create(actor=operator, document={"name": "p", "stages": list(stages)})


def test_the_start_request_writes_no_partition_and_the_worker_writes_them_all(
    test_kinds, tmp_path: Path, api_client_for, operator
) -> None:
    plan = plan_of(operator, stage("a", tmp_path, items=7), stage("b", tmp_path, items=3))
    client = api_client_for(operator)

    response = client.post(f"/api/v1/plans/{plan.pk}/dry-run/")

    assert response.status_code == 202
    body = response.json()
    assert body["state"] == "partitioning" and body["digest"] == "" and body["stages"] == []
    assert body["partitioning"] == {"written": 0, "total": None, "percent": 0}
    assert body["error"] is None
    assert not Partition.objects.filter(run_id=body["id"]).exists()

    run = drain(body["id"])

    assert run.state == RunState.AWAITING_APPROVAL and len(run.digest) == 64
    assert run.partition_total == 10
    rows = Partition.objects.filter(run=run)
    assert sorted(rows.filter(stage__stage_id="a").values_list("index", flat=True)) == list(
        range(7)
    )
    assert rows.filter(stage__stage_id="b").count() == 3
    assert all(len(c) == 64 for c in rows.values_list("content_id", flat=True))
    assert {s.stage_id: s.total for s in run.run_stages.all()} == {"a": 7, "b": 3}
    shown = client.get(f"/api/v1/runs/{run.pk}/").json()
    assert shown["partitioning"] is None and shown["digest"] == run.digest


def test_batches_are_bounded_and_nothing_is_claimable_before_the_last(
    test_kinds, tmp_path: Path, operator, monkeypatch, client
) -> None:
    monkeypatch.setattr(partitioning, "BATCH", 4)
    plan = plan_of(operator, stage("a", tmp_path, items=10, kind=TEST_KIND_NOAPPROVAL))
    run = services.run_apply(plan=plan, actor=operator)
    client.force_login(operator)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'data-testid="partitioning"' in page and "Resolving" in page
    pages: list[str] = []
    seen: list[dict[str, Any]] = []
    original = partitioning.insert_partitions

    def watching(run_id: int, rows: list[partitioning.NewPartition]) -> int:
        written = original(run_id, rows)
        current = Run.objects.get(pk=run.pk)
        stages = list(RunStage.objects.filter(run=run))
        seen.append(
            {
                "rows": len(rows),
                "state": current.state,
                "claimable": claims.has_claimable(run.pk),
                "ready": Partition.objects.filter(run=run, ready=True).count(),
                "progress": selectors.partitioning_progress(current, stages),
            }
        )
        pages.append(client.get(f"/runs/{run.pk}/progress/").content.decode())
        return written

    monkeypatch.setattr(partitioning, "insert_partitions", watching)
    partitioned = services.run_partition(run_id=run.pk)

    assert [s["rows"] for s in seen] == [4, 4, 2]
    # Every batch is written while the run is still `partitioning`, with nothing claimable;
    # the run moves to `running` in the last batch's transaction, after this hook.
    assert all(s["state"] == RunState.PARTITIONING for s in seen)
    assert not any(s["claimable"] or s["ready"] for s in seen)
    assert [s["progress"]["written"] for s in seen] == [4, 8, 10]
    assert all(s["progress"]["total"] == 10 for s in seen)
    assert "4 of 10 partitions written" in pages[0] and "8 of 10" in pages[1]
    assert partitioned is not None and partitioned.state == RunState.RUNNING
    assert Partition.objects.filter(run=run, ready=True).count() == 10
    assert sorted(effects(tmp_path, "a")) == []
    assert drain(run).state == RunState.SUCCEEDED
    assert sorted(effects(tmp_path, "a")) == list(range(10))


def test_a_crash_mid_partitioning_is_rescued_and_each_partition_is_written_once(
    test_kinds, tmp_path: Path, operator, monkeypatch
) -> None:
    monkeypatch.setattr(partitioning, "BATCH", 3)
    plan = plan_of(operator, stage("a", tmp_path, items=10, kind=TEST_KIND_NOAPPROVAL))
    run = services.run_apply(plan=plan, actor=operator)
    original = partitioning.insert_partitions
    calls = {"n": 0}

    def dying(run_id: int, rows: list[partitioning.NewPartition]) -> int:
        calls["n"] += 1
        if calls["n"] == 3:
            raise SystemExit("worker killed")  # not an Exception: nothing catches it
        return original(run_id, rows)

    monkeypatch.setattr(partitioning, "insert_partitions", dying)
    # A killed worker never releases its lease: it expires.
    monkeypatch.setattr(partitioning, "release_lease", lambda run_id, owner: None)
    with pytest.raises(SystemExit):
        services.run_partition(run_id=run.pk)
    monkeypatch.setattr(partitioning, "insert_partitions", original)

    run.refresh_from_db()
    assert run.state == RunState.PARTITIONING
    assert Partition.objects.filter(run=run).count() == 6  # two batches committed
    assert not claims.has_claimable(run.pk)
    assert tasks.drain(run.pk, budget_s=1)["partitions"] == 0  # the lease is still live
    assert Partition.objects.filter(run=run).count() == 6

    sent: list[int] = []
    monkeypatch.setattr(wakeups, "enqueue_partitioner", sent.append)
    assert tasks.reconcile()["runs_repartitioned"] == []  # lease live, run young
    Lease.objects.filter(name=partitioning.lease_name(run.pk)).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    report = tasks.reconcile()
    assert report["runs_repartitioned"] == [run.pk] and sent == [run.pk]

    # The partition task writes the rest, then drains the run itself (no wake-up to wait for).
    assert tasks.partition(run.pk) == {"run": run.pk, "state": RunState.RUNNING, "partitions": 10}

    run.refresh_from_db()
    assert run.state == RunState.SUCCEEDED
    indexes = list(Partition.objects.filter(run=run).values_list("index", flat=True))
    assert sorted(indexes) == list(range(10))
    assert RunStage.objects.get(run=run).total == 10 == RunStage.objects.get(run=run).succeeded
    assert sorted(effects(tmp_path, "a")) == list(range(10))  # each item exactly once


def test_the_partition_task_drains_only_with_a_drain_tasks_margin_before_the_timeout(
    test_kinds, tmp_path: Path, operator, settings
) -> None:
    """A partition claimed at the end of the partition task's drain must have as long before
    django-q's timeout as in a drain task (HXO_Q_TIMEOUT_S - HXO_DRAIN_BUDGET_S): when
    partitioning left less than that plus a second, the woken drainers drain the run."""
    settings.HXO_Q_TIMEOUT_S = 100
    settings.HXO_DRAIN_BUDGET_S = 1  # a margin of 99 s: any partitioning leaves less than 1 s
    run = services.run_apply(
        plan=plan_of(operator, stage("a", tmp_path, items=3, kind=TEST_KIND_NOAPPROVAL)),
        actor=operator,
    )
    assert tasks.partition(run.pk) == {"run": run.pk, "state": RunState.RUNNING, "partitions": 0}
    assert effects(tmp_path, "a") == []
    assert drain(run).state == RunState.SUCCEEDED
    assert sorted(effects(tmp_path, "a")) == [0, 1, 2]


def test_a_partitioner_that_raises_fails_the_run_with_a_clear_code(
    test_kinds, tmp_path: Path, operator, monkeypatch, client
) -> None:
    def broken(self: Any, ctx: Any) -> Any:
        raise RuntimeError("the partitioner's own bug")

    monkeypatch.setattr(ItemsPartitioner, "partition", broken)
    plan = plan_of(operator, stage("a", tmp_path, items=3))

    run = drain(services.run_start_dry_run(plan=plan, actor=operator))

    assert run.state == RunState.FAILED
    assert run.error["code"] == codes.PARTITIONING_FAILED
    assert "RuntimeError: the partitioner's own bug" in run.error["message"]
    assert not Partition.objects.filter(run=run).exists()
    client.force_login(operator)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert f'data-code="{codes.PARTITIONING_FAILED}"' in page
    assert "the partitioner&#x27;s own bug" in page


def test_a_missing_workspace_fails_the_run_with_its_path(
    operator, settings, tmp_path: Path
) -> None:
    root = tmp_path / "ws"
    shutil.copytree(Path(settings.BASE_DIR) / "examples" / "workspace", root)
    settings.HXO_WORKSPACES = {**settings.HXO_WORKSPACES, "gone": str(root)}
    plan = plan_of(
        operator,
        {
            "id": "pack",
            "kind": "deploy.pack",
            "partitioner": "by_module",
            "executor": "pack_backend",
            "params": {"workspace": "gone"},
        },
    )
    started = services.run_start_dry_run(plan=plan, actor=operator)
    shutil.rmtree(root)  # removed after the request, before the worker reads it

    run = drain(started)

    assert run.state == RunState.FAILED
    assert run.error["code"] == codes.PARTITIONING_FAILED
    assert run.error["errors"] and run.error["errors"][0]["path"].startswith("stages[0]")
    assert not Partition.objects.filter(run=run).exists()


def test_too_many_partitions_fail_the_run(test_kinds, tmp_path: Path, operator, settings):
    settings.HXO_MAX_PARTITIONS = 5
    plan = plan_of(operator, stage("a", tmp_path, items=6))
    run = drain(services.run_start_dry_run(plan=plan, actor=operator))
    assert run.state == RunState.FAILED
    assert run.error["code"] == codes.TOO_MANY_PARTITIONS
    assert run.error["errors"][0]["path"] == "stages[0]"


def test_an_abort_while_partitioning_stops_the_worker(
    test_kinds, tmp_path: Path, operator, monkeypatch
) -> None:
    monkeypatch.setattr(partitioning, "BATCH", 2)
    plan = plan_of(operator, stage("a", tmp_path, items=9, kind=TEST_KIND_NOAPPROVAL))
    run = services.run_apply(plan=plan, actor=operator)
    original = partitioning.insert_partitions
    calls = {"n": 0}

    def aborting(run_id: int, rows: list[partitioning.NewPartition]) -> int:
        written = original(run_id, rows)
        calls["n"] += 1
        if calls["n"] == 2:
            services.run_abort(run=Run.objects.get(pk=run.pk), actor=operator)
        return written

    monkeypatch.setattr(partitioning, "insert_partitions", aborting)
    assert services.run_partition(run_id=run.pk) is None

    run.refresh_from_db()
    assert run.state == RunState.ABORTED
    assert calls["n"] == 2  # no batch after the abort
    assert not Partition.objects.filter(run=run, ready=True).exists()
    assert tasks.drain(run.pk, budget_s=1)["partitions"] == 0
    assert effects(tmp_path, "a") == []


# Values an ORM write and insert_partitions must store alike: nested JSON with non-ASCII
# text, quotes and nulls, a label with SQL metacharacters, a weight past 32 bits.
ODD_INPUTS = {
    "path": "docs/Ünïcode ' \" ; -- 文件.txt",
    "nested": {"list": [1, 2.5, None, True, "x"], "empty": {}},
    "n": 2**40,
}


def test_insert_partitions_writes_every_column_as_the_orm_would(
    test_kinds, tmp_path: Path, operator
) -> None:
    """insert_partitions bypasses bulk_create's compiler (one prepared INSERT, or COPY):
    each column it writes must read back through the ORM exactly as a
    `Partition.objects.create` of the same values does, JSON lookups included, on SQLite
    and PostgreSQL."""
    plan = plan_of(operator, stage("a", tmp_path, items=1, kind=TEST_KIND_NOAPPROVAL))
    run = drain(services.run_apply(plan=plan, actor=operator))
    stage_row = run.run_stages.get()
    decided = {
        "wave": 3,
        "inputs": ODD_INPUTS,
        "fingerprints": {"docs/Ünïcode.txt": "ab" * 32},
        "label": "label ' \" ; DROP TABLE x; --",
        "weight": 2**40 + 7,
        "content_id": "c" * 64,
        "non_idempotent": True,
    }
    before = timezone.now()
    written = partitioning.insert_partitions(
        run.pk,
        [partitioning.NewPartition(stage_pk=stage_row.pk, index=100, **decided)],
    )
    after = timezone.now()
    by_orm = Partition.objects.create(run=run, stage=stage_row, index=101, **decided)

    assert written == 1
    ours = Partition.objects.get(stage=stage_row, index=100)
    theirs = Partition.objects.get(pk=by_orm.pk)
    skip = {"id", "index", "due_at"}
    for field in Partition._meta.concrete_fields:
        if field.attname not in skip:
            assert getattr(ours, field.attname) == getattr(theirs, field.attname), field.name
    assert ours.inputs == ODD_INPUTS and ours.state == "pending" and ours.fence == 0
    assert not ours.ready and ours.attempts == 0 and ours.output is None
    assert before <= ours.due_at <= after
    # Stored as JSON the database can query, not as a string of it.
    found = Partition.objects.filter(stage=stage_row, inputs__nested__empty={})
    assert sorted(found.values_list("index", flat=True)) == [100, 101]
    assert Partition.objects.filter(stage=stage_row, inputs__n=2**40).count() == 2
    stage_row.refresh_from_db()
    assert (stage_row.total, stage_row.pending) == (1 + 1, 0 + 1)  # the ORM's row is uncounted


def test_insert_partitions_of_nothing_writes_nothing(test_kinds, tmp_path: Path, operator) -> None:
    plan = plan_of(operator, stage("a", tmp_path, items=1, kind=TEST_KIND_NOAPPROVAL))
    run = drain(services.run_apply(plan=plan, actor=operator))
    assert partitioning.insert_partitions(run.pk, []) == 0
    assert Partition.objects.filter(run=run).count() == 1


def test_a_failed_insert_raises_djangos_error_on_every_database(
    test_kinds, tmp_path: Path, operator
) -> None:
    """PostgreSQL's COPY runs on the raw driver cursor: its errors are translated like every
    other statement's, so callers (`deadlocks.retrying`, `except IntegrityError`) see them."""
    from django.db import IntegrityError, transaction

    plan = plan_of(operator, stage("a", tmp_path, items=1, kind=TEST_KIND_NOAPPROVAL))
    run = drain(services.run_apply(plan=plan, actor=operator))
    stage_row = run.run_stages.get()
    duplicate = partitioning.NewPartition(
        stage_pk=stage_row.pk,
        index=0,  # taken: (stage, index) is unique
        wave=0,
        inputs={},
        fingerprints={},
        label="",
        weight=0,
        content_id="d" * 64,
        non_idempotent=False,
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        partitioning.insert_partitions(run.pk, [duplicate])
    assert Partition.objects.filter(run=run).count() == 1

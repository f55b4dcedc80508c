"""Orchestration overhead: N no-op partitions through HXO, against N no-op django-q2 tasks on the
same broker and cluster settings, and against the database's floor (bare claim-and-complete
transactions, no queue). Also planning: partitioning and persisting 10k and 100k partitions
against a raw bulk_create of the same rows.

Run as `python bench/orchestration.py N [--planning 10000,100000]`; prints one JSON object.
The database and broker come from the environment (DATABASE_URL, HXO_BROKER) like the app.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import bench_user, cluster, setup_django, timed, wait

WORKERS = 2


def hxo_throughput(n: int) -> dict[str, Any]:
    from bench.kinds import BENCH_KIND
    from runs_app import services
    from runs_app.models import Run

    user = bench_user()
    plan = services.plan_create(
        actor=user,
        document={
            "name": f"bench {n}",
            "stages": [
                {
                    "id": "noop",
                    "kind": BENCH_KIND,
                    "partitioner": "bench_count",
                    "executor": "bench_noop",
                    "params": {"items": n},
                }
            ],
        },
    )
    with cluster(WORKERS):
        start = time.perf_counter()
        run = services.run_apply(plan=plan, actor=user)
        planned = time.perf_counter()
        wait(lambda: Run.objects.filter(pk=run.pk, finished_at__isnull=False).exists())
        end = time.perf_counter()
    run.refresh_from_db()
    assert run.state == "succeeded", run.state
    # The run is `running` once a worker has written its partitions (`started_at`); from then
    # to `finished_at` is claiming and completing them, what the database floor measures
    # (its rows exist before its clock starts). `per_second` is from the POST to the end,
    # partitioning in a worker included: what raw django-q2 and Celery are compared with
    # (their clocks start at the first enqueue).
    executing_s = (run.finished_at - run.started_at).total_seconds()
    return {
        "partitions": n,
        "planning_s": planned - start,
        "execution_s": end - planned,
        "per_second": n / (end - planned),
        "executing_s": executing_s,
        "executing_per_second": n / executing_s,
    }


def raw_q2_throughput(n: int) -> dict[str, Any]:
    from django_q.conf import Conf
    from django_q.models import Task
    from django_q.tasks import async_task

    Task.objects.all().delete()
    # Keep every result so the bench can count them (the app keeps only the newest 250).
    Conf.SAVE_LIMIT = 0
    with cluster(WORKERS):
        start = time.perf_counter()
        for i in range(n):
            async_task("bench.kinds.noop_task", i, group="bench")
        enqueued = time.perf_counter()
        wait(lambda: Task.objects.filter(group="bench").count() >= n, poll=0.05)
        end = time.perf_counter()
    return {
        "tasks": n,
        "enqueue_s": enqueued - start,
        "total_s": end - start,
        "per_second": n / (end - start),
    }


def _floor_worker(table: str) -> None:
    """Claim one row, complete it, until none is left: two short transactions per row, with
    the database's own claim primitive (SKIP LOCKED on PostgreSQL)."""
    from django.db import connection, transaction

    connection.close()
    lock = " FOR UPDATE SKIP LOCKED" if connection.vendor == "postgresql" else ""
    while True:
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(f"SELECT id, fence FROM {table} WHERE state = 'pending' LIMIT 1{lock}")
            row = cur.fetchone()
            if row is None:
                break
            pk, fence = row
            cur.execute(
                f"UPDATE {table} SET state = 'running', fence = fence + 1 "
                "WHERE id = %s AND fence = %s",
                [pk, fence],
            )
            if cur.rowcount == 0:
                continue
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(
                f"UPDATE {table} SET state = 'done', output = %s WHERE id = %s AND fence = %s",
                ['{"status": "done"}', pk, fence + 1],
            )
    connection.close()


def db_floor(n: int) -> dict[str, Any]:
    """The same number of claim-and-complete transaction pairs, by WORKERS processes."""
    from django.db import connection

    table = "hxo_bench_floor"
    with connection.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(
            f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, state VARCHAR(20), "
            "fence INTEGER, output TEXT)"
        )
        cur.execute(f"CREATE INDEX {table}_state ON {table} (state)")
        cur.executemany(
            f"INSERT INTO {table} (id, state, fence) VALUES (%s, 'pending', 0)",
            [(i,) for i in range(1, n + 1)],
        )
    connection.close()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_floor_worker, args=(table,)) for _ in range(WORKERS)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    end = time.perf_counter()
    with connection.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {table} WHERE state = 'done'")
        done = cur.fetchone()[0]
        cur.execute(f"DROP TABLE {table}")
    assert done == n, (done, n)
    return {"transactions": 2 * n, "per_second": n / (end - start)}


def planning(n: int) -> dict[str, Any]:
    """Partition and persist n partitions (no execution) against a raw bulk_create."""
    from bench.kinds import BENCH_KIND
    from runs_app import services
    from runs_app.engine import wakeups
    from runs_app.models import Partition, Run, RunStage

    user = bench_user()
    wakeups.wake = lambda *a, **k: None  # planning only: no workers
    wakeups.wake_partitioner = lambda *a, **k: None  # partitioned inline below
    plan = services.plan_create(
        actor=user,
        document={
            "name": f"plan {n}",
            "stages": [
                {
                    "id": "noop",
                    "kind": BENCH_KIND,
                    "partitioner": "bench_count",
                    "executor": "bench_noop",
                    "params": {"items": n},
                }
            ],
        },
    )

    def plan_run() -> Any:
        # The request stores the run; a worker partitions it (services.run_partition): time
        # both, inline here, as the cost of planning.
        started = services.run_apply(plan=plan, actor=user, force_rerun=True)
        return services.run_partition(run_id=started.pk)

    hxo_s, run = timed(plan_run)
    stage = RunStage.objects.get(run=run)
    rows = list(Partition.objects.filter(run=run).values("inputs", "fingerprints", "content_id"))
    raw_run = Run.objects.create(
        plan=plan, revision=run.revision, mode="apply", state="running", digest=run.digest
    )
    raw_stage = RunStage.objects.create(
        run=raw_run,
        stage_id="noop",
        position=0,
        kind=stage.kind,
        partitioner=stage.partitioner,
        executor=stage.executor,
        slo_ms=stage.slo_ms,
    )

    def raw() -> None:
        Partition.objects.bulk_create(
            (Partition(run=raw_run, stage=raw_stage, index=i, **row) for i, row in enumerate(rows)),
            batch_size=2000,
        )

    raw_s, _ = timed(raw)
    return {"partitions": n, "hxo_s": hxo_s, "bulk_create_s": raw_s, "ratio": hxo_s / raw_s}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", type=int)
    parser.add_argument("--planning", default="", help="comma-separated partition counts")
    # Raw django-q2 runs one task per partition at ~200/s here, so its rate is steady long
    # before N; quick mode measures it on fewer tasks to stay within its time budget.
    parser.add_argument("--q2", type=int, default=0, help="raw django-q2 tasks (default N)")
    # The PostgreSQL floor is one commit per transaction (~270/s here): steady on fewer rows.
    parser.add_argument("--floor", type=int, default=0, help="floor transactions (default N)")
    args = parser.parse_args()
    setup_django()
    from django.db import connection

    result: dict[str, Any] = {
        "database": connection.vendor,
        "broker": os.environ.get("HXO_BROKER", "orm"),
        "workers": WORKERS,
    }
    result["floor"] = db_floor(args.floor or args.n)
    result["raw_django_q2"] = raw_q2_throughput(args.q2 or args.n)
    result["hxo"] = hxo_throughput(args.n)
    result["planning"] = [planning(int(n)) for n in args.planning.split(",") if n]
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Pages and API at scale: the run page, its progress partial and GET /api/v1/runs/{id}/ for
runs of 100, 10,000 and 100,000 partitions: server time (median of repeated requests) and
query count. Both should stay flat: progress is read from per-stage counters."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import bench_user, setup_django


def make_run(user: Any, n: int) -> int:
    from bench.kinds import BENCH_KIND
    from runs_app import services
    from runs_app.engine import wakeups

    wakeups.wake = lambda *a, **k: None  # no workers: the run stays as partitioned
    plan = services.plan_create(
        actor=user,
        document={
            "name": f"pages {n}",
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
    run = services.run_apply(plan=plan, actor=user, force_rerun=True)
    services.run_partition(run_id=run.pk)  # a worker's job; inline, so the rows exist
    return run.pk


def measure(client: Any, url: str, rounds: int, **headers: str) -> dict[str, Any]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    response = client.get(url, **headers)
    assert response.status_code in (200, 286), (url, response.status_code)
    with CaptureQueriesContext(connection) as ctx:
        client.get(url, **headers)
    queries = len(ctx.captured_queries)  # read now: it is a view on the live query log
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        client.get(url, **headers)
        times.append((time.perf_counter() - t) * 1000)
    return {"ms": statistics.median(times), "queries": queries}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    setup_django()
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections
    from django.test import Client

    # As in Django's own test runner: keep one connection across requests, so the query log
    # (and the timing) covers the view, not reconnecting.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)

    user = bench_user()
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    sizes = [100, 10_000] if args.quick else [100, 10_000, 100_000]
    rounds = 30  # medians of 10 rounds moved by 1.6x between runs at a few ms: too few
    runs = {n: make_run(user, n) for n in sizes}
    from django.db import connection

    if connection.vendor == "sqlite":
        # Measure the steady state, not the write-ahead log of the bulk inserts just made
        # (SQLite folds it into the database at its next automatic checkpoint).
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    views = {
        "run_page": lambda pk: (f"/runs/{pk}/", {}),
        "progress_partial": lambda pk: (f"/runs/{pk}/progress/", {"HTTP_HX_REQUEST": "true"}),
        "run_api": lambda pk: (f"/api/v1/runs/{pk}/", {}),
    }
    result: dict[str, Any] = {"views": {}}
    for name, url_of in views.items():
        by_size = {}
        for n, pk in runs.items():
            url, headers = url_of(pk)
            by_size[str(n)] = measure(client, url, rounds, **headers)
        small, big = by_size[str(sizes[0])], by_size[str(sizes[-1])]
        result["views"][name] = {
            "by_size": by_size,
            "same_queries": len({r["queries"] for r in by_size.values()}) == 1,
            "time_ratio": big["ms"] / small["ms"],
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

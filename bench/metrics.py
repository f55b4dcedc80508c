"""What a `GET /metrics` scrape costs over a real history: R runs of N no-op partitions each
executed by a 2-worker cluster, then scrapes timed (the first rolls the finished stages up,
later ones read the rollups) with their query counts, and with one run of N partitions still
active (aggregated live).

Run as `python bench/metrics.py --runs 20 --partitions 1000`; prints one JSON object. The
database and broker come from the environment (DATABASE_URL, HXO_BROKER) like the app.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import bench_user, cluster, setup_django, timed, wait


def plan(user: Any, n: int) -> Any:
    from bench.kinds import BENCH_KIND
    from runs_app import services

    document = {
        "name": f"metrics bench {n}",
        "stages": [
            {
                "id": "noop",
                "kind": BENCH_KIND,
                "partitioner": "bench_count",
                "executor": "bench_noop",
                "params": {"items": n},
            }
        ],
    }
    return services.plan_create(actor=user, document=document)


def scrape() -> tuple[float, int, bytes]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from runs_app import metrics

    with CaptureQueriesContext(connection) as queries:
        seconds, (body, _type) = timed(metrics.exposition)
    return seconds, len(queries.captured_queries), body


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--partitions", type=int, default=1000)
    args = parser.parse_args()
    setup_django()
    from runs_app import services
    from runs_app.models import Partition, Run

    user = bench_user()
    with cluster(2):
        start = time.perf_counter()
        for _ in range(args.runs):
            run = services.run_apply(plan=plan(user, args.partitions), actor=user)
            wait(lambda run=run: Run.objects.filter(pk=run.pk, finished_at__isnull=False).exists())
        executed = time.perf_counter() - start
    out: dict[str, Any] = {
        "runs": args.runs,
        "partitions": Partition.objects.count(),
        "execution_s": round(executed, 1),
    }
    first_s, first_q, _ = scrape()
    steady_s, steady_q, body = scrape()
    out |= {
        "first_scrape_s": round(first_s, 3),
        "first_scrape_queries": first_q,
        "steady_scrape_s": round(steady_s, 3),
        "steady_scrape_queries": steady_q,
        "exposition_bytes": len(body),
    }
    # One run of N partitions still active (not drained: no cluster): aggregated live.
    services.run_apply(plan=plan(user, args.partitions), actor=user)
    live_s, live_q, _ = scrape()
    out |= {"with_active_run_s": round(live_s, 3), "with_active_run_queries": live_q}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

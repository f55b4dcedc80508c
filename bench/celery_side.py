"""Celery side by side with HXO: N no-op tasks as one Celery `group`, Redis broker, two prefork
worker processes (`celery worker --concurrency 2`, Celery's defaults otherwise: prefetch 4,
acks early, no result backend), timed from the first enqueue until the last task has run.

Run as `python bench/celery_side.py N`; prints one JSON object. The worker is a real process
started here and stopped (SIGTERM, then SIGKILL of its process group) before this exits.
The broker is `HXO_BENCH_CELERY_BROKER` (default Redis db 13), flushed first.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.celery_app import BROKER, COUNTER, app, noop  # noqa: E402

WORKERS = 2


def wait_count(r: Any, n: int, timeout: float, poll: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while int(r.get(COUNTER) or 0) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"Celery ran {int(r.get(COUNTER) or 0)} of {n} tasks in time")
        time.sleep(poll)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", type=int)
    args = parser.parse_args()
    import redis
    from celery import group

    r = redis.Redis.from_url(BROKER)
    r.flushdb()
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker"),
            *("--concurrency", str(WORKERS), "--pool", "prefork", "--loglevel", "WARNING"),
        ],
        cwd=ROOT,
        env={**os.environ, "HXO_BENCH_CELERY_BROKER": BROKER},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        # Warm: one task through both sides before the clock starts (HXO's cluster is up too).
        noop.delay(-1)
        wait_count(r, 1, timeout=60)
        r.delete(COUNTER)
        start = time.perf_counter()
        group(noop.s(i) for i in range(args.n)).apply_async()
        enqueued = time.perf_counter()
        wait_count(r, args.n, timeout=600)
        end = time.perf_counter()
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        app.close()
    print(
        json.dumps(
            {
                "tasks": args.n,
                "workers": WORKERS,
                "broker": "redis",
                "celery": __import__("celery").__version__,
                "enqueue_s": enqueued - start,
                "total_s": end - start,
                "per_second": args.n / (end - start),
            }
        )
    )


if __name__ == "__main__":
    main()

"""The Celery side of the bench (bench/celery_side.py): the app a Django team would write
instead of HXO for N no-op jobs. Celery's defaults except what the comparison fixes: the Redis
broker of `HXO_BENCH_CELERY_BROKER`, no result backend (results ignored), and a counter in
Redis that each task increments so the bench knows when the last one ran (a queue that reads
empty still has prefetched tasks in the workers)."""

from __future__ import annotations

import os

import redis
from celery import Celery

BROKER = os.environ.get("HXO_BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/13")
COUNTER = "hxo-bench-celery-done"

app = Celery("hxo_bench", broker=BROKER)
_counter: redis.Redis | None = None


def counter() -> redis.Redis:
    """One connection per worker process (made on first use, after the prefork)."""
    global _counter
    if _counter is None:
        _counter = redis.Redis.from_url(BROKER)
    return _counter


@app.task(ignore_result=True)
def noop(i: int) -> int:
    """No work: the unit the bench counts (one INCR in Redis, ~0.1 ms)."""
    counter().incr(COUNTER)
    return i

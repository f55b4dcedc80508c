"""A real django-q2 cluster inside the test process, for end-to-end and fault tests.

It runs in transactional tests on a file-based SQLite (or PostgreSQL) test database. Its
worker processes are forked from the test process, so they share its settings and its test
database; an externally started qcluster would use the wrong (non-test) database.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.db import connections

DEADLINE_S = 90


@contextlib.contextmanager
def running_cluster(**conf: Any) -> Iterator[Any]:
    from django_q.brokers import get_broker
    from django_q.cluster import Cluster
    from django_q.conf import Conf

    saved = {name: getattr(Conf, name) for name in conf}
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for name, value in conf.items():
        setattr(Conf, name, value)
    from runs_app.tasks import preload

    preload()  # as `manage.py qcluster` does (RunsConfig.ready): workers fork with it loaded
    connections.close_all()  # never share a connection with forked children
    cluster = Cluster(get_broker())
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        for name, value in saved.items():
            setattr(Conf, name, value)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> Any:
    """Poll with a deadline; tests never sleep a fixed time to wait for work."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")

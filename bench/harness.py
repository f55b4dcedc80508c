"""Shared set-up for bench sections: a private var dir and database, Django configured, the
bench kind registered, one admiral to act as."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def setup_django(var_dir: str | None = None) -> Path:
    """Configure Django on a fresh var dir (SQLite there unless DATABASE_URL is set), with
    DEBUG off as in production."""
    var = Path(var_dir or tempfile.mkdtemp(prefix="hxo-bench-"))
    # Production settings for everything measured. `make setup`'s .env says DEBUG=1, under
    # which Django wraps every cursor to keep each query's SQL (CursorDebugWrapper): 7% of
    # a 100,000-partition planning's time went to formatting SQL nobody reads.
    os.environ["DEBUG"] = "0"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hxo_site.settings")
    os.environ.setdefault("SECRET_KEY", "hxo-bench-only")
    os.environ["HXO_VAR_DIR"] = str(var)
    os.environ.setdefault("HXO_LOG_LEVEL", "WARNING")
    os.environ["HXO_PLUGINS"] = ",".join(
        p for p in [os.environ.get("HXO_PLUGINS", ""), "bench.kinds"] if p
    )
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from bench.kinds import ensure_bench_kind

    ensure_bench_kind()
    return var


def bench_user() -> Any:
    from django.contrib.auth.models import Group, User

    user, _ = User.objects.get_or_create(username="bench")
    user.groups.add(Group.objects.get(name="admiral"))
    return user


@contextmanager
def cluster(workers: int = 2) -> Iterator[None]:
    from django.db import connections
    from django_q.brokers import get_broker
    from django_q.cluster import Cluster
    from django_q.conf import Conf

    from runs_app.tasks import preload

    saved = Conf.WORKERS
    Conf.WORKERS = workers
    # As `manage.py qcluster` does (RunsConfig.ready calls runs_app.tasks.preload): the
    # URLconf is imported before the cluster forks, so every worker inherits it. Without it
    # each bench worker imported it on its first run notification (a reverse() in
    # finish_run), inside the transaction that finishes the run, holding SQLite's write lock.
    preload()
    connections.close_all()
    c = Cluster(get_broker())
    c.start()
    try:
        yield
    finally:
        _stop(c)
        Conf.WORKERS = saved


# How long a cluster may take to stop before its processes are killed.
STOP_TIMEOUT_S = 30


def _stop(c: Any) -> None:
    """`Cluster.stop()` with a deadline: django-q2's sentinel can block for ever putting its
    STOP pills into a full task queue when its workers have just been recycled (seen in a
    20,000-task raw django-q2 section: sentinel in Queue.put, no worker left), and a bench
    must end. Past STOP_TIMEOUT_S the sentinel's process group members are SIGKILLed; the
    figures were taken before the stop."""
    stopper = threading.Thread(target=c.stop, daemon=True)
    stopper.start()
    stopper.join(STOP_TIMEOUT_S)
    if not stopper.is_alive():
        return
    sentinel = getattr(c, "sentinel", None)
    pids = _descendants(sentinel.pid) if sentinel is not None and sentinel.pid else []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    stopper.join(5)
    sys.stderr.write(f"cluster did not stop in {STOP_TIMEOUT_S} s: killed {len(pids)} processes\n")


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def wait(predicate: Callable[[], bool], timeout: float = 600, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("bench workload did not finish in time")
        time.sleep(poll)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result

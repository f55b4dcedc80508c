"""Bench-only plugin: names and optionally profiles every process of a django-q2 cluster, for
the engine's overhead profile (bench/profiles/engine_cluster.py, bench/profiles/engine.md).

Loaded through `HXO_PLUGINS=bench.cluster_probe` (never by the app). With
`HXO_CLUSTER_PROBE_DIR` set it wraps the three process bodies the sentinel starts
(`django_q.cluster.pusher`, `monitor`, `worker`, looked up there by name at spawn time), so
each child writes `<dir>/<pid>.role` (`pusher`, `monitor` or `worker`) when it starts; the
sentinel is the children's parent. With `HXO_CLUSTER_PROBE_PROFILE=1` each child also runs
under cProfile and dumps `<dir>/<role>-<pid>.prof` when its body returns (a clean cluster
stop: the pusher sees its event, workers and the monitor their "STOP" pill). Children are
forked after this module is imported, so the wrapping is inherited. Without
HXO_CLUSTER_PROBE_DIR the module changes nothing.
"""

from __future__ import annotations

import cProfile
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROBE_DIR_ENV = "HXO_CLUSTER_PROBE_DIR"
PROFILE_ENV = "HXO_CLUSTER_PROBE_PROFILE"


def _wrap(role: str, body: Callable[..., Any]) -> Callable[..., Any]:
    def probed(*args: Any, **kwargs: Any) -> Any:
        out = Path(os.environ[PROBE_DIR_ENV])
        pid = os.getpid()
        (out / f"{pid}.role").write_text(role, encoding="ascii")
        if os.environ.get(PROFILE_ENV) != "1":
            return body(*args, **kwargs)
        # CPU time, not wall: waits on the queue, locks and sleeps are not what is sought.
        prof = cProfile.Profile(time.process_time)
        try:
            return prof.runcall(body, *args, **kwargs)
        finally:
            prof.dump_stats(str(out / f"{role}-{pid}.prof"))

    probed.__name__ = body.__name__
    return probed


if os.environ.get(PROBE_DIR_ENV):
    from django_q import cluster as _cluster

    _cluster.pusher = _wrap("pusher", _cluster.pusher)
    _cluster.monitor = _wrap("monitor", _cluster.monitor)
    _cluster.worker = _wrap("worker", _cluster.worker)

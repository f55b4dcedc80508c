"""Bench-only plugin: times every claim a worker makes, for the scaling bench (bench/scaling.py).

Loaded by the scaling bench's `qcluster` processes through `HXO_PLUGINS=bench.claim_probe`
(never by the app): it wraps `runs_app.engine.claims.claim_batch`, which the drainer calls by
attribute (`claims.claim_batch`), so the real claim runs unchanged and only its wall time is
taken around it. Each process appends one line per claim to `<HXO_CLAIM_PROBE_DIR>/<pid>.tsv`:
`wall start (epoch s) \t duration (s) \t partitions claimed \t limit asked`. Workers are forked
from the cluster's main process after this module is imported, so the file is opened per pid.
Without HXO_CLAIM_PROBE_DIR the module changes nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import IO, Any

from runs_app.engine import claims

PROBE_DIR_ENV = "HXO_CLAIM_PROBE_DIR"

_real_claim_batch = claims.claim_batch
_out: dict[int, IO[str]] = {}


def _file() -> IO[str]:
    pid = os.getpid()
    if pid not in _out:
        path = Path(os.environ[PROBE_DIR_ENV]) / f"{pid}.tsv"
        # Line-buffered: a worker stopped by the cluster leaves every finished line behind.
        _out[pid] = path.open("a", buffering=1, encoding="ascii")
    return _out[pid]


def timed_claim_batch(
    run_id: int, owner: str, limit: int = 1, *args: Any, **kwargs: Any
) -> list[Any]:
    """`claims.claim_batch`, with its wall time written to this process's probe file. Every
    other argument is passed through as given: a wrapper that named only the arguments of its
    day made every drainer of the scaling bench fail once `claim_batch` took a `sizer`."""
    wall = time.time()
    started = time.perf_counter()
    held = _real_claim_batch(run_id, owner, limit, *args, **kwargs)
    took = time.perf_counter() - started
    _file().write(f"{wall:.6f}\t{took:.6f}\t{len(held)}\t{limit}\n")
    return held


if os.environ.get(PROBE_DIR_ENV):
    claims.claim_batch = timed_claim_batch

"""PostgreSQL's deadlock and serialization failures, retried as its documentation says.

The engine takes row locks in one order, partitions (in primary-key order), then stage rows
(in primary-key order), then the run's row (docs/architecture.md, "Claim"), so its
transactions should not deadlock. Where two of them still meet in a cycle, PostgreSQL fails
one with SQLSTATE 40P01 (`deadlock_detected`) after `deadlock_timeout` and rolls it back
whole; 40001 (`serialization_failure`) is the same kind of refusal. Both mean "run the
transaction again" (PostgreSQL 15 documentation, 13.3.4 "Deadlocks" and 13.5 "Serialization
Failure Handling"; Appendix A lists the codes). Before this,
a completion that lost such a race lost its outcome: the drainer stopped and the partition
waited for its lease to expire.

SQLite has no row locks (one writer at a time) and never reports these.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import OperationalError, connection

log = logging.getLogger(__name__)

T = TypeVar("T")

# SQLSTATEs that ask for the whole transaction to run again.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
# Tries in all (the first included), and the most a pause between two tries lasts.
ATTEMPTS = 4
MAX_PAUSE_S = 0.2


def is_retryable(exc: BaseException) -> bool:
    """Whether `exc` (a Django OperationalError wrapping the driver's error, or the driver's
    error itself) is a deadlock or serialization failure."""
    for err in (exc, exc.__cause__):
        if getattr(err, "sqlstate", None) in RETRYABLE_SQLSTATES:
            return True
    return False


def retrying(transaction_body: Callable[[], T], *, what: str, attempts: int = ATTEMPTS) -> T:
    """Run `transaction_body` (which opens and commits its own transaction) and, when
    PostgreSQL fails it as a deadlock or serialization failure, run it again after a short
    random pause (at most MAX_PAUSE_S, growing with each try), up to `attempts` tries in
    all; the last failure is raised. Anything else is raised at once.

    Only whole transactions can be run again: inside an enclosing atomic block the failed
    transaction is the caller's, so the error is raised unchanged. `what` names the
    transaction in the log line of each retry."""
    for attempt in range(1, attempts + 1):
        try:
            return transaction_body()
        except OperationalError as exc:
            if connection.in_atomic_block or not is_retryable(exc) or attempt == attempts:
                raise
            pause = random.uniform(0, MAX_PAUSE_S * attempt / attempts)
            log.warning("%s: %s; trying again (%d of %d)", what, exc, attempt + 1, attempts)
            time.sleep(pause)
    raise AssertionError("unreachable")  # the loop returns or raises


def locked_pks(qs: Any, *, skip_locked: bool = False, limit: int | None = None) -> list[int]:
    """Primary keys of the partitions in `qs`, in key order, their rows locked FOR UPDATE
    until the transaction ends (PostgreSQL; SQLite's one writer needs no row locks). With
    `skip_locked`, rows another transaction holds are left out instead of waited for: what a
    caller that already holds a stage row must do, since the engine's lock order puts
    partitions before stages. At most `limit` keys."""
    qs = qs.order_by("pk")
    if connection.features.has_select_for_update:
        qs = qs.select_for_update(skip_locked=skip_locked, of=("self",))
    keys = qs.values_list("pk", flat=True)
    return list(keys[:limit] if limit is not None else keys)

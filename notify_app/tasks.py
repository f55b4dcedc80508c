"""django-q2 entry points of the notifier. They take ids, never raise, and read the truth from
the outbox tables: a lost task costs only time (the sweep sends what is due), a duplicate
finds the delivery already claimed."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from notify_app import delivery
from notify_app.models import Delivery, DeliveryState

log = logging.getLogger(__name__)

SWEEP_TASK = "notify_app.tasks.sweep"
SWEEP_SCHEDULE = "hxo-notify-sweep"
SWEEP_LIMIT = 200


def _close_connections() -> None:
    # A worker drops connections that are stale or past their age after each task, as Django
    # does after a request; a caller inside a transaction (a test, a shell) keeps its own.
    if not connection.in_atomic_block:
        close_old_connections()


def deliver(delivery_id: str) -> dict[str, Any]:
    """One attempt at one delivery (when it is pending and due)."""
    try:
        outcome = delivery.deliver(delivery_id)
    except Exception:
        log.exception("delivery %s: sender stopped", delivery_id)
        outcome = None
    finally:
        _close_connections()
    return {"delivery": delivery_id, "ok": None if outcome is None else outcome.ok}


def sweep(limit: int = SWEEP_LIMIT) -> dict[str, Any]:
    """Attempt every pending delivery that is due (retries after their backoff, wake-ups that
    were lost, attempts whose sender died), oldest first, at most `limit` per call and for at
    most HXO_DRAIN_BUDGET_S seconds (well inside django-q2's task timeout); the rest wait
    for the next sweep."""
    deadline = time.monotonic() + settings.HXO_DRAIN_BUDGET_S
    due = list(
        Delivery.objects.filter(state=DeliveryState.PENDING, next_attempt_at__lte=timezone.now())
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    sent = failed = 0
    for delivery_id in due:
        if time.monotonic() > deadline:
            break
        try:
            outcome = delivery.deliver(str(delivery_id))
        except Exception:
            log.exception("delivery %s: sender stopped", delivery_id)
            continue
        if outcome is not None:
            sent += outcome.ok
            failed += not outcome.ok
    _close_connections()
    return {"due": len(due), "delivered": sent, "failed_attempts": failed}


def ensure_schedule() -> None:
    """Register the sweep with django-q2's scheduler (idempotent)."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name=SWEEP_SCHEDULE,
        defaults={
            "func": SWEEP_TASK,
            "schedule_type": Schedule.MINUTES,
            "minutes": settings.HXO_NOTIFY_EVERY_MIN,
            "repeats": -1,
        },
    )

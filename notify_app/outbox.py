"""Writing events: the transactional outbox.

`emit` is called inside the transaction that makes the change (a run moving state): the event
row and one delivery row per destination commit or roll back with it, so an event exists if
and only if its change does. Sending happens later, outside that transaction
(`notify_app.delivery`), woken after commit by a django-q2 task and re-tried by the sweep
schedule, so no run ever waits on a receiver (the pattern: Richardson, "Transactional
outbox", microservices.io).
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from notify_app.models import EMAIL_EVENTS, EVENTS, Channel, Delivery, Event, Webhook

log = logging.getLogger(__name__)

DELIVER_TASK = "notify_app.tasks.deliver"


def emit(name: str, *, key: str, payload: dict[str, Any]) -> Event | None:
    """Record event `name` (one of `models.EVENTS`) with its JSON `payload`, and a pending
    delivery to every active webhook subscribed to it (and to the approvers by email for
    `run.awaiting_approval` when HXO_NOTIFY_EMAIL is on), in the caller's transaction.

    `key` names the change (`run:12:approved`): a change emits once, however often the code
    that made it runs (a redelivered task, a reconciler racing a worker); the second call
    returns None and writes nothing. Wakes a sender for each delivery after commit.
    Raises ValueError for an unknown event name.
    """
    if name not in EVENTS:
        raise ValueError(f"unknown event {name!r}")
    # Joins the caller's transaction (no savepoint of its own); alone, it is one transaction.
    with transaction.atomic(savepoint=False):
        try:
            with transaction.atomic():  # the savepoint that survives a duplicate key
                event = Event.objects.create(name=name, key=key, payload=payload)
        except IntegrityError:
            return None  # this change already emitted (a rerun, a concurrent caller)
        # The JSON list holds the subscription; filtered here rather than with a JSON
        # lookup, which SQLite and PostgreSQL spell differently. Webhooks are few.
        hooks = [h for h in Webhook.objects.filter(active=True) if name in (h.events or [])]
        deliveries = [
            Delivery(
                event=event, channel=Channel.WEBHOOK, webhook=h, next_attempt_at=event.created_at
            )
            for h in hooks
        ]
        if name in EMAIL_EVENTS and settings.HXO_NOTIFY_EMAIL:
            deliveries.append(
                Delivery(event=event, channel=Channel.EMAIL, next_attempt_at=event.created_at)
            )
        Delivery.objects.bulk_create(deliveries)
    ids = [str(d.pk) for d in deliveries]
    if ids:
        transaction.on_commit(lambda: wake(ids))
    return event


def wake(delivery_ids: list[str]) -> None:
    """Put one send task per delivery on the queue. Never raises: a lost wake-up costs only
    time, the sweep (`notify_app.tasks.sweep`) sends what is due."""
    from django_q.tasks import async_task

    for delivery_id in delivery_ids:
        try:
            async_task(DELIVER_TASK, delivery_id, group="hxo-notify")
        except Exception:
            log.warning("could not enqueue delivery %s; the sweep will", delivery_id, exc_info=True)

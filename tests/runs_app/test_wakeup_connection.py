"""A wake-up enqueued from a request keeps the request's database connection (runs_app.engine.
wakeups._broker): django-q2's ORM broker closed it before each query outside a transaction,
so every POST that starts a run reconnected twice after its commit (with SQLite's
CONN_MAX_AGE 0), about half of the POST's time in bench/serving.py."""

from __future__ import annotations

import pytest
from django.db import connection
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.signing import SignedPackage

from runs_app.engine import wakeups

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not Conf.ORM, reason="the ORM broker only (HXO_BROKER=orm)"),
]


def test_enqueueing_outside_a_transaction_keeps_the_connection(settings):
    connection.ensure_connection()
    raw = connection.connection
    assert connection.get_autocommit()  # where django-q2's broker would close it
    wakeups.enqueue_partitioner(41)
    wakeups.enqueue_drainers(41, 2)
    wakeups.enqueue_abort(41)
    assert connection.connection is raw
    # The tasks are on the queue, for the cluster to take.
    funcs = [SignedPackage.loads(q.payload)["func"] for q in OrmQ.objects.order_by("pk")]
    assert funcs == [
        wakeups.PARTITION_TASK,
        wakeups.DRAIN_TASK,
        wakeups.DRAIN_TASK,
        wakeups.ABORT_TASK,
    ]
    assert {q.key for q in OrmQ.objects.all()} == {Conf.CLUSTER_NAME}


def test_without_it_the_orm_broker_would_close_the_connection():
    # The behaviour the wake-ups avoid, so this test notices if django-q2 changes it.
    from django_q.brokers import get_broker

    connection.ensure_connection()
    raw = connection.connection
    get_broker()
    if connection.settings_dict["CONN_MAX_AGE"] == 0:
        assert connection.connection is not raw

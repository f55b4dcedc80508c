"""A request whose transaction gives up on a busy database answers 503 `database_busy` with
Retry-After, in the API and on the pages, and writes nothing (a tryout got 15 of 1,074
concurrent plan saves answered 500 "database is locked" while a large stage was stopped).

The lock is real: another SQLite connection holds the write lock of the test database while
the request runs with a short busy timeout."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connection
from django.test import Client

from hxo_site import codes
from hxo_site.errors import is_database_busy
from runs_app.models import Plan
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, stage

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def held_write_lock() -> Iterator[None]:
    """The test database's write lock held by another connection; this process waits at most
    0.2 s for it (instead of 20 s)."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's single write lock; PostgreSQL takes row locks")
    options = connection.settings_dict.setdefault("OPTIONS", {})
    was = options.get("timeout")
    connection.close()
    options["timeout"] = 0.2
    other = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()
        connection.close()
        options["timeout"] = was


def document(tmp_path) -> dict:
    return {"name": "busy", "stages": [stage("a", tmp_path, kind=TEST_KIND_NOAPPROVAL)]}


def test_an_api_write_on_a_locked_database_is_503_with_retry_after(
    test_kinds, api_client_for, operator, tmp_path
) -> None:
    client = api_client_for(operator)
    client.get("/api/v1/plans/")  # the token's first use may write: before the lock
    with held_write_lock():
        response = client.post("/api/v1/plans/", document(tmp_path), format="json")
    assert response.status_code == 503, response.content
    assert response.json()["code"] == codes.DATABASE_BUSY
    assert response["Retry-After"] == "2"
    assert Plan.objects.filter(name="busy").count() == 0


def test_a_page_post_on_a_locked_database_is_503_and_writes_nothing(
    test_kinds, operator, tmp_path
) -> None:
    browser = Client()
    browser.force_login(operator)  # before the lock: logging in writes the session
    browser.get("/plans/")
    with held_write_lock():
        response = browser.post(
            "/plans/new/json/", {"document": json.dumps(document(tmp_path)), "_action": "save"}
        )
    assert response.status_code == 503, response.content[:300]
    assert b"database is busy" in response.content
    assert response["Retry-After"] == "2"
    assert Plan.objects.filter(name="busy").count() == 0


def test_only_a_busy_database_is_answered_503() -> None:
    from django.db import IntegrityError, OperationalError

    assert is_database_busy(OperationalError("database is locked"))
    assert is_database_busy(OperationalError("deadlock detected\nDETAIL: ..."))
    assert not is_database_busy(OperationalError("no such table: x"))
    assert not is_database_busy(IntegrityError("database is locked"))

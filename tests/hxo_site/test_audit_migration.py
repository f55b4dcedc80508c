"""The audit log's move from runs_app to hxo_site (runs_app 0005): rows written to the old
table before the migration are in the new one after it, ids and fields kept, and the next
event gets an id past them (PostgreSQL's sequence was reset)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from hxo_site.audit import audit
from hxo_site.models import AuditEvent

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("runs_app", "0004_input_idempotency_fingerprint")]


@pytest.fixture
def executor() -> Iterator[MigrationExecutor]:
    latest = MigrationExecutor(connection).loader.graph.leaf_nodes()
    try:
        yield MigrationExecutor(connection)
    finally:
        # Whatever happened, leave the schema as every other test expects it.
        MigrationExecutor(connection).migrate(latest)


def test_audit_rows_written_before_the_move_are_in_hxo_site_after_it(executor) -> None:
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate(BEFORE)
    old_apps = executor.loader.project_state(BEFORE).apps
    OldAuditEvent = old_apps.get_model("runs_app", "AuditEvent")
    User = old_apps.get_model("auth", "User")
    user = User.objects.create(username="mover")
    first = OldAuditEvent.objects.create(
        actor_id=user.pk,
        actor_name="mover",
        action="plan.create",
        object_type="plan",
        object_id="7",
        client_ip="2001:db8::1",
        before=None,
        after={"name": "nightly", "stages": [1, "two", None]},
        detail={"via": "api"},
    )
    second = OldAuditEvent.objects.create(
        id=first.pk + 1000, action="refused.permission_denied", object_type="endpoint"
    )

    MigrationExecutor(connection).migrate(latest)

    assert "runs_app_auditevent" not in connection.introspection.table_names()
    moved = list(AuditEvent.objects.order_by("id"))
    assert [e.pk for e in moved] == [first.pk, second.pk]
    assert moved[0].at == first.at
    assert (
        moved[0].actor_id,
        moved[0].actor_name,
        moved[0].action,
        moved[0].object_type,
        moved[0].object_id,
        moved[0].client_ip,
        moved[0].before,
        moved[0].after,
        moved[0].detail,
    ) == (
        user.pk,
        "mover",
        "plan.create",
        "plan",
        "7",
        "2001:db8::1",
        None,
        {"name": "nightly", "stages": [1, "two", None]},
        {"via": "api"},
    )
    assert moved[1].action == "refused.permission_denied" and moved[1].actor_id is None

    following = audit(actor=None, action="x.y", object_type="t", object_id="1")
    assert following.pk > second.pk


def test_migrating_back_returns_the_rows_to_runs_app(executor) -> None:
    latest = executor.loader.graph.leaf_nodes()
    event = audit(actor=None, action="plan.update", object_type="plan", object_id="3")

    executor.migrate(BEFORE)
    OldAuditEvent = executor.loader.project_state(BEFORE).apps.get_model("runs_app", "AuditEvent")
    assert list(OldAuditEvent.objects.values_list("id", "action")) == [(event.pk, "plan.update")]
    assert not AuditEvent.objects.exists()

    MigrationExecutor(connection).migrate(latest)
    assert list(AuditEvent.objects.values_list("id", "action")) == [(event.pk, "plan.update")]

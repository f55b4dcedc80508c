"""Every API endpoint refuses every role that lacks its capability, and changes nothing.

The endpoints are read from the URL resolver, not listed by hand: a new endpoint (or a new
method on one) fails `test_every_api_endpoint_has_a_known_capability` until it is added to
CAPABILITY below, and from then on it is part of the matrix.
"""

from __future__ import annotations

import pytest

from hxo_site.models import AuditEvent
from tests.hostile.conftest import assert_refused, snapshot
from tests.hostile.endpoints import (
    CAPABILITY,
    CAST,
    ENDPOINTS,
    PUBLIC,
    Endpoint,
    body_for,
    holds,
    send,
    url_for,
)

pytestmark = pytest.mark.django_db


def test_every_api_endpoint_has_a_known_capability() -> None:
    found = {(e.name, e.method) for e in ENDPOINTS}
    unknown = found - set(CAPABILITY)
    assert not unknown, f"new API endpoints: add them to CAPABILITY: {sorted(unknown)}"
    assert len(found) >= 30


@pytest.mark.parametrize(
    "endpoint",
    [e for e in ENDPOINTS if CAPABILITY.get((e.name, e.method)) not in (None, PUBLIC)],
    ids=str,
)
def test_the_endpoint_refuses_every_role_without_its_capability(
    endpoint: Endpoint, ctx, clients, anonymous_client, admiral, operator, approver, viewer, nobody
) -> None:
    users = {
        "admiral": admiral,
        "operator": operator,
        "approver": approver,
        "viewer": viewer,
        "nobody": nobody,
    }
    capability = CAPABILITY[(endpoint.name, endpoint.method)]
    url, body = url_for(endpoint, ctx), body_for(endpoint, ctx)
    refused_roles = [role for role in CAST if not holds(role, capability)]
    unsafe = endpoint.method not in ("GET", "HEAD", "OPTIONS")

    before = snapshot()
    response = send(anonymous_client, endpoint, url, body)
    assert_refused(response, 401, "not_authenticated")
    for role in refused_roles:
        audited = AuditEvent.objects.filter(action="refused.permission_denied").count()
        response = send(clients[role], endpoint, url, body)
        assert_refused(response, 403, "permission_denied")
        assert snapshot() == before, f"{role} changed the database through {endpoint}"
        if unsafe:
            # The refusal of a privileged action is itself audited: who, what, from where.
            event = AuditEvent.objects.filter(action="refused.permission_denied").latest("id")
            assert AuditEvent.objects.filter(action="refused.permission_denied").count() == (
                audited + 1
            )
            assert event.actor_name == users[role].username
            assert event.object_id == endpoint.name
            assert event.detail["method"] == endpoint.method

    # And the capability is what it takes: a role holding it is not refused for lack of it.
    allowed = next(role for role in CAST if holds(role, capability))
    response = send(clients[allowed], endpoint, url, body)
    assert response.status_code not in (401, 500), response.content[:300]
    if response.status_code == 403:
        assert response.json()["code"] != "permission_denied", (allowed, response.json())


@pytest.mark.parametrize(
    "endpoint", [e for e in ENDPOINTS if CAPABILITY.get((e.name, e.method)) == PUBLIC], ids=str
)
def test_public_endpoints_need_no_capability(endpoint: Endpoint, ctx, anonymous_client) -> None:
    response = send(anonymous_client, endpoint, url_for(endpoint, ctx), body_for(endpoint, ctx))
    assert response.status_code not in (401, 403, 500)

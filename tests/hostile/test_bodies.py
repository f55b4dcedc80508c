"""Hostile request bodies on every state-changing API endpoint: malformed, deeply nested,
unstorable, mistyped, oversized and non-JSON. Each is a 4xx with a code, never a 500, and
the database is unchanged.

Sent by the most privileged user (admiral), so that nothing but the body can be the reason
for the refusal.
"""

from __future__ import annotations

import pytest
from django.test import Client

from tests.hostile.conftest import assert_refused, snapshot
from tests.hostile.endpoints import UNSAFE, Endpoint, url_for

pytestmark = pytest.mark.django_db

HOSTILE_BODIES: dict[str, tuple[bytes, str]] = {
    "truncated": (b'{"name": "x", "stages": [', "parse_error"),
    "not json": (b"name=x&stages=", "parse_error"),
    "trailing garbage": (b'{"name": "x"} {"name": "y"}', "parse_error"),
    "single quotes": (b"{'name': 'x'}", "parse_error"),
    "NaN": (b'{"name": NaN}', "parse_error"),
    "Infinity": (b'{"limit": -Infinity}', "parse_error"),
    "invalid utf-8": (b'{"name": "\xff\xfe"}', "parse_error"),
    "huge integer": (b'{"n": ' + b"9" * 5000 + b"}", "parse_error"),
    "nested 100000 deep": (b"[" * 100_000 + b"]" * 100_000, "nesting_too_deep"),
    "unclosed 100000 deep": (b'{"a":' * 100_000, "nesting_too_deep"),
    "nested 65 deep": (b'{"a":' * 65 + b"1" + b"}" * 65, "nesting_too_deep"),
    "NUL in a value": (b'{"name": "a\\u0000b"}', "invalid_characters"),
    "NUL in a key": (b'{"na\\u0000me": "x"}', "invalid_characters"),
    "lone surrogate": (b'{"name": "\\ud800"}', "invalid_characters"),
    "NUL deep inside": (
        b'{"stages": [{"params": {"paths": ["ok", "bad\\u0000"]}}]}',
        "invalid_characters",
    ),
}


def admiral_client(admiral) -> Client:
    client = Client()
    client.force_login(admiral)
    # Session auth needs CSRF; Client skips the check (enforce_csrf_checks=False), so only
    # the body can be refused here. CSRF itself is tested in test_auth.py.
    return client


@pytest.mark.parametrize("endpoint", UNSAFE, ids=str)
def test_a_hostile_body_is_a_400_with_a_code_and_changes_nothing(
    endpoint: Endpoint, ctx, admiral
) -> None:
    # One test per endpoint, every body in turn: the objects it aims at are made once.
    client = admiral_client(admiral)
    url = url_for(endpoint, ctx)
    send = getattr(client, endpoint.method.lower())
    before = snapshot()

    for name, (body, code) in HOSTILE_BODIES.items():
        response = send(url, body, content_type="application/json")

        assert response.status_code == 400, (name, response.status_code, response.content[:300])
        errors = assert_refused(response, 400, code)
        assert snapshot() == before, name
        if code == "invalid_characters":
            assert errors["errors"][0]["path"] in {"name", "", "stages[0].params.paths[1]"}


@pytest.mark.parametrize("endpoint", UNSAFE, ids=str)
def test_a_body_that_is_not_json_is_refused_with_415(endpoint: Endpoint, ctx, admiral) -> None:
    client = admiral_client(admiral)
    before = snapshot()
    send = getattr(client, endpoint.method.lower())

    for content_type in ("application/x-www-form-urlencoded", "text/plain", "application/xml"):
        response = send(url_for(endpoint, ctx), b"name=x", content_type=content_type)
        assert_refused(response, 415, "unsupported_media_type")
    assert snapshot() == before


@pytest.mark.parametrize("endpoint", UNSAFE, ids=str)
def test_an_oversized_body_is_refused_unread_with_413(
    endpoint: Endpoint, ctx, admiral, settings
) -> None:
    settings.HXO_MAX_BODY_BYTES = 4096
    client = admiral_client(admiral)
    before = snapshot()
    big = b'{"name": "' + b"x" * 5000 + b'"}'
    send = getattr(client, endpoint.method.lower())

    response = send(url_for(endpoint, ctx), big, content_type="application/json")

    assert_refused(response, 413, "body_too_large")
    assert snapshot() == before


def test_a_lying_content_length_is_refused_by_its_declared_size(admiral, settings) -> None:
    # A client declaring a huge body is refused before a byte of it is read, whatever it sends.
    settings.HXO_MAX_BODY_BYTES = 4096
    client = admiral_client(admiral)
    response = client.post(
        "/api/v1/plans/", b"{}", content_type="application/json", CONTENT_LENGTH="99999999"
    )
    assert_refused(response, 413, "body_too_large")


def test_an_oversized_dashboard_form_is_refused_with_413(admiral, settings) -> None:
    settings.HXO_MAX_BODY_BYTES = 4096
    client = admiral_client(admiral)
    response = client.post("/plans/new/", {"name": "x" * 5000})
    assert response.status_code == 413
    assert b"HXO_MAX_BODY_BYTES" in response.content


# --- Wrong types and unknown fields, where an endpoint takes a body ------------------------

WRONG_TYPES: list[bytes] = [b"[]", b'"plan"', b"42", b"null", b"true", b'[{"name": "x"}]']


@pytest.mark.parametrize(
    "url_name",
    ["plan-list", "plan-detail", "validate", "plan-apply", "run-approve", "job-kind-list"],
)
@pytest.mark.parametrize("body", WRONG_TYPES, ids=lambda b: b.decode())
def test_a_body_of_the_wrong_type_is_a_400_with_a_code(url_name: str, body: bytes, ctx, clients):
    endpoint = next(e for e in UNSAFE if e.name == url_name)
    before = snapshot()
    send = getattr(clients["admiral"], endpoint.method.lower())
    response = send(url_for(endpoint, ctx), body, content_type="application/json")
    assert_refused(response, 400)
    assert snapshot() == before


@pytest.mark.parametrize(
    ("url_name", "fields"),
    [
        ("validate", {"plan": {"name": "x", "stages": []}, "sneaky": 1}),
        ("plan-apply", {"dry_run": None, "sneaky": 1}),
        ("run-approve", {"comment": "ok", "approver": "someone-else"}),
        # A misspelt safety setting must not be dropped silently.
        ("job-kind-detail", {"require_dryrun": False}),
        ("job-kind-detail", {"safety_policy": {"require_dry_run": True}, "approvals": 3}),
    ],
)
def test_unknown_fields_are_refused_with_their_names(url_name, fields, ctx, clients) -> None:
    endpoint = next(e for e in UNSAFE if e.name == url_name and e.method in ("POST", "PATCH"))
    before = snapshot()
    send = getattr(clients["admiral"], endpoint.method.lower())
    response = send(url_for(endpoint, ctx), fields, format="json")
    body = assert_refused(response, 400)
    assert body["code"] in ("unknown_field", "validation_failed")
    if url_name != "validate":  # which refuses the body's shape as a whole (`required`)
        unknown = {e["path"] for e in body["errors"] if e["code"] == "unknown_field"}
        assert unknown == set(fields) - {"dry_run", "comment", "safety_policy"}
    assert snapshot() == before


@pytest.mark.parametrize(
    "stage_patch",
    [
        {"id": 7},
        {"depends_on": "a"},
        {"params": "items=3"},
        {"kind": ["test.quick"]},
        {"slo_ms": "fast"},
        {"non_idempotent": "yes"},
        {"unexpected": True},
    ],
    ids=repr,
)
def test_a_plan_with_mistyped_or_unknown_stage_fields_is_refused(stage_patch, ctx, clients) -> None:
    document = ctx["plan_document"]
    stage = {**document["stages"][0], **stage_patch}
    before = snapshot()
    response = clients["admiral"].post(
        "/api/v1/plans/", {"name": "typed", "stages": [stage]}, format="json"
    )
    body = assert_refused(response, 400)
    assert body["errors"] and all(e["path"].startswith("stages[0]") for e in body["errors"])
    assert snapshot() == before

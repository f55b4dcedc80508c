"""Ways in, attacked: POSTs without CSRF, expired and revoked tokens, password guessing on the
login page and the token endpoint. Every refusal is a coded 4xx that changes nothing but the
audit log."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from hxo_site.models import AuditEvent
from tests.hostile.conftest import assert_refused, snapshot
from tests.runs_app.testkinds import TEST_KIND, stage

pytestmark = pytest.mark.django_db


def token_client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


# --- CSRF ------------------------------------------------------------------------------------


def test_an_api_post_with_a_session_but_no_csrf_token_is_refused(operator, ctx) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    before = snapshot()

    response = client.post(
        f"/api/v1/plans/{ctx['plan'].pk}/dry-run/", b"{}", content_type="application/json"
    )

    body = assert_refused(response, 403, "permission_denied")
    assert "CSRF" in body["detail"]
    assert snapshot() == before
    event = AuditEvent.objects.get(action="refused.permission_denied")
    assert event.actor_name == operator.username and "CSRF" in event.detail["reason"]


def test_a_dashboard_post_without_a_csrf_token_is_refused(operator, ctx) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    before = snapshot()

    response = client.post(f"/plans/{ctx['plan'].pk}/dry-run/")

    assert response.status_code == 403
    assert snapshot() == before
    event = AuditEvent.objects.get(action="refused.permission_denied")
    assert event.detail["surface"] == "csrf"


def test_the_same_dashboard_post_with_its_csrf_token_goes_through(operator, ctx) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    page = client.get(f"/plans/{ctx['plan'].pk}/")
    token = page.cookies["csrftoken"].value

    response = client.post(f"/plans/{ctx['plan'].pk}/dry-run/", HTTP_X_CSRFTOKEN=token)

    assert response.status_code in (200, 302)


def test_token_authentication_needs_no_csrf_token(operator, ctx) -> None:
    token = Token.objects.create(user=operator)
    response = token_client(token.key).post(f"/api/v1/plans/{ctx['plan'].pk}/dry-run/")
    assert response.status_code == 202


# --- Expired and revoked tokens -------------------------------------------------------------


def test_an_expired_token_is_refused_with_token_expired(operator, settings) -> None:
    settings.HXO_TOKEN_TTL_DAYS = 30
    token = Token.objects.create(user=operator)
    Token.objects.filter(pk=token.pk).update(created=timezone.now() - timedelta(days=31))
    before = snapshot()

    response = token_client(token.key).get("/api/v1/plans/")

    assert_refused(response, 401, "token_expired")
    assert response["WWW-Authenticate"].startswith("Token")
    assert snapshot() == before


def test_a_token_just_inside_its_lifetime_still_works(operator, settings) -> None:
    settings.HXO_TOKEN_TTL_DAYS = 30
    token = Token.objects.create(user=operator)
    Token.objects.filter(pk=token.pk).update(created=timezone.now() - timedelta(days=29))

    assert token_client(token.key).get("/api/v1/plans/").status_code == 200


def test_a_revoked_token_is_refused(operator, ctx) -> None:
    token = Token.objects.create(user=operator)
    client = token_client(token.key)
    assert client.get("/api/v1/plans/").status_code == 200
    token.delete()
    before = snapshot()

    assert_refused(client.get("/api/v1/plans/"), 401, "not_authenticated")
    response = client.post(f"/api/v1/plans/{ctx['plan'].pk}/dry-run/")
    assert_refused(response, 401, "not_authenticated")
    assert snapshot() == before


def test_a_deactivated_users_token_is_refused(operator) -> None:
    token = Token.objects.create(user=operator)
    operator.is_active = False
    operator.save()

    assert_refused(token_client(token.key).get("/api/v1/plans/"), 401, "not_authenticated")


@pytest.mark.parametrize(
    "header",
    ["Token", "Token a b", "Token \x00", "Token " + "x" * 5000, "Bearer abc", "Token ' OR 1=1 --"],
)
def test_malformed_authorization_headers_are_refused(header: str) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/plans/")
    assert_refused(response, 401, "not_authenticated")


# --- The token endpoint ---------------------------------------------------------------------


def test_the_token_endpoint_trades_a_password_for_the_users_token(operator) -> None:
    response = APIClient().post(
        "/api/v1/auth/token/", {"username": "otto", "password": "otto-password"}
    )

    assert response.status_code == 200
    body = response.json()
    assert body["username"] == "otto" and body["expires_at"]
    assert token_client(body["token"]).get("/api/v1/plans/").status_code == 200
    again = APIClient().post(
        "/api/v1/auth/token/", {"username": "otto", "password": "otto-password"}
    )
    assert again.json()["token"] == body["token"]
    assert AuditEvent.objects.filter(action="token.obtain", actor=operator).count() == 2


def test_the_token_endpoint_replaces_an_expired_token(operator, settings) -> None:
    settings.HXO_TOKEN_TTL_DAYS = 30
    old = Token.objects.create(user=operator)
    Token.objects.filter(pk=old.pk).update(created=timezone.now() - timedelta(days=40))

    response = APIClient().post(
        "/api/v1/auth/token/", {"username": "otto", "password": "otto-password"}
    )

    assert response.status_code == 200
    assert response.json()["token"] != old.key
    assert token_client(response.json()["token"]).get("/api/v1/plans/").status_code == 200
    assert_refused(token_client(old.key).get("/api/v1/plans/"), 401)


@pytest.mark.parametrize(
    "body",
    [
        {"username": "otto", "password": "wrong"},
        {"username": "nobody-here", "password": "x"},
        {"username": "otto' OR '1'='1", "password": "' OR '1'='1"},
    ],
)
def test_the_token_endpoint_refuses_wrong_credentials(operator, body) -> None:
    before = snapshot()
    response = APIClient().post("/api/v1/auth/token/", body)
    assert_refused(response, 400, "invalid_credentials")
    assert snapshot() == before


def test_the_token_endpoint_ignores_a_stale_authorization_header(operator) -> None:
    client = token_client("revoked-or-expired")
    response = client.post("/api/v1/auth/token/", {"username": "otto", "password": "otto-password"})
    assert response.status_code == 200


def test_password_guessing_on_the_token_endpoint_is_locked_out(operator, settings) -> None:
    settings.HXO_LOGIN_MAX_FAILURES = 3
    settings.HXO_TOKEN_RATE = "100/minute"
    client = APIClient()
    for _ in range(3):
        bad = client.post("/api/v1/auth/token/", {"username": "otto", "password": "guess"})
        assert_refused(bad, 400, "invalid_credentials")

    # Locked: even the right password is refused now, with a time to come back.
    response = client.post("/api/v1/auth/token/", {"username": "otto", "password": "otto-password"})
    assert_refused(response, 429, "login_throttled")
    assert int(response["Retry-After"]) > 0
    # Another user from the same address is not locked out by otto's failures.
    other = client.post("/api/v1/auth/token/", {"username": "nora", "password": "x"})
    assert_refused(other, 400, "invalid_credentials")
    event = AuditEvent.objects.get(action="refused.login_throttled")
    assert event.object_id == "otto" and event.detail["surface"] == "token"


def test_the_token_endpoint_has_a_request_rate_limit(operator, settings) -> None:
    settings.HXO_TOKEN_RATE = "3/minute"
    client = APIClient()
    good = {"username": "otto", "password": "otto-password"}
    for _ in range(3):
        assert client.post("/api/v1/auth/token/", good).status_code == 200
    response = client.post("/api/v1/auth/token/", good)
    assert_refused(response, 429, "throttled")
    assert "Retry-After" in response


# --- The login page -------------------------------------------------------------------------


def test_password_guessing_on_the_login_page_is_locked_out_and_audited(operator, settings) -> None:
    settings.HXO_LOGIN_MAX_FAILURES = 3
    client = Client()
    for _ in range(3):
        page = client.post("/login/", {"username": "otto", "password": "guess"})
        assert page.status_code == 200  # the form again, with its error

    response = client.post("/login/", {"username": "otto", "password": "otto-password"})

    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert b"Too many failed logins" in response.content
    assert "_auth_user_id" not in client.session
    # Audited once per lockout, not once per refused attempt.
    client.post("/login/", {"username": "otto", "password": "again"})
    events = AuditEvent.objects.filter(action="refused.login_throttled")
    assert events.count() == 1
    assert events.get().detail["surface"] == "login"
    assert events.get().client_ip == "127.0.0.1"


def test_login_failures_and_token_failures_share_one_counter(operator, settings) -> None:
    settings.HXO_LOGIN_MAX_FAILURES = 2
    Client().post("/login/", {"username": "otto", "password": "guess"})
    APIClient().post("/api/v1/auth/token/", {"username": "OTTO", "password": "guess"})

    response = Client().post("/login/", {"username": "otto", "password": "otto-password"})
    assert response.status_code == 429


def test_the_lockout_is_per_address(operator, settings) -> None:
    settings.HXO_LOGIN_MAX_FAILURES = 2
    for _ in range(2):
        Client().post("/login/", {"username": "otto", "password": "x"}, REMOTE_ADDR="10.0.0.9")

    elsewhere = Client().post("/login/", {"username": "otto", "password": "otto-password"})
    assert elsewhere.status_code == 302


def test_a_spoofed_forwarded_for_does_not_escape_the_lockout(operator, settings) -> None:
    settings.HXO_LOGIN_MAX_FAILURES = 2
    for i in range(2):
        Client().post(
            "/login/", {"username": "otto", "password": "x"}, HTTP_X_FORWARDED_FOR=f"1.2.3.{i}"
        )
    response = Client().post(
        "/login/",
        {"username": "otto", "password": "otto-password"},
        HTTP_X_FORWARDED_FOR="9.9.9.9",
    )
    assert response.status_code == 429


def test_a_successful_login_still_works_below_the_limit(operator, settings) -> None:
    settings.HXO_LOGIN_MAX_FAILURES = 3
    client = Client()
    client.post("/login/", {"username": "otto", "password": "guess"})
    response = client.post("/login/", {"username": "otto", "password": "otto-password"})
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(operator.pk)


@pytest.mark.parametrize("username", ["ot\x00to", "otto' --", "ö" * 200, ""])
def test_hostile_usernames_on_the_login_page_are_a_form_error(operator, username: str) -> None:
    response = Client().post("/login/", {"username": username, "password": "x"})
    assert response.status_code == 200
    assert "_auth_user_id" not in Client().session


# --- The client's address behind the proxy ---------------------------------------------------


def test_behind_the_proxy_services_and_throttles_record_the_same_client_address(
    test_kinds, operator, api_client_for, settings, tmp_path
) -> None:
    # The proxy (10.0.0.2) appends the address it saw; what the client wrote before it is
    # not to be trusted. A service's audit event and a throttle's both name 198.51.100.7.
    settings.HXO_BEHIND_PROXY = True
    settings.HXO_LOGIN_MAX_FAILURES = 1
    via_proxy = {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "1.1.1.1, 198.51.100.7"}

    body = {"name": "proxied", "stages": [stage("a", tmp_path, kind=TEST_KIND)]}
    created = api_client_for(operator).post("/api/v1/plans/", body, format="json", **via_proxy)
    assert created.status_code == 201, created.json()
    Client().post("/login/", {"username": "otto", "password": "x"}, **via_proxy)
    locked = Client().post("/login/", {"username": "otto", "password": "x"}, **via_proxy)
    assert locked.status_code == 429

    service_event = AuditEvent.objects.get(action="plan.create")
    throttle_event = AuditEvent.objects.get(action="refused.login_throttled")
    assert service_event.client_ip == throttle_event.client_ip == "198.51.100.7"

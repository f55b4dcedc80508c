"""Webhooks are registered in the admin with the same URL rules the sender applies; events and
deliveries are read-only there. And the other half of "approvals that expire": an apply after
HXO_APPROVAL_TTL_HOURS is 409 `approval_expired` through the API."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import Client

from hxo_site import codes
from notify_app.models import Channel, Delivery, Webhook
from runs_app import services
from runs_app.models import Approval, Run, RunMode
from tests.helpers import drain
from tests.runs_app.testkinds import stage

pytestmark = pytest.mark.django_db

ADD = "/admin/notify_app/webhook/add/"


@pytest.fixture
def superuser(db: None) -> User:
    return User.objects.create_superuser("root", "root@example.com", "root-password")


def admin_client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def form(url: str, **extra: object) -> dict[str, object]:
    return {
        "name": "chat",
        "url": url,
        "format": "slack",
        "events": ["run.awaiting_approval", "run.failed"],
        "secret": "x" * 40,
        "active": "on",
        **extra,
    }


def test_an_admin_registers_a_webhook(superuser) -> None:
    response = admin_client(superuser).post(ADD, form("https://hooks.slack.com/services/T/B/x"))
    assert response.status_code == 302, response.content[:2000]
    hook = Webhook.objects.get()
    assert hook.events == ["run.awaiting_approval", "run.failed"] and hook.format == "slack"


def test_a_new_webhook_gets_a_random_secret() -> None:
    one, two = Webhook(name="a"), Webhook(name="b")
    assert len(one.secret) >= 40 and one.secret != two.secret


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/hook", "must start with http:// or https://"),
        ("file:///etc/passwd", "must start with http:// or https://"),
        ("https://user:pw@example.com/hook", "no user name or password"),
        ("https:///nohost", "must name a host"),
        ("http://example.com:99999/", "not a valid URL"),
    ],
)
def test_the_admin_refuses_urls_the_sender_would_refuse(superuser, url, message) -> None:
    response = admin_client(superuser).post(ADD, form(url))
    assert response.status_code == 200 and message in response.content.decode()
    assert Webhook.objects.count() == 0


def test_the_allow_list_applies_when_saving(superuser, settings) -> None:
    settings.HXO_WEBHOOK_ALLOWED_HOSTS = [".example.com"]
    client = admin_client(superuser)
    refused = client.post(ADD, form("https://evil.test/hook"))
    assert "evil.test is not in HXO_WEBHOOK_ALLOWED_HOSTS" in refused.content.decode()
    assert client.post(ADD, form("https://hooks.example.com/x")).status_code == 302
    assert client.post(ADD, form("https://example.com/x", name="apex")).status_code == 302
    assert Webhook.objects.count() == 2


def test_a_webhook_needs_known_events(superuser) -> None:
    client = admin_client(superuser)
    assert client.post(ADD, form("https://example.com/h", events=[])).status_code == 200
    bad = client.post(ADD, form("https://example.com/h", events=["run.exploded"]))
    assert "run.exploded is not one of the available choices" in bad.content.decode()
    assert Webhook.objects.count() == 0


def test_staff_without_the_model_permission_cannot_register(admiral) -> None:
    assert admin_client(admiral).get(ADD).status_code == 403


@pytest.fixture
def recorded(test_kinds, tmp_path: Path, operator) -> Delivery:
    Webhook.objects.create(
        name="down", url="http://127.0.0.1:9/hook", events=["run.awaiting_approval"]
    )
    plan = services.plan_create(
        actor=operator, document={"name": "p", "stages": [stage("a", tmp_path, items=1)]}
    )
    drain(services.run_start_dry_run(plan=plan, actor=operator))
    delivery = Delivery.objects.get(channel=Channel.WEBHOOK)
    Delivery.objects.filter(pk=delivery.pk).update(
        attempts=2, status_code=500, last_error="HTTP 500: boom"
    )
    return delivery


def test_deliveries_are_visible_and_read_only_in_the_admin(superuser, recorded) -> None:
    client = admin_client(superuser)
    listing = client.get("/admin/notify_app/delivery/")
    assert listing.status_code == 200 and "down" in listing.content.decode()
    page = client.get(f"/admin/notify_app/delivery/{recorded.pk}/change/")
    text = page.content.decode()
    assert page.status_code == 200 and "HTTP 500: boom" in text and 'name="_save"' not in text
    edit = client.post(f"/admin/notify_app/delivery/{recorded.pk}/change/", {"state": "delivered"})
    assert edit.status_code == 403
    recorded.refresh_from_db()
    assert recorded.state == "pending"
    assert client.get("/admin/notify_app/delivery/add/").status_code == 403
    event_page = client.get(f"/admin/notify_app/event/{recorded.event_id}/change/")
    assert event_page.status_code == 200 and "run.awaiting_approval" in event_page.content.decode()


# --- Expiry ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("age_h", "status"), [(71, 202), (73, 409)])
def test_an_apply_after_the_approval_ttl_is_409_approval_expired(
    test_kinds, tmp_path, operator, approver, api_client_for, age_h, status
) -> None:
    # The default TTL (72 h): an approval 71 hours old still covers an apply, 73 hours not.
    plan = services.plan_create(
        actor=operator, document={"name": "p", "stages": [stage("a", tmp_path, items=2)]}
    )
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    services.run_approve(run=dry, actor=approver)
    Approval.objects.filter(run=dry).update(
        created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=age_h)
    )
    response = api_client_for(operator).post(
        f"/api/v1/plans/{plan.pk}/apply/", {"dry_run": dry.pk}, format="json"
    )
    assert response.status_code == status, response.json()
    applies = Run.objects.filter(plan=plan, mode=RunMode.APPLY).count()
    if status == 409:
        assert response.json()["code"] == codes.APPROVAL_EXPIRED == "approval_expired"
        assert "72 hours" in response.json()["detail"] and applies == 0
    else:
        assert applies == 1

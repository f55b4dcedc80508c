"""Approvals that reach people (issue 14 §3): events written with the run's own transaction,
signed webhooks to a real local receiver, retries with backoff, each attempt recorded, and
email to the approvers.

Every test counts effects: requests the receiver got and verified, event and delivery rows,
messages in Django's locmem outbox (its real test email backend)."""

from __future__ import annotations

import datetime as dt
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core import mail
from django.db import transaction
from django.utils import timezone

from notify_app import signing, tasks
from notify_app.models import Channel, Delivery, DeliveryState, Event, Webhook
from notify_app.outbox import emit
from runs_app import services
from runs_app.models import Plan, Run, RunState
from runs_app.transitions import move_run
from tests.helpers import drain
from tests.notify_app.receiver import Receiver
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, stage

pytestmark = pytest.mark.django_db

SECRET = "s3cret-for-tests"
ALL = ["run.awaiting_approval", "run.approved", "run.rejected", "run.failed", "run.succeeded"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(secret=SECRET)
    yield r
    r.close()


def hook(
    url: str, *, fmt: str = "hxo", events: list[str] | None = None, secret: str = SECRET
) -> Webhook:
    return Webhook.objects.create(
        name=f"hook-{fmt}", url=url, secret=secret, events=events or ALL, format=fmt
    )


@pytest.fixture
def plan(test_kinds, tmp_path: Path, operator) -> Plan:
    return services.plan_create(
        actor=operator, document={"name": "nightly", "stages": [stage("a", tmp_path, items=2)]}
    )


def dry_run(plan: Plan, operator) -> Run:
    return drain(services.run_start_dry_run(plan=plan, actor=operator))


def sweep_until_settled(rounds: int = 10) -> None:
    for _ in range(rounds):
        tasks.sweep()
        if not Delivery.objects.filter(state=DeliveryState.PENDING).exists():
            return


# --- The receiver's side: signatures, retries, records -------------------------------------


def test_a_500_then_200_is_retried_and_recorded_with_two_attempts(plan, operator, receiver):
    webhook = hook(receiver.url)
    receiver.script = [500]
    run = dry_run(plan, operator)
    assert run.state == RunState.AWAITING_APPROVAL

    delivery = Delivery.objects.get(webhook=webhook, event__name="run.awaiting_approval")
    tasks.deliver(str(delivery.pk))  # the wake-up: first attempt, 500
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.status_code) == ("pending", 1, 500)
    assert "HTTP 500" in delivery.last_error and delivery.delivered_at is None

    tasks.sweep()  # the retry, due at once with HXO_WEBHOOK_BACKOFF_S=0
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.status_code) == ("delivered", 2, 200)
    assert delivery.delivered_at is not None and delivery.last_error == ""

    assert len(receiver.got) == 2 and all(r.verified for r in receiver.got)
    first, second = receiver.got
    # One delivery id across attempts, so the receiver can drop a repeat.
    assert first.headers["X-HXO-Delivery"] == second.headers["X-HXO-Delivery"] == str(delivery.pk)
    assert second.headers["X-HXO-Event"] == "run.awaiting_approval"
    body = second.json
    assert body["event"] == "run.awaiting_approval" and body["id"] == str(delivery.event_id)
    assert body["data"]["run"]["id"] == run.pk
    assert body["data"]["run"]["plan"]["name"] == "nightly"
    assert body["data"]["run"]["requested_by"] == operator.username
    assert body["data"]["run"]["url"].endswith(f"/runs/{run.pk}/")
    assert body["data"]["run"]["kinds"] == ["test.echo"]


def test_a_receiver_with_another_secret_refuses_and_the_refusal_is_recorded(
    plan, operator, receiver
):
    hook(receiver.url, secret="not-the-receivers-secret")
    dry_run(plan, operator)
    tasks.sweep()
    delivery = Delivery.objects.get(channel=Channel.WEBHOOK)
    assert len(receiver.got) == 1 and receiver.got[0].verified is False
    assert (delivery.state, delivery.status_code, delivery.attempts) == ("pending", 401, 1)
    assert "bad signature" in delivery.last_error


def test_attempts_are_bounded_then_the_delivery_fails(plan, operator, receiver, settings):
    settings.HXO_WEBHOOK_MAX_ATTEMPTS = 3
    receiver.script = [503] * 10
    hook(receiver.url)
    dry_run(plan, operator)
    for _ in range(5):
        tasks.sweep()
    delivery = Delivery.objects.get(channel=Channel.WEBHOOK)
    assert (delivery.state, delivery.attempts, delivery.status_code) == ("failed", 3, 503)
    assert len(receiver.got) == 3


def test_backoff_doubles_per_attempt_and_waits(plan, operator, receiver, settings):
    settings.HXO_WEBHOOK_BACKOFF_S = 30
    receiver.script = [500, 500]
    hook(receiver.url)
    dry_run(plan, operator)
    delivery = Delivery.objects.get(channel=Channel.WEBHOOK)
    before = timezone.now()
    tasks.deliver(str(delivery.pk))
    delivery.refresh_from_db()
    assert dt.timedelta(seconds=29) < delivery.next_attempt_at - before < dt.timedelta(seconds=35)
    tasks.sweep()  # not due yet: nothing sent
    assert len(receiver.got) == 1
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    tasks.sweep()
    delivery.refresh_from_db()
    assert delivery.attempts == 2 and len(receiver.got) == 2
    assert (
        dt.timedelta(seconds=59)
        < delivery.next_attempt_at - timezone.now()
        < dt.timedelta(seconds=65)
    )


def test_a_redelivered_send_task_sends_once(plan, operator, receiver):
    hook(receiver.url)
    dry_run(plan, operator)
    delivery = Delivery.objects.get(channel=Channel.WEBHOOK)
    for _ in range(3):  # the ORM broker re-delivering the wake-up, the sweep racing it
        tasks.deliver(str(delivery.pk))
        tasks.sweep()
    delivery.refresh_from_db()
    assert delivery.attempts == 1 and len(receiver.got) == 1


def test_a_redirect_is_never_followed(plan, operator, receiver):
    elsewhere = Receiver(secret=SECRET)
    try:
        receiver.script = [302]
        receiver.location = elsewhere.url
        hook(receiver.url)
        dry_run(plan, operator)
        sweep_until_settled()
        delivery = Delivery.objects.get(channel=Channel.WEBHOOK)
        assert (delivery.state, delivery.status_code, delivery.attempts) == ("failed", 302, 1)
        assert "redirect" in delivery.last_error and elsewhere.got == []
    finally:
        elsewhere.close()


def test_a_silent_receiver_times_out_and_is_retried(plan, operator, settings):
    settings.HXO_WEBHOOK_TIMEOUT_S = 1
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection, never answers
    try:
        hook(f"http://127.0.0.1:{silent.getsockname()[1]}/hook")
        dry_run(plan, operator)
        tasks.sweep()
        delivery = Delivery.objects.get(channel=Channel.WEBHOOK)
        assert delivery.state == "pending" and delivery.attempts == 1
        assert "timed out" in delivery.last_error.lower() and delivery.status_code is None
    finally:
        silent.close()


def test_a_dead_receiver_never_holds_a_run(plan, operator, tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    hook(f"http://127.0.0.1:{port}/hook")
    run = dry_run(plan, operator)
    assert run.state == RunState.AWAITING_APPROVAL
    delivery = Delivery.objects.get(channel=Channel.WEBHOOK)
    assert delivery.attempts == 0  # the run wrote its event; nothing was sent inside it
    tasks.sweep()
    delivery.refresh_from_db()
    assert delivery.attempts == 1 and "refused" in delivery.last_error.lower()


def test_the_allow_list_stops_queued_deliveries(plan, operator, receiver, settings):
    hook(receiver.url)
    dry_run(plan, operator)
    settings.HXO_WEBHOOK_ALLOWED_HOSTS = ["hooks.example.com"]
    tasks.sweep()
    delivery = Delivery.objects.get(channel=Channel.WEBHOOK)
    assert delivery.state == "failed" and "HXO_WEBHOOK_ALLOWED_HOSTS" in delivery.last_error
    assert receiver.got == []


# --- Events: one per transition, with the transaction -------------------------------------


def test_each_transition_emits_its_event_once(plan, operator, approver, receiver):
    hook(receiver.url)
    run = dry_run(plan, operator)
    drain(run)  # a drainer task delivered again after the run finished
    services.run_approve(run=run, actor=approver, comment="looks right")
    keys = sorted(Event.objects.values_list("key", flat=True))
    assert keys == [f"run:{run.pk}:approved", f"run:{run.pk}:awaiting_approval"]
    sweep_until_settled()
    assert [r.headers["X-HXO-Event"] for r in receiver.got] == [
        "run.awaiting_approval",
        "run.approved",
    ] or sorted(r.headers["X-HXO-Event"] for r in receiver.got) == [
        "run.approved",
        "run.awaiting_approval",
    ]
    approved = next(r.json for r in receiver.got if r.headers["X-HXO-Event"] == "run.approved")
    assert approved["data"]["run"]["approvals"][0]["user"] == approver.username
    assert approved["data"]["run"]["approvals"][0]["comment"] == "looks right"


def test_two_processes_moving_one_run_emit_one_event(plan, operator):
    run = dry_run(plan, operator)
    Run.objects.filter(pk=run.pk).update(state=RunState.RUNNING)
    one, other = Run.objects.get(pk=run.pk), Run.objects.get(pk=run.pk)
    assert move_run(one, RunState.FAILED) is True
    assert move_run(other, RunState.FAILED) is False  # lost the compare-and-swap
    assert Event.objects.filter(key=f"run:{run.pk}:failed").count() == 1
    # And a second emit of the same change is a no-op whoever calls it.
    assert emit("run.failed", key=f"run:{run.pk}:failed", payload={}) is None
    assert Event.objects.filter(name="run.failed").count() == 1


def test_no_event_when_the_transaction_rolls_back(plan, operator, receiver):
    hook(receiver.url)
    run = dry_run(plan, operator)
    Event.objects.all().delete()
    Run.objects.filter(pk=run.pk).update(state=RunState.RUNNING)
    run.refresh_from_db()
    with pytest.raises(RuntimeError), transaction.atomic():
        assert move_run(run, RunState.FAILED)
        assert Event.objects.filter(name="run.failed").count() == 1  # inside: written
        raise RuntimeError("the caller failed after the move")
    assert Run.objects.get(pk=run.pk).state == RunState.RUNNING
    assert Event.objects.count() == 0 and Delivery.objects.count() == 0
    tasks.sweep()
    assert receiver.got == []


def test_rejected_and_succeeded_and_failed_runs_emit(test_kinds, tmp_path, operator, approver):
    rejected_plan = services.plan_create(
        actor=operator, document={"name": "r", "stages": [stage("a", tmp_path / "r", items=1)]}
    )
    (tmp_path / "r").mkdir()
    dry = dry_run(rejected_plan, operator)
    services.run_reject(run=dry, actor=approver, comment="no")
    (tmp_path / "q").mkdir()
    quick = services.plan_create(
        actor=operator,
        document={
            "name": "q",
            "stages": [stage("a", tmp_path / "q", items=1, kind=TEST_KIND_NOAPPROVAL)],
        },
    )
    ok = drain(services.run_start_dry_run(plan=quick, actor=operator))
    (tmp_path / "f").mkdir()
    failing = services.plan_create(
        actor=operator,
        document={
            "name": "f",
            "stages": [
                stage(
                    "a", tmp_path / "f", items=1, kind=TEST_KIND_NOAPPROVAL, fail_dry_run={"0": 99}
                )
            ],
        },
    )
    bad = drain(services.run_start_dry_run(plan=failing, actor=operator))
    assert (ok.state, bad.state) == (RunState.SUCCEEDED, RunState.FAILED)
    names = dict(Event.objects.values_list("key", "name"))
    assert names[f"run:{dry.pk}:rejected"] == "run.rejected"
    assert names[f"run:{ok.pk}:succeeded"] == "run.succeeded"
    assert names[f"run:{bad.pk}:failed"] == "run.failed"


def test_a_stage_over_its_slo_emits_slo_breached(test_kinds, tmp_path, operator, receiver):
    hook(receiver.url, events=["slo.breached"])
    doc = stage("slow", tmp_path, items=3, kind=TEST_KIND_NOAPPROVAL)
    doc["slo_ms"] = 1  # any real stage takes longer than a millisecond
    plan = services.plan_create(actor=operator, document={"name": "slow", "stages": [doc]})
    run = drain(services.run_start_dry_run(plan=plan, actor=operator))
    event = Event.objects.get(name="slo.breached")
    assert event.payload["stage"]["id"] == "slow" and event.payload["stage"]["slo_ms"] == 1
    assert event.payload["stage"]["elapsed_ms"] > 1 and event.payload["run"]["id"] == run.pk
    sweep_until_settled()
    assert [r.headers["X-HXO-Event"] for r in receiver.got] == ["slo.breached"]


def test_only_subscribed_active_webhooks_get_deliveries(plan, operator, receiver):
    hook(receiver.url, events=["run.failed"])
    Webhook.objects.create(name="off", url=receiver.url, events=ALL, active=False)
    dry_run(plan, operator)
    assert Delivery.objects.filter(channel=Channel.WEBHOOK).count() == 0


def test_deliveries_are_woken_after_commit(plan, operator, django_capture_on_commit_callbacks):
    hook("http://127.0.0.1:9/hook")
    hook("http://127.0.0.1:9/other", fmt="slack")
    run = dry_run(plan, operator)
    Run.objects.filter(pk=run.pk).update(state=RunState.RUNNING)
    run.refresh_from_db()
    with django_capture_on_commit_callbacks() as callbacks:
        move_run(run, RunState.FAILED)
    assert Delivery.objects.filter(event__name="run.failed").count() == 2
    assert len(callbacks) == 1  # one wake-up callback, enqueuing both deliveries


# --- Formats ------------------------------------------------------------------------------


def test_slack_and_teams_receive_their_own_shapes(plan, operator, receiver):
    hook(receiver.url, fmt="slack")
    hook(receiver.url, fmt="teams")
    run = dry_run(plan, operator)
    sweep_until_settled()
    assert len(receiver.got) == 2 and all(r.verified for r in receiver.got)
    bodies = [r.json for r in receiver.got]
    slack = next(b for b in bodies if "blocks" in b)
    teams = next(b for b in bodies if "attachments" in b)
    assert f"Dry-run {run.pk} of nightly is waiting for approval" in slack["text"]
    assert slack["blocks"][0]["type"] == "header"
    assert {f["type"] for f in slack["blocks"][1]["fields"]} == {"mrkdwn"}
    assert any(
        f"/runs/{run.pk}/|Open run" in b.get("text", {}).get("text", "") for b in slack["blocks"]
    )
    assert teams["type"] == "message"
    card = teams["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["content"]["type"] == "AdaptiveCard" and card["content"]["version"] == "1.4"
    facts = {f["title"]: f["value"] for f in card["content"]["body"][1]["facts"]}
    assert facts["Requested by"] == operator.username
    assert card["content"]["actions"][0]["url"].endswith(f"/runs/{run.pk}/")


# --- Email ----------------------------------------------------------------------------------


def test_approvers_are_emailed_when_a_dry_run_waits(plan, operator, approver, admiral, viewer):
    approver.email = "april@example.com"
    approver.save()
    viewer.email = "vera@example.com"  # no hxo:approve
    viewer.save()
    operator.email = "otto@example.com"
    operator.save()
    admiral.email = "ada@example.com"
    admiral.save()
    run = dry_run(plan, operator)
    tasks.sweep()
    delivery = Delivery.objects.get(channel=Channel.EMAIL)
    assert delivery.state == "delivered"
    assert delivery.recipients == ["ada@example.com", "april@example.com"]
    assert sorted(m.to[0] for m in mail.outbox) == ["ada@example.com", "april@example.com"]
    message = mail.outbox[0]
    assert message.subject == f"[HXO] Dry-run {run.pk} of nightly is waiting for approval"
    assert f"/runs/{run.pk}/" in message.body and "Requested by: otto" in message.body


def test_the_requester_is_not_emailed_and_no_address_is_a_visible_failure(
    test_kinds, tmp_path, admiral
):
    admiral.email = "ada@example.com"
    admiral.save()
    plan = services.plan_create(
        actor=admiral, document={"name": "solo", "stages": [stage("a", tmp_path, items=1)]}
    )
    dry_run(plan, admiral)
    tasks.sweep()
    delivery = Delivery.objects.get(channel=Channel.EMAIL)
    assert delivery.state == "failed" and "no approver" in delivery.last_error
    assert mail.outbox == []


def test_email_can_be_switched_off(plan, operator, approver, settings):
    settings.HXO_NOTIFY_EMAIL = False
    approver.email = "april@example.com"
    approver.save()
    dry_run(plan, operator)
    assert not Delivery.objects.filter(channel=Channel.EMAIL).exists()


# --- Signing ----------------------------------------------------------------------------------


def test_a_signature_verifies_only_for_its_body_secret_and_time() -> None:
    body = b'{"event":"run.approved"}'
    now = 1_800_000_000
    header = signing.header("k", body, timestamp=now)
    assert header.startswith(f"t={now},v1=")
    assert signing.verify("k", header, body, now=now + 10)
    assert not signing.verify("k", header, body + b" ", now=now)  # tampered body
    assert not signing.verify("other", header, body, now=now)  # another secret
    assert not signing.verify("k", header, body, now=now + 301)  # replayed late
    assert not signing.verify("k", "garbage", body, now=now)
    # A sender rolling its secret signs with both; either verifies.
    rolled = header + ",v1=" + signing.signature("new", now, body)
    assert signing.verify("new", rolled, body, now=now)


def test_the_readmes_verification_snippet_accepts_hxo_signatures_and_nothing_else() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"```python\n(import hashlib, hmac, time\n.*?)```", readme, re.S)
    assert snippet, "the README's Notifications section lost its verification snippet"
    namespace: dict[str, object] = {}
    exec(snippet.group(1), namespace)  # the documented code, as a receiver would paste it
    genuine = namespace["hxo_request_is_genuine"]
    body = b'{"event":"run.awaiting_approval"}'
    assert genuine("k", signing.header("k", body), body)
    assert not genuine("k", signing.header("k", body), body + b"x")
    assert not genuine("k", signing.header("k", body, timestamp=1_000_000_000), body)
    assert not genuine("k", signing.header("other", body), body)


def test_the_sweep_is_a_django_q2_schedule_after_migrate() -> None:
    from django_q.models import Schedule

    sweep = Schedule.objects.get(name=tasks.SWEEP_SCHEDULE)
    assert sweep.func == "notify_app.tasks.sweep" and sweep.repeats == -1
    assert sweep.schedule_type == Schedule.MINUTES and sweep.minutes == 1


def test_an_attempt_whose_sender_died_is_taken_again_when_its_lease_ends(plan, operator, receiver):
    hook(receiver.url)
    dry_run(plan, operator)
    delivery = Delivery.objects.get(channel=Channel.WEBHOOK)
    assert tasks.delivery.claim(str(delivery.pk)) is not None  # a sender claims, then dies
    tasks.sweep()
    assert receiver.got == []  # its lease holds
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    tasks.sweep()
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == ("delivered", 2) and len(receiver.got) == 1

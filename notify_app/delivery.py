"""Sending: claim a due delivery, make one attempt, record what happened.

A claim is a compare-and-swap on (state, attempts): two senders woken for the same delivery
(a task redelivered by the ORM broker, the sweep racing the wake-up) make one attempt. The
claim bumps `attempts` and pushes `next_attempt_at` past the attempt's timeout, which is its
lease: a sender that died mid-attempt leaves a delivery the sweep takes again later.
Delivery is at least once (a sender can die after the receiver answered and before the
outcome is written): receivers drop repeats by `X-HXO-Delivery`.

Failures are retried with exponential backoff (HXO_WEBHOOK_BACKOFF_S * 2^(attempt-1), at most
an hour) until HXO_WEBHOOK_MAX_ATTEMPTS; a refusal that no retry can change (a URL the
allow list refuses, a redirect) fails at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage, get_connection
from django.db.models import F, Q
from django.utils import timezone

from hxo_site.capabilities import APP_LABEL, CAPABILITIES, has_capability
from notify_app import formats, signing
from notify_app.addresses import validate_webhook_url
from notify_app.models import Channel, Delivery, DeliveryState

log = logging.getLogger(__name__)

USER_AGENT = "HXO-Webhooks/1"
MAX_BACKOFF_S = 3600
ERROR_BODY_BYTES = 512  # of a refusing receiver's answer, kept in `last_error`


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status_code: int | None = None
    error: str = ""
    permanent: bool = False  # no retry can succeed
    recipients: tuple[str, ...] = ()


def backoff_s(attempts: int) -> float:
    """Seconds to wait after the `attempts`-th failed attempt (1-based)."""
    return min(settings.HXO_WEBHOOK_BACKOFF_S * 2 ** max(attempts - 1, 0), MAX_BACKOFF_S)


def claim(delivery_id: str) -> Delivery | None:
    """Take the delivery for one attempt if it is pending and due; None when it is not (sent,
    given up, not due yet, or another sender took it first)."""
    now = timezone.now()
    current = (
        Delivery.objects.filter(
            pk=delivery_id, state=DeliveryState.PENDING, next_attempt_at__lte=now
        )
        .values("attempts")
        .first()
    )
    if current is None:
        return None
    lease = now + dt.timedelta(seconds=settings.HXO_WEBHOOK_TIMEOUT_S * 2 + 30)
    taken = Delivery.objects.filter(
        pk=delivery_id, state=DeliveryState.PENDING, attempts=current["attempts"]
    ).update(attempts=F("attempts") + 1, next_attempt_at=lease)
    if not taken:
        return None
    return Delivery.objects.select_related("event", "webhook").get(pk=delivery_id)


def deliver(delivery_id: str) -> Outcome | None:
    """Claim, attempt and record one delivery; None when there was nothing to do. Never
    raises for a receiver's failure: it is recorded on the row."""
    delivery = claim(delivery_id)
    if delivery is None:
        return None
    try:
        if delivery.channel == Channel.EMAIL:
            outcome = send_email(delivery)
        else:
            outcome = send_webhook(delivery)
    except Exception as exc:  # a bug or an unexpected library error: recorded, retried
        log.exception("delivery %s failed", delivery_id)
        outcome = Outcome(ok=False, error=f"{type(exc).__name__}: {exc}")
    record(delivery, outcome)
    return outcome


def record(delivery: Delivery, outcome: Outcome) -> None:
    """Write the attempt's outcome, fenced on the attempt number the claim set."""
    now = timezone.now()
    fields: dict[str, object] = {
        "status_code": outcome.status_code,
        "last_error": outcome.error[:2000],
    }
    if outcome.recipients:
        fields["recipients"] = list(outcome.recipients)
    if outcome.ok:
        fields.update(state=DeliveryState.DELIVERED, delivered_at=now)
    elif outcome.permanent or delivery.attempts >= settings.HXO_WEBHOOK_MAX_ATTEMPTS:
        fields.update(state=DeliveryState.FAILED)
    else:
        fields["next_attempt_at"] = now + dt.timedelta(seconds=backoff_s(delivery.attempts))
    Delivery.objects.filter(
        pk=delivery.pk, state=DeliveryState.PENDING, attempts=delivery.attempts
    ).update(**fields)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A 3xx comes back as an HTTPError instead of being followed: an allowed host must not
    # be able to send HXO's signed request on to another one.
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def send_webhook(delivery: Delivery) -> Outcome:
    """POST the event, signed, to the webhook's URL; 2xx is delivered."""
    hook = delivery.webhook
    assert hook is not None
    try:
        validate_webhook_url(hook.url)
    except ValidationError as exc:
        return Outcome(ok=False, error=f"url refused: {exc.messages[0]}", permanent=True)
    body = formats.render(delivery.event, hook.format)
    request = urllib.request.Request(
        hook.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-HXO-Event": delivery.event.name,
            "X-HXO-Delivery": str(delivery.pk),
            "X-HXO-Signature": signing.header(hook.secret, body),
        },
    )
    try:
        with _OPENER.open(request, timeout=settings.HXO_WEBHOOK_TIMEOUT_S) as response:
            return Outcome(ok=True, status_code=response.status)
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            where = exc.headers.get("Location", "?")
            return Outcome(
                ok=False,
                status_code=exc.code,
                error=f"redirect to {where} refused: webhooks never follow redirects",
                permanent=True,
            )
        text = exc.read(ERROR_BODY_BYTES).decode("utf-8", "replace")
        return Outcome(ok=False, status_code=exc.code, error=f"HTTP {exc.code}: {text}")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Outcome(ok=False, error=f"{type(exc).__name__}: {reason}")


def approver_emails(exclude_username: str | None = None) -> list[str]:
    """Email addresses of the active users holding hxo:approve (directly, through a role, or
    as superusers), except `exclude_username` (the requester, who may not approve their own
    dry-run by default); sorted, unique, empty addresses skipped."""
    User = get_user_model()
    perm = Permission.objects.filter(
        content_type__app_label=APP_LABEL, codename=CAPABILITIES["approve"]
    ).first()
    holders = Q(is_superuser=True)
    if perm is not None:
        holders |= Q(user_permissions=perm) | Q(groups__permissions=perm)
    users = User.objects.filter(holders, is_active=True).exclude(email="").order_by().distinct()
    if exclude_username:
        users = users.exclude(**{User.USERNAME_FIELD: exclude_username})
    return sorted({u.email for u in users if has_capability(u, "approve")})


def send_email(delivery: Delivery) -> Outcome:
    """Email the approvers (`approver_emails`) one message each, through Django's email
    backend (EMAIL_BACKEND); no approver with an address is a failure, shown in the admin."""
    event = delivery.event
    run = event.payload.get("run", {})
    recipients = approver_emails(run.get("requested_by"))
    if not recipients:
        return Outcome(ok=False, error="no approver has an email address", permanent=True)
    subject = f"[HXO] {formats.title(event)}"
    lines = [formats.title(event), ""]
    lines += [f"{label}: {value}" for label, value in formats.facts(event)]
    if run.get("url"):
        lines += ["", f"Review it: {run['url']}"]
    text = "\n".join(lines) + "\n"
    with get_connection() as connection:
        messages = [
            EmailMessage(subject, text, settings.DEFAULT_FROM_EMAIL, [to], connection=connection)
            for to in recipients
        ]
        connection.send_messages(messages)
    return Outcome(ok=True, recipients=tuple(recipients))

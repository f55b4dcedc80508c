"""The outbox: webhooks admins register, the events runs emit, and one delivery row per
(event, destination) recording every attempt. These tables are the truth; the queue only
wakes a sender (docs/architecture.md, "The queue only wakes workers")."""

from __future__ import annotations

import secrets
import uuid

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from notify_app.addresses import validate_webhook_url

# Every event HXO emits (README, "Notifications").
EVENTS: tuple[str, ...] = (
    "run.awaiting_approval",
    "run.approved",
    "run.rejected",
    "run.failed",
    "run.succeeded",
    "slo.breached",
)
# Approvers are emailed when a dry-run waits for them.
EMAIL_EVENTS: tuple[str, ...] = ("run.awaiting_approval",)


def new_secret() -> str:
    """A fresh signing secret: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def validate_events(value: object) -> None:
    if not isinstance(value, list) or not value:
        raise ValidationError("choose at least one event", code="events_empty")
    unknown = [e for e in value if e not in EVENTS]
    if unknown:
        raise ValidationError(f"unknown events: {unknown}", code="events_unknown")


class WebhookFormat(models.TextChoices):
    HXO = "hxo", "HXO JSON"
    SLACK = "slack", "Slack incoming webhook"
    TEAMS = "teams", "Microsoft Teams (Adaptive Card)"


class Webhook(models.Model):
    name = models.CharField(max_length=100)
    url = models.CharField(
        max_length=2000, validators=[validate_webhook_url], help_text="http:// or https://"
    )
    secret = models.CharField(
        max_length=200,
        default=new_secret,
        help_text="Signs every body (X-HXO-Signature); give it to the receiver.",
    )
    events = models.JSONField(default=list, validators=[validate_events])
    format = models.CharField(max_length=10, choices=WebhookFormat.choices, default="hxo")
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(format__in=WebhookFormat.values), name="webhook_format_valid"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Event(models.Model):
    """One event, written in the transaction of the change that caused it. `key` names the
    change (`run:12:approved`): a second emit of the same change is a no-op."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=50)
    key = models.CharField(max_length=200, unique=True)
    payload = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.key})"


class DeliveryState(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # attempts spent (HXO_WEBHOOK_MAX_ATTEMPTS) or refused for good


class Channel(models.TextChoices):
    WEBHOOK = "webhook"
    EMAIL = "email"


class Delivery(models.Model):
    """One event to one destination: a webhook, or the approvers by email. Its id is the
    `X-HXO-Delivery` header, the same for every attempt, so a receiver can drop repeats."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=10, choices=Channel.choices)
    webhook = models.ForeignKey(
        Webhook, null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries"
    )
    state = models.CharField(
        max_length=10, choices=DeliveryState.choices, default=DeliveryState.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    # Due time of the next attempt; while an attempt is under way, the end of its lease.
    next_attempt_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    recipients = models.JSONField(default=list, blank=True)  # email addresses sent to
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["event", "webhook"],
                condition=models.Q(webhook__isnull=False),
                name="delivery_one_per_webhook",
            ),
            models.UniqueConstraint(
                fields=["event", "channel"],
                condition=models.Q(channel="email"),
                name="delivery_one_email",
            ),
            models.CheckConstraint(
                condition=models.Q(state__in=DeliveryState.values), name="delivery_state_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(channel="email", webhook__isnull=True)
                | models.Q(channel="webhook", webhook__isnull=False),
                name="delivery_channel_matches_webhook",
            ),
        ]
        indexes = [models.Index(fields=["state", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.event.name} → {self.webhook or 'approvers by email'}"

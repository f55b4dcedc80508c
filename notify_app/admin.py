"""Webhooks are registered here by admins; events and deliveries are shown read-only (what
was sent, to whom, how many attempts, the last answer)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from notify_app.models import EVENTS, Delivery, Event, Webhook


class WebhookForm(forms.ModelForm):
    events = forms.MultipleChoiceField(
        choices=[(e, e) for e in EVENTS], widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = Webhook
        fields = ["name", "url", "format", "events", "secret", "active"]


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    form = WebhookForm
    list_display = ["name", "url", "format", "subscribed", "active", "updated_at"]
    list_filter = ["active", "format"]
    search_fields = ["name", "url"]

    @admin.display(description="events")
    def subscribed(self, obj: Webhook) -> str:
        return ", ".join(obj.events or [])


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DeliveryInline(admin.TabularInline):
    model = Delivery
    fields = ["channel", "webhook", "state", "attempts", "status_code", "last_error"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "name", "key"]
    list_filter = ["name"]
    search_fields = ["key"]
    readonly_fields = ["id", "name", "key", "payload", "created_at"]
    inlines = [DeliveryInline]


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "event_name",
        "destination",
        "state",
        "attempts",
        "status_code",
        "next_attempt_at",
        "delivered_at",
    ]
    list_filter = ["state", "channel", "webhook"]
    search_fields = ["id", "event__key", "last_error"]
    list_select_related = ["event", "webhook"]
    readonly_fields = [
        "id",
        "event",
        "channel",
        "webhook",
        "state",
        "attempts",
        "status_code",
        "last_error",
        "next_attempt_at",
        "delivered_at",
        "recipients",
        "created_at",
    ]

    @admin.display(description="event", ordering="event__name")
    def event_name(self, obj: Delivery) -> str:
        return obj.event.name

    @admin.display(description="to")
    def destination(self, obj: Delivery) -> str:
        return obj.webhook.name if obj.webhook else "approvers (email)"

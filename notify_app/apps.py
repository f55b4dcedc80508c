from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _schedule_sender(sender: Any, **kwargs: Any) -> None:
    from notify_app.tasks import ensure_schedule

    ensure_schedule()


class NotifyConfig(AppConfig):
    name = "notify_app"
    verbose_name = "Notifications"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The sweep that re-sends due deliveries is registered with django-q2 after migrate,
        # like the reconciler.
        post_migrate.connect(_schedule_sender, sender=self, dispatch_uid="hxo-notify-sweep")

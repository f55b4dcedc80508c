from __future__ import annotations

import sys
from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _schedule_reconciler(sender: Any, **kwargs: Any) -> None:
    from runs_app.tasks import ensure_reconciler_schedule

    ensure_reconciler_schedule()


class RunsConfig(AppConfig):
    name = "runs_app"
    verbose_name = "Plans and runs"

    def ready(self) -> None:
        # The built-in partitioners and executors register themselves on import; plugins come
        # after them (docs/plugins.md), so that a plugin may reuse or replace a built-in one.
        from blueprints_app.registry import autodiscover
        from runs_app import kinds  # noqa: F401

        autodiscover()
        # After every migrate the reconciler is registered with django-q2's scheduler.
        post_migrate.connect(_schedule_reconciler, sender=self, dispatch_uid="hxo-reconciler")
        if sys.argv[1:2] == ["qcluster"]:
            # The cluster's workers are forked from this process: what is imported here
            # they share instead of each importing it on its first task (tasks.preload).
            from runs_app.tasks import preload

            preload()

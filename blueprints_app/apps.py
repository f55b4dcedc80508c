from __future__ import annotations

from django.apps import AppConfig


class BlueprintsConfig(AppConfig):
    # The code registry is filled by RunsConfig.ready (built-in kinds, then plugins): the
    # registry app depends on nothing that implements it.
    name = "blueprints_app"
    verbose_name = "Blueprint registry"

    def ready(self) -> None:
        # The registry as loaded is checked by `manage.py check` and once per process at
        # its first request (blueprints_app.checks); neither queries during app loading.
        from django.core import checks as django_checks
        from django.core.signals import request_started

        from blueprints_app import checks

        django_checks.register(checks.registry_check, "hxo")
        request_started.connect(checks.log_registry_problems, dispatch_uid=checks.STARTUP_UID)

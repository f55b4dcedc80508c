from __future__ import annotations

from django.apps import AppConfig


class BlueprintsConfig(AppConfig):
    name = "blueprints_app"
    verbose_name = "Blueprint registry"

    def ready(self) -> None:
        from blueprints_app.registry import autodiscover

        autodiscover()

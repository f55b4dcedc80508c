from __future__ import annotations

from django.apps import AppConfig


class BlueprintsConfig(AppConfig):
    # The code registry is filled by RunsConfig.ready (built-in kinds, then plugins): the
    # registry app depends on nothing that implements it.
    name = "blueprints_app"
    verbose_name = "Blueprint registry"

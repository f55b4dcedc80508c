"""The application object: settings, logging, services and the router, built once."""

from __future__ import annotations

from typing import Any

from backend.api.responses import Response
from backend.api.routing import dispatch
from backend.core.config import Settings, load_settings
from backend.core.logging import configure
from backend.services.container import Services, build


class App:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self.log = configure(self.settings)
        self.services: Services = build(self.settings)

    def handle(self, method: str, path: str, **request: Any) -> Response:
        response = dispatch(self.services, method, path, request)
        self.log.info("%s %s -> %s", method, path, response.status)
        return response


def create_app(**overrides: Any) -> App:
    base = load_settings()
    return App(Settings(**{**base.__dict__, **overrides}))

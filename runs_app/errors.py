"""Refusals raised by services; the API and the views turn them into responses."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """A refusal with a stable code, an HTTP status, field errors and extra payload."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int = 400,
        errors: list[dict[str, str]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.errors = errors or []
        self.extra = extra or {}

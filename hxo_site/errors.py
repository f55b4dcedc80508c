"""Refusals: `ServiceError` raised by services, `ApiError` raised by API code.

Services raise `ServiceError` (a stable code from `hxo_site.codes`, an HTTP status, field
errors, extra payload); the dashboard's views render it, and the API's exception handler
(`hxo_site.api_errors.exception_handler`) answers it in the API's one error shape, exactly as
an `ApiError` with the same fields. API code that refuses a request itself raises `ApiError`.
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions, status


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


class ApiError(exceptions.APIException):
    """A refusal with a stable code and optional field errors (and extra payload, e.g. a diff)."""

    def __init__(
        self,
        detail: str,
        *,
        code: str,
        status_code: int = status.HTTP_400_BAD_REQUEST,
        errors: list[dict[str, str]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail=detail, code=code)
        self.status_code = status_code
        self.error_code = code
        self.errors = errors or []
        self.extra = extra or {}

    @classmethod
    def from_service_error(cls, exc: ServiceError) -> ApiError:
        """The API's answer to a service's refusal: the same message, code, status, errors
        and extra payload."""
        return cls(
            exc.message, code=exc.code, status_code=exc.status, errors=exc.errors, extra=exc.extra
        )


# What a busy database says when a transaction gives up waiting: SQLite's busy timeout ran
# out on its one write lock (another writer held it longer), PostgreSQL chose this
# transaction as a deadlock's victim. Both are transient and roll the transaction back.
_BUSY_MESSAGES = ("database is locked", "database table is locked", "deadlock detected")

# Seconds a client is asked to wait before trying again (the Retry-After header).
BUSY_RETRY_AFTER_S = 2


def is_database_busy(exc: BaseException) -> bool:
    """Whether `exc` is a transaction that gave up waiting for a busy database
    (`django.db.OperationalError` with SQLite's "database is locked" or PostgreSQL's
    "deadlock detected"): answered 503 `database_busy` with Retry-After, never a 500."""
    from django.db import OperationalError

    if not isinstance(exc, OperationalError):
        return False
    text = str(exc).lower()
    return any(message in text for message in _BUSY_MESSAGES)


BUSY_MESSAGE = (
    "The database is busy with other writes and this request gave up waiting; nothing was "
    "written. Try again in a moment."
)

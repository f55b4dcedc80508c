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

"""One error shape for the API: {"detail", "code", "errors": [{"path", "code", "message"}]}.

`exception_handler` is DRF's EXCEPTION_HANDLER: every refusal an API view lets through (an
`ApiError`, a service's `ServiceError`, DRF's and Django's own exceptions, a bad query
parameter) leaves as that shape, so no view catches refusals to translate them.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from hxo_site import codes
from hxo_site.errors import (
    BUSY_MESSAGE,
    BUSY_RETRY_AFTER_S,
    ApiError,
    ServiceError,
    is_database_busy,
)
from hxo_site.middleware import audit_refusal
from hxo_site.parameters import ParameterError

_DRF_CODES = {
    exceptions.NotAuthenticated: codes.NOT_AUTHENTICATED,
    exceptions.AuthenticationFailed: codes.NOT_AUTHENTICATED,
    exceptions.PermissionDenied: codes.PERMISSION_DENIED,
    exceptions.NotFound: codes.NOT_FOUND,
    exceptions.ParseError: codes.PARSE_ERROR,
}
_SPECIFIC_CODES = {codes.TOKEN_EXPIRED, codes.LOGIN_THROTTLED}


def _flatten(detail: Any, prefix: str = "") -> list[dict[str, str]]:
    """DRF's nested serializer errors as a flat list of {path, code, message}."""
    out: list[dict[str, str]] = []
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key == "non_field_errors":
                key_path = prefix
            elif isinstance(key, int) or str(key).isdigit():
                key_path = f"{prefix}[{key}]"
            else:
                key_path = f"{prefix}.{key}" if prefix else str(key)
            out.extend(_flatten(value, key_path))
    elif isinstance(detail, list):
        if all(isinstance(d, exceptions.ErrorDetail | str) for d in detail):
            for d in detail:
                out.append(
                    {
                        "path": prefix,
                        "code": getattr(d, "code", None) or codes.INVALID_VALUE,
                        "message": str(d),
                    }
                )
        else:
            for i, d in enumerate(detail):
                out.extend(_flatten(d, f"{prefix}[{i}]"))
    else:
        out.append(
            {
                "path": prefix,
                "code": getattr(detail, "code", None) or codes.INVALID_VALUE,
                "message": str(detail),
            }
        )
    return out


def _audit_refusal(exc: Exception, context: dict[str, Any]) -> None:
    """Every refusal of a privileged action leaves an audit event: every state change is
    audited, and an attempt refused is as telling as one let through."""
    request = context.get("request")
    if request is not None and isinstance(exc, exceptions.PermissionDenied):
        user = None
        if str(exc.detail).startswith("CSRF Failed"):
            # DRF dropped the session user when the CSRF check failed; the session still
            # names whose browser was used, which is what the audit should say.
            from django.contrib.auth import get_user

            user = get_user(request._request)
        audit_refusal(request._request, reason=str(exc.detail), surface="api", user=user)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: `exc` as a Response with body {"detail", "code", "errors"}
    (plus an `ApiError`'s or `ServiceError`'s extra keys), or None for an exception that is
    not a refusal (DRF re-raises it: a 500)."""
    # Django's own exceptions (get_object_or_404...) as DRF's, so that they get their code.
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    if is_database_busy(exc):
        return Response(
            {"detail": BUSY_MESSAGE, "code": codes.DATABASE_BUSY, "errors": []},
            status=503,
            headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
        )
    if isinstance(exc, ParameterError):
        exc = ApiError(str(exc), code=exc.code, errors=[exc.as_dict()])
    elif isinstance(exc, ServiceError):
        exc = ApiError.from_service_error(exc)
    _audit_refusal(exc, context)
    if isinstance(exc, ApiError):
        body = {"detail": str(exc.detail), "code": exc.error_code, "errors": exc.errors}
        body.update(exc.extra)
        return Response(body, status=exc.status_code)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = {
            "detail": "The request is not valid.",
            "code": codes.VALIDATION_FAILED,
            "errors": _flatten(exc.detail),
        }
        return response
    detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
    own_code = getattr(detail, "code", None)
    # A specific code raised on purpose (token_expired, login_throttled) beats the generic one.
    if own_code in _SPECIFIC_CODES:
        code: str | None = own_code
    else:
        code = next((c for t, c in _DRF_CODES.items() if isinstance(exc, t)), None)
    if code is None:
        code = getattr(detail, "code", None) or "error"
    response.data = {"detail": str(detail), "code": code, "errors": []}
    return response

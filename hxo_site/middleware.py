"""Site-wide guards that no view should have to remember.

- `SecurityHeadersMiddleware`: a Content-Security-Policy that allows this site's own scripts,
  styles and images only (no inline code: the dashboard and the API docs have none), framing
  by nobody, and a Permissions-Policy switching off device APIs HXO never uses.
- `RequestSizeLimitMiddleware`: bodies over HXO_MAX_BODY_BYTES get 413 `body_too_large`
  before anything reads them. DRF reads the request stream itself, past Django's
  DATA_UPLOAD_MAX_MEMORY_SIZE check, so the declared Content-Length is checked here.
- `UrlTextMiddleware`: a NUL character in the path or the query string is a 400: PostgreSQL
  cannot compare text with a NUL in it, so any lookup or filter using it would be a 500.
- `ApiJsonBodyMiddleware`: a state-changing API request's body is JSON or nothing. It is
  parsed here with the API's own parser, so that a malformed, over-deep or unstorable body is
  a 400 (and a non-JSON one a 415) on every endpoint, even one that never reads its body.
- `RefusalAuditMiddleware`: a dashboard view refusing a signed-in user a state-changing
  request (PermissionDenied on POST...) writes an audit event; the API's exception handler
  does the same for API views.
- `HtmxLoginRedirectMiddleware`: an htmx request redirected to the login page (its session
  expired) gets `HX-Redirect` to the login page with `next` = the page the browser shows, so
  the whole page goes there, instead of a 302 that htmx follows and swaps into the partial's
  target (a second header and login form inside the run page, and polling stopped).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import resolve_url
from django.utils.cache import patch_vary_headers
from django.utils.http import url_has_allowed_host_and_scheme
from django_htmx.http import HttpResponseClientRedirect

from hxo_site import codes
from hxo_site.audit import audit
from hxo_site.errors import BUSY_MESSAGE, BUSY_RETRY_AFTER_S, ApiError, is_database_busy
from hxo_site.net import client_ip
from hxo_site.parsers import SafeJSONParser

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        # Swagger UI's stylesheet embeds its icons as data: URIs.
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
log = logging.getLogger(__name__)

PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class SecurityHeadersMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        return response


def body_too_large(request: HttpRequest) -> HttpResponse:
    limit = settings.HXO_MAX_BODY_BYTES
    message = f"The request body is larger than {limit} bytes (HXO_MAX_BODY_BYTES)."
    if request.path.startswith("/api/"):
        return JsonResponse(
            {"detail": message, "code": codes.BODY_TOO_LARGE, "errors": []}, status=413
        )
    return HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")


class RequestSizeLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0  # Django reads an unparsable length as an empty body too
        if declared > settings.HXO_MAX_BODY_BYTES:
            return body_too_large(request)
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        # Form posts are measured by Django itself when a view reads request.POST.
        if isinstance(exception, RequestDataTooBig):
            return body_too_large(request)
        return None


class DatabaseBusyMiddleware:
    """A page or form post whose transaction gave up waiting for a busy database
    (`errors.is_database_busy`: SQLite's write lock held past its busy timeout) answers 503
    with Retry-After and a sentence, not a 500: the transaction was rolled back, nothing is
    half-written. The API answers the same through its exception handler."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_database_busy(exception):
            return None
        log.warning(
            "database busy: %s %s answered 503 (%s)", request.method, request.path, exception
        )
        if request.path.startswith("/api/"):
            response: HttpResponse = JsonResponse(
                {"detail": BUSY_MESSAGE, "code": codes.DATABASE_BUSY, "errors": []}, status=503
            )
        else:
            response = HttpResponse(
                BUSY_MESSAGE, status=503, content_type="text/plain; charset=utf-8"
            )
        response.headers["Retry-After"] = str(BUSY_RETRY_AFTER_S)
        return response


class UrlTextMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "\x00" in request.path or any(
            "\x00" in key or any("\x00" in v for v in values) for key, values in request.GET.lists()
        ):
            message = "NUL characters are not allowed in URLs."
            if request.path.startswith("/api/"):
                return JsonResponse(
                    {"detail": message, "code": codes.INVALID_CHARACTERS, "errors": []},
                    status=400,
                )
            return HttpResponse(message, status=400, content_type="text/plain; charset=utf-8")
        return self.get_response(request)


class ApiJsonBodyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith("/api/") and request.method in UNSAFE_METHODS:
            refusal = self._refusal(request)
            if refusal is not None:
                return refusal
        return self.get_response(request)

    @staticmethod
    def _refusal(request: HttpRequest) -> HttpResponse | None:
        body = request.body  # bounded: RequestSizeLimitMiddleware ran first
        if not body:
            return None
        if request.content_type != "application/json":
            return JsonResponse(
                {
                    "detail": f"Unsupported media type {request.content_type!r}: send JSON.",
                    "code": codes.UNSUPPORTED_MEDIA_TYPE,
                    "errors": [],
                },
                status=415,
            )
        try:
            SafeJSONParser().parse(
                io.BytesIO(body), parser_context={"encoding": request.encoding or "utf-8"}
            )
        except ApiError as exc:
            return JsonResponse(
                {"detail": str(exc.detail), "code": exc.error_code, "errors": exc.errors},
                status=exc.status_code,
            )
        return None


def audit_refusal(request: HttpRequest, *, reason: str, surface: str, user: Any = None) -> None:
    """An audit event for a signed-in user refused a state-changing request."""
    user = user or getattr(request, "user", None)
    if request.method not in UNSAFE_METHODS or not getattr(user, "is_authenticated", False):
        return
    match = getattr(request, "resolver_match", None)
    audit(
        actor=user,
        action=f"refused.{codes.PERMISSION_DENIED}",
        object_type="endpoint",
        object_id=match.view_name if match else request.path[:200],
        client_ip=client_ip(request),
        detail={
            "method": request.method,
            "path": request.path[:500],
            "surface": surface,
            "reason": reason[:500],
        },
    )


class RefusalAuditMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        if isinstance(exception, PermissionDenied):
            audit_refusal(request, reason=str(exception), surface="dashboard")


def _is_login_redirect(response: HttpResponse) -> bool:
    if response.status_code not in (301, 302, 303, 307, 308):
        return False
    location = urlsplit(response.headers.get("Location", ""))
    return location.path == urlsplit(resolve_url(settings.LOGIN_URL)).path


def _page_url(request: HttpRequest) -> str:
    """The path and query of the page the browser shows (`HX-Current-URL`), when it is on
    this site; else the partial's own path (better than nothing, and never off-site)."""
    current = request.headers.get("HX-Current-URL", "")
    if current and url_has_allowed_host_and_scheme(
        current, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        parts = urlsplit(current)
        if parts.path.startswith("/"):
            return parts.path + (f"?{parts.query}" if parts.query else "")
    return request.get_full_path()


class HtmxLoginRedirectMiddleware:
    """Every partial at once: a view, a decorator or a mixin that sends an anonymous htmx
    request to the login page is answered with `HX-Redirect` (django-htmx's
    `HttpResponseClientRedirect`); htmx then loads the login page as the whole page, whose
    `next` brings the user back to the page they were on. Only the login redirect changes:
    other redirects of htmx requests are the views' own business."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.headers.get("HX-Request") != "true" or not _is_login_redirect(response):
            return response
        login = redirect_to_login(_page_url(request))
        redirect = HttpResponseClientRedirect(login["Location"])
        patch_vary_headers(redirect, ["HX-Request"])  # the same URL answers 302 without htmx
        return redirect


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: Django's 403 page, and an audit event when a signed-in user's
    state-changing request lacked a valid token (what a cross-site forgery looks like)."""
    from django.views.csrf import csrf_failure as django_csrf_failure

    audit_refusal(request, reason=f"CSRF: {reason}", surface="csrf")
    return django_csrf_failure(request, reason)

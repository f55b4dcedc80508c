"""Django's error views (handler400/403/404/500), answering in the API's error shape under
/api/: a client of the API never has to parse an HTML error page, and the OpenAPI document's
promise ("every error is {detail, code, errors}") holds even for URLs no route matches."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views import defaults

from hxo_site import codes
from hxo_site.parameters import ParameterError


def _api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def _error(detail: str, code: str, status: int) -> JsonResponse:
    return JsonResponse({"detail": detail, "code": code, "errors": []}, status=status)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if isinstance(exception, ParameterError):
        # A bad id, number or filter in a URL or a form: say which, in both shapes.
        if _api(request):
            return JsonResponse(
                {"detail": str(exception), "code": exception.code, "errors": [exception.as_dict()]},
                status=400,
            )
        return render(request, "400.html", {"error": exception}, status=400)
    if _api(request):
        return _error("Bad request.", codes.INVALID_VALUE, 400)
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _api(request):
        return _error("You do not have permission.", codes.PERMISSION_DENIED, 403)
    return defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _api(request):
        return _error("Not found.", codes.NOT_FOUND, 404)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if _api(request):
        return _error("Internal server error.", "server_error", 500)
    return defaults.server_error(request)

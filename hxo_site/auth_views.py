"""Ways in: the login page and POST /api/v1/auth/token/, both behind the login throttle.

The login page is Django's LoginView with failed attempts counted per (client IP, username);
a locked-out pair gets a 429 page and the refusal is audited. The token endpoint trades a
username and password for the user's API token (the same one while it lives, a new one once
it has expired) and is throttled twice: the same failure counter, and a request rate.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import authenticate
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from hxo_site import codes
from hxo_site.audit import audit
from hxo_site.authentication import token_expires_at, token_for
from hxo_site.errors import ApiError
from hxo_site.net import client_ip
from hxo_site.serializers import ErrorSerializer, StrictBodySerializer, StrictCharField
from hxo_site.throttling import TOKEN_SCOPE, LoginThrottle, TokenRateThrottle

THROTTLED_TEMPLATE = "registration/login_throttled.html"


class ThrottledLoginView(LoginView):
    """LoginView that stops answering a (client IP, username) pair after too many failures."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        throttle = LoginThrottle(client_ip(request), str(request.POST.get("username", "")))
        if throttle.locked():
            throttle.refuse(surface="login")
            wait = throttle.retry_after_s()
            response = render(
                request,
                THROTTLED_TEMPLATE,
                {"retry_after_minutes": max(1, round(wait / 60))},
                status=429,
            )
            response["Retry-After"] = str(wait)
            return response
        self._throttle = throttle
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: AuthenticationForm) -> HttpResponse:
        self._throttle.failed()
        return super().form_invalid(form)


class TokenRequestSerializer(StrictBodySerializer):
    username = StrictCharField(max_length=150)
    password = StrictCharField(max_length=4096, trim_whitespace=False)


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField()
    username = serializers.CharField()
    expires_at = serializers.DateTimeField()


class ObtainToken(APIView):
    """Trade a username and password for the user's API token."""

    # No authentication: a stale `Authorization` header must not stand in the way of getting
    # a fresh token, and without session authentication there is no CSRF to enforce.
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes = [TokenRateThrottle]
    throttle_scope = TOKEN_SCOPE

    @extend_schema(
        summary="Obtain an API token with a username and password",
        description=(
            "Returns the user's token while it is valid, and a new one once it has expired "
            "(HXO_TOKEN_TTL_DAYS). Failed attempts count towards the same lockout as the "
            "login page."
        ),
        request=TokenRequestSerializer,
        responses={
            200: TokenSerializer,
            400: OpenApiResponse(ErrorSerializer, description="Wrong username or password"),
            429: OpenApiResponse(ErrorSerializer, description="Too many attempts"),
        },
        auth=[],
    )
    def post(self, request: Request) -> Response:
        body = TokenRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        username = body.validated_data["username"]
        throttle = LoginThrottle(client_ip(request), username)
        if throttle.locked():
            throttle.refuse(surface="token")
            raise exceptions.Throttled(
                wait=throttle.retry_after_s(),
                detail="Too many failed attempts for this user from this address.",
                code=codes.LOGIN_THROTTLED,
            )
        user = authenticate(
            request._request, username=username, password=body.validated_data["password"]
        )
        if user is None:
            throttle.failed()
            raise ApiError(
                "The username and password do not match an active user.",
                code=codes.INVALID_CREDENTIALS,
            )
        token = token_for(user)
        audit(
            actor=user,
            action="token.obtain",
            object_type="user",
            object_id=user.pk,
            client_ip=client_ip(request),
        )
        return Response(
            TokenSerializer(
                {
                    "token": token.key,
                    "username": user.get_username(),
                    "expires_at": token_expires_at(token),
                }
            ).data
        )
